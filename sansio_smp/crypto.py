"""The one crypto layer for SMP, XFTP, NTF and the agent (smp.md §3.5, §4.2, §5.1, §5.2).

Pure functions over bytes: no randomness is drawn here — callers pass keys and nonces made
from an injected ``random_bytes``.

* Keys: :class:`PublicKey` / :class:`PrivateKey` for Ed25519, Ed448, X25519, X448 with the
  reference's DER SubjectPublicKeyInfo / PKCS#8 encodings (§5.2). Decoding is strict: only the
  four fixed SPKI prefixes are accepted, nothing trailing.
* The reference's ``cryptoBox``/``sbEncrypt`` (§5.1): XSalsa20-Poly1305 with the key
  ``HSalsa20(secret, 0¹⁶)`` and the 16-byte tag first. With a raw X25519 secret this equals
  NaCl ``crypto_box``; with a symmetric key it is *not* plain ``crypto_secretbox(K)``.
* HKDF-SHA512 and the block-encryption chain ``sbcInit``/``sbcHkdf`` (§3.5).
* Signatures (Ed25519/Ed448) and the X25519 ``crypto_box`` authenticator (§4.2).
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import hmac

import nacl._sodium as _sodium_mod
import nacl.bindings as _nacl
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519, x448, x25519

from .encoding import Reader, pad, sb, unpad
from .errors import CryptoError, LocalProtocolError, ParseError

# ---------------------------------------------------------------- libsodium primitives
# PyNaCl bundles libsodium; its cffi module also exports the C symbols we need (spec README).
_lib = ctypes.CDLL(_sodium_mod.__file__)
_lib.crypto_core_hsalsa20.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
_lib.crypto_core_hsalsa20.restype = ctypes.c_int
_ZERO16 = bytes(16)

TAG_SIZE = 16
NONCE_SIZE = 24


def hsalsa20(key: bytes, nonce16: bytes = _ZERO16) -> bytes:
    """HSalsa20 core: 32-byte key, 16-byte input → 32 bytes."""
    if len(key) != 32 or len(nonce16) != 16:
        raise LocalProtocolError("hsalsa20 needs a 32-byte key and 16-byte input")
    out = ctypes.create_string_buffer(32)
    _lib.crypto_core_hsalsa20(out, nonce16, key, None)
    return out.raw


def cb_nonce(data: bytes) -> bytes:
    """``cbNonce``: exactly 24 bytes, truncated or right-padded with zeros (§5.1)."""
    return data[:NONCE_SIZE].ljust(NONCE_SIZE, b"\0")


def reverse_nonce(nonce: bytes) -> bytes:
    """``reverseNonce``: the 24 bytes reversed (§5.6)."""
    return bytes(reversed(nonce))


def box_key(secret: bytes) -> bytes:
    """The XSalsa20-Poly1305 key the reference derives from a secret: HSalsa20(secret, 0¹⁶)."""
    return hsalsa20(secret)


def secretbox_seal(key: bytes, nonce: bytes, message: bytes) -> bytes:
    """NaCl ``crypto_secretbox`` with an already-derived key: ``tag(16) ‖ ciphertext``."""
    if len(key) != 32 or len(nonce) != NONCE_SIZE:
        raise LocalProtocolError("secretbox needs a 32-byte key and a 24-byte nonce")
    return _nacl.crypto_secretbox_easy(message, nonce, key)


def secretbox_open(key: bytes, nonce: bytes, box: bytes) -> bytes:
    if len(key) != 32 or len(nonce) != NONCE_SIZE:
        raise LocalProtocolError("secretbox needs a 32-byte key and a 24-byte nonce")
    if len(box) < TAG_SIZE:
        raise CryptoError("secretbox: ciphertext shorter than the tag")
    try:
        return _nacl.crypto_secretbox_open_easy(box, nonce, key)
    except Exception as e:  # nacl.exceptions.CryptoError
        raise CryptoError("secretbox: authentication failed") from e


def cb_encrypt(secret: bytes, nonce: bytes, message: bytes, padded_len: int | None = None) -> bytes:
    """Reference ``cryptoBox``/``cbEncrypt``/``sbEncrypt``: pad (if ``padded_len``) then
    XSalsa20-Poly1305 under ``HSalsa20(secret, 0¹⁶)``; output ``tag ‖ ciphertext``."""
    body = pad(message, padded_len) if padded_len is not None else message
    return secretbox_seal(box_key(secret), nonce, body)


def cb_decrypt(secret: bytes, nonce: bytes, box: bytes, padded: bool = True) -> bytes:
    """Inverse of :func:`cb_encrypt`; ``padded`` strips the reference padding."""
    plain = secretbox_open(box_key(secret), nonce, box)
    return unpad(plain) if padded else plain


# ---------------------------------------------------------------- hashes and HKDF


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha512(data: bytes) -> bytes:
    return hashlib.sha512(data).digest()


def sha3_256(data: bytes) -> bytes:
    return hashlib.sha3_256(data).digest()


def sha3_384(data: bytes) -> bytes:
    return hashlib.sha3_384(data).digest()


# HMAC-SHA512 (RFC 2104) on hashlib objects: the keyed inner/outer states are built once per key
# and copied per message. ``hmac.new``/``hmac.digest`` rebuild them on every call (and go through
# OpenSSL's HMAC setup), which made one 88-byte HKDF (3 HMACs) cost ~10 µs; this way ~4 µs. The
# block-encryption chain runs one HKDF per 16 KB block in each direction (§3.5).
_HMAC_BLOCK = 128  # SHA-512 block size
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _hmac_sha512_states(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """The (inner, outer) SHA-512 states after absorbing ``key ⊕ ipad`` / ``key ⊕ opad``."""
    if len(key) > _HMAC_BLOCK:
        key = hashlib.sha512(key).digest()
    key = key.ljust(_HMAC_BLOCK, b"\0")
    return hashlib.sha512(key.translate(_IPAD)), hashlib.sha512(key.translate(_OPAD))


def _hmac_sha512(states: tuple[hashlib._Hash, hashlib._Hash], msg: bytes) -> bytes:
    inner = states[0].copy()
    inner.update(msg)
    outer = states[1].copy()
    outer.update(inner.digest())
    return outer.digest()


_ZERO_SALT_STATES = _hmac_sha512_states(b"")  # HKDF's default salt: zeros (≡ the empty key)


def hkdf_sha512(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-512 (reference ``hkdf``); empty salt ≡ zero salt."""
    if length > 255 * 64:
        raise LocalProtocolError("HKDF output too long")
    prk = _hmac_sha512(_hmac_sha512_states(salt) if salt else _ZERO_SALT_STATES, ikm)
    prk_states = _hmac_sha512_states(prk)
    blocks: list[bytes] = []
    t, i, got = b"", 1, 0
    while got < length:
        t = _hmac_sha512(prk_states, t + info + bytes((i,)))
        blocks.append(t)
        got += 64
        i += 1
    return b"".join(blocks)[:length]  # (one block: join and the full slice return it as is)


