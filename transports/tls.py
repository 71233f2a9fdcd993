"""TLS (and plain TCP) block transports for SMP/XFTP over anyio (smp.md §2.1–§2.5, §2.8, §3.1).

I/O adapter: everything protocol-level (chain check, key hash, signed session key) is in the pure
:mod:`sansio_smp.x509`; this module only opens sockets, runs the TLS handshake with the
reference's parameters and exposes what the handshake machines need.

TLS settings (reference ``defaultSupportedParams``, smp.md §2.1, §2.8):

* TLS 1.2 and 1.3 only; TLS 1.3 suite ``TLS_CHACHA20_POLY1305_SHA256`` only (set through
  OpenSSL's ``SSL_CTX_set_ciphersuites`` via ctypes — Python's ``ssl`` has no API for it), TLS 1.2
  suite ``ECDHE-ECDSA-CHACHA20-POLY1305``; groups X448, X25519; signature algorithms Ed448,
  Ed25519. If the OpenSSL symbols cannot be reached safely, a warning is logged and OpenSSL's
  defaults stay (two Python peers may then pick AES-256-GCM-SHA384, where tls-unique is 48 bytes).
* No session tickets/resumption (``num_tickets = 0``, ``OP_NO_TICKET``), no renegotiation.
* Clients send **no SNI** and do not let OpenSSL verify anything (``CERT_NONE``); the chain is
  checked after the handshake with :func:`sansio_smp.x509.validate_server_chain` against the
  address key hash.
* ALPN: clients offer ``["smp/1"]``; routers accept ``["smp/1", "h2", "http/1.1"]``. Known
  difference: OpenSSL (through Python) picks by the *router's* preference order, the reference by
  the client's — only visible if a client offers several protocols.

Streams: :class:`BlockStream` is the interface every transport here (and
:mod:`transports.memory`) implements — exact-size block reads, raw sends, ``tls_unique``,
``peer_chain_der``, ``alpn``. Routers (:func:`create_tls_listener`) use
:class:`SSLSocketBlockStream`: a non-blocking :class:`ssl.SSLSocket` that OpenSSL reads and
writes itself, driven by ``anyio.wait_readable``/``wait_writable`` — with
``SSL_MODE_RELEASE_BUFFERS`` (set by CPython) OpenSSL frees its record buffers while a
connection is idle. Clients (:func:`connect_tls`) use :class:`TLSBlockStream` over anyio's
``TLSStream`` (two ``ssl.MemoryBIO`` s over an asyncio transport; the BIOs keep their largest size,
~21 KB each after one 16 KB block, for the connection's life — which matters on a router with
many idle connections, not on a client).

``tls_unique`` (smp.md §2.5): CPython's ``get_channel_binding("tls-unique")`` returns
``SSL_get_finished`` on the client and ``SSL_get_peer_finished`` on the server (for a new
session), i.e. **the client's Finished verify_data on both ends** — the reference's sessionId.
32 bytes with TLS 1.3 + a SHA-256 suite, 12 bytes with TLS 1.2.

EOF semantics of :meth:`BlockStream.receive_exactly`/``receive_block``: EOF before the first byte
of a block raises ``anyio.EndOfStream``; EOF inside a block raises ``anyio.IncompleteRead``
(smp.md §3.1: a short read is a connection error); a broken connection raises
``anyio.BrokenResourceError``.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import ssl
import sys
import tempfile
import time
from typing import Any, Awaitable, Callable, Iterable, Sequence

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSStream

from sansio_smp.errors import LocalProtocolError
from sansio_smp.x509 import ChainCertificates, validate_server_chain

log = logging.getLogger(__name__)

BLOCK_SIZE = 16384  # smpBlockSize, smp.md §3.1
ALPN_SMP = "smp/1"
CLIENT_ALPN: tuple[str, ...] = (ALPN_SMP,)
SERVER_ALPN: tuple[str, ...] = (ALPN_SMP, "h2", "http/1.1")
HTTP_ALPN: tuple[str, ...] = ("http/1.1",)  # client ALPN on preset web ports (smp.md §2.2)
TLS13_CIPHERSUITES = "TLS_CHACHA20_POLY1305_SHA256"
TLS12_CIPHERS = "ECDHE-ECDSA-CHACHA20-POLY1305"
TLS_GROUPS = "X448:X25519"
TLS_SIGALGS = "ed448:ed25519"
DEFAULT_SMP_PORT = 5223
TLS_HANDSHAKE_TIMEOUT = 60.0  # router TLS setup timeout (smp.md §2.1)
# TCP keep-alive (reference defaultKeepAliveOpts, smp.md §3.7)
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 30, 15, 4


class TLSHandshakeError(ConnectionError):
    """The TLS handshake failed (no common suite/group/ALPN, peer closed, bad record...)."""


# ---------------------------------------------------------------- OpenSSL tuning via ctypes

_SSL_CTRL_SET_GROUPS_LIST = 92
_SSL_CTRL_SET_SIGALGS_LIST = 98


class _OpenSSL:
    """ctypes access to the libssl that the ``_ssl`` module itself uses.

    The ``SSL_CTX *`` of an :class:`ssl.SSLContext` is the first field after ``PyObject_HEAD`` in
    CPython's ``PySSLContext``; the pointer read there is accepted only if OpenSSL reports the same
    options and security level for it as Python does."""

    def __init__(self) -> None:
        import _ssl

        self.lib: Any = None
        self.reason = ""
        try:
            lib = ctypes.CDLL(_ssl.__file__)  # dlsym on this handle also searches its libssl
            lib.OpenSSL_version_num.restype = ctypes.c_ulong
            lib.OpenSSL_version_num.argtypes = []
            if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
                self.reason = "libssl version differs from ssl.OPENSSL_VERSION_NUMBER"
                return
            lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
            lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.SSL_CTX_ctrl.restype = ctypes.c_long
            lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
            lib.SSL_CTX_get_options.restype = ctypes.c_uint64
            lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_get_security_level.restype = ctypes.c_int
            lib.SSL_CTX_get_security_level.argtypes = [ctypes.c_void_p]
        except (OSError, AttributeError) as e:
            self.reason = f"OpenSSL symbols not reachable: {e}"
            return
        if hasattr(sys, "getobjects"):  # Py_TRACE_REFS builds have a longer PyObject_HEAD
            self.reason = "Py_TRACE_REFS build"
            return
        self.lib = lib

    def ctx_pointer(self, ctx: ssl.SSLContext) -> int | None:
        if self.lib is None:
            return None
        offset = object.__basicsize__
        if type(ctx).__basicsize__ < offset + ctypes.sizeof(ctypes.c_void_p):
            return None
        ptr = ctypes.c_void_p.from_address(id(ctx) + offset).value
        return ptr if ptr and self.matches(ptr, ctx) else None

    def matches(self, ptr: int, ctx: ssl.SSLContext) -> bool:
        """Does OpenSSL report the same options and security level for ``ptr`` as ``ctx``?"""
        return bool(
            self.lib.SSL_CTX_get_options(ptr) == ctx.options
            and self.lib.SSL_CTX_get_security_level(ptr) == ctx.security_level
        )


_openssl = _OpenSSL()


def restrict_tls_parameters(
    ctx: ssl.SSLContext,
    ciphersuites: str = TLS13_CIPHERSUITES,
    groups: str | None = TLS_GROUPS,
    sigalgs: str | None = TLS_SIGALGS,
) -> bool:
    """Set the TLS 1.3 suites (and groups, signature algorithms) of ``ctx`` through OpenSSL.

    Returns ``True`` if all were applied; otherwise logs a warning and leaves the defaults for
    what could not be set. The result is also stored as ``ctx.smp_restricted``."""
    ptr = _openssl.ctx_pointer(ctx)
    ok = ptr is not None
    if ptr is None:
        log.warning(
            "cannot restrict TLS 1.3 cipher suites (%s); keeping OpenSSL defaults",
            _openssl.reason or "SSL_CTX pointer not verified",
        )
    else:
        lib = _openssl.lib
        if lib.SSL_CTX_set_ciphersuites(ptr, ciphersuites.encode("ascii")) != 1:
            log.warning("SSL_CTX_set_ciphersuites(%s) failed", ciphersuites)
            ok = False
        for cmd, value in ((_SSL_CTRL_SET_GROUPS_LIST, groups), (_SSL_CTRL_SET_SIGALGS_LIST, sigalgs)):
            if value is None:
                continue
            buf = ctypes.create_string_buffer(value.encode("ascii"))
            if lib.SSL_CTX_ctrl(ptr, cmd, 0, ctypes.cast(buf, ctypes.c_void_p)) != 1:
                log.warning("SSL_CTX_ctrl(%d, %s) failed", cmd, value)
                ok = False
    ctx.smp_restricted = ok  # type: ignore[attr-defined]
    return ok


# ---------------------------------------------------------------- contexts


def _base_context(protocol: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    ctx.set_ciphers(TLS12_CIPHERS)
    return ctx


def _record_sni(ssl_object: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
    if server_name is not None and ssl_object is not None:
        try:
            ssl_object.smp_sni = server_name
        except AttributeError:  # pragma: no cover - an _ssl._SSLSocket without an owner
            pass


def _load_cert_chain(ctx: ssl.SSLContext, cert_chain: bytes | str | os.PathLike, key: bytes | str | os.PathLike) -> None:
    if isinstance(cert_chain, (str, os.PathLike)) and isinstance(key, (str, os.PathLike)):
        ctx.load_cert_chain(os.fspath(cert_chain), os.fspath(key))
        return
    # ssl can only load from files: write the PEMs to a private temporary directory.
    with tempfile.TemporaryDirectory(prefix="smp-tls-") as d:
        paths = []
        for name, value in (("chain.pem", cert_chain), ("key.pem", key)):
            if isinstance(value, (str, os.PathLike)):
                paths.append(os.fspath(value))
                continue
            path = os.path.join(d, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(value)
            paths.append(path)
        ctx.load_cert_chain(paths[0], paths[1])


def server_ssl_context(
    cert_chain_pem: bytes | str | os.PathLike,
    key_pem: bytes | str | os.PathLike,
    alpn: Sequence[str] | None = SERVER_ALPN,
) -> ssl.SSLContext:
    """A router's TLS context (smp.md §2.1, §2.8): ``cert_chain_pem`` is the online certificate
    followed by the CA (``server.crt`` + ``ca.crt``, so both are sent), ``key_pem`` the online
    key (PEM bytes or file paths). No client certificates are requested. The SNI a client sent
    (if any) is recorded and exposed as :attr:`TLSBlockStream.sni`."""
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_NONE
    ctx.num_tickets = 0
    _load_cert_chain(ctx, cert_chain_pem, key_pem)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    ctx.sni_callback = _record_sni
    restrict_tls_parameters(ctx)
    return ctx


def client_ssl_context(alpn: Sequence[str] | None = CLIENT_ALPN) -> ssl.SSLContext:
    """An SMP/XFTP client's TLS context (smp.md §2.1, §2.8): no hostname check, no OpenSSL
    verification (the chain is checked against the key hash after the handshake), no tickets."""
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    restrict_tls_parameters(ctx)
    return ctx


# ---------------------------------------------------------------- streams


class BlockStream:
    """A byte stream with exact-size reads (smp.md §3.1) and the connection facts the SMP
    handshake needs. Subclasses implement ``_receive_raw``/``_send_raw``/``_close_raw``.

    Attributes: ``block_size``, ``tls_unique`` (bytes or ``None``), ``alpn`` (``str`` or
    ``None``), ``peer_chain_der`` (DER list, leaf first; empty if none), ``sni``,
    ``server_side``. One task may receive while another sends."""

    block_size: int
    tls_unique: bytes | None = None
    alpn: str | None = None
    peer_chain_der: list[bytes]
    sni: str | None = None
    server_side: bool = False

    def __init__(self, block_size: int = BLOCK_SIZE) -> None:
        if block_size <= 0:
            raise LocalProtocolError("block size must be positive")
        self.block_size = block_size
        self.peer_chain_der = []
        self._buffer = bytearray()
        # fast_acquire: an uncontended send does not yield an extra time to take the lock
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._closed = False

    # -- to implement
    async def _receive_raw(self, max_bytes: int) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _send_raw(self, data: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _close_raw(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- interface
    async def receive_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes. ``EndOfStream`` at EOF before any byte, ``IncompleteRead`` at
        EOF inside."""
        while len(self._buffer) < n:
            try:
                chunk = await self._receive_raw(max(65536, n - len(self._buffer)))
            except anyio.EndOfStream:
                if not self._buffer:
                    raise
                raise anyio.IncompleteRead from None
            self._buffer += chunk
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def receive_block(self) -> bytes:
        """One ``block_size`` block."""
        return await self.receive_exactly(self.block_size)

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        """Whatever is available (at least 1 byte, at most ``max_bytes``): for HTTP/2 use."""
        if self._buffer:
            out = bytes(self._buffer[:max_bytes])
            del self._buffer[:max_bytes]
            return out
        return await self._receive_raw(max_bytes)

    async def send(self, data: bytes) -> None:
        """Send raw bytes (sends are serialized)."""
        async with self._send_lock:
            await self._send_raw(bytes(data))

    def receive_block_nowait(self) -> bytes | None:
        """The next block if it is already here (no waiting), else ``None``: lets a reader handle
        the blocks a peer sent back to back in one go (and answer them with one write). Errors and
        the end of the stream surface at the next :meth:`receive_block`. Not supported here."""
        return None

    def send_nowait(self, data: bytes) -> bytes | memoryview:
        """Write what the transport takes at once, without waiting; returns the rest (empty when
        all of ``data`` went out). The next :meth:`send` must pass exactly that rest (a TLS write
        that could not finish is repeated with the same bytes). Not supported here: nothing is
        written."""
        return data

    async def send_block(self, block: bytes) -> None:
        """Send one block; it must be exactly ``block_size`` bytes."""
        if len(block) != self.block_size:
            raise LocalProtocolError(f"block of {len(block)} bytes, expected {self.block_size}")
        await self.send(block)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._close_raw()

    async def __aenter__(self) -> "BlockStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _peer_chain_der(ssl_object: ssl.SSLObject) -> list[bytes]:
    """The peer's certificates as sent (DER, leaf first), without verification.

    Python ≥ 3.13: public ``SSLObject.get_unverified_chain()``; 3.10–3.12: the same method of
    the private ``_ssl._SSLSocket`` (``SSL_get_peer_cert_chain``, plus the peer certificate on
    the server side)."""
    fn = getattr(ssl_object, "get_unverified_chain", None)
    if fn is None:
        inner = getattr(ssl_object, "_sslobj", None)
        fn = getattr(inner, "get_unverified_chain", None)
    if fn is None:  # pragma: no cover - Python < 3.10
        raise RuntimeError("this Python's ssl module cannot return the peer certificate chain")
    chain = fn() or []
    import _ssl

    return [c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER) for c in chain]


