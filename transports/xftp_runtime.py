"""XFTP I/O: the server runtime and the client library over HTTP/2 + TLS (xftp-ntf.md §1.2–§1.15).

Program module (it does the I/O around the pure machines):

* :class:`XFTPServerRuntime` — TLS listener (``transports.tls``), HTTP/2 per connection
  (``transports.http2``), the handshake machine (:class:`xftp.handshake.ServerConnection`), the
  server machine (:class:`xftp.server.XFTPServer`), chunk files, the store log, expiry of files
  and of inactive connections.
* :class:`XFTPClient` — one connection to one server (native handshake), its commands;
  :class:`XFTPClientAgent` — a connection per server with reconnects and retries;
  :func:`send_file`, :func:`receive_file`, :func:`delete_file` — the ``xftp`` CLI operations,
  streaming: at most a few chunks (≤ 4 MiB each) are in memory whatever the file size.

CPU-heavy steps (file and transport crypto, digests, file writes, fsync) run in worker threads in
1 MiB pieces (the C code drops the GIL), so the event loop keeps moving bytes meanwhile;
``XFTP_OFFLOAD=0`` runs them inline. Chunk encryption overlaps uploads, and decryption (in chunk
order) overlaps downloads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import ssl
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable, Sequence, TypeVar

import anyio
import anyio.abc
import attrs

from sansio_smp.addresses import ProtocolServer, ServerWithAuth
from sansio_smp.crypto import KeyAlgorithm, PrivateKey, PublicKey, SecretBoxStream
from sansio_smp.errors import ParseError
from sansio_smp.expiration import InactiveClients, client_inactive
from transports.http2 import ClientResponse, H2ClientConnection, H2ServerConnection, HTTP2Error, ServerRequest
from transports.store_files import AppendFile, read_complete_lines, write_file_atomically
from transports.tls import (
    BlockStream,
    TLSHandshakeError,
    _record_sni,
    client_ssl_context,
    connect_tls,
    create_tls_listener,
    server_ssl_context,
)

from xftp import description as d
from xftp import file_crypto as fc
from xftp import handshake as hs
from xftp import protocol as p
from xftp import store_log as sl
from xftp.links import fragment_of_link
from xftp.server import (
    DrainChunk,
    ReceiveChunk,
    Respond,
    SendChunk,
    ServerConfig,
    XFTPServer,
)

log = logging.getLogger("xftp")
T = TypeVar("T")

STORE_LOG_NAME = "file-server-store.log"
FILE_TIMEOUT = 300.0  # seconds to receive one chunk (reference fileTimeout)
EXPIRE_CHECK_INTERVAL = 2 * 3600.0
CONNECT_TIMEOUT = 25.0
COMMAND_TIMEOUT = 30.0
TIMEOUT_PER_KB = 0.05  # per KiB of chunk, on top of COMMAND_TIMEOUT (reference chunkTimeout)
DEFAULT_RETRIES = 3
UPLOAD_WINDOW = 3  # chunks being uploaded at once (each ≤ 4 MiB, held in memory)
DOWNLOAD_WINDOW = 3  # chunks downloading or waiting for decryption (held in memory)


BATCH = 1 << 20  # bytes handed to a worker thread at a time (the C code drops the GIL)


def _urandom(n: int) -> bytes:
    return os.urandom(n)


OFFLOAD = os.environ.get("XFTP_OFFLOAD", "1") == "1"


async def _offload(fn, *args):  # type: ignore[no-untyped-def]
    """Run a CPU/disk step in a worker thread (or inline with ``XFTP_OFFLOAD=0``)."""
    if OFFLOAD:
        return await anyio.to_thread.run_sync(fn, *args)
    return fn(*args)


class _ListWriter:
    """A write-only sink collecting pieces in a list (``with`` compatible)."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def __enter__(self) -> "_ListWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _absorb(h, f, data: bytes, transform: Callable[[bytes], bytes] | None = None) -> None:  # type: ignore[no-untyped-def]
    """Worker-thread step: optionally transform (decrypt), then hash and write."""
    if transform is not None:
        data = transform(data)
    h.update(data)
    f.write(data)


def _absorb_parts(h, f, parts: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    """Worker-thread step: hash and write received pieces (never joined into one buffer)."""
    for piece in parts:
        h.update(piece)
        f.write(piece)


class _BufferPool:
    """Recycled chunk buffers (at most ``keep``): a fresh multi-MiB ``bytearray`` per chunk is
    zero-filled and page-faulted in again every time; a recycled one is already mapped. One
    thread takes, any thread gives back."""

    def __init__(self, keep: int) -> None:
        self._free: list[bytearray] = []
        self._keep = keep
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) == size:
                    return self._free.pop(i)
        return bytearray(size)

    def give(self, buf: bytearray) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buf)


def _read_fully(f, view: memoryview) -> int:  # type: ignore[no-untyped-def]
    """``readinto`` until ``view`` is full or the file ends; the number of bytes read."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


# ================================================================ server


def web_ssl_context(cert_pem_path: str, key_pem_path: str) -> ssl.SSLContext:
    """The ``[WEB] cert/key`` context presented on SNI connections: browser-friendly TLS
    (``defaultSupportedParamsHTTPS``: any certificate type, default suites and groups)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    ctx.num_tickets = 0
    ctx.load_cert_chain(cert_pem_path, key_pem_path)
    ctx.set_alpn_protocols(list(hs.SERVER_ALPN))
    return ctx


def xftp_server_ssl_context(chain_pem: bytes, key_pem: bytes, web_ctx: ssl.SSLContext | None = None) -> ssl.SSLContext:
    """The router's context (``transports.tls.server_ssl_context`` with XFTP's ALPN list); with a
    web context, a client that sends SNI is switched to the web certificate (§1.2)."""
    ctx = server_ssl_context(chain_pem, key_pem, alpn=hs.SERVER_ALPN)
    if web_ctx is not None:

        def on_sni(ssl_object, server_name, c):  # type: ignore[no-untyped-def]
            _record_sni(ssl_object, server_name, c)
            if server_name is not None:
                ssl_object.context = web_ctx

        ctx.sni_callback = on_sni
    return ctx


