"""sntrup761 (agent/sntrup761.py) against agent-crypto.md §6: the PQClean NIST KAT (sha256 afc42c3a…), the
ratchet vectors (../shared/vectors/ratchet/sntrup761.json, copied to tests/data/ratchet), implicit rejection,
input validation, and cross-checks both ways with the independent C implementation in PyPI ``pqcrypto``
(``pqcrypto.kem.sntrup_761``)."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pqcrypto.kem import sntrup_761 as native

from agent import sntrup761 as kem
from agent.nist_drbg import NistDrbg
from agent.sntrup761 import SntrupError

DATA = Path(__file__).parent / "data" / "ratchet" / "sntrup761.json"
VECTORS = json.loads(DATA.read_text())

PQCLEAN_KAT_SHA256 = "afc42c3a5b10f4ef69654250097ebda9b9564570f4086744b24a6daf2bd1f89a"
# agent-crypto.md §6: the reference C code driven 4 bytes per DRBG call (cbits/sntrup761.c callback).
PER_CALL_KAT_SHA256 = "2eba10673b9077530ba9c063d22f2534e415a6da42985c333c6baee133cc0ff1"
# Our own 100-entry NIST PQCgenKAT_kem .rsp (header "# sntrup761"); a regression pin, not an external value.
NIST_RSP_100_SHA256 = "147c26b63493ddaaeae1f59a5b42ffc233e24e1414198eacbcff7100f05077aa"
NIST_KAT_SEED_0 = (
    "061550234D158C5EC95595FE04EF7A25767F2E24CC2BC479D09D86DC9ABCFDE7056A8C266F9EF97ED08541DBD2E1FFA1"
)


def h(x: str) -> bytes:
    return bytes.fromhex(x)


class Stream:
    """A random_bytes callback serving a fixed byte string in order, recording the request sizes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.calls: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    @property
    def exhausted(self) -> bool:
        return self.pos == len(self.data)


def seeded(seed: bytes) -> Stream:
    """An unlimited-enough deterministic stream (SHA-512 counter mode) for round-trip tests."""
    blocks = [hashlib.sha512(seed + i.to_bytes(4, "big")).digest() for i in range(160)]
    return Stream(b"".join(blocks))


