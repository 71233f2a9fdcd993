"""The XFTP server and client over real TLS + HTTP/2 (xftp-ntf.md §4.1 XFTPServerTests scenarios,
§3.4 web clients): delivery, recipients, delete, ack, quota, store log and restarts, basic auth,
skipped re-upload, SNI/CORS/web handshake, bad bodies, redirects, a 50 MB round trip with bounded
memory, the CLI."""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from sansio_smp import x509
from sansio_smp.crypto import KeyAlgorithm, PrivateKey
from sansio_smp.encoding import pad, unpad
from transports.http2 import H2ClientConnection, HTTP2Error
from transports.tls import connect_tls
from xftp import description as d
from xftp import handshake as hs
from xftp import protocol as p
from transports import xftp_runtime as rt
from sansio_smp.addresses import ProtocolServer as Addr
from sansio_smp.addresses import ServerWithAuth
from xftp.server import InactiveClients, ServerConfig, client_inactive

FIX = Path(__file__).parent / "data" / "xftp" / "fixtures"
ROOT = Path(__file__).resolve().parent.parent
K128 = 128 * 1024
SIZES = (64 * 1024, K128, 256 * 1024, 1 << 20, 4 << 20)


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _identity(name: str = "") -> tuple[hs.ServerIdentity, bytes, bytes]:
    base = FIX / name if name else FIX
    server_pem, ca_pem = (base / "server.crt").read_bytes(), (base / "ca.crt").read_bytes()
    key_pem = (base / "server.key").read_bytes()
    chain = [x509.pem_to_der_list(server_pem)[0], x509.pem_to_der_list(ca_pem)[0]]
    return hs.ServerIdentity(chain, x509.load_private_key_pem(key_pem)), server_pem + ca_pem, key_pem


@asynccontextmanager
async def running_server(
    tmp: Path,
    *,
    web: bool = False,
    store_log: bool = True,
    identity: str = "",
    now=time.time,
    expire_interval=None,
    inactive_clients=None,
    **cfg,
):
    """Start a server in this event loop; yields (runtime, address, files dir)."""
    ident, chain_pem, key_pem = _identity(identity)
    files = tmp / "files"
    files.mkdir(exist_ok=True)
    cfg.setdefault("allowed_chunk_sizes", SIZES)
    config = ServerConfig(str(files), **cfg)
    log_path = str(tmp / rt.STORE_LOG_NAME) if store_log else None
    machine, _ = rt.restore_store(config, log_path)
    web_ctx = rt.web_ssl_context(str(FIX / "web.crt"), str(FIX / "web.key")) if web else None
    ctx = rt.xftp_server_ssl_context(chain_pem, key_pem, web_ctx)
    runtime = rt.XFTPServerRuntime(
        machine,
        ident,
        ctx,
        web_enabled=web,
        store_log=rt.StoreLogWriter(log_path),
        file_timeout=5.0,
        now=now,
        expire_interval=expire_interval,
        inactive_clients=inactive_clients,
    )
    async with anyio.create_task_group() as tg:
        port = await tg.start(runtime.serve, "127.0.0.1", 0)
        yield runtime, Addr.for_host("localhost", port, ident.key_hash, "xftp"), files
        tg.cancel_scope.cancel()


@asynccontextmanager
async def client(addr: Addr):
    async with anyio.create_task_group() as tg:
        c = await rt.XFTPClient.connect(addr, tg)
        try:
            yield c
        finally:
            await c.aclose()
            tg.cancel_scope.cancel()


def ed(i: int) -> PrivateKey:
    return PrivateKey(KeyAlgorithm.ED25519, bytes([i]) * 32)


def chunk_file(tmp: Path, data: bytes, name: str = "chunk") -> str:
    path = tmp / name
    path.write_bytes(data)
    return str(path)


async def new_chunk(c: rt.XFTPClient, data: bytes, rcps: list[PrivateKey], snd: PrivateKey | None = None, digest=None):  # type: ignore[no-untyped-def]
    snd = snd or ed(1)
    info = p.FileInfo(snd.public(), len(data), digest or hashlib.sha256(data).digest())
    return snd, await c.create_chunk(snd, info, [r.public() for r in rcps], None)


# ---------------------------------------------------------------- §4.1 1–6


