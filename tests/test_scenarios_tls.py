"""The key client scenarios over real TLS on 127.0.0.1: the router runtime (transports/router_runtime.py)
with a TLS listener, and SMPClientSession (transports/client_runtime.py) with the chain checked against
the key hash (smp.md §2, §3, §6.3, §6.4, §6.5, §3.7)."""

from __future__ import annotations

import os
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import anyio
import pytest

from sansio_smp import client as c
from sansio_smp import protocol as p
from sansio_smp.addresses import ProtocolServer, SMPQueueUri
from sansio_smp.router import Router, RouterConfig
from sansio_smp.x509 import CertificateError, generate_router_identity
from transports.client_runtime import SMPClientSession, connect_session
from transports.router_runtime import RouterRuntime
from transports.tls import create_tls_listener, server_ssl_context

IDENTITY = generate_router_identity("127.0.0.1", os.urandom, time.time())


@asynccontextmanager
async def running_router(config: RouterConfig | None = None) -> AsyncIterator[tuple[ProtocolServer, RouterRuntime]]:
    router = Router(config or RouterConfig(), os.urandom)
    runtime = RouterRuntime(router, IDENTITY)
    ctx = server_ssl_context(IDENTITY.chain_pem(), IDENTITY.server_key_pem())
    listener = await create_tls_listener("127.0.0.1", 0, ctx)
    address = ProtocolServer(("127.0.0.1",), str(listener.port), IDENTITY.key_hash)
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run, [listener])
        try:
            yield address, runtime
        finally:
            runtime.stop()


def run(fn) -> None:  # type: ignore[no-untyped-def]
    anyio.run(fn)


def _sender(q: c.RecipientQueue) -> c.SenderQueue:
    return c.SenderQueue.from_uri(SMPQueueUri.from_str(q.queue_uri().to_str()), os.urandom)


async def _next_message(s: SMPClientSession, timeout: float = 5) -> c.ReceivedMessage:
    with anyio.fail_after(timeout):
        while True:
            push = await s.next_push()
            if push.message is not None:
                return push.message


def test_create_send_receive_over_tls() -> None:
    async def main() -> None:
        async with running_router() as (addr, _):
            async with connect_session(addr) as alice, connect_session(addr) as bob:
                assert alice.version == 18 and alice.block_encryption
                assert alice.stream.tls_version == "TLSv1.3" and alice.stream.alpn == "smp/1"
                q = await alice.create_queue()
                sq = _sender(q)
                await bob.secure_sender(sq)
                for text in (b"first", b"second", "ünïcode".encode()):
                    await bob.send_message(sq, text)
                got = []
                for _ in range(3):
                    msg = await _next_message(alice)
                    got.append(msg.body)
                    await alice.ack(q, msg.msg_id)
                assert got == [b"first", b"second", "ünïcode".encode()]
                info = await alice.queue_info(q)
                assert info.size == 0 and info.snd

    run(main)


def test_switch_subscription_over_tls() -> None:
    async def main() -> None:
        async with running_router(RouterConfig(pending_end_interval=0.1)) as (addr, _):
            async with connect_session(addr) as a1, connect_session(addr) as a2, connect_session(addr) as bob:
                q = await a1.create_queue()
                sq = _sender(q)
                await bob.secure_sender(sq)
                await bob.send_message(sq, b"one")
                first = await _next_message(a1)
                a2.machine.add_queue(q)
                await a2.subscribe(q)
                again = await _next_message(a2)
                assert again.msg_id == first.msg_id
                with anyio.fail_after(5):
                    push = await a1.next_push()
                assert isinstance(push.response, p.End) and push.entity_id == q.rcv_id
                with pytest.raises(c.SMPErrorResponse) as e:
                    await a1.ack(q, first.msg_id)
                assert e.value.error == p.NO_MSG
                await a1.delete(q)
                with anyio.fail_after(5):
                    push = await a2.next_push()
                assert isinstance(push.response, p.Deld)

    run(main)