@pytest.fixture(params=["pure", "native"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    previous = kem.use_backend(request.param)
    try:
        yield request.param
    finally:
        kem.use_backend(previous)


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    return kem.keypair(seeded(b"fixed pair"))


# --- sizes and the KAT ---------------------------------------------------------------------------------


def test_sizes() -> None:
    assert (kem.PUBLIC_KEY_SIZE, kem.SECRET_KEY_SIZE, kem.CIPHERTEXT_SIZE, kem.SHARED_SECRET_SIZE) == (
        1158,
        1763,
        1039,
        32,
    )
    assert (native.PUBLIC_KEY_SIZE, native.SECRET_KEY_SIZE, native.CIPHERTEXT_SIZE) == (1158, 1763, 1039)


def test_nist_drbg_first_seed() -> None:
    assert NistDrbg(bytes(range(48))).random_bytes(48).hex().upper() == NIST_KAT_SEED_0


def test_nist_drbg_split_requests_differ() -> None:
    a = NistDrbg(bytes(range(48)))
    b = NistDrbg(bytes(range(48)))
    whole = a.random_bytes(32)
    assert b.random_bytes(16) + b.random_bytes(16) != whole
    assert whole[:16] == NistDrbg(bytes(range(48))).random_bytes(16)
    with pytest.raises(ValueError):
        NistDrbg(bytes(47))


def test_pqclean_kat() -> None:
    text = kem.kat_response(1)
    assert hashlib.sha256(text.encode()).hexdigest() == PQCLEAN_KAT_SHA256
    assert text.startswith(f"count = 0\nseed = {NIST_KAT_SEED_0}\npk = ")
    assert "ss = 337B787540BF55F8F9933A0880F1FB1CE00855C7FEACD55FAACA1926FC174202\n" in text


def test_per_call_kat() -> None:
    text = kem.kat_response(1, per_call=True)
    assert hashlib.sha256(text.encode()).hexdigest() == PER_CALL_KAT_SHA256
    assert "ss = 344CA5E25F6DA5EA95E4A695B1C5446ECA9859334532E4A9537669F012C743A2\n" in text


def test_nist_rsp_100_entries() -> None:
    text = kem.kat_response(100)
    assert text.startswith("# sntrup761\n\ncount = 0\n")
    assert text.count("count = ") == 100
    assert hashlib.sha256(text.encode()).hexdigest() == NIST_RSP_100_SHA256


def test_kat_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert kem._main(["kat"]) == 0
    assert capsys.readouterr().out.strip() == PQCLEAN_KAT_SHA256


# --- the ratchet vectors (agent-crypto.md §5.8, §6) ---------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["keypair"], ids=lambda c: c["id"])
def test_vector_keypair(case: dict) -> None:
    stream = Stream(h(case["randomness"]))
    pk, sk = kem.keypair(stream)
    assert pk.hex() == case["expected"]["pk"]
    assert sk.hex() == case["expected"]["sk"]
    assert stream.exhausted
    assert stream.calls == [3044, 3044, 191]  # g (1 attempt), f, rho: PQClean batching
    assert sk[382:1540] == pk and sk[1540:1731] == stream.data[-191:]
    assert sk[1731:] == hashlib.sha512(b"\x04" + pk).digest()[:32]


@pytest.mark.parametrize("case", VECTORS["encapsulate"], ids=lambda c: c["id"])
def test_vector_encapsulate(case: dict) -> None:
    stream = Stream(h(case["randomness"]))
    ct, ss = kem.encapsulate(h(case["pk"]), stream)
    assert ct.hex() == case["expected"]["ct"]
    assert ss.hex() == case["expected"]["ss"]
    assert stream.exhausted and stream.calls == [3044]


@pytest.mark.parametrize("case", VECTORS["decapsulate"], ids=lambda c: c["id"])
def test_vector_decapsulate(case: dict, backend: str) -> None:
    assert kem.decapsulate(h(case["ct"]), h(case["sk"])).hex() == case["expected"]["ss"]


def test_vector_randomness_per_call_equals_batched() -> None:
    """The vectors' randomness is 4-byte urandom32 calls concatenated: serving it 4 bytes at a time works."""
    case = VECTORS["keypair"][0]
    data = h(case["randomness"])
    pos = 0

    def four_at_a_time(n: int) -> bytes:
        nonlocal pos
        out = b""
        while len(out) < n:
            step = min(4, n - len(out)) if n == 3044 else n
            out += data[pos : pos + step]
            pos += step
        return out

    assert kem.keypair(four_at_a_time)[0].hex() == case["expected"]["pk"]


# --- key generation retries (g not invertible in R/3) -------------------------------------------------

# A degree-19 factor of x^761 - x - 1 over F_3 (coefficients low to high, centered): no polynomial divisible
# by it is invertible in R/3.
F3_FACTOR_19 = [1, 1, 0, 1, 1, 1, -1, 1, -1, 1, 0, 1, -1, -1, -1, -1, 1, 0, -1, -1]
_WORD_FOR = {-1: 0, 0: 0x15555556, 1: 0x2AAAAAAB}  # u32 words Small_random maps to -1, 0, 1


def small_random_bytes(coefficients: list[int]) -> bytes:
    return b"".join(_WORD_FOR[c].to_bytes(4, "little") for c in coefficients)


def test_f3_factor_divides_modulus() -> None:
    # x^761 - x - 1 mod F (long division over F_3; F has leading coefficient -1)
    rem = [-1, -1] + [0] * 759 + [1]
    fac = F3_FACTOR_19
    inv_lead = pow(fac[-1] % 3, -1, 3)
    for top in range(len(rem) - 1, len(fac) - 2, -1):
        c = rem[top] * inv_lead % 3
        if c:
            for i, y in enumerate(fac):
                rem[top - len(fac) + 1 + i] -= c * y
    assert all(x % 3 == 0 for x in rem)


@pytest.mark.parametrize(
    "bad_g",
    [
        [0] * 761,
        F3_FACTOR_19 + [0] * (761 - 20),
        [0] * 700 + F3_FACTOR_19 + [0] * 41,  # x^700 * F
    ],
    ids=["zero", "factor", "shifted-factor"],
)
def test_keypair_retries_non_invertible_g(bad_g: list[int]) -> None:
    assert kem._small_random(Stream(small_random_bytes(bad_g))) == bad_g
    assert kem._recip([x % 3 for x in bad_g], 3) is None
    good = h(VECTORS["keypair"][0]["randomness"])
    stream = Stream(small_random_bytes(bad_g) * 2 + good)
    pk, sk = kem.keypair(stream)
    assert stream.exhausted and stream.calls == [3044, 3044, 3044, 3044, 191]
    assert pk.hex() == VECTORS["keypair"][0]["expected"]["pk"]
    assert sk.hex() == VECTORS["keypair"][0]["expected"]["sk"]


# --- arithmetic and encodings ---------------------------------------------------------------------------


def naive_mul(a: list[int], b: list[int], m: int) -> list[int]:
    c = [0] * (2 * 761 - 1)
    for i, x in enumerate(a):
        if x:
            for j, y in enumerate(b):
                c[i + j] += x * y
    for k in range(2 * 761 - 2, 760, -1):
        c[k - 761] += c[k]
        c[k - 760] += c[k]
        c[k] = 0
    return [x % m for x in c[:761]]


def test_products_against_schoolbook() -> None:
    rng = random.Random(7)
    a = [rng.randrange(-2295, 2296) for _ in range(761)]
    s = [rng.choice((-1, 0, 1)) for _ in range(761)]
    t = [rng.choice((-1, 0, 1)) for _ in range(761)]
    assert [x % 4591 for x in kem._rq_mul_small(a, s)] == naive_mul(a, s, 4591)
    assert [x % 3 for x in kem._r3_mul(s, t)] == naive_mul(s, t, 3)
    assert all(-2295 <= x <= 2295 for x in kem._rq_mul_small(a, s))


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**64 - 1))
def test_recip(seed: int) -> None:
    rng = random.Random(seed)
    a3 = [rng.randrange(3) for _ in range(761)]
    inv3 = kem._recip(a3, 3)
    if inv3 is not None:  # almost always invertible
        assert naive_mul(a3, inv3, 3) == [1] + [0] * 760
    aq = [rng.randrange(4591) for _ in range(761)]
    aq[rng.randrange(761)] = rng.randrange(1, 4591)  # nonzero, so invertible (R/q is a field)
    invq = kem._recip(aq, 4591)
    assert invq is not None
    assert naive_mul(aq, invq, 4591) == [1] + [0] * 760