class _TLSFacts(BlockStream):
    """The facts of an established TLS session (``ssl.SSLObject`` or ``ssl.SSLSocket``)."""

    def _read_session(self, obj: ssl.SSLObject | ssl.SSLSocket) -> None:
        self.server_side = obj.server_side
        self.tls_unique = obj.get_channel_binding("tls-unique")
        self.alpn = obj.selected_alpn_protocol()
        self.peer_chain_der = _peer_chain_der(obj)  # type: ignore[arg-type]
        self.sni = getattr(obj, "smp_sni", None)
        cipher = obj.cipher()
        self.cipher: str | None = cipher[0] if cipher else None
        self.tls_version: str | None = obj.version()
        #: the classified, validated router chain (set by :func:`connect_tls`)
        self.chain: ChainCertificates | None = None


class TLSBlockStream(_TLSFacts):
    """:class:`BlockStream` over an anyio :class:`~anyio.streams.tls.TLSStream` (already
    handshaken). ``aclose`` closes the socket without waiting for the peer's close_notify."""

    def __init__(self, tls: TLSStream, block_size: int = BLOCK_SIZE) -> None:
        super().__init__(block_size)
        self.tls = tls
        obj: ssl.SSLObject = tls.extra(TLSAttribute.ssl_object)
        self.ssl_object = obj
        self._read_session(obj)

    async def _receive_raw(self, max_bytes: int) -> bytes:
        return await self.tls.receive(max_bytes)

    async def _send_raw(self, data: bytes) -> None:
        await self.tls.send(data)

    async def _close_raw(self) -> None:
        await self.tls.aclose()


