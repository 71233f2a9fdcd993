"""The anyio runtime of the SMP router: TLS (or in-memory) streams in, the pure
:class:`~sansio_smp.router.Router` in the middle, the store files underneath (smp.md §2, §3, §6).

* One task per connection reads whole blocks and feeds them to its
  :class:`~sansio_smp.connection.RouterConnection` and the router (blocks already received
  back to back are handled in the same pass, so their replies share one write); one sender task
  per connection writes what the router produced (a slow reader never blocks other connections;
  a backlog over :data:`MAX_SEND_BACKLOG` closes that connection). Output for a connection with
  nothing queued is written at once when its socket takes it (``send_nowait``), without waking
  the sender task.
* One timer task runs :meth:`Router.handle_timer` at :meth:`Router.next_timer` (END/DELD flush,
  NMSG delivery, message expiry) with the real clock.
* One store task drains :meth:`Router.pending_store_writes`, appends and fsyncs in a worker
  thread, then calls :meth:`Router.store_written`: while one batch is being fsync'd, every
  connection keeps working and the next batch collects all their records (group commit across
  connections). Records no reply waits for (``ACK`` removals, see :mod:`sansio_smp.router`)
  wait up to :data:`LAZY_WRITE_DELAY` to join the next batch. A failed write (disk full) rolls
  the router back and answers ``ERR STORE``.
* SIGTERM/SIGINT: stop accepting, wait until every record is on disk, flush the responses,
  close the connections and the files. SIGKILL loses nothing that was acknowledged (the store
  files recover a torn last line at start).
* ``[INACTIVE_CLIENTS]`` (``disconnectTransport``, smp.md §3.7): with an
  :class:`~sansio_smp.expiration.InactiveClients` setting, one task checks every
  ``check_interval`` seconds and closes each connection that holds no subscription
  (:meth:`Router.has_subscriptions`) and has neither received nor sent a block for over ``ttl``
  seconds (the reference runs one such loop per connection; the bound is the same).
* Logs carry no client addresses and no queue ids (connections are numbered).
"""

from __future__ import annotations

import gc
import itertools
import logging
import secrets
import signal
import sys
import time
from collections import deque
from typing import Any, Callable, Sequence

import anyio
import anyio.abc

from sansio_smp.connection import ConnectionClosed, ConnectionState, RouterConnection, TransmissionError
from sansio_smp.expiration import InactiveClients, client_inactive
from sansio_smp.router import Router, RouterConfig
from sansio_smp.store_log import QueueStore
from sansio_smp.x509 import RouterIdentity

from .store_files import StoreFiles, StoreWriteError
from .tls import BlockListener, BlockStream, create_tls_listener, server_ssl_context

log = logging.getLogger("smp.server")

SMP_HANDSHAKE_TIMEOUT = 120.0  # smp.md §2.1
MAX_SEND_BACKLOG = 32 * 1024 * 1024
JOURNAL_COMPACT_SIZE = 256 * 1024 * 1024  # rewrite the journal when it grows past this
SHUTDOWN_FLUSH_TIMEOUT = 5.0
LAZY_WRITE_DELAY = 0.1  # longest wait of records no reply depends on (ACK removals) for a batch


class _Peer:
    __slots__ = ("conn_id", "stream", "rc", "buf", "size", "wake", "closing", "active_at", "receive_scope", "sending", "retry")

    def __init__(self, conn_id: int, stream: BlockStream, rc: RouterConnection, now: float) -> None:
        self.conn_id = conn_id
        self.stream = stream
        self.rc = rc
        self.buf: deque[bytes] = deque()
        self.size = 0
        self.wake = anyio.Event()
        self.closing = False
        self.active_at = now  # last block received or sent (rcvActiveAt/sndActiveAt, smp.md §3.7)
        self.receive_scope = anyio.CancelScope()
        self.sending = False  # the sender task is writing (then new output queues behind it)
        self.retry = False  # buf[0] is the rest of an unfinished write: send it alone, as is


