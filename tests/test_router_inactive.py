"""The router's inactive-client disconnect (smp.md §3.7, ``disconnectTransport``): connections
without subscriptions (``SUB``/``NSUB``; not ``GET``) and without traffic for ``ttl`` are closed.

The subscription rule is checked on the pure router (:meth:`Router.has_subscriptions`, in-memory
harness); the timer and the closing over real TLS on 127.0.0.1 with a short ttl/check."""

from __future__ import annotations

import os
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import anyio
import pytest

from router_harness import Harness, create_queue
from sansio_smp.addresses import ProtocolServer
from sansio_smp.crypto import KeyAlgorithm, PrivateKey
from sansio_smp.expiration import InactiveClients
from sansio_smp.protocol import Del, End, Get, NKey, Nid, NSub, Ok, SOk, Sub, SubscriptionMode
from sansio_smp.router import Router, RouterConfig
from sansio_smp.x509 import generate_router_identity
from transports.client_runtime import SMPClientSession, connect_session
from transports.router_runtime import RouterRuntime
from transports.tls import create_tls_listener, server_ssl_context

# ---------------------------------------------------------------- which connections are subscribed


def test_new_and_sub_subscribe_get_does_not():
    h = Harness()
    a, b, g = h.connect(), h.connect(), h.connect()
    assert not any(h.router.has_subscriptions(c.conn_id) for c in (a, b, g))
    rid, _, rkey, _, _ = create_queue(a)  # NEW with the subscribe mode
    assert h.router.has_subscriptions(a.conn_id)
    rid2, _, rkey2, _, _ = create_queue(b, sub_mode=SubscriptionMode.ONLY_CREATE)
    assert not h.router.has_subscriptions(b.conn_id)
    assert g.send_recv(b"1", rid2, Get(), rkey2) == (b"1", rid2, Ok())  # GET: ProhibitSub, not subscribed
    assert not h.router.has_subscriptions(g.conn_id)
    assert b.send_recv(b"2", rid, Sub(), rkey) == (b"2", rid, SOk())  # takes a's queue
    assert h.router.has_subscriptions(b.conn_id)
    h.advance(RouterConfig().pending_end_interval + 1)
    assert a.recv() == (b"", rid, End())
    assert not h.router.has_subscriptions(a.conn_id)  # its only subscription ended
    assert b.send_recv(b"3", rid, Del(), rkey) == (b"3", rid, Ok())
    assert not h.router.has_subscriptions(b.conn_id)  # its only queue is deleted
    h.router.disconnect(g.conn_id)
    assert not h.router.has_subscriptions(g.conn_id) and not h.router.has_subscriptions(12345)


def test_nsub_alone_is_a_subscription():
    h = Harness()
    r, n = h.connect(), h.connect()
    rid, _, rkey, _, _ = create_queue(r, sub_mode=SubscriptionMode.ONLY_CREATE)
    n_key, ntf_dh = h.key(), h.key(KeyAlgorithm.X25519)
    _, _, nid = r.send_recv(b"1", rid, NKey(n_key.public(), ntf_dh.public()), rkey)
    assert isinstance(nid, Nid)
    assert not h.router.has_subscriptions(n.conn_id)
    assert n.send_recv(b"2", nid.notifier_id, NSub(), n_key)[2] == SOk()
    assert h.router.has_subscriptions(n.conn_id) and not h.router.has_subscriptions(r.conn_id)


# ---------------------------------------------------------------- the runtime over TLS

IDENTITY = generate_router_identity("127.0.0.1", os.urandom, time.time())
TTL, CHECK = 0.6, 0.1


@asynccontextmanager
async def running_router(inactive: InactiveClients | None) -> AsyncIterator[tuple[ProtocolServer, RouterRuntime]]:
    runtime = RouterRuntime(Router(RouterConfig(), os.urandom), IDENTITY, inactive_clients=inactive)
    ctx = server_ssl_context(IDENTITY.chain_pem(), IDENTITY.server_key_pem())
    listener = await create_tls_listener("127.0.0.1", 0, ctx)
    address = ProtocolServer(("127.0.0.1",), str(listener.port), IDENTITY.key_hash)
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run, [listener])
        try:
            yield address, runtime
        finally:
            runtime.stop()


