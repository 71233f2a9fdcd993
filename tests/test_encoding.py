"""Encoding primitives and key encodings against the SMP vectors (encoding.json, keys.json) and smp.md §8.

Covers sansio_smp/encoding.py (sb, lg, mb, boolean, w16, w32, i64, lst, ne, base64url, pad/unpad,
Reader, VersionRange) and the SPKI/PKCS#8 codecs of sansio_smp/crypto.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_smp.crypto import KeyAlgorithm, PrivateKey, PublicKey
from sansio_smp.encoding import (
    Reader,
    VersionRange,
    b64url_decode,
    b64url_encode,
    boolean,
    i64,
    lg,
    lst,
    mb,
    ne,
    pad,
    parse_all,
    sb,
    unpad,
    w16,
    w32,
)
from sansio_smp.errors import LocalProtocolError, ParseError

DATA = Path(__file__).parent / "data" / "smp"
ENC = json.loads((DATA / "encoding.json").read_text())
KEYS = json.loads((DATA / "keys.json").read_text())


def _hex(s: str) -> bytes:
    return bytes.fromhex(s)


def _input(case: dict[str, Any]) -> bytes:
    if case.get("input_repeat"):
        rep = case["input_repeat"]
        return _hex(rep["byte"]) * rep["count"]
    return _hex(case["input"])


def _ids(cases: list[dict[str, Any]], prefix: str) -> list[str]:
    return [f"{prefix}-{c.get('id', i)}" for i, c in enumerate(cases)]


# encoders / decoders named by the vectors' "inner" / "item_encoding"
ITEM_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "short string": lambda v: sb(_hex(v)),
    "Large": lambda v: lg(_hex(v)),
    "bool": boolean,
}
ITEM_DECODERS: dict[str, Callable[[Reader], Any]] = {
    "short string": lambda r: r.sb().hex(),
    "Large": lambda r: r.lg().hex(),
    "bool": lambda r: r.boolean(),
}


def _check_decode(case: dict[str, Any], parse: Callable[[Reader], Any]) -> None:
    r = Reader(_hex(case["input"]))
    exp = case["expected"]
    if "error" in exp:
        with pytest.raises(ParseError):
            parse(r)
        return
    assert parse(r) == exp["value"]
    assert r.pos == exp["consumed"]
    assert r.data[r.pos :].hex() == exp["rest"]


def _check_encode(case: dict[str, Any], encode: Callable[[], bytes]) -> None:
    exp = case["expected"]
    if isinstance(exp, dict):
        with pytest.raises(LocalProtocolError):
            encode()
    else:
        assert encode().hex() == exp


# ---------------------------------------------------------------- encoding.json (88 cases)


@pytest.mark.parametrize("case", ENC["short_string"]["encode"], ids=_ids(ENC["short_string"]["encode"], "enc"))
def test_short_string_encode(case: dict[str, Any]) -> None:
    _check_encode(case, lambda: sb(_input(case)))


@pytest.mark.parametrize("case", ENC["short_string"]["decode"], ids=_ids(ENC["short_string"]["decode"], "dec"))
def test_short_string_decode(case: dict[str, Any]) -> None:
    _check_decode(case, lambda r: r.sb().hex())


@pytest.mark.parametrize("case", ENC["large"]["encode"], ids=_ids(ENC["large"]["encode"], "enc"))
def test_large_encode(case: dict[str, Any]) -> None:
    _check_encode(case, lambda: lg(_input(case)))


@pytest.mark.parametrize("case", ENC["large"]["decode"], ids=_ids(ENC["large"]["decode"], "dec"))
def test_large_decode(case: dict[str, Any]) -> None:
    _check_decode(case, lambda r: r.lg().hex())


@pytest.mark.parametrize("case", ENC["maybe"]["encode"], ids=_ids(ENC["maybe"]["encode"], "enc"))
def test_maybe_encode(case: dict[str, Any]) -> None:
    inner = ITEM_ENCODERS[case["inner"]]
    _check_encode(case, lambda: mb(None if case["input"] is None else inner(case["input"])))


@pytest.mark.parametrize("case", ENC["maybe"]["decode"], ids=_ids(ENC["maybe"]["decode"], "dec"))
def test_maybe_decode(case: dict[str, Any]) -> None:
    _check_decode(case, lambda r: r.maybe(ITEM_DECODERS[case["inner"]]))


@pytest.mark.parametrize("case", ENC["bool"]["encode"], ids=_ids(ENC["bool"]["encode"], "enc"))
def test_bool_encode(case: dict[str, Any]) -> None:
    _check_encode(case, lambda: boolean(case["input"]))


@pytest.mark.parametrize("case", ENC["bool"]["decode"], ids=_ids(ENC["bool"]["decode"], "dec"))
def test_bool_decode(case: dict[str, Any]) -> None:
    _check_decode(case, Reader.boolean)


@pytest.mark.parametrize("case", ENC["word16"]["encode"], ids=_ids(ENC["word16"]["encode"], "enc"))
def test_word16_encode(case: dict[str, Any]) -> None:
    _check_encode(case, lambda: w16(case["input"]))


@pytest.mark.parametrize("case", ENC["word16"]["decode"], ids=_ids(ENC["word16"]["decode"], "dec"))
def test_word16_decode(case: dict[str, Any]) -> None:
    _check_decode(case, Reader.w16)


@pytest.mark.parametrize("case", ENC["int64"]["encode"], ids=_ids(ENC["int64"]["encode"], "enc"))
def test_int64_encode(case: dict[str, Any]) -> None:
    _check_encode(case, lambda: i64(int(case["input"])))


@pytest.mark.parametrize("case", ENC["int64"]["decode"], ids=_ids(ENC["int64"]["decode"], "dec"))
def test_int64_decode(case: dict[str, Any]) -> None:
    _check_decode(case, lambda r: str(r.i64()))


@pytest.mark.parametrize("case", ENC["non_empty"]["encode"], ids=_ids(ENC["non_empty"]["encode"], "enc"))
def test_non_empty_encode(case: dict[str, Any]) -> None:
    item = ITEM_ENCODERS[case["item_encoding"]]
    _check_encode(case, lambda: ne(item(x) for x in case["items"]))


@pytest.mark.parametrize("case", ENC["non_empty"]["decode"], ids=_ids(ENC["non_empty"]["decode"], "dec"))
def test_non_empty_decode(case: dict[str, Any]) -> None:
    _check_decode(case, lambda r: r.ne(ITEM_DECODERS[case["item_encoding"]]))


@pytest.mark.parametrize("case", ENC["list"]["encode"], ids=_ids(ENC["list"]["encode"], "enc"))
def test_list_encode(case: dict[str, Any]) -> None:
    item = ITEM_ENCODERS[case["item_encoding"]]
    _check_encode(case, lambda: lst(item(x) for x in case["items"]))


@pytest.mark.parametrize("case", ENC["base64url"], ids=_ids(ENC["base64url"], "b64"))
def test_base64url(case: dict[str, Any]) -> None:
    raw = _hex(case["input"])
    assert b64url_encode(raw) == case["expected"]
    assert b64url_decode(case["expected"]).hex() == case["decode_padded"]
    assert b64url_decode(case["expected"].rstrip("=")).hex() == case["decode_unpadded"]


@pytest.mark.parametrize("case", ENC["pad"]["pad"], ids=_ids(ENC["pad"]["pad"], "pad"))
def test_pad(case: dict[str, Any]) -> None:
    _check_encode(case, lambda: pad(_hex(case["msg"]), case["padded_len"]))


@pytest.mark.parametrize("case", ENC["pad"]["unpad"], ids=_ids(ENC["pad"]["unpad"], "unpad"))
def test_unpad(case: dict[str, Any]) -> None:
    exp = case["expected"]
    if isinstance(exp, dict):
        with pytest.raises(ParseError):
            unpad(_hex(case["input"]))
    else:
        assert unpad(_hex(case["input"])).hex() == exp


def test_encoding_vector_count() -> None:
    n = sum(len(ENC[k].get(kk, [])) for k in ENC if isinstance(ENC[k], dict) for kk in ("encode", "decode"))
    n += len(ENC["base64url"]) + len(ENC["pad"]["pad"]) + len(ENC["pad"]["unpad"])
    assert n == 88


# ---------------------------------------------------------------- smp.md §8 fixed values


def test_dossier_int64_and_time() -> None:
    assert i64(1234567890123456789) == bytes.fromhex("112210F47DE98115")
    assert parse_all(bytes.fromhex("112210f47de98115"), Reader.i64) == 1234567890123456789
    # 2022-01-01T10:24:05Z as SystemTime seconds
    assert i64(1641032645) == bytes.fromhex("0000000061d02bc5")


def test_dossier_pad_cases() -> None:
    assert pad(b"abc", 5) == b"\x00\x03abc"
    with pytest.raises(LocalProtocolError):
        pad(b"abc", 4)
    assert unpad(b"\x00\x00") == b""
    with pytest.raises(ParseError):
        unpad(b"\x00")
    with pytest.raises(ParseError):
        unpad(b"\x00\x03ab")
    big = b"x" * 65533
    padded = pad(big, 65535)
    assert len(padded) == 65535 and unpad(padded) == big
    with pytest.raises(LocalProtocolError):
        pad(b"x" * 65534, 65536)


@pytest.mark.parametrize(
    "alg,prefix",
    [
        (KeyAlgorithm.ED25519, "302a300506032b6570032100"),
        (KeyAlgorithm.X25519, "302a300506032b656e032100"),
        (KeyAlgorithm.ED448, "3043300506032b6571033a00"),
        (KeyAlgorithm.X448, "3042300506032b656f033900"),
    ],
)
def test_dossier_spki_prefixes(alg: KeyAlgorithm, prefix: str) -> None:
    size = {KeyAlgorithm.ED25519: 32, KeyAlgorithm.X25519: 32, KeyAlgorithm.ED448: 57, KeyAlgorithm.X448: 56}[alg]
    raw = bytes(range(1, size + 1))
    spki = PublicKey(alg, raw).spki()
    assert spki == bytes.fromhex(prefix) + raw
    assert PublicKey.from_spki(spki) == PublicKey(alg, raw)


@pytest.mark.parametrize(
    "b64,alg",
    [
        ("MCowBQYDK2VwAyEAfAOflyvbJv1fszgzkQ6buiZJVgSpQWsucXq7U6zjMgY=", KeyAlgorithm.ED25519),  # samplePubKey
        ("MCowBQYDK2VuAyEAriy+HcARIhqsgSjVnjKqoft+y6pxrxdY68zn4+LjYhQ=", KeyAlgorithm.X25519),  # sampleDhPubKey
        ("MCowBQYDK2VwAyEA139Oqs4QgpqbAmB0o7rZf6T19ryl7E65k4AYe0kE3Qs=", KeyAlgorithm.ED25519),  # dummy keys
        (
            "MEMwBQYDK2VxAzoA6ibQc9XpkSLtwrf7PLvp81qW/etiumckVFImCMRdftcG/XopbOSaq9qyLhrgJWKOLyNrQPNVvpMA",
            KeyAlgorithm.ED448,
        ),
        ("MCowBQYDK2VuAyEA4JGSMYht18H4mas/jHeBwfcM7jLwNYJNOAhi2/g4RXg=", KeyAlgorithm.X25519),
    ],
)
def test_dossier_sample_keys(b64: str, alg: KeyAlgorithm) -> None:
    der = base64.b64decode(b64)
    key = PublicKey.from_spki(der)
    assert key.alg is alg and key.spki() == der
    assert PublicKey.parse(Reader(key.encode())) == key


def test_dossier_sample_signature_is_64_bytes_and_invalid() -> None:
    sig = base64.b64decode("e8JK+8V3fq6kOLqco/SaKlpNaQ7i1gfOrXoqekEl42u4mF8Bgu14T5j0189CGcUhJHw2RwCMvON+qbvQ9ecJAA==")
    key = PublicKey.from_spki(base64.b64decode("MCowBQYDK2VwAyEAfAOflyvbJv1fszgzkQ6buiZJVgSpQWsucXq7U6zjMgY="))
    assert len(sig) == 64
    assert not key.verify(sig, b"anything")


def test_pkcs8_prefix_ed25519() -> None:
    priv = PrivateKey(KeyAlgorithm.ED25519, bytes(range(32)))
    assert priv.pkcs8()[:16] == bytes.fromhex("302e020100300506032b657004220420")
    assert PrivateKey.from_pkcs8(priv.pkcs8()) == priv
    with pytest.raises(ParseError):
        PrivateKey.from_pkcs8(priv.pkcs8() + b"\x00")


# ---------------------------------------------------------------- keys.json


def _alg(name: str) -> KeyAlgorithm:
    return KeyAlgorithm(name)


@pytest.mark.parametrize("case", KEYS["spki"], ids=[c["id"] for c in KEYS["spki"]])
def test_key_spki(case: dict[str, Any]) -> None:
    alg = _alg(case["alg"])
    pub = PrivateKey(alg, _hex(case["priv"])).public()
    assert pub.raw.hex() == case["pub"]
    exp = case["expected"]
    assert pub.spki().hex() == exp["spki"] and len(pub.spki()) == exp["spki_length"]
    assert pub.encode().hex() == exp["key_field"]
    assert PublicKey.parse(Reader(_hex(exp["key_field"]))) == pub
    if alg is KeyAlgorithm.ED25519:
        assert (case["priv"] + case["pub"]) == case["priv_libsodium"]


def _decode_as(alg: KeyAlgorithm, der: bytes) -> PublicKey:
    """smp-web decodes with one decoder per algorithm; the reference's typed decoder does the same."""
    key = PublicKey.from_spki(der)
    if key.alg is not alg:
        raise ParseError("key of another algorithm")
    return key


