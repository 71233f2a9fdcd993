"""Real TLS on 127.0.0.1 with generated router certificates (transports/tls.py, smp.md §2.1–§2.5,
§2.8), the plain-TCP variant and the in-memory pair (transports/memory.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import ssl
from pathlib import Path
from typing import AsyncIterator, Callable

import anyio
import pytest
from anyio.streams.tls import TLSStream

from sansio_smp import x509 as X
from sansio_smp.crypto import KeyAlgorithm
from sansio_smp.encoding import b64url_decode
from sansio_smp.errors import LocalProtocolError
from transports import tls as T
from transports.memory import memory_stream_pair

FIX = Path(__file__).parent / "data" / "x509"
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
ISSUED = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)  # certificates valid from then, for 999999 days
BLOCK = T.BLOCK_SIZE


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def det_random(seed: bytes) -> Callable[[int], bytes]:
    counter = [0]

    def random_bytes(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha512(seed + counter[0].to_bytes(4, "big")).digest()
            counter[0] += 1
        return out[:n]

    return random_bytes


@pytest.fixture(scope="module")
def ident() -> X.RouterIdentity:
    return X.generate_router_identity("localhost", det_random(b"tls test"), ISSUED)


@pytest.fixture(scope="module")
def server_ctx(ident: X.RouterIdentity) -> ssl.SSLContext:
    return T.server_ssl_context(ident.chain_pem(), ident.server_key_pem())


def blocks(n: int, tag: int) -> list[bytes]:
    return [bytes([tag, i]) + hashlib.sha256(bytes([tag, i])).digest() * 511 + b"#" * 30 for i in range(n)]


@contextlib.asynccontextmanager
async def running(ctx: ssl.SSLContext, handler: T.Handler) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(T.serve_tls, "127.0.0.1", 0, ctx, handler)
        yield port
        tg.cancel_scope.cancel()


class Recorder:
    """A router-side handler that records the connection and echoes blocks reversed."""

    def __init__(self) -> None:
        self.streams: list[T.BlockStream] = []
        self.events: list[str] = []
        self.done = anyio.Event()

    async def __call__(self, s: T.BlockStream) -> None:
        self.streams.append(s)
        try:
            while True:
                b = await s.receive_block()
                await s.send(b[::-1])
        except anyio.EndOfStream:
            self.events.append("eof")
        except (anyio.IncompleteRead, anyio.BrokenResourceError) as e:
            self.events.append(type(e).__name__)
        finally:
            self.done.set()


# ---------------------------------------------------------------- contexts


def test_context_settings(server_ctx: ssl.SSLContext) -> None:
    c = T.client_ssl_context()
    for ctx in (server_ctx, c):
        assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
        assert ctx.maximum_version is ssl.TLSVersion.TLSv1_3
        assert ctx.options & ssl.OP_NO_TICKET and ctx.options & ssl.OP_NO_RENEGOTIATION
        assert ctx.verify_mode is ssl.CERT_NONE
        assert ctx.smp_restricted is True  # type: ignore[attr-defined]
        tls12 = {x["name"] for x in ctx.get_ciphers() if x["protocol"] == "TLSv1.2"}
        assert tls12 == {"ECDHE-ECDSA-CHACHA20-POLY1305"}
    assert server_ctx.num_tickets == 0
    assert not c.check_hostname


def test_fallback_when_openssl_is_unreachable(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(T._openssl, "lib", None)
    with caplog.at_level(logging.WARNING, logger="transports.tls"):
        ctx = T.client_ssl_context()
    assert ctx.smp_restricted is False  # type: ignore[attr-defined]
    assert "cannot restrict TLS 1.3 cipher suites" in caplog.text


def test_unverified_ctx_pointer_is_not_used() -> None:
    """The SSL_CTX pointer is trusted only if OpenSSL agrees with Python about the context."""
    ctx = T.client_ssl_context()
    ptr = T._openssl.ctx_pointer(ctx)
    assert ptr is not None and T._openssl.matches(ptr, ctx)
    other = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # different options (no OP_NO_TICKET...)
    assert other.options != ctx.options
    assert not T._openssl.matches(ptr, other)
    other_ptr = T._openssl.ctx_pointer(other)
    assert other_ptr is not None and other_ptr != ptr and T._openssl.matches(other_ptr, other)


# ---------------------------------------------------------------- TLS connections


@pytest.mark.anyio
async def test_tls_round_trip(ident: X.RouterIdentity, server_ctx: ssl.SSLContext) -> None:
    rec = Recorder()
    async with running(server_ctx, rec) as port:
        c = await T.connect_tls("127.0.0.1", port, ident.key_hash, now=lambda: NOW.timestamp())
        sent = blocks(5, 1)
        async with anyio.create_task_group() as tg:

            async def writer() -> None:
                for b in sent:
                    await c.send_block(b)

            tg.start_soon(writer)
            got = [await c.receive_block() for _ in sent]
        assert got == [b[::-1] for b in sent]
        s = rec.streams[0]
        # tls-unique: the client's Finished on both ends, 32 bytes with CHACHA20-POLY1305-SHA256
        assert c.tls_unique is not None and len(c.tls_unique) == 32
        assert s.tls_unique == c.tls_unique
        assert c.cipher == s.cipher == "TLS_CHACHA20_POLY1305_SHA256"  # type: ignore[attr-defined]
        assert c.tls_version == "TLSv1.3"
        assert c.alpn == s.alpn == "smp/1"
        assert c.peer_chain_der == ident.chain_der and s.peer_chain_der == []
        assert c.chain is not None and c.chain.id_cert == ident.ca_cert_der
        assert not c.server_side and s.server_side
        assert s.sni is None  # the client sent no SNI
        await c.aclose()
        with anyio.fail_after(5):
            await rec.done.wait()
        assert rec.events == ["eof"]


@pytest.mark.anyio
async def test_each_connection_has_its_own_tls_unique(ident: X.RouterIdentity, server_ctx: ssl.SSLContext) -> None:
    rec = Recorder()
    async with running(server_ctx, rec) as port:
        a = await T.connect_tls("127.0.0.1", port, ident.key_hash)
        b = await T.connect_tls("127.0.0.1", port, ident.key_hash)
        assert a.tls_unique != b.tls_unique
        await a.aclose()
        await b.aclose()


@pytest.mark.anyio
async def test_ed448_fixture_router() -> None:
    """The reference's test router identity (Ed448, key hash = testKeyHash)."""
    chain = (FIX / "server.crt").read_bytes() + (FIX / "ca.crt").read_bytes()
    ctx = T.server_ssl_context(chain, FIX / "server.key")
    rec = Recorder()
    async with running(ctx, rec) as port:
        c = await T.connect_tls("127.0.0.1", port, b64url_decode("LcJUMfVhwD8yxjAiSaDzzGF3-kLG4Uh0Fl_ZIjrRwjI="))
        assert [len(d) for d in c.peer_chain_der] == [448, 442]
        assert c.cipher == "TLS_CHACHA20_POLY1305_SHA256"  # type: ignore[attr-defined]
        # the TLS leaf verifies the session key signed with the same online key
        from sansio_smp.crypto import KeyAlgorithm as KA, key_pair

        pub, _ = key_pair(KA.X25519, det_random(b"s"))
        signed = X.sign_session_key(X.load_private_key_pem((FIX / "server.key").read_bytes()), pub)
        assert X.verify_session_key(c.peer_chain_der[0], signed) == pub
        await c.aclose()