class RouterRuntime:
    """Runs one :class:`Router` over any number of :class:`~transports.tls.BlockStream` s."""

    def __init__(
        self,
        router: Router,
        identity: RouterIdentity,
        store: StoreFiles | None = None,
        *,
        clock: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        inactive_clients: InactiveClients | None = None,
    ) -> None:
        self.router = router
        self.identity = identity
        self.hello_identity = identity
        self.store = store
        self.clock = clock
        self.random_bytes = random_bytes
        self.inactive_clients = inactive_clients
        self.inactive_disconnects = 0
        self.peers: dict[int, _Peer] = {}
        self._ids = itertools.count(1)
        self._store_wake = anyio.Event()
        self._timer_wake = anyio.Event()
        self._timer_target: float | None = None
        self._stop = anyio.Event()
        self._accept_scope: anyio.CancelScope | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.store_failures = 0
        self.connections_total = 0

    # ------------------------------------------------------------ plumbing

    def _after_change(self) -> None:
        """Hand new router output to the sender tasks and wake the store/timer tasks."""
        if self.router.has_pending_store_writes:
            self._store_wake.set()
        for cid in self.router.dirty_connections():
            peer = self.peers.get(cid)
            if peer is None:
                continue
            data = peer.rc.data_to_send()
            if data and not (peer.buf or peer.sending or peer.closing):
                rest = self._send_now(peer, data)
                peer.retry = bool(rest) and rest is not data  # a write was begun: finish it as is
                data = rest
            if data:
                peer.buf.append(data)
                peer.size += len(data)
                peer.wake.set()
                if peer.size > MAX_SEND_BACKLOG and not peer.closing:
                    log.warning("connection %d: send backlog over %d bytes, closing", cid, MAX_SEND_BACKLOG)
                    peer.closing = True
        t = self.router.next_timer()
        if t is not None and (self._timer_target is None or t < self._timer_target):
            self._timer_wake.set()

    def _send_now(self, peer: _Peer, data: bytes) -> bytes | memoryview:
        """Write straight to an idle connection when its socket takes the bytes at once (no task
        switch to the sender); returns what is left for the sender task (``b""``: all sent)."""
        try:
            rest = peer.stream.send_nowait(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
            log.debug("connection %d: send failed: %r", peer.conn_id, e)
            peer.closing = True
            peer.buf.clear()
            return b""
        if len(rest) < len(data):
            peer.active_at = self.clock()
        return rest

    # ------------------------------------------------------------ connections

    async def serve_stream(self, stream: BlockStream) -> None:
        """Serve one connection until it closes (TLS already established, or a memory pipe)."""
        if stream.tls_unique is None:
            log.debug("connection without a session id (tls-unique); closing")
            return
        cid = next(self._ids)
        self.connections_total += 1
        rc = RouterConnection(
            session_id=stream.tls_unique,
            key_hash=self.identity.key_hash,
            identity=self.hello_identity,
            random_bytes=self.random_bytes,
            alpn=stream.alpn,
        )
        peer = _Peer(cid, stream, rc, self.clock())
        self.peers[cid] = peer
        self.router.connect(cid, rc)
        log.debug("connection %d opened (%d open)", cid, len(self.peers))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._sender, peer)
                try:
                    with peer.receive_scope:
                        await self._receiver(peer)
                finally:
                    # give queued responses a moment to go out, then stop the sender
                    with anyio.move_on_after(1.0, shield=True):
                        while peer.buf and not peer.closing:
                            await anyio.sleep(0.01)
                    tg.cancel_scope.cancel()
        finally:
            self.router.disconnect(cid)
            self.peers.pop(cid, None)
            self._after_change()
            log.debug("connection %d closed (%d open)", cid, len(self.peers))

    async def _receiver(self, peer: _Peer) -> None:
        rc = peer.rc
        self._after_change()  # the router hello
        while not peer.closing:
            try:
                if rc.state is ConnectionState.HANDSHAKE:
                    with anyio.fail_after(SMP_HANDSHAKE_TIMEOUT):
                        block = await peer.stream.receive_block()
                else:
                    block = await peer.stream.receive_block()
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, TimeoutError):
                block = b""
            except Exception as e:  # TLS errors surface as various exceptions
                log.debug("connection %d: read failed: %r", peer.conn_id, e)
                block = b""
            if block:
                peer.active_at = self.clock()
            events = rc.receive_data(block)
            self._log_bad_input(peer.conn_id, events, rc.state)
            self.router.handle_events(peer.conn_id, events, self.clock())
            # Blocks the peer sent back to back are handled before the output is handed on: their
            # replies leave in one write (one send syscall and one event-loop pass per batch).
            while block and rc.state is ConnectionState.ESTABLISHED and not peer.closing:
                more = peer.stream.receive_block_nowait()
                if more is None:
                    break
                events = rc.receive_data(more)
                del more
                self._log_bad_input(peer.conn_id, events, rc.state)
                self.router.handle_events(peer.conn_id, events, self.clock())
            self._after_change()
            if not block or rc.state in (ConnectionState.CLOSED, ConnectionState.ERROR):
                return
            del block, events  # not kept alive (16 KB per idle connection) while waiting for the next

    @staticmethod
    def _log_bad_input(cid: int, events: list, state: ConnectionState) -> None:
        """Log each piece of bad input once, by its protocol error only (no ids, keys or data)."""
        for ev in events:
            if isinstance(ev, TransmissionError):
                log.info("connection %d: bad transmission, answered ERR %s", cid, ev.code)
            elif isinstance(ev, ConnectionClosed) and state is ConnectionState.ERROR:
                log.info("connection %d: closed on transport error: %s", cid, ev.reason)

    async def _sender(self, peer: _Peer) -> None:
        try:
            while True:
                await peer.wake.wait()
                peer.wake = anyio.Event()
                while peer.buf:
                    peer.sending = True
                    if peer.retry:  # the rest of a write send_nowait began: repeat it as is
                        peer.retry = False
                        data = peer.buf.popleft()
                        peer.size -= len(data)
                    else:
                        data = b"".join(peer.buf)
                        peer.buf.clear()
                        peer.size = 0
                    await peer.stream.send(data)
                    peer.sending = False
                    peer.active_at = self.clock()
                    del data  # not kept alive (16 KB+ per idle connection) while waiting
                if peer.closing:
                    await peer.stream.aclose()
                    return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError) as e:
            log.debug("connection %d: send failed: %r", peer.conn_id, e)
            peer.closing = True
            peer.buf.clear()

    # ------------------------------------------------------------ timer and store

    async def _timer_task(self) -> None:
        while True:
            now = self.clock()
            t = self.router.next_timer()
            if t is not None and t <= now:
                self.router.handle_timer(now)
                self._after_change()
                continue
            self._timer_target = t
            delay = 60.0 if t is None else min(60.0, t - now)
            with anyio.move_on_after(max(delay, 0.001)):
                await self._timer_wake.wait()
            self._timer_wake = anyio.Event()
            self._timer_target = None

    async def _inactive_task(self, expiration: InactiveClients) -> None:
        """``disconnectTransport`` (smp.md §3.7): close idle connections without subscriptions."""
        while True:
            await anyio.sleep(expiration.check_interval)
            now = self.clock()
            for peer in list(self.peers.values()):
                if (
                    not peer.closing
                    and client_inactive(peer.active_at, now, expiration.ttl)
                    and not self.router.has_subscriptions(peer.conn_id)
                ):
                    log.debug("connection %d: no subscriptions and inactive for over %s s, closing", peer.conn_id, expiration.ttl)
                    self.inactive_disconnects += 1
                    peer.closing = True
                    peer.buf.clear()
                    peer.receive_scope.cancel()  # serve_stream then forgets the connection
                    await anyio.aclose_forcefully(peer.stream)  # type: ignore[arg-type]

    def _store_urgent(self) -> bool:
        return self.router.store_write_urgent or self._stop.is_set()

    async def _store_task(self) -> None:
        while True:
            if not self.router.has_pending_store_writes:
                await self._store_wake.wait()
                self._store_wake = anyio.Event()
                continue
            if not self._store_urgent():
                # Only records no reply waits for (ACK removals): let them join the batch of the
                # next blocking record, or go after LAZY_WRITE_DELAY — one fsync and one thread
                # hop (~100 µs CPU each here) fewer per lone ACK, and no reply is delayed.
                with anyio.move_on_after(LAZY_WRITE_DELAY):
                    while not self._store_urgent():
                        await self._store_wake.wait()
                        self._store_wake = anyio.Event()
            await self._write_batch()
            if self.store is not None and self.store.journal_size > JOURNAL_COMPACT_SIZE and self.router.store_idle:
                await self._compact()

    async def _write_batch(self) -> None:
        """Append and fsync everything pending as one batch (group commit), then tell the router."""
        w = self.router.pending_store_writes()
        if not w:
            return
        if self.store is None:  # persistence on without files (tests): durable at once
            self.router.store_written()
        else:
            try:
                await anyio.to_thread.run_sync(self.store.append, list(w.queue_log), list(w.journal))
            except StoreWriteError as e:
                self.store_failures += 1
                if self.store_failures == 1 or self.store_failures % 1000 == 0:
                    log.error("store write failed (%d so far): %s", self.store_failures, e.strerror or e)
                self.router.store_written(str(e.strerror or "store write failed"))
            else:
                self.router.store_written()
        self._after_change()

    async def _compact(self) -> None:
        assert self.store is not None
        store_snapshot = self.router.store
        records = store_snapshot.compacted_records()
        compact_store = QueueStore()
        for r in records:
            compact_store.apply(r)
        messages = self.router.all_messages()
        log.info("compacting the message journal")
        await anyio.to_thread.run_sync(self.store.compact, compact_store, messages)

    async def _signal_task(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s, stopping", signal.Signals(signum).name)
                self.stop()
                return

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Begin a graceful stop (idempotent)."""
        self._stop.set()

    async def run(
        self,
        listeners: Sequence[BlockListener] = (),
        *,
        handle_signals: bool = False,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``listeners`` (and any :meth:`serve_stream` calls) until :meth:`stop`."""
        self.router.start(self.clock())
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._timer_task)
            tg.start_soon(self._store_task)
            if self.inactive_clients is not None:
                tg.start_soon(self._inactive_task, self.inactive_clients)
            if handle_signals:
                tg.start_soon(self._signal_task)
            accept_scope = anyio.CancelScope()
            self._accept_scope = accept_scope
            accept_done = anyio.Event()

            async def accept() -> None:
                try:
                    with accept_scope:
                        async with anyio.create_task_group() as atg:
                            for lst in listeners:
                                atg.start_soon(lst.serve, self.serve_stream, tg)
                except* anyio.ClosedResourceError:
                    pass
                finally:
                    for lst in listeners:
                        with anyio.CancelScope(shield=True):
                            try:
                                await lst.aclose()
                            except Exception:  # pragma: no cover
                                pass
                    accept_done.set()

            tg.start_soon(accept)
            task_status.started()
            await self._stop.wait()
            accept_scope.cancel()  # stop accepting; open connections keep working
            await accept_done.wait()
            with anyio.move_on_after(SHUTDOWN_FLUSH_TIMEOUT, shield=True):
                # every record on disk, every released response handed to its sender
                while not self.router.store_idle:
                    self._store_wake.set()
                    await anyio.sleep(0.01)
                while any(p.buf for p in self.peers.values() if not p.closing):
                    await anyio.sleep(0.01)
            for peer in list(self.peers.values()):
                with anyio.CancelScope(shield=True):
                    await anyio.aclose_forcefully(peer.stream)  # type: ignore[arg-type]
            tg.cancel_scope.cancel()
        if self.store is not None:
            self.store.close()
        log.info("stopped")