def test_recip_edge_cases() -> None:
    assert kem._recip([0] * 761, 3) is None
    assert kem._recip([0] * 761, 4591) is None
    assert kem._recip([1] + [0] * 760, 4591) == [1] + [0] * 760
    x_inv = kem._recip([0, 1] + [0] * 759, 4591)  # 1/x = x^760 - 1 since x^761 = x + 1
    assert x_inv == [4590] + [0] * 759 + [1]
    for a in ([0] * 760 + [1], [2] * 761, [1] * 761):
        inv = kem._recip(a, 3)
        assert inv is not None and naive_mul(a, inv, 3) == [1] + [0] * 760


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-2295, 2295), min_size=761, max_size=761))
def test_rq_encoding_roundtrip(a: list[int]) -> None:
    data = kem._rq_encode(a)
    assert len(data) == 1158
    assert kem._rq_decode(data) == a


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-765, 765), min_size=761, max_size=761))
def test_rounded_encoding_roundtrip(k: list[int]) -> None:
    c = [3 * x for x in k]
    data = kem._ROUNDED_CODEC.encode([(x + 2295) // 3 for x in c])
    assert len(data) == 1007
    assert kem._rounded_decode(data) == c


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=1158, max_size=1158))
def test_rq_decode_any_bytes(data: bytes) -> None:
    a = kem._rq_decode(data)
    assert len(a) == 761 and all(-2295 <= x <= 2295 for x in a)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from([-1, 0, 1]), min_size=761, max_size=761))