@pytest.mark.anyio
async def test_delivery_one_and_two_clients(tmp_path):
    data = os.urandom(K128)
    src = chunk_file(tmp_path, data)
    async with running_server(tmp_path) as (srv, addr, files):
        async with client(addr) as c1, client(addr) as c2:
            assert c1.params.version == 3 and c1.server_session_key is not None
            snd, (sid, (rid,)) = await new_chunk(c1, data, [ed(2)])
            await c1.upload_chunk(snd, sid, src, 0, K128)
            stored = files / d.b64url_encode(sid)
            assert stored.read_bytes() == data
            dest = str(tmp_path / "got")
            with pytest.raises(p.XFTPErrorResponse) as e:  # wrong expected digest: client-side DIGEST
                await c2.download_chunk(ed(2), rid, K128, b"x" * 32, dest)
            assert e.value.error == p.DIGEST and not os.path.exists(dest)
            await c2.download_chunk(ed(2), rid, K128, hashlib.sha256(data).digest(), dest)
            assert Path(dest).read_bytes() == data
            # FNEW with a wrong digest, then FPUT: DIGEST and no file left
            snd2, (sid2, _) = await new_chunk(c1, data, [ed(3)], digest=b"z" * 32)
            with pytest.raises(p.XFTPErrorResponse) as e:
                await c1.upload_chunk(snd2, sid2, src, 0, K128)
            assert e.value.error == p.DIGEST
            assert sorted(os.listdir(files)) == [d.b64url_encode(sid)]
            # 6. an unsupported chunk size
            with pytest.raises(p.XFTPErrorResponse) as e:
                await new_chunk(c1, os.urandom(96 * 1024), [ed(3)])
            assert e.value.error == p.SIZE
            await c1.ping()


@pytest.mark.anyio
async def test_add_recipients_delete_and_ack(tmp_path):
    data = os.urandom(64 * 1024)
    src = chunk_file(tmp_path, data)
    digest = hashlib.sha256(data).digest()
    async with running_server(tmp_path) as (srv, addr, files):
        async with client(addr) as c:
            snd, (sid, (r1,)) = await new_chunk(c, data, [ed(2)])
            r2, r3 = await c.add_recipients(snd, sid, [ed(3).public(), ed(4).public()])
            await c.upload_chunk(snd, sid, src, 0, len(data))
            for i, (rid, k) in enumerate(((r1, ed(2)), (r2, ed(3)), (r3, ed(4)))):
                dest = str(tmp_path / f"d{i}")
                await c.download_chunk(k, rid, len(data), digest, dest)
                assert Path(dest).read_bytes() == data
            # ack: the file stays, the recipient ID is gone
            await c.ack_chunk(ed(2), r1)
            assert (files / d.b64url_encode(sid)).exists()
            for op in (c.download_chunk(ed(2), r1, len(data), digest, str(tmp_path / "x")), c.ack_chunk(ed(2), r1)):
                with pytest.raises(p.XFTPErrorResponse) as e:
                    await op
                assert e.value.error == p.AUTH
            # delete: file gone, FGET AUTH, second FDEL AUTH
            await c.delete_chunk(snd, sid)
            assert not (files / d.b64url_encode(sid)).exists()
            for op in (c.download_chunk(ed(3), r2, len(data), digest, str(tmp_path / "y")), c.delete_chunk(snd, sid)):
                with pytest.raises(p.XFTPErrorResponse) as e:
                    await op
                assert e.value.error == p.AUTH


# ---------------------------------------------------------------- §4.1 9–12


@pytest.mark.anyio
async def test_quota(tmp_path):
    datas = [os.urandom(K128) for _ in range(3)]
    srcs = [chunk_file(tmp_path, x, f"c{i}") for i, x in enumerate(datas)]
    async with running_server(tmp_path, quota=2 * K128) as (srv, addr, files):
        async with client(addr) as c:
            made = [await new_chunk(c, x, [ed(2)]) for x in datas]
            for (snd, (sid, _)), src in zip(made[:2], srcs):
                await c.upload_chunk(snd, sid, src, 0, K128)
            snd3, (sid3, (rid3,)) = made[2]
            with pytest.raises(p.XFTPErrorResponse) as e:
                await c.upload_chunk(snd3, sid3, srcs[2], 0, K128)
            assert e.value.error == p.QUOTA
            await c.delete_chunk(made[0][0], made[0][1][0])
            await c.upload_chunk(snd3, sid3, srcs[2], 0, K128)
            await c.download_chunk(ed(2), rid3, K128, hashlib.sha256(datas[2]).digest(), str(tmp_path / "o"))
            assert (tmp_path / "o").read_bytes() == datas[2]


@pytest.mark.anyio
async def test_early_response_to_a_large_body(tmp_path):
    """The server answers QUOTA without reading a 4 MiB body (more than the HTTP/2 window): the
    stream is reset with NO_ERROR after the response and the client gets the error, no hang;
    the connection stays usable."""
    data = os.urandom(4 << 20)
    async with running_server(tmp_path, quota=64 * 1024) as (srv, addr, files):
        async with client(addr) as c:
            snd, (sid, _) = await new_chunk(c, data, [ed(2)])
            with anyio.fail_after(10):
                with pytest.raises(p.XFTPErrorResponse) as e:
                    await c.upload_chunk(snd, sid, data)
            assert e.value.error == p.QUOTA
            await c.ping()
            assert os.listdir(files) == []


