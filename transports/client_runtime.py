"""anyio adapter for the SMP client machine: connect, pump bytes, await results (smp.md §2, §3.7).

:class:`SMPClientSession` owns one :class:`~sansio_smp.client.SMPClient` and one
:class:`~transports.tls.BlockStream` (TLS, plain TCP for tests, or an in-memory pipe). Three tasks:
a reader (blocks → ``receive_data``), a writer (one queue, so block-encryption order is preserved)
and a timer (``next_timer``/``handle_timer``: command timeouts and keep-alive PINGs). Commands are
``async`` methods returning the typed result or raising a
:class:`~sansio_smp.client.ClientError` (:class:`~sansio_smp.client.SMPErrorResponse` for ``ERR``)::

    async with connect_session("smp://<keyhash>@localhost:5223") as s:
        q = await s.create_queue()
        print(q.queue_uri())
        async for msg in s.messages():
            print(msg.body)
            await s.ack(q, msg.msg_id)
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from sansio_smp import client as c
from sansio_smp import protocol as p
from sansio_smp.addresses import ProtocolServer
from sansio_smp.crypto import PrivateKey, PublicKey
from sansio_smp.errors import LocalProtocolError
from sansio_smp.x509 import verify_session_key

from .tls import BlockStream, connect_tls

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0  # client connect timeout, interactive (smp.md §6.10)
_STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


class HandshakeFailed(c.ClientError):
    """The SMP handshake did not complete (wrong identity, no common version, bad hello …)."""


class SMPClientSession:
    """An established client connection with an ``async`` command API (see module docstring).

    Build it with :func:`connect_session` or :func:`open_session`."""

    def __init__(
        self, stream: BlockStream, machine: c.SMPClient, clock: Callable[[], float] = anyio.current_time
    ) -> None:
        self.stream = stream
        self.machine = machine
        self.clock = clock
        self.version: int | None = None
        self.block_encryption = False
        self.closed_reason: str | None = None
        self.unexpected: list[c.UnexpectedTransmission] = []
        self._connected = anyio.Event()
        self._closed = anyio.Event()
        self._waiters: dict[bytes, list[Any]] = {}
        self._timer_wakeup = anyio.Event()
        out_send, out_recv = anyio.create_memory_object_stream[bytes](math.inf)
        self._out_send: MemoryObjectSendStream[bytes] = out_send
        self._out_recv: MemoryObjectReceiveStream[bytes] = out_recv
        push_send, push_recv = anyio.create_memory_object_stream[c.ServerPush](math.inf)
        self._push_send: MemoryObjectSendStream[c.ServerPush] = push_send
        self._push_recv: MemoryObjectReceiveStream[c.ServerPush] = push_recv

    # ------------------------------------------------------------ pumping

    def _flush(self) -> None:
        data = self.machine.data_to_send()
        if data and not self._closed.is_set():
            try:
                self._out_send.send_nowait(data)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass
        self._timer_wakeup.set()

    def _dispatch(self, events: list[c.Event]) -> None:
        for ev in events:
            if isinstance(ev, c.Connected):
                self.version = ev.version
                self.block_encryption = ev.block_encryption
                self._connected.set()
            elif isinstance(ev, (c.CommandResult, c.CommandFailed)):
                w = self._waiters.get(ev.corr_id)
                if w is not None:
                    w[1] = ev
                    w[0].set()
            elif isinstance(ev, c.ServerPush):
                try:
                    self._push_send.send_nowait(ev)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    pass
            elif isinstance(ev, c.UnexpectedTransmission):
                log.warning("unexpected transmission from the router: %s", ev.error)
                self.unexpected.append(ev)
            elif isinstance(ev, c.Disconnected):
                self._on_closed(ev.reason)

    def _on_closed(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        self._closed.set()
        self._connected.set()  # wake a handshake waiter
        for w in self._waiters.values():
            if w[1] is None:
                w[1] = c.CommandFailed(b"", p.Ping(), b"", c.ConnectionLost(reason))
                w[0].set()
        self._push_send.close()
        self._out_send.close()
        self._timer_wakeup.set()

    async def _reader(self) -> None:
        while not self._closed.is_set():
            try:
                data = await self.stream.receive_block()
            except _STREAM_ERRORS:
                data = b""
            self._dispatch(self.machine.receive_data(data, self.clock()))
            self._flush()
            if not data:
                self._on_closed("connection closed by the router")
                return

    async def _writer(self) -> None:
        async for data in self._out_recv:
            try:
                await self.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
                self._dispatch(self.machine.close(f"write failed: {e!r}"))
                return

    async def _timer(self) -> None:
        while not self._closed.is_set():
            self._timer_wakeup = anyio.Event()
            t = self.machine.next_timer()
            if t is None:
                await self._timer_wakeup.wait()
                continue
            delay = t - self.clock()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._timer_wakeup.wait()
                continue
            self._dispatch(self.machine.handle_timer(self.clock()))
            self._flush()

    async def _wait_connected(self, timeout: float | None) -> None:
        with anyio.move_on_after(timeout):
            await self._connected.wait()
        if self.version is None:
            reason = self.closed_reason or "timed out"
            raise HandshakeFailed(f"SMP handshake failed: {reason}")

    # ------------------------------------------------------------ requests

    async def request(self, method: str, *args: Any, **kwargs: Any) -> c.CommandResult:
        """Call ``machine.<method>`` and await its answer; ``ERR`` raises :class:`SMPErrorResponse`."""
        if self._closed.is_set():
            raise c.ConnectionLost(self.closed_reason or "closed")
        try:
            corr_id = getattr(self.machine, method)(*args, now=self.clock(), **kwargs)
        except LocalProtocolError:
            if self.machine.closed:
                raise c.ConnectionLost(self.closed_reason or "closed") from None
            raise
        w: list[Any] = [anyio.Event(), None]
        self._waiters[corr_id] = w
        self._flush()
        try:
            await w[0].wait()
        finally:
            self._waiters.pop(corr_id, None)
        ev = w[1]
        if isinstance(ev, c.CommandFailed):
            raise ev.error
        assert isinstance(ev, c.CommandResult)
        if ev.error is not None:
            raise c.SMPErrorResponse(ev.error)
        return ev

    async def create_queue(self, **kwargs: Any) -> c.RecipientQueue:
        """``NEW``; see :meth:`sansio_smp.client.SMPClient.create_queue` for the options."""
        res = await self.request("create_queue", **kwargs)
        assert res.queue is not None
        return res.queue

    async def subscribe(self, queue: c.RecipientQueue) -> None:
        await self.request("subscribe", queue)

    async def secure(self, queue: c.RecipientQueue, sender_key: PublicKey) -> None:
        await self.request("secure", queue, sender_key)

    async def ack(self, queue: c.RecipientQueue, msg_id: bytes) -> None:
        """``ACK``; a next message the router returns arrives through :meth:`messages`."""
        await self.request("ack", queue, msg_id)

    async def get(self, queue: c.RecipientQueue) -> c.ReceivedMessage | None:
        """``GET``: the head message (decrypted) or ``None`` when the queue is empty."""
        res = await self.request("get", queue)
        return res.message

    async def delete(self, queue: c.RecipientQueue) -> None:
        await self.request("delete", queue)

    async def off(self, queue: c.RecipientQueue) -> None:
        await self.request("off", queue)

    async def queue_info(self, queue: c.RecipientQueue) -> p.QueueInfo:
        res = await self.request("queue_info", queue)
        assert isinstance(res.response, p.Info)
        return res.response.info

    async def ping(self) -> None:
        await self.request("ping")

    async def secure_sender(self, sq: c.SenderQueue) -> None:
        """``SKEY`` with the sender's key (messaging-mode queues)."""
        await self.request("secure_sender", sq)

    async def send_message(self, sq: c.SenderQueue, body: bytes, *, notification: bool = True) -> None:
        """``SEND`` ``body`` in the per-queue e2e envelope (§5.4)."""
        await self.request("send_message", sq, body, notification=notification)

    async def send(
        self, snd_id: bytes, body: bytes, key: PrivateKey | None = None, *, notification: bool = False
    ) -> None:
        """Raw ``SEND``."""
        await self.request("send", snd_id, body, key, notification=notification)

    # ------------------------------------------------------------ pushes

    async def next_push(self) -> c.ServerPush:
        """The next router push (``MSG``, ``END``, ``DELD`` …); ``ConnectionLost`` when closed."""
        try:
            return await self._push_recv.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise c.ConnectionLost(self.closed_reason or "closed") from None

    async def pushes(self) -> AsyncIterator[c.ServerPush]:
        """Every router push until the connection closes."""
        async for push in self._push_recv:
            yield push

    async def messages(self) -> AsyncIterator[c.ReceivedMessage]:
        """Pushed messages (decrypted) until the connection closes; other pushes are skipped."""
        async for push in self._push_recv:
            if push.message is not None:
                yield push.message

    def __aiter__(self) -> AsyncIterator[c.ReceivedMessage]:
        return self.messages()

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def aclose(self) -> None:
        if not self._closed.is_set():
            self._dispatch(self.machine.close())
        self._on_closed(self.closed_reason or "closed by the client")
        with anyio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except Exception:  # pragma: no cover - best effort
                pass


