"""The one transmission / batch / block codec for SMP, XFTP and NTF (smp.md §3.1, §3.5, §3.6, §4.1).

A *transmission* is ``sb(auth) [mb(sb(serviceSig))] [sb(sessionId)] sb(corrId) sb(entityId) command``;
the command bytes are opaque here (each protocol has its own ``protocol`` module). A *batch* is
``count ‖ lg(t₁) ‖ … ‖ lg(tₙ)``; a *block* is that batch padded to the block size, optionally
secretboxed with the HKDF chain of §3.5.

What differs between protocols and versions is captured by :class:`TransmissionParams`
(the reference's ``THandleParams``): block size, whether the session id is implied (SMP v≥7,
NTF v≥2) or sent (SMP v6, XFTP), and whether the v16 service-signature slot is present.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import attrs

from . import crypto
from .encoding import Reader, lg, sb, unpad
from .errors import CryptoError, LocalProtocolError, ParseError

SMP_BLOCK_SIZE = 16384
BATCH_OVERHEAD = 19  # 2 pad length + 1 count + 16 block-encryption tag (batchTransmissions_)
MAX_BATCH_ITEMS = 255

ED25519_SIG_SIZE = 64
ED448_SIG_SIZE = 114
AUTHENTICATOR_SIZE = crypto.AUTHENTICATOR_SIZE
VALID_AUTH_SIZES = (0, ED25519_SIG_SIZE, ED448_SIG_SIZE, AUTHENTICATOR_SIZE)


@attrs.frozen
class TransmissionParams:
    """Negotiated framing parameters of one connection (reference ``THandleParams``)."""

    version: int
    session_id: bytes
    implied_session: bool = True
    service_auth: bool = False
    block_size: int = SMP_BLOCK_SIZE
    batch: bool = True

    @classmethod
    def smp(cls, version: int, session_id: bytes) -> "TransmissionParams":
        """SMP: session id implied from v7, service-signature slot from v16 (smp.md §1.1)."""
        return cls(version, session_id, implied_session=version >= 7, service_auth=version >= 16)


@attrs.frozen
class Transmission:
    """One parsed transmission. ``authorized`` is what the auth field signs (§4.1)."""

    auth: bytes
    service_sig: bytes | None
    session_id: bytes
    corr_id: bytes
    entity_id: bytes
    command: bytes
    authorized: bytes

    @property
    def auth_size_valid(self) -> bool:
        """``decodeTAuthBytes``: empty, 64/114-byte signature or 80-byte authenticator."""
        return len(self.auth) in VALID_AUTH_SIZES


def authorized_bytes(session_id: bytes, corr_id: bytes, entity_id: bytes, command: bytes) -> bytes:
    """``sb(sessionId) ‖ sb(corrId) ‖ sb(entityId) ‖ command`` — signed or authenticated (§4.1)."""
    return sb(session_id) + sb(corr_id) + sb(entity_id) + command


def encode_transmission(
    params: TransmissionParams,
    corr_id: bytes,
    entity_id: bytes,
    command: bytes,
    auth: bytes = b"",
    service_sig: bytes | None = None,
) -> bytes:
    """Encode one transmission (``tEncode``); ``auth`` must already be computed."""
    parts = [sb(auth)]
    if params.service_auth and auth:
        parts.append(b"0" if service_sig is None else b"1" + sb(service_sig))
    if not params.implied_session:
        parts.append(sb(params.session_id))
    parts += (sb(corr_id), sb(entity_id), command)
    return b"".join(parts)  # one copy of a (possibly 16 KB) command


def parse_transmission(params: TransmissionParams, data: bytes) -> Transmission:
    """Parse one transmission (``transmissionP``); :class:`ParseError` if malformed."""
    r = Reader(data)
    auth = r.sb()
    service_sig = None
    if params.service_auth and auth:
        service_sig = r.maybe(lambda rr: rr.sb())
        if service_sig is not None and len(service_sig) != ED25519_SIG_SIZE:
            raise ParseError("service signature must be an Ed25519 signature")
    if params.implied_session:
        session_id = params.session_id
        authorized = sb(params.session_id) + memoryview(r.data)[r.pos :]  # one copy of ~16 KB
    else:
        authorized = r.data[r.pos :]
        session_id = r.sb()
    corr_id = r.sb()
    entity_id = r.sb()
    command = r.tail()
    return Transmission(auth, service_sig, session_id, corr_id, entity_id, command, authorized)


# ---------------------------------------------------------------- batches


@attrs.frozen
class TooLarge:
    """A transmission that does not fit in one block (``TELargeMsg`` for that item only)."""

    index: int


@attrs.frozen
class Batch:
    """One block payload and the indices of the transmissions it carries."""

    payload: bytes
    indices: tuple[int, ...]


def batch_transmissions(transmissions: Sequence[bytes], block_size: int = SMP_BLOCK_SIZE) -> list[Batch | TooLarge]:
    """Pack encoded transmissions into block payloads exactly like ``batchTransmissions_``.

    The reference folds from the *last* transmission backwards, so the first block is the
    partial one (smp.md §3.6). Results come back in transmission order.
    """
    budget = block_size - BATCH_OVERHEAD
    if len(transmissions) == 1 and len(transmissions[0]) <= min(0xFFFF, budget - 2):  # the usual single reply
        t = transmissions[0]
        return [Batch(b"".join((b"\x01", len(t).to_bytes(2, "big"), t)), (0,))]
    out: list[Batch | TooLarge] = []  # built in reverse, reversed at the end
    cur: list[bytes] = []
    cur_idx: list[int] = []
    cur_len = 0

    def close() -> None:
        nonlocal cur, cur_idx, cur_len
        if cur:
            cur.reverse()
            cur_idx.reverse()
            out.append(Batch(bytes((len(cur),)) + b"".join(cur), tuple(cur_idx)))
        cur, cur_idx, cur_len = [], [], 0

    for i in range(len(transmissions) - 1, -1, -1):
        item = lg(transmissions[i]) if len(transmissions[i]) <= 0xFFFF else None
        if item is None or len(item) > budget:
            close()
            out.append(TooLarge(i))
            continue
        if cur_len + len(item) <= budget and len(cur) < MAX_BATCH_ITEMS:
            cur.append(item)
            cur_idx.append(i)
            cur_len += len(item)
        else:
            close()
            cur, cur_idx, cur_len = [item], [i], len(item)
    close()
    out.reverse()
    return out


def encode_batch1(transmission: bytes) -> bytes:
    """``tEncodeBatch1``: ``01 ‖ lg(t)``."""
    return b"\x01" + lg(transmission)


def parse_batch(payload: bytes) -> list[bytes]:
    """Split a block payload into transmissions; it must parse exactly (``tParse``)."""
    if (
        type(payload) is bytes
        and len(payload) >= 3
        and payload[0] == 1
        and int.from_bytes(payload[1:3], "big") == len(payload) - 3
    ):
        return [payload[3:]]  # one transmission, exactly (the common case)
    r = Reader(payload)
    n = r.byte()
    if n == 0:
        raise ParseError("empty batch")
    items = [r.lg() for _ in range(n)]
    r.end()
    return items


# ---------------------------------------------------------------- blocks


def pad_block(payload: bytes, block_size: int = SMP_BLOCK_SIZE) -> bytes:
    """Unencrypted block: ``w16(len) ‖ payload ‖ '#'…`` (smp.md §3.1)."""
    if len(payload) > block_size - 2:
        raise LocalProtocolError("payload does not fit in a block")
    return _pad(payload, block_size)


def _pad(message: bytes, padded_len: int) -> bytes:
    """:func:`~sansio_smp.encoding.pad` with one copy of the message (blocks are 16 KB)."""
    n = len(message)
    if n > 65533 or n + 2 > padded_len:
        raise LocalProtocolError(f"message of {n} bytes does not fit padded length {padded_len}")
    return b"".join((n.to_bytes(2, "big"), message, b"#" * (padded_len - n - 2)))


def unpad_block(block: bytes) -> bytes:
    return unpad(block)


class BlockCipher:
    """One direction of the block-encryption chain (smp.md §3.5).

    Each call advances the chain key: ``HKDF(ck, "SimpleXSbChain")`` → (ck', key, nonce), then
    the padded block is secretboxed with ``HSalsa20(key, 0¹⁶)`` — tag (16) ‖ ciphertext.
    """

    __slots__ = ("_ck", "block_size")

    def __init__(self, chain_key: bytes, block_size: int = SMP_BLOCK_SIZE) -> None:
        self._ck = chain_key
        self.block_size = block_size

    @classmethod
    def pair(cls, session_id: bytes, dh_secret: bytes, is_router: bool) -> tuple["BlockCipher", "BlockCipher"]:
        """``(sender, receiver)`` for one side: the router sends with ck1, the client with ck2."""
        ck1, ck2 = crypto.sbc_init(session_id, dh_secret)
        snd, rcv = (ck1, ck2) if is_router else (ck2, ck1)
        return cls(snd), cls(rcv)

    def _step(self) -> tuple[bytes, bytes]:
        self._ck, key, nonce = crypto.sbc_step(self._ck)
        return crypto.box_key(key), nonce

    def encrypt(self, payload: bytes) -> bytes:
        key, nonce = self._step()
        return crypto.secretbox_seal(key, nonce, _pad(payload, self.block_size - crypto.TAG_SIZE))

    def decrypt(self, block: bytes) -> bytes:
        """Decrypt one block to its payload; :class:`CryptoError` if tampered."""
        if len(block) != self.block_size:
            raise ParseError("wrong block size")
        key, nonce = self._step()
        return unpad(crypto.secretbox_open(key, nonce, block))


def encode_blocks(
    transmissions: Iterable[bytes], cipher: BlockCipher | None, block_size: int = SMP_BLOCK_SIZE
) -> tuple[list[bytes], list[int]]:
    """Batch, pad and (optionally) encrypt transmissions → ``(blocks, indices too large)``."""
    blocks: list[bytes] = []
    too_large: list[int] = []
    for b in batch_transmissions(list(transmissions), block_size):
        if isinstance(b, TooLarge):
            too_large.append(b.index)
        else:
            blocks.append(cipher.encrypt(b.payload) if cipher else pad_block(b.payload, block_size))
    return blocks, too_large


__all__ = [
    "AUTHENTICATOR_SIZE",
    "BATCH_OVERHEAD",
    "Batch",
    "BlockCipher",
    "CryptoError",
    "SMP_BLOCK_SIZE",
    "TooLarge",
    "Transmission",
    "TransmissionParams",
    "authorized_bytes",
    "batch_transmissions",
    "encode_batch1",
    "encode_blocks",
    "encode_transmission",
    "pad_block",
    "parse_batch",
    "parse_transmission",
    "unpad_block",
]