def sbc_init(session_id: bytes, dh_secret: bytes) -> tuple[bytes, bytes]:
    """``sbcInit``: ``(ck1, ck2)``; the router sends with ck1, the client with ck2 (§3.5)."""
    okm = hkdf_sha512(session_id, dh_secret, b"SimpleXSbChainInit", 64)
    return okm[:32], okm[32:]


def sbc_step(chain_key: bytes) -> tuple[bytes, bytes, bytes]:
    """``sbcHkdf``: one chain step → ``(next chain key, secretbox key, nonce)`` (§3.5)."""
    okm = hkdf_sha512(b"", chain_key, b"SimpleXSbChain", 88)
    return okm[:32], okm[32:64], okm[64:88]


# ---------------------------------------------------------------- keys


class KeyAlgorithm(enum.Enum):
    ED25519 = "ed25519"
    ED448 = "ed448"
    X25519 = "x25519"
    X448 = "x448"

    @property
    def signs(self) -> bool:
        return self in (KeyAlgorithm.ED25519, KeyAlgorithm.ED448)


_SPKI_PREFIX = {
    KeyAlgorithm.ED25519: bytes.fromhex("302a300506032b6570032100"),
    KeyAlgorithm.X25519: bytes.fromhex("302a300506032b656e032100"),
    KeyAlgorithm.ED448: bytes.fromhex("3043300506032b6571033a00"),
    KeyAlgorithm.X448: bytes.fromhex("3042300506032b656f033900"),
}
_PKCS8_PREFIX = {
    KeyAlgorithm.ED25519: bytes.fromhex("302e020100300506032b657004220420"),
    KeyAlgorithm.X25519: bytes.fromhex("302e020100300506032b656e04220420"),
    KeyAlgorithm.ED448: bytes.fromhex("3047020100300506032b6571043b0439"),
    KeyAlgorithm.X448: bytes.fromhex("3046020100300506032b656f043a0438"),
}
KEY_SIZE = {KeyAlgorithm.ED25519: 32, KeyAlgorithm.X25519: 32, KeyAlgorithm.ED448: 57, KeyAlgorithm.X448: 56}
SIGNATURE_SIZE = {KeyAlgorithm.ED25519: 64, KeyAlgorithm.ED448: 114}
_PUB_CLS = {
    KeyAlgorithm.ED25519: ed25519.Ed25519PublicKey,
    KeyAlgorithm.ED448: ed448.Ed448PublicKey,
    KeyAlgorithm.X25519: x25519.X25519PublicKey,
    KeyAlgorithm.X448: x448.X448PublicKey,
}
_PRIV_CLS = {
    KeyAlgorithm.ED25519: ed25519.Ed25519PrivateKey,
    KeyAlgorithm.ED448: ed448.Ed448PrivateKey,
    KeyAlgorithm.X25519: x25519.X25519PrivateKey,
    KeyAlgorithm.X448: x448.X448PrivateKey,
}


