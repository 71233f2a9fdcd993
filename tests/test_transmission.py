"""Transmission, batch and block codec: vectors of tests/data/smp/transmissions.json and
block-encryption.json, and the batching capacities of smp.md §7.3 (BatchingTests)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sansio_smp import crypto
from sansio_smp.crypto import KeyAlgorithm, PrivateKey, PublicKey
from sansio_smp.errors import CryptoError, ParseError, RemoteProtocolError
from sansio_smp.transmission import (
    SMP_BLOCK_SIZE,
    Batch,
    BlockCipher,
    TooLarge,
    TransmissionParams,
    authorized_bytes,
    batch_transmissions,
    encode_batch1,
    encode_transmission,
    pad_block,
    parse_batch,
    parse_transmission,
    unpad_block,
)

DATA = Path(__file__).parent / "data" / "smp"
TX = json.loads((DATA / "transmissions.json").read_text())
BE = json.loads((DATA / "block-encryption.json").read_text())
SESSION_ID = bytes.fromhex(TX["session"]["session_id"])
ROUTER_KEY = TX["session"]["router_session_key"]


def _hex_or_digest(value: object, actual: bytes) -> None:
    """Vectors give bytes in hex, or {sha256, length} for the large ones."""
    if isinstance(value, dict):
        assert len(actual) == value["length"]
        assert hashlib.sha256(actual).hexdigest() == value["sha256"]
    else:
        assert actual.hex() == value


def _case_bytes(case: dict, field: str) -> bytes | None:
    v = case.get(field)
    return bytes.fromhex(v) if isinstance(v, str) else None


def _private_key(spec: dict) -> PrivateKey:
    alg = KeyAlgorithm(spec["type"])
    return PrivateKey(alg, bytes.fromhex(spec["seed"] if "seed" in spec else spec["priv"]))


@pytest.mark.parametrize("case", TX["cases"], ids=lambda c: c["id"])
def test_transmission_vectors(case: dict) -> None:
    params = TransmissionParams.smp(18, SESSION_ID)
    exp = case["expected"]
    transmission = bytes.fromhex(exp["transmission"])
    parsed = parse_transmission(params, transmission)
    corr_id = bytes.fromhex(case["corr_id"])
    entity_id = bytes.fromhex(case["entity_id"])
    assert parsed.corr_id == corr_id and parsed.entity_id == entity_id
    command = _case_bytes(case, "command") or parsed.command
    _hex_or_digest(case["command"], parsed.command)
    _hex_or_digest(exp["authorized"], authorized_bytes(SESSION_ID, corr_id, entity_id, command))
    assert parsed.authorized == authorized_bytes(SESSION_ID, corr_id, entity_id, command)
    # Re-create the authorization from the key and compare byte for byte.
    auth = b""
    key = case.get("key")
    if key:
        priv = _private_key(key)
        if priv.alg is KeyAlgorithm.X25519:
            router = PublicKey(KeyAlgorithm.X25519, bytes.fromhex(ROUTER_KEY["pub"]))
            auth = crypto.cb_authenticate(router, priv, corr_id, parsed.authorized)
            router_priv = PrivateKey(KeyAlgorithm.X25519, bytes.fromhex(ROUTER_KEY["priv"]))
            assert crypto.cb_verify(priv.public(), router_priv, corr_id, auth, parsed.authorized)
        else:
            auth = priv.sign(parsed.authorized)
            assert priv.public().verify(auth, parsed.authorized)
        assert auth.hex() == exp["auth"]
    assert parsed.auth == auth
    assert parsed.service_sig is None
    assert encode_transmission(params, corr_id, entity_id, command, auth) == transmission
    _hex_or_digest(exp["block_payload"], encode_batch1(transmission))
    block = pad_block(encode_batch1(transmission))
    if "block" in exp:
        assert block.hex() == exp["block"]
    if "block_sha256" in exp:
        assert hashlib.sha256(block).hexdigest() == exp["block_sha256"]
    assert parse_batch(unpad_block(block)) == [transmission]


@pytest.mark.parametrize("batch", TX["batches"], ids=lambda b: b["id"])
def test_batch_vectors(batch: dict) -> None:
    if isinstance(batch["items"][0], dict):  # signed SUBs given as (corr_id, entity_id) + key
        params = TransmissionParams.smp(18, SESSION_ID)
        priv = _private_key(batch["key"])
        items = []
        for it in batch["items"]:
            corr, entity = bytes.fromhex(it["corr_id"]), bytes.fromhex(it["entity_id"])
            cmd = bytes.fromhex(batch["command"])
            sig = priv.sign(authorized_bytes(SESSION_ID, corr, entity, cmd))
            items.append(encode_transmission(params, corr, entity, cmd, sig))
        assert len(items) == 135
    else:
        items = [bytes.fromhex(i) for i in batch["items"]]
    result = batch_transmissions(items)
    assert len(result) == 1 and isinstance(result[0], Batch)
    _hex_or_digest(batch["expected"]["block_payload"], result[0].payload)
    assert parse_batch(result[0].payload) == items


def test_x25519_authenticator_anchor() -> None:
    a = TX["authenticator_anchor"]
    own = PrivateKey(KeyAlgorithm.X25519, bytes.fromhex(a["own_priv"]))
    peer = PublicKey(KeyAlgorithm.X25519, bytes.fromhex(a["peer_pub"]))
    out = crypto.cb_authenticate(peer, own, bytes.fromhex(a["nonce"]), bytes.fromhex(a["msg"]))
    assert out.hex() == a["expected"]["authenticator"]


# ---------------------------------------------------------------- block encryption (§3.5)


def test_block_encryption_chain_vectors() -> None:
    exp = BE["expected"]
    s = BE["session"]
    router = PrivateKey(KeyAlgorithm.X25519, bytes.fromhex(s["router_session_key"]["priv"]))
    client = PrivateKey(KeyAlgorithm.X25519, bytes.fromhex(s["client_session_key"]["priv"]))
    secret = router.dh(client.public())
    assert secret == client.dh(router.public())
    assert secret.hex() == exp["dh_secret"]
    ck1, ck2 = crypto.sbc_init(bytes.fromhex(s["session_id"]), secret)
    assert (ck1.hex(), ck2.hex()) == (exp["ck1"], exp["ck2"])
    for name in ("router_to_client_chain", "client_to_router_chain"):
        for step in exp[name]:
            nxt, key, nonce = crypto.sbc_step(bytes.fromhex(step["ck"]))
            assert (nxt.hex(), key.hex(), nonce.hex()) == (step["ck_next"], step["sb_key"], step["nonce"])


@pytest.mark.parametrize("direction", ["client_to_router_blocks", "router_to_client_blocks"])
def test_encrypted_block_vectors(direction: str) -> None:
    cases = BE[direction]
    enc = BlockCipher(bytes.fromhex(cases[0]["ck"]))
    dec = BlockCipher(bytes.fromhex(cases[0]["ck"]))
    for case in cases:
        if isinstance(case["payload"], dict):  # large payload pinned by digest: recover it from the block
            payload = BlockCipher(bytes.fromhex(case["ck"])).decrypt(bytes.fromhex(case["expected"]["block"]))
            _hex_or_digest(case["payload"], payload)
        else:
            payload = bytes.fromhex(case["payload"])
        block = enc.encrypt(payload)
        assert len(block) == SMP_BLOCK_SIZE
        if "block" in case["expected"]:
            assert block.hex() == case["expected"]["block"]
        if "block_sha256" in case["expected"]:
            assert hashlib.sha256(block).hexdigest() == case["expected"]["block_sha256"]
        assert dec.decrypt(block) == payload


def test_tampered_block_is_rejected() -> None:
    t = BE["tampered"]
    first = BE["client_to_router_blocks"][0]
    block = bytearray(BlockCipher(bytes.fromhex(first["ck"])).encrypt(bytes.fromhex(first["payload"])))
    block[100] ^= 1
    with pytest.raises(CryptoError):
        BlockCipher(bytes.fromhex(t["ck"])).decrypt(bytes(block))


def test_secretbox_anchor() -> None:
    a = BE["secretbox_anchor"]
    box = crypto.cb_encrypt(bytes.fromhex(a["key"]), bytes.fromhex(a["nonce"]), a["msg_text"].encode())
    assert box.hex() == a["expected"]["box"]
    assert crypto.cb_decrypt(bytes.fromhex(a["key"]), bytes.fromhex(a["nonce"]), box, padded=False) == a[
        "msg_text"
    ].encode()


def test_block_cipher_pair_directions() -> None:
    sid, secret = bytes(range(32)), bytes(range(50, 82))
    r_snd, r_rcv = BlockCipher.pair(sid, secret, is_router=True)
    c_snd, c_rcv = BlockCipher.pair(sid, secret, is_router=False)
    assert c_rcv.decrypt(r_snd.encrypt(b"router to client")) == b"router to client"
    assert r_rcv.decrypt(c_snd.encrypt(b"client to router")) == b"client to router"


# ---------------------------------------------------------------- batching capacities (§7.3)

_rng = random.Random(7)


def _rb(n: int) -> bytes:
    return _rng.randbytes(n)


def _signed(version: int, entity: bytes, command: bytes, alg: KeyAlgorithm = KeyAlgorithm.ED25519) -> bytes:
    params = TransmissionParams.smp(version, SESSION_ID)
    corr = _rb(24)
    priv = PrivateKey.generate(alg, _rb)
    data = authorized_bytes(SESSION_ID, corr, entity, command)
    if alg is KeyAlgorithm.X25519:
        router = PrivateKey.generate(KeyAlgorithm.X25519, _rb).public()
        auth = crypto.cb_authenticate(router, priv, corr, data)
    else:
        auth = priv.sign(data)
    return encode_transmission(params, corr, entity, command, auth)


def _sub(v: int) -> bytes:
    return _signed(v, _rb(24), b"SUB")


def _send(v: int, size: int) -> bytes:
    alg = KeyAlgorithm.X25519 if v >= 7 else KeyAlgorithm.ED25519
    return _signed(v, _rb(24), b"SEND F " + _rb(size), alg)


def _counts(result: list) -> list:
    return [len(b.indices) if isinstance(b, Batch) else "LARGE" for b in result]


def test_signed_sub_is_119_bytes_at_v18() -> None:
    assert len(_sub(18)) == 119


@pytest.mark.parametrize("version,expected", [(18, [30, 135, 135]), (6, [38, 106, 106])])
def test_subscription_capacity(version: int, expected: list) -> None:
    assert _counts(batch_transmissions([_sub(version) for _ in range(300 if version == 18 else 250)])) == expected


@pytest.mark.parametrize("version,expected", [(18, [33, 68]), (6, [47, 54])])
def test_batch_breaks_on_message_that_does_not_fit(version: int, expected: list) -> None:
    ts = [_sub(version) for _ in range(60)] + [_send(version, 8000)] + [_sub(version) for _ in range(40)]
    assert _counts(batch_transmissions(ts)) == expected


@pytest.mark.parametrize(
    "version,n1,expected,expected_first",
    [(18, 60, [60, "LARGE", 15, 135], ["LARGE", 75, 135]), (6, 50, [50, "LARGE", 44, 106], ["LARGE", 94, 106])],
)
def test_batch_large_message_only_fails_itself(version: int, n1: int, expected: list, expected_first: list) -> None:
    subs1 = [_sub(version) for _ in range(n1)]
    send = _send(version, 17000)
    subs2 = [_sub(version) for _ in range(150)]
    result = batch_transmissions(subs1 + [send] + subs2)
    assert _counts(result) == expected
    assert isinstance(result[1], TooLarge) and result[1].index == n1
    assert _counts(batch_transmissions([send] + subs1 + subs2)) == expected_first


def _response(entity: bytes, command: bytes, corr: bytes = b"") -> bytes:
    return encode_transmission(TransmissionParams.smp(18, SESSION_ID), corr, entity, command)


def test_end_capacity() -> None:
    ends = [_response(_rb(24), b"END") for _ in range(300)]
    assert len(ends[0]) == 30
    assert _counts(batch_transmissions(ends)) == [45, 255]


def test_nmsg_capacity() -> None:
    secret = _rb(32)
    ntfs = []
    for _ in range(200):
        nonce = _rb(24)
        meta = crypto.cb_encrypt(secret, nonce, b"\x18" + _rb(24) + _rb(8), 128)
        assert len(meta) == 144
        ntfs.append(_response(_rb(24), b"NMSG " + nonce + bytes((len(meta),)) + meta))
    assert _counts(batch_transmissions(ntfs)) == [40, 80, 80]


def test_sub_responses_with_message() -> None:
    msg = _response(_rb(24), b"MSG " + b"\x18" + _rb(24) + _rb(16048), _rb(24))
    soks = [_response(_rb(24), b"SOK 0", _rb(24)) for _ in range(5)]
    assert len(batch_transmissions(soks[:4] + [msg])) == 1
    assert len(batch_transmissions(soks + [msg])) == 2


# ---------------------------------------------------------------- totality


@given(st.binary(max_size=600), st.booleans(), st.booleans())
def test_parse_transmission_is_total(data: bytes, implied: bool, service: bool) -> None:
    params = TransmissionParams(18, SESSION_ID, implied_session=implied, service_auth=service)
    try:
        t = parse_transmission(params, data)
    except RemoteProtocolError:
        return
    assert encode_transmission(params, t.corr_id, t.entity_id, t.command, t.auth, t.service_sig) == data or (
        not implied and t.session_id != SESSION_ID
    )


@given(st.binary(max_size=2000))
def test_parse_batch_is_total(data: bytes) -> None:
    try:
        items = parse_batch(data)
    except ParseError:
        return
    assert batch_transmissions(items)[0].payload == data  # type: ignore[union-attr]


@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=60),
)
def test_batching_round_trip(items: list[bytes]) -> None:
    out: list[bytes] = []
    for b in batch_transmissions(items):
        assert isinstance(b, Batch)
        assert len(b.payload) <= SMP_BLOCK_SIZE - 19 + 1
        out.extend(parse_batch(b.payload))
    assert out == items


@given(st.binary(max_size=SMP_BLOCK_SIZE))
def test_block_decrypt_is_total(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        BlockCipher(bytes(32)).decrypt(data)
