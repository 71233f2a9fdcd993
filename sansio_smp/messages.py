"""Message bodies inside MSG, NMSG and SEND (smp.md §5.3, §5.4, §5.5).

* Router → recipient (§5.3): the router encrypts :class:`RcvMsgBody` / :class:`RcvMsgQuota` under the
  queue's DH secret with nonce ``cbNonce(msgId)``, padded to 16106, so ``MSG`` always carries 16122 bytes.
* Notification metadata (§5.5): :class:`NMsgMeta` ``sb(msgId) ‖ i64(ts)`` padded to 128 → 144 bytes.
* Sender → recipient per-queue e2e envelope (§5.4): :class:`ClientMsgEnvelope` =
  :class:`PubHeader` ‖ nonce(24) ‖ ``cbEncrypt(e2eSecret, nonce, ClientMessage, 15904 | 16000)``.

Pure functions: keys, secrets and nonces are arguments. Decryption raises
:class:`~sansio_smp.errors.CryptoError`, bad plaintext :class:`~sansio_smp.errors.ParseError`.
"""

from __future__ import annotations

from typing import Any, Union

import attrs

from .crypto import AUTH_KEY_ALGORITHMS, KeyAlgorithm, PublicKey, cb_decrypt, cb_encrypt, cb_nonce
from .encoding import Reader, i64, mb, sb, w16
from .errors import LocalProtocolError, ParseError
from .protocol import (
    E2E_ENC_CONFIRMATION_LENGTH,
    E2E_ENC_MESSAGE_LENGTH,
    MAX_MESSAGE_LEN,
    NMSG_META_PADDED_LENGTH,
    NONCE_LENGTH,
    RCV_MSG_PADDED_LENGTH,
)

__all__ = [
    "RcvMsgBody",
    "RcvMsgQuota",
    "encode_rcv_msg_body",
    "parse_rcv_msg_body",
    "encrypt_rcv_msg_body",
    "decrypt_rcv_msg_body",
    "NMsgMeta",
    "encrypt_nmsg_meta",
    "decrypt_nmsg_meta",
    "PubHeader",
    "PHConfirmation",
    "PHEmpty",
    "ClientMessage",
    "ClientMsgEnvelope",
    "e2e_padded_length",
    "encrypt_client_message",
    "decrypt_client_message",
]

QUOTA_TAG = b"QUOTA"


def _int64(_inst: Any, attr: Any, v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or not -(1 << 63) <= v < (1 << 63):
        raise LocalProtocolError(f"{attr.name} must be an Int64")


def _bytes(max_len: int | None) -> Any:
    def check(_inst: Any, attr: Any, v: Any) -> None:
        if not isinstance(v, bytes) or (max_len is not None and len(v) > max_len):
            raise LocalProtocolError(f"{attr.name} must be bytes of at most {max_len}")

    return check


# ---------------------------------------------------------------- router → recipient (§5.3)


@attrs.frozen
class RcvMsgBody:
    """A delivered message: ``i64(ts) ‖ flags ‖ ' ' ‖ body`` (ts in seconds)."""

    ts: int = attrs.field(validator=_int64)
    body: bytes = attrs.field(validator=_bytes(None))
    notification: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))


@attrs.frozen
class RcvMsgQuota:
    """The quota marker the router appends when a queue is full: ``"QUOTA " ‖ i64(ts)``."""

    ts: int = attrs.field(validator=_int64)


RcvMessage = Union[RcvMsgBody, RcvMsgQuota]


def encode_rcv_msg_body(msg: RcvMessage) -> bytes:
    """``encodeRcvMsgBody``: bodies up to ``MaxMessageLen`` (16088), so at most 16104 bytes."""
    if isinstance(msg, RcvMsgQuota):
        return QUOTA_TAG + b" " + i64(msg.ts)
    if isinstance(msg, RcvMsgBody):
        if len(msg.body) > MAX_MESSAGE_LEN:
            raise LocalProtocolError(f"message body over {MAX_MESSAGE_LEN} bytes")
        return i64(msg.ts) + (b"T" if msg.notification else b"F") + b" " + msg.body
    raise LocalProtocolError(f"not a received message body: {msg!r}")