class PublicKey:
    """A public key as the wire carries it: algorithm + raw bytes (§5.2)."""

    __slots__ = ("alg", "raw", "_obj")

    def __init__(self, alg: KeyAlgorithm, raw: bytes) -> None:
        if len(raw) != KEY_SIZE[alg]:
            raise LocalProtocolError(f"{alg.value} public key must be {KEY_SIZE[alg]} bytes")
        self.alg = alg
        self.raw = bytes(raw)
        self._obj: object | None = None

    def __repr__(self) -> str:
        return f"PublicKey({self.alg.value}, {self.raw.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self.alg == other.alg and self.raw == other.raw

    def __hash__(self) -> int:
        return hash((self.alg, self.raw))

    def spki(self) -> bytes:
        """DER SubjectPublicKeyInfo (``encodePubKey``)."""
        return _SPKI_PREFIX[self.alg] + self.raw

    def encode(self) -> bytes:
        """The wire ``key`` field: ``sb(SPKI)``."""
        return sb(self.spki())

    @staticmethod
    def from_spki(der: bytes) -> "PublicKey":
        """Strict DER SPKI decoding; anything else is a :class:`ParseError`."""
        for alg, prefix in _SPKI_PREFIX.items():
            if len(der) == len(prefix) + KEY_SIZE[alg] and der.startswith(prefix):
                return PublicKey(alg, der[len(prefix) :])
        raise ParseError("unsupported or malformed SubjectPublicKeyInfo")

    @staticmethod
    def parse(r: Reader) -> "PublicKey":
        return PublicKey.from_spki(r.sb())

    def _crypto(self):  # type: ignore[no-untyped-def]
        if self._obj is None:
            try:
                self._obj = _PUB_CLS[self.alg].from_public_bytes(self.raw)
            except ValueError as e:
                raise CryptoError(f"unusable {self.alg.value} public key") from e
        return self._obj

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Verify an Ed25519/Ed448 signature; ``False`` on any mismatch."""
        if not self.alg.signs or len(signature) != SIGNATURE_SIZE[self.alg]:
            return False
        try:
            # Not cached on the key: a router keeps one verified key per queue, and a cached
            # OpenSSL key object costs ~360 bytes each, while rebuilding it costs ~1.5 µs.
            obj = self._obj if self._obj is not None else _PUB_CLS[self.alg].from_public_bytes(self.raw)
            obj.verify(signature, data)
            return True
        except (InvalidSignature, ValueError, CryptoError):
            return False


class PrivateKey:
    """A private key (raw seed/scalar bytes) with its algorithm."""

    __slots__ = ("alg", "raw", "_obj", "_pub")

    def __init__(self, alg: KeyAlgorithm, raw: bytes) -> None:
        if len(raw) != KEY_SIZE[alg]:
            raise LocalProtocolError(f"{alg.value} private key must be {KEY_SIZE[alg]} bytes")
        self.alg = alg
        self.raw = bytes(raw)
        self._obj = _PRIV_CLS[alg].from_private_bytes(self.raw)
        self._pub: PublicKey | None = None

    def __repr__(self) -> str:
        return f"PrivateKey({self.alg.value}, …)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and self.alg == other.alg and self.raw == other.raw

    def __hash__(self) -> int:
        return hash((self.alg, self.raw))

    @staticmethod
    def generate(alg: KeyAlgorithm, random_bytes) -> "PrivateKey":  # type: ignore[no-untyped-def]
        """A key from injected randomness (X25519/X448 clamp inside the primitive)."""
        return PrivateKey(alg, random_bytes(KEY_SIZE[alg]))

    def public(self) -> PublicKey:
        if self._pub is None:
            from cryptography.hazmat.primitives import serialization

            raw = self._obj.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            self._pub = PublicKey(self.alg, raw)
        return self._pub

    def pkcs8(self) -> bytes:
        return _PKCS8_PREFIX[self.alg] + self.raw

    @staticmethod
    def from_pkcs8(der: bytes) -> "PrivateKey":
        for alg, prefix in _PKCS8_PREFIX.items():
            if len(der) == len(prefix) + KEY_SIZE[alg] and der.startswith(prefix):
                return PrivateKey(alg, der[len(prefix) :])
        raise ParseError("unsupported or malformed PKCS#8 private key")

    def sign(self, data: bytes) -> bytes:
        if not self.alg.signs:
            raise LocalProtocolError(f"{self.alg.value} keys do not sign")
        return self._obj.sign(data)

    def dh(self, peer: PublicKey) -> bytes:
        """Raw X25519/X448 shared secret (``dh'``)."""
        if self.alg not in (KeyAlgorithm.X25519, KeyAlgorithm.X448) or peer.alg != self.alg:
            raise CryptoError("DH needs two keys of the same X25519/X448 algorithm")
        try:
            return self._obj.exchange(peer._crypto())
        except ValueError as e:  # all-zero output (small-order point)
            raise CryptoError("DH produced an all-zero secret") from e


AUTH_KEY_ALGORITHMS = frozenset({KeyAlgorithm.ED25519, KeyAlgorithm.ED448, KeyAlgorithm.X25519})
"""Algorithms a queue/file authorization key may use (smp.md §4.2)."""


def parse_auth_key(r: Reader) -> PublicKey:
    """A wire ``key`` that must be an authorization key (Ed25519, Ed448 or X25519)."""
    key = PublicKey.parse(r)
    if key.alg not in AUTH_KEY_ALGORITHMS:
        raise ParseError("not an authorization key algorithm")
    return key


def parse_dh_key(r: Reader) -> PublicKey:
    """A wire ``key`` that must be an X25519 DH key."""
    key = PublicKey.parse(r)
    if key.alg is not KeyAlgorithm.X25519:
        raise ParseError("expected an X25519 key")
    return key


def key_pair(alg: KeyAlgorithm, random_bytes) -> tuple[PublicKey, PrivateKey]:  # type: ignore[no-untyped-def]
    priv = PrivateKey.generate(alg, random_bytes)
    return priv.public(), priv


# ---------------------------------------------------------------- X25519 authenticator (§4.2)

AUTHENTICATOR_SIZE = 80


def cb_authenticate(peer_pub: PublicKey, own_priv: PrivateKey, nonce: bytes, data: bytes) -> bytes:
    """``cbAuthenticate``: ``crypto_box(dh(peer, own), cbNonce(nonce), SHA-512(data))``, 80 bytes."""
    return cb_encrypt(own_priv.dh(peer_pub), cb_nonce(nonce), sha512(data))


def cb_verify(peer_pub: PublicKey, own_priv: PrivateKey, nonce: bytes, authenticator: bytes, data: bytes) -> bool:
    """Check an 80-byte authenticator; ``False`` on any mismatch."""
    if len(authenticator) != AUTHENTICATOR_SIZE:
        return False
    try:
        plain = cb_decrypt(own_priv.dh(peer_pub), cb_nonce(nonce), authenticator, padded=False)
    except CryptoError:
        return False
    return hmac.compare_digest(plain, sha512(data))


# ---------------------------------------------------------------- streamed secretbox (agent-crypto.md §7.3, xftp-ntf.md §0)
# The reference's ``Crypto.Lazy`` ``SbState``: one continuous XSalsa20 keystream (after the
# HSalsa20 key step) with Poly1305 over the ciphertext, however the data is chunked.

_lib.crypto_stream_xsalsa20_xor_ic.argtypes = [
    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_char_p
]
_lib.crypto_stream_xsalsa20_xor_ic.restype = ctypes.c_int
_lib.crypto_onetimeauth_poly1305_init.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_lib.crypto_onetimeauth_poly1305_update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulonglong]
_lib.crypto_onetimeauth_poly1305_final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_POLY_STATE_BYTES = int(_lib.crypto_onetimeauth_poly1305_statebytes())