class StoreLogWriter:
    """Appends store-log lines (fsync'd by :meth:`sync`) — ``None`` path disables the log. A failed
    write is rolled back (:class:`transports.store_files.AppendFile`), so no partial line stays."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._f = AppendFile(path) if path else None

    def append(self, records: Sequence[sl.Record]) -> bool:
        """Write the lines; returns whether an fsync is due (see :meth:`sync`)."""
        if self._f is None or not records:
            return False
        try:
            self._f.write("".join(sl.encode_record(r) + "\n" for r in records).encode("ascii"))
        except OSError:
            self._f.rollback()
            raise
        # complete lines are kept even before the fsync: other requests may append meanwhile
        self._f.commit()
        return True

    def sync(self) -> None:
        if self._f is not None:
            self._f.sync()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def restore_store(
    machine_config: ServerConfig, log_path: str | None, random_bytes=_urandom
) -> tuple[XFTPServer, list[str]]:  # type: ignore[no-untyped-def]
    """Read the store log (or its ``.bak`` if a compaction was interrupted), rebuild the store,
    drop records whose chunk file is gone, and rewrite the log compacted (``readWriteFileStore``)."""
    machine = XFTPServer(machine_config, random_bytes)
    warnings: list[str] = []
    if log_path:
        src = log_path if os.path.exists(log_path) else log_path + ".bak"
        lines, torn = read_complete_lines(src)
        if torn:
            warnings.append("dropped a torn last line")
        warnings += sl.restore((line.decode("ascii", errors="replace") for line in lines), machine.store)
        for rec in machine.store.files.values():
            if rec.path is not None and not os.path.exists(rec.path):
                warnings.append(f"chunk file of {d.b64url_encode(rec.sender_id)} is missing")
                rec.path = None
        write_file_atomically(log_path, sl.compacted(machine.store))
    machine.used_storage = machine.store.used_storage()
    # clean partial uploads left by a crash
    try:
        for name in os.listdir(machine_config.files_path):
            if name.endswith(".part"):
                os.remove(os.path.join(machine_config.files_path, name))
    except FileNotFoundError:
        os.makedirs(machine_config.files_path, exist_ok=True)
    return machine, warnings


class XFTPServerRuntime:
    """Serve one :class:`XFTPServer` over TLS + HTTP/2 (see module docstring)."""

    def __init__(
        self,
        machine: XFTPServer,
        identity: hs.ServerIdentity,
        ssl_context: ssl.SSLContext,
        *,
        web_enabled: bool = False,
        store_log: StoreLogWriter | None = None,
        file_timeout: float = FILE_TIMEOUT,
        expire_interval: float | None = EXPIRE_CHECK_INTERVAL,
        inactive_clients: InactiveClients | None = None,
        now: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = _urandom,
    ) -> None:
        self.machine = machine
        self.identity = identity
        self.ssl_context = ssl_context
        self.web_enabled = web_enabled
        self.store_log = store_log or StoreLogWriter(None)
        self.file_timeout = file_timeout
        self.expire_interval = expire_interval
        self.inactive_clients = inactive_clients
        self.now = now
        self.random_bytes = random_bytes
        self.port: int | None = None
        self.connections = 0

    async def serve(self, host: str | None, port: int, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        listener = await create_tls_listener(host, port, self.ssl_context)
        self.port = listener.port
        try:
            self._apply(self.machine.expire(self.now()))
            async with anyio.create_task_group() as tg:
                if self.expire_interval:
                    tg.start_soon(self._expire_loop)
                task_status.started(self.port)
                await listener.serve(self._on_connection, tg)
        finally:
            await listener.aclose()
            self.store_log.close()

    async def _expire_loop(self) -> None:
        assert self.expire_interval
        while True:
            await anyio.sleep(self.expire_interval)
            self._apply(self.machine.expire(self.now()))

    async def _apply_async(self, r: Respond) -> None:
        """:meth:`_apply`, with the store log fsync'd in a worker thread before the response."""
        if self.store_log.append(r.records):
            await _offload(self.store_log.sync)
        self._remove(r.remove)

    def _apply(self, r: Respond) -> None:
        """Log the records, then remove the chunk files (as the reference: log first)."""
        if self.store_log.append(r.records):
            self.store_log.sync()
        self._remove(r.remove)

    @staticmethod
    def _remove(paths: Sequence[str]) -> None:
        for path in paths:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("cannot remove chunk file %s: %s", path, e)

    async def _on_connection(self, stream: BlockStream) -> None:
        self.connections += 1
        sni_used = self.web_enabled and stream.sni is not None
        session = hs.ServerConnection(self.identity, stream.tls_unique or b"", sni_used, self.random_bytes)
        h2c = H2ServerConnection(stream)
        active_at = self.now()

        async def handler(req: ServerRequest) -> None:
            nonlocal active_at
            active_at = self.now()  # every request is activity (PING included)
            await self._on_request(req, stream, session, sni_used)

        async def disconnect_inactive(expiration: InactiveClients) -> None:
            """``expireInactiveClient`` (xftp-ntf.md §1.13): check every interval, close when idle."""
            while True:
                await anyio.sleep(expiration.check_interval)
                if client_inactive(active_at, self.now(), expiration.ttl):
                    log.debug("closing a connection inactive for over %s s", expiration.ttl)
                    await h2c.aclose()
                    return

        if self.inactive_clients is None:
            await h2c.serve(handler)
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(disconnect_inactive, self.inactive_clients)
            await h2c.serve(handler)
            tg.cancel_scope.cancel()

    async def _on_request(
        self, req: ServerRequest, stream: BlockStream, session: hs.ServerConnection, sni_used: bool
    ) -> None:
        cors = sni_used  # addCORSHeaders is set exactly when web credentials are configured
        extra = hs.CORS_HEADERS if cors else ()
        route = hs.route_request(req.method, stream.alpn, sni_used, cors)
        if route is hs.Route.CORS_PREFLIGHT:
            await req.respond(200, hs.CORS_PREFLIGHT_HEADERS)
            return
        if route is hs.Route.STATIC:
            await req.respond(404, extra)
            return
        if route is hs.Route.EMPTY:
            await req.respond(200, extra)
            return
        head = await req.body.read_exactly(p.XFTP_BLOCK_SIZE)
        if route is hs.Route.NO_HANDSHAKE:
            proceed = session.v1()
        else:
            decision = session.handle(head, req.header_names())
            if isinstance(decision, hs.Reply):
                await req.respond(200, extra, decision.body)
                return
            proceed = decision
        await self._process(req, head, proceed, extra)

    async def _process(self, req: ServerRequest, head: bytes, proceed: hs.Proceed, extra) -> None:  # type: ignore[no-untyped-def]
        params = proceed.params

        async def send(corr: bytes, entity: bytes, resp: p.Response, body=None) -> None:  # type: ignore[no-untyped-def]
            block = p.encode_response_block(params, corr, entity, resp)
            await req.respond(200, extra, block if body is None else body(block))

        if len(head) != p.XFTP_BLOCK_SIZE:
            await send(b"", b"", p.ERR(p.BLOCK))
            return
        dec = p.decode_request(params, head)
        if isinstance(dec, p.RequestError):
            await send(dec.corr_id, dec.entity_id, p.ERR(dec.error))
            return
        outcome = self.machine.handle(dec, self.now(), proceed.session_priv)
        if isinstance(outcome, ReceiveChunk):
            error = await self._receive_chunk(req, outcome)
            outcome = self.machine.upload_complete(outcome.sender_id, outcome.path, error)
        if isinstance(outcome, Respond):
            await self._apply_async(outcome)
            await send(dec.corr_id, dec.entity_id, outcome.response)
        elif isinstance(outcome, DrainChunk):
            n = await self._drain(req, outcome.size)
            await send(dec.corr_id, dec.entity_id, p.OK() if n == outcome.size else p.ERR(p.SIZE))
        elif isinstance(outcome, SendChunk):
            try:
                f = open(outcome.path, "rb")  # noqa: SIM115 - closed by the body generator
            except OSError:
                await send(dec.corr_id, dec.entity_id, p.ERR(p.AUTH))
                return
            await send(dec.corr_id, dec.entity_id, outcome.response, lambda block: self._chunk_body(block, f, outcome))

    @staticmethod
    async def _chunk_body(block: bytes, f, out: SendChunk) -> AsyncIterator[bytes]:  # type: ignore[no-untyped-def]
        """The FGET body: the response block, the chunk encrypted in pieces, the tag."""
        try:
            yield block
            s = SecretBoxStream(out.dh_secret, out.nonce)
            left = out.size
            # one buffer, refilled for every piece: send_body copies a piece into frames before
            # asking for the next, so the chunk is read and encrypted in place, without allocating
            buf = bytearray(min(BATCH, max(left, 1)))

            def next_piece(n: int) -> memoryview:
                view = memoryview(buf)[:n]
                if _read_fully(f, view) != n:
                    raise HTTP2Error("chunk file shorter than its size")
                s.encrypt_in_place(view)
                return view

            while left > 0:
                n = min(BATCH, left)
                left -= n
                yield await _offload(next_piece, n)
            yield s.tag()
        finally:
            f.close()

    async def _drain(self, req: ServerRequest, size: int) -> int:
        n = 0
        with anyio.move_on_after(self.file_timeout):
            while n <= size:
                piece = await req.body.receive(1 << 18)
                if not piece:
                    break
                n += len(piece)
        return n

    async def _receive_chunk(self, req: ServerRequest, rc: ReceiveChunk) -> p.XFTPError | None:
        """Receive exactly ``rc.size`` bytes into ``rc.path`` (via ``.part`` + rename), checking
        the SHA-256; any failure leaves no file behind."""
        part = rc.path + ".part"
        h = hashlib.sha256()
        got = 0
        error: p.XFTPError | None = None
        try:
            with open(part, "wb") as f:
                with anyio.move_on_after(self.file_timeout) as scope:
                    while True:
                        parts = await req.body.read_parts(BATCH)
                        if not parts:
                            break
                        got += sum(map(len, parts))
                        if got > rc.size:
                            error = p.SIZE
                            break
                        await _offload(_absorb_parts, h, f, parts)
                if scope.cancelled_caught:
                    error = p.TIMEOUT
                elif error is None and got != rc.size:
                    error = p.SIZE
                elif error is None and h.digest() != rc.digest:
                    error = p.DIGEST
                if error is None:
                    f.flush()
                    await _offload(os.fsync, f.fileno())
            if error is None:
                os.replace(part, rc.path)
        except HTTP2Error:
            error = p.SIZE
        except OSError as e:
            log.error("receiving chunk: %s", e)
            error = p.FILE_IO
        if error is not None:
            try:
                os.remove(part)
            except OSError:
                pass
        return error


