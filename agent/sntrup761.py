"""Streamlined NTRU Prime sntrup761 (NIST round 3) as a pure module with injected randomness.

This is the KEM the SimpleX double ratchet uses for its post-quantum step (agent-crypto.md §5.8, §6):
the construction of ``cbits/sntrup761.c`` (supercop-20201130 ``crypto_kem/sntrup761/ref``), which is
byte-identical to PQClean's ``crypto_kem/sntrup761``.

* Parameters: p = 761, q = 4591, w = 286; pk 1158, sk 1763, ct 1039, shared secret 32 bytes.
* ``Hash_b(x) = SHA-512(b ‖ x)[0:32]``; confirmation ``Hash2(Hash3(r_enc) ‖ Hash4(pk))``; session key
  ``Hash1(Hash3(r_enc) ‖ ct)``; implicit rejection ``Hash0(Hash3(rho) ‖ ct)``.
* sk layout: ``f(191) ‖ 1/g(191) ‖ pk(1158) ‖ rho(191) ‖ Hash4(pk)(32)``.

Randomness is always a parameter: ``random_bytes(n) -> bytes``. It is drawn exactly as PQClean does
(agent-crypto.md §6 "Randomness"): one ``random_bytes(4*761)`` per ``Small_random`` (g, repeated while g is
not invertible in R/3) and per ``Short_random`` (f in key generation, r in encapsulation), read as
little-endian 32-bit words, then one ``random_bytes(191)`` for ``rho``. As a byte stream this equals the
reference's 4-bytes-per-call callback.

Arithmetic is done with big-integer Kronecker substitution (polynomials packed into Python ints, one
multiplication, reduction mod x^761 - x - 1 with shifts and masks). Inversions in R/3 and R/q use
Bernstein–Yang divsteps, split recursively ("jumpdivsteps") so that most work is Kronecker products.
Nothing here is constant-time; it is a correct, deterministic reference, not a side-channel-hardened one.

An optional native backend (PyPI ``pqcrypto``, module ``pqcrypto.kem.sntrup_761``) can be selected with
``use_backend("native")``. Because the C code cannot take injected randomness, it only replaces
:func:`decapsulate`; :func:`keypair` and :func:`encapsulate` always run the pure code.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import sys
from array import array
from collections.abc import Callable
from typing import Any

__all__ = [
    "CIPHERTEXT_SIZE",
    "PUBLIC_KEY_SIZE",
    "SECRET_KEY_SIZE",
    "SHARED_SECRET_SIZE",
    "SntrupError",
    "available_backends",
    "backend",
    "decapsulate",
    "encapsulate",
    "keypair",
    "use_backend",
]

RandomBytes = Callable[[int], bytes]

# --- parameters (agent-crypto.md §6 "Variant") ------------------------------------------------------

P = 761
Q = 4591
W = 286
Q12 = (Q - 1) // 2  # 2295

SMALL_BYTES = (P + 3) // 4  # 191
RQ_BYTES = 1158
ROUNDED_BYTES = 1007
HASH_BYTES = 32
INPUTS_BYTES = SMALL_BYTES

PUBLIC_KEY_SIZE = RQ_BYTES  # 1158
CIPHERTEXT_SIZE = ROUNDED_BYTES + HASH_BYTES  # 1039
SECRET_KEY_SIZE = 2 * SMALL_BYTES + PUBLIC_KEY_SIZE + INPUTS_BYTES + HASH_BYTES  # 1763
SHARED_SECRET_SIZE = HASH_BYTES  # 32

_RANDOM_WORDS_BYTES = 4 * P  # one Small_random / Short_random draw


class SntrupError(ValueError):
    """Invalid input to sntrup761 (wrong key/ciphertext length, short randomness, unknown backend)."""


# --- packing helpers (Kronecker substitution) -------------------------------------------------------

_BIG_ENDIAN_HOST = sys.byteorder == "big"
_SLOT_BITS = {"B": 8, "H": 16, "I": 32, "Q": 64}
for _tc, _bits in _SLOT_BITS.items():  # pragma: no cover - platform sanity
    if array(_tc).itemsize * 8 != _bits:
        raise ImportError(f"array typecode {_tc!r} is not {_bits} bits on this platform")
_SIGNED = {"B": "b", "H": "h", "I": "i", "Q": "q"}


def _ones(n: int, bits: int) -> int:
    """The integer with 1 in each of ``n`` slots of ``bits`` bits."""
    return ((1 << (n * bits)) - 1) // ((1 << bits) - 1)


def _pack(values: Any, tc: str) -> int:
    """Pack non-negative slot values (each < 2**bits) into an int, slot 0 least significant."""
    arr = array(tc, values)
    if _BIG_ENDIAN_HOST:  # pragma: no cover
        arr.byteswap()
    return int.from_bytes(arr.tobytes(), "little")


def _pack_signed(values: Any, tc: str, ones: int) -> int:
    """Pack signed slot values: returns sum(v_i * 2**(bits*i)) for |v_i| < 2**(bits-1)."""
    bits = _SLOT_BITS[tc]
    arr = array(_SIGNED[tc], values)
    if _BIG_ENDIAN_HOST:  # pragma: no cover
        arr.byteswap()
    u = int.from_bytes(arr.tobytes(), "little")
    neg = (u >> (bits - 1)) & ones
    return u - (neg << bits)


def _unpack(x: int, n: int, tc: str) -> array:
    """The first ``n`` slots of a non-negative packed int, as an array of ints."""
    bits = _SLOT_BITS[tc]
    arr = array(tc)
    arr.frombytes((x & ((1 << (n * bits)) - 1)).to_bytes(n * bits // 8, "little"))
    if _BIG_ENDIAN_HOST:  # pragma: no cover
        arr.byteswap()
    return arr


def _typecode_for(bound: int) -> str:
    """Smallest slot type whose (unsigned) range holds ``bound``."""
    if bound < 1 << 8:
        return "B"
    if bound < 1 << 16:
        return "H"
    if bound < 1 << 32:
        return "I"
    if bound < 1 << 64:
        return "Q"
    raise AssertionError("slot bound too large")  # pragma: no cover


# --- ring products mod (x^p - x - 1) ------------------------------------------------------------------
#
# A product of two degree < p polynomials has 2p - 1 coefficients. With c = lo + x^p * hi,
# x^p = x + 1 gives c ≡ lo + hi + x * hi (deg hi ≤ p - 2, so no second reduction).
# Signed slot values are made non-negative by adding a bias (a multiple of the modulus) in every slot.

# Rq × small: slot 32 bits; |coefficient| ≤ 761 * 4590 before reduction, ≤ 3x that after.
_RQ_TC = "I"
_RQ_BITS = 32
_RQ_BIAS_SLOT = Q * ((1 << 30) // Q)
_RQ_BIAS = _RQ_BIAS_SLOT * _ones(2 * P - 1, _RQ_BITS)
_RQ_ONES = _ones(P, _RQ_BITS)
_RQ_LOMASK = (1 << (P * _RQ_BITS)) - 1

# R3 × small: slot 16 bits; |coefficient| ≤ 761 before reduction.
_R3_TC = "H"
_R3_BITS = 16
_R3_BIAS_SLOT = 3 * 5000
_R3_BIAS = _R3_BIAS_SLOT * _ones(2 * P - 1, _R3_BITS)
_R3_ONES = _ones(P, _R3_BITS)
_R3_LOMASK = (1 << (P * _R3_BITS)) - 1
_R3_CENTER = [(0, 1, -1)[v % 3] for v in range(1 << 16)]

assert 3 * (_RQ_BIAS_SLOT + P * (Q - 1)) < 1 << _RQ_BITS
assert 3 * (_R3_BIAS_SLOT + P) < 1 << _R3_BITS


def _rq_mul_small_slots(a: list[int], small: list[int]) -> array:
    """Slots of ``a * small`` in R = Z[x]/(x^p - x - 1), each congruent mod q to the true coefficient.

    ``a`` has entries in [0, q) (or any |a_i| < q: it is reduced), ``small`` entries in {-1, 0, 1}
    (agent-crypto.md §6; ``Rq_mult_small``). Callers reduce the slots mod q.
    """
    ax = _pack([v % Q for v in a], _RQ_TC)
    sx = _pack_signed(small, _RQ_TC, _RQ_ONES)
    c = ax * sx + _RQ_BIAS
    hi = c >> (P * _RQ_BITS)
    return _unpack((c & _RQ_LOMASK) + hi + (hi << _RQ_BITS), P, _RQ_TC)


def _rq_mul_small(a: list[int], small: list[int]) -> list[int]:
    """``a * small`` in R/q, centered coefficients in [-(q-1)/2, (q-1)/2]."""
    return [(v + Q12) % Q - Q12 for v in _rq_mul_small_slots(a, small)]


def _r3_mul(a: list[int], b: list[int]) -> list[int]:
    """``a * b`` in R/3 for a, b with entries in {-1, 0, 1}; result entries in {-1, 0, 1}."""
    ax = _pack_signed(a, _R3_TC, _R3_ONES)
    bx = _pack_signed(b, _R3_TC, _R3_ONES)
    c = ax * bx + _R3_BIAS
    hi = c >> (P * _R3_BITS)
    center = _R3_CENTER
    return [center[v] for v in _unpack((c & _R3_LOMASK) + hi + (hi << _R3_BITS), P, _R3_TC)]


# --- inversion: recursive Bernstein–Yang divsteps -----------------------------------------------------
#
# divstep(δ, f, g), with f(0) ≠ 0, over Z/m (m prime):
#   if δ > 0 and g(0) ≠ 0: (1 - δ, g, (g(0) f - f(0) g) / x)
#   else:                  (1 + δ, f, (f(0) g - g(0) f) / x)
# The transition of n steps is a 2x2 matrix M of polynomials of degree ≤ n with
# (x^n f_n, x^n g_n) = M (f, g); it depends only on f, g mod x^n. Starting from f = reverse of
# x^p - x - 1, g = reverse of a, δ = 1, after 2p - 1 steps δ = 0 iff a is invertible, and then
# 1/a = f_N(0)^-1 * reverse(M[0][1]) (coefficient k of 1/a is M[0][1][p - k]).

# divsteps done one at a time below this size (tuned: slot growth is much faster for m = q)
_JUMP_BASE = {3: 32}
_JUMP_BASE_DEFAULT = 16

Matrix = tuple[list[int], list[int], list[int], list[int]]


def _jump_base(n: int, delta: int, f: list[int], g: list[int], m: int) -> tuple[int, Matrix]:
    """``n`` divsteps one at a time (small n), on packed ints whose slots are reduced only at the end.

    Each step replaces ``g0*f - f0*g`` by the congruent, non-negative ``g0*f + (m - f0)*g``, so slot
    values grow by a factor < 2m per step; the slot width is chosen so that they never overflow.
    """
    words = ((m - 1) * (2 * m - 1) ** n).bit_length() // 64 + 1
    bits = 64 * words
    slot = (1 << bits) - 1
    fx = _pack_wide(f[:n], words)
    gx = _pack_wide(g[:n], words)
    u, v, r, s = 1, 0, 0, 1
    for _ in range(n):
        f0 = (fx & slot) % m
        g0 = (gx & slot) % m
        if g0 == 0:
            delta += 1
            gx >>= bits
            u <<= bits
            v <<= bits
        elif delta > 0:
            delta = 1 - delta
            mf = m - f0
            fx, gx = gx, (g0 * fx + mf * gx) >> bits
            u, v, r, s = r << bits, s << bits, g0 * u + mf * r, g0 * v + mf * s
        else:
            delta += 1
            mg = m - g0
            gx = (f0 * gx + mg * fx) >> bits
            r = f0 * r + mg * u
            s = f0 * s + mg * v
            u <<= bits
            v <<= bits
    return delta, tuple(_unpack_wide(e, n + 1, words, m) for e in (u, v, r, s))  # type: ignore[return-value]


def _pack_wide(values: list[int], words: int) -> int:
    """Pack values in [0, 2**64) into slots of ``64 * words`` bits."""
    if words == 1:
        return _pack(values, "Q")
    padded = []
    zeros = [0] * (words - 1)
    for x in values:
        padded.append(x)
        padded.extend(zeros)
    return _pack(padded, "Q")


def _unpack_wide(x: int, n: int, words: int, m: int) -> list[int]:
    """The first ``n`` slots (``64 * words`` bits each) of ``x``, reduced mod m."""
    if words == 1:
        return [v % m for v in _unpack(x, n, "Q")]
    size = 8 * words
    data = (x & ((1 << (n * 8 * size)) - 1)).to_bytes(n * size, "little")
    return [int.from_bytes(data[i : i + size], "little") % m for i in range(0, n * size, size)]


def _mod_slots(x: int, lo: int, width: int, tc: str, m: int) -> list[int]:
    """Slots ``lo..lo+width-1`` of a non-negative packed int, reduced mod m."""
    return [v % m for v in _unpack(x >> (lo * _SLOT_BITS[tc]), width, tc)]


def _jump(n: int, delta: int, f: list[int], g: list[int], m: int, row0_only: bool = False) -> tuple[int, Matrix]:
    """``n`` divsteps from (δ, f, g) (only f, g mod x^n matter): returns (δ_n, M_n).

    With ``row0_only`` the second row of M_n is left empty (the inversion needs only M[0][1]).
    """
    if n <= _JUMP_BASE.get(m, _JUMP_BASE_DEFAULT):
        return _jump_base(n, delta, f, g, m)
    n1 = n // 2
    n2 = n - n1
    tc = _typecode_for(2 * (n2 + 1) * (m - 1) * (m - 1))
    delta, m1 = _jump(n1, delta, f, g, m)
    u1, v1, r1, s1 = (_pack(e, tc) for e in m1)
    fn = _pack(f[:n], tc)
    gn = _pack(g[:n], tc)
    f1 = _mod_slots(u1 * fn + v1 * gn, n1, n2, tc, m)
    g1 = _mod_slots(r1 * fn + s1 * gn, n1, n2, tc, m)
    delta, m2 = _jump(n2, delta, f1, g1, m, row0_only)
    u2 = _pack(m2[0], tc)
    v2 = _pack(m2[1], tc)
    u = _mod_slots(u2 * u1 + v2 * r1, 0, n + 1, tc, m)
    v = _mod_slots(u2 * v1 + v2 * s1, 0, n + 1, tc, m)
    if row0_only:
        return delta, (u, v, [], [])
    r2 = _pack(m2[2], tc)
    s2 = _pack(m2[3], tc)
    return delta, (
        u,
        v,
        _mod_slots(r2 * u1 + s2 * r1, 0, n + 1, tc, m),
        _mod_slots(r2 * v1 + s2 * s1, 0, n + 1, tc, m),
    )


def _recip(a: list[int], m: int) -> list[int] | None:
    """Inverse of ``a`` (p coefficients in [0, m)) in Z/m[x]/(x^p - x - 1), or None if not invertible.

    Used as ``R3_recip`` (m = 3) and for ``Rq_recip3`` (m = q) (agent-crypto.md §6). Runs 2p - 1
    divsteps on f = reverse(x^p - x - 1) = 1 - x^(p-1) - x^p and g = reverse(a), starting at δ = 1.
    """
    steps = 2 * P - 1
    n1 = steps // 2
    n2 = steps - n1
    f = [1] + [0] * (P - 2) + [m - 1, m - 1]
    g = a[::-1]
    delta, m1 = _jump(n1, 1, f, g, m)
    tc = _typecode_for(2 * (n2 + 1) * (m - 1) * (m - 1))
    bits = _SLOT_BITS[tc]
    u1, v1, r1, s1 = (_pack(e, tc) for e in m1)
    gx = _pack(g, tc)
    # f is sparse: e * f = e + (m - 1) * (x^(p-1) e + x^p e)
    u1f = u1 + (m - 1) * ((u1 << ((P - 1) * bits)) + (u1 << (P * bits)))
    r1f = r1 + (m - 1) * ((r1 << ((P - 1) * bits)) + (r1 << (P * bits)))
    f1 = _mod_slots(u1f + v1 * gx, n1, n2, tc, m)
    g1 = _mod_slots(r1f + s1 * gx, n1, n2, tc, m)
    delta, (u2, v2, _, _) = _jump(n2, delta, f1, g1, m, row0_only=True)
    if delta != 0:
        return None
    # f_N(0) = coefficient n2 of u2*f1 + v2*g1 (u2[0] = v2[0] = 0: row 0 is always a multiple of x)
    fn0 = sum(x * y for x, y in zip(u2[1:], f1[n2 - 1 :: -1])) + sum(x * y for x, y in zip(v2[1:], g1[n2 - 1 :: -1]))
    fn0 %= m
    if fn0 == 0:  # pragma: no cover - cannot happen when δ = 0
        return None
    scale = pow(fn0, -1, m)
    v = _mod_slots(_pack(u2, tc) * v1 + _pack(v2, tc) * s1, 1, P, tc, m)  # M[0][1], coefficients 1..p
    return [(scale * x) % m for x in reversed(v)]


# --- encodings (agent-crypto.md §6: Rq_encode / Rounded_encode / Small_encode) ----------------------


class _Codec:
    """The reference's mixed-radix ``Encode``/``Decode`` for a fixed list of moduli (all equal)."""

    def __init__(self, n: int, modulus: int) -> None:
        self.levels: list[tuple[list[int], list[int]]] = []  # per level: M list, bytes per pair
        ms = [modulus] * n
        while len(ms) > 1:
            nbytes: list[int] = []
            ms2: list[int] = []
            for i in range(0, len(ms) - 1, 2):
                m = ms[i] * ms[i + 1]
                if m > 256 * 16383:
                    nbytes.append(2)
                    ms2.append((((m + 255) >> 8) + 255) >> 8)
                elif m >= 16384:
                    nbytes.append(1)
                    ms2.append((m + 255) >> 8)
                else:
                    nbytes.append(0)
                    ms2.append(m)
            if len(ms) % 2:
                ms2.append(ms[-1])
            self.levels.append((ms, nbytes))
            ms = ms2
        self.top = ms[0]
        self.top_bytes = 0 if self.top == 1 else (1 if self.top <= 256 else 2)
        self.size = sum(sum(nb) for _, nb in self.levels) + self.top_bytes

    def encode(self, values: list[int]) -> bytes:
        """Encode slot values (each in [0, modulus))."""
        out: list[bytes] = []
        rs = values
        for ms, nbytes in self.levels:
            npairs = len(nbytes)
            # all pairs share (m0, m1, nbytes) except possibly the last one
            m0 = ms[0]
            uniform = npairs - 1 if (ms[2 * npairs - 2] != m0 or ms[2 * npairs - 1] != ms[1]) else npairs
            combined = [a + b * m0 for a, b in zip(rs[0 : 2 * uniform : 2], rs[1 : 2 * uniform : 2])]
            k = nbytes[0] if uniform else 0
            if k:
                out.append(_low_bytes(combined, k))
                combined = [x >> (8 * k) for x in combined]
            for i in range(uniform, npairs):
                x = rs[2 * i] + rs[2 * i + 1] * ms[2 * i]
                kk = nbytes[i]
                out.append((x & ((1 << (8 * kk)) - 1)).to_bytes(kk, "little"))
                combined.append(x >> (8 * kk))
            if len(rs) % 2:
                combined.append(rs[-1])
            rs = combined
        if self.top_bytes:
            out.append(rs[0].to_bytes(self.top_bytes, "little"))
        return b"".join(out)

    def decode(self, data: bytes) -> list[int]:
        """Decode ``self.size`` bytes to slot values (invalid encodings are reduced as the reference does)."""
        offsets = []
        pos = 0
        for _, nbytes in self.levels:
            offsets.append(pos)
            pos += sum(nbytes)
        if self.top_bytes == 0:
            rs = [0]
        elif self.top_bytes == 1:
            rs = [data[pos] % self.top]
        else:
            rs = [(data[pos] + (data[pos + 1] << 8)) % self.top]
        for (ms, nbytes), off in zip(reversed(self.levels), reversed(offsets)):
            npairs = len(nbytes)
            m0 = ms[0]
            m1 = ms[1]
            uniform = npairs - 1 if (ms[2 * npairs - 2] != m0 or ms[2 * npairs - 1] != m1) else npairs
            k = nbytes[0] if uniform else 0
            if k:
                bottoms = _read_low(data, off, uniform, k)
                t = 1 << (8 * k)
                combined = [b + t * x for b, x in zip(bottoms, rs)]
            else:
                combined = rs[:uniform]
            out = [0] * len(ms)
            out[0 : 2 * uniform : 2] = [x % m0 for x in combined]
            out[1 : 2 * uniform : 2] = [(x // m0) % m1 for x in combined]
            pos = off + uniform * k
            for i in range(uniform, npairs):
                kk = nbytes[i]
                x = int.from_bytes(data[pos : pos + kk], "little") + (rs[i] << (8 * kk))
                pos += kk
                out[2 * i] = x % ms[2 * i]
                out[2 * i + 1] = (x // ms[2 * i]) % ms[2 * i + 1]
            if len(ms) % 2:
                out[-1] = rs[npairs]
            rs = out
        return rs


def _low_bytes(values: list[int], k: int) -> bytes:
    """The low ``k`` (1 or 2) bytes of each value, little-endian, concatenated."""
    if k == 1:
        return bytes([x & 0xFF for x in values])
    arr = array("H", [x & 0xFFFF for x in values])
    if _BIG_ENDIAN_HOST:  # pragma: no cover
        arr.byteswap()
    return arr.tobytes()


def _read_low(data: bytes, off: int, n: int, k: int) -> list[int]:
    """``n`` little-endian ``k``-byte values from ``data[off:]``."""
    if k == 1:
        return list(data[off : off + n])
    arr = array("H")
    arr.frombytes(data[off : off + 2 * n])
    if _BIG_ENDIAN_HOST:  # pragma: no cover
        arr.byteswap()
    return arr.tolist()


_RQ_CODEC = _Codec(P, Q)
_ROUNDED_CODEC = _Codec(P, (Q + 2) // 3)
assert _RQ_CODEC.size == RQ_BYTES and _ROUNDED_CODEC.size == ROUNDED_BYTES


def _rq_encode(a: list[int]) -> bytes:
    """``Rq_encode``: centered coefficients → 1158 bytes."""
    return _RQ_CODEC.encode([x + Q12 for x in a])


def _rq_decode(data: bytes) -> list[int]:
    """``Rq_decode``: 1158 bytes → centered coefficients."""
    return [x - Q12 for x in _RQ_CODEC.decode(data)]


def _rounded_decode(data: bytes) -> list[int]:
    """``Rounded_decode``: 1007 bytes → coefficients in 3Z ∩ [-(q-1)/2, (q-1)/2]."""
    return [3 * x - Q12 for x in _ROUNDED_CODEC.decode(data)]


def _small_encode(a: list[int]) -> bytes:
    """``Small_encode``: 4 coefficients (+1, 2 bits each) per byte, the last byte holds one."""
    b = [x + 1 for x in a] + [0, 0, 0]
    return bytes([b[i] | (b[i + 1] << 2) | (b[i + 2] << 4) | (b[i + 3] << 6) for i in range(0, P, 4)])


_SMALL_DECODE_TABLE = [((x & 3) - 1, ((x >> 2) & 3) - 1, ((x >> 4) & 3) - 1, ((x >> 6) & 3) - 1) for x in range(256)]


def _small_decode(data: bytes) -> list[int]:
    """``Small_decode``: 191 bytes → coefficients in {-1, 0, 1} (the last byte gives one coefficient)."""
    table = _SMALL_DECODE_TABLE
    out = [c for x in data[: SMALL_BYTES - 1] for c in table[x]]
    out.append((data[SMALL_BYTES - 1] & 3) - 1)
    return out


# --- randomness (agent-crypto.md §6 "Randomness") ----------------------------------------------------


def _draw(random_bytes: RandomBytes, n: int) -> bytes:
    data = bytes(random_bytes(n))
    if len(data) != n:
        raise SntrupError(f"random_bytes({n}) returned {len(data)} bytes")
    return data


_WORDS = struct.Struct(f"<{P}I")


def _small_random(random_bytes: RandomBytes) -> list[int]:
    """``Small_random``: each coefficient from a little-endian u32: ((u & 0x3fffffff) * 3 >> 30) - 1."""
    return [(((u & 0x3FFFFFFF) * 3) >> 30) - 1 for u in _WORDS.unpack(_draw(random_bytes, _RANDOM_WORDS_BYTES))]


def _short_from_list(words: tuple[int, ...] | list[int]) -> list[int]:
    """``Short_fromlist``: weight-w ternary polynomial from 761 u32 by sorting tagged words."""
    tagged = [u & 0xFFFFFFFE for u in words[:W]]
    tagged += [(u & 0xFFFFFFFC) | 1 for u in words[W:]]
    tagged.sort()
    return [(u & 3) - 1 for u in tagged]


def _short_random(random_bytes: RandomBytes) -> list[int]:
    """``Short_random``: 761 little-endian u32 from one ``random_bytes(3044)``."""
    return _short_from_list(_WORDS.unpack(_draw(random_bytes, _RANDOM_WORDS_BYTES)))


# --- hashing ------------------------------------------------------------------------------------------


def _hash(prefix: int, data: bytes) -> bytes:
    """``Hash_b(x) = SHA-512(b ‖ x)[0:32]`` (agent-crypto.md §6)."""
    return hashlib.sha512(bytes((prefix,)) + data).digest()[:HASH_BYTES]


# --- core scheme --------------------------------------------------------------------------------------

# F3_freeze(Fq_freeze(3 * x)) for x in [0, q): used for R3_fromRq(Rq_mult3(c * f)).
_MULT3_TO_R3 = [(0, 1, -1)[((3 * x + Q12) % Q - Q12) % 3] for x in range(Q)]
# (Round(x) + (q-1)/2) / 3 for x in [0, q), x taken centered: the Rounded_encode slot of Round(x).
_ROUND_SLOT = [(((x + Q12) % Q - Q12) - (0, 1, -1)[((x + Q12) % Q - Q12) % 3] + Q12) // 3 for x in range(Q)]


def _keygen_core(random_bytes: RandomBytes) -> tuple[list[int], list[int], list[int]]:
    """``KeyGen``: returns (h, f, 1/g) with h = g / (3f) in R/q."""
    while True:
        g = _small_random(random_bytes)
        ginv = _recip([x % 3 for x in g], 3)
        if ginv is not None:
            break
    f = _short_random(random_bytes)
    finv3 = _recip([(3 * x) % Q for x in f], Q)
    assert finv3 is not None  # R/q is a field and 3f ≠ 0
    h = _rq_mul_small(finv3, g)
    return h, f, [(0, 1, -1)[x] for x in ginv]


def _encrypt_encode(r: list[int], h: list[int]) -> bytes:
    """``Rounded_encode(Round(h * r))`` (1007 bytes)."""
    table = _ROUND_SLOT
    return _ROUNDED_CODEC.encode([table[v % Q] for v in _rq_mul_small_slots(h, r)])


def _hide(r: list[int], pk: bytes, cache: bytes) -> tuple[bytes, bytes]:
    """``Hide``: returns (r_enc, ciphertext) for short r under pk (cache = Hash4(pk))."""
    r_enc = _small_encode(r)
    c = _encrypt_encode(r, _rq_decode(pk))
    confirm = _hash(2, _hash(3, r_enc) + cache)
    return r_enc, c + confirm


def _decrypt(c: bytes, f: list[int], ginv: list[int]) -> list[int]:
    """``Decrypt``: r from the rounded part of a ciphertext; (1,..,1,0,..,0) if the weight is not w."""
    cpoly = _rounded_decode(c)
    table = _MULT3_TO_R3
    e = [table[v % Q] for v in _rq_mul_small_slots(cpoly, f)]
    ev = _r3_mul(e, ginv)
    if P - ev.count(0) == W:
        return ev
    return [1] * W + [0] * (P - W)


# --- public API ---------------------------------------------------------------------------------------


def keypair(random_bytes: RandomBytes) -> tuple[bytes, bytes]:
    """Generate (public key 1158 bytes, secret key 1763 bytes) from injected randomness (§6)."""
    h, f, ginv = _keygen_core(random_bytes)
    pk = _rq_encode(h)
    rho = _draw(random_bytes, INPUTS_BYTES)
    sk = _small_encode(f) + _small_encode(ginv) + pk + rho + _hash(4, pk)
    return pk, sk


def encapsulate(public_key: bytes, random_bytes: RandomBytes) -> tuple[bytes, bytes]:
    """Encapsulate to ``public_key``: returns (ciphertext 1039 bytes, shared secret 32 bytes) (§6)."""
    public_key = _check(public_key, PUBLIC_KEY_SIZE, "public key")
    r = _short_random(random_bytes)
    r_enc, ct = _hide(r, public_key, _hash(4, public_key))
    return ct, _hash(1, _hash(3, r_enc) + ct)


def _decapsulate_pure(ciphertext: bytes, secret_key: bytes) -> bytes:
    f = _small_decode(secret_key[:SMALL_BYTES])
    ginv = _small_decode(secret_key[SMALL_BYTES : 2 * SMALL_BYTES])
    pk = secret_key[2 * SMALL_BYTES : 2 * SMALL_BYTES + PUBLIC_KEY_SIZE]
    rho = secret_key[2 * SMALL_BYTES + PUBLIC_KEY_SIZE : SECRET_KEY_SIZE - HASH_BYTES]
    cache = secret_key[SECRET_KEY_SIZE - HASH_BYTES :]
    r = _decrypt(ciphertext[:ROUNDED_BYTES], f, ginv)
    r_enc, cnew = _hide(r, pk, cache)
    if hmac.compare_digest(cnew, ciphertext):
        return _hash(1, _hash(3, r_enc) + ciphertext)
    return _hash(0, _hash(3, rho) + ciphertext)


def decapsulate(ciphertext: bytes, secret_key: bytes) -> bytes:
    """Decapsulate: the 32-byte shared secret; a bad ciphertext gives the implicit-rejection key (§6)."""
    ciphertext = _check(ciphertext, CIPHERTEXT_SIZE, "ciphertext")
    secret_key = _check(secret_key, SECRET_KEY_SIZE, "secret key")
    if _backend == "native":
        return bytes(_native_module().decaps(secret_key, ciphertext))
    return _decapsulate_pure(ciphertext, secret_key)


def _check(data: Any, size: int, what: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SntrupError(f"{what} must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) != size:
        raise SntrupError(f"{what} must be {size} bytes, got {len(data)}")
    return data


# --- backend selection --------------------------------------------------------------------------------

_backend = "pure"
_native: Any = None


def _native_module() -> Any:
    global _native
    if _native is None:
        try:
            from pqcrypto.kem import sntrup_761  # type: ignore[import-not-found,import-untyped]
        except ImportError as exc:
            raise SntrupError("native sntrup761 backend needs the 'pqcrypto' package") from exc
        _native = sntrup_761
    return _native


def available_backends() -> list[str]:
    """Backends usable here: always ``"pure"``, plus ``"native"`` when ``pqcrypto`` imports."""
    names = ["pure"]
    try:
        _native_module()
    except SntrupError:
        pass
    else:
        names.append("native")
    return names


def backend() -> str:
    """The backend :func:`decapsulate` uses (``"pure"`` by default)."""
    return _backend


def use_backend(name: str) -> str:
    """Select ``"pure"`` or ``"native"`` (decapsulation only, see module doc); returns the previous one."""
    global _backend
    if name not in ("pure", "native"):
        raise SntrupError(f"unknown sntrup761 backend {name!r}")
    if name == "native":
        _native_module()
    previous, _backend = _backend, name
    return previous


# --- NIST KAT (python -m agent.sntrup761 kat) ---------------------------------------------------------


def kat_response(count: int = 1, per_call: bool = False, header: bool | None = None) -> str:
    """The KAT response text for ``count`` entries, drawn from the NIST AES-256-CTR DRBG.

    ``count = 1`` without header is PQClean's ``nistkat`` output (sha256 afc42c3a…, agent-crypto.md §6).
    With a header (default when count > 1) it is NIST ``PQCgenKAT_kem``'s ``.rsp`` layout.
    ``per_call`` serves the random words 4 bytes per DRBG call, as the reference C code asks.
    """
    from agent.nist_drbg import NistDrbg

    if header is None:
        header = count != 1
    master = NistDrbg(bytes(range(48)))
    seeds = [master.random_bytes(48) for _ in range(count)]
    lines: list[str] = ["# sntrup761\n\n"] if header else []
    for i, seed in enumerate(seeds):
        drbg = NistDrbg(seed)
        rb: RandomBytes = drbg.random_bytes
        if per_call:

            def rb(n: int, _d: NistDrbg = drbg) -> bytes:
                if n == _RANDOM_WORDS_BYTES:
                    return b"".join(_d.random_bytes(4) for _ in range(P))
                return _d.random_bytes(n)

        pk, sk = keypair(rb)
        ct, ss = encapsulate(pk, rb)
        if decapsulate(ct, sk) != ss:  # pragma: no cover
            raise AssertionError(f"KAT count {i}: decapsulation mismatch")
        lines.append(f"count = {i}\n")
        for name, value in (("seed", seed), ("pk", pk), ("sk", sk), ("ct", ct), ("ss", ss)):
            lines.append(f"{name} = {value.hex().upper()}\n")
        if header:
            lines.append("\n")
    return "".join(lines)


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m agent.sntrup761")
    sub = parser.add_subparsers(dest="cmd", required=True)
    kat = sub.add_parser("kat", help="print the SHA-256 of the NIST KAT response (PQClean: afc42c3a…)")
    kat.add_argument("--count", type=int, default=1, help="entries (1 = PQClean nistkat; 100 = NIST .rsp)")
    kat.add_argument("--per-call", action="store_true", help="4 bytes per DRBG call (reference C callback)")
    kat.add_argument("--dump", action="store_true", help="print the response text instead of its hash")
    args = parser.parse_args(argv)
    text = kat_response(args.count, args.per_call)
    if args.dump:
        sys.stdout.write(text)
    else:
        print(hashlib.sha256(text.encode()).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
