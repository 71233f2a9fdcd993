"""E2E ratchet parameters: X3DH keys and sntrup761 KEM fields (agent-crypto.md §1.2, §2.1, §5.2, §5.8).

The invitation (initiator) publishes ``E2ERatchetParamsUri`` — a version *range*, two X448 keys and
optionally a proposed KEM key; the joiner answers in its confirmation with ``E2ERatchetParams`` — one
version, two keys and optionally a KEM proposal or acceptance (a ciphertext to the invitation's key
plus its own new KEM key).

Encodings (``Crypto/Ratchet.hs``):

* ``RKEMParams``: ``'P' s2(pk)`` | ``'A' s2(ct) s2(pk)``;
* ``E2ERatchetParams``: ``u16 v ‖ s1(SPKI k1) ‖ s1(SPKI k2)`` then, only if ``v ≥ 3``, ``opt(RKEMParams)``;
* ``E2ERatchetParamsUri`` binary: ``vr ‖ s1(SPKI) ‖ s1(SPKI) ‖ opt(RKEMParams)`` (the Maybe is always there);
* ``E2ERatchetParamsUri`` text: ``v=<vr>&x3dh=<b64 SPKI>,<b64 SPKI>[&kem_ct=<b64>][&kem_key=<b64>]``, KEM
  fields only when ``max vr ≥ 3``; inside a full link the text is QEscape'd (:func:`qescape`).

Parsers are total (value or :class:`~sansio_smp.errors.ParseError`). Unlike the reference, KEM keys and
ciphertexts of the wrong size are rejected at parse time: the reference would hand them to C code that
reads a fixed number of bytes.

Key generation takes an injected ``random_bytes``; sntrup761 is ``agent.sntrup761`` (imported lazily).
Randomness order matches ``generateE2EParams``: key 1, key 2, KEM key pair, then encapsulation.
"""

from __future__ import annotations

import urllib.parse
from typing import Callable, Union

import attrs

from sansio_smp.crypto import KeyAlgorithm, PrivateKey, PublicKey
from sansio_smp.encoding import (
    Reader,
    VersionRange,
    b64url_decode,
    b64url_encode,
    lg,
    mb,
    parse_all,
    sb,
    w16,
)
from sansio_smp.errors import LocalProtocolError, ParseError

RandomBytes = Callable[[int], bytes]

# ---------------------------------------------------------------- versions (§1.2)

KDF_X3DH_E2E_VERSION = 2
PQ_RATCHET_E2E_VERSION = 3
CURRENT_E2E_VERSION = 3
SUPPORTED_E2E_VRANGE = VersionRange(KDF_X3DH_E2E_VERSION, CURRENT_E2E_VERSION)

# ---------------------------------------------------------------- sntrup761 sizes (§5.8, §6)

KEM_PUBLIC_KEY_SIZE = 1158
KEM_SECRET_KEY_SIZE = 1763
KEM_CIPHERTEXT_SIZE = 1039
KEM_SHARED_KEY_SIZE = 32

_DH_ALGS = (KeyAlgorithm.X25519, KeyAlgorithm.X448)


def _sntrup761():  # type: ignore[no-untyped-def]
    """The KEM implementation (another module's; imported on first use)."""
    from agent import sntrup761

    return sntrup761


def _sized(n: int, what: str) -> Callable[[bytes], bytes]:
    def check(value: bytes) -> bytes:
        if len(value) != n:
            raise ParseError(f"{what} must be {n} bytes, got {len(value)}")
        return value

    return check


_kem_pk = _sized(KEM_PUBLIC_KEY_SIZE, "sntrup761 public key")
_kem_ct = _sized(KEM_CIPHERTEXT_SIZE, "sntrup761 ciphertext")
_kem_sk = _sized(KEM_SECRET_KEY_SIZE, "sntrup761 secret key")
_kem_ss = _sized(KEM_SHARED_KEY_SIZE, "sntrup761 shared secret")


def _check_len(value: bytes, n: int, what: str) -> bytes:
    if len(value) != n:
        raise LocalProtocolError(f"{what} must be {n} bytes, got {len(value)}")
    return bytes(value)


# ---------------------------------------------------------------- KEM values


@attrs.frozen
class KEMKeyPair:
    """An own sntrup761 key pair (``KEMKeyPair``); stored as ``s2(pk) ‖ s2(sk)``."""

    public_key: bytes = attrs.field(converter=bytes, repr=lambda b: f"<{len(b)} bytes>")
    secret_key: bytes = attrs.field(converter=bytes, repr=lambda b: "<secret>")

    def __attrs_post_init__(self) -> None:
        _check_len(self.public_key, KEM_PUBLIC_KEY_SIZE, "KEM public key")
        _check_len(self.secret_key, KEM_SECRET_KEY_SIZE, "KEM secret key")

    @staticmethod
    def generate(random_bytes: RandomBytes) -> "KEMKeyPair":
        pk, sk = _sntrup761().keypair(random_bytes)
        return KEMKeyPair(pk, sk)

    def encode(self) -> bytes:
        return lg(self.public_key) + lg(self.secret_key)

    @staticmethod
    def parse(r: Reader) -> "KEMKeyPair":
        return KEMKeyPair(_kem_pk(r.lg()), _kem_sk(r.lg()))