@pytest.mark.parametrize("case", KEYS["decode"], ids=[c["id"] for c in KEYS["decode"]])
def test_key_decode(case: dict[str, Any]) -> None:
    alg = _alg(case["decoder"])
    exp = case["expected"]
    if "error" in exp:
        with pytest.raises(ParseError):
            _decode_as(alg, _hex(case["spki"]))
    else:
        assert _decode_as(alg, _hex(case["spki"])).raw.hex() == exp["raw"]


# ---------------------------------------------------------------- Hypothesis round-trips

short = st.binary(max_size=255)


@given(short)
def test_roundtrip_sb(data: bytes) -> None:
    assert parse_all(sb(data), Reader.sb) == data


@given(st.binary(max_size=70000))
@settings(max_examples=30)
def test_roundtrip_lg(data: bytes) -> None:
    if len(data) > 0xFFFF:
        with pytest.raises(LocalProtocolError):
            lg(data)
    else:
        assert parse_all(lg(data), Reader.lg) == data


@given(st.one_of(st.none(), short))
def test_roundtrip_maybe(value: bytes | None) -> None:
    enc = mb(None if value is None else sb(value))
    assert parse_all(enc, lambda r: r.maybe(Reader.sb)) == value


@given(st.booleans())
def test_roundtrip_bool(value: bool) -> None:
    assert parse_all(boolean(value), Reader.boolean) is value


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.integers(-(1 << 63), (1 << 63) - 1))
def test_roundtrip_ints(a: int, b: int, c: int) -> None:
    assert parse_all(w16(a), Reader.w16) == a
    assert parse_all(w32(b), Reader.w32) == b
    assert parse_all(i64(c), Reader.i64) == c