async def _closed_after(s: SMPClientSession, limit: float) -> float:
    """Seconds until the router closes ``s`` (fails after ``limit``)."""
    start = time.monotonic()
    with anyio.fail_after(limit):
        await s.wait_closed()
    return time.monotonic() - start


async def _wait_peers(runtime: RouterRuntime, n: int) -> None:
    with anyio.fail_after(3):
        while len(runtime.peers) != n:
            await anyio.sleep(0.01)


def test_idle_connection_without_subscriptions_is_closed_subscribed_one_kept():
    async def main() -> None:
        async with running_router(InactiveClients(TTL, CHECK)) as (addr, runtime):
            async with connect_session(addr) as idle, connect_session(addr) as sub, connect_session(addr) as getter:
                q = await sub.create_queue()  # NEW subscribes
                q2 = await getter.create_queue(subscribe=False)
                assert await getter.get(q2) is None  # traffic, but GET is not a subscription
                waited = await _closed_after(idle, TTL + 3 * CHECK + 1.0)
                assert waited >= TTL - 0.1  # not before ttl without traffic
                assert "closed" in (idle.closed_reason or "") or idle.is_closed
                await _closed_after(getter, TTL + 3 * CHECK + 1.0)
                await anyio.sleep(TTL + 3 * CHECK)  # the subscriber stays, well past ttl
                assert not sub.is_closed
                await sub.ping()
                info = await sub.queue_info(q)
                assert info.size == 0
                await _wait_peers(runtime, 1)
                assert runtime.inactive_disconnects == 2
                assert runtime.router.connection_count == 1

    anyio.run(main)


def test_ping_traffic_keeps_a_connection_then_idle_closes_it():
    async def main() -> None:
        async with running_router(InactiveClients(TTL, CHECK)) as (addr, runtime):
            async with connect_session(addr) as s:
                end = time.monotonic() + 2.5 * TTL
                while time.monotonic() < end:
                    await s.ping()  # PING/PONG: a block each way
                    last_traffic = time.monotonic()
                    await anyio.sleep(TTL / 3)
                assert not s.is_closed
                await _closed_after(s, TTL + 3 * CHECK + 1.0)
                assert time.monotonic() - last_traffic >= TTL - 0.05
                with pytest.raises(Exception):
                    await s.ping()
                await _wait_peers(runtime, 0)

    anyio.run(main)


def test_subscription_lost_to_another_client_then_closed():
    """``END`` removes the subscription (``removeWhenNoSubs``): the idle connection is then closed."""

    async def main() -> None:
        async with running_router(InactiveClients(TTL, CHECK)) as (addr, runtime):
            async with connect_session(addr) as a, connect_session(addr) as b:
                q = await a.create_queue()
                b.machine.add_queue(q)
                await b.subscribe(q)  # a gets END (after pending_end_interval) and has no subscription
                assert runtime.router.has_subscriptions(max(runtime.peers))  # b connected last
                await _closed_after(a, TTL + 3 * CHECK + 1.0)
                assert not b.is_closed

    anyio.run(main)


def test_nsub_connection_kept():
    async def main() -> None:
        async with running_router(InactiveClients(TTL, CHECK)) as (addr, runtime):
            async with connect_session(addr) as r, connect_session(addr) as n:
                q = await r.create_queue(subscribe=False)
                n_key = PrivateKey.generate(KeyAlgorithm.ED25519, os.urandom)
                dh = PrivateKey.generate(KeyAlgorithm.X25519, os.urandom)
                res = await r.request("nkey", q, n_key.public(), dh.public())
                assert isinstance(res.response, Nid)
                assert (await n.request("nsub", res.response.notifier_id, n_key)).response == SOk()
                await _closed_after(r, TTL + 3 * CHECK + 1.0)  # the recipient did not subscribe
                assert not n.is_closed
                await n.ping()

    anyio.run(main)


def test_off_by_default():
    async def main() -> None:
        async with running_router(None) as (addr, runtime):
            async with connect_session(addr) as s:
                await anyio.sleep(0.5)
                assert not s.is_closed
                await s.ping()
                assert runtime.inactive_disconnects == 0

    anyio.run(main)