@pytest.mark.anyio
async def test_store_log_and_restarts(tmp_path):
    """§4.1 10 and a restart between upload and download: nothing is lost."""
    data = os.urandom(K128)
    src = chunk_file(tmp_path, data)
    digest = hashlib.sha256(data).digest()
    log = tmp_path / rt.STORE_LOG_NAME
    async with running_server(tmp_path) as (srv, addr, files):
        async with client(addr) as c:
            snd, (sid, (r1, r2)) = await new_chunk(c, data, [ed(2), ed(3)])
            await c.upload_chunk(snd, sid, src, 0, K128)
            await c.download_chunk(ed(2), r1, K128, digest, str(tmp_path / "a"))
    assert len(log.read_text().splitlines()) == 3
    # restart without the store log: all AUTH
    other = tmp_path / "nolog"
    other.mkdir()
    async with running_server(other, store_log=False) as (srv, addr, files2):
        async with client(addr) as c:
            with pytest.raises(p.XFTPErrorResponse) as e:
                await c.download_chunk(ed(2), r1, K128, digest, str(tmp_path / "b"))
            assert e.value.error == p.AUTH
    # restart with it: downloads work; FACK adds a line
    async with running_server(tmp_path) as (srv, addr, files):
        async with client(addr) as c:
            await c.download_chunk(ed(2), r1, K128, digest, str(tmp_path / "c"))
            assert (tmp_path / "c").read_bytes() == data
            await c.ack_chunk(ed(2), r1)
    assert len(log.read_text().splitlines()) == 4
    async with running_server(tmp_path) as (srv, addr, files):
        assert len(log.read_text().splitlines()) == 3  # compacted on start
        async with client(addr) as c:
            with pytest.raises(p.XFTPErrorResponse):
                await c.download_chunk(ed(2), r1, K128, digest, str(tmp_path / "d"))
            await c.download_chunk(ed(3), r2, K128, digest, str(tmp_path / "e"))
            await c.delete_chunk(snd, sid)
    assert len(log.read_text().splitlines()) == 4
    async with running_server(tmp_path) as (srv, addr, files):
        assert log.read_text() == "" and os.listdir(files) == []


def test_store_log_writer_keeps_no_partial_line(tmp_path):
    """The XFTP store log shares the SMP store's append file: a write that fails part-way (disk
    full) is rolled back, and a torn last line (crash) is dropped on restore."""
    from xftp import store_log as sl

    log = tmp_path / rt.STORE_LOG_NAME
    (tmp_path / "files").mkdir()
    recs = [
        sl.AddFile(bytes([i]) * 16, p.FileInfo(ed(i).public(), 65536, bytes([i]) * 32), 1700000000) for i in (1, 2, 3)
    ]
    w = rt.StoreLogWriter(str(log))
    assert w.append(recs[:1]) and not w.append([])
    w.sync()
    real_write = os.write

    def disk_full(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        real_write(fd, bytes(data[:7]))
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "write", disk_full)
        with pytest.raises(OSError):
            w.append(recs[1:2])
    assert w.append(recs[2:])
    w.sync()
    w.close()
    lines = [sl.encode_record(r) for r in (recs[0], recs[2])]
    assert log.read_text() == "".join(line + "\n" for line in lines)
    with open(log, "a") as f:
        f.write(lines[1][:30])  # a crash in the middle of a line
    machine, warnings = rt.restore_store(ServerConfig(str(tmp_path / "files")), str(log))
    assert warnings == ["dropped a torn last line"]
    assert set(machine.store.files) == {recs[0].sender_id, recs[2].sender_id}
    assert log.read_text() == "".join(line + "\n" for line in lines)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "new_files, server_pwd, client_pwd, ok",
    [
        (True, b"pwd", None, False),
        (True, b"pwd", b"wrong", False),
        (False, b"pwd", b"pwd", False),
        (True, b"pwd", b"pwd", True),
        (True, None, b"any", True),
    ],
)
async def test_basic_auth(tmp_path, new_files, server_pwd, client_pwd, ok):
    """§4.1 11, through a real upload with the password in the address."""
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(5000))
    async with running_server(tmp_path, allow_new_files=new_files, new_file_password=server_pwd) as (srv, addr, _):
        server = ServerWithAuth(addr, client_pwd)
        if ok:
            sent = await rt.send_file(str(src), [server], out_dir=None, retries=1)
            assert len(sent.recipient_descriptions) == 1
        else:
            with pytest.raises(p.XFTPErrorResponse) as e:
                await rt.send_file(str(src), [server], out_dir=None, retries=1)
            assert e.value.error == p.AUTH