@pytest.mark.anyio
async def test_key_hash_mismatch_and_validity_are_rejected(ident: X.RouterIdentity, server_ctx: ssl.SSLContext) -> None:
    rec = Recorder()
    async with running(server_ctx, rec) as port:
        wrong = X.key_hash((FIX / "ca.crt").read_bytes())
        with pytest.raises(X.CertificateError) as e:
            await T.connect_tls("127.0.0.1", port, wrong)
        assert e.value.reason is X.CertificateFailure.UNKNOWN_CA
        far = dt.datetime(4800, 1, 1, tzinfo=dt.timezone.utc).timestamp()
        with pytest.raises(X.CertificateError) as e:
            await T.connect_tls("127.0.0.1", port, ident.key_hash, now=lambda: far)
        assert e.value.reason is X.CertificateFailure.EXPIRED
        with anyio.fail_after(5):
            await rec.done.wait()
        # the server survives and still serves
        c = await T.connect_tls("127.0.0.1", port, ident.key_hash)
        await c.send_block(blocks(1, 9)[0])
        assert await c.receive_block() == blocks(1, 9)[0][::-1]
        await c.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("offer", "expected"),
    [(None, None), (["http/1.1"], "http/1.1"), (["h2"], "h2"), (["nope"], None), (["smp/1"], "smp/1")],
)
async def test_alpn(ident: X.RouterIdentity, server_ctx: ssl.SSLContext, offer: list[str] | None, expected: str | None) -> None:
    rec = Recorder()
    async with running(server_ctx, rec) as port:
        c = await T.connect_tls("127.0.0.1", port, ident.key_hash, ssl_context=T.client_ssl_context(offer))
        await c.send_block(blocks(1, 2)[0])
        await c.receive_block()
        assert c.alpn == rec.streams[0].alpn == expected
        await c.aclose()


