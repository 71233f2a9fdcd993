"""A deterministic in-memory SMP network: virtual clock, seeded randomness, byte pipes (issue 2 item 6).

Whole router + client scenarios run in one process, without threads, sockets or real time, and
reproducibly from a seed. The sans-IO machines (:class:`sansio_smp.router.Router` with its
:class:`~sansio_smp.connection.RouterConnection`\\ s, :class:`sansio_smp.client.SMPClient`) are wired
together with in-memory byte pipes; :meth:`Network.run_until_idle` delivers the bytes in flight one
chunk at a time (which pipe goes next is drawn from the seeded generator, so different seeds give
different — but repeatable — interleavings), and :meth:`Network.advance` moves the virtual clock,
firing the machines' timers in time order::

    net = Network(seed=1)
    router = net.add_router(RouterConfig(queue_quota=4))
    alice = net.add_client(router)
    q = alice.call("create_queue").queue        # runs the network until idle
    bob = net.add_client(router)
    ...
    net.advance(600)                            # keep-alive PINGs, END flushes, expiry …

Every connection gets a random 32-byte "tls-unique" shared by both ends and ALPN ``smp/1`` (or
``None`` for the v6-only legacy case); the client really checks the router's signed session key
against the router's (generated, Ed25519) certificate chain. Randomness here comes from
``random.Random(seed)`` — allowed in transports, never in machines.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any, Callable, Iterable

from sansio_smp import client as c
from sansio_smp.addresses import ProtocolServer
from sansio_smp.connection import RouterConnection
from sansio_smp.crypto import KeyAlgorithm
from sansio_smp.encoding import VersionRange
from sansio_smp.handshake import SUPPORTED_SMP_VERSIONS
from sansio_smp.router import Router, RouterConfig
from sansio_smp.x509 import RouterIdentity, generate_router_identity, verify_session_key

DEFAULT_START_TIME = 1_700_000_000.0  # virtual epoch seconds (the router stamps messages with it)


class VirtualClock:
    """Seconds since the epoch, moved only by :meth:`advance`/:meth:`set`."""

    def __init__(self, start: float = DEFAULT_START_TIME) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time only moves forward")
        self.now += seconds
        return self.now

    def set(self, t: float) -> None:
        if t < self.now:
            raise ValueError("time only moves forward")
        self.now = float(t)


class _Pipe:
    """One direction of a link: chunks in flight, ``b""`` marks the end of the stream."""

    __slots__ = ("chunks", "closed", "deliver")

    def __init__(self, deliver: Callable[[bytes], None]) -> None:
        self.chunks: deque[bytes] = deque()
        self.closed = False
        self.deliver = deliver

    def push(self, data: bytes) -> None:
        if self.closed:
            return
        if data == b"":
            self.closed = True
        self.chunks.append(data)


class SimRouter:
    """A :class:`Router` machine on the simulated network, with its identity and address."""

    def __init__(self, net: "Network", name: str, config: RouterConfig, identity: RouterIdentity) -> None:
        self.net = net
        self.name = name
        self.identity = identity
        self.key_hash = identity.key_hash
        self.address = ProtocolServer((name,), "", self.key_hash)
        self.machine = Router(config, net.random_bytes)
        self.machine.start(net.now)
        self.connections: dict[int, RouterConnection] = {}
        #: store records the router handed out (persistence on): queue log lines and journal lines
        self.store_log: list[str] = []
        self.journal: list[str] = []
        self.fail_next_store_write: str | None = None
        self.restarts = 0

    @property
    def config(self) -> RouterConfig:
        return self.machine.config

    def _flush(self) -> None:
        """Make store records "durable" (kept in :attr:`store_log`/:attr:`journal`), then move the
        bytes of every connection with output into its pipe."""
        m = self.machine
        while True:
            writes = m.pending_store_writes()
            if writes:
                if self.fail_next_store_write is not None:
                    err, self.fail_next_store_write = self.fail_next_store_write, None
                    m.store_written(err)
                else:
                    self.store_log.extend(writes.queue_log)
                    self.journal.extend(writes.journal)
                    m.store_written()
            for cid in m.dirty_connections():
                conn = self.connections.get(cid)
                link = self.net._links.get(cid)
                if conn is not None and link is not None:
                    data = conn.data_to_send()
                    if data:
                        link.to_client.push(data)
            if not writes:
                return

    def _receive(self, conn_id: int, data: bytes) -> None:
        conn = self.connections.get(conn_id)
        if conn is None:
            return
        now = self.net.now
        if data == b"":
            events = conn.receive_data(b"")
            self.machine.handle_events(conn_id, events, now)
            self.machine.disconnect(conn_id)
            del self.connections[conn_id]
        else:
            events = conn.receive_data(data)
            self.machine.handle_events(conn_id, events, now)
            if conn.state.value == "error":
                # a fatal transport error (bad hello, undecryptable block): the router drops it
                self._drop(conn_id)
        self._flush()

    def _drop(self, conn_id: int) -> None:
        self.machine.disconnect(conn_id)
        self.connections.pop(conn_id, None)
        link = self.net._links.get(conn_id)
        if link is not None:
            link.to_client.push(b"")
            link.to_router.closed = True

    def drop_all_connections(self) -> None:
        """The router closes every connection (as on a restart); clients see EOF."""
        for cid in list(self.connections):
            self._drop(cid)
        self.net.run_until_idle()

    def restart(self, *, crash: bool = False, message_ttl: int | None = None) -> None:
        """Stop the router (every connection closes) and start a new :class:`Router` restored from
        the records it made durable (needs ``RouterConfig(persistence=True)``): the store log is
        replayed, the journal's messages reloaded (older than ``message_ttl`` dropped), as
        ``transports/router_runtime.py`` does at start. ``crash`` only changes the wording: in the
        simulation nothing undurable was ever acknowledged, so a crash loses nothing either."""
        from sansio_smp.store_log import restore_messages, restore_queue_store

        self.drop_all_connections()
        store, _warnings = restore_queue_store(self.store_log)
        restored = restore_messages(self.journal, store.queues, self.net.now, message_ttl)
        self.machine = Router(self.machine.config, self.net.random_bytes, store=store, messages=restored.queues)
        self.machine.start(self.net.now)
        self.restarts += 1

    def drop_client(self, client: "SimClient") -> None:
        """The router closes ``client``'s connection."""
        if client.conn_id in self.connections:
            self._drop(client.conn_id)
        self.net.run_until_idle()

    def handle_timer(self, now: float) -> None:
        self.machine.handle_timer(now)
        self._flush()

    def next_timer(self) -> float | None:
        return self.machine.next_timer()


