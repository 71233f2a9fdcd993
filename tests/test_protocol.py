"""SMP command/response codec (sansio_smp/protocol.py) against commands.json, responses.json and smp.md §4.

* every commands.json case (encode from args, parse back), every responses.json case (parse, compare
  with smp-web's result and the dossier fields, re-encode byte for byte), the 5 responses smp-web
  does not parse, and the commands inside the response block payloads;
* NEW / IDS at v6, v8, v9, v14, v15, v16, v17, v18 with bytes laid out by hand from §4.6;
* version downgrades (SOK, DELD, BLOCKED), the §4.7 error grammar, tag parsing (§4.4, §7.1 item 28);
* the §4.3 credential rules;
* Hypothesis: every command and response round-trips at every version 6..18 (modulo the fields the
  version cannot carry), and random bytes give a value or a typed error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sansio_smp import protocol as P
from sansio_smp.addresses import ProtocolServer, QueueMode
from sansio_smp.crypto import KeyAlgorithm, PublicKey
from sansio_smp.encoding import VersionRange, lg, sb, w16
from sansio_smp.errors import LocalProtocolError, ParseError
from sansio_smp.x509 import CertChainPubKey

DATA = Path(__file__).parent / "data" / "smp"
COMMANDS = json.loads((DATA / "commands.json").read_text())
HANDSHAKE = json.loads((DATA / "handshake.json").read_text())
# real DER for PKEY: the parser decodes the chain as X.509 and the signed key as a SignedExact
LEAF_DER = bytes.fromhex(HANDSHAKE["fixtures"]["ed448"]["leaf_der"])
CA_DER = bytes.fromhex(HANDSHAKE["fixtures"]["ed448"]["ca_der"])
ED25519_LEAF_DER = bytes.fromhex(HANDSHAKE["fixtures"]["ed25519"]["leaf_der"])
SIGNED_KEYS = [bytes.fromhex(h["expected"]["signed_key"]) for h in HANDSHAKE["router_hello"] if h["expected"].get("signed_key")]
CERT_KEY = CertChainPubKey((LEAF_DER, CA_DER), SIGNED_KEYS[0])
RESPONSES = json.loads((DATA / "responses.json").read_text())
VERSIONS = list(range(6, 19))


def _hex(s: str) -> bytes:
    return bytes.fromhex(s)


def _key(k: dict[str, Any]) -> PublicKey:
    return PublicKey.from_spki(_hex(k["spki"]))


def _large(value: Any, full: bytes | None = None) -> bytes:
    """A vector byte field: hex, or {sha256, length} checked against ``full``."""
    if isinstance(value, str):
        return _hex(value)
    assert full is not None and hashlib.sha256(full).hexdigest() == value["sha256"] and len(full) == value["length"]
    return full


# ---------------------------------------------------------------- commands.json


def _command_from_args(case: dict[str, Any]) -> P.Command:
    a, cid = case["args"], case["id"]
    expected = _hex(case["expected"])
    if cid.startswith("new-"):
        return P.New(
            _key(a["rcv_auth_key"]),
            _key(a["rcv_dh_key"]),
            _hex(a["basic_auth"]) if a["basic_auth"] else None,
            P.SubscriptionMode.SUBSCRIBE if a["subscribe"] else P.SubscriptionMode.ONLY_CREATE,
            P.QueueReqData(QueueMode.MESSAGING),  # smp-web always sends QRMessaging Nothing
        )
    if cid.startswith("key-"):
        return P.Key(_key(a["sender_key"]))
    if cid.startswith("skey-"):
        return P.SKey(_key(a["sender_key"]))
    if cid.startswith("ack"):
        return P.Ack(_hex(a["msg_id"]))
    if cid.startswith("send-"):
        return P.Send(_large(a["body"], expected[7:]), a["notification"])
    if cid.startswith("prxy-"):
        server = ProtocolServer(tuple(a["hosts"]), a["port"], _hex(a["key_hash"]))
        return P.Prxy(server, _hex(a["basic_auth"]) if a["basic_auth"] else None)
    simple = {"sub": P.Sub, "get": P.Get, "off": P.Off, "del": P.Del, "que": P.Que, "ping": P.Ping, "lget": P.LGet}
    return simple[cid]()


# The reference parses basic auth with ``basicAuth`` (printable, no spaces, no '@' ':' '/'), so a Haskell
# router answers this smp-web encoding (password "server password") with ERR CMD SYNTAX.
UNPARSABLE_COMMANDS = {"new-x25519-create-only-basic-auth"}


@pytest.mark.parametrize("case", COMMANDS["cases"], ids=[c["id"] for c in COMMANDS["cases"]])
def test_command_vectors(case: dict[str, Any]) -> None:
    cmd = _command_from_args(case)
    encoded = P.encode_command(cmd, 18)
    assert encoded.hex() == case["expected"]
    assert len(encoded) == case["expected_length"]
    if case["id"] in UNPARSABLE_COMMANDS:
        with pytest.raises(P.CommandParseError) as ei:
            P.parse_command(encoded, 18)
        assert ei.value.code is P.CommandError.SYNTAX
    else:
        assert P.parse_command(encoded, 18) == cmd


def test_command_vector_count() -> None:
    assert len(COMMANDS["cases"]) == 26


# ---------------------------------------------------------------- responses.json

C = P.CommandError
ERR_EXPECTED: dict[str, P.ErrorType] = {
    "err-auth": P.AUTH,
    "err-block": P.BLOCK,
    "err-session": P.SESSION,
    "err-cmd-unknown": P.CmdError(C.UNKNOWN),
    "err-cmd-syntax": P.CmdError(C.SYNTAX),
    "err-cmd-prohibited": P.CmdError(C.PROHIBITED),
    "err-cmd-no-auth": P.CmdError(C.NO_AUTH),
    "err-cmd-has-auth": P.CmdError(C.HAS_AUTH),
    "err-cmd-no-entity": P.CmdError(C.NO_ENTITY),
    "err-quota": P.QUOTA,
    "err-no-msg": P.NO_MSG,
    "err-large-msg": P.LARGE_MSG,
    "err-service": P.SERVICE,
    "err-crypto": P.CRYPTO,
    "err-expired": P.EXPIRED,
    "err-internal": P.INTERNAL,
    "err-blocked-reason-spam": P.BlockedError(P.BlockingInfo(P.BlockingReason.SPAM)),
    "err-blocked-reason-content-notice-ttl-86400": P.BlockedError(
        P.BlockingInfo(P.BlockingReason.CONTENT, P.ClientNotice(86400))
    ),
    "err-store-some-storage-error": P.StoreError("some storage error"),
    "err-proxy-no-session": P.ProxyErrorType(P.PROXY_NO_SESSION),
    "err-proxy-basic-auth": P.ProxyErrorType(P.PROXY_BASIC_AUTH),
    "err-proxy-broker-timeout": P.ProxyErrorType(P.proxy_broker(P.BROKER_TIMEOUT)),
    "err-proxy-broker-network": P.ProxyErrorType(P.proxy_broker(P.BROKER_NETWORK)),
    "err-proxy-broker-host": P.ProxyErrorType(P.proxy_broker(P.BROKER_HOST)),
    "err-proxy-broker-no-service": P.ProxyErrorType(P.proxy_broker(P.BROKER_NO_SERVICE)),
    "err-proxy-broker-transport-handshake-identity": P.ProxyErrorType(
        P.proxy_broker(P.broker_transport(P.TransportErrorCode.HANDSHAKE_IDENTITY))
    ),
    "err-proxy-broker-transport-version": P.ProxyErrorType(
        P.proxy_broker(P.broker_transport(P.TransportErrorCode.VERSION))
    ),
    "err-proxy-protocol-auth": P.ProxyErrorType(P.proxy_protocol(P.AUTH)),
    "err-proxy-protocol-quota": P.ProxyErrorType(P.proxy_protocol(P.QUOTA)),
    "err-proxy-broker-response": P.ProxyErrorType(P.proxy_broker(P.broker_response("bad response"))),
    "err-proxy-broker-unexpected": P.ProxyErrorType(P.proxy_broker(P.broker_unexpected("PONG"))),
}


def _check_ids(resp: P.Response, case: dict[str, Any]) -> None:
    assert isinstance(resp, P.Ids)
    f, web = case["dossier_fields"], case["expected"]["response"]
    assert resp.rcv_id.hex() == f["rcv_id"] == web["rcvId"]
    assert resp.snd_id.hex() == f["snd_id"] == web["sndId"]
    assert resp.srv_dh_key.spki().hex() == f["srv_dh_key"]["spki"] == web["srvDhKey"]
    mode = None if resp.queue_mode is None else resp.queue_mode.value.decode()
    assert mode == f["queue_mode"] == web["queueMode"]
    assert (resp.link_id.hex() if resp.link_id is not None else None) == f["link_id"] == web["linkId"]
    assert (resp.service_id.hex() if resp.service_id is not None else None) == f["service_id"]
    if f["ntf_creds"] is None:
        assert resp.ntf_creds is None
    else:
        assert resp.ntf_creds is not None
        assert resp.ntf_creds.notifier_id.hex() == f["ntf_creds"]["notifier_id"]
        assert resp.ntf_creds.dh_key.spki().hex() == f["ntf_creds"]["srv_ntf_dh_key"]["spki"]


@pytest.mark.parametrize("case", RESPONSES["cases"], ids=[c["id"] for c in RESPONSES["cases"]])
def test_response_vectors(case: dict[str, Any]) -> None:
    data = _hex(case["input"])
    assert len(data) == case["input_length"]
    resp = P.parse_response(data, 18)
    exp = case["expected"]
    assert resp.TAG.decode() == exp["type"]
    if isinstance(resp, P.Ids):
        _check_ids(resp, case)
    elif isinstance(resp, P.Lnk):
        web = exp["response"]
        assert resp.sender_id.hex() == web["senderId"] == case["dossier_fields"]["sender_id"]
        assert resp.link_data.fixed_data.hex() == web["encFixedData"]
        assert resp.link_data.user_data.hex() == web["encUserData"]
    elif isinstance(resp, P.SOk):
        assert (None if resp.service_id is None else resp.service_id.hex()) == exp["serviceId"]
    elif isinstance(resp, P.Msg):
        web = exp["response"]
        assert resp.msg_id.hex() == web["msgId"]
        assert resp.enc_body == _large(web["msgBody"], resp.enc_body)
    elif isinstance(resp, P.Err):
        assert resp.error == ERR_EXPECTED[case["id"]]
        assert resp.error.encode() == exp["error"].encode("latin-1")
    else:
        assert resp in (P.Ok(), P.End(), P.Deld(), P.Pong())
    assert P.encode_response(resp, 18) == data
    assert P.check_response_credentials(resp, b"\x01" * 24) in (None, P.CmdError(C.HAS_AUTH))


def test_response_vector_count() -> None:
    assert len(RESPONSES["cases"]) == 45
    assert len([c for c in RESPONSES["cases"] if c["id"].startswith("err-")]) == len(ERR_EXPECTED) == 31


def _not_parsed(case_id: str) -> dict[str, Any]:
    return next(c for c in RESPONSES["not_parsed_by_smp_web"] if c["id"] == case_id)


def test_not_parsed_by_smp_web_nid() -> None:
    case = _not_parsed("nid")
    f = case["dossier_fields"]
    resp = P.parse_response(_hex(case["input"]), 18)
    assert resp == P.Nid(_hex(f["notifier_id"]), _key(f["srv_ntf_dh_key"]))
    assert P.encode_response(resp, 18).hex() == case["input"]


def test_not_parsed_by_smp_web_info() -> None:
    case = _not_parsed("info")
    resp = P.parse_response(_hex(case["input"]), 18)
    assert resp == P.Info(P.QueueInfo(snd=False, ntf=False, size=0))
    assert P.encode_response(resp, 18).hex() == case["input"]
    assert P.QueueInfo(False, False, 0).to_json() == case["dossier_fields"]["queue_info_json"].encode()


@pytest.mark.parametrize("case_id,cls", [("soks", P.SOks), ("ends", P.Ends)])
def test_not_parsed_by_smp_web_counts(case_id: str, cls: type) -> None:
    case = _not_parsed(case_id)
    resp = P.parse_response(_hex(case["input"]), 18)
    assert resp == cls(case["dossier_fields"]["count"])
    assert P.encode_response(resp, 18).hex() == case["input"]


def test_not_parsed_by_smp_web_nmsg() -> None:
    case = _not_parsed("nmsg")
    f = case["dossier_fields"]
    resp = P.parse_response(_hex(case["input"]), 18)
    assert resp == P.NMsg(_hex(f["nonce"]), _hex(f["enc_nmsg_meta"]))
    assert len(resp.enc_meta) == P.ENC_NMSG_META_LENGTH
    assert P.encode_response(resp, 18).hex() == case["input"]


def test_not_parsed_count() -> None:
    assert {c["id"] for c in RESPONSES["not_parsed_by_smp_web"]} == {"nid", "info", "soks", "ends", "nmsg"}


@pytest.mark.parametrize("block", RESPONSES["transmissions"], ids=[b["id"] for b in RESPONSES["transmissions"]])
def test_response_block_commands(block: dict[str, Any]) -> None:
    """The command part of every router transmission in the response blocks parses as smp-web says."""
    web = block["expected"]["smp_web_responses"]
    assert len(web) == len(block["items"])
    for item, expected in zip(block["items"], web):
        cmd = item["command"]
        if isinstance(cmd, dict):  # a large MSG: check its size only
            continue
        resp = P.parse_response(_hex(cmd), 18)
        assert resp.TAG.decode() == expected["type"]
        assert P.encode_response(resp, 18).hex() == cmd
        assert P.check_response_credentials(resp, _hex(item["entity_id"])) is None


# ---------------------------------------------------------------- NEW / IDS by version (§4.6)

AUTH_KEY = PublicKey(KeyAlgorithm.ED25519, bytes(range(32)))
DH_KEY = PublicKey(KeyAlgorithm.X25519, bytes(range(32, 64)))
NTF_AUTH = PublicKey(KeyAlgorithm.X25519, bytes(range(64, 96)))
NTF_DH = PublicKey(KeyAlgorithm.X25519, bytes(range(96, 128)))
A_ = sb(AUTH_KEY.spki())
D_ = sb(DH_KEY.spki())
LINK = P.QueueLinkData(b"F" * 300, b"U" * 20)
LINK_ENC = lg(b"F" * 300) + lg(b"U" * 20)

NEW_FULL = P.New(
    AUTH_KEY,
    DH_KEY,
    b"pw",
    P.SubscriptionMode.ONLY_CREATE,
    P.QueueReqData(QueueMode.MESSAGING, b"s" * 24, LINK),
    P.NewNtfCreds(NTF_AUTH, NTF_DH),
)
NEW_CONTACT = P.New(
    AUTH_KEY, DH_KEY, None, P.SubscriptionMode.SUBSCRIBE, P.QueueReqData(QueueMode.CONTACT, b"s" * 24, LINK, b"l" * 24)
)

NEW_BY_VERSION = {
    6: (b"NEW " + A_ + D_ + b"A\x02pwC", attrs.evolve(NEW_FULL, queue_req_data=None, ntf_creds=None)),
    8: (b"NEW " + A_ + D_ + b"A\x02pwC", attrs.evolve(NEW_FULL, queue_req_data=None, ntf_creds=None)),
    9: (
        b"NEW " + A_ + D_ + b"1\x02pwCT",
        attrs.evolve(NEW_FULL, queue_req_data=P.QueueReqData(QueueMode.MESSAGING), ntf_creds=None),
    ),
    14: (
        b"NEW " + A_ + D_ + b"1\x02pwCT",
        attrs.evolve(NEW_FULL, queue_req_data=P.QueueReqData(QueueMode.MESSAGING), ntf_creds=None),
    ),
    15: (b"NEW " + A_ + D_ + b"1\x02pwC1M1\x18" + b"s" * 24 + LINK_ENC, attrs.evolve(NEW_FULL, ntf_creds=None)),
    16: (b"NEW " + A_ + D_ + b"1\x02pwC1M1\x18" + b"s" * 24 + LINK_ENC, attrs.evolve(NEW_FULL, ntf_creds=None)),
    17: (
        b"NEW " + A_ + D_ + b"1\x02pwC1M1\x18" + b"s" * 24 + LINK_ENC + b"1" + sb(NTF_AUTH.spki()) + sb(NTF_DH.spki()),
        NEW_FULL,
    ),
    18: (
        b"NEW " + A_ + D_ + b"1\x02pwC1M1\x18" + b"s" * 24 + LINK_ENC + b"1" + sb(NTF_AUTH.spki()) + sb(NTF_DH.spki()),
        NEW_FULL,
    ),
}


@pytest.mark.parametrize("version", sorted(NEW_BY_VERSION))
def test_new_by_version(version: int) -> None:
    expected, parsed = NEW_BY_VERSION[version]
    assert P.encode_command(NEW_FULL, version) == expected
    assert P.parse_command(expected, version) == parsed


@pytest.mark.parametrize("version", [6, 8, 9, 14, 15, 16, 17, 18])
def test_new_contact_and_defaults_by_version(version: int) -> None:
    tail_contact = {
        6: b"S", 8: b"S", 9: b"0SF", 14: b"0SF",
        15: b"0S1C1\x18" + b"l" * 24 + b"\x18" + b"s" * 24 + LINK_ENC,
        16: b"0S1C1\x18" + b"l" * 24 + b"\x18" + b"s" * 24 + LINK_ENC,
        17: b"0S1C1\x18" + b"l" * 24 + b"\x18" + b"s" * 24 + LINK_ENC + b"0",
        18: b"0S1C1\x18" + b"l" * 24 + b"\x18" + b"s" * 24 + LINK_ENC + b"0",
    }[version]  # fmt: skip
    assert P.encode_command(NEW_CONTACT, version) == b"NEW " + A_ + D_ + tail_contact
    # the reference test suite's v18 NEW tail: '0' 'S' '1' 'M' '0' '0'
    plain = P.New(AUTH_KEY, DH_KEY, queue_req_data=P.QueueReqData(QueueMode.MESSAGING))
    tail_plain = {6: b"S", 8: b"S", 9: b"0ST", 14: b"0ST", 15: b"0S1M0", 16: b"0S1M0", 17: b"0S1M00", 18: b"0S1M00"}
    assert P.encode_command(plain, version) == b"NEW " + A_ + D_ + tail_plain[version]
    parsed = P.parse_command(b"NEW " + A_ + D_ + tail_plain[version], version)
    assert isinstance(parsed, P.New) and parsed.sender_can_secure == (version >= 9)
    # no QueueReqData at v9..14 means sndSecure False, i.e. a contact queue
    bare = P.New(AUTH_KEY, DH_KEY)
    if 9 <= version < 15:
        assert P.parse_command(P.encode_command(bare, version), version).queue_req_data == P.QueueReqData(
            QueueMode.CONTACT
        )


def test_new_fields_of_other_versions_are_syntax_errors() -> None:
    v18 = P.encode_command(NEW_FULL, 18)
    for version in (6, 9, 15, 16):
        with pytest.raises(P.CommandParseError) as ei:
            P.parse_command(v18, version)
        assert ei.value.code is C.SYNTAX


SRV_ID = b"v" * 24
NTF = P.ServerNtfCreds(b"n" * 24, NTF_DH)
IDS_FULL = P.Ids(b"r" * 24, b"s" * 24, DH_KEY, QueueMode.CONTACT, b"l" * 24, SRV_ID, NTF)
IDS_HEAD = b"IDS \x18" + b"r" * 24 + b"\x18" + b"s" * 24 + D_
IDS_BY_VERSION = {
    6: (IDS_HEAD, P.Ids(b"r" * 24, b"s" * 24, DH_KEY)),
    8: (IDS_HEAD, P.Ids(b"r" * 24, b"s" * 24, DH_KEY)),
    9: (IDS_HEAD + b"F", P.Ids(b"r" * 24, b"s" * 24, DH_KEY, QueueMode.CONTACT)),
    14: (IDS_HEAD + b"F", P.Ids(b"r" * 24, b"s" * 24, DH_KEY, QueueMode.CONTACT)),
    15: (IDS_HEAD + b"1C1\x18" + b"l" * 24, attrs.evolve(IDS_FULL, service_id=None, ntf_creds=None)),
    16: (IDS_HEAD + b"1C1\x18" + b"l" * 24 + b"1\x18" + SRV_ID, attrs.evolve(IDS_FULL, ntf_creds=None)),
    17: (IDS_HEAD + b"1C1\x18" + b"l" * 24 + b"1\x18" + SRV_ID + b"1\x18" + b"n" * 24 + sb(NTF_DH.spki()), IDS_FULL),
    18: (IDS_HEAD + b"1C1\x18" + b"l" * 24 + b"1\x18" + SRV_ID + b"1\x18" + b"n" * 24 + sb(NTF_DH.spki()), IDS_FULL),
}


@pytest.mark.parametrize("version", sorted(IDS_BY_VERSION))
def test_ids_by_version(version: int) -> None:
    expected, parsed = IDS_BY_VERSION[version]
    assert P.encode_response(IDS_FULL, version) == expected
    assert P.parse_response(expected, version) == parsed


@pytest.mark.parametrize("version", [9, 14])
def test_ids_messaging_mode_bool(version: int) -> None:
    ids = P.Ids(b"r", b"s", DH_KEY, QueueMode.MESSAGING)
    assert P.encode_response(ids, version) == b"IDS \x01r\x01s" + D_ + b"T"
    assert P.parse_response(b"IDS \x01r\x01s" + D_ + b"T", version) == ids
    assert P.encode_response(P.Ids(b"r", b"s", DH_KEY), version).endswith(b"F")


def test_ids_v18_no_optional_fields() -> None:
    ids = P.Ids(b"r", b"s", DH_KEY)
    assert P.encode_response(ids, 18) == b"IDS \x01r\x01s" + D_ + b"0000"
    assert P.parse_response(b"IDS \x01r\x01s" + D_ + b"0000", 18) == ids


# ---------------------------------------------------------------- downgrades and version constants


@pytest.mark.parametrize("version", VERSIONS)
def test_sok_deld_blocked_downgrades(version: int) -> None:
    sok = P.encode_response(P.SOk(b"svc"), version)
    assert sok == (b"SOK 1\x03svc" if version >= 16 else b"OK")
    assert P.encode_response(P.SOk(), version) == (b"SOK 0" if version >= 16 else b"OK")
    assert P.encode_response(P.Deld(), version) == (b"DELD" if version >= 10 else b"END")
    blocked = P.Err(P.BlockedError(P.BlockingInfo(P.BlockingReason.CONTENT, P.ClientNotice(3600))))
    if version < 12:
        expected = b"ERR AUTH"
    elif version < 18:
        expected = b"ERR BLOCKED reason=content"
    else:
        expected = b'ERR BLOCKED reason=content,notice={"ttl":3600}'
    assert P.encode_response(blocked, version) == expected
    # only a top-level BLOCKED is downgraded
    nested = P.Err(P.ProxyErrorType(P.proxy_protocol(blocked.error)))
    assert P.encode_response(nested, version) == b'ERR PROXY PROTOCOL BLOCKED reason=content,notice={"ttl":3600}'


def test_max_message_length_and_sizes() -> None:
    assert [P.max_message_length(v) for v in (6, 7, 8, 10, 11, 17, 18)] == [16088, 16088, 16064, 16064, 16048, 16048, 16048]
    assert P.RCV_MSG_PADDED_LENGTH == 16106 and P.ENC_RCV_MSG_BODY_LENGTH == 16122
    assert (P.E2E_ENC_CONFIRMATION_LENGTH, P.E2E_ENC_MESSAGE_LENGTH) == (15904, 16000)
    assert (P.PADDED_PROXIED_T_LENGTH, P.ENC_PROXIED_T_LENGTH) == (16226, 16242)
    assert P.ENC_NMSG_META_LENGTH == 144


# ---------------------------------------------------------------- errors (§4.7)

ERROR_WIRE = [
    (P.CmdError(C.NO_ENTITY), b"CMD NO_ENTITY"),
    (P.DUPLICATE, b"DUPLICATE_"),
    (P.StoreError("caf\u00e9 ok"), "STORE caf\u00e9 ok".encode()),
    (P.StoreError(""), b"STORE "),
    (P.BlockedError(P.BlockingInfo(P.BlockingReason.SPAM, P.ClientNotice())), b"BLOCKED reason=spam,notice={}"),
    (P.ProxyErrorType(P.proxy_protocol(P.CmdError(C.SYNTAX))), b"PROXY PROTOCOL CMD SYNTAX"),
    (
        P.ProxyErrorType(P.proxy_protocol(P.ProxyErrorType(P.proxy_broker(P.BROKER_HOST)))),
        b"PROXY PROTOCOL PROXY BROKER HOST",
    ),
    (P.ProxyErrorType(P.proxy_broker(P.broker_transport(P.TransportErrorCode.HANDSHAKE_BAD_SERVICE))),
     b"PROXY BROKER TRANSPORT HANDSHAKE BAD_SERVICE"),
    (P.ProxyErrorType(P.proxy_broker(P.broker_transport(P.TransportErrorCode.NO_AUTH))), b"PROXY BROKER TRANSPORT NO_AUTH"),
    (P.ProxyErrorType(P.proxy_broker(P.broker_response(""))), b"PROXY BROKER RESPONSE \x00"),
]  # fmt: skip


@pytest.mark.parametrize("error,wire", ERROR_WIRE)
def test_error_wire(error: P.ErrorType, wire: bytes) -> None:
    assert error.encode() == wire
    assert P.decode_error_type(wire) == error
    assert P.parse_response(b"ERR " + wire, 18) == P.Err(error)


@pytest.mark.parametrize(
    "wire,error",
    [
        (b"CMD NO_QUEUE", P.CmdError(C.NO_ENTITY)),  # legacy alias
        (b"PROXY BROKER NETWORK CONNECT \x05oops!", P.ProxyErrorType(P.proxy_broker(P.BrokerErrorType(b"NETWORK", network=P.NetworkError(b"CONNECT", "oops!"))))),
        (b"PROXY BROKER NETWORK UNKNOWNCA", P.ProxyErrorType(P.proxy_broker(P.BrokerErrorType(b"NETWORK", network=P.NetworkError(b"UNKNOWNCA"))))),
        (b"PROXY BROKER TRANSPORT HANDSHAKE (IDENTITY)", P.ProxyErrorType(P.proxy_broker(P.broker_transport(P.TransportErrorCode.HANDSHAKE_IDENTITY)))),
        (b"PROXY BROKER TRANSPORT HANDSHAKE ((\tPARSE))", P.ProxyErrorType(P.proxy_broker(P.broker_transport(P.TransportErrorCode.HANDSHAKE_PARSE)))),
        (b"STORE bad \xff utf8", P.StoreError("bad ? utf8")),
    ],
)  # fmt: skip
def test_error_parse_only_forms(wire: bytes, error: P.ErrorType) -> None:
    """Forms the reference parser accepts but never produces (parseRead1, NetworkError, safeDecodeUtf8)."""
    assert P.decode_error_type(wire) == error


@pytest.mark.parametrize(
    "wire",
    [
        b"", b"AUTH ", b"AUTH x", b"auth", b"CMD", b"CMD ", b"CMD BAD", b"CMD SYNTAX x",
        b"PROXY", b"PROXY BROKER", b"PROXY BROKER RESPONSE", b"PROXY BROKER RESPONSE \x05abc",
        b"PROXY BROKER NETWORK x", b"PROXY BROKER TRANSPORT HANDSHAKE", b"PROXY BROKER TRANSPORT HANDSHAKE (X)",
        b"PROXY BROKER TRANSPORT HANDSHAKE IDENTITY x", b"PROXY PROTOCOL", b"BLOCKED", b"BLOCKED reason=",
        b"BLOCKED reason=other", b"BLOCKED reason=spamX", b'BLOCKED reason=spam,notice={"ttl":1.5}',
        b"BLOCKED reason=spam,notice=[]", b"BLOCKED reason=spam,notice=NaN", b"STORE", b"QUOTA\x00",
    ],
)  # fmt: skip
def test_error_parse_failures(wire: bytes) -> None:
    with pytest.raises(ParseError):
        P.decode_error_type(wire)
    with pytest.raises(P.ResponseParseError) as ei:
        P.parse_response(b"ERR " + wire, 18)
    assert ei.value.code is C.SYNTAX


def test_client_notice_json() -> None:
    assert P.ClientNotice.from_json(b' { "ttl" : null , "x": [1] } ') == P.ClientNotice()
    assert P.ClientNotice.from_json(b'{"ttl":1e3}') == P.ClientNotice(1000)
    assert P.ClientNotice.from_json(b'{"ttl":-9223372036854775808}') == P.ClientNotice(-(1 << 63))
    for bad in (b'{"ttl":9223372036854775808}', b'{"ttl":"1"}', b'{"ttl":true}', b"\xff", b"{"):
        with pytest.raises(ParseError):
            P.ClientNotice.from_json(bad)


def test_queue_info_json() -> None:
    info = P.QueueInfo(
        True,
        False,
        3,
        P.QSub(P.QSubThread.SUB_THREAD, "AAEC"),
        P.MsgInfo("9uuk", "2022-01-01T10:24:05Z", P.MsgType.QUOTA),
    )
    wire = (
        b'{"qiSnd":true,"qiNtf":false,"qiSub":{"qSubThread":"subThread","qDelivered":"AAEC"},"qiSize":3,'
        b'"qiMsg":{"msgId":"9uuk","msgTs":"2022-01-01T10:24:05Z","msgType":"quota"}}'
    )
    assert info.to_json() == wire
    assert P.QueueInfo.from_json(wire) == info
    assert P.QueueInfo.from_json(b'{"qiSize":0,"qiNtf":true,"qiSnd":false,"qiSub":null,"extra":1}') == P.QueueInfo(False, True, 0)
    for bad in (
        b'{"qiSnd":false,"qiNtf":false}',
        b'{"qiSnd":0,"qiNtf":false,"qiSize":0}',
        b'{"qiSnd":false,"qiNtf":false,"qiSize":0,"qiSub":{"qSubThread":"other"}}',
        b'{"qiSnd":false,"qiNtf":false,"qiSize":0,"qiMsg":{"msgId":"a","msgTs":"yesterday","msgType":"message"}}',
    ):
        with pytest.raises(ParseError):
            P.QueueInfo.from_json(bad)
    assert P.QueueInfo(False, False, 0, msg=P.MsgInfo('a"\\\n\x01', "2022-01-01T10:24:05.5+01:00", P.MsgType.MESSAGE)).to_json().endswith(
        b'"msgId":"a\\"\\\\\\n\\u0001","msgTs":"2022-01-01T10:24:05.5+01:00","msgType":"message"}}'
    )


# ---------------------------------------------------------------- tag parsing (§4.4, §7.1 item 28)


@pytest.mark.parametrize(
    "data,code",
    [
        (b"", C.UNKNOWN),
        (b"FOO", C.UNKNOWN),
        (b"SUB=", C.UNKNOWN),
        (b"sub", C.UNKNOWN),
        (b"OK", C.UNKNOWN),  # a response tag sent as a command
        (b"PONG", C.UNKNOWN),
        (b"IDS x", C.UNKNOWN),
        (b" SUB", C.UNKNOWN),
        (b"SUB ", C.SYNTAX),
        (b"SUB x", C.SYNTAX),
        (b"PING ", C.SYNTAX),
        (b"NEW", C.SYNTAX),
        (b"NEW ", C.SYNTAX),
        (b"KEY", C.SYNTAX),
        (b"KEY " + A_ + b"x", C.SYNTAX),
        (b"KEY " + sb(PublicKey(KeyAlgorithm.X448, bytes(56)).spki()), C.SYNTAX),  # not an auth key
        (b"NKEY " + A_ + A_, C.SYNTAX),  # second key must be X25519
        (b"SEND", C.SYNTAX),
        (b"SEND ", C.SYNTAX),
        (b"SEND T", C.SYNTAX),
        (b"SEND X body", C.SYNTAX),
        (b"ACK", C.SYNTAX),
        (b"ACK \x05ab", C.SYNTAX),
        (b"RKEY \x00", C.SYNTAX),
        (b"PFWD \x00\x11" + A_, C.SYNTAX),
        (b"PRXY \x01\x0bexample.com\x00\x00", C.SYNTAX),  # missing Maybe basic auth
        (b"PRXY \x01\x0dExample.onion\x00\x000", C.SYNTAX),  # ".onion" suffix on a non-onion name
        (b"PRXY \x01\x10a.onion.example\x00\x000", C.SYNTAX),  # onion alternative wins, leftovers
        (b"RFWD", C.SYNTAX),
    ],
)
def test_command_parse_errors(data: bytes, code: P.CommandError) -> None:
    for version in (6, 18):
        with pytest.raises(P.CommandParseError) as ei:
            P.parse_command(data, version)
        assert ei.value.code is code
        assert ei.value.error == P.CmdError(code)
        assert isinstance(ei.value, ParseError)


@pytest.mark.parametrize(
    "data,cmd",
    [
        (b"PING", P.Ping()),
        (b"SEND Txyz body", P.Send(b"body", True)),  # further flag bytes are skipped
        (b"SEND F  a", P.Send(b" a")),
        (b"RFWD ", P.RFwd(b"")),
        (b"ACK \x00", P.Ack(b"")),
        (b"PRXY \x01\x0a1.2.3.0300\x00\x000", P.Prxy(ProtocolServer(("1.2.3.44",)))),  # Word8 wrap, as the reference
        (b"PRXY \x01\x06[::01]\x00\x000", P.Prxy(ProtocolServer(("::1",)))),
    ],
)
def test_command_parse_accepts(data: bytes, cmd: P.Command) -> None:
    assert P.parse_command(data, 18) == cmd


@pytest.mark.parametrize(
    "data,code",
    [
        (b"NEW", C.UNKNOWN),
        (b"SUB", C.UNKNOWN),
        (b"OK ", C.SYNTAX),
        (b"PONG x", C.SYNTAX),
        (b"SOK", C.SYNTAX),
        (b"SOK 2", C.SYNTAX),
        (b"MSG", C.SYNTAX),
        (b"MSG \x05ab", C.SYNTAX),
        (b"NMSG " + b"n" * 23, C.SYNTAX),
        (b"SOKS \x00", C.SYNTAX),
        (b"PKEY \x00\x00\x09\x00\x08\x01\x00\x01a\x00\x01b", C.SYNTAX),  # min > max
        (b"PKEY \x00\x00\x08\x00\x09\x00\x00\x01b", C.SYNTAX),  # empty chain
        (b"INFO {}", C.SYNTAX),
        (b"ERR", C.SYNTAX),
        (b"RRES", C.SYNTAX),
    ],
)
def test_response_parse_errors(data: bytes, code: P.CommandError) -> None:
    with pytest.raises(P.ResponseParseError) as ei:
        P.parse_response(data, 18)
    assert ei.value.code is code


def test_pkey_roundtrip() -> None:
    pkey = P.PKey(b"S" * 32, VersionRange(8, 17), CERT_KEY)
    wire = (
        b"PKEY \x20" + b"S" * 32 + w16(8) + w16(17) + b"\x02" + lg(LEAF_DER) + lg(CA_DER) + lg(SIGNED_KEYS[0])
    )
    assert P.encode_response(pkey, 18) == wire
    assert P.parse_response(wire, 18) == pkey
    # the reference decodes the certificates and the signed key: garbage is CMD SYNTAX
    bad = b"PKEY \x00" + w16(8) + w16(17) + b"\x01" + lg(b"leaf") + lg(SIGNED_KEYS[0])
    with pytest.raises(P.ResponseParseError) as ei:
        P.parse_response(bad, 18)
    assert ei.value.code is C.SYNTAX


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(LocalProtocolError):
        P.encode_command(P.Ok(), 18)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        P.encode_response(P.Ping(), 18)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        P.Key(PublicKey(KeyAlgorithm.X448, bytes(56)))
    with pytest.raises(LocalProtocolError):
        P.New(AUTH_KEY, AUTH_KEY)  # the DH key must be X25519
    with pytest.raises(LocalProtocolError):
        P.QueueReqData(QueueMode.CONTACT, b"s", LINK)  # contact link data needs a link id


# ---------------------------------------------------------------- credentials and parties (§4.3, §4.4)

PARTY_TABLE = {
    "NEW": "Creator", "SUB": "Recipient", "SUBS": "RecipientService", "KEY": "Recipient", "RKEY": "Recipient",
    "LSET": "Recipient", "LDEL": "Recipient", "NKEY": "Recipient", "NDEL": "Recipient", "GET": "Recipient",
    "ACK": "Recipient", "OFF": "Recipient", "DEL": "Recipient", "QUE": "Recipient", "SKEY": "Sender",
    "SEND": "Sender", "PING": "IdleClient", "LKEY": "LinkClient", "LGET": "LinkClient", "NSUB": "Notifier",
    "NSUBS": "NotifierService", "PRXY": "ProxiedClient", "PFWD": "ProxiedClient", "RFWD": "ProxyService",
}  # fmt: skip


def _expected_credentials(tag: str, has_auth: bool, has_entity: bool) -> P.CommandError | None:
    """smp.md §4.3, written out independently of the implementation's rule table."""
    if tag == "NEW":
        return C.NO_AUTH if not has_auth else (C.HAS_AUTH if has_entity else None)
    if tag == "SEND":
        return None if has_entity else C.NO_ENTITY
    if tag in ("LGET", "PFWD"):
        return C.NO_ENTITY if not has_entity else (C.HAS_AUTH if has_auth else None)
    if tag in ("PING", "PRXY", "RFWD"):
        return C.HAS_AUTH if has_auth or has_entity else None
    return None if has_auth and has_entity else C.NO_AUTH