@pytest.mark.anyio
async def test_sni_is_observed_when_sent(ident: X.RouterIdentity, server_ctx: ssl.SSLContext) -> None:
    """A client that does send SNI is visible to the router (so ``sni is None`` means none)."""
    rec = Recorder()
    async with running(server_ctx, rec) as port:
        tcp = await anyio.connect_tcp("127.0.0.1", port)
        tls = await TLSStream.wrap(
            tcp, server_side=False, hostname="smp.example.com", ssl_context=T.client_ssl_context(), standard_compatible=False
        )
        await tls.send(blocks(1, 3)[0])
        await tls.receive()
        assert rec.streams[0].sni == "smp.example.com"
        await tls.aclose()


def _unrestricted_server_ctx(ident: X.RouterIdentity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    T._load_cert_chain(ctx, ident.chain_pem(), ident.server_key_pem())
    return ctx


def _unrestricted_client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.mark.anyio
async def test_tls13_suite_restriction_is_effective(ident: X.RouterIdentity, server_ctx: ssl.SSLContext) -> None:
    # control: two default Python peers agree on AES-256-GCM (48-byte tls-unique)
    rec = Recorder()
    async with running(_unrestricted_server_ctx(ident), rec) as port:
        c = await T.connect_tls("127.0.0.1", port, ident.key_hash, ssl_context=_unrestricted_client_ctx())
        assert c.cipher == "TLS_AES_256_GCM_SHA384" and len(c.tls_unique or b"") == 48  # type: ignore[attr-defined]
        await c.aclose()
        # our client restricts itself even against a default server
        c = await T.connect_tls("127.0.0.1", port, ident.key_hash)
        assert c.cipher == "TLS_CHACHA20_POLY1305_SHA256"  # type: ignore[attr-defined]
        await c.aclose()
    # our router restricts itself against a default client
    rec = Recorder()
    async with running(server_ctx, rec) as port:
        c = await T.connect_tls("127.0.0.1", port, ident.key_hash, ssl_context=_unrestricted_client_ctx())
        assert c.cipher == "TLS_CHACHA20_POLY1305_SHA256"  # type: ignore[attr-defined]
        await c.aclose()
        # and refuses a client that only has AES
        aes_only = _unrestricted_client_ctx()
        assert T.restrict_tls_parameters(aes_only, "TLS_AES_128_GCM_SHA256", None, None)
        with pytest.raises(T.TLSHandshakeError):
            await T.connect_tls("127.0.0.1", port, ident.key_hash, ssl_context=aes_only)


@pytest.mark.anyio
@pytest.mark.parametrize(("groups", "sigalgs"), [("P-256", None), (None, "ecdsa_secp256r1_sha256")])
async def test_groups_and_sigalgs_are_restricted(
    ident: X.RouterIdentity, server_ctx: ssl.SSLContext, groups: str | None, sigalgs: str | None
) -> None:
    ctx = _unrestricted_client_ctx()
    assert T.restrict_tls_parameters(ctx, T.TLS13_CIPHERSUITES, groups, sigalgs)
    rec = Recorder()
    async with running(server_ctx, rec) as port:
        with pytest.raises(T.TLSHandshakeError):
            await T.connect_tls("127.0.0.1", port, ident.key_hash, ssl_context=ctx)


@pytest.mark.anyio
async def test_tls12(ident: X.RouterIdentity, server_ctx: ssl.SSLContext) -> None:
    ctx = T.client_ssl_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    rec = Recorder()
    async with running(server_ctx, rec) as port:
        c = await T.connect_tls("127.0.0.1", port, ident.key_hash, ssl_context=ctx)
        await c.send_block(blocks(1, 4)[0])
        assert await c.receive_block() == blocks(1, 4)[0][::-1]
        assert c.tls_version == "TLSv1.2"
        assert c.cipher == rec.streams[0].cipher == "ECDHE-ECDSA-CHACHA20-POLY1305"  # type: ignore[attr-defined]
        assert c.tls_unique is not None and len(c.tls_unique) == 12 and c.tls_unique == rec.streams[0].tls_unique
        assert c.alpn == "smp/1"
        await c.aclose()


@pytest.mark.anyio
async def test_ed448_generated_identity(server_ctx: ssl.SSLContext) -> None:
    ident448 = X.generate_router_identity("127.0.0.1", det_random(b"448"), ISSUED, KeyAlgorithm.ED448)
    ctx = T.server_ssl_context(ident448.chain_pem(), ident448.server_key_pem())
    rec = Recorder()
    async with running(ctx, rec) as port:
        c = await T.connect_tls("127.0.0.1", port, ident448.key_hash)
        assert c.peer_chain_der == ident448.chain_der
        await c.aclose()


@pytest.mark.anyio
async def test_handler_errors_and_failed_handshakes_do_not_stop_the_listener(
    ident: X.RouterIdentity, server_ctx: ssl.SSLContext
) -> None:
    calls: list[int] = []

    async def handler(s: T.BlockStream) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        await s.send(await s.receive_block())

    async with running(server_ctx, handler) as port:
        # not TLS at all
        tcp = await anyio.connect_tcp("127.0.0.1", port)
        await tcp.send(b"GET / HTTP/1.1\r\n\r\n")
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            with anyio.fail_after(5):
                while True:
                    await tcp.receive()
        await tcp.aclose()
        c = await T.connect_tls("127.0.0.1", port, ident.key_hash)
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            with anyio.fail_after(5):
                await c.receive_block()
        await c.aclose()
        c = await T.connect_tls("127.0.0.1", port, ident.key_hash)
        await c.send_block(blocks(1, 5)[0])
        assert await c.receive_block() == blocks(1, 5)[0]
        await c.aclose()
    assert len(calls) == 2


# ---------------------------------------------------------------- plain TCP and memory


@pytest.mark.anyio
async def test_plain_tcp_block_stream_and_eof_semantics() -> None:
    unique = bytes(range(32))
    listener = await T.create_tcp_block_listener("127.0.0.1", 0, block_size=8, tls_unique=unique, alpn="smp/1")
    seen: list[object] = []

    async def handler(s: T.BlockStream) -> None:
        seen.append((s.tls_unique, s.alpn, s.server_side))
        seen.append(await s.receive_block())
        try:
            await s.receive_block()
        except anyio.IncompleteRead:
            seen.append("incomplete")

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        c = await T.connect_tcp_block("127.0.0.1", listener.port, block_size=8, tls_unique=unique)
        assert c.tls_unique == unique and c.peer_chain_der == []
        await c.send(b"abc")
        await c.send(b"defgh" + b"xyz")  # one block and 3 bytes of the next
        await c.aclose()
        with anyio.fail_after(5):
            while len(seen) < 3:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert seen == [(unique, "smp/1", True), b"abcdefgh", "incomplete"]


@pytest.mark.anyio
async def test_memory_pair() -> None:
    unique = b"\x07" * 32
    chain = [b"leaf-der", b"ca-der"]
    c, s = memory_stream_pair(unique, block_size=16, server_chain_der=chain)
    assert (c.tls_unique, s.tls_unique, c.alpn, s.alpn) == (unique, unique, "smp/1", "smp/1")
    assert c.peer_chain_der == chain and s.peer_chain_der == [] and s.server_side and not c.server_side
    with pytest.raises(LocalProtocolError):
        await c.send_block(b"short")
    await c.send(b"0123456789")
    await c.send(b"abcdef" + b"ABCDEFGHIJKLMNOP")
    assert await s.receive_block() == b"0123456789abcdef"
    assert await s.receive_block() == b"ABCDEFGHIJKLMNOP"
    await s.send_block(b"r" * 16)
    assert await c.receive_exactly(4) == b"rrrr"
    assert await c.receive_some(100) == b"r" * 12
    await c.aclose()
    with pytest.raises(anyio.EndOfStream):
        await s.receive_block()
    with pytest.raises(anyio.BrokenResourceError):
        await s.send(b"x")


@pytest.mark.anyio
async def test_memory_pair_incomplete_block() -> None:
    c, s = memory_stream_pair(None, alpn=None)
    assert s.tls_unique is None and s.alpn is None and c.block_size == 16384
    await c.send(b"x" * 100)
    await c.aclose()
    with pytest.raises(anyio.IncompleteRead):
        await s.receive_block()


# ---------------------------------------------------------------- the router's SSLSocket stream


@contextlib.asynccontextmanager
async def listening(ctx: ssl.SSLContext, handler: T.Handler, **kw) -> AsyncIterator[T.BlockListener]:
    listener = await T.create_tls_listener("127.0.0.1", 0, ctx, **kw)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        yield listener
        tg.cancel_scope.cancel()
    await listener.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("memory_bio", [False, True])
async def test_router_stream_kind(ident: X.RouterIdentity, server_ctx: ssl.SSLContext, memory_bio: bool) -> None:
    rec = Recorder()
    async with listening(server_ctx, rec, memory_bio=memory_bio) as lst:
        c = await T.connect_tls("127.0.0.1", lst.port, ident.key_hash)
        await c.send_block(blocks(1, 6)[0])
        assert await c.receive_block() == blocks(1, 6)[0][::-1]
        s = rec.streams[0]
        assert type(s) is (T.TLSBlockStream if memory_bio else T.SSLSocketBlockStream)
        assert s.tls_unique == c.tls_unique and s.alpn == "smp/1" and s.server_side
        await c.aclose()
        with anyio.fail_after(5):
            await rec.done.wait()
    assert rec.events == ["eof"]


@pytest.mark.anyio
async def test_socket_stream_full_duplex_partial_writes_and_split_blocks(
    ident: X.RouterIdentity, server_ctx: ssl.SSLContext
) -> None:
    """The router side sends 8 MB (more than the socket buffers hold: OpenSSL says WANT_WRITE
    and the write is resumed) while it receives blocks that arrive in small TLS records."""
    big = hashlib.sha256(b"big").digest() * (8 * 1024 * 1024 // 32)
    got_blocks: list[bytes] = []
    done = anyio.Event()

    async def handler(s: T.BlockStream) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(s.send, big)
            for _ in range(3):
                got_blocks.append(await s.receive_block())
        done.set()

    sent = blocks(3, 7)
    async with listening(server_ctx, handler) as lst:
        c = await T.connect_tls("127.0.0.1", lst.port, ident.key_hash)
        for b in sent:  # each block in 1000-byte TLS records
            for i in range(0, len(b), 1000):
                await c.send(b[i : i + 1000])
        await anyio.sleep(0.2)  # the router's send is stuck on a full socket meanwhile
        received = bytearray()
        with anyio.fail_after(20):
            while len(received) < len(big):
                received += await c.receive_some(1 << 20)
            await done.wait()
        assert bytes(received) == big
        assert got_blocks == sent
        await c.aclose()


@pytest.mark.anyio
async def test_socket_stream_incomplete_block_and_close_wakes_receiver(
    ident: X.RouterIdentity, server_ctx: ssl.SSLContext
) -> None:
    events: list[str] = []
    streams: list[T.BlockStream] = []

    async def handler(s: T.BlockStream) -> None:
        streams.append(s)
        try:
            await s.receive_block()
        except anyio.IncompleteRead:
            events.append("incomplete")
        except anyio.ClosedResourceError:
            events.append("closed")

    async with listening(server_ctx, handler) as lst:
        c = await T.connect_tls("127.0.0.1", lst.port, ident.key_hash)
        await c.send(b"x" * 100)
        await c.aclose()  # EOF inside a block
        with anyio.fail_after(5):
            while not events:
                await anyio.sleep(0.01)
        assert events == ["incomplete"]
        # a receiver waiting on an idle connection is woken when another task closes the stream
        c = await T.connect_tls("127.0.0.1", lst.port, ident.key_hash)
        with anyio.fail_after(5):
            while len(streams) < 2:
                await anyio.sleep(0.01)
            await anyio.sleep(0.1)
            await streams[1].aclose()
            while len(events) < 2:
                await anyio.sleep(0.01)
        assert events[1] == "closed"
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            with anyio.fail_after(5):
                await c.receive_block()
        await c.aclose()


@pytest.mark.anyio
async def test_handshake_timeout_closes_silent_peers(ident: X.RouterIdentity, server_ctx: ssl.SSLContext) -> None:
    rec = Recorder()
    async with listening(server_ctx, rec, handshake_timeout=0.3) as lst:
        tcp = await anyio.connect_tcp("127.0.0.1", lst.port)  # never sends a ClientHello
        with anyio.fail_after(5):
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await tcp.receive()
        await tcp.aclose()
        assert rec.streams == []
        c = await T.connect_tls("127.0.0.1", lst.port, ident.key_hash)  # still serving
        await c.send_block(blocks(1, 8)[0])
        assert await c.receive_block() == blocks(1, 8)[0][::-1]
        await c.aclose()