@pytest.mark.anyio
async def test_skip_committed(tmp_path):
    """§4.1 12: a second FPUT with other bytes is OK and changes nothing."""
    data, other = os.urandom(K128), os.urandom(K128)
    async with running_server(tmp_path) as (srv, addr, files):
        async with client(addr) as c:
            snd, (sid, (rid,)) = await new_chunk(c, data, [ed(2)])
            await c.upload_chunk(snd, sid, chunk_file(tmp_path, data), 0, K128)
            await c.upload_chunk(snd, sid, chunk_file(tmp_path, other, "other"), 0, K128)
            await c.download_chunk(ed(2), rid, K128, hashlib.sha256(data).digest(), str(tmp_path / "o"))
            assert (tmp_path / "o").read_bytes() == data


@pytest.mark.anyio
async def test_expiration(tmp_path):
    """§4.1 7: files older than the TTL are removed by the server's periodic check (clock
    injected): FGET and FDEL then give AUTH, the chunk file is gone, the log has FDEL."""
    clock = [time.time()]
    data = os.urandom(64 * 1024)
    async with running_server(tmp_path, file_expiration=1, now=lambda: clock[0], expire_interval=0.02) as (
        srv,
        addr,
        files,
    ):
        async with client(addr) as c:
            snd, (sid, (rid,)) = await new_chunk(c, data, [ed(2)])
            await c.upload_chunk(snd, sid, data)
            await anyio.sleep(0.1)
            assert os.listdir(files)  # not expired yet
            clock[0] += 2 * 3600
            await anyio.sleep(0.2)
            assert os.listdir(files) == [] and srv.machine.used_storage == 0
            for op in (
                c.download_chunk(ed(2), rid, len(data), hashlib.sha256(data).digest()),
                c.delete_chunk(snd, sid),
            ):
                with pytest.raises(p.XFTPErrorResponse) as e:
                    await op
                assert e.value.error == p.AUTH
    assert (tmp_path / rt.STORE_LOG_NAME).read_text().splitlines()[-1] == f"FDEL {d.b64url_encode(sid)}"


def test_client_inactive_compares_last_activity_with_ttl():
    assert not client_inactive(100.0, 110.0, 10)  # exactly ttl ago: still active
    assert client_inactive(100.0, 110.01, 10)
    assert not client_inactive(100.0, 100.0, 0.5)
    assert InactiveClients() == InactiveClients(21600, 3600)  # defaultInactiveClientExpiration


@pytest.mark.anyio
async def test_inactive_clients_are_disconnected(tmp_path):
    """§4.1 8 (ttl 0.5 s, check 0.1 s): PINGs every 0.1 s keep a connection open for 3×ttl; once
    idle, the server closes it after ttl (+ up to a check interval), seen by the client; a
    connection that only did the handshake is closed the same way."""
    ttl, check = 0.5, 0.1
    async with running_server(tmp_path, inactive_clients=InactiveClients(ttl, check)) as (_srv, addr, _):
        async with client(addr) as c, client(addr) as idle:
            start = time.monotonic()
            while time.monotonic() - start < 3 * ttl:
                last = time.monotonic()
                await c.ping()
                assert not c.closed
                await anyio.sleep(0.1)
            assert idle.closed  # the handshake-only connection went meanwhile
            with anyio.fail_after(5):
                while not c.closed:
                    await anyio.sleep(0.01)
            waited = time.monotonic() - last
            assert ttl - 0.05 <= waited <= ttl + check + 1.0, waited
            with pytest.raises(HTTP2Error):
                await c.ping()
    # with disconnect off (the default) an idle connection stays open
    (tmp_path / "off").mkdir()
    async with running_server(tmp_path / "off") as (_srv, addr, _):
        async with client(addr) as c:
            await anyio.sleep(2 * ttl)
            assert not c.closed
            await c.ping()


@pytest.mark.parametrize(
    "section, expected",
    [
        ("disconnect = off\n# ttl = 21600\n", None),
        ("disconnect = on\nttl = 60\ncheck_interval = 5\n", InactiveClients(60, 5)),
        ("disconnect: on\nttl: 21600\ncheck_interval: 3600\n", InactiveClients()),
        ("disconnect = on\nttl = 60\n", "check_interval is required"),
        ("disconnect = on\nttl = 1.5\ncheck_interval = 1\n", "not a whole number"),
        ("disconnect = maybe\n", "expected on or off"),
    ],
)
def test_inactive_clients_ini(tmp_path, section, expected):
    """§1.14 ``[INACTIVE_CLIENTS]``: off by default; with ``disconnect = on`` both keys are required."""
    from xftp.cli import CLIError, load_settings

    (tmp_path / "file-server.ini").write_text(f"[FILES]\npath = files\n\n[INACTIVE_CLIENTS]\n{section}")
    if isinstance(expected, str):
        with pytest.raises(CLIError, match=expected):
            load_settings(str(tmp_path))
    else:
        assert load_settings(str(tmp_path)).inactive_clients == expected