# Large outputs are written straight into a new ``bytes`` object (the C-API idiom
# ``PyBytes_FromStringAndSize(NULL, n)`` then fill, before anything else can see it): one allocation
# and no copy. A ctypes buffer plus ``.raw`` costs a second large allocation and a copy, and the
# allocator churn of such pairs (glibc trims and re-faults the freed pages) tripled the cost of the
# streamed cipher on 1 MiB pieces.
_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_bytes_address = ctypes.pythonapi.PyBytes_AsString
_bytes_address.restype = ctypes.c_void_p
_bytes_address.argtypes = [ctypes.py_object]
_ZERO_BLOCK = bytes(64)


def _readable_address(data) -> tuple[int, object]:  # type: ignore[no-untyped-def]
    """``(address, keep-alive)`` of a bytes-like input, without copying bytes or writable buffers
    (a read-only non-bytes buffer is copied once)."""
    if type(data) is not bytes:
        try:
            arr = (ctypes.c_char * memoryview(data).nbytes).from_buffer(data)
            return ctypes.addressof(arr), arr
        except TypeError:  # read-only buffer (e.g. a memoryview of bytes)
            data = bytes(data)
    return _bytes_address(data), data


def _writable_address(buf) -> tuple[int, object]:  # type: ignore[no-untyped-def]
    """``(address, keep-alive)`` of a writable contiguous byte buffer (bytearray, memoryview of one)."""
    arr = (ctypes.c_char * memoryview(buf).nbytes).from_buffer(buf)
    return ctypes.addressof(arr), arr


