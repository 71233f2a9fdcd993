"""The PQ double ratchet with header encryption (agent-crypto.md §5; reference/pqdr.md).

A pure port of ``Simplex.Messaging.Crypto.Ratchet`` (simplexmq 6.5.5): X3DH over X448 with an
optional sntrup761 secret (:func:`pq_x3dh_snd` / :func:`pq_x3dh_rcv`), ratchet initialisation for
both roles, header encryption at enqueue time (:func:`encrypt_header`), body encryption at delivery
(:func:`encrypt_message`) and decryption with skipped-message keys (:func:`decrypt`).

Values are immutable; every step returns a new :class:`Ratchet`. Randomness comes from an injected
``random_bytes(n)``; sntrup761 is ``agent.sntrup761`` (imported on first use). A DH ratchet step
draws, in order: KEM encapsulation, KEM key pair, then 56 bytes for the new X448 private key.

Errors follow the reference. Some are *thrown* (``throwE``; the caller keeps its old state):
header parse errors, undecryptable headers, KEM state errors, key-skipping errors on ``PN``.
Others are *returned* with an advanced state that the agent persists (§5.5 step 8, §9.8):
``Ns`` skipping errors (earlier, duplicate, too many skipped) and body decryption failures.
:func:`decrypt` raises the first kind and returns the second in :class:`DecryptResult`;
:class:`RatchetState` (ratchet + skipped keys) wraps both into "raise, with ``error.state`` =
the state to persist".
"""

from __future__ import annotations

from typing import Callable, Mapping, Union

import attrs

from sansio_smp.crypto import (
    KEY_SIZE,
    KeyAlgorithm,
    PrivateKey,
    PublicKey,
    aes_gcm_decrypt,
    aes_gcm_encrypt,
    hkdf_sha512,
    sha256,
)
from sansio_smp.encoding import (
    Reader,
    boolean,
    lg,
    mb,
    pad,
    parse_all,
    sb,
    unpad,
    w16,
    w32,
)
from sansio_smp.errors import CryptoError, LocalProtocolError, ParseError

from .e2e_params import (
    CURRENT_E2E_VERSION,
    PQ_RATCHET_E2E_VERSION,
    E2ERatchetParams,
    KEMAccepted,
    KEMKeyPair,
    KEMProposed,
    PrivKEMAccepted,
    PrivKEMParams,
    PrivKEMProposed,
    RKEMParams,
    _kem_ct,
    _kem_pk,
    _kem_ss,
    _sntrup761,
    parse_rkem_params,
)

RandomBytes = Callable[[int], bytes]

MAX_SKIP = 512  # per skip call (§5.6)
HEADER_PADDED_LEN = 88
HEADER_PADDED_LEN_PQ = 2310
IV_SIZE = 16
AUTH_TAG_SIZE = 16
_W32 = 0xFFFFFFFF

# ================================================================ errors (Crypto.hs ``CryptoError``)


class RatchetError(CryptoError):
    """A ratchet failure; ``reference`` is the reference's ``CryptoError`` constructor.

    ``state`` is set by :meth:`RatchetState.decrypt` to the state the agent must persist (the old
    one when the reference throws, the advanced one when it returns the error with a state).
    """

    reference = "CryptoError"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.reference)
        self.state: RatchetState | None = None


class RatchetHeaderError(RatchetError):
    """No header key opens the header (``CERatchetHeader``)."""

    reference = "CERatchetHeader"


class RatchetParseError(RatchetError, ParseError):
    """Malformed message or header bytes (``CryptoHeaderError``)."""

    reference = "CryptoHeaderError"


class RatchetEarlierMessage(RatchetError):
    """A message number below the next expected one (``CERatchetEarlierMessage n``)."""

    reference = "CERatchetEarlierMessage"

    def __init__(self, count: int) -> None:
        super().__init__(f"CERatchetEarlierMessage {count}")
        self.count = count


class RatchetDuplicateMessage(RatchetError):
    """The message just before the next expected one (``CERatchetDuplicateMessage``)."""

    reference = "CERatchetDuplicateMessage"


class RatchetTooManySkipped(RatchetError):
    """More than 512 messages would be skipped (``CERatchetTooManySkipped n``)."""

    reference = "CERatchetTooManySkipped"

    def __init__(self, count: int) -> None:
        super().__init__(f"CERatchetTooManySkipped {count}")
        self.count = count


class RatchetStateError(RatchetError):
    """No sending (or receiving) chain in the state (``CERatchetState``)."""

    reference = "CERatchetState"


class RatchetKEMStateError(RatchetError):
    """A KEM ciphertext without an own KEM key (``CERatchetKEMState``)."""

    reference = "CERatchetKEMState"


class RatchetDHError(RatchetError):
    """An X448/X25519 agreement gave the all-zero secret (a low-order peer key).

    The reference does not check and carries on with a zero secret; we refuse, and the state
    is left unchanged. Only a peer that holds the header key can send such a key.
    """

    reference = "DH (all-zero shared secret)"


class AEADDecryptError(RatchetError):
    """The body's AES-GCM tag did not verify (``AESDecryptError``)."""

    reference = "AESDecryptError"


class InvalidPaddingError(RatchetError):
    """The decrypted body's length prefix exceeds it (``CryptoInvalidMsgError``)."""

    reference = "CryptoInvalidMsgError"