# ---------------------------------------------------------------- bad bodies, corrupted chunks


async def _raw_fput(c: rt.XFTPClient, snd: PrivateKey, sid: bytes, body: bytes) -> p.Response | p.XFTPError:
    block = p.encode_command_block(c.params, sid, p.FPUT(), snd, b"", c.server_session_key)
    resp = await c.h2c.request("POST", "/", (), block + body)
    head = await resp.body.read_exactly(p.XFTP_BLOCK_SIZE)
    c.h2c.release(resp)
    return p.decode_response(c.params, head).response


@pytest.mark.anyio
async def test_truncated_oversized_bodies_and_corrupted_chunks(tmp_path):
    data = os.urandom(64 * 1024)
    digest = hashlib.sha256(data).digest()
    async with running_server(tmp_path) as (srv, addr, files):
        async with client(addr) as c:
            snd, (sid, (rid,)) = await new_chunk(c, data, [ed(2)])
            assert await _raw_fput(c, snd, sid, data[:-1]) == p.ERR(p.SIZE)
            assert await _raw_fput(c, snd, sid, data + b"x") == p.ERR(p.SIZE)
            assert await _raw_fput(c, snd, sid, b"") == p.ERR(p.SIZE)
            assert os.listdir(files) == [] and srv.machine.used_storage == 0
            # a short block is BLOCK
            resp = await c.h2c.request("POST", "/", (), b"\x00" * 100)
            head = await resp.body.read_all(p.XFTP_BLOCK_SIZE)
            assert p.decode_response(c.params, head).response == p.ERR(p.BLOCK)
            assert await _raw_fput(c, snd, sid, data) == p.OK()
            # corrupt the stored chunk: the recipient detects it (DIGEST) and keeps nothing
            stored = files / d.b64url_encode(sid)
            raw = bytearray(stored.read_bytes())
            raw[100] ^= 1
            stored.write_bytes(bytes(raw))
            with pytest.raises(p.XFTPErrorResponse) as e:
                await c.download_chunk(ed(2), rid, len(data), digest, str(tmp_path / "o"))
            assert e.value.error == p.DIGEST and not (tmp_path / "o").exists()
            # the chunk file removed behind the server's back: AUTH
            stored.unlink()
            with pytest.raises(p.XFTPErrorResponse) as e:
                await c.download_chunk(ed(2), rid, len(data), digest, str(tmp_path / "o"))
            assert e.value.error == p.AUTH


# ---------------------------------------------------------------- SNI, CORS, web handshake (§4.1 13–21)


async def _h2(addr: Addr, tg, *, sni: str | None, alpn: list[str]):  # type: ignore[no-untyped-def]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(alpn)
    if sni is None:
        stream = await connect_tls("127.0.0.1", addr.port_number, None, ssl_context=ctx, alpn=alpn)
    else:
        import anyio.streams.tls as atls

        from transports.tls import TLSBlockStream

        tcp = await anyio.connect_tcp("127.0.0.1", addr.port_number)
        tls = await atls.TLSStream.wrap(
            tcp, server_side=False, hostname=sni, ssl_context=ctx, standard_compatible=False
        )
        stream = TLSBlockStream(tls)
    h2c = H2ClientConnection(stream, authority="localhost")
    await h2c.start()
    tg.start_soon(h2c.run)
    return stream, h2c


async def _post(h2c: H2ClientConnection, body: bytes, headers=(), method="POST"):  # type: ignore[no-untyped-def]
    resp = await h2c.request(method, "/", headers, body or None)
    data = await resp.body.read_all(1 << 20)
    h2c.release(resp)
    return resp, data