def _sample_commands() -> list[P.Command]:
    srv = ProtocolServer(("relay.example.com",))
    return [
        P.New(AUTH_KEY, DH_KEY), P.Sub(), P.Subs(), P.Key(AUTH_KEY), P.RKey((AUTH_KEY,)), P.LSet(b"l", LINK),
        P.LDel(), P.NKey(AUTH_KEY, DH_KEY), P.NDel(), P.Get(), P.Ack(b"m"), P.Off(), P.Del(), P.Que(),
        P.SKey(AUTH_KEY), P.Send(b"hi"), P.Ping(), P.LKey(AUTH_KEY), P.LGet(), P.NSub(), P.NSubs(),
        P.Prxy(srv), P.PFwd(17, DH_KEY, b"t"), P.RFwd(b"t"),
    ]  # fmt: skip


def test_every_command_has_a_sample_and_party() -> None:
    samples = _sample_commands()
    assert {type(c) for c in samples} == set(P.COMMAND_CLASSES)
    assert {c.TAG.decode(): c.PARTY.value for c in samples} == PARTY_TABLE
    assert {t.decode(): p.value for t, p in P.COMMAND_PARTIES.items()} == PARTY_TABLE
    assert {c.TAG for c in samples if P.uses_service_auth(c)} == {b"NEW", b"SUB", b"NSUB"}