class SSLSocketBlockStream(_TLSFacts):
    """:class:`BlockStream` over a non-blocking :class:`ssl.SSLSocket` (already handshaken, see
    :func:`tls_handshake_socket`): OpenSSL reads and writes the socket itself; the stream waits
    with ``anyio.wait_writable`` / a reader callback (``anyio.wait_readable`` off asyncio, see
    :meth:`_wait_readable`) when OpenSSL wants to. :meth:`receive_block_nowait` and
    :meth:`send_nowait` let the router runtime read and write without a task switch.

    Same behaviour as :class:`TLSBlockStream` (EOF, ragged EOF = ``EndOfStream``; errors =
    ``BrokenResourceError``; ``aclose`` closes without close_notify), with less memory per idle
    connection: no ``MemoryBIO`` s and no asyncio transport buffers, and OpenSSL releases its
    record buffers between records. One task may receive while another sends (OpenSSL allows a
    write while a non-blocking read waits for data; both run on the event loop thread)."""

    #: reads that found data at once, in a row, before one yields to the other tasks
    READY_READS_PER_YIELD = 8

    def __init__(self, sock: ssl.SSLSocket, block_size: int = BLOCK_SIZE) -> None:
        super().__init__(block_size)
        self.sock = sock
        self.ssl_object = sock
        self._read_session(sock)
        self._ready_reads = 0
        self._read_error: Exception | None = None  # met outside a read, raised by the next read
        # readiness to read, on asyncio (see _wait_readable)
        self._loop: asyncio.AbstractEventLoop | None | bool = False  # False: not looked up yet
        self._reader_on = False  # our reader callback is registered with the loop
        self._read_waiter: asyncio.Future[None] | None = None
        self._read_want = 0  # bytes the waiting receive takes (0: the waiter only wants readiness)
        self._read_chunk: bytes | None = None  # read by the callback for the waiting receive
        self._drained = False  # receive_block_nowait just found nothing: the next read waits first

    def _asyncio_loop(self) -> asyncio.AbstractEventLoop | None:
        if self._loop is False:
            try:  # running under asyncio (directly or as anyio's backend)? trio has no asyncio loop
                self._loop = asyncio.get_running_loop()
            except RuntimeError:  # pragma: no cover - trio
                self._loop = None
        return self._loop  # type: ignore[return-value]

    async def _wait_readable(self, want: int) -> None:
        """``anyio.wait_readable`` for this socket, cheaper on asyncio: our reader callback stays
        registered while receives keep waiting (no epoll_ctl add+delete per wait; it is removed when
        readiness comes with nobody waiting, and at close), and it reads the data for the waiting
        receive itself (``want`` bytes at most), so a readiness that a receive already consumed
        costs a failed ``recv`` instead of a task switch."""
        loop = self._asyncio_loop()
        if loop is None:
            await anyio.wait_readable(self.sock)
            return
        if self._read_waiter is not None:
            raise anyio.BusyResourceError("reading from")
        if self._closed:
            raise anyio.ClosedResourceError
        if not self._reader_on:
            try:
                loop.add_reader(self.sock.fileno(), self._on_readable)
            except NotImplementedError:  # pragma: no cover - e.g. the proactor loop
                self._loop = None
                await anyio.wait_readable(self.sock)
                return
            self._reader_on = True
        fut = loop.create_future()
        self._read_waiter, self._read_want = fut, want
        try:
            await fut
        finally:
            if self._read_waiter is fut:
                self._read_waiter = None
        if self._closed:
            raise anyio.ClosedResourceError

    def _stop_reading(self) -> None:
        if self._reader_on:
            self._reader_on = False
            try:
                self._loop.remove_reader(self.sock.fileno())  # type: ignore[union-attr]
            except (OSError, ValueError):  # pragma: no cover - already closed
                pass

    def _on_readable(self) -> None:
        fut = self._read_waiter
        if fut is None or fut.done():
            self._stop_reading()  # nobody waits: stop watching until a receive waits again
            return
        if self._read_want and self._read_chunk is None and self._read_error is None:
            try:
                data = self.sock.recv(self._read_want)
            except ssl.SSLWantReadError:
                return  # already consumed: keep waiting
            except ssl.SSLWantWriteError:
                pass  # the receive retries and waits for writability
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._read_error = anyio.EndOfStream()
            except (ssl.SSLError, OSError) as e:
                self._read_error = anyio.BrokenResourceError()
                self._read_error.__cause__ = e
            else:
                if data:
                    self._read_chunk = data
                else:  # close_notify, or a TCP FIN without it
                    self._read_error = anyio.EndOfStream()
        self._read_waiter = None
        fut.set_result(None)

    async def _wait(self, writable: bool) -> None:
        try:
            await (anyio.wait_writable(self.sock) if writable else self._wait_readable(0))
        except anyio.BusyResourceError:
            # The other direction's task already waits for this readiness (OpenSSL needs to
            # read while writing, or the reverse — a TLS 1.3 post-handshake message): it will
            # make OpenSSL progress; poll meanwhile.
            await anyio.sleep(0.001)

    async def _receive_raw(self, max_bytes: int) -> bytes:
        # A fast peer must not starve the other tasks: a read that waits yields anyway; reads
        # that find data at once yield every READY_READS_PER_YIELD-th time (one event-loop pass
        # per read cost ~10 µs of router CPU per 16 KB block).
        self._ready_reads += 1
        if self._ready_reads >= self.READY_READS_PER_YIELD:
            self._ready_reads = 0
            await anyio.lowlevel.checkpoint()
        drained, self._drained = self._drained, False
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._read_error is not None:
                raise self._read_error
            if self._read_chunk is not None:  # read for us by _on_readable
                data, self._read_chunk = self._read_chunk, None
                if len(data) > max_bytes:  # pragma: no cover - only after a cancelled receive
                    data, self._read_chunk = data[:max_bytes], data[max_bytes:]
                return data
            try:
                if drained and not self.sock.pending():
                    # receive_block_nowait has just met an empty socket: wait without another
                    # failed read (data that came since makes the wait end at once)
                    drained = False
                    raise ssl.SSLWantReadError
                data = self.sock.recv(max_bytes)
            except ssl.SSLWantReadError:
                self._ready_reads = 0
                try:
                    await self._wait_readable(max_bytes)
                except anyio.BusyResourceError:
                    await anyio.sleep(0.001)  # (as in _wait)
                continue
            except ssl.SSLWantWriteError:
                await self._wait(writable=True)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                raise anyio.EndOfStream from None
            except (ssl.SSLError, OSError) as e:
                raise anyio.BrokenResourceError from e
            if not data:  # close_notify, or a TCP FIN without it (suppress_ragged_eofs)
                raise anyio.EndOfStream
            return data

    async def receive_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes, reading no more than that from OpenSSL (a block is usually one
        TLS record: one ``recv``, no copies)."""
        if len(self._buffer) >= n:  # pragma: no cover - only receive_some could leave that much
            return await super().receive_exactly(n)
        if self._buffer:  # the start of a block (receive_block_nowait)
            parts, got = [bytes(self._buffer)], len(self._buffer)
            self._buffer.clear()
        else:
            data = await self._receive_raw(n)
            if len(data) == n:
                return data
            parts, got = [data], len(data)
        while got < n:
            try:
                data = await self._receive_raw(n - got)
            except anyio.EndOfStream:
                raise anyio.IncompleteRead from None
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def receive_block_nowait(self) -> bytes | None:
        """The next block if OpenSSL has all of it now (see :meth:`BlockStream.receive_block_nowait`);
        a part of one stays buffered for the next receive. ``None`` also every
        ``READY_READS_PER_YIELD``-th time in a row, so that the next receive yields to the other tasks."""
        if self._closed or self._read_error is not None or self._read_chunk is not None:
            return None
        if len(self._buffer) >= self.block_size:
            return None
        if self._ready_reads + 1 >= self.READY_READS_PER_YIELD:
            return None
        try:
            data = self.sock.recv(self.block_size - len(self._buffer))
        except ssl.SSLWantReadError:
            self._drained = True
            return None
        except ssl.SSLWantWriteError:
            return None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self._read_error = anyio.EndOfStream()
            return None
        except (ssl.SSLError, OSError) as e:
            self._read_error = anyio.BrokenResourceError()
            self._read_error.__cause__ = e
            return None
        if not data:
            self._read_error = anyio.EndOfStream()
            return None
        self._ready_reads += 1
        if not self._buffer and len(data) == self.block_size:
            return data
        self._buffer += data
        if len(self._buffer) < self.block_size:
            return None
        out = bytes(self._buffer)
        self._buffer.clear()
        return out

    def send_nowait(self, data: bytes) -> bytes | memoryview:
        """Write ``data`` if the socket takes it without waiting (see :meth:`BlockStream.send_nowait`):
        a sender with nothing queued skips a task switch and the event-loop passes of :meth:`send`.
        Errors are :class:`anyio.BrokenResourceError`/:class:`anyio.ClosedResourceError`, as for :meth:`send`."""
        if self._closed:
            raise anyio.ClosedResourceError
        if self._send_lock.locked():  # a send is in progress: queue behind it
            return data
        view = memoryview(data)
        while view:
            try:
                n = self.sock.send(view)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return view  # OpenSSL may hold part of it: the next send repeats exactly these bytes
            except (ssl.SSLError, OSError) as e:
                raise anyio.BrokenResourceError from e
            view = view[n:]
        return b""

    async def _send_raw(self, data: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        view = memoryview(data)
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                # all of it or SSLWant*Error (no SSL_MODE_ENABLE_PARTIAL_WRITE); a retry passes
                # the same bytes (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER is set by CPython)
                n = self.sock.send(view)
            except ssl.SSLWantWriteError:
                await self._wait(writable=True)
                continue
            except ssl.SSLWantReadError:
                await self._wait(writable=False)
                continue
            except (ssl.SSLError, OSError) as e:
                raise anyio.BrokenResourceError from e
            view = view[n:]

    async def _close_raw(self) -> None:
        # wake a task waiting on the socket (ClosedResourceError) before the fd can be reused
        self._stop_reading()
        fut, self._read_waiter = self._read_waiter, None
        if fut is not None and not fut.done():
            fut.set_result(None)  # the waiter sees _closed
        try:
            anyio.notify_closing(self.sock)
        except Exception:  # pragma: no cover - no running event loop
            pass
        self.sock.close()


class TCPBlockStream(BlockStream):
    """Plain TCP with the same interface, for tests: ``tls_unique``/``alpn`` are injected."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        block_size: int = BLOCK_SIZE,
        tls_unique: bytes | None = None,
        alpn: str | None = None,
        server_side: bool = False,
    ) -> None:
        super().__init__(block_size)
        self.stream = stream
        self.tls_unique = tls_unique
        self.alpn = alpn
        self.server_side = server_side

    async def _receive_raw(self, max_bytes: int) -> bytes:
        return await self.stream.receive(max_bytes)

    async def _send_raw(self, data: bytes) -> None:
        await self.stream.send(data)

    async def _close_raw(self) -> None:
        await self.stream.aclose()