@pytest.mark.anyio
async def test_sni_web_certificate_cors_and_web_handshake(tmp_path):
    web_leaf = x509.pem_to_der_list((FIX / "web.crt").read_bytes())[0]
    ident, _, _ = _identity()
    async with running_server(tmp_path, web=True) as (srv, addr, files):
        async with anyio.create_task_group() as tg:
            # 13. SNI + h2: ALPN h2, the web (RSA) certificate
            stream, h2c = await _h2(addr, tg, sni="localhost", alpn=["h2"])
            assert stream.alpn == "h2" and stream.peer_chain_der[0] == web_leaf
            # 21. a command without hello on an SNI connection: padded SESSION
            resp, body = await _post(h2c, pad(b"PING", 16384))
            assert len(body) == 16384 and unpad(body) == b"SESSION"
            # 15. CORS headers on SNI POST responses; 16. preflight
            assert ("access-control-allow-origin", "*") in resp.headers
            assert ("access-control-expose-headers", "*") in resp.headers
            resp, body = await _post(h2c, b"", method="OPTIONS")
            for h in hs.CORS_PREFLIGHT_HEADERS:
                assert h in resp.headers
            # 19. web handshake with a challenge
            challenge = os.urandom(32)
            resp, body = await _post(h2c, hs.ClientHello(challenge).block(), [("xftp-web-hello", "1")])
            shs = hs.ServerHandshake.parse_block(body)
            neg = hs.check_web_handshake(shs, challenge, ident.key_hash, time.time())
            assert shs.session_id == stream.tls_unique
            resp, body = await _post(
                h2c, hs.ClientHandshake(neg.version, ident.key_hash).block(), [("xftp-handshake", "1")]
            )
            assert body == b""
            params = neg.params()
            resp, body = await _post(h2c, p.encode_command_block(params, b"", p.PING()))
            assert p.decode_response(params, body[:16384]).response == p.PONG()
            # 20. re-handshake on the same connection: same session id
            resp, body = await _post(h2c, hs.ClientHello(challenge).block(), [("xftp-web-hello", "1")])
            assert hs.ServerHandshake.parse_block(body).session_id == shs.session_id
            resp, body = await _post(h2c, hs.ClientHandshake(1, ident.key_hash).block())
            assert body == b""
            await h2c.aclose()
            # 14. no SNI, xftp/1: the identity certificate; 17. no CORS headers
            stream, h2c = await _h2(addr, tg, sni=None, alpn=["xftp/1"])
            assert stream.alpn == "xftp/1" and stream.peer_chain_der[0] == ident.leaf
            resp, body = await _post(h2c, b"")
            assert not any(k == "access-control-allow-origin" for k, _ in resp.headers)
            hs.check_native_handshake(
                hs.ServerHandshake.parse_block(body), stream.tls_unique, ident.leaf, ident.key_hash
            )
            await h2c.aclose()
            # h2 without SNI: 200 with an empty body
            stream, h2c = await _h2(addr, tg, sni=None, alpn=["h2"])
            resp, body = await _post(h2c, b"")
            assert resp.status == 200 and body == b""
            await h2c.aclose()
            tg.cancel_scope.cancel()
        # 18. the native client through an SNI-enabled server
        data = os.urandom(64 * 1024)
        async with client(addr) as c:
            snd, (sid, (rid,)) = await new_chunk(c, data, [ed(2)])
            await c.upload_chunk(snd, sid, chunk_file(tmp_path, data), 0, len(data))
            await c.download_chunk(ed(2), rid, len(data), hashlib.sha256(data).digest(), str(tmp_path / "o"))


@pytest.mark.anyio
async def test_no_alpn_is_version_1(tmp_path):
    async with running_server(tmp_path, identity="ed25519") as (srv, addr, files):
        async with anyio.create_task_group() as tg:
            c = await rt.XFTPClient.connect(addr, tg, alpn=None)
            assert c.stream.alpn is None and c.params.version == 1 and c.server_session_key is None
            data = os.urandom(64 * 1024)
            snd, (sid, (rid,)) = await new_chunk(c, data, [ed(2)])
            await c.upload_chunk(snd, sid, chunk_file(tmp_path, data), 0, len(data))
            await c.aclose()
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_wrong_key_hash_is_refused(tmp_path):
    async with running_server(tmp_path) as (srv, addr, files):
        wrong = Addr.for_host("localhost", addr.port_number, bytes(32), "xftp")
        async with anyio.create_task_group() as tg:
            with pytest.raises(x509.CertificateError):
                await rt.XFTPClient.connect(wrong, tg)
            tg.cancel_scope.cancel()


# ---------------------------------------------------------------- files: send / recv / del, redirects


