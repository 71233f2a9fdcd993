"""E2E ratchet parameters (agent/e2e_params.py) against tests/data/ratchet/e2e-params.json, byte for byte:
binary params (v2 and v3, no KEM / proposed / accepted), the binary URI form, the link text and its
QEscape'd form; plus the reference's parse rules (agent-crypto.md §2.1, §5.8)."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from agent import sntrup761
from agent.e2e_params import (
    AcceptKEM,
    E2ERatchetParams,
    E2ERatchetParamsUri,
    KEMAccepted,
    KEMKeyPair,
    KEMProposed,
    PrivKEMAccepted,
    PrivKEMProposed,
    ProposeKEM,
    generate_rcv_e2e_params,
    generate_snd_e2e_params,
    parse_priv_kem_params,
    parse_rkem_params,
    qescape,
    reply_kem,
)
from sansio_smp.crypto import KeyAlgorithm, PrivateKey
from sansio_smp.encoding import Reader, VersionRange, parse_all
from sansio_smp.errors import ParseError

CASES = json.loads((Path(__file__).parent / "data" / "ratchet" / "e2e-params.json").read_text())["cases"]
BY_ID = {c["id"]: c for c in CASES}
H = bytes.fromhex
X448 = KeyAlgorithm.X448


class Stream:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def __call__(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        assert len(out) == n
        self.pos += n
        return out


def _kem(k: dict[str, Any] | None) -> KEMProposed | KEMAccepted | None:
    if k is None:
        return None
    if k["type"] == "proposed":
        return KEMProposed(H(k["kem_pk"]))
    return KEMAccepted(H(k["kem_ct"]), H(k["kem_pk"]))


def _keys(case: dict[str, Any]) -> tuple[PrivateKey, PrivateKey]:
    k1, k2 = PrivateKey(X448, H(case["priv1"])), PrivateKey(X448, H(case["priv2"]))
    assert (k1.public().raw, k2.public().raw) == (H(case["pub1"]), H(case["pub2"]))
    return k1, k2


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_binary_params(case: dict[str, Any]) -> None:
    k1, k2 = _keys(case)
    params = E2ERatchetParams(case["version"], k1.public(), k2.public(), _kem(case["kem"]))
    expected = H(case["expected"]["e2e_params"])
    assert params.encode() == expected
    assert E2ERatchetParams.decode(expected) == params
    if "kem_own_sk" in case:  # sk layout: f ‖ 1/g ‖ pk ‖ rho ‖ Hash4(pk) (§6)
        sk = H(case["kem_own_sk"])
        assert sk[382 : 382 + 1158] == H(case["kem"]["kem_pk"])


@pytest.mark.parametrize("case", [c for c in CASES if "version_range" in c], ids=lambda c: c["id"])
def test_invitation_uri_forms(case: dict[str, Any]) -> None:
    k1, k2 = _keys(case)
    uri = E2ERatchetParamsUri(VersionRange(*case["version_range"]), k1.public(), k2.public(), _kem(case["kem"]))
    e = case["expected"]
    assert uri.encode() == H(e["e2e_params_uri"])
    assert E2ERatchetParamsUri.decode(H(e["e2e_params_uri"])) == uri
    assert uri.to_str() == e["e2e_params_uri_str"]
    assert E2ERatchetParamsUri.from_str(e["e2e_params_uri_str"]) == uri
    assert uri.to_link_value() == qescape(uri.to_str()) == e["e2e_params_uri_str_escaped"]
    assert E2ERatchetParamsUri.from_str(urllib.parse.unquote(e["e2e_params_uri_str_escaped"])) == uri
    # the joiner reads the invitation at the version it agreed
    assert uri.for_version(case["version"]).encode() == H(e["e2e_params"])


def test_kem_acceptance_reproduces_the_ciphertext() -> None:
    case = BY_ID["conf-v3-accepted"]
    acc = case["kem_accept"]
    invitation = BY_ID[case["in_reply_to"]]
    assert acc["peer_kem_pk"] == invitation["kem"]["kem_pk"]
    ct, ss = sntrup761.encapsulate(H(acc["peer_kem_pk"]), Stream(H(acc["encapsulation_randomness"])))
    assert ct == H(case["kem"]["kem_ct"])
    assert ss == H(acc["kem_ss"])
    assert sntrup761.decapsulate(ct, H(invitation["kem_own_sk"])) == ss


def test_v2_params_carry_no_kem_field() -> None:
    case = BY_ID["inv-v3-kem"]
    k1, k2 = _keys(case)
    v2 = E2ERatchetParams(2, k1.public(), k2.public(), _kem(case["kem"]))
    assert v2.encode() == E2ERatchetParams(2, k1.public(), k2.public()).encode()
    assert E2ERatchetParams.decode(v2.encode()).kem is None
    # and a link whose max version is 2 does not show the key
    uri = E2ERatchetParamsUri(VersionRange(2, 2), k1.public(), k2.public(), _kem(case["kem"]))
    assert "kem_key" not in uri.to_str()


def test_accepted_kem_in_link_text_and_parse_rules() -> None:
    case = BY_ID["conf-v3-accepted"]
    k1, k2 = _keys(case)
    kem = _kem(case["kem"])
    uri = E2ERatchetParamsUri(VersionRange(2, 3), k1.public(), k2.public(), kem)
    text = uri.to_str()
    assert text.index("kem_ct=") < text.index("kem_key=")
    assert E2ERatchetParamsUri.from_str(text) == uri
    # parameters in any order, unknown ones ignored
    parts = text.split("&")
    assert E2ERatchetParamsUri.from_str("&".join(reversed(parts)) + "&extra=1") == uri
    for bad in ("x3dh=" + parts[1].split("=", 1)[1], "v=3-2&" + parts[1], "v=2-3&x3dh=AAAA", parts[0]):
        with pytest.raises(ParseError):
            E2ERatchetParamsUri.from_str(bad)


def test_parse_rejections() -> None:
    case = BY_ID["inv-v3"]
    good = H(case["expected"]["e2e_params"])
    for cut in range(len(good)):
        with pytest.raises(ParseError):
            E2ERatchetParams.decode(good[:cut])
    with pytest.raises(ParseError):
        E2ERatchetParams.decode(good + b"\x00")
    # X25519 keys where X448 is expected, mixed algorithms
    x25519 = PrivateKey(KeyAlgorithm.X25519, bytes(range(32))).public()
    x448 = PrivateKey(X448, H(case["priv1"])).public()
    mixed = E2ERatchetParams(3, x448, x448).encode().replace(x448.encode(), x25519.encode(), 1)
    with pytest.raises(ParseError):
        E2ERatchetParams.decode(mixed)
    both_x25519 = E2ERatchetParams(3, x25519, x25519)
    with pytest.raises(ParseError):
        E2ERatchetParams.decode(both_x25519.encode())
    assert E2ERatchetParams.decode(both_x25519.encode(), alg=None) == both_x25519
    # KEM fields: unknown tag, wrong sizes
    for bad in (b"X", b"P" + (3).to_bytes(2, "big") + b"abc", b"A" + (1039).to_bytes(2, "big") + bytes(1039)):
        with pytest.raises(ParseError):
            parse_all(bad, parse_rkem_params)


def test_private_kem_params_storage_roundtrip() -> None:
    pair = KEMKeyPair(bytes(range(256)) * 4 + bytes(134), bytes(1763))
    for p in (PrivKEMProposed(pair), PrivKEMAccepted(bytes(1039), bytes(32), pair)):
        assert parse_all(p.encode(), parse_priv_kem_params) == p
    assert KEMKeyPair.parse(Reader(pair.encode())) == pair


def test_generate_params_and_reply_kem() -> None:
    rb = Stream(bytes(range(256)) * 200)
    pk1, pk2, priv, inv = generate_rcv_e2e_params(rb, 3, True)
    assert isinstance(priv, PrivKEMProposed) and inv.kem == KEMProposed(priv.keypair.public_key)
    assert (inv.key1, inv.key2) == (pk1.public(), pk2.public())
    use = reply_kem(3, inv.kem, True)
    assert use == AcceptKEM(priv.keypair.public_key)
    _, _, jpriv, conf = generate_snd_e2e_params(rb, 3, use)
    assert isinstance(jpriv, PrivKEMAccepted) and isinstance(conf.kem, KEMAccepted)
    assert sntrup761.decapsulate(conf.kem.ciphertext, priv.keypair.secret_key) == jpriv.shared_key
    assert reply_kem(3, None, True) == ProposeKEM()
    assert reply_kem(2, inv.kem, True) is None and reply_kem(3, inv.kem, False) is None
    # no KEM below version 3, whatever is asked
    _, _, none, v2 = generate_rcv_e2e_params(rb, 2, True)
    assert none is None and v2.kem is None
