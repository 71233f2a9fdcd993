"""Server addresses, queue addresses and short links (sansio_smp/addresses.py).

* every addresses.json case: binary SMPServer, SMPQueueInfo, SMPQueueUri (incl. the reference's
  queue-mode reading of a trailing sndSecure ``'F'``), short-link strings;
* ``smp://`` server and queue-URI strings (smp.md §2.3, agent-crypto.md §2.1, reference/simplex-messaging.md
  "SMP queue URI"): legacy/new host placement, ``k=s``/``q=`` rules, old ``#<dh>`` forms, preset onion hosts;
* TransportHost parsing; Hypothesis round trips and totality.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_smp.addresses import (
    EXTRA_SMP_SERVER_HOSTS,
    ConnShortLink,
    ContactType,
    ProtocolServer,
    QueueMode,
    ServerWithAuth,
    ShortLinkScheme,
    SMPQueueAddress,
    SMPQueueInfo,
    SMPQueueUri,
    DEFAULT_PORTS,
    HostKind,
    bracketed_host,
    host_kind,
    host_sort_key,
    parse_host,
    parse_server_with_auth,
    parse_servers_with_auth,
)
from sansio_smp.crypto import KeyAlgorithm, PublicKey
from sansio_smp.encoding import VersionRange, b64url_encode
from sansio_smp.errors import LocalProtocolError, ParseError

DATA = Path(__file__).parent / "data" / "smp"
ADDR = json.loads((DATA / "addresses.json").read_text())
MODES = {"M": QueueMode.MESSAGING, "C": QueueMode.CONTACT, None: None}


def _hex(s: str) -> bytes:
    return bytes.fromhex(s)


def _server_json(srv: ProtocolServer) -> dict[str, Any]:
    return {"hosts": list(srv.hosts), "port": srv.port, "keyHash": srv.key_hash.hex()}


def _address(i: dict[str, Any]) -> SMPQueueAddress:
    server = ProtocolServer(tuple(i["hosts"]), i["port"], _hex(i["key_hash"]))
    return SMPQueueAddress(server, _hex(i["sender_id"]), PublicKey.from_spki(_hex(i["dh_public_key"])), MODES[i["queue_mode"]])


# ---------------------------------------------------------------- addresses.json


@pytest.mark.parametrize("case", ADDR["protocol_server"], ids=[c["id"] for c in ADDR["protocol_server"]])
def test_protocol_server_binary(case: dict[str, Any]) -> None:
    srv = ProtocolServer(tuple(case["hosts"]), case["port"], _hex(case["key_hash"]))
    assert srv.encode().hex() == case["expected"]["binary"]
    decoded = ProtocolServer.decode(_hex(case["expected"]["binary"]))
    assert decoded == srv
    assert _server_json(decoded) == case["expected"]["smp_web_decodeProtocolServer"]


@pytest.mark.parametrize("case", ADDR["queue_info"], ids=[c["id"] for c in ADDR["queue_info"]])
def test_queue_info_binary(case: dict[str, Any]) -> None:
    info = SMPQueueInfo(case["inputs"]["client_version"], _address(case["inputs"]))
    wire = _hex(case["expected"]["binary"])
    assert info.encode() == wire
    decoded = SMPQueueInfo.decode(wire)
    web = case["expected"]["smp_web_decodeSMPQueueInfo"]
    assert decoded.client_version == web["clientVersion"]
    qa = web["queueAddress"]
    assert _server_json(decoded.address.server) == qa["smpServer"]
    assert decoded.address.sender_id.hex() == qa["senderId"]
    assert decoded.address.dh_key.spki().hex() == qa["dhPublicKey"]
    assert decoded.address.queue_mode is MODES[case["expected"]["reference_decoded_queue_mode"]]
    assert decoded.encode() == wire


@pytest.mark.parametrize("case", ADDR["queue_uri"], ids=[c["id"] for c in ADDR["queue_uri"]])
def test_queue_uri_binary(case: dict[str, Any]) -> None:
    i = case["inputs"]
    uri = SMPQueueUri(VersionRange(*i["client_version_range"]), _address(i))
    wire = _hex(case["expected"]["binary"])
    assert uri.encode() == wire
    decoded = SMPQueueUri.decode(wire)
    web = case["expected"]["smp_web_decodeSMPQueueUri"]
    assert (decoded.versions.min, decoded.versions.max) == (web["clientVRange"]["min"], web["clientVRange"]["max"])
    assert _server_json(decoded.address.server) == web["queueAddress"]["smpServer"]
    assert decoded.address.sender_id.hex() == web["queueAddress"]["senderId"]
    # the reference's queueModeP (a trailing 'F' is a contact queue; smp-web says null there)
    assert decoded.address.queue_mode is MODES[case["expected"]["reference_decoded_queue_mode"]]
    assert decoded.encode() == wire
    # and the text form round-trips
    assert SMPQueueUri.from_str(uri.to_str()) == uri


@pytest.mark.parametrize("case", ADDR["short_links"], ids=[c["id"] for c in ADDR["short_links"]])
def test_short_links(case: dict[str, Any]) -> None:
    link = ConnShortLink.from_str(case["uri"])
    exp = case["expected"]
    assert ("invitation" if link.is_invitation else "contact") == exp["mode"]
    assert link.scheme.value == exp["scheme"]
    if not link.is_invitation:
        names = {ContactType.CONTACT: "contact", ContactType.CHANNEL: "channel", ContactType.GROUP: "group", ContactType.RELAY: "relay"}
        assert link.contact_type is not None and names[link.contact_type] == exp["connType"]
    else:
        assert link.link_id is not None and link.link_id.hex() == exp["linkId"]
    assert _server_json(link.server) == exp["server"]
    assert link.link_key.hex() == exp["linkKey"]
    # our encoding is the reference's (it escapes the comma in h=); parsing it gives the same link
    again = ConnShortLink.from_str(link.to_str())
    assert again == link
    if "," not in case["uri"]:
        assert link.to_str() == case["uri"]
    assert ConnShortLink.decode(link.encode()) == attrs.evolve(link, scheme=ShortLinkScheme.SERVER)


def test_address_vector_counts() -> None:
    assert [len(ADDR[k]) for k in ("protocol_server", "queue_info", "queue_uri", "short_links")] == [3, 6, 7, 4]


# ---------------------------------------------------------------- server address strings (smp.md §2.3)

KEY_HASH = bytes.fromhex("2dc25431f561c03f32c6302249a0f3cc6177fa42c6e14874165fd9223ad1c232")
KH = "LcJUMfVhwD8yxjAiSaDzzGF3-kLG4Uh0Fl_ZIjrRwjI="


def test_server_strings() -> None:
    srv = ProtocolServer(("smp.example.com", "abcdefghijklmnop.onion"), "5223", KEY_HASH)
    text = f"smp://{KH}@smp.example.com,abcdefghijklmnop.onion:5223"
    assert str(srv) == text and ProtocolServer.from_str(text) == srv
    assert ProtocolServer.from_str(text.replace("=@", "@")) == srv  # unpadded key hash accepted
    assert str(ProtocolServer(("1.2.3.4",), "", KEY_HASH)) == f"smp://{KH}@1.2.3.4"
    with_auth = ServerWithAuth(srv, b"s3cret!")
    assert with_auth.to_str() == f"smp://{KH}:s3cret!@smp.example.com,abcdefghijklmnop.onion:5223"
    assert parse_server_with_auth(with_auth.to_str()) == with_auth
    assert parse_server_with_auth(text) == ServerWithAuth(srv)
    with pytest.raises(ParseError):
        ProtocolServer.from_str(with_auth.to_str())  # ProtocolServer strP: no basic auth
    xftp = parse_server_with_auth(f"xftp://{KH}@xftp.example.com:443").server
    assert xftp.scheme == "xftp" and xftp.port == "443"
    assert ProtocolServer.from_str(f"smp://{KH}@h.example.com:05223").port == "5223"  # decimal port, shown back


@pytest.mark.parametrize(
    "text",
    [
        f"smq://{KH}@h.example.com",
        f"smp:/{KH}@h.example.com",
        "smp://@h.example.com",
        f"smp://{KH}h.example.com",
        f"smp://{KH}@",
        f"smp://{KH}@h.example.com:",
        f"smp://{KH}@h.example.com,",
        f"smp://{KH}:pass word@h.example.com",
        f"smp://{KH}@h.example.com:5223/x",
        f"smp://{KH}@a.b.onion",
    ],
)
def test_server_string_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_server_with_auth(text)


@pytest.mark.parametrize(
    "text,host",
    [
        ("smp.example.com", "smp.example.com"),
        ("abcdefghijklmnop.onion", "abcdefghijklmnop.onion"),
        (".onion", ".onion"),
        ("192.168.1.1", "192.168.1.1"),
        ("010.0.0.1", "10.0.0.1"),
        ("1.2.3.256", "1.2.3.0"),  # the last octet is a Word8 in the reference: it wraps
        ("10.0.0", "10.0.0"),  # not an IPv4 address: a domain name
        ("256.1.1.1x", "256.1.1.1x"),  # nor this
        ("[2001:db8::1]", "2001:db8::1"),
        ("::1", "::1"),
        ("deadbeef", "deadbeef"),
        ("localhost", "localhost"),
        ("ex@mple?", "ex@mple?"),
    ],
)
def test_hosts(text: str, host: str) -> None:
    assert parse_host(text) == host


@pytest.mark.parametrize(
    "text", ["", "1.2.3.4.5", "1.2.3.4x", "Abc.onion", "a.onion.com", "a:b", "a b", "a,b", "a/b", "[zz::1]"]
)
def test_host_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_host(text)
    with pytest.raises(LocalProtocolError):
        ProtocolServer((text,))


def test_non_canonical_host_rejected_by_constructor() -> None:
    with pytest.raises(LocalProtocolError):
        ProtocolServer(("010.0.0.1",))
    with pytest.raises(LocalProtocolError):
        ProtocolServer(())


# ---------------------------------------------------------------- queue URI strings (agent-crypto.md §2.1)

DH = PublicKey(KeyAlgorithm.X25519, bytes(range(32)))
DH_STR = b64url_encode(DH.spki())
DH_Q = DH_STR.replace("=", "%3D")
SID = bytes.fromhex("df8e7afb")
SID_STR = b64url_encode(SID)
SRV = ProtocolServer(("smp.simplex.im", "jjbyvoemxysm7qxap7m5d5m35jzv5qq6gnlv7s4rsn7tdwwmuqciwpid.onion"), "5223", KEY_HASH)
ONION = "jjbyvoemxysm7qxap7m5d5m35jzv5qq6gnlv7s4rsn7tdwwmuqciwpid.onion"


def _uri(vmin: int, vmax: int, mode: QueueMode | None, srv: ProtocolServer = SRV) -> SMPQueueUri:
    return SMPQueueUri(VersionRange(vmin, vmax), SMPQueueAddress(srv, SID, DH, mode))


@pytest.mark.parametrize(
    "uri,text",
    [
        # legacy (min < 2): first host in the authority, the others in srv=; k=s while min < 4
        (_uri(1, 4, QueueMode.MESSAGING), f"smp://{KH}@smp.simplex.im:5223/{SID_STR}#/?v=1-4&dh={DH_Q}&q=m&k=s&srv={ONION}"),
        (_uri(1, 4, None), f"smp://{KH}@smp.simplex.im:5223/{SID_STR}#/?v=1-4&dh={DH_Q}&srv={ONION}"),
        (_uri(1, 4, QueueMode.CONTACT), f"smp://{KH}@smp.simplex.im:5223/{SID_STR}#/?v=1-4&dh={DH_Q}&q=c&srv={ONION}"),
        # min >= 2: all hosts in the authority
        (_uri(2, 4, QueueMode.MESSAGING), f"smp://{KH}@smp.simplex.im,{ONION}:5223/{SID_STR}#/?v=2-4&dh={DH_Q}&q=m&k=s"),
        (_uri(4, 4, QueueMode.MESSAGING), f"smp://{KH}@smp.simplex.im,{ONION}:5223/{SID_STR}#/?v=4&dh={DH_Q}&q=m"),
        (_uri(3, 3, None, attrs.evolve(SRV, port="")), f"smp://{KH}@smp.simplex.im,{ONION}/{SID_STR}#/?v=3&dh={DH_Q}"),
    ],
)
def test_queue_uri_strings(uri: SMPQueueUri, text: str) -> None:
    assert uri.to_str() == text
    assert SMPQueueUri.from_str(text) == uri


def test_queue_uri_parse_variants() -> None:
    base = f"smp://{KH}@smp.simplex.im,{ONION}:5223/{SID_STR}"
    expected = _uri(2, 4, QueueMode.MESSAGING)
    assert SMPQueueUri.from_str(f"{base}#/?v=2-4&dh={DH_STR}&q=m&k=s") == expected  # dh not escaped
    assert SMPQueueUri.from_str(f"{base}/#/?dh={DH_Q}&v=2-4&k=s") == expected  # any order; k=s ⇒ messaging
    assert SMPQueueUri.from_str(f"{base}#/?v=2-4&dh={DH_Q}&q=c&k=s").address.queue_mode is QueueMode.CONTACT  # q wins
    assert SMPQueueUri.from_str(f"{base}#/?v=2-4&dh={DH_Q}&x=1").address.queue_mode is None
    assert SMPQueueUri.from_str(f"{base}#{DH_STR}?v=2-4") == attrs.evolve(expected, address=attrs.evolve(expected.address, queue_mode=None))
    assert SMPQueueUri.from_str(f"{base}#{DH_STR}/?v=2-4&q=m") == expected
    unversioned = SMPQueueUri.from_str(f"{base}#{DH_STR}")
    assert unversioned.versions == VersionRange(1, 1) and unversioned.address.queue_mode is None


def test_queue_uri_preset_onion_hosts() -> None:
    """``updateSMPServerHosts``: a lone preset host of a v1-only address gains its onion host."""
    text = f"smp://{KH}@smp5.simplex.im/{SID_STR}#/?v=1&dh={DH_Q}"
    parsed = SMPQueueUri.from_str(text)
    assert parsed.address.server.hosts == ("smp5.simplex.im", EXTRA_SMP_SERVER_HOSTS["smp5.simplex.im"])
    assert SMPQueueUri.from_str(text.replace("v=1&", "v=1-2&")).address.server.hosts == ("smp5.simplex.im",)
    legacy = SMPQueueInfo(1, SMPQueueAddress(ProtocolServer(("smp5.simplex.im",)), SID, DH))
    assert SMPQueueInfo.decode(legacy.encode()).address.server.hosts[1].endswith(".onion")


@pytest.mark.parametrize(
    "text",
    [
        f"smp://{KH}@h.example.com/{SID_STR}#/?dh={DH_Q}",  # no v
        f"smp://{KH}@h.example.com/{SID_STR}#/?v=1-4",  # no dh
        f"smp://{KH}@h.example.com/{SID_STR}#/?v=4-1&dh={DH_Q}",  # min > max
        f"smp://{KH}@h.example.com/{SID_STR}#/?v=1-4&dh={b64url_encode(PublicKey(KeyAlgorithm.ED25519, bytes(32)).spki())}",
        f"smp://{KH}:auth@h.example.com/{SID_STR}#/?v=1-4&dh={DH_Q}",  # basic auth not allowed
        f"xftp://{KH}@h.example.com/{SID_STR}#/?v=1-4&dh={DH_Q}",
        f"smp://{KH}@h.example.com/#/?v=1-4&dh={DH_Q}",  # empty sender id
        f"smp://{KH}@h.example.com/{SID_STR}#/?v=1-4&dh={DH_Q} ",
        f"smp://{KH}@h.example.com/{SID_STR}/?v=1-4&dh={DH_Q}",
    ],
)
def test_queue_uri_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        SMPQueueUri.from_str(text)


# ---------------------------------------------------------------- short links (agent-crypto.md §2.2)


def test_short_link_forms() -> None:
    key, lid = bytes(range(32)), bytes(range(24))
    srv = ProtocolServer(("smp.example.com", "abcdefghijklmnop.onion"), "5223", KEY_HASH)
    inv = ConnShortLink(ShortLinkScheme.SIMPLEX, srv, key, None, lid)
    text = inv.to_str()
    assert text.startswith("simplex:/i#" + b64url_encode(lid).rstrip("=") + "/")
    assert "h=smp.example.com%2Cabcdefghijklmnop.onion&p=5223&c=" in text and "=&" not in text
    assert ConnShortLink.from_str(text) == inv
    group = ConnShortLink(ShortLinkScheme.SERVER, srv, key, ContactType.GROUP)
    assert group.to_str().startswith("https://smp.example.com/g#")
    assert ConnShortLink.from_str(group.to_str()) == group
    assert ConnShortLink.from_str(group.to_str().replace("/g#", "/G/#")) == group  # upper case, optional '/'
    assert group.encode()[:2] == b"CG" and inv.encode()[:1] == b"I"


@pytest.mark.parametrize(
    "text",
    [
        "simplex:/a#AAAA",  # simplex: needs h=
        "simplex:/a#AAAA?p=1",
        "ftp://h.example.com/a#AAAA",
        "https://h.example.com/x#AAAA",
        "https://h.example.com/I#AAAA/BBBB",
        "https://h.example.com/i#AAAA",  # invitation without link id
        "https://h.example.com:443/a#AAAA",
        "https://h.example.com/a#AAAA?p=x",
        "https://h.example.com/a#AAAA?c=",
        "https://h.example.com/a#",
    ],
)
def test_short_link_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        ConnShortLink.from_str(text)


# ---------------------------------------------------------------- Hypothesis

hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,9}\.(com|im|org)", fullmatch=True),
    st.from_regex(r"[a-z2-7]{16}\.onion", fullmatch=True),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
)
ports = st.one_of(st.just(""), st.integers(1, 65535).map(str))
servers = st.builds(
    lambda hs, port, kh: ProtocolServer(tuple(hs), port, kh),
    st.lists(hosts, min_size=1, max_size=3, unique=True),
    ports,
    st.binary(min_size=1, max_size=32),
)
dh_keys = st.binary(min_size=32, max_size=32).map(lambda b: PublicKey(KeyAlgorithm.X25519, b))
modes = st.none() | st.sampled_from(QueueMode)
addresses = st.builds(SMPQueueAddress, servers, st.binary(min_size=1, max_size=24), dh_keys, modes)
ranges = st.tuples(st.integers(1, 5), st.integers(1, 5)).map(lambda t: VersionRange(min(t), max(t)))


def _uri_roundtrip_mode(vr: VersionRange, mode: QueueMode | None) -> QueueMode | None:
    if vr.min >= 4:
        return mode
    if vr.min >= 3 or (vr.max >= 3 and mode is QueueMode.MESSAGING):
        return QueueMode.MESSAGING if mode is QueueMode.MESSAGING else QueueMode.CONTACT
    return None


@given(servers, st.none() | st.lists(st.sampled_from(list(b"abcXYZ019!~#$%^&*()_+=-")), min_size=1, max_size=10).map(bytes))
@settings(max_examples=80)
def test_server_roundtrip(srv: ProtocolServer, auth: bytes | None) -> None:
    assert ProtocolServer.decode(srv.encode()) == srv
    assert ProtocolServer.from_str(str(srv)) == srv
    assert parse_server_with_auth(ServerWithAuth(srv, auth).to_str()) == ServerWithAuth(srv, auth)


@given(ranges, addresses)
@settings(max_examples=80)
def test_queue_uri_roundtrip(vr: VersionRange, address: SMPQueueAddress) -> None:
    uri = SMPQueueUri(vr, address)
    binary = SMPQueueUri.decode(uri.encode())
    assert binary == SMPQueueUri(vr, attrs.evolve(address, queue_mode=_uri_roundtrip_mode(vr, address.queue_mode)))
    text = SMPQueueUri.from_str(uri.to_str())
    if vr.max < 2:
        assert text.address.server.hosts[: len(address.server.hosts)] == address.server.hosts
        text = attrs.evolve(text, address=attrs.evolve(text.address, server=address.server))
    assert text == uri


@given(st.integers(1, 6), addresses)
@settings(max_examples=80)
def test_queue_info_roundtrip(version: int, address: SMPQueueAddress) -> None:
    decoded = SMPQueueInfo.decode(SMPQueueInfo(version, address).encode())
    if version >= 4:
        mode = address.queue_mode
    elif version == 3 and address.queue_mode is QueueMode.MESSAGING:
        mode = QueueMode.MESSAGING
    else:
        mode = None
    if version == 1:  # legacy: only the first host travels
        assert decoded.address.server.hosts[0] == address.server.hosts[0]
        assert decoded.address.server.key_hash == address.server.key_hash
        assert decoded.address.queue_mode is None
    else:
        assert decoded == SMPQueueInfo(version, attrs.evolve(address, queue_mode=mode))


@given(
    servers,
    st.binary(min_size=1, max_size=32),
    st.one_of(st.none(), st.sampled_from(ContactType)),
    st.binary(min_size=1, max_size=24),
    st.sampled_from(ShortLinkScheme),
)
@settings(max_examples=80)
def test_short_link_roundtrip(srv: ProtocolServer, key: bytes, ct: ContactType | None, lid: bytes, scheme: ShortLinkScheme) -> None:
    link = ConnShortLink(scheme, srv, key, ct, None if ct is not None else lid)
    assert ConnShortLink.from_str(link.to_str()) == link
    assert ConnShortLink.decode(link.encode()) == attrs.evolve(link, scheme=ShortLinkScheme.SERVER)


text_inputs = st.one_of(
    st.text(max_size=60),
    st.builds(lambda a, b: a + b, st.sampled_from(["smp://", f"smp://{KH}@", "simplex:/", "https://h.im/", "xftp://"]), st.text(max_size=60)),
    st.builds(
        lambda s, i, j: s[:i] + s[j:],
        st.sampled_from([f"smp://{KH}@smp.simplex.im,{ONION}:5223/{SID_STR}#/?v=1-4&dh={DH_Q}&q=m&k=s&srv={ONION}",
                         f"simplex:/i#AAAA/BBBB?h=a.com%2Cb.com&p=5223&c={KH}"]),
        st.integers(0, 120),
        st.integers(0, 120),
    ),
)  # fmt: skip


@given(text_inputs)
@settings(max_examples=600)
def test_text_parsers_total(text: str) -> None:
    for parse in (parse_host, parse_server_with_auth, parse_servers_with_auth, ProtocolServer.from_str, SMPQueueUri.from_str, ConnShortLink.from_str):
        try:
            parse(text)
        except ParseError:
            pass


@given(st.binary(max_size=120))
@settings(max_examples=400)
def test_binary_parsers_total(data: bytes) -> None:
    for parse in (ProtocolServer.decode, SMPQueueInfo.decode, SMPQueueUri.decode, ConnShortLink.decode):
        try:
            parse(data)
        except ParseError:
            pass


# ---------------------------------------------------------------- shared by SMP, XFTP and NTF servers


@pytest.mark.parametrize(
    "host,kind",
    [
        ("1.2.3.4", HostKind.IPV4),
        ("::1", HostKind.IPV6),
        ("2001:db8::1", HostKind.IPV6),
        ("abc.onion", HostKind.ONION),
        (".onion", HostKind.ONION),
        ("a.com", HostKind.DOMAIN),
        ("300.1.1.1", HostKind.DOMAIN),  # looks like IPv4, but 300 is no octet: a domain name
        ("deadbeef", HostKind.DOMAIN),  # hex digits, but no IPv6 address: a domain name
    ],
)
def test_host_kind(host: str, kind: HostKind) -> None:
    assert host_kind(host) is kind
    assert bracketed_host(host) == (f"[{host}]" if kind is HostKind.IPV6 else host)


def test_host_sort_key_is_haskell_ord_transport_host() -> None:
    """Derived ``Ord TransportHost``: constructor order first, then numeric IPs, then bytes."""
    hosts = ["b.com", "a.onion", "::2", "10.0.0.1", "a.com", "9.0.0.255", "::1:0", "2.onion", "Z.com", "\xe9.com"]
    assert sorted(hosts, key=host_sort_key) == [
        "9.0.0.255", "10.0.0.1",  # numeric, not text order
        "::2", "::1:0",  # 128-bit value order
        "2.onion", "a.onion",
        "Z.com", "a.com", "b.com", "\xe9.com",  # bytes
    ]  # fmt: skip


def test_server_sort_key() -> None:
    """Derived ``Ord ProtocolServer``: hosts (as a list), then port text, then key hash."""
    a = ProtocolServer(("a.com",), "", b"z")
    a_port = ProtocolServer(("a.com",), "443", b"a")
    a_b = ProtocolServer(("a.com", "b.com"), "", b"a")
    ip = ProtocolServer(("10.0.0.1",), "9", b"z")
    ip_two = ProtocolServer(("10.0.0.1", "a.com"), "", b"a")
    a_kh = ProtocolServer(("a.com",), "", b"a")
    assert sorted([a_port, a_b, a, ip_two, ip, a_kh], key=ProtocolServer.sort_key) == [ip, ip_two, a_kh, a, a_port, a_b]
    smp, ntf, xftp = (attrs.evolve(a, scheme=s) for s in ("smp", "ntf", "xftp"))
    assert sorted([xftp, ntf, smp], key=ProtocolServer.sort_key) == [smp, ntf, xftp]


def test_default_ports() -> None:
    assert DEFAULT_PORTS == {"smp": "5223", "ntf": "443", "xftp": "443"}
    assert ProtocolServer(("h.com",)).port_number == 5223
    assert ProtocolServer(("h.com",), scheme="xftp").port_number == 443
    assert ProtocolServer(("h.com",), scheme="ntf").port_number == 443
    assert ProtocolServer(("h.com",), "8000", scheme="xftp").port_number == 8000
    for bad in ("https", "65536", "-1"):  # a binary-decoded port can be any short string
        with pytest.raises(LocalProtocolError):
            ProtocolServer(("h.com",), bad).port_number  # noqa: B018


def test_for_host_canonicalises() -> None:
    assert ProtocolServer.for_host("[2001:DB8::1]", 443, KEY_HASH, "xftp") == ProtocolServer(("2001:db8::1",), "443", KEY_HASH, "xftp")
    assert ProtocolServer.for_host("010.0.0.1", None, KEY_HASH) == ProtocolServer(("10.0.0.1",), "", KEY_HASH)
    assert ProtocolServer.for_host("h.com", "05223").port == "5223"
    with pytest.raises(ParseError):
        ProtocolServer.for_host("a b")


def test_ipv6_written_in_brackets_before_a_port() -> None:
    """The reference writes IPv6 bare, and its parser reads ``::1:5223`` back as one address; with a
    port we bracket (which it reads), without one we keep its bytes."""
    bare = f"smp://{KH}@::1:5223"
    assert ProtocolServer.from_str(bare) == ProtocolServer(("::1:5223",), "", KEY_HASH)
    srv = ProtocolServer(("::1", "h.com", "2001:db8::1"), "5223", KEY_HASH)
    assert srv.to_str() == f"smp://{KH}@[::1],h.com,[2001:db8::1]:5223"
    assert ProtocolServer.from_str(srv.to_str()) == srv
    assert srv.to_str(legacy=True) == f"smp://{KH}@[::1]:5223"
    no_port = ProtocolServer(("::1",), "", KEY_HASH, "xftp")
    assert no_port.to_str() == f"xftp://{KH}@::1" and ProtocolServer.from_str(no_port.to_str()) == no_port


def test_scheme_checked_when_given() -> None:
    """``strP @(ProtocolServer p)``/``ProtoServerWithAuth p``: ``checkProtocolType``."""
    text = f"xftp://{KH}:pw@h.com"
    assert parse_server_with_auth(text, "xftp").server.scheme == "xftp"
    assert ProtocolServer.from_str(f"xftp://{KH}@h.com", "xftp").scheme == "xftp"
    for scheme in ("smp", "ntf"):
        with pytest.raises(ParseError, match="bad ProtocolType"):
            parse_server_with_auth(text, scheme)
        with pytest.raises(ParseError, match="bad ProtocolType"):
            ProtocolServer.from_str(f"xftp://{KH}@h.com", scheme)


def test_server_lists() -> None:
    """``strP `sepBy1` char ';'`` (the ``xftp -s`` option): a ``;`` in basic auth stays in it."""
    got = parse_servers_with_auth(f"xftp://{KH}@a.com;xftp://{KH}:p;w@b.com:5000", "xftp")
    assert got == [
        ServerWithAuth(ProtocolServer(("a.com",), "", KEY_HASH, "xftp")),
        ServerWithAuth(ProtocolServer(("b.com",), "5000", KEY_HASH, "xftp"), b"p;w"),
    ]
    for bad in ("", f"xftp://{KH}@a.com;", f"xftp://{KH}@a.com;;xftp://{KH}@b.com", f"xftp://{KH}@a.com;smp://{KH}@b.com"):
        with pytest.raises(ParseError):
            parse_servers_with_auth(bad, "xftp")


def test_reference_text_rules_where_parsers_differed() -> None:
    """Inputs the old XFTP-only parser read differently; the reference's attoparsec decides."""
    # basic auth: Char8 isPrint (Latin-1), so UTF-8 bytes of "é" are allowed
    assert parse_server_with_auth(f"xftp://{KH}:p\u00e9@h.com").basic_auth == "pé".encode()
    # decimal is ASCII only: Unicode digits are neither a port nor IPv4 octets
    with pytest.raises(ParseError):
        parse_server_with_auth(f"xftp://{KH}@h.com:\u0661")
    assert parse_host("\u0661.1.2.3") == "\u0661.1.2.3".encode().decode("latin-1")  # a domain name
    # decimal :: Int wraps: a port past 2^63 and a first octet of 2^64 + 1
    assert ProtocolServer.from_str(f"xftp://{KH}@h.com:9223372036854775808").port == "-9223372036854775808"
    assert parse_host("18446744073709551617.2.3.4") == "1.2.3.4"
    # iproute's IPv6 reader has no zone index
    with pytest.raises(ParseError):
        parse_host("[fe80::1%eth0]")


def test_over_long_fields_are_parse_errors() -> None:
    """Text parsers stay total where a field would not fit its short string on the wire."""
    for text in (
        f"xftp://{KH}@" + "h" * 256,
        f"xftp://{KH}@" + ",".join(["h"] * 256),
        "xftp://" + "A" * 400 + "@h.com",
        "https://" + "a" * 300 + "/i#AAAA/BBBB",
        "https://" + "a" * 300 + "/i#AAAA/BBBB?p=1",
    ):
        for parse in (parse_server_with_auth, ConnShortLink.from_str):
            with pytest.raises(ParseError):
                parse(text)
    assert len(parse_host("h" * 255)) == 255
    with pytest.raises(ParseError):
        parse_host("h" * 256)