def _xsalsa20_xor_raw(out: int, src: int, n: int, key: bytes, nonce: bytes, position: int) -> None:
    """XOR ``n`` bytes at address ``src`` with the XSalsa20 keystream from byte ``position`` on, into
    address ``out`` (``out == src`` is allowed: libsodium's stream XOR works in place)."""
    off = position & 63
    counter = position >> 6
    if off:
        head = min(64 - off, n)
        block = ctypes.create_string_buffer(64)
        _lib.crypto_stream_xsalsa20_xor_ic(block, _ZERO_BLOCK, 64, nonce, counter, key)
        ks = block.raw[off : off + head]
        mixed = int.from_bytes(ctypes.string_at(src, head), "big") ^ int.from_bytes(ks, "big")
        ctypes.memmove(out, mixed.to_bytes(head, "big"), head)
        out, src, n, counter = out + head, src + head, n - head, counter + 1
    if n > 0:
        _lib.crypto_stream_xsalsa20_xor_ic(out, src, n, nonce, counter, key)


def xsalsa20_xor_ic(key: bytes, nonce: bytes, block_counter: int, data: bytes) -> bytes:
    """libsodium ``crypto_stream_xsalsa20_xor_ic``: ``data`` XOR the keystream from 64-byte block
    ``block_counter`` on (no HSalsa20 pre-step here: pass ``box_key(secret)`` for the reference's)."""
    if len(key) != 32 or len(nonce) != NONCE_SIZE:
        raise LocalProtocolError("xsalsa20 needs a 32-byte key and a 24-byte nonce")
    n = memoryview(data).nbytes
    if n < 2:  # 0 and 1-byte bytes objects may be shared singletons: never fill those
        return bytes(a ^ b for a, b in zip(bytes(data), xsalsa20_xor_ic(key, nonce, block_counter, bytes(2))))
    src, keep = _readable_address(data)
    out = _new_bytes(None, n)
    _xsalsa20_xor_raw(_bytes_address(out), src, n, key, nonce, block_counter << 6)
    del keep
    return out  # type: ignore[no-any-return]