@pytest.mark.parametrize("cmd", _sample_commands(), ids=lambda c: c.TAG.decode())
def test_check_credentials(cmd: P.Command) -> None:
    for has_auth in (False, True):
        for entity in (b"", b"\x01" * 24):
            expected = _expected_credentials(cmd.TAG.decode(), has_auth, bool(entity))
            got = P.check_credentials(cmd, has_auth, entity)
            assert got == (None if expected is None else P.CmdError(expected))


def test_check_response_credentials() -> None:
    any_entity = {b"IDS", b"ERR"}
    empty_entity = {b"PONG", b"PKEY", b"RRES"}
    samples = [
        P.Ids(b"r", b"s", DH_KEY), P.Lnk(b"s", LINK), P.SOk(), P.SOks(1), P.Msg(b"m", b"b"), P.Nid(b"n", DH_KEY),
        P.NMsg(b"n" * 24, b"e"), P.PKey(b"s", VersionRange(8, 17), CERT_KEY), P.RRes(b""),
        P.PRes(b""), P.End(), P.Ends(1), P.Deld(), P.Info(P.QueueInfo(False, False, 0)), P.Ok(), P.Err(P.AUTH), P.Pong(),
    ]  # fmt: skip
    assert {type(r) for r in samples} == set(P.RESPONSE_CLASSES)
    for resp in samples:
        none, some = P.check_response_credentials(resp, b""), P.check_response_credentials(resp, b"e")
        if resp.TAG in any_entity:
            assert none is None and some is None
        elif resp.TAG in empty_entity:
            assert none is None and some == P.CmdError(C.HAS_AUTH)
        else:
            assert none == P.CmdError(C.NO_ENTITY) and some is None