def test_small_encoding_roundtrip(a: list[int]) -> None:
    data = kem._small_encode(a)
    assert len(data) == 191
    assert kem._small_decode(data) == a


def test_short_random_weight() -> None:
    r = kem._short_random(seeded(b"short"))
    assert len(r) == 761 and sum(1 for x in r if x) == 286 and set(r) <= {-1, 0, 1}


# --- round trips and implicit rejection ---------------------------------------------------------------


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=8, max_size=8))
def test_roundtrip_fresh_keys(seed: bytes) -> None:
    pk, sk = kem.keypair(seeded(b"kp" + seed))
    assert len(pk) == 1158 and len(sk) == 1763
    ct, ss = kem.encapsulate(pk, seeded(b"enc" + seed))
    assert len(ct) == 1039 and len(ss) == 32
    assert kem.decapsulate(ct, sk) == ss
    assert kem.keypair(seeded(b"kp" + seed)) == (pk, sk)  # deterministic in its randomness


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=8, max_size=8))
def test_roundtrip_encapsulations(pair: tuple[bytes, bytes], seed: bytes) -> None:
    pk, sk = pair
    ct, ss = kem.encapsulate(pk, seeded(seed))
    assert kem.decapsulate(ct, sk) == ss
    assert kem.encapsulate(pk, seeded(seed)) == (ct, ss)