def xsalsa20_xor_ic_in_place(key: bytes, nonce: bytes, position: int, buf) -> None:  # type: ignore[no-untyped-def]
    """XOR a writable buffer (bytearray or a memoryview of one) in place with the XSalsa20 keystream
    starting at byte ``position`` of the stream (any alignment)."""
    if len(key) != 32 or len(nonce) != NONCE_SIZE:
        raise LocalProtocolError("xsalsa20 needs a 32-byte key and a 24-byte nonce")
    n = memoryview(buf).nbytes
    if n:
        addr, keep = _writable_address(buf)
        _xsalsa20_xor_raw(addr, addr, n, key, nonce, position)
        del keep


class Poly1305Stream:
    """Incremental Poly1305 (libsodium ``crypto_onetimeauth_poly1305_init/update/final``)."""

    __slots__ = ("_raw", "_state", "_done")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise LocalProtocolError("poly1305 needs a 32-byte key")
        # the state must be 16-byte aligned (CRYPTO_ALIGN(16))
        self._raw = ctypes.create_string_buffer(_POLY_STATE_BYTES + 16)
        addr = ctypes.addressof(self._raw)
        self._state = ctypes.c_void_p(addr + (-addr % 16))
        self._done = False
        _lib.crypto_onetimeauth_poly1305_init(self._state, key)

    def update(self, data: bytes) -> None:
        """Absorb ``data`` (any bytes-like object; bytes and writable buffers are not copied)."""
        if self._done:
            raise LocalProtocolError("poly1305 already finalized")
        n = memoryview(data).nbytes
        if n:
            addr, keep = _readable_address(data)
            _lib.crypto_onetimeauth_poly1305_update(self._state, addr, n)
            del keep

    def final(self) -> bytes:
        if self._done:
            raise LocalProtocolError("poly1305 already finalized")
        self._done = True
        out = ctypes.create_string_buffer(16)
        _lib.crypto_onetimeauth_poly1305_final(self._state, out)
        return out.raw


