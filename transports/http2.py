"""HTTP/2 over a :class:`transports.tls.BlockStream` with ``h2`` (sans-IO), for XFTP (xftp-ntf.md §1.2).

A thin anyio adapter: one task reads the socket and feeds ``h2``; request and response bodies are
streamed with HTTP/2 flow control in both directions, so nothing ever buffers a whole body:

* inbound data is credited back to the peer (``WINDOW_UPDATE``) only when the application has
  consumed it (:meth:`Body.receive`), so a slow consumer stalls the sender instead of growing a
  buffer; the buffer per stream is bounded by the advertised window;
* outbound data waits for send window (:meth:`H2Connection.send_data`).

The transport is always HTTP/2 with prior knowledge, whatever ALPN said (the reference runs HTTP/2
on ``xftp/1`` and ``http/1.1`` connections too). Output is taken from ``h2`` synchronously and
sent by one task at a time, so frames (and HPACK state) leave in the order ``h2`` produced them.

``h2`` logs ``repr(frame)`` of every received frame at trace level, computing the repr even when
nothing logs it; a DATA frame's repr hex-encodes the whole payload. :data:`DataFrame._body_repr`
is replaced by a constant-time one (a repr-only change) to keep that off the data path.
"""

from __future__ import annotations

import collections
import logging
from typing import AsyncIterable, Awaitable, Callable, Iterable, Sequence

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

from .tls import BlockStream

# see the module docstring: keep the repr of DATA frames O(1)
hyperframe.frame.DataFrame._body_repr = lambda self: f"<{len(self.data)} bytes>"  # type: ignore[method-assign]

log = logging.getLogger(__name__)

DEFAULT_STREAM_WINDOW = 1 << 20  # per-stream receive window we advertise
DEFAULT_CONNECTION_WINDOW = 16 << 20  # connection receive window we advertise
DEFAULT_MAX_FRAME_SIZE = 1 << 16  # largest DATA frame we accept
READ_SIZE = 1 << 18
_CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4

Headers = Sequence[tuple[str, str]]
BodySource = bytes | Iterable[bytes] | AsyncIterable[bytes] | None


class HTTP2Error(ConnectionError):
    """The HTTP/2 connection or stream failed (protocol error, reset, connection closed)."""


class StreamReset(HTTP2Error):
    """The peer reset the stream (``RST_STREAM``)."""

    def __init__(self, stream_id: int, code: int) -> None:
        super().__init__(f"stream {stream_id} reset with error code {code}")
        self.code = code