# ---------------------------------------------------------------- Hypothesis strategies

ids_ = st.binary(max_size=32)
auth_keys = st.builds(
    lambda alg, raw: PublicKey(alg, raw[: {KeyAlgorithm.ED448: 57}.get(alg, 32)]),
    st.sampled_from([KeyAlgorithm.ED25519, KeyAlgorithm.ED448, KeyAlgorithm.X25519]),
    st.binary(min_size=57, max_size=57),
)
dh_keys = st.builds(lambda raw: PublicKey(KeyAlgorithm.X25519, raw), st.binary(min_size=32, max_size=32))
BASIC_AUTH_BYTES = [c for c in range(256) if (0x21 <= c <= 0x7E and c not in b"@:/") or (0xA1 <= c <= 0xFF and c != 0xAD)]
valid_auth = st.lists(st.sampled_from(BASIC_AUTH_BYTES), max_size=20).map(bytes)
link_data = st.builds(P.QueueLinkData, st.binary(max_size=600), st.binary(max_size=40))
queue_req_data = st.one_of(
    st.sampled_from(QueueMode).map(P.QueueReqData),
    st.builds(lambda s, d: P.QueueReqData(QueueMode.MESSAGING, s, d), ids_, link_data),
    st.builds(lambda s, d, lid: P.QueueReqData(QueueMode.CONTACT, s, d, lid), ids_, link_data, ids_),
)
hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,9}\.(com|im|org)", fullmatch=True),
    st.from_regex(r"[a-z2-7]{16}\.onion", fullmatch=True),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
)
servers = st.builds(
    lambda hs, port, kh: ProtocolServer(tuple(hs), port, kh),
    st.lists(hosts, min_size=1, max_size=3),
    st.one_of(st.just(""), st.integers(1, 65535).map(str)),
    st.binary(max_size=32),
)

