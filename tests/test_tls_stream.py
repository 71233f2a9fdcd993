"""Edge cases of the non-blocking SSLSocket block stream (transports/tls.py): unfinished writes
retried with exactly the rest, blocks already buffered read without waiting, EOF after a
non-waiting read, close waking a waiting reader, a cancelled wait followed by a read."""

from __future__ import annotations

import os
import socket
import time

import anyio
import pytest

from sansio_smp.x509 import generate_router_identity
from transports.tls import SSLSocketBlockStream, client_ssl_context, server_ssl_context, tls_handshake_socket

ident = generate_router_identity("127.0.0.1", os.urandom, time.time() - 3600)
sctx = server_ssl_context(ident.chain_pem(), ident.server_key_pem())
cctx = client_ssl_context()
BS = 16384

async def pair(small=True):
    a, b = socket.socketpair()
    for s in (a, b) if small else ():
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    res = {}
    async with anyio.create_task_group() as tg:
        async def srv(): res["s"] = await tls_handshake_socket(a, sctx, True)
        async def cli(): res["c"] = await tls_handshake_socket(b, cctx, False)
        tg.start_soon(srv); tg.start_soon(cli)
    return SSLSocketBlockStream(res["s"]), SSLSocketBlockStream(res["c"])

async def _test_send_nowait_retry():
    s, c = await pair()
    blocks = [bytes([i % 256]) * BS for i in range(200)]
    got = []
    partial = 0
    async def reader():
        for _ in range(len(blocks)):
            got.append(await c.receive_block())
            if len(got) % 20 == 0:
                await anyio.sleep(0.01)  # slow reader
    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        for blk in blocks:
            rest = s.send_nowait(blk)
            if rest:
                partial += 1
                await s.send(rest)  # the contract: exactly the rest, next
    assert got == blocks, "data mismatch"
    assert partial > 0, "the small socket buffers must force unfinished writes"
    await s.aclose(); await c.aclose()

async def _test_nowait_receive_and_batches():
    s, c = await pair()
    n = 50
    data = b"".join(bytes([i]) * BS for i in range(n))
    async def writer():
        view = memoryview(data); pos = 0
        while pos < len(data):  # odd-sized writes: blocks split across records
            k = min(7000, len(data) - pos); await c.send(bytes(view[pos:pos+k])); pos += k
    got = []; nowait = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        while len(got) < n:
            got.append(await s.receive_block())
            while True:
                b = s.receive_block_nowait()
                if b is None: break
                nowait += 1; got.append(b)
    assert b"".join(got) == data, "receive mismatch"
    
    # EOF after a nowait: surfaces at the next receive
    await c.aclose()
    await anyio.sleep(0.05)
    assert s.receive_block_nowait() is None
    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
        await s.receive_block()
    await s.aclose()

async def _test_close_wakes_reader():
    s, c = await pair()
    async def closer():
        await anyio.sleep(0.05); await s.aclose()
    async with anyio.create_task_group() as tg:
        tg.start_soon(closer)
        with pytest.raises(anyio.ClosedResourceError), anyio.fail_after(5):
            await s.receive_block()
    await c.aclose()

async def _test_cancel_then_read():
    s, c = await pair()
    with anyio.move_on_after(0.05):
        await s.receive_block()
    async with anyio.create_task_group() as tg:
        tg.start_soon(c.send, b"x" * BS)
        assert await s.receive_block() == b"x" * BS
    
    await s.aclose(); await c.aclose()

async def _test_nowait_prebuffered():
    s, c = await pair(small=False)
    n = 10
    data = b"".join(bytes([i]) * BS for i in range(n))
    await c.send(data[:5 * BS + 100])
    await anyio.sleep(0.05)
    got = [await s.receive_block()]
    nowait = 0
    while True:
        b = s.receive_block_nowait()
        if b is None: break
        nowait += 1; got.append(b)
    # a partial block is now buffered inside the stream
    async with anyio.create_task_group() as tg:
        tg.start_soon(c.send, data[5 * BS + 100:])
        while len(got) < n:
            got.append(await s.receive_block())
    assert b"".join(got) == data, "mismatch"
    assert nowait == 4, nowait  # 5 whole blocks were buffered: 1 awaited + 4 without waiting
    await s.aclose(); await c.aclose()


def test_nowait_prebuffered() -> None:
    anyio.run(_test_nowait_prebuffered)


def test_send_nowait_retry() -> None:
    anyio.run(_test_send_nowait_retry)


def test_nowait_receive_and_batches() -> None:
    anyio.run(_test_nowait_receive_and_batches)


def test_close_wakes_reader() -> None:
    anyio.run(_test_close_wakes_reader)


def test_cancel_then_read() -> None:
    anyio.run(_test_cancel_then_read)