class SecretBoxStream:
    """The reference's streamed secretbox state (``LC.sbInit``/``cbInit``, ``sbEncryptChunk``,
    ``sbDecryptChunk``, ``sbAuth``; agent-crypto.md §7.3).

    ``secret`` is the 32-byte SbKey or raw X25519 secret; the stream key is
    ``HSalsa20(secret, 0¹⁶)``. The first 32 keystream bytes key Poly1305, the data is XORed with
    the following keystream, and the tag covers the ciphertext. Chunk boundaries do not matter.

    :meth:`encrypt_in_place`/:meth:`decrypt_in_place` do the same on a writable buffer without
    allocating (the bulk data path of XFTP, xftp-ntf.md §1.10).
    """

    __slots__ = ("_key", "_nonce", "_pos", "_poly")

    def __init__(self, secret: bytes, nonce: bytes) -> None:
        if len(secret) != 32 or len(nonce) != NONCE_SIZE:
            raise LocalProtocolError("secretbox stream needs a 32-byte secret and a 24-byte nonce")
        self._key = box_key(secret)
        self._nonce = bytes(nonce)
        self._poly = Poly1305Stream(xsalsa20_xor_ic(self._key, self._nonce, 0, bytes(32)))
        self._pos = 32  # keystream offset of the next data byte

    def _xor(self, data: bytes) -> bytes:
        n = memoryview(data).nbytes
        if n == 0:
            return b""
        if n < 2:
            out = bytearray(data)
            xsalsa20_xor_ic_in_place(self._key, self._nonce, self._pos, out)
            self._pos += n
            return bytes(out)
        src, keep = _readable_address(data)
        out = _new_bytes(None, n)
        _xsalsa20_xor_raw(_bytes_address(out), src, n, self._key, self._nonce, self._pos)
        del keep
        self._pos += n
        return out  # type: ignore[no-any-return]

    def encrypt(self, chunk: bytes) -> bytes:
        """``sbEncryptChunk``: ciphertext of ``chunk`` (the tag absorbs it)."""
        out = self._xor(chunk)
        self._poly.update(out)
        return out

    def decrypt(self, chunk: bytes) -> bytes:
        """``sbDecryptChunk``: plaintext of ``chunk`` (the tag absorbs the ciphertext)."""
        self._poly.update(chunk)
        return self._xor(chunk)

    def encrypt_in_place(self, buf) -> None:  # type: ignore[no-untyped-def]
        """:meth:`encrypt` of a writable buffer (bytearray or a memoryview of one), in place."""
        xsalsa20_xor_ic_in_place(self._key, self._nonce, self._pos, buf)
        self._pos += memoryview(buf).nbytes
        self._poly.update(buf)

    def decrypt_in_place(self, buf) -> None:  # type: ignore[no-untyped-def]
        """:meth:`decrypt` of a writable buffer (bytearray or a memoryview of one), in place."""
        self._poly.update(buf)
        xsalsa20_xor_ic_in_place(self._key, self._nonce, self._pos, buf)
        self._pos += memoryview(buf).nbytes

    def tag(self) -> bytes:
        """``sbAuth``: the 16-byte Poly1305 tag over all ciphertext so far (call once)."""
        return self._poly.final()


# ---------------------------------------------------------------- AES-GCM (agent-crypto.md §5.7)
# The double ratchet uses AES-256-GCM with 16-byte IVs (J0 = GHASH of the IV, as for any IV that
# is not 96 bits) and puts the 16-byte tag *before* the ciphertext on the wire. ``cryptography``'s
# AESGCM accepts such IVs and computes the same J0; it returns ``ct ‖ tag``, which we split.

from cryptography.exceptions import InvalidTag  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402


def aes_gcm_encrypt(key: bytes, iv: bytes, ad: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
    """AES-GCM seal → ``(tag16, ciphertext)`` (reference ``aeadSimpleEncrypt``; no padding here)."""
    if len(key) not in (16, 24, 32) or not 8 <= len(iv) <= 128:
        raise LocalProtocolError("AES-GCM needs a 16/24/32-byte key and an 8..128-byte IV")
    out = AESGCM(key).encrypt(iv, plaintext, ad)
    return out[-TAG_SIZE:], out[:-TAG_SIZE]


def aes_gcm_decrypt(key: bytes, iv: bytes, ad: bytes, ciphertext: bytes, tag: bytes) -> bytes:
    """AES-GCM open; any mismatch is a :class:`CryptoError` (reference ``AESDecryptError``)."""
    if len(key) not in (16, 24, 32) or not 8 <= len(iv) <= 128:
        raise LocalProtocolError("AES-GCM needs a 16/24/32-byte key and an 8..128-byte IV")
    if len(tag) != TAG_SIZE:
        raise CryptoError("AES-GCM: the tag must be 16 bytes")
    try:
        return AESGCM(key).decrypt(iv, bytes(ciphertext) + bytes(tag), ad)
    except InvalidTag as e:
        raise CryptoError("AES-GCM: authentication failed") from e