@asynccontextmanager
async def open_session(
    stream: BlockStream,
    key_hash: bytes,
    *,
    server: ProtocolServer | None = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
    handshake_timeout: float | None = CONNECT_TIMEOUT,
    clock: Callable[[], float] = anyio.current_time,
    **client_kwargs: Any,
) -> AsyncIterator[SMPClientSession]:
    """Run the SMP handshake over an already-open stream and yield the session."""
    if stream.tls_unique is None:
        raise HandshakeFailed("the stream has no tls-unique session id")
    machine = c.SMPClient(
        key_hash=key_hash,
        session_id=stream.tls_unique,
        random_bytes=random_bytes,
        now=clock(),
        peer_chain=stream.peer_chain_der,
        verify_session_key=verify_session_key,
        server=server,
        **client_kwargs,
    )
    session = SMPClientSession(stream, machine, clock)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(session._writer)
            tg.start_soon(session._reader)
            tg.start_soon(session._timer)
            try:
                await session._wait_connected(handshake_timeout)
                yield session
            finally:
                await session.aclose()
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as eg:
        # the pump tasks do not fail: report the caller's own exception as it was raised
        leaves = _leaves(eg)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(eg: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for e in eg.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


def _address(server: ProtocolServer | str) -> ProtocolServer:
    return ProtocolServer.from_str(server) if isinstance(server, str) else server


@asynccontextmanager
async def connect_session(
    server: ProtocolServer | str,
    *,
    host: str | None = None,
    port: int | None = None,
    timeout: float = CONNECT_TIMEOUT,
    random_bytes: Callable[[int], bytes] = os.urandom,
    **client_kwargs: Any,
) -> AsyncIterator[SMPClientSession]:
    """Connect over TLS to ``server`` (``smp://<keyhash>@host[:port]``), check its certificate chain
    against the key hash (§2.4), run the SMP handshake and yield the session.

    Raises ``OSError`` (e.g. connection refused), ``TimeoutError``,
    :class:`~transports.tls.TLSHandshakeError`, :class:`~sansio_smp.x509.CertificateError` (wrong
    identity) or :class:`HandshakeFailed`."""
    srv = _address(server)
    h = host or srv.hosts[0]
    prt = port or srv.port_number
    stream = await connect_tls(h, prt, srv.key_hash, timeout=timeout, now=time.time)
    try:
        async with open_session(
            stream, srv.key_hash, server=srv, random_bytes=random_bytes, handshake_timeout=timeout, **client_kwargs
        ) as session:
            yield session
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


__all__ = ["CONNECT_TIMEOUT", "HandshakeFailed", "SMPClientSession", "connect_session", "open_session"]