COMMAND_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    P.New: st.builds(
        P.New,
        auth_keys,
        dh_keys,
        st.none() | valid_auth,
        st.sampled_from(P.SubscriptionMode),
        st.none() | queue_req_data,
        st.none() | st.builds(P.NewNtfCreds, auth_keys, dh_keys),
    ),
    P.Sub: st.just(P.Sub()),
    P.Subs: st.just(P.Subs()),
    P.Key: st.builds(P.Key, auth_keys),
    P.RKey: st.lists(auth_keys, min_size=1, max_size=4).map(lambda ks: P.RKey(tuple(ks))),
    P.LSet: st.builds(P.LSet, ids_, link_data),
    P.LDel: st.just(P.LDel()),
    P.NKey: st.builds(P.NKey, auth_keys, dh_keys),
    P.NDel: st.just(P.NDel()),
    P.Get: st.just(P.Get()),
    P.Ack: st.builds(P.Ack, ids_),
    P.Off: st.just(P.Off()),
    P.Del: st.just(P.Del()),
    P.Que: st.just(P.Que()),
    P.SKey: st.builds(P.SKey, auth_keys),
    P.Send: st.builds(P.Send, st.binary(max_size=300), st.booleans()),
    P.Ping: st.just(P.Ping()),
    P.LKey: st.builds(P.LKey, auth_keys),
    P.LGet: st.just(P.LGet()),
    P.NSub: st.just(P.NSub()),
    P.NSubs: st.just(P.NSubs()),
    P.Prxy: st.builds(P.Prxy, servers, st.none() | valid_auth),
    P.PFwd: st.builds(P.PFwd, st.integers(0, 0xFFFF), dh_keys, st.binary(max_size=300)),
    P.RFwd: st.builds(P.RFwd, st.binary(max_size=300)),
}