@attrs.frozen
class KEMProposed:
    """``RKParamsProposed``: only an encapsulation key (``'P' s2(pk)``)."""

    public_key: bytes = attrs.field(converter=bytes, repr=lambda b: f"<{len(b)} bytes>")

    def __attrs_post_init__(self) -> None:
        _check_len(self.public_key, KEM_PUBLIC_KEY_SIZE, "KEM public key")

    def encode(self) -> bytes:
        return b"P" + lg(self.public_key)


@attrs.frozen
class KEMAccepted:
    """``RKParamsAccepted``: a ciphertext to the peer's key and the next own key (``'A' s2(ct) s2(pk)``)."""

    ciphertext: bytes = attrs.field(converter=bytes, repr=lambda b: f"<{len(b)} bytes>")
    public_key: bytes = attrs.field(converter=bytes, repr=lambda b: f"<{len(b)} bytes>")

    def __attrs_post_init__(self) -> None:
        _check_len(self.ciphertext, KEM_CIPHERTEXT_SIZE, "KEM ciphertext")
        _check_len(self.public_key, KEM_PUBLIC_KEY_SIZE, "KEM public key")

    def encode(self) -> bytes:
        return b"A" + lg(self.ciphertext) + lg(self.public_key)


RKEMParams = Union[KEMProposed, KEMAccepted]


def parse_rkem_params(r: Reader) -> RKEMParams:
    """``ARKEMParams`` parser (§5.8)."""
    tag = r.byte()
    if tag == 0x50:  # 'P'
        return KEMProposed(_kem_pk(r.lg()))
    if tag == 0x41:  # 'A'
        ct = _kem_ct(r.lg())
        return KEMAccepted(ct, _kem_pk(r.lg()))
    raise ParseError("bad ratchet KEM params")


@attrs.frozen
class PrivKEMProposed:
    """``PrivateRKParamsProposed``: the key pair whose public key was proposed."""

    keypair: KEMKeyPair

    def encode(self) -> bytes:
        return b"P" + self.keypair.encode()


@attrs.frozen
class PrivKEMAccepted:
    """``PrivateRKParamsAccepted``: ciphertext and secret sent to the peer's key, and the own new pair."""

    ciphertext: bytes = attrs.field(converter=bytes, repr=lambda b: f"<{len(b)} bytes>")
    shared_key: bytes = attrs.field(converter=bytes, repr=lambda b: "<secret>")
    keypair: KEMKeyPair

    def __attrs_post_init__(self) -> None:
        _check_len(self.ciphertext, KEM_CIPHERTEXT_SIZE, "KEM ciphertext")
        _check_len(self.shared_key, KEM_SHARED_KEY_SIZE, "KEM shared secret")

    def encode(self) -> bytes:
        return b"A" + lg(self.ciphertext) + sb(self.shared_key) + self.keypair.encode()


PrivKEMParams = Union[PrivKEMProposed, PrivKEMAccepted]


def parse_priv_kem_params(r: Reader) -> PrivKEMParams:
    """``APrivRKEMParams`` parser (storage form)."""
    tag = r.byte()
    if tag == 0x50:
        return PrivKEMProposed(KEMKeyPair.parse(r))
    if tag == 0x41:
        ct = _kem_ct(r.lg())
        ss = _kem_ss(r.sb())
        return PrivKEMAccepted(ct, ss, KEMKeyPair.parse(r))
    raise ParseError("bad APrivRKEMParams")


# ---------------------------------------------------------------- E2E ratchet parameters


def _parse_dh_keys(r: Reader, alg: KeyAlgorithm | None) -> tuple[PublicKey, PublicKey]:
    k1 = PublicKey.parse(r)
    k2 = PublicKey.parse(r)
    if k1.alg != k2.alg:
        raise ParseError("bad e2e params: different key algorithms")
    if k1.alg not in _DH_ALGS or (alg is not None and k1.alg != alg):
        raise ParseError(f"bad e2e params: unexpected key algorithm {k1.alg.value}")
    return k1, k2


def _check_keys(k1: PublicKey, k2: PublicKey) -> None:
    if k1.alg != k2.alg or k1.alg not in _DH_ALGS:
        raise LocalProtocolError("E2E params need two X25519 or two X448 keys")