@given(st.one_of(st.integers(max_value=-(1 << 63) - 1), st.integers(min_value=1 << 63)))
def test_i64_out_of_range(n: int) -> None:
    with pytest.raises(LocalProtocolError):
        i64(n)


@given(st.lists(short, max_size=300))
@settings(max_examples=40)
def test_roundtrip_lists(items: list[bytes]) -> None:
    encoded = [sb(x) for x in items]
    if len(items) > 255:
        with pytest.raises(LocalProtocolError):
            lst(encoded)
        return
    assert parse_all(lst(encoded), lambda r: r.lst(Reader.sb)) == items
    if items:
        assert parse_all(ne(encoded), lambda r: r.ne(Reader.sb)) == items
    else:
        with pytest.raises(LocalProtocolError):
            ne(encoded)


@given(st.binary(max_size=200))
def test_roundtrip_base64url(data: bytes) -> None:
    text = b64url_encode(data)
    assert b64url_decode(text) == data
    assert b64url_decode(text.rstrip("=")) == data
    assert base64.urlsafe_b64decode(text) == data


@given(st.text(max_size=40))
def test_base64url_decode_total(text: str) -> None:
    try:
        b64url_decode(text)
    except ParseError:
        pass


@given(st.binary(max_size=300), st.integers(0, 400))
def test_roundtrip_pad(msg: bytes, extra: int) -> None:
    padded_len = len(msg) + 2 + extra
    padded = pad(msg, padded_len)
    assert len(padded) == padded_len and padded[len(msg) + 2 :] == b"#" * extra
    assert unpad(padded) == msg
    with pytest.raises(LocalProtocolError):
        pad(msg, len(msg) + 1)


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_roundtrip_version_range(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    vr = VersionRange(lo, hi)
    assert parse_all(vr.encode(), VersionRange.parse) == vr
    if a > b:
        with pytest.raises(ParseError):
            parse_all(w16(a) + w16(b), VersionRange.parse)


@given(st.sampled_from(list(KeyAlgorithm)), st.binary(min_size=57, max_size=57))
def test_roundtrip_public_key(alg: KeyAlgorithm, raw: bytes) -> None:
    size = {KeyAlgorithm.ED25519: 32, KeyAlgorithm.X25519: 32, KeyAlgorithm.ED448: 57, KeyAlgorithm.X448: 56}[alg]
    key = PublicKey(alg, raw[:size])
    assert parse_all(key.encode(), PublicKey.parse) == key
    # one byte more or less is not a key
    with pytest.raises(ParseError):
        PublicKey.from_spki(key.spki() + b"\x00")
    with pytest.raises(ParseError):
        PublicKey.from_spki(key.spki()[:-1])


@given(st.binary(max_size=80))
def test_reader_total(data: bytes) -> None:
    """Every Reader primitive on random bytes: a value or ParseError, never anything else."""
    for parse in (
        Reader.sb,
        Reader.lg,
        Reader.w16,
        Reader.w32,
        Reader.i64,
        Reader.boolean,
        lambda r: r.maybe(Reader.sb),
        lambda r: r.ne(Reader.sb),
        lambda r: r.lst(Reader.lg),
        VersionRange.parse,
        PublicKey.parse,
    ):
        try:
            parse_all(data, parse)
        except ParseError:
            pass
    try:
        unpad(data)
    except ParseError:
        pass