@pytest.mark.anyio
async def test_send_receive_delete_over_two_servers(tmp_path):
    src = tmp_path / "photo.jpg"
    content = os.urandom(1_500_000)
    src.write_bytes(content)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with running_server(tmp_path / "a") as (s1, a1, f1), running_server(tmp_path / "b") as (s2, a2, f2):
        servers = [ServerWithAuth(a1), ServerWithAuth(a2)]
        seen = []
        sent = None
        for _ in range(6):  # chunks go to random servers: until both got some
            sent = await rt.send_file(
                str(src), servers, out_dir=str(tmp_path), recipients=2, progress=lambda a, b: seen.append((a, b))
            )
            if os.listdir(f1) and os.listdir(f2):
                break
        assert os.listdir(f1) and os.listdir(f2)
        assert seen[-1][0] == seen[-1][1] == sent.sender_description.size
        assert [Path(x).name for x in sent.recipient_paths] == ["rcv1.xftp", "rcv2.xftp"]
        out = tmp_path / "out"
        got = await rt.receive_file(rt.load_description(sent.recipient_paths[1]), str(out))
        assert Path(got).name == "photo.jpg" and Path(got).read_bytes() == content
        got2 = await rt.receive_file(rt.load_description(sent.web_link), str(out))
        assert Path(got2).name == "photo_1.jpg" and Path(got2).read_bytes() == content
        # acknowledged chunks cannot be downloaded again
        with pytest.raises(p.XFTPErrorResponse):
            await rt.receive_file(rt.load_description(sent.recipient_paths[1]), str(out), retries=1)
        assert sorted(os.listdir(out)) == ["photo.jpg", "photo_1.jpg"]  # no partial files
        await rt.delete_file(d.FileDescription.decode_valid(Path(sent.sender_path).read_bytes()))
        with pytest.raises(rt.XFTPClientError):
            await rt.delete_file(sent.recipient_descriptions[0])


@pytest.mark.anyio
async def test_redirect_description_is_followed(tmp_path):
    content = os.urandom(300_000)
    src = tmp_path / "doc.pdf"
    src.write_bytes(content)
    async with running_server(tmp_path) as (srv, addr, files):
        servers = [ServerWithAuth(addr)]
        inner = await rt.send_file(str(src), servers, out_dir=None)
        yaml = tmp_path / "inner.yaml"
        yaml.write_bytes(inner.recipient_descriptions[0].encode())
        outer = await rt.send_file(str(yaml), servers, out_dir=None, file_name="")
        fd = outer.recipient_descriptions[0]
        rd = d.FileDescription(
            fd.party,
            fd.size,
            fd.digest,
            fd.key,
            fd.nonce,
            fd.chunk_size,
            fd.chunks,
            d.RedirectFileInfo(inner.recipient_descriptions[0].size, inner.recipient_descriptions[0].digest),
        )
        got = await rt.receive_file(d.FileDescription.decode_valid(rd.encode()), str(tmp_path / "out"))
        assert Path(got).read_bytes() == content and Path(got).name == "doc.pdf"
        # a redirect whose fields do not match the inner description is refused
        bad = d.FileDescription(
            fd.party, fd.size, fd.digest, fd.key, fd.nonce, fd.chunk_size, fd.chunks, d.RedirectFileInfo(1, b"x" * 64)
        )
        outer2 = await rt.send_file(str(yaml), servers, out_dir=None, file_name="")
        bad = d.FileDescription(
            bad.party,
            bad.size,
            outer2.recipient_descriptions[0].digest,
            outer2.recipient_descriptions[0].key,
            outer2.recipient_descriptions[0].nonce,
            bad.chunk_size,
            outer2.recipient_descriptions[0].chunks,
            bad.redirect,
        )
        with pytest.raises(rt.XFTPClientError, match="Redirect"):
            await rt.receive_file(bad, str(tmp_path / "out2"))
        assert not (tmp_path / "out2").exists() or os.listdir(tmp_path / "out2") == []


@pytest.mark.anyio
async def test_tampered_description_digest_is_detected(tmp_path):
    src = tmp_path / "f"
    src.write_bytes(os.urandom(100_000))
    async with running_server(tmp_path) as (srv, addr, files):
        sent = await rt.send_file(str(src), [ServerWithAuth(addr)], out_dir=None)
        fd = sent.recipient_descriptions[0]
        bad = d.FileDescription(fd.party, fd.size, b"y" * 64, fd.key, fd.nonce, fd.chunk_size, fd.chunks)
        with pytest.raises(rt.XFTPClientError, match="digest"):
            await rt.receive_file(bad, str(tmp_path / "o"))
        wrong_key = d.FileDescription(fd.party, fd.size, fd.digest, b"k" * 32, fd.nonce, fd.chunk_size, fd.chunks)
        with pytest.raises(rt.XFTPClientError, match="decrypting"):
            await rt.receive_file(wrong_key, str(tmp_path / "o"))
        assert os.listdir(tmp_path / "o") == []


# ---------------------------------------------------------------- 50 MB with bounded memory; the CLI


