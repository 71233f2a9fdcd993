"""In-memory connected :class:`~transports.tls.BlockStream` pairs for tests (no sockets, no TLS).

Both ends report the same injected ``tls_unique`` (as real TLS does, smp.md §2.5) and
``alpn`` (default ``"smp/1"``); the client end can be given the router chain it "sees"
(``peer_chain_der``), so handshake code runs unchanged over memory.
"""

from __future__ import annotations

from typing import Sequence

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .tls import ALPN_SMP, BLOCK_SIZE, BlockStream


class MemoryBlockStream(BlockStream):
    """One end of :func:`memory_stream_pair`. ``aclose`` gives the peer ``EndOfStream``."""

    def __init__(
        self,
        send_stream: MemoryObjectSendStream[bytes],
        receive_stream: MemoryObjectReceiveStream[bytes],
        block_size: int,
        tls_unique: bytes | None,
        alpn: str | None,
        server_side: bool,
        peer_chain_der: Sequence[bytes] = (),
    ) -> None:
        super().__init__(block_size)
        self._send_stream = send_stream
        self._receive_stream = receive_stream
        self.tls_unique = tls_unique
        self.alpn = alpn
        self.server_side = server_side
        self.peer_chain_der = list(peer_chain_der)

    async def _receive_raw(self, max_bytes: int) -> bytes:
        # chunks are delivered whole; BlockStream buffers any excess
        return await self._receive_stream.receive()

    async def _send_raw(self, data: bytes) -> None:
        if data:
            await self._send_stream.send(data)

    async def _close_raw(self) -> None:
        await self._send_stream.aclose()
        await self._receive_stream.aclose()


def memory_stream_pair(
    tls_unique: bytes | None,
    *,
    block_size: int = BLOCK_SIZE,
    alpn: str | None = ALPN_SMP,
    server_chain_der: Sequence[bytes] = (),
    max_buffer: int = 64,
) -> tuple[MemoryBlockStream, MemoryBlockStream]:
    """``(client_end, server_end)``, connected both ways. ``server_chain_der`` is what the
    client end reports as ``peer_chain_der`` (the server end reports none). Each direction
    buffers up to ``max_buffer`` sends before a sender waits."""
    c2s_send, c2s_recv = anyio.create_memory_object_stream[bytes](max_buffer)
    s2c_send, s2c_recv = anyio.create_memory_object_stream[bytes](max_buffer)
    client = MemoryBlockStream(c2s_send, s2c_recv, block_size, tls_unique, alpn, False, server_chain_der)
    server = MemoryBlockStream(s2c_send, c2s_recv, block_size, tls_unique, alpn, True)
    return client, server