def _msg_body_p(r: Reader) -> RcvMsgBody:
    ts = r.i64()
    notification = r.boolean()
    r.word()  # reserved flag bytes up to the space (MsgFlags smpP)
    r.space()
    return RcvMsgBody(ts, r.tail(), notification)


def parse_rcv_msg_body(data: bytes) -> RcvMessage:
    """``clientRcvMsgBodyP`` (whole input): the quota marker first, else a message."""
    data = bytes(data)
    r = Reader(data)
    if data.startswith(QUOTA_TAG):
        r.pos = len(QUOTA_TAG)
        try:
            r.space()
            ts = r.i64()
        except ParseError:
            r = Reader(data)  # attoparsec backtracks into the message alternative
        else:
            r.end()
            return RcvMsgQuota(ts)
    msg = _msg_body_p(r)
    r.end()
    return msg


def encrypt_rcv_msg_body(dh_secret: bytes, msg_id: bytes, msg: RcvMessage) -> bytes:
    """Router side: ``cbEncrypt(rcvDhSecret, cbNonce(msgId), body, 16106)`` → 16122 bytes."""
    return cb_encrypt(dh_secret, cb_nonce(msg_id), encode_rcv_msg_body(msg), RCV_MSG_PADDED_LENGTH)


def decrypt_rcv_msg_body(dh_secret: bytes, msg_id: bytes, enc_body: bytes) -> RcvMessage:
    """Recipient side: open and parse a ``MSG`` body (CryptoError / ParseError)."""
    return parse_rcv_msg_body(cb_decrypt(dh_secret, cb_nonce(msg_id), enc_body))


# ---------------------------------------------------------------- notification metadata (§5.5)


@attrs.frozen
class NMsgMeta:
    """``NMsgMeta``: ``sb(msgId) ‖ i64(ts)``; the parser ignores trailing extension bytes."""

    msg_id: bytes = attrs.field(validator=_bytes(255))
    ts: int = attrs.field(validator=_int64)

    def encode(self) -> bytes:
        return sb(self.msg_id) + i64(self.ts)

    @staticmethod
    def decode(data: bytes) -> "NMsgMeta":
        r = Reader(data)
        return NMsgMeta(r.sb(), r.i64())


def encrypt_nmsg_meta(ntf_dh_secret: bytes, nonce: bytes, meta: NMsgMeta) -> bytes:
    """Router side of ``NMSG``: ``cbEncrypt(rcvNtfDhSecret, nonce, meta, 128)`` → 144 bytes."""
    _check_nonce(nonce)
    return cb_encrypt(ntf_dh_secret, nonce, meta.encode(), NMSG_META_PADDED_LENGTH)


def decrypt_nmsg_meta(ntf_dh_secret: bytes, nonce: bytes, enc_meta: bytes) -> NMsgMeta:
    _check_nonce(nonce)
    return NMsgMeta.decode(cb_decrypt(ntf_dh_secret, nonce, enc_meta))


def _check_nonce(nonce: bytes) -> None:
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_LENGTH:
        raise LocalProtocolError(f"nonce must be {NONCE_LENGTH} bytes")


# ---------------------------------------------------------------- sender → recipient e2e (§5.4)


def _opt_x25519(_inst: Any, attr: Any, key: Any) -> None:
    if key is not None and (not isinstance(key, PublicKey) or key.alg is not KeyAlgorithm.X25519):
        raise LocalProtocolError(f"{attr.name} must be an X25519 public key or None")


def _parse_x25519(r: Reader) -> PublicKey:
    key = PublicKey.parse(r)
    if key.alg is not KeyAlgorithm.X25519:
        raise ParseError("expected an X25519 key")
    return key


@attrs.frozen
class PubHeader:
    """``PubHeader``: SMP client version and, in the confirmation only, the sender's e2e X25519 key."""

    version: int = attrs.field()
    e2e_dh_key: PublicKey | None = attrs.field(default=None, validator=_opt_x25519)

    @version.validator
    def _v(self, _attr: Any, v: Any) -> None:
        if not isinstance(v, int) or not 0 <= v <= 0xFFFF:
            raise LocalProtocolError("PubHeader version must be a Word16")

    def encode(self) -> bytes:
        return w16(self.version) + mb(None if self.e2e_dh_key is None else self.e2e_dh_key.encode())

    @staticmethod
    def parse(r: Reader) -> "PubHeader":
        return PubHeader(r.w16(), r.maybe(_parse_x25519))