# ================================================================ client


class XFTPClient:
    """One connection to one XFTP server: TLS (key hash checked), HTTP/2, the native handshake."""

    def __init__(self, server: ProtocolServer, h2c: H2ClientConnection, stream: BlockStream) -> None:
        self.server = server
        self.h2c = h2c
        self.stream = stream
        self.params = p.xftp_params(stream.tls_unique or b"", 1)
        self.server_session_key: PublicKey | None = None
        self._cancel: anyio.CancelScope | None = None

    @classmethod
    async def connect(
        cls,
        server: ProtocolServer,
        tg: anyio.abc.TaskGroup,
        *,
        alpn: Sequence[str] | None = (p.XFTP_ALPN,),
        timeout: float = CONNECT_TIMEOUT,
        versions=p.SUPPORTED_XFTP_VERSIONS,  # type: ignore[no-untyped-def]
        now: Callable[[], float] = time.time,
    ) -> "XFTPClient":
        with anyio.fail_after(timeout):
            stream = await connect_tls(
                server.hosts[0], server.port_number, server.key_hash, ssl_context=client_ssl_context(alpn), now=now
            )
        h2c = H2ClientConnection(stream, authority=server.hosts[0])
        client = cls(server, h2c, stream)
        await h2c.start()

        async def reader() -> None:
            with anyio.CancelScope() as scope:
                client._cancel = scope
                await h2c.run()

        tg.start_soon(reader)
        try:
            with anyio.fail_after(timeout):
                if stream.alpn in (p.XFTP_ALPN, hs.HTTP_ALPN):
                    await client._handshake(versions)
        except BaseException:
            await client.aclose()
            raise
        return client

    async def _handshake(self, versions) -> None:  # type: ignore[no-untyped-def]
        resp = await self.h2c.request("POST", "/", (), None)
        body = await resp.body.read_all(p.XFTP_BLOCK_SIZE)
        self.h2c.release(resp)
        shs = hs.ServerHandshake.parse_block(body)
        neg = hs.check_native_handshake(
            shs, self.stream.tls_unique or b"", self.stream.peer_chain_der[0], self.server.key_hash, versions
        )
        resp = await self.h2c.request("POST", "/", (), hs.ClientHandshake(neg.version, self.server.key_hash).block())
        reply = await resp.body.read_all(p.XFTP_BLOCK_SIZE)
        self.h2c.release(resp)
        if reply:
            err = p.detect_bare_error(reply)
            raise p.XFTPErrorResponse(err or p.BLOCK, "client handshake not accepted")
        self.params = neg.params()
        self.server_session_key = neg.server_session_key

    @property
    def closed(self) -> bool:
        return self.h2c.closed

    async def aclose(self) -> None:
        await self.h2c.aclose()
        if self._cancel is not None:
            self._cancel.cancel()

    # -- commands
    async def send_command(
        self,
        entity_id: bytes,
        cmd: p.Command,
        key: PrivateKey | None,
        extra_body: AsyncIterator[bytes] | None = None,
    ) -> tuple[p.Response, ClientResponse]:
        """Send one command; raise :class:`XFTPErrorResponse` on ``ERR`` or a bad response.
        The caller reads the rest of the body (FILE) and releases the stream."""
        block = p.encode_command_block(self.params, entity_id, cmd, key, b"", self.server_session_key)
        if extra_body is None:
            body: object = block
        else:

            async def gen() -> AsyncIterator[bytes]:
                yield block
                async for piece in extra_body:
                    yield piece

            body = gen()
        resp = await self.h2c.request("POST", "/", (), body)  # type: ignore[arg-type]
        head = await resp.body.read_exactly(p.XFTP_BLOCK_SIZE)
        if len(head) != p.XFTP_BLOCK_SIZE:
            self.h2c.release(resp)
            raise p.XFTPErrorResponse(p.detect_bare_error(head) or p.BLOCK, "short response")
        bare = p.detect_bare_error(head)
        if bare is not None:
            self.h2c.release(resp)
            raise p.XFTPErrorResponse(bare)
        rt = p.decode_response(self.params, head)
        if isinstance(rt.response, p.XFTPError):
            self.h2c.release(resp)
            raise p.XFTPErrorResponse(rt.response)
        if isinstance(rt.response, p.ERR):
            self.h2c.release(resp)
            raise p.XFTPErrorResponse(rt.response.error)
        return rt.response, resp

    async def _simple(self, entity_id: bytes, cmd: p.Command, key: PrivateKey | None, extra=None) -> p.Response:  # type: ignore[no-untyped-def]
        r, resp = await self.send_command(entity_id, cmd, key, extra)
        await resp.body.drain()
        self.h2c.release(resp)
        return r

    async def create_chunk(
        self, snd_key: PrivateKey, info: p.FileInfo, rcv_keys: Sequence[PublicKey], auth: bytes | None
    ) -> tuple[bytes, list[bytes]]:
        r = await self._simple(b"", p.FNEW(info, tuple(rcv_keys), auth), snd_key)
        if not isinstance(r, p.SIDS):
            raise p.XFTPErrorResponse(p.BLOCK, f"unexpected response {type(r).__name__}")
        return r.sender_id, list(r.recipient_ids)

    async def add_recipients(self, snd_key: PrivateKey, sender_id: bytes, rcv_keys: Sequence[PublicKey]) -> list[bytes]:
        r = await self._simple(sender_id, p.FADD(tuple(rcv_keys)), snd_key)
        if not isinstance(r, p.RIDS):
            raise p.XFTPErrorResponse(p.BLOCK, f"unexpected response {type(r).__name__}")
        return list(r.recipient_ids)

    async def upload_chunk(
        self, snd_key: PrivateKey, sender_id: bytes, source: str | bytes, offset: int = 0, size: int | None = None
    ) -> None:
        """FPUT: the chunk is ``source`` (bytes-like) or ``size`` bytes of the file ``source`` at ``offset``."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = memoryview(source).cast("B")  # pieces are views: no copy of the chunk
            size = len(data)

            async def body() -> AsyncIterator[bytes]:
                for i in range(0, len(data), BATCH):
                    yield data[i : i + BATCH]

        else:
            assert size is not None

            async def body() -> AsyncIterator[bytes]:
                with open(source, "rb") as f:
                    f.seek(offset)
                    left = size
                    while left > 0:
                        piece = f.read(min(BATCH, left))
                        if not piece:
                            raise OSError("file shorter than the chunk")
                        left -= len(piece)
                        yield piece

        with anyio.fail_after(COMMAND_TIMEOUT + TIMEOUT_PER_KB * size / 1024):
            r = await self._simple(sender_id, p.FPUT(), snd_key, body())
        if not isinstance(r, p.OK):
            raise p.XFTPErrorResponse(p.BLOCK, f"unexpected response {type(r).__name__}")

    async def download_chunk(
        self,
        rcv_key: PrivateKey,
        recipient_id: bytes,
        size: int,
        digest: bytes,
        dest: str | None = None,
        random_bytes: Callable[[int], bytes] = _urandom,
        buffer: bytearray | None = None,
    ) -> bytearray | None:
        """FGET: transport-decrypt, check the tag (CRYPTO), the size (SIZE) and the chunk SHA-256
        (DIGEST). The chunk goes to the file ``dest`` (removed on any failure) or, without
        ``dest``, is returned (a ``bytearray``: ``buffer`` if it has the chunk's size — it is
        reused and overwritten — else a new one)."""
        dh = PrivateKey.generate(KeyAlgorithm.X25519, random_bytes)
        with anyio.fail_after(COMMAND_TIMEOUT + TIMEOUT_PER_KB * size / 1024):
            r, resp = await self.send_command(recipient_id, p.FGET(dh.public()), rcv_key)
            try:
                if not isinstance(r, p.FILE):
                    raise p.XFTPErrorResponse(p.BLOCK, f"unexpected response {type(r).__name__}")
                dec = p.TransportDecryptor(dh.dh(r.dh_key), r.nonce, size)
                h = hashlib.sha256()
                # the chunk is assembled in one buffer and decrypted there in place, a batch at a time
                chunk = buffer if buffer is not None and len(buffer) == size else bytearray(size)
                view = memoryview(chunk)
                pos = 0

                def absorb(start: int, end: int, tail: bytes, f) -> None:  # type: ignore[no-untyped-def]
                    plain = dec.feed_in_place(view[start:end])
                    h.update(plain)
                    if dest is not None:
                        f.write(plain)
                    if tail:
                        dec.feed_in_place(bytearray(tail))  # tag bytes (SIZE if too many)

                with open(dest, "wb") if dest is not None else _ListWriter([]) as f:
                    while True:
                        parts = await resp.body.read_parts(BATCH)
                        if not parts:
                            break
                        start, tail = pos, b""
                        for piece in parts:
                            take = min(len(piece), size - pos)
                            if take:
                                view[pos : pos + take] = piece if take == len(piece) else memoryview(piece)[:take]
                                pos += take
                            if take < len(piece):
                                tail += piece[take:]
                        await _offload(absorb, start, pos, tail, f)
                dec.finish()
                if h.digest() != digest:
                    raise p.XFTPErrorResponse(p.DIGEST, "chunk digest mismatch")
            except BaseException:
                if dest is not None:
                    try:
                        os.remove(dest)
                    except OSError:
                        pass
                raise
            finally:
                self.h2c.release(resp)
        return None if dest is not None else chunk

    async def delete_chunk(self, snd_key: PrivateKey, sender_id: bytes) -> None:
        await self._simple(sender_id, p.FDEL(), snd_key)

    async def ack_chunk(self, rcv_key: PrivateKey, recipient_id: bytes) -> None:
        await self._simple(recipient_id, p.FACK(), rcv_key)

    async def ping(self) -> None:
        r = await self._simple(b"", p.PING(), None)
        if not isinstance(r, p.PONG):
            raise p.XFTPErrorResponse(p.BLOCK, "expected PONG")


_TRANSIENT = (HTTP2Error, OSError, TLSHandshakeError, TimeoutError, anyio.BrokenResourceError, anyio.EndOfStream)


class XFTPClientAgent:
    """A connection per server, opened on demand, reconnected on transient failures; each
    operation is retried (``--retry``) as the reference CLI's ``withReconnect`` does."""

    def __init__(
        self,
        tg: anyio.abc.TaskGroup,
        retries: int = DEFAULT_RETRIES,
        random_bytes: Callable[[int], bytes] = _urandom,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.tg = tg
        self.retries = max(1, retries)
        self.random_bytes = random_bytes
        self.now = now
        self._clients: dict[ProtocolServer, XFTPClient] = {}
        self._locks: dict[ProtocolServer, anyio.Lock] = {}

    async def client(self, server: ProtocolServer) -> XFTPClient:
        lock = self._locks.setdefault(server, anyio.Lock())
        async with lock:
            c = self._clients.get(server)
            if c is None or c.closed:
                c = await XFTPClient.connect(server, self.tg, now=self.now)
                self._clients[server] = c
            return c

    async def drop(self, server: ProtocolServer) -> None:
        c = self._clients.pop(server, None)
        if c is not None:
            await c.aclose()

    async def run(self, server: ProtocolServer, op: Callable[[XFTPClient], Awaitable[T]]) -> T:
        for attempt in range(1, self.retries + 1):
            try:
                return await op(await self.client(server))
            except p.XFTPErrorResponse as e:
                if not e.retriable or attempt == self.retries:
                    raise
                log.warning("retrying after %s", e)
                await self.drop(server)
            except _TRANSIENT as e:
                if attempt == self.retries:
                    raise
                log.warning("retrying after %r", e)
                await self.drop(server)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        for server in list(self._clients):
            await self.drop(server)


def _first_error(eg: BaseExceptionGroup) -> BaseException:
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            return _first_error(e)
        return e
    return eg  # pragma: no cover


@asynccontextmanager
async def client_agent(
    retries: int = DEFAULT_RETRIES,
    random_bytes: Callable[[int], bytes] = _urandom,
    now: Callable[[], float] = time.time,
) -> AsyncIterator[XFTPClientAgent]:
    """An :class:`XFTPClientAgent` whose connections are closed on exit; errors come out as
    themselves, not wrapped in exception groups."""
    try:
        async with anyio.create_task_group() as tg:
            agent = XFTPClientAgent(tg, retries, random_bytes, now)
            try:
                yield agent
            finally:
                await agent.aclose()
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as eg:
        raise _first_error(eg) from None


# ---------------------------------------------------------------- send / receive / delete


Progress = Callable[[int, int], None]


class XFTPClientError(Exception):
    """A CLI-level failure with a message for the user."""


@attrs.frozen
class SentFile:
    recipient_descriptions: tuple[d.FileDescription, ...]
    sender_description: d.FileDescription
    recipient_paths: tuple[str, ...] = ()
    sender_path: str | None = None
    web_link: str | None = None


def _unique_path(directory: str, name: str) -> str:
    """``uniqueCombine``: ``name``, else ``name_1``, ``name_2``… (before the extension)."""
    base, ext = os.path.splitext(name)
    path = os.path.join(directory, name)
    n = 0
    while os.path.exists(path):
        n += 1
        path = os.path.join(directory, f"{base}_{n}{ext}")
    return path


async def send_file(
    path: str,
    servers: Sequence[ServerWithAuth],
    *,
    out_dir: str | None = ".",
    recipients: int = 1,
    retries: int = DEFAULT_RETRIES,
    tmp_dir: str | None = None,
    progress: Progress | None = None,
    random_bytes: Callable[[int], bytes] = _urandom,
    now: Callable[[], float] = time.time,
    file_name: str | None = None,
) -> SentFile:
    """``xftp send``: encrypt in a worker thread (streaming), upload each chunk as soon as it is
    encrypted to a random server with ``recipients`` recipient keys, write ``rcvN.xftp`` and
    ``snd.xftp.private``. At most :data:`UPLOAD_WINDOW` chunks (≤ 4 MiB each) are held in memory,
    whatever the file size; ``tmp_dir`` is accepted for CLI compatibility (nothing is written)."""
    if not servers:
        raise XFTPClientError("no servers")
    if recipients < 1:
        raise XFTPClientError("at least one recipient is needed")
    size = os.path.getsize(path)
    if size > fc.MAX_FILE_SIZE:
        raise XFTPClientError("Files bigger than 1gb are not supported")
    name = file_name if file_name is not None else os.path.basename(path)
    plan = fc.UploadPlan.for_file(name, size)
    key, nonce = random_bytes(32), random_bytes(24)
    digester = fc.ChunkDigester(plan.chunk_sizes)
    specs = fc.chunk_specs(list(plan.chunk_sizes))
    rng = random.Random(random_bytes(16))
    chosen = [servers[rng.randrange(len(servers))] for _ in specs]
    sent: dict[int, tuple] = {}
    uploaded = 0
    send_ch, recv_ch = anyio.create_memory_object_stream[tuple[int, bytearray]](0)
    pool = _BufferPool(UPLOAD_WINDOW + 1)

    def encrypt() -> None:
        """Worker thread: build each chunk in its own buffer — file content read straight into
        it and encrypted in place, digests taken while the piece is still in cache — and hand it
        over when complete (the hand-over blocks while the upload window is full)."""
        enc = fc.FileEncryptor(key, nonce, plan.header, size, plan.enc_size)
        nxt = 0
        chunk = pool.take(specs[0][1]) if specs else bytearray()
        view = memoryview(chunk)
        pos = 0

        def filled(n: int) -> None:
            """``n`` more encrypted bytes are in place at ``pos``: digest them, pass on full chunks."""
            nonlocal pos, nxt, chunk, view
            digester.update(view[pos : pos + n])
            pos += n
            if pos == len(chunk):
                anyio.from_thread.run(send_ch.send, (nxt, chunk))
                nxt += 1
                chunk = pool.take(specs[nxt][1]) if nxt < len(specs) else bytearray()
                view = memoryview(chunk)
                pos = 0

        def put(data: bytes) -> None:
            """Copy already-encrypted bytes (header, padding, tag) into the chunks."""
            src = memoryview(data)
            while len(src):
                if pos == len(chunk):
                    raise XFTPClientError("encrypted file longer than its chunks")
                n = min(len(src), len(chunk) - pos)
                view[pos : pos + n] = src[:n]
                src = src[n:]
                filled(n)

        with open(path, "rb") as src:
            put(enc.start())
            left = size
            while left > 0:
                n = min(BATCH, left, len(chunk) - pos)
                if n <= 0:
                    raise XFTPClientError("encrypted file longer than its chunks")
                piece = view[pos : pos + n]
                if _read_fully(src, piece) != n:
                    raise XFTPClientError("file changed while encrypting")
                left -= n
                enc.encrypt_in_place(piece)
                filled(n)
            for piece in enc.finish():
                put(piece)
        if nxt != len(specs):
            raise XFTPClientError("encrypted file shorter than its chunks")

    async with client_agent(retries, random_bytes, now) as agent:
        window = anyio.Semaphore(UPLOAD_WINDOW)

        async def upload(i: int, chunk: bytearray) -> None:
            nonlocal uploaded
            try:
                csize = specs[i][1]
                srv = chosen[i]
                digest = digester.chunk_digests[i]
                snd = PrivateKey.generate(KeyAlgorithm.ED25519, random_bytes)
                rcvs = [PrivateKey.generate(KeyAlgorithm.ED25519, random_bytes) for _ in range(recipients)]
                info = p.FileInfo(snd.public(), csize, digest)
                first = [k.public() for k in rcvs[: p.MAX_RECIPIENTS_PER_REQUEST]]
                sid, rids = await agent.run(srv.server, lambda c: c.create_chunk(snd, info, first, srv.basic_auth))
                for j in range(p.MAX_RECIPIENTS_PER_REQUEST, recipients, p.MAX_RECIPIENTS_PER_REQUEST):
                    more = [k.public() for k in rcvs[j : j + p.MAX_RECIPIENTS_PER_REQUEST]]
                    rids += await agent.run(srv.server, lambda c, more=more: c.add_recipients(snd, sid, more))
                await agent.run(srv.server, lambda c: c.upload_chunk(snd, sid, chunk))
                pool.give(chunk)
                sent[i] = (srv.server, sid, snd, rids, rcvs, csize, digest)
                uploaded += csize
                if progress:
                    progress(uploaded, plan.enc_size)
            finally:
                window.release()

        async def produce() -> None:
            try:
                await anyio.to_thread.run_sync(encrypt)
            finally:
                send_ch.close()

        errors: list[BaseException] = []
        async with anyio.create_task_group() as tg:

            async def guarded(job: Callable[..., Awaitable[None]], *args) -> None:  # type: ignore[no-untyped-def]
                try:
                    await job(*args)
                except Exception as e:  # noqa: BLE001 - re-raised below
                    errors.append(e)
                    recv_ch.close()
                    tg.cancel_scope.cancel()

            tg.start_soon(guarded, produce)
            try:
                async for i, chunk in recv_ch:
                    await window.acquire()
                    tg.start_soon(guarded, upload, i, chunk)
            except anyio.ClosedResourceError:
                pass
        if errors:
            raise errors[0]
    file_digest = digester.file_digest()

    default = plan.chunk_sizes[0]
    rcv_fds = []
    for n in range(recipients):
        chunks = tuple(
            d.FileChunk(i + 1, sent[i][5], sent[i][6], (d.FileChunkReplica(sent[i][0], sent[i][3][n], sent[i][4][n]),))
            for i in range(len(specs))
        )
        rcv_fds.append(d.FileDescription("recipient", plan.enc_size, file_digest, key, nonce, default, chunks))
    snd_chunks = tuple(
        d.FileChunk(i + 1, sent[i][5], sent[i][6], (d.FileChunkReplica(sent[i][0], sent[i][1], sent[i][2]),))
        for i in range(len(specs))
    )
    snd_fd = d.FileDescription("sender", plan.enc_size, file_digest, key, nonce, default, snd_chunks)
    link = d.file_web_link(rcv_fds[0]) if rcv_fds else None
    rcv_paths: list[str] = []
    snd_path = None
    if out_dir is not None:
        folder = _unique_path(out_dir, name + ".xftp")
        os.makedirs(folder)
        for n, fd in enumerate(rcv_fds, 1):
            fp = os.path.join(folder, f"rcv{n}.xftp")
            _write_private(fp, fd.encode())
            rcv_paths.append(fp)
        snd_path = os.path.join(folder, "snd.xftp.private")
        _write_private(snd_path, snd_fd.encode())
    return SentFile(tuple(rcv_fds), snd_fd, tuple(rcv_paths), snd_path, link)


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def load_description(source: str) -> d.FileDescription:
    """A recipient description from a file path or an ``https://host/#fragment`` link."""
    if source.startswith(("http://", "https://")):
        try:
            return d.decode_web_uri(fragment_of_link(source))
        except ParseError as e:
            raise XFTPClientError(f"Invalid web link: {e}") from e
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        raise XFTPClientError(f"cannot read {source}: {e}") from e
    try:
        return d.FileDescription.decode_valid(data)
    except ParseError as e:
        raise XFTPClientError(f"Failed to parse file description: {e}") from e


def _safe_name(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/")).strip()
    return base if base not in ("", ".", "..") else "file"


async def receive_file(
    fd: d.FileDescription,
    out_dir: str,
    *,
    retries: int = DEFAULT_RETRIES,
    tmp_dir: str | None = None,
    progress: Progress | None = None,
    random_bytes: Callable[[int], bytes] = _urandom,
    now: Callable[[], float] = time.time,
    redirect_depth: int = 1,
) -> str:
    """``xftp recv``: download the chunks (each transport-decrypted and checked against its
    digest), decrypt them in order in a worker thread into ``<out_dir>/.xftp-….part`` while the
    next ones download, check the file SHA-512 and tag, rename the result, acknowledge the
    chunks; follow one redirect. At most :data:`DOWNLOAD_WINDOW` chunks are held in memory.
    Returns the received file's path; a failure leaves nothing behind."""
    if fd.party != "recipient":
        raise XFTPClientError("not a recipient file description")
    if fd.redirect is not None and redirect_depth <= 0:
        raise XFTPClientError("Redirect chain too long")
    buffered: dict[int, bytearray] = {}
    pool = _BufferPool(DOWNLOAD_WINDOW + 1)
    ready = [anyio.Event() for _ in fd.chunks]
    window = anyio.Semaphore(DOWNLOAD_WINDOW)
    aborted = False

    def next_chunk(i: int) -> bytes:
        """In the decryption thread: wait for chunk ``i``, take it, free its window slot."""
        anyio.from_thread.run(ready[i].wait)
        if aborted:
            raise XFTPClientError("download failed")
        data = buffered.pop(i)
        anyio.from_thread.run_sync(window.release)
        return data

    def decrypt() -> object:
        if fd.redirect is not None:
            return _decrypt_to_memory(fd, next_chunk, 1 << 22, pool.give)
        return _decrypt_to_dir(fd, next_chunk, out_dir, pool.give)

    done = 0
    async with client_agent(retries, random_bytes, now) as agent:
        result: list[object] = []
        errors: list[BaseException] = []
        async with anyio.create_task_group() as tg:

            def fail(e: BaseException) -> None:
                nonlocal aborted
                errors.append(e)
                aborted = True
                for ev in ready:
                    ev.set()
                tg.cancel_scope.cancel()

            async def one(i: int, c: d.FileChunk) -> None:
                nonlocal done
                try:
                    if not c.replicas:
                        raise XFTPClientError("chunk has no replicas")
                    rep = c.replicas[0]
                    data = await agent.run(
                        rep.server,
                        lambda cl: cl.download_chunk(
                            rep.replica_key,
                            rep.replica_id,
                            c.chunk_size,
                            c.digest,
                            None,
                            random_bytes,
                            pool.take(c.chunk_size),
                        ),
                    )
                    buffered[i] = data  # type: ignore[assignment]
                    ready[i].set()
                    done += c.chunk_size
                    if progress:
                        progress(done, fd.size)
                except Exception as e:  # noqa: BLE001 - re-raised below
                    fail(e)

            async def decrypt_all() -> None:
                try:
                    result.append(await anyio.to_thread.run_sync(decrypt))
                except Exception as e:  # noqa: BLE001 - re-raised below
                    fail(e)

            tg.start_soon(decrypt_all)
            for i, c in enumerate(fd.chunks):
                await window.acquire()
                tg.start_soon(one, i, c)
        if errors:
            raise errors[0]
        await _ack_all(agent, fd)
    if fd.redirect is None:
        return result[0]  # type: ignore[return-value]
    try:
        inner = d.FileDescription.decode_valid(result[0], party="recipient")  # type: ignore[arg-type]
    except ParseError as e:
        raise XFTPClientError(f"Redirect: invalid file description: {e}") from e
    if inner.size != fd.redirect.size or inner.digest != fd.redirect.digest:
        raise XFTPClientError("Redirect: the file description does not match")
    return await receive_file(
        inner,
        out_dir,
        retries=retries,
        tmp_dir=tmp_dir,
        progress=progress,
        random_bytes=random_bytes,
        now=now,
        redirect_depth=redirect_depth - 1,
    )


async def _ack_all(agent: XFTPClientAgent, fd: d.FileDescription) -> None:
    for c in fd.chunks:
        rep = c.replicas[0]
        await agent.run(rep.server, lambda cl, rep=rep: cl.ack_chunk(rep.replica_key, rep.replica_id))


def _decrypt_chunks(
    fd: d.FileDescription,
    next_chunk: Callable[[int], bytes | bytearray],
    sink: Callable[[bytes | memoryview], None],
    release: Callable[[bytearray], None] | None = None,
) -> fc.FileHeader:
    """Decrypt the chunks in order into ``sink`` (which must consume what it is given at once),
    then check the file SHA-512 (``File digest mismatch``) and the tag. The caller discards what
    ``sink`` got if this raises. Chunk buffers are decrypted in place and then, if ``release``
    is given, handed back to it for reuse."""
    dec = fc.FileDecryptor(fd.key, fd.nonce, fd.size)
    h = hashlib.sha512()
    for i in range(len(fd.chunks)):
        data = next_chunk(i)
        if not isinstance(data, bytearray):
            data = bytearray(data)
        view = memoryview(data)
        # per piece, while it is in cache: the SHA-512 of the ciphertext, then decryption in
        # place (the downloaded chunk buffer is ours); ``sink`` gets views into it
        for off in range(0, len(view), BATCH):
            piece = view[off : off + BATCH]
            h.update(piece)
            out = dec.decrypt_in_place(piece)
            if out:
                sink(out)
        if release is not None:
            release(data)
    if h.digest() != fd.digest:
        raise XFTPClientError("File digest mismatch")
    return dec.finish()


def _decrypt_to_memory(
    fd: d.FileDescription,
    next_chunk: Callable[[int], bytes | bytearray],
    limit: int,
    release: Callable[[bytearray], None] | None = None,
) -> bytes:
    parts: list[bytes] = []
    total = 0

    def sink(b: bytes) -> None:
        nonlocal total
        total += len(b)
        if total > limit:
            raise XFTPClientError("redirect description too large")
        parts.append(bytes(b))

    try:
        _decrypt_chunks(fd, next_chunk, sink, release)
    except fc.FileCryptoError as e:
        raise XFTPClientError(f"Error decrypting file: {e}") from e
    return b"".join(parts)


def _decrypt_to_dir(
    fd: d.FileDescription,
    next_chunk: Callable[[int], bytes | bytearray],
    out_dir: str,
    release: Callable[[bytearray], None] | None = None,
) -> str:
    os.makedirs(out_dir, exist_ok=True)
    part_fd, part = tempfile.mkstemp(prefix=".xftp-", suffix=".part", dir=out_dir)
    try:
        with os.fdopen(part_fd, "wb") as out:
            hdr = _decrypt_chunks(fd, next_chunk, out.write, release)
            out.flush()
            os.fsync(out.fileno())
        target = _unique_path(out_dir, _safe_name(hdr.file_name))
        os.replace(part, target)
        return target
    except fc.FileCryptoError as e:
        raise XFTPClientError(f"Error decrypting file: {e}") from e
    finally:
        if os.path.exists(part):
            os.remove(part)


async def delete_file(
    fd: d.FileDescription,
    *,
    retries: int = DEFAULT_RETRIES,
    random_bytes: Callable[[int], bytes] = _urandom,
    now: Callable[[], float] = time.time,
) -> None:
    """``xftp del``: FDEL every chunk of a sender description."""
    if fd.party != "sender":
        raise XFTPClientError("a sender file description (snd.xftp.private) is required")
    async with client_agent(retries, random_bytes, now) as agent:
        for c in fd.chunks:
            if not c.replicas:
                raise XFTPClientError("chunk has no replicas")
            rep = c.replicas[0]
            await agent.run(rep.server, lambda cl, rep=rep: cl.delete_chunk(rep.replica_key, rep.replica_id))


__all__ = [
    "SentFile",
    "StoreLogWriter",
    "XFTPClient",
    "XFTPClientAgent",
    "XFTPClientError",
    "XFTPServerRuntime",
    "delete_file",
    "load_description",
    "receive_file",
    "restore_store",
    "send_file",
    "web_ssl_context",
    "xftp_server_ssl_context",
]