_ROUND_TRIP = r"""
import os, sys, resource, hashlib, anyio
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from test_xftp_server import running_server
from transports import xftp_runtime as rt
from sansio_smp.addresses import ServerWithAuth
from pathlib import Path

async def main(size):
    tmp = Path({tmp!r})
    src = tmp / "big.bin"
    h = hashlib.sha256()
    with open(src, "wb") as f:
        left = size
        while left:
            b = os.urandom(min(left, 1 << 20)); h.update(b); f.write(b); left -= len(b)
    async with running_server(tmp) as (srv, addr, files):
        sent = await rt.send_file(str(src), [ServerWithAuth(addr)], out_dir=str(tmp))
        got = await rt.receive_file(sent.recipient_descriptions[0], str(tmp / "out"))
    h2 = hashlib.sha256()
    with open(got, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h2.update(piece)
    assert h2.digest() == h.digest()
    # VmHWM (peak RSS of this program since exec; ru_maxrss would inherit the forking pytest's peak)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    print(int(hwm.split()[1]))

anyio.run(main, int(sys.argv[1]))
"""


def _rss_of_round_trip(tmp: Path, size: int) -> int:
    tmp.mkdir()
    script = _ROUND_TRIP.format(root=str(ROOT), tests=str(ROOT / "tests"), tmp=str(tmp))
    out = subprocess.run([sys.executable, "-c", script, str(size)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.strip().splitlines()[-1])


def test_50mb_round_trip_with_bounded_memory(tmp_path):
    """A 50 MB file through a real TLS server and back with bounded memory: doubling the file
    from 25 MB to 50 MB must add well under the 25 MB that buffering it whole would cost (peak RSS
    grows only until the upload/download windows are full, then stays flat)."""
    mid = _rss_of_round_trip(tmp_path / "mid", 25_000_000)
    big = _rss_of_round_trip(tmp_path / "big", 50_000_000)
    assert big < 200_000, big
    assert big - mid < 12_000, (mid, big)


def _cli(*args: str, env=None) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    code = "import sys; from xftp.cli import main, server_main; sys.exit({}(sys.argv[2:]))"
    fn, rest = args[0], args[1:]
    return subprocess.run(
        [sys.executable, "-c", code.format(fn), "x", *rest],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def test_cli_init_start_send_recv_del(tmp_path):
    d_srv = tmp_path / "srv"
    r = _cli("server_main", "init", "--dir", str(d_srv), "--host", "localhost", "--port", "0", "--quota", "1gb")
    assert r.returncode != 0  # port 0 is refused
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    r = _cli("server_main", "init", "--dir", str(d_srv), "--host", "localhost", "--port", str(port), "-a", "ED25519")
    assert r.returncode == 0, r.stderr
    address = r.stdout.strip().splitlines()[-1]
    fp = (d_srv / "fingerprint").read_text().strip()
    assert address == f"xftp://{fp}@localhost:{port}"
    ini_text = (d_srv / "file-server.ini").read_text()
    assert "[FILES]" in ini_text
    assert "[INACTIVE_CLIENTS]\n# TTL and interval to check inactive clients\ndisconnect = off\n" in ini_text
    assert "# ttl = 21600\n# check_interval = 3600\n" in ini_text
    assert _cli("server_main", "init", "--dir", str(d_srv)).returncode == 1  # already initialised
    code = "import sys; from xftp.cli import server_main; sys.exit(server_main(sys.argv[1:]))"
    server = subprocess.Popen(
        [sys.executable, "-c", code, "start", "--dir", str(d_srv)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout.readline().strip() == address
        lines = [server.stdout.readline().strip() for _ in range(4)]
        assert lines[2] == "not expiring inactive clients" and lines[3].startswith("Listening on port")
        src = tmp_path / "hello.txt"
        src.write_bytes(b"hello world\n" * 1000)
        r = _cli("main", "send", str(src), str(tmp_path), "-n", "2", "-s", address)
        assert r.returncode == 0, r.stderr
        assert "Uploading" in r.stderr and "100%" in r.stderr
        rcv = tmp_path / "hello.txt.xftp" / "rcv2.xftp"
        assert str(rcv) in r.stdout and "Web link:\nhttps://localhost/#" in r.stdout
        r = _cli("main", "info", str(rcv))
        assert r.returncode == 0 and "Recipient file description" in r.stdout
        r = _cli("main", "recv", str(rcv), str(tmp_path / "got"))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "got" / "hello.txt").read_bytes() == src.read_bytes()
        r = _cli("main", "del", str(tmp_path / "hello.txt.xftp" / "snd.xftp.private"))
        assert r.returncode == 0 and "File deleted" in r.stdout
        r = _cli("main", "recv", str(tmp_path / "hello.txt.xftp" / "rcv1.xftp"), str(tmp_path / "got"))
        assert r.returncode == 1 and "AUTH" in r.stderr
        r = _cli("main", "send", str(src), "-s", "xftp://bad")
        assert r.returncode == 1 and "invalid server address" in r.stderr
    finally:
        server.terminate()
        server.wait(10)