def _nonce_field(_inst: Any, attr: Any, v: Any) -> None:
    if not isinstance(v, bytes) or len(v) != NONCE_LENGTH:
        raise LocalProtocolError(f"{attr.name} must be {NONCE_LENGTH} bytes")


@attrs.frozen
class ClientMsgEnvelope:
    """``ClientMsgEnvelope``: ``PubHeader ‖ nonce(24) ‖ tail(encBody)`` — what ``SEND`` carries."""

    header: PubHeader
    nonce: bytes = attrs.field(validator=_nonce_field)
    enc_body: bytes = attrs.field(validator=_bytes(None))

    def encode(self) -> bytes:
        return self.header.encode() + self.nonce + self.enc_body

    @staticmethod
    def decode(data: bytes) -> "ClientMsgEnvelope":
        r = Reader(data)
        header = PubHeader.parse(r)
        nonce = r.take(NONCE_LENGTH)
        return ClientMsgEnvelope(header, nonce, r.tail())


def _auth_key(_inst: Any, attr: Any, key: Any) -> None:
    if not isinstance(key, PublicKey) or key.alg not in AUTH_KEY_ALGORITHMS:
        raise LocalProtocolError(f"{attr.name} must be an Ed25519/Ed448/X25519 public key")


@attrs.frozen
class PHConfirmation:
    """``PrivHeader`` ``'K' key``: the confirmation carries the sender's auth key (for KEY)."""

    sender_key: PublicKey = attrs.field(validator=_auth_key)

    def encode(self) -> bytes:
        return b"K" + self.sender_key.encode()


@attrs.frozen
class PHEmpty:
    """``PrivHeader`` ``'_'``."""

    def encode(self) -> bytes:
        return b"_"


PrivHeader = Union[PHConfirmation, PHEmpty]


@attrs.frozen
class ClientMessage:
    """``ClientMessage``: ``PrivHeader ‖ body`` (the body is the agent's envelope)."""

    priv_header: PrivHeader = attrs.field(validator=attrs.validators.instance_of((PHConfirmation, PHEmpty)))
    body: bytes = attrs.field(validator=_bytes(None))

    def encode(self) -> bytes:
        return self.priv_header.encode() + self.body

    @staticmethod
    def decode(data: bytes) -> "ClientMessage":
        r = Reader(data)
        c = r.byte()
        header: PrivHeader
        if c == 0x4B:  # 'K'
            key = PublicKey.parse(r)
            if key.alg not in AUTH_KEY_ALGORITHMS:
                raise ParseError("PrivHeader key is not an authorization key")
            header = PHConfirmation(key)
        elif c == 0x5F:  # '_'
            header = PHEmpty()
        else:
            raise ParseError("invalid PrivHeader")
        return ClientMessage(header, r.tail())


def e2e_padded_length(header: PubHeader) -> int:
    """15904 when the PubHeader carries the sender's key (confirmation), else 16000 (``agentCbEncrypt``)."""
    return E2E_ENC_CONFIRMATION_LENGTH if header.e2e_dh_key is not None else E2E_ENC_MESSAGE_LENGTH


def encrypt_client_message(
    e2e_secret: bytes, header: PubHeader, nonce: bytes, message: ClientMessage
) -> ClientMsgEnvelope:
    """``agentCbEncrypt``: encrypt ``message`` padded per :func:`e2e_padded_length`."""
    _check_nonce(nonce)
    enc = cb_encrypt(e2e_secret, nonce, message.encode(), e2e_padded_length(header))
    return ClientMsgEnvelope(header, nonce, enc)


def decrypt_client_message(e2e_secret: bytes, envelope: ClientMsgEnvelope) -> ClientMessage:
    """``agentCbDecrypt`` + ``ClientMessage`` parse (CryptoError / ParseError)."""
    return ClientMessage.decode(cb_decrypt(e2e_secret, envelope.nonce, envelope.enc_body))