latin1 = st.text(alphabet=st.characters(max_codepoint=255), max_size=40)
utf8_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
transport_codes = st.sampled_from(P.TransportErrorCode)
broker_errors = st.one_of(
    st.builds(P.broker_response, latin1),
    st.builds(P.broker_unexpected, latin1),
    st.builds(P.broker_transport, transport_codes),
    st.sampled_from([P.BROKER_NETWORK, P.BROKER_TIMEOUT, P.BROKER_HOST, P.BROKER_NO_SERVICE]),
    st.builds(
        lambda k, t: P.BrokerErrorType(b"NETWORK", network=P.NetworkError(k, t if k in P.NetworkError.KINDS_WITH_TEXT else None)),
        st.sampled_from(sorted(P.NetworkError.KINDS)),
        latin1,
    ),
)
notices = st.none() | st.builds(P.ClientNotice, st.none() | st.integers(-(1 << 63), (1 << 63) - 1))
blocking = st.builds(P.BlockingInfo, st.sampled_from(P.BlockingReason), notices)
error_types: st.SearchStrategy[P.ErrorType] = st.recursive(
    st.one_of(
        st.sampled_from(P.SIMPLE_ERRORS).map(P.SimpleError),
        st.sampled_from(P.CommandError).map(P.CmdError),
        st.builds(P.BlockedError, blocking),
        st.builds(P.StoreError, utf8_text),
        st.builds(lambda e: P.ProxyErrorType(P.proxy_broker(e)), broker_errors),
        st.sampled_from([P.ProxyErrorType(P.PROXY_BASIC_AUTH), P.ProxyErrorType(P.PROXY_NO_SESSION)]),
    ),
    lambda inner: inner.map(lambda e: P.ProxyErrorType(P.proxy_protocol(e))),
    max_leaves=4,
)
ts_text = st.sampled_from(["2022-01-01T10:24:05Z", "2024-02-29 23:59:59.123456Z", "1999-12-31T00:00+05:30", "2030-01-01T00:00:00"])
queue_infos = st.builds(
    P.QueueInfo,
    st.booleans(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.none() | st.builds(P.QSub, st.sampled_from(P.QSubThread), st.none() | utf8_text),
    st.none() | st.builds(P.MsgInfo, utf8_text, ts_text, st.sampled_from(P.MsgType)),
)

RESPONSE_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    P.Ids: st.builds(
        P.Ids,
        ids_,
        ids_,
        dh_keys,
        st.none() | st.sampled_from(QueueMode),
        st.none() | ids_,
        st.none() | ids_,
        st.none() | st.builds(P.ServerNtfCreds, ids_, dh_keys),
    ),
    P.Lnk: st.builds(P.Lnk, ids_, link_data),
    P.SOk: st.builds(P.SOk, st.none() | ids_),
    P.SOks: st.builds(P.SOks, st.integers(-(1 << 63), (1 << 63) - 1)),
    P.Msg: st.builds(P.Msg, ids_, st.binary(max_size=300)),
    P.Nid: st.builds(P.Nid, ids_, dh_keys),
    P.NMsg: st.builds(P.NMsg, st.binary(min_size=24, max_size=24), st.binary(max_size=200)),
    P.PKey: st.builds(
        lambda sid, a, b, chain, key: P.PKey(sid, VersionRange(min(a, b), max(a, b)), CertChainPubKey(tuple(chain), key)),
        ids_,
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.lists(st.sampled_from([LEAF_DER, CA_DER, ED25519_LEAF_DER]), min_size=1, max_size=4),
        st.sampled_from(SIGNED_KEYS),
    ),
    P.RRes: st.builds(P.RRes, st.binary(max_size=300)),
    P.PRes: st.builds(P.PRes, st.binary(max_size=300)),
    P.End: st.just(P.End()),
    P.Ends: st.builds(P.Ends, st.integers(-(1 << 63), (1 << 63) - 1)),
    P.Deld: st.just(P.Deld()),
    P.Info: st.builds(P.Info, queue_infos),
    P.Ok: st.just(P.Ok()),
    P.Err: st.builds(P.Err, error_types),
    P.Pong: st.just(P.Pong()),
}