# ---------------------------------------------------------------- connecting


def _set_keepalive(stream: anyio.abc.ByteStream) -> None:
    """TCP keep-alive 30 s idle / 15 s interval / 4 probes (best effort, smp.md §3.7)."""
    try:
        _set_socket_keepalive(stream.extra(SocketAttribute.raw_socket))
    except anyio.TypedAttributeLookupError:  # pragma: no cover - not a socket
        pass


def _set_socket_keepalive(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in (
            ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
            ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ):
            if hasattr(socket, opt):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
    except OSError:  # pragma: no cover - platform specific
        pass


async def _tls_handshake(stream: anyio.abc.ByteStream, ctx: ssl.SSLContext, server_side: bool) -> TLSStream:
    try:
        return await TLSStream.wrap(
            stream, server_side=server_side, hostname=None, ssl_context=ctx, standard_compatible=False
        )
    except (ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream, OSError) as e:
        raise TLSHandshakeError(f"TLS handshake failed: {e!r}") from e


async def tls_handshake_socket(
    raw: socket.socket, ctx: ssl.SSLContext, server_side: bool, server_hostname: str | None = None
) -> ssl.SSLSocket:
    """Run the TLS handshake on a connected socket, non-blocking, and return the
    :class:`ssl.SSLSocket` (it owns the file descriptor from then on). The socket is closed on
    any failure or cancellation; TLS/socket errors raise :class:`TLSHandshakeError`."""
    raw.setblocking(False)
    try:
        sock = ctx.wrap_socket(
            raw, server_side=server_side, do_handshake_on_connect=False, server_hostname=server_hostname
        )
    except (ssl.SSLError, OSError, ValueError) as e:
        raw.close()
        raise TLSHandshakeError(f"TLS handshake failed: {e!r}") from e
    try:
        while True:
            try:
                sock.do_handshake()
                return sock
            except ssl.SSLWantReadError:
                await anyio.wait_readable(sock)
            except ssl.SSLWantWriteError:
                await anyio.wait_writable(sock)
    except (ssl.SSLError, OSError) as e:
        sock.close()
        raise TLSHandshakeError(f"TLS handshake failed: {e!r}") from e
    except BaseException:
        sock.close()
        raise


async def connect_tls(
    host: str,
    port: int,
    key_hash: bytes | None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    alpn: Sequence[str] | None = CLIENT_ALPN,
    block_size: int = BLOCK_SIZE,
    now: Callable[[], float] = time.time,
    timeout: float | None = None,
) -> TLSBlockStream:
    """Connect (no SNI), handshake and check the router chain against ``key_hash`` (32 raw
    bytes; ``None`` skips the check — only for tests). Raises
    :class:`~sansio_smp.x509.CertificateError` on a chain/key-hash mismatch,
    :class:`TLSHandshakeError` if TLS fails, ``TimeoutError`` after ``timeout`` seconds."""
    ctx = ssl_context or client_ssl_context(alpn)
    with anyio.fail_after(timeout):
        tcp = await anyio.connect_tcp(host, port)
        try:
            _set_keepalive(tcp)
            tls = await _tls_handshake(tcp, ctx, server_side=False)
            stream = TLSBlockStream(tls, block_size)
            if key_hash is not None:
                stream.chain = validate_server_chain(stream.peer_chain_der, key_hash, now())
        except BaseException:
            await anyio.aclose_forcefully(tcp)
            raise
    return stream


async def connect_tcp_block(
    host: str,
    port: int,
    *,
    block_size: int = BLOCK_SIZE,
    tls_unique: bytes | None = None,
    alpn: str | None = None,
) -> TCPBlockStream:
    """Plain TCP client with the :class:`BlockStream` interface (tests)."""
    tcp = await anyio.connect_tcp(host, port)
    return TCPBlockStream(tcp, block_size, tls_unique, alpn, server_side=False)


# ---------------------------------------------------------------- serving

Handler = Callable[[BlockStream], Awaitable[Any]]


class SocketListener(anyio.abc.Listener[socket.socket]):
    """Accepts plain non-blocking :class:`socket.socket` s (TCP_NODELAY and keep-alive set) on
    the bound sockets of an anyio TCP listener, for OpenSSL to own (anyio's own ``accept``
    would wrap each in an asyncio transport). Extra attributes (``local_port``...) are the
    anyio listener's; ``aclose`` closes it."""

    def __init__(self, inner: anyio.abc.Listener[Any]) -> None:
        self.inner = inner
        listeners = getattr(inner, "listeners", None) or [inner]
        self.sockets: list[socket.socket] = [lst.extra(SocketAttribute.raw_socket) for lst in listeners]
        self._closed = False

    @property
    def extra_attributes(self) -> Any:
        return self.inner.extra_attributes

    async def serve(self, handler: Callable[[socket.socket], Any], task_group: anyio.abc.TaskGroup | None = None) -> None:
        async with anyio.create_task_group() as own:
            for sock in self.sockets:
                own.start_soon(self._accept_loop, sock, handler, task_group or own)

    async def _accept_loop(self, lsock: socket.socket, handler: Callable[[socket.socket], Any], tg: anyio.abc.TaskGroup) -> None:
        while not self._closed:
            try:
                await anyio.wait_readable(lsock)
            except anyio.ClosedResourceError:
                return
            try:
                conn, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:  # EMFILE, ENOBUFS...: keep listening
                if self._closed:
                    return
                log.warning("accept failed: %s", e.strerror or e)
                await anyio.sleep(0.1)
                continue
            conn.setblocking(False)
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio transports do
            except OSError:  # pragma: no cover
                pass
            _set_socket_keepalive(conn)
            tg.start_soon(handler, conn)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            for sock in self.sockets:
                anyio.notify_closing(sock)
        await self.inner.aclose()


async def _discard_connection(raw: Any) -> None:
    if isinstance(raw, socket.socket):
        raw.close()
    else:
        await anyio.aclose_forcefully(raw)


class BlockListener:
    """Accepts TCP connections and turns each into a :class:`BlockStream` (TLS handshake with
    a time limit, or plain) before calling the handler; the stream is closed when the handler
    returns. Handler exceptions are logged, never propagated into the listener."""

    def __init__(
        self,
        listener: anyio.abc.Listener[Any],
        wrap: Callable[[anyio.abc.ByteStream], Awaitable[BlockStream]],
        handshake_timeout: float,
    ) -> None:
        self.listener = listener
        self._wrap = wrap
        self.handshake_timeout = handshake_timeout

    @property
    def port(self) -> int:
        return self.listener.extra(SocketAttribute.local_port)

    async def serve(self, handler: Handler, task_group: anyio.abc.TaskGroup | None = None) -> None:
        async def on_connection(raw: anyio.abc.ByteStream) -> None:
            try:
                with anyio.fail_after(self.handshake_timeout):
                    stream = await self._wrap(raw)
            except Exception as e:
                log.debug("connection setup failed: %r", e)
                await _discard_connection(raw)
                return
            try:
                await handler(stream)
            except Exception:
                log.exception("connection handler failed")
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        await stream.aclose()
                    except Exception:  # pragma: no cover
                        pass

        await self.listener.serve(on_connection, task_group)

    async def aclose(self) -> None:
        await self.listener.aclose()


async def create_tls_listener(
    host: str | None,
    port: int,
    ssl_context: ssl.SSLContext,
    *,
    block_size: int = BLOCK_SIZE,
    handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT,
    memory_bio: bool = False,
) -> BlockListener:
    """A TLS router listener (``port=0`` picks a free port, see :attr:`BlockListener.port`).

    Connections are :class:`SSLSocketBlockStream` s; ``memory_bio=True`` gives anyio
    ``TLSStream`` -based :class:`TLSBlockStream` s instead (the previous transport)."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    if memory_bio:

        async def wrap_bio(raw: anyio.abc.ByteStream) -> BlockStream:
            _set_keepalive(raw)
            return TLSBlockStream(await _tls_handshake(raw, ssl_context, server_side=True), block_size)

        return BlockListener(listener, wrap_bio, handshake_timeout)

    async def wrap(raw: socket.socket) -> BlockStream:
        return SSLSocketBlockStream(await tls_handshake_socket(raw, ssl_context, server_side=True), block_size)

    return BlockListener(SocketListener(listener), wrap, handshake_timeout)


async def create_tcp_block_listener(
    host: str | None,
    port: int,
    *,
    block_size: int = BLOCK_SIZE,
    tls_unique: bytes | None = None,
    alpn: str | None = None,
) -> BlockListener:
    """Plain TCP listener with the same interface (tests)."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)

    async def wrap(raw: anyio.abc.ByteStream) -> BlockStream:
        return TCPBlockStream(raw, block_size, tls_unique, alpn, server_side=True)

    return BlockListener(listener, wrap, TLS_HANDSHAKE_TIMEOUT)


async def serve_tls(
    host: str | None,
    port: int,
    ssl_context: ssl.SSLContext,
    handler: Handler,
    *,
    block_size: int = BLOCK_SIZE,
    handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve forever; use with ``await tg.start(serve_tls, ...)`` to get the bound port."""
    listener = await create_tls_listener(
        host, port, ssl_context, block_size=block_size, handshake_timeout=handshake_timeout
    )
    async with listener.listener:
        task_status.started(listener.port)
        await listener.serve(handler)


__all__: Iterable[str] = (
    "ALPN_SMP",
    "BLOCK_SIZE",
    "BlockListener",
    "BlockStream",
    "CLIENT_ALPN",
    "ChainCertificates",
    "DEFAULT_SMP_PORT",
    "SERVER_ALPN",
    "SSLSocketBlockStream",
    "SocketListener",
    "TCPBlockStream",
    "TLSBlockStream",
    "TLSHandshakeError",
    "client_ssl_context",
    "connect_tcp_block",
    "connect_tls",
    "create_tcp_block_listener",
    "create_tls_listener",
    "restrict_tls_parameters",
    "serve_tls",
    "server_ssl_context",
    "tls_handshake_socket",
)