class Body:
    """An inbound body (request body on a server, response body on a client).

    :meth:`receive` returns the next piece (``b""`` at the end); consumed bytes are credited back
    to the peer's send window."""

    def __init__(self, conn: "H2Connection", stream_id: int) -> None:
        self._conn = conn
        self._stream_id = stream_id
        self._chunks: collections.deque[list] = collections.deque()  # [bytes, offset, flow_len]
        self._eof = False
        self._error: BaseException | None = None
        self._event = anyio.Event()
        self.received = 0

    # -- fed by the read loop
    def _feed(self, data: bytes, flow_len: int) -> None:
        self._chunks.append([data, 0, flow_len])
        self.received += len(data)
        self._event.set()

    def _end(self) -> None:
        self._eof = True
        self._event.set()

    def _fail(self, error: BaseException) -> None:
        if not self._eof:
            self._error = error
        self._event.set()

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    # -- consumer side
    async def receive(self, max_bytes: int = 1 << 16) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` at the end; :class:`HTTP2Error` if reset/closed."""
        parts = await self.receive_parts(max_bytes)
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def receive_parts(self, max_bytes: int = 1 << 16) -> list[bytes]:
        """:meth:`receive` without joining: the buffered pieces (as received, the last one
        possibly cut) totalling at most ``max_bytes``; ``[]`` at the end."""
        while not self._chunks:
            if self._eof:
                return []
            if self._error is not None:
                raise self._error
            self._event = anyio.Event()
            await self._event.wait()
        parts: list[bytes] = []
        size = ack = 0
        while self._chunks and size < max_bytes:
            chunk = self._chunks[0]
            data, off, flow_len = chunk
            take = min(len(data) - off, max_bytes - size)
            parts.append(data if off == 0 and take == len(data) else data[off : off + take])
            size += take
            chunk[1] = off + take
            if chunk[1] >= len(data):
                self._chunks.popleft()
                ack += flow_len
        if ack:
            await self._conn._acknowledge(self._stream_id, ack)
        return parts

    async def read_exactly(self, n: int) -> bytes:
        """``n`` bytes, or fewer if the body ends first."""
        parts = await self.read_parts(n)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_parts(self, n: int) -> list[bytes]:
        """:meth:`read_exactly` without joining: pieces totalling ``n`` bytes, or fewer if the
        body ends first (``[]`` at the end) — for streaming consumers that hash/write pieces."""
        parts: list[bytes] = []
        got = 0
        while got < n:
            more = await self.receive_parts(n - got)
            if not more:
                break
            parts += more
            got += sum(map(len, more))
        return parts

    async def read_all(self, limit: int) -> bytes:
        """The whole rest of the body; :class:`HTTP2Error` if it exceeds ``limit`` bytes."""
        data = await self.read_exactly(limit + 1)
        if len(data) > limit:
            raise HTTP2Error("body exceeds the limit")
        return data

    async def drain(self) -> int:
        """Consume and discard the rest; returns the number of bytes discarded."""
        n = 0
        while True:
            parts = await self.receive_parts(1 << 20)
            if not parts:
                return n
            n += sum(map(len, parts))


class _FrameGate:
    """Holds inbound bytes back until they complete an HTTP/2 frame (or the client preface), so
    ``h2`` gets one ``receive_data`` call per frame instead of one per TLS record. ``h2`` parses
    the pending frame's header again (building a frame object) on every call: for 16 KiB records
    and 64 KiB DATA frames, gating cuts ``h2``'s receive cost by a quarter. Nothing ``h2`` could act on
    is delayed: a partial frame is all that is ever held, and a header announcing more than
    ``max_frame_size`` bytes is passed on at once (``h2`` rejects it), so at most one frame's
    worth of bytes is held."""

    __slots__ = ("_header", "_held", "_left", "_limit")

    def __init__(self, preface_len: int, max_frame_size: int) -> None:
        self._held: list[bytes] = []
        self._left = preface_len  # bytes still to come of the current preface or frame payload
        self._header = b""  # the part of a frame header seen so far
        self._limit = max_frame_size

    def pass_on(self, data: bytes) -> bytes | None:
        """What to give ``h2`` now (everything held plus ``data``), or ``None`` to hold it."""
        complete = False
        pos, n = 0, len(data)
        while pos < n:
            if self._left:
                take = min(self._left, n - pos)
                pos += take
                self._left -= take
                complete = complete or not self._left
            else:
                need = 9 - len(self._header)
                self._header += data[pos : pos + need]
                pos += need
                if len(self._header) == 9:
                    self._left = int.from_bytes(self._header[:3], "big")
                    self._header = b""
                    complete = complete or self._left == 0 or self._left > self._limit
        if not complete:
            self._held.append(data)
            return None
        if not self._held:
            return data
        self._held.append(data)
        out = b"".join(self._held)
        self._held.clear()
        return out


class _Stream:
    __slots__ = ("body", "response", "response_event", "error", "closed")

    def __init__(self, body: Body) -> None:
        self.body = body
        self.response: tuple[int, list[tuple[str, str]]] | None = None
        self.response_event = anyio.Event()
        self.error: BaseException | None = None
        self.closed = False


class H2Connection:
    """Shared machinery of the client and server sides."""

    def __init__(
        self,
        stream: BlockStream,
        client_side: bool,
        *,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        connection_window: int = DEFAULT_CONNECTION_WINDOW,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        cfg = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.h2 = h2.connection.H2Connection(cfg)
        self.transport = stream
        self._stream_window = stream_window
        self._connection_window = connection_window
        self._max_frame_size = max_frame_size
        self._out: list[bytes] = []
        self._sending = False
        self._window_event = anyio.Event()
        self._streams: dict[int, _Stream] = {}
        self._gate = _FrameGate(0 if client_side else len(_CLIENT_PREFACE), max(max_frame_size, 1 << 14))
        self._closed = False
        self.close_reason: BaseException | None = None

    # ---------------------------------------------------------------- writing
    async def _flush(self) -> None:
        """Send what ``h2`` has produced. Output is queued synchronously in production order; one
        task at a time drains the queue (coalescing writes), the others return at once."""
        data = self.h2.data_to_send()
        if data:
            self._out.append(data)
        if self._sending or not self._out:
            return
        self._sending = True
        try:
            while self._out:
                chunk = self._out[0] if len(self._out) == 1 else b"".join(self._out)
                self._out.clear()
                await self.transport.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
            self._close(HTTP2Error(f"connection lost: {e!r}"))
            raise self.close_reason from e  # type: ignore[misc]
        finally:
            self._sending = False

    def _start(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self._stream_window,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: self._max_frame_size,
            }
        )
        extra = self._connection_window - 65535
        if extra > 0:
            self.h2.increment_flow_control_window(extra)

    async def _acknowledge(self, stream_id: int, n: int) -> None:
        if self._closed:
            return
        try:
            self.h2.acknowledge_received_data(n, stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return
        await self._flush()

    async def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Send ``data`` (bytes-like; not to be changed until this returns) on a stream as the
        send windows allow."""
        view = memoryview(data)
        if view.itemsize != 1:
            view = view.cast("B")
        while len(view):
            window = await self._wait_window(stream_id)
            frame = self.h2.max_outbound_frame_size
            while len(view) and window > 0:
                n = min(len(view), window, frame)
                last = end_stream and n == len(view)
                # h2 takes a memoryview and copies it into the frame it serializes at once
                self.h2.send_data(stream_id, view[:n], end_stream=last)
                view = view[n:]
                window -= n
            await self._flush()
        if end_stream and not data:
            self.h2.end_stream(stream_id)
            await self._flush()

    async def send_body(self, stream_id: int, body: BodySource) -> None:
        """Send a whole body (bytes, iterable or async iterable of bytes-like pieces) and end the
        stream. Each piece is copied into ``h2`` frames before the next one is requested, so a
        source may refill one buffer for every piece."""
        if body is None:
            self.h2.end_stream(stream_id)
            await self._flush()
            return
        if isinstance(body, (bytes, bytearray, memoryview)):
            await self.send_data(stream_id, body, end_stream=True)
            return
        if hasattr(body, "__aiter__"):
            async for piece in body:  # type: ignore[union-attr]
                if piece:
                    await self.send_data(stream_id, piece)
        else:
            for piece in body:  # type: ignore[union-attr]
                if piece:
                    await self.send_data(stream_id, piece)
        self._check_stream(stream_id)
        self.h2.end_stream(stream_id)
        await self._flush()

    def _check_stream(self, stream_id: int) -> None:
        st = self._streams.get(stream_id)
        if self._closed:
            raise self.close_reason or HTTP2Error("connection closed")
        if st is not None and st.error is not None:
            raise st.error

    async def _wait_window(self, stream_id: int) -> int:
        while True:
            self._check_stream(stream_id)
            try:
                window = self.h2.local_flow_control_window(stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError) as e:
                raise HTTP2Error(f"stream {stream_id} closed") from e
            if window > 0:
                return window
            await self._window_event.wait()  # replaced (not reset) by each wake-up: no lost wake-ups

    def _wake_senders(self) -> None:
        ev, self._window_event = self._window_event, anyio.Event()
        ev.set()

    # ---------------------------------------------------------------- reading
    async def _read_loop(self) -> None:
        try:
            while not self._closed:
                try:
                    data = await self.transport.receive_some(READ_SIZE)
                except (anyio.EndOfStream, anyio.IncompleteRead):
                    self._close(HTTP2Error("connection closed by peer"))
                    return
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
                    self._close(HTTP2Error(f"connection lost: {e!r}"))
                    return
                if not data:
                    self._close(HTTP2Error("connection closed by peer"))
                    return
                data = self._gate.pass_on(data)
                if data is None:
                    continue
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    self._close(HTTP2Error(f"HTTP/2 protocol error: {e}"))
                    try:
                        await self._flush()
                    except HTTP2Error:
                        pass
                    return
                for ev in events:
                    self._handle_event(ev)
                await self._flush()
        except HTTP2Error:
            return
        finally:
            if not self._closed:
                self._close(HTTP2Error("connection closed"))

    def _handle_event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.DataReceived):
            st = self._streams.get(ev.stream_id)
            if st is None:
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif ev.data:
                st.body._feed(ev.data, ev.flow_controlled_length)
            elif ev.flow_controlled_length:
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if ev.stream_ended is not None and st is not None:
                st.body._end()
        elif isinstance(ev, h2.events.StreamEnded):
            st = self._streams.get(ev.stream_id)
            if st is not None:
                st.body._end()
        elif isinstance(ev, h2.events.StreamReset):
            st = self._streams.get(ev.stream_id)
            if st is not None:
                err = StreamReset(ev.stream_id, int(ev.error_code))
                st.error = err
                st.body._fail(err)
                st.response_event.set()
            self._wake_senders()
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._wake_senders()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._close(HTTP2Error(f"connection terminated by peer (error {ev.error_code})"))
        else:
            self._on_event(ev)

    def _on_event(self, ev: h2.events.Event) -> None:  # pragma: no cover - overridden
        pass

    def _close(self, reason: BaseException) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        for st in self._streams.values():
            st.error = st.error or reason
            st.body._fail(reason)
            st.response_event.set()
        self._window_event.set()  # the connection is closed: every waiter wakes and fails

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        if not self._closed:
            try:
                self.h2.close_connection()
                await self._flush()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self._close(HTTP2Error("connection closed"))
        with anyio.CancelScope(shield=True):
            await self.transport.aclose()


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]


# ---------------------------------------------------------------- server


class ServerRequest:
    """One inbound request: method, path, headers (lower-case names), streamed body."""

    def __init__(self, conn: "H2ServerConnection", stream_id: int, headers: list[tuple[str, str]]) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.headers = headers
        pseudo = dict(h for h in headers if h[0].startswith(":"))
        self.method = pseudo.get(":method", "")
        self.path = pseudo.get(":path", "")
        self.body = conn._streams[stream_id].body
        self.responded = False

    def header_names(self) -> list[str]:
        return [k for k, _ in self.headers if not k.startswith(":")]

    async def respond(self, status: int = 200, headers: Headers = (), body: BodySource = None) -> None:
        """Send the response (headers, then the body streamed with flow control). If the request
        body was not fully read, the stream is then reset with NO_ERROR (RFC 9113 §8.1)."""
        self.responded = True
        conn = self.conn
        conn._check_stream(self.stream_id)
        hdrs = [(":status", str(status))] + [(k.lower(), v) for k, v in headers]
        end = body is None or (isinstance(body, (bytes, bytearray)) and len(body) == 0)
        conn.h2.send_headers(self.stream_id, [(k.encode(), v.encode()) for k, v in hdrs], end_stream=end)
        await conn._flush()
        if not end:
            await conn.send_body(self.stream_id, body)
        if not self.body.at_eof and not conn._closed:
            try:
                conn.h2.reset_stream(self.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                await conn._flush()
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
        conn._streams.pop(self.stream_id, None)


Handler = Callable[[ServerRequest], Awaitable[None]]


class H2ServerConnection(H2Connection):
    """The server side: each request runs ``handler`` in its own task."""

    def __init__(self, stream: BlockStream, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(stream, client_side=False, **kwargs)
        self._pending: list[ServerRequest] = []
        self._new_request = anyio.Event()

    def _on_event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            st = _Stream(Body(self, ev.stream_id))
            self._streams[ev.stream_id] = st
            if ev.stream_ended is not None:
                st.body._end()
            self._pending.append(ServerRequest(self, ev.stream_id, _headers(ev.headers)))
            self._new_request.set()

    async def serve(self, handler: Handler) -> None:
        """Run until the connection closes; in-flight handlers are then cancelled."""

        async def run(req: ServerRequest) -> None:
            try:
                await handler(req)
            except HTTP2Error as e:
                log.debug("request on stream %d failed: %s", req.stream_id, e)
            except Exception:
                log.exception("request handler failed")
                if not req.responded and not self._closed:
                    try:
                        await req.respond(500)
                    except Exception:  # noqa: BLE001
                        pass

        self._start()
        await self._flush()
        async with anyio.create_task_group() as tg:

            async def dispatch() -> None:
                while True:
                    while self._pending:
                        tg.start_soon(run, self._pending.pop(0))
                    if self._closed:
                        return
                    self._new_request = anyio.Event()
                    await self._new_request.wait()

            tg.start_soon(dispatch)
            await self._read_loop()
            self._new_request.set()
            tg.cancel_scope.cancel()

    def _close(self, reason: BaseException) -> None:
        super()._close(reason)
        self._new_request.set()


# ---------------------------------------------------------------- client


class ClientResponse:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: Body) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class H2ClientConnection(H2Connection):
    """The client side: :meth:`run` reads the connection (start it in a task group), then any
    number of concurrent :meth:`request` calls."""

    def __init__(self, stream: BlockStream, authority: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(stream, client_side=True, **kwargs)
        self.authority = authority
        self._started = False

    async def start(self) -> None:
        self._start()
        self._started = True
        await self._flush()

    async def run(self) -> None:
        if not self._started:
            await self.start()
        await self._read_loop()

    def _on_event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            st = self._streams.get(ev.stream_id)
            if st is not None:
                hdrs = _headers(ev.headers)
                status = int(dict(hdrs).get(":status", "0"))
                st.response = (status, hdrs)
                if ev.stream_ended is not None:
                    st.body._end()
                st.response_event.set()

    async def request(
        self, method: str = "POST", path: str = "/", headers: Headers = (), body: BodySource = None
    ) -> ClientResponse:
        """Send a request (body streamed with flow control) and return once the response headers
        are in; read the response body from :attr:`ClientResponse.body`."""
        if self._closed:
            raise self.close_reason or HTTP2Error("connection closed")
        stream_id = self.h2.get_next_available_stream_id()
        st = _Stream(Body(self, stream_id))
        self._streams[stream_id] = st
        hdrs = [(":method", method), (":scheme", "https"), (":path", path), (":authority", self.authority)]
        hdrs += [(k.lower(), v) for k, v in headers]
        no_body = body is None or (isinstance(body, (bytes, bytearray)) and not body)
        self.h2.send_headers(stream_id, [(k.encode(), v.encode()) for k, v in hdrs], end_stream=no_body)
        try:
            await self._flush()
            if not no_body:
                try:
                    await self.send_body(stream_id, body)
                except StreamReset:
                    if st.response is None:  # the server gave up on the request before answering
                        raise
                except HTTP2Error:
                    if st.response is None:
                        raise
            await st.response_event.wait()
            if st.response is None:
                raise st.error or HTTP2Error("no response")
        except BaseException:
            self._streams.pop(stream_id, None)
            raise
        status, rh = st.response
        return ClientResponse(status, rh, st.body)

    def release(self, response: ClientResponse) -> None:
        """Forget a finished stream (its body was read to the end or abandoned)."""
        for sid, st in list(self._streams.items()):
            if st.body is response.body:
                if not st.body.at_eof and not self._closed:
                    try:
                        self.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                    except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                        pass
                self._streams.pop(sid, None)


__all__ = [
    "Body",
    "ClientResponse",
    "H2ClientConnection",
    "H2Connection",
    "H2ServerConnection",
    "HTTP2Error",
    "ServerRequest",
    "StreamReset",
]