def test_strategies_cover_every_class() -> None:
    assert set(COMMAND_STRATEGIES) == set(P.COMMAND_CLASSES)
    assert set(RESPONSE_STRATEGIES) == set(P.RESPONSE_CLASSES)


# what a version can carry (smp.md §4.5-§4.7), written independently of the encoder


def expected_command_after_roundtrip(cmd: P.Command, version: int) -> P.Command:
    if not isinstance(cmd, P.New):
        return cmd
    if version < 9:
        return attrs.evolve(cmd, queue_req_data=None, ntf_creds=None)
    if version < 15:
        mode = QueueMode.MESSAGING if cmd.queue_req_data and cmd.queue_req_data.mode is QueueMode.MESSAGING else QueueMode.CONTACT
        return attrs.evolve(cmd, queue_req_data=P.QueueReqData(mode), ntf_creds=None)
    if version < 17:
        return attrs.evolve(cmd, ntf_creds=None)
    return cmd


def _network_detail_dropped(e: P.ErrorType) -> P.ErrorType:
    if isinstance(e, P.ProxyErrorType):
        pe = e.error
        if pe.protocol is not None:
            return P.ProxyErrorType(P.proxy_protocol(_network_detail_dropped(pe.protocol)))
        if pe.broker is not None and pe.broker.kind == b"NETWORK":
            return P.ProxyErrorType(P.proxy_broker(P.BROKER_NETWORK))
    return e


