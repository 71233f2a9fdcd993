"""SMP hellos (tests/data/smp/handshake.json, smp.md §1.3, §3.2–§3.3) and the connection machines."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_smp import x509
from sansio_smp.connection import (
    ClientConnection,
    ConnectionClosed,
    ConnectionState,
    HandshakeComplete,
    RouterConnection,
    TransmissionError,
    TransmissionReceived,
)
from sansio_smp.crypto import KeyAlgorithm, PrivateKey, PublicKey
from sansio_smp.encoding import VersionRange
from sansio_smp.errors import LocalProtocolError, RemoteProtocolError
from sansio_smp.handshake import ClientHello, ServerHello, negotiate_client_version
from sansio_smp.transmission import SMP_BLOCK_SIZE, TransmissionParams, encode_transmission, pad_block

DATA = Path(__file__).parent / "data" / "smp"
NOW = 1_700_000_000
HS = json.loads((DATA / "handshake.json").read_text())


@pytest.mark.parametrize("case", HS["client_hello"], ids=lambda c: c["id"])
def test_client_hello_vectors(case: dict) -> None:
    inp = case["inputs"]
    key = inp.get("client_session_key")
    hello = ClientHello(
        inp["version"],
        bytes.fromhex(inp["key_hash"]),
        PublicKey(KeyAlgorithm.X25519, bytes.fromhex(key["pub"])) if key else None,
        inp.get("proxy_server", False),
    )
    payload = bytes.fromhex(case["expected"]["payload"])
    assert hello.encode() == payload
    if hello.version < 7:  # no session key field below v7 (§3.3)
        hello = ClientHello(hello.version, hello.key_hash, None, hello.proxy_server)
    assert ClientHello.parse(payload) == hello
    # trailing bytes (padding, future fields) are ignored, as getHandshake does
    assert ClientHello.parse(payload + b"##junk") == hello


@pytest.mark.parametrize("case", HS["router_hello"], ids=lambda c: c["id"])
def test_router_hello_vectors(case: dict) -> None:
    payload = bytes.fromhex(case["expected"]["payload"])
    hello = ServerHello.parse(payload)
    inp = case["inputs"]
    assert (hello.versions.min, hello.versions.max) == tuple(inp["version_range"])
    assert hello.session_id.hex() == inp["session_id"]
    if hello.versions.max >= 7:
        assert hello.auth_key is not None
        if "signed_key" in case["expected"]:
            assert hello.auth_key.signed_key.hex() == case["expected"]["signed_key"]
        fx = HS["fixtures"][case["fixture"]]
        assert hello.auth_key.chain == (bytes.fromhex(fx["leaf_der"]), bytes.fromhex(fx["ca_der"]))
    else:
        assert hello.auth_key is None
    encoded = hello.encode()
    assert payload.startswith(encoded)  # the web-proof vector carries an extension we ignore


@pytest.mark.parametrize(
    "router,client,proxy,expected",
    [
        ((6, 18), (6, 18), False, 18),
        ((6, 6), (6, 18), False, 6),
        ((8, 17), (6, 18), False, 17),
        ((19, 20), (6, 18), False, None),
        ((6, 12), (6, 18), True, 10),
        ((6, 18), (6, 18), True, 18),
    ],
)
def test_version_negotiation(router: tuple, client: tuple, proxy: bool, expected: int | None) -> None:
    assert negotiate_client_version(VersionRange(*router), VersionRange(*client), proxy) == expected


@given(st.binary(max_size=300))
def test_hello_parsers_are_total(data: bytes) -> None:
    for parse in (ClientHello.parse, ServerHello.parse):
        try:
            parse(data)
        except RemoteProtocolError:
            pass


# ---------------------------------------------------------------- connection machines


def _identity(seed: int) -> x509.RouterIdentity:
    rng = random.Random(seed)
    return x509.generate_router_identity("localhost", rng.randbytes, NOW)


IDENTITY = _identity(1)


def _pair(seed: int = 1, identity: x509.RouterIdentity = IDENTITY, **client_kw):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    rb = rng.randbytes
    sid = rb(32)
    router = RouterConnection(session_id=sid, key_hash=identity.key_hash, identity=identity, random_bytes=rb)
    kw = dict(key_hash=identity.key_hash, session_id=sid, random_bytes=rb, peer_chain=identity.chain)
    kw.update(client_kw)
    client = ClientConnection(**kw)
    return router, client


def test_handshake_with_block_encryption_and_auth() -> None:
    router, client = _pair()
    (ev,) = client.receive_data(router.data_to_send())
    assert isinstance(ev, HandshakeComplete) and ev.version == 18 and ev.block_encryption
    (rev,) = router.receive_data(client.data_to_send())
    assert isinstance(rev, HandshakeComplete) and rev.block_encryption and rev.version == 18
    for alg in (KeyAlgorithm.ED25519, KeyAlgorithm.ED448, KeyAlgorithm.X25519):
        key = PrivateKey.generate(alg, random.Random(alg.value).randbytes)
        client.send_transmissions([client.authorize(b"c" * 24, b"q" * 24, b"SUB", key)])
        wire = client.data_to_send()
        assert len(wire) == SMP_BLOCK_SIZE and b"SUB" not in wire  # encrypted
        (got,) = router.receive_data(wire)
        assert isinstance(got, TransmissionReceived)
        assert got.transmission.command == b"SUB"
        assert router.verify_auth(got.transmission, key.public())
        other = PrivateKey.generate(alg, random.Random(99).randbytes)
        assert not router.verify_auth(got.transmission, other.public())
    router.send_transmissions([router.encode(b"c" * 24, b"q" * 24, b"OK")])
    (resp,) = client.receive_data(router.data_to_send())
    assert isinstance(resp, TransmissionReceived) and resp.transmission.command == b"OK"


def test_byte_at_a_time_delivery() -> None:
    router, client = _pair()
    events = []
    for b in router.data_to_send():
        events += client.receive_data(bytes([b]))
    assert [type(e) for e in events] == [HandshakeComplete]


def test_wrong_key_hash_is_refused_by_router() -> None:
    router, client = _pair(key_hash=b"\x01" * 32)
    # the client checks the identity itself first
    (ev,) = client.receive_data(router.data_to_send())
    assert isinstance(ev, ConnectionClosed) and "BAD_AUTH" in ev.reason
    assert client.state is ConnectionState.ERROR


def test_router_refuses_foreign_key_hash() -> None:
    router, _ = _pair()
    hello = ClientHello(18, b"\x02" * 32, None, False)
    (ev,) = router.receive_data(pad_block(hello.encode()))
    assert isinstance(ev, ConnectionClosed) and "IDENTITY" in ev.reason
    with pytest.raises(LocalProtocolError):
        router.receive_data(b"more")


def test_router_refuses_unsupported_version() -> None:
    router, _ = _pair()
    hello = ClientHello(19, router.key_hash, None, False)
    (ev,) = router.receive_data(pad_block(hello.encode()))
    assert isinstance(ev, ConnectionClosed) and "VERSION" in ev.reason


def test_no_alpn_means_v6_only_and_session_id_on_the_wire() -> None:
    rng = random.Random(3)
    sid = rng.randbytes(32)
    router = RouterConnection(session_id=sid, key_hash=b"k" * 32, identity=None, random_bytes=rng.randbytes, alpn=None)
    client = ClientConnection(key_hash=b"k" * 32, session_id=sid, random_bytes=rng.randbytes)
    (ev,) = client.receive_data(router.data_to_send())
    assert ev.version == 6 and not ev.block_encryption
    router.receive_data(client.data_to_send())
    key = PrivateKey.generate(KeyAlgorithm.ED25519, rng.randbytes)
    client.send_transmissions([client.authorize(b"abcd", b"q", b"SUB", key)])
    (got,) = router.receive_data(client.data_to_send())
    assert got.transmission.session_id == sid and router.verify_auth(got.transmission, key.public())
    # a transmission with another session id gets ERR SESSION with its corrId
    bad = encode_transmission(TransmissionParams.smp(6, b"x" * 32), b"efgh", b"q", b"PING")
    client.send_transmissions([bad])
    (err,) = router.receive_data(client.data_to_send())
    assert err == TransmissionError(b"efgh", "SESSION")


def test_client_rejects_wrong_session_id() -> None:
    router, client = _pair(session_id=b"\x00" * 32)
    (ev,) = client.receive_data(router.data_to_send())
    assert isinstance(ev, ConnectionClosed) and "SESSION" in ev.reason


def test_client_rejects_bad_session_key_signature() -> None:
    # the TLS peer leaf belongs to another identity with the same key hash claimed
    other = _identity(5)
    router, client = _pair(peer_chain=other.chain)
    (ev,) = client.receive_data(router.data_to_send())
    assert isinstance(ev, ConnectionClosed) and "BAD_AUTH" in ev.reason


def test_peer_vanishes_mid_block() -> None:
    router, client = _pair()
    client.receive_data(router.data_to_send())
    router.receive_data(client.data_to_send())
    client.send_transmissions([client.authorize(b"c" * 24, b"q", b"PING", None)])
    wire = client.data_to_send()
    assert router.receive_data(wire[:5000]) == []
    (ev,) = router.receive_data(b"")
    assert isinstance(ev, ConnectionClosed) and "mid-block" in ev.reason


def test_tampered_encrypted_block_closes_connection() -> None:
    router, client = _pair()
    client.receive_data(router.data_to_send())
    router.receive_data(client.data_to_send())
    client.send_transmissions([client.authorize(b"c" * 24, b"q", b"PING", None)])
    wire = bytearray(client.data_to_send())
    wire[10] ^= 0xFF
    (ev,) = router.receive_data(bytes(wire))
    assert isinstance(ev, ConnectionClosed) and router.state is ConnectionState.ERROR


def test_unencrypted_garbage_block_gives_block_error_and_connection_survives() -> None:
    router, client = _pair(send_key=False)
    client.receive_data(router.data_to_send())
    (hs,) = router.receive_data(client.data_to_send())
    assert not hs.block_encryption
    (ev,) = router.receive_data(pad_block(b"\x02\x00\x01"))
    assert ev == TransmissionError(b"", "BLOCK")
    client.send_transmissions([client.authorize(b"c" * 24, b"", b"PING", None)])
    (ok,) = router.receive_data(client.data_to_send())
    assert isinstance(ok, TransmissionReceived)


@settings(max_examples=200)
@given(st.binary(min_size=0, max_size=SMP_BLOCK_SIZE * 2))
def test_router_connection_total_on_random_bytes(data: bytes) -> None:
    router, client = _pair(send_key=False)
    client.receive_data(router.data_to_send())
    router.receive_data(client.data_to_send())
    events = router.receive_data(data)
    assert all(isinstance(e, (TransmissionReceived, TransmissionError, ConnectionClosed)) for e in events)