class MessageTooLargeError(LocalProtocolError):
    """The plaintext does not fit the padded length (``CryptoLargeMsgError``, agent ``CMD LARGE``)."""

    reference = "CryptoLargeMsgError"


# ================================================================ KDFs (§5.1)


def hkdf3(salt: bytes, ikm: bytes, info: bytes) -> tuple[bytes, bytes, bytes]:
    out = hkdf_sha512(salt, ikm, info, 96)
    return out[:32], out[32:64], out[64:]


def _dh(own: PrivateKey, peer: PublicKey) -> bytes:
    try:
        return own.dh(peer)
    except CryptoError as e:
        raise RatchetDHError(str(e)) from e


def root_kdf(rk: bytes, peer: PublicKey, own: PrivateKey, kem_ss: bytes | None) -> tuple[bytes, bytes, bytes]:
    """``rootKdf`` → ``(rk', ck, nhk)``."""
    ikm = _dh(own, peer) + (kem_ss or b"")
    return hkdf3(rk, ikm, b"SimpleXRootRatchet")


def chain_kdf(ck: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """``chainKdf`` → ``(ck', mk, iv_msg, iv_hdr)``."""
    ck2, mk, ivs = hkdf3(b"", ck, b"SimpleXChainRatchet")
    return ck2, mk, ivs[:16], ivs[16:]


# ================================================================ X3DH (§5.2)


@attrs.frozen
class RatchetKEMAccepted:
    """``RatchetKEMAccepted``: the peer's KEM key, the secret sent to it and its ciphertext."""

    peer_public_key: bytes = attrs.field(converter=bytes, repr=False)
    shared_key: bytes = attrs.field(converter=bytes, repr=False)
    ciphertext: bytes = attrs.field(converter=bytes, repr=False)


@attrs.frozen
class RatchetKEM:
    """``RatchetKEM``: own KEM pair, and the accepted state (header ``A``) or ``None`` (header ``P``)."""

    keypair: KEMKeyPair
    accepted: RatchetKEMAccepted | None = None


@attrs.frozen
class RatchetInitParams:
    """``RatchetInitParams``: the X3DH result."""

    assoc_data: bytes = attrs.field(converter=bytes)
    ratchet_key: bytes = attrs.field(converter=bytes, repr=False)
    snd_hk: bytes = attrs.field(converter=bytes, repr=False)
    rcv_next_hk: bytes = attrs.field(converter=bytes, repr=False)
    kem_accepted: RatchetKEMAccepted | None = None

    @property
    def assoc_data_hash(self) -> bytes:
        """``getConnectionRatchetAdHash``: SHA-256 of the associated data (§7.5)."""
        return sha256(self.assoc_data)


def _pq_x3dh(
    joiner_key1: PublicKey, initiator_key1: PublicKey, dh1: bytes, dh2: bytes, dh3: bytes,
    kem: RatchetKEMAccepted | None,
) -> RatchetInitParams:
    ikm = dh1 + dh2 + dh3 + (kem.shared_key if kem is not None else b"")
    hk, nhk, sk = hkdf3(bytes(64), ikm, b"SimpleXX3DH")
    return RatchetInitParams(joiner_key1.raw + initiator_key1.raw, sk, hk, nhk, kem)


def pq_x3dh_snd(
    spk1: PrivateKey, spk2: PrivateKey, own_kem: PrivKEMParams | None, invitation: E2ERatchetParams
) -> tuple[RatchetInitParams, KEMKeyPair | None]:
    """``pqX3dhSnd`` (joiner): own keys ``spk1, spk2`` against the invitation's ``I1, I2``."""
    rk1, rk2 = invitation.key1, invitation.key2
    pair: KEMKeyPair | None = None
    accepted: RatchetKEMAccepted | None = None
    if own_kem is not None and invitation.version >= PQ_RATCHET_E2E_VERSION:
        if isinstance(own_kem, PrivKEMAccepted) and isinstance(invitation.kem, KEMProposed):
            pair = own_kem.keypair
            accepted = RatchetKEMAccepted(invitation.kem.public_key, own_kem.shared_key, own_kem.ciphertext)
        elif isinstance(own_kem, PrivKEMProposed):
            pair = own_kem.keypair  # a proposal in reply (also in renegotiation)
        else:
            raise RatchetKEMStateError()
    if isinstance(invitation.kem, KEMAccepted):
        raise RatchetKEMStateError("an invitation cannot carry a KEM ciphertext")
    params = _pq_x3dh(spk1.public(), rk1, _dh(spk2, rk1), _dh(spk1, rk2), _dh(spk2, rk2), accepted)
    return params, pair


def pq_x3dh_rcv(
    rpk1: PrivateKey, rpk2: PrivateKey, own_kem: PrivKEMProposed | None, reply: E2ERatchetParams
) -> tuple[RatchetInitParams, KEMKeyPair | None]:
    """``pqX3dhRcv`` (initiator): own invitation keys against the joiner's reply ``J1, J2``."""
    sk1, sk2 = reply.key1, reply.key2
    pair: KEMKeyPair | None = None
    accepted: RatchetKEMAccepted | None = None
    if isinstance(reply.kem, KEMAccepted) and reply.version >= PQ_RATCHET_E2E_VERSION:
        if own_kem is None:
            raise RatchetKEMStateError("KEM accepted without a proposal")
        ss = _sntrup761().decapsulate(reply.kem.ciphertext, own_kem.keypair.secret_key)
        pair = own_kem.keypair
        accepted = RatchetKEMAccepted(reply.kem.public_key, ss, reply.kem.ciphertext)
    params = _pq_x3dh(sk1, rpk1.public(), _dh(rpk1, sk2), _dh(rpk2, sk1), _dh(rpk2, sk2), accepted)
    return params, pair


# ================================================================ state


@attrs.frozen
class RatchetVersions:
    """``RatchetVersions``: the negotiated ``current`` and our ``max_supported`` E2E versions."""

    current: int
    max_supported: int


@attrs.frozen
class SndRatchet:
    """``SndRatchet``: the peer's ratchet key, sending chain key and header key."""

    dhrr: PublicKey
    ck: bytes = attrs.field(converter=bytes, repr=False)
    hk: bytes = attrs.field(converter=bytes, repr=False)


@attrs.frozen
class RcvRatchet:
    """``RcvRatchet``: receiving chain key and header key."""

    ck: bytes = attrs.field(converter=bytes, repr=False)
    hk: bytes = attrs.field(converter=bytes, repr=False)


@attrs.frozen
class Ratchet:
    """The reference's ``Ratchet`` record (field names without the ``rc`` prefix)."""

    version: RatchetVersions
    ad: bytes = attrs.field(converter=bytes)
    dhrs: PrivateKey = attrs.field(repr=False)
    kem: RatchetKEM | None
    support_kem: bool  # header padded to 2310 (v3); only ever switches on
    enable_kem: bool  # use KEM in the next DH steps
    snd_kem: bool  # the current sending chain has a KEM secret
    rcv_kem: bool  # the current receiving chain has a KEM secret
    rk: bytes = attrs.field(converter=bytes, repr=False)
    snd: SndRatchet | None
    rcv: RcvRatchet | None
    ns: int
    nr: int
    pn: int
    nhks: bytes = attrs.field(converter=bytes, repr=False)
    nhkr: bytes = attrs.field(converter=bytes, repr=False)

    @property
    def assoc_data_hash(self) -> bytes:
        return sha256(self.ad)

    def to_bytes(self) -> bytes:
        return _RATCHET_FORMAT + _encode_ratchet(self)

    @staticmethod
    def from_bytes(data: bytes) -> "Ratchet":
        def p(r: Reader) -> Ratchet:
            if r.byte() != _RATCHET_FORMAT[0]:
                raise ParseError("unknown ratchet serialisation version")
            return _parse_ratchet(r)

        return parse_all(data, p)


def pq_enable_support(version: int, support: bool, enable: bool) -> bool:
    """``pqEnableSupport``: support switches on with encryption at v ≥ 3, never off."""
    return support or (version >= PQ_RATCHET_E2E_VERSION and enable)


def init_snd_ratchet(
    versions: RatchetVersions,
    peer_dhrr: PublicKey,
    own_dhrs: PrivateKey,
    init: RatchetInitParams,
    kem_keypair: KEMKeyPair | None = None,
) -> Ratchet:
    """``initSndRatchet`` (joiner): ``own_dhrs`` is a fresh key pair, ``peer_dhrr`` the invitation's I2 (§5.3)."""
    kem_ss = init.kem_accepted.shared_key if init.kem_accepted else None
    rk, cks, nhks = root_kdf(init.ratchet_key, peer_dhrr, own_dhrs, kem_ss)
    pq_on = kem_keypair is not None
    return Ratchet(
        version=versions,
        ad=init.assoc_data,
        dhrs=own_dhrs,
        kem=RatchetKEM(kem_keypair, init.kem_accepted) if kem_keypair is not None else None,
        support_kem=pq_on,
        enable_kem=pq_on,
        snd_kem=init.kem_accepted is not None,
        rcv_kem=False,
        rk=rk,
        snd=SndRatchet(peer_dhrr, cks, init.snd_hk),
        rcv=None,
        ns=0,
        nr=0,
        pn=0,
        nhks=nhks,
        nhkr=init.rcv_next_hk,
    )


def init_rcv_ratchet(
    versions: RatchetVersions,
    own_dhrs: PrivateKey,
    init: RatchetInitParams,
    kem_keypair: KEMKeyPair | None,
    pq_support: bool,
) -> Ratchet:
    """``initRcvRatchet`` (initiator): ``own_dhrs`` is the invitation's second private key (§5.3)."""
    return Ratchet(
        version=versions,
        ad=init.assoc_data,
        dhrs=own_dhrs,
        kem=RatchetKEM(kem_keypair, init.kem_accepted) if kem_keypair is not None else None,
        support_kem=pq_support,
        enable_kem=pq_support,
        snd_kem=False,
        rcv_kem=False,
        rk=init.ratchet_key,
        snd=None,
        rcv=None,
        ns=0,
        nr=0,
        pn=0,
        nhks=init.rcv_next_hk,
        nhkr=init.snd_hk,
    )


# ================================================================ wire formats (§5.4)


@attrs.frozen
class MsgHeader:
    """``MsgHeader``: the encrypted header's plaintext."""

    max_version: int
    dhrs: PublicKey
    kem: RKEMParams | None
    pn: int
    ns: int

    def encode(self, version: int) -> bytes:
        """``encodeMsgHeader`` at the ratchet's current version (KEM field only at v ≥ 3)."""
        out = w16(self.max_version) + self.dhrs.encode()
        if version >= PQ_RATCHET_E2E_VERSION:
            out += mb(None if self.kem is None else self.kem.encode())
        return out + w32(self.pn) + w32(self.ns)

    @staticmethod
    def parse(r: Reader, version: int, alg: KeyAlgorithm | None = KeyAlgorithm.X448) -> "MsgHeader":
        """``msgHeaderP`` at the version of the enclosing ``EncMessageHeader``; ``alg`` is the
        ratchet's key algorithm (``None``: X25519 or X448)."""
        max_version = r.w16()
        dhrs = PublicKey.parse(r)
        if dhrs.alg not in (KeyAlgorithm.X25519, KeyAlgorithm.X448) or (alg is not None and dhrs.alg != alg):
            raise ParseError(f"unexpected ratchet key algorithm {dhrs.alg.value}")
        kem = r.maybe(parse_rkem_params) if version >= PQ_RATCHET_E2E_VERSION else None
        return MsgHeader(max_version, dhrs, kem, r.w32(), r.w32())


def parse_msg_header(data: bytes, version: int, alg: KeyAlgorithm | None = KeyAlgorithm.X448) -> MsgHeader:
    """Decode a header plaintext; trailing bytes are ignored as by ``parseE'`` in ``decryptHeader``."""
    return MsgHeader.parse(Reader(data), version, alg)


def encode_large(version: int, data: bytes) -> bytes:
    """``encodeLarge``: ``s2`` from v3, ``s1`` before."""
    return lg(data) if version >= PQ_RATCHET_E2E_VERSION else sb(data)


def parse_large(r: Reader) -> bytes:
    """``largeP``: a first length byte below 32 means a 2-byte length."""
    first = r.peek()
    if first is None:
        raise ParseError("unexpected end of input")
    return r.lg() if first < 32 else r.sb()


@attrs.frozen
class EncMessageHeader:
    """``EncMessageHeader``: ``u16 version ‖ iv(16) ‖ tag(16) ‖ encLarge(ciphertext)``."""

    version: int
    iv: bytes = attrs.field(converter=bytes)
    tag: bytes = attrs.field(converter=bytes)
    body: bytes = attrs.field(converter=bytes)

    def encode(self) -> bytes:
        return w16(self.version) + self.iv + self.tag + encode_large(self.version, self.body)

    @staticmethod
    def decode(data: bytes) -> "EncMessageHeader":
        def p(r: Reader) -> EncMessageHeader:
            return EncMessageHeader(r.w16(), r.take(IV_SIZE), r.take(AUTH_TAG_SIZE), parse_large(r))

        return parse_all(data, p)


@attrs.frozen
class EncRatchetMessage:
    """``EncRatchetMessage``: ``encLarge(EncMessageHeader) ‖ tag(16) ‖ tail(body)``."""

    header: bytes = attrs.field(converter=bytes)
    tag: bytes = attrs.field(converter=bytes)
    body: bytes = attrs.field(converter=bytes)

    def encode(self, version: int) -> bytes:
        return encode_large(version, self.header) + self.tag + self.body

    @staticmethod
    def decode(data: bytes) -> "EncRatchetMessage":
        def p(r: Reader) -> EncRatchetMessage:
            return EncRatchetMessage(parse_large(r), r.take(AUTH_TAG_SIZE), r.tail())

        return parse_all(data, p)


def padded_header_len(version: int, support_kem: bool) -> int:
    """``paddedHeaderLen``: 2310 with PQ support at v ≥ 3, else 88."""
    return HEADER_PADDED_LEN_PQ if support_kem and version >= PQ_RATCHET_E2E_VERSION else HEADER_PADDED_LEN


def full_header_len(version: int, support_kem: bool) -> int:
    """``fullHeaderLen``: the encoded ``EncMessageHeader`` size with a 1-byte body length."""
    return 2 + 1 + padded_header_len(version, support_kem) + AUTH_TAG_SIZE + IV_SIZE


def encrypted_message_len(version: int, support_kem: bool, padded_msg_len: int) -> int:
    """Length of the wire message for a body padded to ``padded_msg_len`` (§3.1 size arithmetic)."""
    prefix = 3 if version >= PQ_RATCHET_E2E_VERSION else 1
    return prefix + full_header_len(version, support_kem) + AUTH_TAG_SIZE + padded_msg_len


PQDR_SMP_AGENT_VERSION = 5  # agent version from which PQ sizes apply (§1.1)


def e2e_enc_agent_msg_length(agent_version: int, pq_support: bool) -> int:
    """``e2eEncAgentMsgLength``: the padded body of an agent message (§3.1 L4).

    13618 = 15840 − 2222 (the larger header), so PQ and non-PQ v3 wire messages are equally long."""
    return 13618 if pq_support and agent_version >= PQDR_SMP_AGENT_VERSION else 15840


def e2e_enc_conn_info_length(agent_version: int, pq_support: bool) -> int:
    """``e2eEncConnInfoLength``: the padded body of a confirmation (§3.1 L4); 11106 leaves room for
    the KEM key and ciphertext in the reply."""
    return 11106 if pq_support and agent_version >= PQDR_SMP_AGENT_VERSION else 14832


def can_pad(msg_len: int, padded_len: int) -> bool:
    """``canPad`` / ``rcCheckCanPad``."""
    return msg_len <= 65533 and padded_len - msg_len - 2 >= 0


def _encrypt_aead(key: bytes, iv: bytes, padded_len: int, ad: bytes, msg: bytes) -> tuple[bytes, bytes]:
    """``encryptAEAD``: pad, then AES-256-GCM → ``(tag, ciphertext)``."""
    if not can_pad(len(msg), padded_len):
        raise MessageTooLargeError(f"{len(msg)} bytes do not fit the padded length {padded_len}")
    return aes_gcm_encrypt(key, iv, ad, pad(msg, padded_len))


# ================================================================ encrypting (§5.4, §5.9)


@attrs.frozen
class MessageKey:
    """``MessageKey``: a message key and body IV.

    Encoded ``s1(mk) ‖ s1(iv)``: ``instance Encoding MessageKey`` encodes the pair of unwrapped
    ByteStrings (the dossier's §5.6/§5.9 ``iv(16)`` without a length byte is not what the code does).
    """

    mk: bytes = attrs.field(converter=bytes, repr=False)
    iv: bytes = attrs.field(converter=bytes, repr=False)

    def encode(self) -> bytes:
        return sb(self.mk) + sb(self.iv)

    @staticmethod
    def parse(r: Reader) -> "MessageKey":
        mk = r.sb()
        iv = r.sb()
        if len(mk) != 32 or len(iv) != IV_SIZE:
            raise ParseError("message key must be 32 bytes and its IV 16")
        return MessageKey(mk, iv)


@attrs.frozen
class MsgEncryptKey:
    """``MsgEncryptKey``: what enqueue-time header encryption leaves for delivery-time body encryption.

    Stored by the agent as ``u16 v ‖ s1(AD) ‖ s1(mk) ‖ s1(iv) ‖ s2(encHeader)`` (§5.9, ``MessageKey``).
    """

    version: int
    key: MessageKey
    ad: bytes = attrs.field(converter=bytes)
    enc_header: bytes = attrs.field(converter=bytes)

    def encode(self) -> bytes:
        return w16(self.version) + sb(self.ad) + self.key.encode() + lg(self.enc_header)

    @staticmethod
    def decode(data: bytes) -> "MsgEncryptKey":
        def p(r: Reader) -> MsgEncryptKey:
            v = r.w16()
            ad = r.sb()
            key = MessageKey.parse(r)
            return MsgEncryptKey(v, key, ad, r.lg())

        return parse_all(data, p)


def encrypt_header(
    rc: Ratchet, pq_enc: bool | None = None, supported_version: int = CURRENT_E2E_VERSION
) -> tuple[MsgEncryptKey, Ratchet]:
    """``rcEncryptHeader``: one chain step and the encrypted header; ``pq_enc`` is ``pqEnc_``.

    ``supported_version`` is the agent's maximum E2E version (``msgMaxVersion`` is at least it).
    """
    if rc.snd is None:
        raise RatchetStateError("no sending chain")
    snd = rc.snd
    ck2, mk, iv, eh_iv = chain_kdf(snd.ck)
    v = rc.version.current
    enable = rc.enable_kem if pq_enc is None else pq_enc
    support = pq_enable_support(v, rc.support_kem, enable)
    max_supported = max(supported_version, PQ_RATCHET_E2E_VERSION if pq_enc is True else v)
    kem_params: RKEMParams | None = None
    if rc.kem is not None:
        pk = rc.kem.keypair.public_key
        acc = rc.kem.accepted
        kem_params = KEMProposed(pk) if acc is None else KEMAccepted(acc.ciphertext, pk)
    header = MsgHeader(max_supported, rc.dhrs.public(), kem_params, rc.pn, rc.ns).encode(v)
    tag, body = _encrypt_aead(snd.hk, eh_iv, padded_header_len(v, support), rc.ad, header)
    enc_header = EncMessageHeader(v, eh_iv, tag, body).encode()
    kem = rc.kem
    if pq_enc is False and kem is not None:
        kem = attrs.evolve(kem, accepted=None)
    rc2 = attrs.evolve(
        rc,
        snd=attrs.evolve(snd, ck=ck2),
        ns=(rc.ns + 1) & _W32,
        support_kem=support,
        enable_kem=enable,
        version=attrs.evolve(rc.version, max_supported=max_supported),
        kem=kem,
    )
    return MsgEncryptKey(v, MessageKey(mk, iv), rc.ad, enc_header), rc2


def encrypt_message(key: MsgEncryptKey, padded_len: int, msg: bytes) -> bytes:
    """``rcEncryptMsg``: the body under the message key; returns the wire ``EncRatchetMessage``."""
    tag, body = _encrypt_aead(key.key.mk, key.key.iv, padded_len, key.ad + key.enc_header, msg)
    return EncRatchetMessage(key.enc_header, tag, body).encode(key.version)


def encrypt(
    rc: Ratchet, msg: bytes, padded_len: int, pq_enc: bool | None = None,
    supported_version: int = CURRENT_E2E_VERSION,
) -> tuple[bytes, Ratchet]:
    """Header then body in one go; the padding is checked before the ratchet advances."""
    if not can_pad(len(msg), padded_len):
        raise MessageTooLargeError(f"{len(msg)} bytes do not fit the padded length {padded_len}")
    key, rc2 = encrypt_header(rc, pq_enc, supported_version)
    return encrypt_message(key, padded_len, msg), rc2


# ================================================================ skipped keys (§5.6)

SkippedMsgKeys = Mapping[bytes, Mapping[int, MessageKey]]


@attrs.frozen
class SMDNoChange:
    """``SMDNoChange``."""


@attrs.frozen
class SMDRemove:
    """``SMDRemove hk n``: a stored key was used."""

    hk: bytes
    n: int


@attrs.frozen
class SMDAdd:
    """``SMDAdd keys``: keys skipped by this message."""

    keys: SkippedMsgKeys


SkippedMsgDiff = Union[SMDNoChange, SMDRemove, SMDAdd]


def apply_skipped_diff(skipped: SkippedMsgKeys, diff: SkippedMsgDiff) -> dict[bytes, dict[int, MessageKey]]:
    """``applySMDiff``: a new mapping; a group left empty is removed."""
    out = {hk: dict(mks) for hk, mks in skipped.items()}
    if isinstance(diff, SMDRemove):
        mks = out.get(diff.hk)
        if mks is not None and diff.n in mks:
            del mks[diff.n]
            if not mks:
                del out[diff.hk]
    elif isinstance(diff, SMDAdd):
        for hk, mks in diff.keys.items():
            out.setdefault(hk, {}).update(mks)  # M.union mks old: the new keys win
    return out


# ================================================================ decrypting (§5.5)


@attrs.frozen
class DecryptResult:
    """``DecryptResult``: plaintext or error, the state to persist and the skipped-keys change."""

    result: Union[bytes, RatchetError]
    ratchet: Ratchet
    skipped_diff: SkippedMsgDiff

    @property
    def ok(self) -> bool:
        return isinstance(self.result, bytes)


def _header_decrypt(rc: Ratchet, hk: bytes, eh: EncMessageHeader) -> MsgHeader:
    """``decryptHeader``: AEAD or padding failure → ``CERatchetHeader``; bad plaintext → parse error."""
    try:
        padded = aes_gcm_decrypt(hk, eh.iv, rc.ad, eh.body, eh.tag)
        header = unpad(padded)
    except (CryptoError, ParseError, LocalProtocolError) as e:
        raise RatchetHeaderError() from e
    try:
        return parse_msg_header(header, eh.version, rc.dhrs.alg)
    except ParseError as e:
        raise RatchetParseError(f"CryptoHeaderError {e}") from e


def _body_decrypt(rc: Ratchet, key: MessageKey, msg: EncRatchetMessage) -> Union[bytes, RatchetError]:
    """``decryptMessage``: the error is returned, not raised."""
    try:
        padded = aes_gcm_decrypt(key.mk, key.iv, rc.ad + msg.header, msg.body, msg.tag)
    except (CryptoError, LocalProtocolError):
        return AEADDecryptError()
    try:
        return unpad(padded)
    except ParseError:
        return InvalidPaddingError()


def _skip_message_keys(until: int, r: Ratchet) -> tuple[Ratchet, dict[bytes, dict[int, MessageKey]]]:
    """``skipMessageKeys``: store keys ``Nr .. until-1`` under the current ``HKr`` (Word32 arithmetic)."""
    if r.rcv is None:
        return r, {}
    nr = r.nr
    if nr > (until + 1) & _W32:
        raise RatchetEarlierMessage((nr - until - 1) & _W32)
    if nr == (until + 1) & _W32:
        raise RatchetDuplicateMessage()
    if (nr + MAX_SKIP) & _W32 < until:
        raise RatchetTooManySkipped((until + 1 - nr) & _W32)
    if nr == until:
        return r, {}
    ck = r.rcv.ck
    keys: dict[int, MessageKey] = {}
    for n in range(nr, until):
        ck, mk, iv, _ = chain_kdf(ck)
        keys[n] = MessageKey(mk, iv)
    return attrs.evolve(r, rcv=attrs.evolve(r.rcv, ck=ck), nr=until), {r.rcv.hk: keys}


def _pq_ratchet_step(
    rc: Ratchet, hdr_kem: RKEMParams | None, random_bytes: RandomBytes
) -> tuple[bytes | None, bytes | None, RatchetKEM | None]:
    """``pqRatchetStep`` → ``(receiving secret, sending secret, new KEM state)`` (§5.5 step 5)."""
    pq = rc.enable_kem and rc.version.current >= PQ_RATCHET_E2E_VERSION
    if hdr_kem is None:
        if rc.kem is None and pq:
            return None, None, RatchetKEM(KEMKeyPair.generate(random_bytes), None)
        return None, None, None
    ss: bytes | None = None
    if isinstance(hdr_kem, KEMAccepted):
        if rc.kem is None:
            raise RatchetKEMStateError("KEM ciphertext without an own KEM key")
        ss = _sntrup761().decapsulate(hdr_kem.ciphertext, rc.kem.keypair.secret_key)
    if not pq:
        return ss, None, None
    peer_pk = hdr_kem.public_key
    ct, ss2 = _sntrup761().encapsulate(peer_pk, random_bytes)
    pair = KEMKeyPair.generate(random_bytes)
    return ss, ss2, RatchetKEM(pair, RatchetKEMAccepted(peer_pk, ss2, ct))


def _ratchet_step(rc: Ratchet, hdr: MsgHeader, pn: int, random_bytes: RandomBytes) -> Ratchet:
    """``ratchetStep``: the DH (and KEM) ratchet turn on a header under ``NHKr``."""
    kem_ss, kem_ss2, kem = _pq_ratchet_step(rc, hdr.kem, random_bytes)
    new_dhrs = PrivateKey.generate(rc.dhrs.alg, random_bytes)
    rk1, ckr, nhkr = root_kdf(rc.rk, hdr.dhrs, rc.dhrs, kem_ss)
    rk2, cks, nhks = root_kdf(rk1, hdr.dhrs, new_dhrs, kem_ss2)
    snd_kem, rcv_kem = kem_ss2 is not None, kem_ss is not None
    enable = snd_kem or rcv_kem or kem is not None
    return attrs.evolve(
        rc,
        dhrs=new_dhrs,
        kem=kem,
        support_kem=pq_enable_support(rc.version.current, rc.support_kem, enable),
        enable_kem=enable,
        snd_kem=snd_kem,
        rcv_kem=rcv_kem,
        rk=rk2,
        snd=SndRatchet(hdr.dhrs, cks, rc.nhks),
        rcv=RcvRatchet(ckr, rc.nhkr),
        pn=pn,
        ns=0,
        nr=0,
        nhks=nhks,
        nhkr=nhkr,
    )


def decrypt(
    rc: Ratchet, skipped: SkippedMsgKeys, wire: bytes, random_bytes: RandomBytes
) -> DecryptResult:
    """``rcDecrypt``. Raises :class:`RatchetError` where the reference throws (state unchanged);
    returns errors the reference returns together with a state to persist."""
    try:
        msg = EncRatchetMessage.decode(wire)
        eh = EncMessageHeader.decode(msg.header)
    except ParseError as e:
        raise RatchetParseError(f"CryptoHeaderError {e}") from e
    # TrySkippedMessageKeysHE: stored header keys in byte order
    for hk in sorted(skipped):
        try:
            hdr = _header_decrypt(rc, hk, eh)
        except RatchetHeaderError:
            continue
        mks = skipped[hk]
        key = mks.get(hdr.ns)
        if key is not None:
            return DecryptResult(_body_decrypt(rc, key, msg), rc, SMDRemove(hk, hdr.ns))
        if rc.rcv is not None and rc.rcv.hk == hk:
            return _decrypt_rc_message(rc, False, hdr, msg, random_bytes)
        if hk == rc.nhkr:
            return _decrypt_rc_message(rc, True, hdr, msg, random_bytes)
        raise RatchetHeaderError()
    if rc.rcv is not None:
        try:
            hdr = _header_decrypt(rc, rc.rcv.hk, eh)
        except RatchetHeaderError:
            pass
        else:
            return _decrypt_rc_message(rc, False, hdr, msg, random_bytes)
    hdr = _header_decrypt(rc, rc.nhkr, eh)
    return _decrypt_rc_message(rc, True, hdr, msg, random_bytes)


def _decrypt_rc_message(
    rc: Ratchet, advance: bool, hdr: MsgHeader, msg: EncRatchetMessage, random_bytes: RandomBytes
) -> DecryptResult:
    """``decryptRcMessage``: version upgrade, DH step if ``advance``, key skipping, body."""
    cur, mx = rc.version.current, rc.version.max_supported
    upgraded = rc
    if hdr.max_version > cur:
        upgraded = attrs.evolve(rc, version=RatchetVersions(max(cur, min(hdr.max_version, mx)), mx))
    skipped1: dict[bytes, dict[int, MessageKey]] = {}
    rc1 = upgraded
    if advance:
        rc1, skipped1 = _skip_message_keys(hdr.pn, upgraded)  # thrown: state not saved
        rc1 = _ratchet_step(rc1, hdr, rc.ns, random_bytes)

    def diff(keys: dict[bytes, dict[int, MessageKey]]) -> SkippedMsgDiff:
        return SMDAdd(keys) if keys else SMDNoChange()

    try:
        rc2, skipped2 = _skip_message_keys(hdr.ns, rc1)
    except RatchetError as e:  # returned with the (possibly advanced) state
        return DecryptResult(e, rc1, diff(skipped1))
    # Map union of the two groups (left-biased; the header keys differ after a DH step)
    both = {**skipped2, **skipped1}
    if rc2.rcv is None:
        return DecryptResult(RatchetStateError(), rc2, diff(both))
    ck2, mk, iv, _ = chain_kdf(rc2.rcv.ck)
    result = _body_decrypt(rc, MessageKey(mk, iv), msg)
    rc3 = attrs.evolve(rc2, rcv=attrs.evolve(rc2.rcv, ck=ck2), nr=(rc2.nr + 1) & _W32)
    return DecryptResult(result, rc3, diff(both))


# ================================================================ persisted state


@attrs.frozen
class RatchetState:
    """A ratchet with its skipped-message keys: what an agent persists per connection.

    :meth:`encrypt` / :meth:`decrypt` return the next state; on failure they raise a
    :class:`RatchetError` whose ``state`` is what the reference would have stored.
    """

    ratchet: Ratchet
    skipped: Mapping[bytes, Mapping[int, MessageKey]] = attrs.field(factory=dict)

    def encrypt_header(
        self, pq_enc: bool | None = None, supported_version: int = CURRENT_E2E_VERSION
    ) -> tuple[MsgEncryptKey, "RatchetState"]:
        key, rc = encrypt_header(self.ratchet, pq_enc, supported_version)
        return key, attrs.evolve(self, ratchet=rc)

    def encrypt(
        self, msg: bytes, padded_len: int, pq_enc: bool | None = None,
        supported_version: int = CURRENT_E2E_VERSION,
    ) -> tuple[bytes, "RatchetState"]:
        wire, rc = encrypt(self.ratchet, msg, padded_len, pq_enc, supported_version)
        return wire, attrs.evolve(self, ratchet=rc)

    def decrypt(self, wire: bytes, random_bytes: RandomBytes) -> tuple[bytes, "RatchetState"]:
        try:
            res = decrypt(self.ratchet, self.skipped, wire, random_bytes)
        except RatchetError as e:
            e.state = self
            raise
        new = RatchetState(res.ratchet, apply_skipped_diff(self.skipped, res.skipped_diff))
        if isinstance(res.result, RatchetError):
            res.result.state = new
            raise res.result
        return res.result, new

    def to_bytes(self) -> bytes:
        """``0x01 ‖ ratchet ‖ w32 groups ‖ (s1 hk ‖ w32 count ‖ (w32 n ‖ MessageKey)*)*``."""
        out = [_STATE_FORMAT, _encode_ratchet(self.ratchet), w32(len(self.skipped))]
        for hk in sorted(self.skipped):
            mks = self.skipped[hk]
            out.append(sb(hk) + w32(len(mks)))
            out.extend(w32(n) + mks[n].encode() for n in sorted(mks))
        return b"".join(out)

    @staticmethod
    def from_bytes(data: bytes) -> "RatchetState":
        """Total: any bytes give a state or a :class:`ParseError`."""

        def p(r: Reader) -> RatchetState:
            if r.byte() != _STATE_FORMAT[0]:
                raise ParseError("unknown ratchet state serialisation version")
            rc = _parse_ratchet(r)
            skipped: dict[bytes, dict[int, MessageKey]] = {}
            for _ in range(r.w32()):
                hk = _key32(r.sb())
                if hk in skipped:
                    raise ParseError("repeated skipped-key group")
                mks: dict[int, MessageKey] = {}
                for _ in range(r.w32()):
                    n = r.w32()
                    if n in mks:
                        raise ParseError("repeated skipped message number")
                    mks[n] = MessageKey.parse(r)
                if not mks:
                    raise ParseError("empty skipped-key group")
                skipped[hk] = mks
            return RatchetState(rc, skipped)

        return parse_all(data, p)


# -- serialisation of Ratchet (format 1; our own, the reference stores JSON in SQLite)

_RATCHET_FORMAT = b"\x01"
_STATE_FORMAT = b"\x01"


def _key32(b: bytes) -> bytes:
    if len(b) != 32:
        raise ParseError("key must be 32 bytes")
    return b


def _encode_ratchet(rc: Ratchet) -> bytes:
    kem = None
    if rc.kem is not None:
        acc = rc.kem.accepted
        acc_enc = None if acc is None else lg(acc.peer_public_key) + sb(acc.shared_key) + lg(acc.ciphertext)
        kem = rc.kem.keypair.encode() + mb(acc_enc)
    snd = None if rc.snd is None else rc.snd.dhrr.encode() + sb(rc.snd.ck) + sb(rc.snd.hk)
    rcv = None if rc.rcv is None else sb(rc.rcv.ck) + sb(rc.rcv.hk)
    return b"".join(
        [
            w16(rc.version.current),
            w16(rc.version.max_supported),
            sb(rc.ad),
            lg(rc.dhrs.pkcs8()),
            mb(kem),
            boolean(rc.support_kem),
            boolean(rc.enable_kem),
            boolean(rc.snd_kem),
            boolean(rc.rcv_kem),
            sb(rc.rk),
            mb(snd),
            mb(rcv),
            w32(rc.ns),
            w32(rc.nr),
            w32(rc.pn),
            sb(rc.nhks),
            sb(rc.nhkr),
        ]
    )


def _parse_kem(r: Reader) -> RatchetKEM:
    pair = KEMKeyPair.parse(r)

    def acc(r: Reader) -> RatchetKEMAccepted:
        pk = _kem_pk(r.lg())
        ss = _kem_ss(r.sb())
        return RatchetKEMAccepted(pk, ss, _kem_ct(r.lg()))

    return RatchetKEM(pair, r.maybe(acc))


def _parse_ratchet(r: Reader) -> Ratchet:
    versions = RatchetVersions(r.w16(), r.w16())
    ad = r.sb()
    try:
        dhrs = PrivateKey.from_pkcs8(r.lg())
    except (ValueError, LocalProtocolError) as e:
        raise ParseError(f"bad ratchet private key: {e}") from e
    if dhrs.alg not in (KeyAlgorithm.X25519, KeyAlgorithm.X448) or len(ad) != 2 * KEY_SIZE[dhrs.alg]:
        raise ParseError("bad ratchet key or associated data")
    kem = r.maybe(_parse_kem)
    support, enable, snd_kem, rcv_kem = r.boolean(), r.boolean(), r.boolean(), r.boolean()
    rk = _key32(r.sb())

    def snd(r: Reader) -> SndRatchet:
        dhrr = PublicKey.parse(r)
        if dhrr.alg != dhrs.alg:
            raise ParseError("ratchet keys of different algorithms")
        return SndRatchet(dhrr, _key32(r.sb()), _key32(r.sb()))

    def rcv(r: Reader) -> RcvRatchet:
        return RcvRatchet(_key32(r.sb()), _key32(r.sb()))

    s = r.maybe(snd)
    rv = r.maybe(rcv)
    ns, nr, pn = r.w32(), r.w32(), r.w32()
    nhks, nhkr = _key32(r.sb()), _key32(r.sb())
    return Ratchet(versions, ad, dhrs, kem, support, enable, snd_kem, rcv_kem, rk, s, rv, ns, nr, pn, nhks, nhkr)