class _Link:
    def __init__(self, to_router: _Pipe, to_client: _Pipe) -> None:
        self.to_router = to_router
        self.to_client = to_client


class SimClient:
    """An :class:`~sansio_smp.client.SMPClient` connected to a :class:`SimRouter`.

    ``events`` collects every event; :meth:`call` issues a command helper and runs the network
    until idle, returning the command's :class:`~sansio_smp.client.CommandResult` (or
    :class:`~sansio_smp.client.CommandFailed`)."""

    def __init__(self, net: "Network", router: SimRouter, name: str, **client_kwargs: Any) -> None:
        self.net = net
        self.router = router
        self.name = name
        self.client_kwargs = client_kwargs
        self.events: list[c.Event] = []
        self.results: dict[bytes, c.CommandResult | c.CommandFailed] = {}
        self._seen = 0
        self.conn_id = -1
        self.machine: c.SMPClient
        self._connect()

    def _connect(self, queues: Iterable[c.RecipientQueue] = ()) -> None:
        net = self.net
        router = self.router
        conn_id = net._next_conn_id()
        self.conn_id = conn_id
        session_id = net.random_bytes(32)
        kwargs = dict(self.client_kwargs)
        alpn = kwargs.pop("alpn", "smp/1")
        router_versions = kwargs.pop("router_versions", SUPPORTED_SMP_VERSIONS)
        rconn = RouterConnection(
            session_id=session_id,
            key_hash=router.key_hash,
            identity=router.identity,
            random_bytes=net.random_bytes,
            alpn=alpn,
            versions=router_versions,
        )
        router.connections[conn_id] = rconn
        router.machine.connect(conn_id, rconn)
        self.machine = c.SMPClient(
            key_hash=kwargs.pop("key_hash", router.key_hash),
            session_id=session_id,
            random_bytes=net.random_bytes,
            now=net.now,
            peer_chain=router.identity.chain_der,
            verify_session_key=verify_session_key,
            server=router.address,
            **kwargs,
        )
        for q in queues:
            self.machine.add_queue(q)
        link = _Link(
            _Pipe(lambda data, cid=conn_id: router._receive(cid, data)),
            _Pipe(lambda data, m=self.machine: self._receive(m, data)),
        )
        net._links[conn_id] = link
        net._clients.append(self)
        router._flush()  # the router hello

    def _receive(self, machine: c.SMPClient, data: bytes) -> None:
        if machine is not self.machine:
            return  # bytes for a previous connection
        for ev in machine.receive_data(data, self.net.now):
            self._record(ev)
        self._pump()

    def _record(self, ev: c.Event) -> None:
        self.events.append(ev)
        if isinstance(ev, (c.CommandResult, c.CommandFailed)):
            self.results[ev.corr_id] = ev

    def _pump(self) -> None:
        data = self.machine.data_to_send()
        if data:
            self.net._links[self.conn_id].to_router.push(data)
        if self.machine.closed:
            link = self.net._links.get(self.conn_id)
            if link is not None and not link.to_router.closed:
                link.to_router.push(b"")

    # -- convenience

    @property
    def connected(self) -> bool:
        return self.machine.established

    def call(self, method: str, *args: Any, **kwargs: Any) -> c.CommandResult | c.CommandFailed:
        """``machine.<method>(*args, now=net.now, **kwargs)``, run until idle, return its result."""
        self.net.run_until_idle()
        corr_id = getattr(self.machine, method)(*args, now=self.net.now, **kwargs)
        self._pump()
        self.net.run_until_idle()
        try:
            return self.results[corr_id]
        except KeyError:
            raise AssertionError(f"{self.name}: no answer to {method} after the network went idle") from None

    def call_many(self, method: str, *args: Any, **kwargs: Any) -> list[c.CommandResult | c.CommandFailed]:
        """Like :meth:`call` for helpers that return several corrIds (``subscribe_many``)."""
        self.net.run_until_idle()
        corr_ids = getattr(self.machine, method)(*args, now=self.net.now, **kwargs)
        self._pump()
        self.net.run_until_idle()
        return [self.results[x] for x in corr_ids]

    def issue(self, method: str, *args: Any, **kwargs: Any) -> bytes:
        """Issue a command without running the network (to race several clients)."""
        corr_id = getattr(self.machine, method)(*args, now=self.net.now, **kwargs)
        self._pump()
        return corr_id

    def new_events(self) -> list[c.Event]:
        """Events since the previous call."""
        out = self.events[self._seen :]
        self._seen = len(self.events)
        return out

    def pushes(self, kind: type | None = None) -> list[c.ServerPush]:
        """All :class:`~sansio_smp.client.ServerPush` events so far (optionally of one response type)."""
        return [
            e for e in self.events if isinstance(e, c.ServerPush) and (kind is None or isinstance(e.response, kind))
        ]

    def messages(self) -> list[c.ReceivedMessage]:
        """Every message pushed to this client (``MSG`` events), decrypted."""
        return [e.message for e in self.pushes() if e.message is not None]

    def disconnect(self) -> None:
        """The client closes its connection; the router sees EOF."""
        for ev in self.machine.close():
            self._record(ev)
        self._pump()
        self.net.run_until_idle()

    def reconnect(self) -> None:
        """A new connection (new session) to the same router, keeping the known queues."""
        queues = list(self.machine.queues.values())
        if not self.machine.closed:
            self.disconnect()
        self._connect(queues)
        self.net.run_until_idle()