def rejection_key(ct: bytes, sk: bytes) -> bytes:
    rho = sk[1540:1731]
    return hashlib.sha512(b"\x00" + hashlib.sha512(b"\x03" + rho).digest()[:32] + ct).digest()[:32]


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=8, max_size=8), st.integers(0, 1039 * 8 - 1))
def test_tampered_ciphertext_implicit_rejection(pair: tuple[bytes, bytes], seed: bytes, bit: int) -> None:
    pk, sk = pair
    ct, ss = kem.encapsulate(pk, seeded(seed))
    bad = bytearray(ct)
    bad[bit // 8] ^= 1 << (bit % 8)
    bad_ct = bytes(bad)
    out = kem.decapsulate(bad_ct, sk)
    assert out != ss
    assert out == kem.decapsulate(bad_ct, sk)
    assert out == rejection_key(bad_ct, sk)
    assert out == native.decaps(sk, bad_ct)


def test_wrong_key_implicit_rejection(pair: tuple[bytes, bytes], backend: str) -> None:
    pk, sk = pair
    _, other_sk = kem.keypair(seeded(b"other"))
    ct, ss = kem.encapsulate(pk, seeded(b"wrong key"))
    out = kem.decapsulate(ct, other_sk)
    assert out != ss and out == rejection_key(ct, other_sk)


@settings(max_examples=15, deadline=None)
@given(st.binary(min_size=1039, max_size=1039))
def test_random_ciphertext(pair: tuple[bytes, bytes], ct: bytes) -> None:
    _, sk = pair
    out = kem.decapsulate(ct, sk)
    assert out == rejection_key(ct, sk) == native.decaps(sk, ct)


# --- input validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1157, 1159, 2000])
def test_wrong_public_key_length(size: int) -> None:
    with pytest.raises(SntrupError):
        kem.encapsulate(bytes(size), seeded(b"x"))


@pytest.mark.parametrize(("ct_size", "sk_size"), [(1038, 1763), (1040, 1763), (0, 1763), (1039, 1762), (1039, 1764)])
def test_wrong_decapsulation_lengths(ct_size: int, sk_size: int, backend: str) -> None:
    with pytest.raises(SntrupError):
        kem.decapsulate(bytes(ct_size), bytes(sk_size))


def test_not_bytes_and_short_randomness(pair: tuple[bytes, bytes]) -> None:
    pk, sk = pair
    with pytest.raises(SntrupError):
        kem.encapsulate("x" * 1158, seeded(b"x"))  # type: ignore[arg-type]
    with pytest.raises(SntrupError):
        kem.decapsulate(None, sk)  # type: ignore[arg-type]
    with pytest.raises(SntrupError):
        kem.encapsulate(pk, lambda n: bytes(n - 1))
    with pytest.raises(SntrupError):
        kem.keypair(lambda n: b"")
    assert issubclass(SntrupError, ValueError)
    # bytearray / memoryview inputs are accepted
    ct, ss = kem.encapsulate(bytearray(pk), seeded(b"y"))
    assert kem.decapsulate(memoryview(ct), bytearray(sk)) == ss


def test_no_os_randomness(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import secrets

    def boom(*_: object) -> bytes:
        raise AssertionError("OS randomness used")

    monkeypatch.setattr(os, "urandom", boom)
    monkeypatch.setattr(secrets, "token_bytes", boom)
    pk, sk = kem.keypair(seeded(b"no os"))
    ct, ss = kem.encapsulate(pk, seeded(b"no os enc"))
    assert kem.decapsulate(ct, sk) == ss


# --- backends -----------------------------------------------------------------------------------------


def test_backend_selection() -> None:
    assert kem.backend() == "pure"
    assert kem.available_backends() == ["pure", "native"]
    with pytest.raises(SntrupError):
        kem.use_backend("gpu")
    assert kem.use_backend("native") == "pure"
    try:
        assert kem.backend() == "native"
    finally:
        assert kem.use_backend("pure") == "native"


# --- cross-checks with the C implementation (pqcrypto.kem.sntrup_761) --------------------------------


@pytest.mark.parametrize("i", range(4))
def test_cross_our_keys_their_encapsulation(i: int) -> None:
    pk, sk = kem.keypair(seeded(b"cross-a%d" % i))
    ct, ss = native.encaps(pk)
    assert kem.decapsulate(bytes(ct), sk) == bytes(ss)
    bad = bytearray(ct)
    bad[(i * 97) % 1039] ^= 0x10
    assert kem.decapsulate(bytes(bad), sk) == native.decaps(sk, bytes(bad)) == rejection_key(bytes(bad), sk)


@pytest.mark.parametrize("i", range(4))
def test_cross_their_keys_our_encapsulation(i: int) -> None:
    pk, sk = native.keygen()
    pk, sk = bytes(pk), bytes(sk)
    ct, ss = kem.encapsulate(pk, seeded(b"cross-b%d" % i))
    assert bytes(native.decaps(sk, ct)) == ss
    assert kem.decapsulate(ct, sk) == ss  # their secret key layout is ours
    bad = bytearray(ct)
    bad[1038 - (i * 131) % 1039] ^= 0x01
    assert kem.decapsulate(bytes(bad), sk) == native.decaps(sk, bytes(bad)) != ss


def test_native_backend_matches_pure(pair: tuple[bytes, bytes]) -> None:
    pk, sk = pair
    ct, ss = kem.encapsulate(pk, seeded(b"backend"))
    bad = ct[:-1] + bytes([ct[-1] ^ 0x80])
    results = {}
    for name in ("pure", "native"):
        previous = kem.use_backend(name)
        try:
            results[name] = (kem.decapsulate(ct, sk), kem.decapsulate(bad, sk))
        finally:
            kem.use_backend(previous)
    assert results["pure"] == results["native"] == (ss, rejection_key(bad, sk))