@attrs.frozen
class E2ERatchetParams:
    """``E2ERatchetParams``: one E2E version, two DH keys, optional KEM (§5.2).

    The joiner's reply carries it in the confirmation; the reference's invitation-side
    ``RcvE2ERatchetParams`` is the same value with only a proposal allowed.
    """

    version: int
    key1: PublicKey
    key2: PublicKey
    kem: RKEMParams | None = None

    def __attrs_post_init__(self) -> None:
        _check_keys(self.key1, self.key2)

    def encode(self) -> bytes:
        out = w16(self.version) + self.key1.encode() + self.key2.encode()
        if self.version >= PQ_RATCHET_E2E_VERSION:
            out += mb(None if self.kem is None else self.kem.encode())
        return out

    @staticmethod
    def parse(r: Reader, alg: KeyAlgorithm | None = KeyAlgorithm.X448) -> "E2ERatchetParams":
        v = r.w16()
        k1, k2 = _parse_dh_keys(r, alg)
        kem = r.maybe(parse_rkem_params) if v >= PQ_RATCHET_E2E_VERSION else None
        return E2ERatchetParams(v, k1, k2, kem)

    @staticmethod
    def decode(data: bytes, alg: KeyAlgorithm | None = KeyAlgorithm.X448) -> "E2ERatchetParams":
        return parse_all(data, lambda r: E2ERatchetParams.parse(r, alg))

    def to_uri(self, version_range: VersionRange) -> "E2ERatchetParamsUri":
        return E2ERatchetParamsUri(version_range, self.key1, self.key2, self.kem)


@attrs.frozen
class E2ERatchetParamsUri:
    """``E2ERatchetParamsUri``: the invitation's params with a version range (§2.1)."""

    version_range: VersionRange
    key1: PublicKey
    key2: PublicKey
    kem: RKEMParams | None = None

    def __attrs_post_init__(self) -> None:
        _check_keys(self.key1, self.key2)

    # -- binary (inside short-link data and binary connection requests)
    def encode(self) -> bytes:
        kem = None if self.kem is None else self.kem.encode()
        return self.version_range.encode() + self.key1.encode() + self.key2.encode() + mb(kem)

    @staticmethod
    def parse(r: Reader, alg: KeyAlgorithm | None = KeyAlgorithm.X448) -> "E2ERatchetParamsUri":
        vr = VersionRange.parse(r)
        k1, k2 = _parse_dh_keys(r, alg)
        return E2ERatchetParamsUri(vr, k1, k2, r.maybe(parse_rkem_params))

    @staticmethod
    def decode(data: bytes, alg: KeyAlgorithm | None = KeyAlgorithm.X448) -> "E2ERatchetParamsUri":
        return parse_all(data, lambda r: E2ERatchetParamsUri.parse(r, alg))

    # -- text (the value of ``e2e=`` in a full link, before QEscape)
    def to_str(self) -> str:
        vr = self.version_range
        parts = [
            ("v", str(vr.min) if vr.min == vr.max else f"{vr.min}-{vr.max}"),
            ("x3dh", b64url_encode(self.key1.spki()) + "," + b64url_encode(self.key2.spki())),
        ]
        if self.kem is not None and vr.max >= PQ_RATCHET_E2E_VERSION:
            if isinstance(self.kem, KEMAccepted):
                parts.append(("kem_ct", b64url_encode(self.kem.ciphertext)))
            parts.append(("kem_key", b64url_encode(self.kem.public_key)))
        return "&".join(f"{k}={v}" for k, v in parts)

    @staticmethod
    def from_str(text: str, alg: KeyAlgorithm | None = KeyAlgorithm.X448) -> "E2ERatchetParamsUri":
        """Parse the query text (already un-escaped from the link, or as is)."""
        query = _parse_query(text)
        vr = _parse_version_range(_required(query, "v"))
        keys = [PublicKey.from_spki(_b64(k)) for k in _required(query, "x3dh").split(",")]
        if len(keys) != 2:
            raise ParseError("bad e2e params: x3dh needs two keys")
        k1, k2 = keys
        if k1.alg != k2.alg:
            raise ParseError("bad e2e params: different key algorithms")
        if k1.alg not in _DH_ALGS or (alg is not None and k1.alg != alg):
            raise ParseError(f"bad e2e params: unexpected key algorithm {k1.alg.value}")
        kem: RKEMParams | None = None
        if vr.max >= PQ_RATCHET_E2E_VERSION and "kem_key" in query:
            pk = _kem_pk(_b64(query["kem_key"]))
            kem = KEMAccepted(_kem_ct(_b64(query["kem_ct"])), pk) if "kem_ct" in query else KEMProposed(pk)
        return E2ERatchetParamsUri(vr, k1, k2, kem)

    def to_link_value(self) -> str:
        """The text as it appears after ``e2e=`` in a full link (QEscape, §0)."""
        return qescape(self.to_str())

    def for_version(self, version: int) -> E2ERatchetParams:
        """``toVersionT``: the same keys at one version."""
        return E2ERatchetParams(version, self.key1, self.key2, self.kem)