def test_quota_and_typed_errors_over_tls() -> None:
    async def main() -> None:
        async with running_router(RouterConfig(queue_quota=2)) as (addr, _):
            async with connect_session(addr) as alice, connect_session(addr) as bob:
                q = await alice.create_queue(subscribe=False)
                sq = _sender(q)
                await bob.secure_sender(sq)
                await bob.send_message(sq, b"1")
                await bob.send_message(sq, b"2")
                with pytest.raises(c.SMPErrorResponse) as e:
                    await bob.send_message(sq, b"3")
                assert e.value.error == p.QUOTA
                with pytest.raises(c.SMPErrorResponse) as e:
                    await bob.send(sq.snd_id, b"unsigned")
                assert e.value.error == p.AUTH
                msg = await alice.get(q)
                assert msg is not None and msg.body == b"1"

    run(main)


def test_reconnect_over_tls() -> None:
    async def main() -> None:
        async with running_router() as (addr, _):
            async with connect_session(addr) as alice:
                q = await alice.create_queue()
            async with connect_session(addr) as bob:
                sq = _sender(q)
                await bob.secure_sender(sq)
                await bob.send_message(sq, b"while you were away")
            async with connect_session(addr) as alice:
                alice.machine.add_queue(q)
                await alice.subscribe(q)
                msg = await _next_message(alice)
                assert msg.body == b"while you were away"
                await alice.ack(q, msg.msg_id)

    run(main)


def test_keep_alive_pings_over_tls() -> None:
    async def main() -> None:
        async with running_router() as (addr, _):
            async with connect_session(addr, ping_interval=0.05) as alice:
                await alice.create_queue()
                await anyio.sleep(0.5)
                assert alice.machine.pings_sent >= 3 and not alice.is_closed
                assert alice.unexpected == []

    run(main)


def test_wrong_identity_is_refused() -> None:
    async def main() -> None:
        async with running_router() as (addr, _):
            wrong = ProtocolServer(addr.hosts, addr.port, b"\x01" * 32)
            with pytest.raises(CertificateError):
                async with connect_session(wrong):
                    pass  # pragma: no cover

    run(main)


def test_router_stop_is_seen_as_connection_lost() -> None:
    async def main() -> None:
        async with running_router() as (addr, runtime):
            async with connect_session(addr) as alice:
                await alice.create_queue()
                runtime.stop()
                with anyio.fail_after(10):
                    await alice.wait_closed()
                with pytest.raises(c.ConnectionLost):
                    await alice.ping()

    run(main)


def test_connection_refused() -> None:
    async def main() -> None:
        async with running_router() as (addr, _):
            port = int(addr.port)
        with pytest.raises(OSError):
            async with connect_session(ProtocolServer(("127.0.0.1",), str(port), IDENTITY.key_hash), timeout=5):
                pass  # pragma: no cover

    run(main)


def test_bad_input_is_logged_once_without_ids(caplog: pytest.LogCaptureFixture) -> None:
    """A foreign key hash in the client hello closes the connection with HANDSHAKE IDENTITY, a
    malformed block is answered ERR BLOCK; each is logged once, by error code only."""
    from sansio_smp.handshake import ClientHello
    from sansio_smp.transmission import pad_block
    from transports.tls import connect_tls

    async def main() -> None:
        async with running_router() as (addr, _):
            port = int(addr.port)
            stream = await connect_tls("127.0.0.1", port, IDENTITY.key_hash)
            await stream.receive_block()  # router hello
            await stream.send(pad_block(ClientHello(18, b"\x01" * 32).encode()))
            with pytest.raises((anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError)):
                with anyio.fail_after(5):
                    await stream.receive_block()
            await stream.aclose()
            stream = await connect_tls("127.0.0.1", port, IDENTITY.key_hash)
            await stream.receive_block()
            await stream.send(pad_block(ClientHello(18, IDENTITY.key_hash).encode()))  # no key: no block encryption
            await stream.send(pad_block(b"\x02\x00\x05hello"))  # batch of 2 with one truncated item
            with anyio.fail_after(5):
                reply = await stream.receive_block()
            assert b"ERR BLOCK" in reply
            await stream.aclose()

    with caplog.at_level("INFO", logger="smp"):
        run(main)
    closed = [r.getMessage() for r in caplog.records if "closed on transport error" in r.getMessage()]
    bad = [r.getMessage() for r in caplog.records if "bad transmission" in r.getMessage()]
    assert len(closed) == 1 and "HANDSHAKE IDENTITY" in closed[0]
    assert bad == [bad[0]] and "ERR BLOCK" in bad[0]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert IDENTITY.key_hash.hex() not in text and "127.0.0.1" not in text
