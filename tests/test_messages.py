"""Message layers (sansio_smp/messages.py) against message-layers.json and smp.md §5.3–§5.5.

* router → recipient MSG bodies: all 4 rcv_msg cases (incl. the quota marker), both directions,
  and the MSG responses of responses.json decrypted with the same keys;
* the sender's per-queue e2e envelope: both e2e_envelope cases (confirmation with key, message);
* NMSG metadata; totality and round trips with Hypothesis.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_smp import messages as M
from sansio_smp import protocol as P
from sansio_smp.crypto import KeyAlgorithm, PrivateKey, PublicKey
from sansio_smp.encoding import i64, sb
from sansio_smp.errors import CryptoError, LocalProtocolError, ParseError

DATA = Path(__file__).parent / "data" / "smp"
LAYERS = json.loads((DATA / "message-layers.json").read_text())
RESPONSES = json.loads((DATA / "responses.json").read_text())


def _hex(s: str) -> bytes:
    return bytes.fromhex(s)


def _x25519(k: dict[str, Any]) -> PrivateKey:
    priv = PrivateKey(KeyAlgorithm.X25519, _hex(k["priv"]))
    assert priv.public().raw.hex() == k["pub"]
    return priv


def _bytes_or_digest(value: Any, full: bytes) -> None:
    if isinstance(value, str):
        assert full.hex() == value
    else:
        assert hashlib.sha256(full).hexdigest() == value["sha256"] and len(full) == value["length"]


ENVELOPES: dict[str, bytes] = {}


@pytest.mark.parametrize("case", LAYERS["e2e_envelope"], ids=[c["id"] for c in LAYERS["e2e_envelope"]])
def test_e2e_envelope(case: dict[str, Any]) -> None:
    i, e = case["inputs"], case["expected"]
    recipient, sender = _x25519(i["recipient_e2e_key"]), _x25519(i["sender_e2e_key"])
    secret = sender.dh(recipient.public())
    assert secret.hex() == e["e2e_dh_secret"] == recipient.dh(sender.public()).hex()

    ph = i["priv_header"]
    confirmation = ph["type"] == "PHConfirmation"
    priv_header = M.PHConfirmation(PublicKey.from_spki(_hex(ph["key"]))) if confirmation else M.PHEmpty()
    if confirmation:
        assert ph["key"] == i["priv_header_key"]["spki"]
    body = _hex(i["agent_body"])
    assert len(body) == i["agent_body_length"]
    header = M.PubHeader(i["smp_client_version"], sender.public() if confirmation else None)
    message = M.ClientMessage(priv_header, body)
    assert header.encode().hex() == e["pub_header"]
    assert message.encode().hex() == e["client_message"]
    assert M.e2e_padded_length(header) == e["padded_length"]

    envelope = M.encrypt_client_message(secret, header, _hex(i["nonce"]), message)
    wire = envelope.encode()
    assert wire.hex() == e["envelope"] and len(wire) == e["envelope_length"]
    _bytes_or_digest(e["enc_body"], wire[e["enc_body_offset"] :])
    assert envelope.enc_body == wire[e["enc_body_offset"] :]
    ENVELOPES[case["id"]] = wire

    # the recipient's side: parse, agree the secret from the header key, decrypt
    got = M.ClientMsgEnvelope.decode(wire)
    assert got == envelope
    web = e["smp_web_agentCbDecrypt"]
    assert got.header.version == web["pubHeader"]["phVersion"]
    assert (got.header.e2e_dh_key.spki().hex() if got.header.e2e_dh_key else None) == web["pubHeader"]["phE2ePubDhKey"]
    peer = got.header.e2e_dh_key or sender.public()  # later messages reuse the confirmation's key
    opened = M.decrypt_client_message(recipient.dh(peer), got)
    assert opened == message
    assert opened.body.hex() == web["clientMessage"]["body"]
    if confirmation:
        assert isinstance(opened.priv_header, M.PHConfirmation)
        assert opened.priv_header.sender_key.spki().hex() == web["clientMessage"]["privHeader"]["key"]
    else:
        assert isinstance(opened.priv_header, M.PHEmpty)

    tampered = wire[:-1] + bytes([wire[-1] ^ 1])
    with pytest.raises(CryptoError):
        M.decrypt_client_message(secret, M.ClientMsgEnvelope.decode(tampered))


def _envelope(ref: str) -> bytes:
    case_id = ref.split("[")[1].split("]")[0]
    case = next(c for c in LAYERS["e2e_envelope"] if c["id"] == case_id)
    return _hex(case["expected"]["envelope"])


def _rcv_msg(case: dict[str, Any]) -> M.RcvMsgBody | M.RcvMsgQuota:
    i = case["inputs"]
    if i.get("quota"):
        return M.RcvMsgQuota(i["msg_ts"])
    sent = i["sent_body"]
    body = _envelope(i["sent_body_ref"]) if isinstance(sent, dict) else _hex(sent)
    if isinstance(sent, dict):
        _bytes_or_digest(sent, body)
    return M.RcvMsgBody(i["msg_ts"], body, i["flags"] == "T")


@pytest.mark.parametrize("case", LAYERS["rcv_msg"], ids=[c["id"] for c in LAYERS["rcv_msg"]])
def test_rcv_msg(case: dict[str, Any]) -> None:
    i, e = case["inputs"], case["expected"]
    recipient, router = _x25519(i["recipient_dh_key"]), _x25519(i["router_queue_dh_key"])
    secret = router.dh(recipient.public())
    assert secret.hex() == e["dh_secret"] == recipient.dh(router.public()).hex()
    msg = _rcv_msg(case)
    plain = M.encode_rcv_msg_body(msg)
    _bytes_or_digest(e["plaintext"], plain)
    assert plain[:16].hex() == e["plaintext_head"][:32] and len(plain) == e["plaintext_length"]
    assert e["padded_length"] == P.RCV_MSG_PADDED_LENGTH
    msg_id = _hex(i["msg_id"])
    enc = M.encrypt_rcv_msg_body(secret, msg_id, msg)
    assert enc.hex() == e["enc_rcv_msg_body"]
    assert len(enc) == e["enc_rcv_msg_body_length"] == P.ENC_RCV_MSG_BODY_LENGTH
    assert M.decrypt_rcv_msg_body(recipient.dh(router.public()), msg_id, enc) == msg
    with pytest.raises(CryptoError):
        M.decrypt_rcv_msg_body(secret, bytes(24), enc)  # wrong nonce


@pytest.mark.parametrize("case_id,layer_id", [("msg-envelope", "message-envelope"), ("msg-quota-marker", "quota-marker")])
def test_msg_responses_decrypt(case_id: str, layer_id: str) -> None:
    """responses.json's MSG responses carry exactly message-layers.json's bodies."""
    resp_case = next(c for c in RESPONSES["cases"] if c["id"] == case_id)
    layer = next(c for c in LAYERS["rcv_msg"] if c["id"] == layer_id)
    resp = P.parse_response(_hex(resp_case["input"]), 18)
    assert isinstance(resp, P.Msg) and resp.msg_id.hex() == layer["inputs"]["msg_id"]
    recipient = _x25519(layer["inputs"]["recipient_dh_key"])
    router = PublicKey.from_spki(_hex(layer["inputs"]["router_queue_dh_key"]["spki"]))
    assert M.decrypt_rcv_msg_body(recipient.dh(router), resp.msg_id, resp.enc_body) == _rcv_msg(layer)


def test_rcv_msg_vector_counts() -> None:
    assert len(LAYERS["rcv_msg"]) == 4 and len(LAYERS["e2e_envelope"]) == 2


# ---------------------------------------------------------------- RcvMsgBody grammar (§5.3)


@pytest.mark.parametrize(
    "plain,msg",
    [
        (i64(5) + b"T body", M.RcvMsgBody(5, b"body", True)),
        (i64(5) + b"Fxyz  two", M.RcvMsgBody(5, b" two")),  # extra flag bytes skipped
        (i64(-1) + b"F ", M.RcvMsgBody(-1, b"")),
        (b"QUOTA " + i64(7), M.RcvMsgQuota(7)),
        # "QUOTA" not followed by ' ' + Int64: attoparsec backtracks to a message whose ts bytes spell it
        (b"QUOTA!!!T x", M.RcvMsgBody(int.from_bytes(b"QUOTA!!!", "big", signed=True), b"x", True)),
    ],
)
def test_rcv_msg_body_grammar(plain: bytes, msg: Any) -> None:
    assert M.parse_rcv_msg_body(plain) == msg


@pytest.mark.parametrize(
    "plain",
    [b"", i64(5), i64(5) + b"T", i64(5) + b"X body", i64(5) + b"Tbody", b"QUOTA " + i64(7) + b"x", b"QUOTA "],
)
def test_rcv_msg_body_rejects(plain: bytes) -> None:
    with pytest.raises(ParseError):
        M.parse_rcv_msg_body(plain)


def test_rcv_msg_body_limits() -> None:
    secret, msg_id = bytes(range(32)), bytes(24)
    biggest = M.RcvMsgBody(1, bytes(P.MAX_MESSAGE_LEN))
    # i64 + 1 flag byte + ' ': 6 of the 16 reserved bytes (7 flags + space) stay unused
    assert len(M.encode_rcv_msg_body(biggest)) == P.MAX_MESSAGE_LEN + 10 <= P.MAX_RCV_MESSAGE_LEN
    enc = M.encrypt_rcv_msg_body(secret, msg_id, biggest)
    assert len(enc) == 16122 and M.decrypt_rcv_msg_body(secret, msg_id, enc) == biggest
    with pytest.raises(LocalProtocolError):
        M.encode_rcv_msg_body(M.RcvMsgBody(1, bytes(P.MAX_MESSAGE_LEN + 1)))


# ---------------------------------------------------------------- NMSG metadata (§5.5)


def test_nmsg_meta() -> None:
    router = PrivateKey(KeyAlgorithm.X25519, bytes(range(1, 33)))
    recipient = PrivateKey(KeyAlgorithm.X25519, bytes(range(33, 65)))
    meta = M.NMsgMeta(b"m" * 24, 1700000000)
    assert meta.encode() == sb(b"m" * 24) + i64(1700000000)
    nonce = bytes(range(24))
    enc = M.encrypt_nmsg_meta(router.dh(recipient.public()), nonce, meta)
    assert len(enc) == P.ENC_NMSG_META_LENGTH == 144
    assert M.decrypt_nmsg_meta(recipient.dh(router.public()), nonce, enc) == meta
    nmsg = P.NMsg(nonce, enc)
    assert P.parse_response(P.encode_response(nmsg, 18), 18) == nmsg
    # future fields after the timestamp are tolerated
    assert M.NMsgMeta.decode(meta.encode() + b"ext") == meta
    with pytest.raises(ParseError):
        M.NMsgMeta.decode(meta.encode()[:-1])
    with pytest.raises(CryptoError):
        M.decrypt_nmsg_meta(bytes(32), nonce, enc)


def test_envelope_rejects() -> None:
    with pytest.raises(ParseError):
        M.ClientMsgEnvelope.decode(b"\x00\x04" + b"0" + b"n" * 23)  # short nonce
    with pytest.raises(ParseError):
        M.ClientMsgEnvelope.decode(b"\x00\x041" + sb(PublicKey(KeyAlgorithm.ED25519, bytes(32)).spki()) + bytes(24))
    with pytest.raises(ParseError):
        M.ClientMessage.decode(b"Xbody")
    with pytest.raises(ParseError):
        M.ClientMessage.decode(b"K" + sb(PublicKey(KeyAlgorithm.X448, bytes(56)).spki()))
    assert M.ClientMessage.decode(b"_") == M.ClientMessage(M.PHEmpty(), b"")


# ---------------------------------------------------------------- Hypothesis

auth_keys = st.builds(
    lambda alg, raw: PublicKey(alg, raw[: 57 if alg is KeyAlgorithm.ED448 else 32]),
    st.sampled_from([KeyAlgorithm.ED25519, KeyAlgorithm.ED448, KeyAlgorithm.X25519]),
    st.binary(min_size=57, max_size=57),
)
x25519 = st.binary(min_size=32, max_size=32).map(lambda b: PublicKey(KeyAlgorithm.X25519, b))
rcv_msgs = st.one_of(
    st.builds(M.RcvMsgBody, st.integers(-(1 << 63), (1 << 63) - 1), st.binary(max_size=400), st.booleans()),
    st.builds(M.RcvMsgQuota, st.integers(-(1 << 63), (1 << 63) - 1)),
)


@given(rcv_msgs, st.binary(min_size=32, max_size=32), st.binary(max_size=30))
@settings(max_examples=60, deadline=None)
def test_rcv_msg_roundtrip(msg: Any, secret: bytes, msg_id: bytes) -> None:
    assert M.parse_rcv_msg_body(M.encode_rcv_msg_body(msg)) == msg
    enc = M.encrypt_rcv_msg_body(secret, msg_id, msg)
    assert len(enc) == 16122
    assert M.decrypt_rcv_msg_body(secret, msg_id, enc) == msg


@given(
    st.integers(0, 0xFFFF),
    st.none() | x25519,
    st.one_of(st.just(M.PHEmpty()), st.builds(M.PHConfirmation, auth_keys)),
    st.binary(max_size=500),
    st.binary(min_size=24, max_size=24),
    st.binary(min_size=32, max_size=32),
)
@settings(max_examples=60, deadline=None)
def test_envelope_roundtrip(version: int, key: Any, priv: Any, body: bytes, nonce: bytes, secret: bytes) -> None:
    header = M.PubHeader(version, key)
    env = M.encrypt_client_message(secret, header, nonce, M.ClientMessage(priv, body))
    wire = env.encode()
    assert len(env.enc_body) == 16 + (15904 if key is not None else 16000)
    assert M.ClientMsgEnvelope.decode(wire) == env
    assert M.decrypt_client_message(secret, M.ClientMsgEnvelope.decode(wire)) == M.ClientMessage(priv, body)


@given(st.binary(max_size=200))
@settings(max_examples=400)
def test_parsers_total(data: bytes) -> None:
    for parse in (M.parse_rcv_msg_body, M.ClientMsgEnvelope.decode, M.ClientMessage.decode, M.NMsgMeta.decode):
        try:
            parse(data)
        except ParseError:
            pass
    try:
        M.decrypt_rcv_msg_body(bytes(32), bytes(24), data)
    except ParseError:  # CryptoError is a RemoteProtocolError too
        pass
    except CryptoError:
        pass