def qescape(text: str) -> str:
    """http-types ``renderSimpleQuery False`` value escaping: all but ``A-Za-z0-9-_.~`` → ``%XX``."""
    return urllib.parse.quote(text.encode("utf-8"), safe="-_.~")


def _b64(text: str) -> bytes:
    if not text:
        raise ParseError("empty base64url value")
    return b64url_decode(text)


def _required(query: dict[str, str], name: str) -> str:
    if name not in query:
        raise ParseError(f"no qs param {name}")
    return query[name]


def _parse_query(text: str) -> dict[str, str]:
    """http-types ``parseSimpleQuery``: ``&``/``;`` separated, first occurrence of a name wins."""
    out: dict[str, str] = {}
    for item in text.replace(";", "&").split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        name = urllib.parse.unquote_plus(name)
        if name not in out:
            out[name] = urllib.parse.unquote_plus(value)
    return out


def _parse_version(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or int(text) > 0xFFFF:
        raise ParseError(f"bad version {text!r}")
    return int(text)


def _parse_version_range(text: str) -> VersionRange:
    lo, sep, hi = text.partition("-")
    vmin = _parse_version(lo)
    vmax = _parse_version(hi) if sep else vmin
    if vmin > vmax:
        raise ParseError("invalid version range")
    return VersionRange(vmin, vmax)


# ---------------------------------------------------------------- generating params


@attrs.frozen
class ProposeKEM:
    """``ProposeKEM``: put a fresh KEM key into the params."""


@attrs.frozen
class AcceptKEM:
    """``AcceptKEM k``: encapsulate to the peer's proposed key and add a fresh own key."""

    peer_public_key: bytes = attrs.field(converter=bytes, repr=lambda b: f"<{len(b)} bytes>")


UseKEM = Union[ProposeKEM, AcceptKEM]


def _generate(
    random_bytes: RandomBytes, version: int, use_kem: UseKEM | None, alg: KeyAlgorithm
) -> tuple[PrivateKey, PrivateKey, PrivKEMParams | None, E2ERatchetParams]:
    pk1 = PrivateKey.generate(alg, random_bytes)
    pk2 = PrivateKey.generate(alg, random_bytes)
    pub_kem: RKEMParams | None = None
    priv_kem: PrivKEMParams | None = None
    if use_kem is not None and version >= PQ_RATCHET_E2E_VERSION:
        pair = KEMKeyPair.generate(random_bytes)
        if isinstance(use_kem, AcceptKEM):
            ct, ss = _sntrup761().encapsulate(use_kem.peer_public_key, random_bytes)
            pub_kem, priv_kem = KEMAccepted(ct, pair.public_key), PrivKEMAccepted(ct, ss, pair)
        else:
            pub_kem, priv_kem = KEMProposed(pair.public_key), PrivKEMProposed(pair)
    return pk1, pk2, priv_kem, E2ERatchetParams(version, pk1.public(), pk2.public(), pub_kem)


def generate_rcv_e2e_params(
    random_bytes: RandomBytes, version: int, pq_support: bool, alg: KeyAlgorithm = KeyAlgorithm.X448
) -> tuple[PrivateKey, PrivateKey, PrivKEMProposed | None, E2ERatchetParams]:
    """``generateRcvE2EParams`` (initiator / invitation): a KEM proposal iff ``pq_support`` and v ≥ 3."""
    pk1, pk2, priv, params = _generate(random_bytes, version, ProposeKEM() if pq_support else None, alg)
    return pk1, pk2, priv if isinstance(priv, PrivKEMProposed) else None, params


def generate_snd_e2e_params(
    random_bytes: RandomBytes, version: int, use_kem: UseKEM | None, alg: KeyAlgorithm = KeyAlgorithm.X448
) -> tuple[PrivateKey, PrivateKey, PrivKEMParams | None, E2ERatchetParams]:
    """``generateSndE2EParams`` (joiner / confirmation)."""
    return _generate(random_bytes, version, use_kem, alg)


def reply_kem(version: int, peer_kem: RKEMParams | None, pq_support: bool) -> UseKEM | None:
    """``replyKEM_``: accept the invitation's proposal, or propose, when PQ is supported and v ≥ 3."""
    if not pq_support or version < PQ_RATCHET_E2E_VERSION:
        return None
    if isinstance(peer_kem, KEMProposed):
        return AcceptKEM(peer_kem.public_key)
    return ProposeKEM()