def expected_response_after_roundtrip(resp: P.Response, version: int) -> P.Response:
    if isinstance(resp, P.Ids):
        if version < 9:
            return P.Ids(resp.rcv_id, resp.snd_id, resp.srv_dh_key)
        if version < 15:
            mode = QueueMode.MESSAGING if resp.queue_mode is QueueMode.MESSAGING else QueueMode.CONTACT
            return P.Ids(resp.rcv_id, resp.snd_id, resp.srv_dh_key, mode)
        if version < 16:
            return attrs.evolve(resp, service_id=None, ntf_creds=None)
        if version < 17:
            return attrs.evolve(resp, ntf_creds=None)
        return resp
    if isinstance(resp, P.SOk) and version < 16:
        return P.Ok()
    if isinstance(resp, P.Deld) and version < 10:
        return P.End()
    if isinstance(resp, P.Err):
        e = _network_detail_dropped(resp.error)
        if isinstance(e, P.BlockedError):
            if version < 12:
                e = P.AUTH
            elif version < 18:
                e = P.BlockedError(P.BlockingInfo(e.info.reason))
        return P.Err(e)
    return resp


ROUNDTRIP = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("cls", P.COMMAND_CLASSES, ids=lambda c: c.TAG.decode())
@given(data=st.data())
@ROUNDTRIP
def test_command_roundtrip(cls: type, version: int, data: st.DataObject) -> None:
    cmd = data.draw(COMMAND_STRATEGIES[cls])
    encoded = P.encode_command(cmd, version)
    assert encoded.startswith(cls.TAG)
    parsed = P.parse_command(encoded, version)
    assert parsed == expected_command_after_roundtrip(cmd, version)
    assert P.encode_command(parsed, version) == encoded or isinstance(cmd, P.New)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("cls", P.RESPONSE_CLASSES, ids=lambda c: c.TAG.decode())
@given(data=st.data())
@ROUNDTRIP
def test_response_roundtrip(cls: type, version: int, data: st.DataObject) -> None:
    resp = data.draw(RESPONSE_STRATEGIES[cls])
    encoded = P.encode_response(resp, version)
    parsed = P.parse_response(encoded, version)
    assert parsed == expected_response_after_roundtrip(resp, version)
    assert P.encode_response(parsed, version) == encoded


all_commands = st.one_of(*COMMAND_STRATEGIES.values())
all_responses = st.one_of(*RESPONSE_STRATEGIES.values())
command_tags = st.sampled_from([c.TAG for c in P.COMMAND_CLASSES] + [r.TAG for r in P.RESPONSE_CLASSES])


def _mutations(draw: st.DrawFn, base: bytes) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0 or not base:
        return base + draw(st.binary(max_size=8))
    i = draw(st.integers(0, len(base) - 1))
    if kind == 1:
        return base[:i]
    if kind == 2:
        return base[:i] + bytes([draw(st.integers(0, 255))]) + base[i + 1 :]
    return base[:i] + draw(st.binary(min_size=1, max_size=4)) + base[i:]


@st.composite
def command_like_bytes(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return draw(st.binary(max_size=120))
    if choice == 1:
        return draw(command_tags) + draw(st.binary(max_size=120))
    msg = draw(st.one_of(all_commands, all_responses))
    v = draw(st.sampled_from(VERSIONS))
    enc = P.encode_command(msg, v) if isinstance(msg, P.Command) else P.encode_response(msg, v)
    return _mutations(draw, enc)


@given(command_like_bytes(), st.sampled_from(VERSIONS))
@settings(max_examples=1500, deadline=None)
def test_parse_command_is_total(data: bytes, version: int) -> None:
    try:
        cmd = P.parse_command(data, version)
    except P.CommandParseError as e:
        assert e.code in (C.UNKNOWN, C.SYNTAX)
        assert (e.code is C.UNKNOWN) == (data.split(b" ", 1)[0] not in P.COMMAND_PARTIES)
        return
    assert isinstance(cmd, P.Command)
    # a parsed command re-encodes to bytes that parse to the same command
    assert P.parse_command(P.encode_command(cmd, version), version) == cmd


@given(command_like_bytes(), st.sampled_from(VERSIONS))
@settings(max_examples=1500, deadline=None)
def test_parse_response_is_total(data: bytes, version: int) -> None:
    try:
        resp = P.parse_response(data, version)
    except P.ResponseParseError as e:
        assert e.code in (C.UNKNOWN, C.SYNTAX)
        return
    assert isinstance(resp, P.Response)
    again = P.parse_response(P.encode_response(resp, version), version)
    assert again == expected_response_after_roundtrip(resp, version)


@given(st.binary(max_size=60))
@settings(max_examples=500)
def test_decode_error_type_is_total(data: bytes) -> None:
    try:
        e = P.decode_error_type(data)
    except ParseError:
        return
    assert P.decode_error_type(e.encode()) == _network_detail_dropped(e)


def test_large_send_at_limits() -> None:
    """A SEND body of maxMessageLength(v) encodes with a 7-byte header at every version (§4.9)."""
    for version in VERSIONS:
        body = bytes(P.max_message_length(version))
        enc = P.encode_command(P.Send(body), version)
        assert len(enc) == 7 + len(body)
        assert P.parse_command(enc, version) == P.Send(body)


def test_deeply_nested_proxy_errors() -> None:
    """A block full of ``PROXY PROTOCOL`` parses and re-encodes without exhausting the stack."""
    wire = b"ERR " + b"PROXY PROTOCOL " * 1100 + b"PROXY BROKER RESPONSE \x02ok"
    resp = P.parse_response(wire, 18)
    assert P.encode_response(resp, 18) == wire
    error = resp.error  # type: ignore[attr-defined]
    for _ in range(1100):
        assert isinstance(error, P.ProxyErrorType) and error.error.kind == b"PROTOCOL"
        error = error.error.protocol
    assert error == P.ProxyErrorType(P.proxy_broker(P.broker_response("ok")))