# ---------------------------------------------------------------- the program


def router_config_from_settings(settings: Any) -> RouterConfig:
    return RouterConfig(
        allow_new_queues=settings.new_queues,
        basic_auth=settings.create_password.encode() if settings.create_password else None,
        queue_quota=settings.msg_queue_quota,
        message_ttl=settings.message_ttl,
        expire_interval=settings.expire_check_interval,
        expire_on_send=settings.expire_on_send,
        pending_end_interval=settings.pending_end_interval,
        persistence=settings.store_log,
    )


def freeze_restored_state() -> None:
    """Move everything alive now (the restored queues and messages: several objects per queue,
    millions for a large store) to the GC's permanent generation.

    CPython's cyclic GC is generational, but every full (oldest-generation) collection walks all
    tracked objects; with 1M restored queues each such pass took seconds of router CPU while
    serving, although restored queue records are acyclic and live until deleted. Frozen objects
    are never scanned again (a frozen object that later becomes garbage is still freed by
    reference counting; only a cycle among frozen objects would be kept). No collection first:
    one full pass costs ~2.6 s per 1M queues and found only a few dozen cyclic objects (the
    restore runs with the GC paused and creates acyclic records)."""
    gc.freeze()


def run_server(settings: Any, identity: RouterIdentity, log_level: str = "info") -> int:
    """``smp-server start``: restore, listen on every configured port, serve until a signal."""
    logging.basicConfig(
        level={"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}[log_level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = router_config_from_settings(settings)
    now = time.time()
    store_files = None
    store = None
    messages = None
    if settings.store_log:
        store_files = StoreFiles(settings.store_path or settings.directory)
        ttl = settings.message_ttl if settings.expire_on_start else None
        restored: Any = store_files.open(now, ttl, restore_messages_=settings.restore_messages)
        store, messages = restored.store, restored.messages
        log.info(
            "store log %s: %d queues, %d messages restored, %d expired",
            store_files.queue_log_path,
            len(store.queues),
            restored.stored_messages,
            restored.expired_messages,
        )
    else:
        log.info("store log disabled: queues and messages are kept in memory only")
    router = Router(config, secrets.token_bytes, store=store, messages=messages)
    restored = store = messages = None  # the router holds what it needs; the rest is garbage
    if store_files is not None:
        freeze_restored_state()
    inactive = settings.inactive_clients
    log.info(
        f"expiring clients inactive for {inactive.ttl:g} seconds every {inactive.check_interval:g} seconds"
        if inactive is not None
        else "not expiring inactive clients"
    )
    runtime = RouterRuntime(router, identity, store_files, inactive_clients=inactive)
    ctx = server_ssl_context(identity.chain_pem(), identity.server_key_pem())

    async def main() -> None:
        listeners = []
        for port in settings.ports:
            lst = await create_tls_listener(settings.listen, port, ctx)
            listeners.append(lst)
            log.info("serving SMP protocol on port %d (TLS)", lst.port)
        ports = ",".join(str(lst.port) for lst in listeners)
        print(f"smp-server: listening on port {ports}; fingerprint {identity.fingerprint}", flush=True)
        await runtime.run(listeners, handle_signals=True)

    try:
        anyio.run(main)
    except KeyboardInterrupt:  # pragma: no cover - signals are handled inside
        pass
    return 0