class Network:
    """Routers, clients and the pipes between them, driven step by step from one seed."""

    def __init__(self, seed: int = 0, *, start_time: float = DEFAULT_START_TIME, fragment: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = VirtualClock(start_time)
        self.fragment = fragment
        self.routers: list[SimRouter] = []
        self._clients: list[SimClient] = []
        self._links: dict[int, _Link] = {}
        self._conn_ids = 0
        self.steps = 0

    @property
    def now(self) -> float:
        return self.clock.now

    def random_bytes(self, n: int) -> bytes:
        """Seeded randomness for every machine on this network."""
        return self.rng.randbytes(n)

    def _next_conn_id(self) -> int:
        self._conn_ids += 1
        return self._conn_ids

    # -- building

    def add_router(
        self,
        config: RouterConfig | None = None,
        *,
        name: str | None = None,
        identity: RouterIdentity | None = None,
        sign_algorithm: KeyAlgorithm = KeyAlgorithm.ED25519,
    ) -> SimRouter:
        name = name or f"router{len(self.routers) + 1}.sim"
        identity = identity or generate_router_identity(name, self.random_bytes, self.now, sign_algorithm)
        r = SimRouter(self, name, config or RouterConfig(), identity)
        self.routers.append(r)
        return r

    def add_client(
        self,
        router: SimRouter,
        *,
        name: str | None = None,
        versions: VersionRange = SUPPORTED_SMP_VERSIONS,
        **client_kwargs: Any,
    ) -> SimClient:
        """Connect a new client (handshake included, the network is run until idle).

        Extra keyword arguments go to :class:`~sansio_smp.client.SMPClient`; ``alpn`` (``None`` = no
        ALPN ⇒ v6 only), ``router_versions`` and ``key_hash`` (a wrong one fails the handshake) are
        understood too."""
        sc = SimClient(self, router, name or f"client{len(self._clients) + 1}", versions=versions, **client_kwargs)
        self.run_until_idle()
        return sc

    # -- running

    def _in_flight(self) -> list[_Pipe]:
        out = []
        for link in self._links.values():
            if link.to_router.chunks:
                out.append(link.to_router)
            if link.to_client.chunks:
                out.append(link.to_client)
        return out

    def step(self) -> bool:
        """Deliver one chunk from one pipe (chosen by the seeded generator); ``False`` if idle."""
        for sc in self._clients:
            sc._pump()
        pipes = self._in_flight()
        if not pipes:
            return False
        pipe = pipes[self.rng.randrange(len(pipes))]
        data = pipe.chunks.popleft()
        if self.fragment and len(data) > 1 and self.rng.random() < 0.5:
            cut = self.rng.randrange(1, len(data))
            pipe.chunks.appendleft(data[cut:])
            data = data[:cut]
        self.steps += 1
        pipe.deliver(data)
        return True

    def run_until_idle(self, max_steps: int = 1_000_000) -> int:
        """Deliver bytes until nothing is in flight; returns the number of steps taken."""
        n = 0
        while self.step():
            n += 1
            if n >= max_steps:
                raise RuntimeError("the simulated network did not go idle")
        return n

    def _timers(self) -> list[tuple[float, Any]]:
        out: list[tuple[float, Any]] = []
        for r in self.routers:
            t = r.next_timer()
            if t is not None:
                out.append((t, r))
        for sc in self._clients:
            t = sc.machine.next_timer()
            if t is not None:
                out.append((t, sc))
        return out

    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward, firing every timer that falls due on the way (in time
        order) and running the network until idle after each."""
        target = self.now + seconds
        self.run_until_idle()
        while True:
            due = [t for t in self._timers() if t[0] <= target]
            if not due:
                break
            t = min(x[0] for x in due)
            self.clock.set(max(t, self.now))
            for when, node in due:
                if when <= self.now:
                    if isinstance(node, SimRouter):
                        node.handle_timer(self.now)
                    else:
                        for ev in node.machine.handle_timer(self.now):
                            node._record(ev)
                        node._pump()
            self.run_until_idle()
        self.clock.set(target)
        for sc in self._clients:  # let every machine know the time
            for ev in sc.machine.handle_timer(self.now):
                sc._record(ev)
        self.run_until_idle()


__all__ = ["DEFAULT_START_TIME", "Network", "SimClient", "SimRouter", "VirtualClock"]
