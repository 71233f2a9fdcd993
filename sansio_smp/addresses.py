"""SMP server addresses, queue addresses and short links (smp.md §2.3, §4.4 PRXY; agent-crypto.md §2.1, §2.2).

Binary forms (``Encoding``) and text forms (``StrEncoding``) of:

* :class:`ProtocolServer` — ``<smp|xftp|ntf>://<keyHash>[:<basicAuth>]@<host1>[,<host2>…][:<port>]``;
  binary ``ne(sb(host)) ‖ sb(port) ‖ sb(keyHash)`` (the ``SMPServer`` inside ``PRXY``). One model for
  SMP, XFTP (xftp-ntf.md §1.12) and NTF servers: per-scheme default port (:data:`DEFAULT_PORTS`),
  Haskell's derived ``Ord`` (:meth:`ProtocolServer.sort_key`, :func:`host_sort_key`), ``;``-lists
  (:func:`parse_servers_with_auth`), IPv6 bracketing (:func:`bracketed_host`);
* :class:`SMPQueueInfo` (one client version) and :class:`SMPQueueUri` (a client version range) with
  their :class:`SMPQueueAddress`; the ``smp://…/<senderId>#/?v=…&dh=…`` queue URI;
* :class:`ConnShortLink` — ``simplex:/<t>#[<linkId>/]<linkKey>[?h=…&p=…&c=…]`` and ``https://<host>/…``.

Text is handled as bytes, like the reference (``ByteString.Char8``): ``str`` inputs are UTF-8 encoded
first, and hosts/ports are kept as ``str`` holding one character per byte (Latin-1 view), which is
what the binary encoding sends. Every parser raises :class:`~sansio_smp.errors.ParseError` only.
Host parsing follows ``TransportHost``'s ``strP`` (IPv4, IPv6, onion, domain — in that order, first
match wins, so ``"a.onion.com"`` is *not* a host) and hosts are kept in their canonical ``strEncode``
form.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Callable

import attrs

from .crypto import KeyAlgorithm, PublicKey
from .encoding import (
    Reader,
    VersionRange,
    b64url_decode,
    b64url_encode,
    ne,
    sb,
    w16,
)
from .errors import LocalProtocolError, ParseError

__all__ = [
    "DEFAULT_SMP_PORT",
    "DEFAULT_PORTS",
    "HostKind",
    "host_kind",
    "host_sort_key",
    "bracketed_host",
    "parse_servers_with_auth",
    "QueueMode",
    "ProtocolServer",
    "SMPServer",
    "ServerWithAuth",
    "SMPQueueAddress",
    "SMPQueueInfo",
    "SMPQueueUri",
    "ContactType",
    "ShortLinkScheme",
    "ConnShortLink",
    "is_valid_basic_auth",
    "parse_host",
    "parse_server_with_auth",
    "EXTRA_SMP_SERVER_HOSTS",
]

DEFAULT_SMP_PORT = "5223"  # smp.md §2.3 (``defaultSMPPort``)
# The port a client connects to when an address has none: ``defaultSMPPort`` for SMP, the
# ``defaultTransport`` ``"443"`` of the XFTP and NTF client configs (xftp-ntf.md §1.12).
DEFAULT_PORTS: dict[str, str] = {"smp": DEFAULT_SMP_PORT, "ntf": "443", "xftp": "443"}
# Haskell's derived ``Ord ProtocolType``/``SProtocolType``: constructor order PSMP < PNTF < PXFTP.
_SCHEME_ORDER = {"smp": 0, "ntf": 1, "xftp": 2}

# SMP client (queue address) versions, agent-crypto.md §1.3
INITIAL_SMP_CLIENT_VERSION = 1
SRV_HOSTNAMES_SMP_CLIENT_VERSION = 2
SND_AUTH_KEY_SMP_CLIENT_VERSION = 3
SHORT_LINKS_SMP_CLIENT_VERSION = 4

# ``extraSMPServerHosts``: legacy single-host addresses of preset servers gain their onion host.
EXTRA_SMP_SERVER_HOSTS: dict[str, str] = {
    "smp4.simplex.im": "o5vmywmrnaxalvz6wi3zicyftgio6psuvyniis6gco6bp6ekl4cqj4id.onion",
    "smp5.simplex.im": "jjbyvoemxysm7qxap7m5d5m35jzv5qq6gnlv7s4rsn7tdwwmuqciwpid.onion",
    "smp6.simplex.im": "bylepyau3ty4czmn77q4fglvperknl4bi2eb2fdy2bh4jxtf32kf73yd.onion",
    "smp8.simplex.im": "beccx4yfxxbvyhqypaavemqurytl6hozr47wfc7uuecacjqdvwpw2xid.onion",
    "smp9.simplex.im": "jssqzccmrcws6bhmn77vgmhfjmhwlyr3u7puw4erkyoosywgl67slqqd.onion",
    "smp10.simplex.im": "rb2pbttocvnbrngnwziclp2f4ckjq65kebafws6g4hy22cdaiv5dwjqd.onion",
}


class QueueMode(enum.Enum):
    """``QueueMode``: ``'M'`` messaging (sender may secure with SKEY) or ``'C'`` contact (smp.md §4.6)."""

    MESSAGING = b"M"
    CONTACT = b"C"


# ---------------------------------------------------------------- small text helpers


def _to_bytes(text: str | bytes) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else bytes(text)


def _latin1(data: bytes) -> str:
    return data.decode("latin-1")


def _unlatin1(text: str, what: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError as e:
        raise LocalProtocolError(f"{what}: characters beyond one byte") from e


def _unlatin1_parse(text: str) -> bytes:
    """A Latin-1-view ``str`` back to its bytes; :class:`ParseError` if it is not one."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError as e:
        raise ParseError("characters beyond one byte") from e


def _take_while(r: Reader, pred: Callable[[int], bool]) -> bytes:
    start = r.pos
    data = r.data
    n = len(data)
    i = start
    while i < n and pred(data[i]):
        i += 1
    r.pos = i
    return data[start:i]


def _take_while1(r: Reader, pred: Callable[[int], bool], what: str) -> bytes:
    out = _take_while(r, pred)
    if not out:
        raise ParseError(f"expected {what}")
    return out


def _is_digit(c: int) -> bool:
    return 0x30 <= c <= 0x39


def _is_b64url_char(c: int) -> bool:
    return 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A or 0x30 <= c <= 0x39 or c in (0x2D, 0x5F)


def _decimal_int(r: Reader) -> int:
    """Attoparsec ``decimal :: Parser Int`` (wraps like a 64-bit Int)."""
    v = int(_take_while1(r, _is_digit, "decimal"))
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _decimal_word(r: Reader, bits: int) -> int:
    """``decimal`` into a Word8/Word16 (wraps modulo 2^bits)."""
    return int(_take_while1(r, _is_digit, "decimal")) % (1 << bits)


def _b64url_str(r: Reader) -> bytes:
    """``base64urlP``: a non-empty base64url word (padded or not) → bytes."""
    text = _take_while1(r, _is_b64url_char, "base64url")
    text += _take_while(r, lambda c: c == 0x3D)
    return b64url_decode(text)


def _b64url_unpadded(data: bytes) -> str:
    return b64url_encode(data).rstrip("=")


# ---------------------------------------------------------------- basic auth


def is_valid_basic_auth(value: bytes) -> bool:
    """``basicAuth``: printable, no whitespace, no ``@ : /`` (Char8/Latin-1 ``isPrint``/``isSpace``)."""
    for c in value:
        if c in (0x40, 0x3A, 0x2F):
            return False
        if not (0x21 <= c <= 0x7E or (0xA1 <= c <= 0xFF and c != 0xAD)):
            return False
    return True


def _check_basic_auth(value: bytes | None) -> None:
    if value is None:
        return
    if not isinstance(value, bytes):
        raise LocalProtocolError("basic auth must be bytes")
    if len(value) > 255 or not is_valid_basic_auth(value):
        raise LocalProtocolError(f"invalid basic auth {value!r}")


# ---------------------------------------------------------------- transport hosts

_DOMAIN_STOP = frozenset(b":#,;/ \n\r\t")


def _ipv4_p(r: Reader) -> str:
    nums = []
    for _ in range(3):
        n = _decimal_int(r)
        r.expect(b".")
        if not 0 <= n <= 255:
            raise ParseError("invalid IP address")
        nums.append(n)
    nums.append(_decimal_word(r, 8))
    return ".".join(str(n) for n in nums)


def _ipv6_p(r: Reader) -> str:
    if r.peek() == 0x5B:  # '['
        r.pos += 1
        text = _take_while1(r, lambda c: c != 0x5D, "IPv6 address")
        r.expect(b"]")
    else:
        text = _take_while1(r, lambda c: c == 0x3A or chr(c) in "0123456789abcdefABCDEF", "IPv6 address")
    if not all(chr(c) in "0123456789abcdefABCDEF:." for c in text):
        raise ParseError("bad IPv6")
    try:
        return ipaddress.IPv6Address(text.decode("ascii")).compressed
    except ValueError as e:
        raise ParseError("bad IPv6") from e


def _onion_p(r: Reader) -> str:
    name = _take_while(r, lambda c: 0x61 <= c <= 0x7A or _is_digit(c))
    r.expect(b".onion")
    return _latin1(name) + ".onion"


def _domain_p(r: Reader) -> str:
    name = _take_while1(r, lambda c: c not in _DOMAIN_STOP, "host")
    if name.endswith(b".onion"):
        raise ParseError("invalid onion host")
    return _latin1(name)


class HostKind(enum.IntEnum):
    """``TransportHost``'s constructors, valued in their declaration order (which the derived ``Ord`` uses)."""

    IPV4 = 0  # THIPv4
    IPV6 = 1  # THIPv6
    ONION = 2  # THOnionHost
    DOMAIN = 3  # THDomainName


_HOST_ALTERNATIVES = (
    (HostKind.IPV4, _ipv4_p),
    (HostKind.IPV6, _ipv6_p),
    (HostKind.ONION, _onion_p),
    (HostKind.DOMAIN, _domain_p),
)


def _host_kind_p(r: Reader) -> tuple[HostKind, str]:
    """``TransportHost`` ``strP``: the first alternative that succeeds wins (no backtracking after)."""
    start = r.pos
    for kind, alt in _HOST_ALTERNATIVES:
        r.pos = start
        try:
            host = alt(r)
        except ParseError:
            continue
        if len(host) > 255:  # a short string on the wire (``smpEncode``); no limit in ``strP``
            raise ParseError("host longer than 255 bytes")
        return kind, host
    r.pos = start
    raise ParseError("bad transport host")


def _host_p(r: Reader) -> str:
    return _host_kind_p(r)[1]


def _hosts1_p(r: Reader) -> list[str]:
    """``sepBy1'`` hosts with ``','`` (a trailing comma is left unconsumed)."""
    hosts = [_host_p(r)]
    while r.peek() == 0x2C:
        save = r.pos
        r.pos += 1
        try:
            hosts.append(_host_p(r))
        except ParseError:
            r.pos = save
            break
    return hosts


def _hosts0_p(r: Reader) -> list[str]:
    """``sepBy'`` hosts (possibly none)."""
    save = r.pos
    try:
        return _hosts1_p(r)
    except ParseError:
        r.pos = save
        return []


def parse_host(text: str | bytes) -> str:
    """A whole ``TransportHost`` (as in ``smpP``'s ``parseAll strP``) → its canonical text."""
    r = Reader(_to_bytes(text))
    host = _host_p(r)
    r.end()
    return host


def host_kind(host: str) -> HostKind:
    """Which ``TransportHost`` constructor a canonical host (one-char-per-byte ``str``, as kept in
    :class:`ProtocolServer`) parses to; :class:`ParseError` if none."""
    r = Reader(_unlatin1_parse(host))
    kind, _ = _host_kind_p(r)
    r.end()
    return kind


def host_sort_key(host: str) -> tuple[int, object]:
    """The derived ``Ord TransportHost`` as a Python key: constructor first, then IPv4 octets,
    the 128-bit IPv6 value, or the onion/domain bytes (Char8 ``String`` order = byte order).

    ``host`` is a canonical host (as kept in :class:`ProtocolServer`)."""
    kind = host_kind(host)
    if kind is HostKind.IPV4:
        return kind, tuple(int(x) for x in host.split("."))
    if kind is HostKind.IPV6:
        return kind, int(ipaddress.IPv6Address(host))
    return kind, _unlatin1_parse(host)


def bracketed_host(host: str) -> str:
    """``host`` with an IPv6 address in brackets (``[::1]``), as a URL authority or an address
    followed by ``:<port>`` needs it; other hosts unchanged. The reference's ``strP`` reads both forms."""
    return f"[{host}]" if host_kind(host) is HostKind.IPV6 else host


def _check_host(host: str) -> None:
    if not isinstance(host, str):
        raise LocalProtocolError("host must be str")
    raw = _unlatin1(host, "host")
    try:
        canonical = parse_host(raw)
    except ParseError as e:
        raise LocalProtocolError(f"invalid host {host!r}") from e
    if canonical != host:
        raise LocalProtocolError(f"host {host!r} is not canonical (use {canonical!r})")
    if len(raw) > 255:
        raise LocalProtocolError("host longer than 255 bytes")


def _check_hosts(_inst: object, _attr: object, hosts: tuple[str, ...]) -> None:
    if not isinstance(hosts, tuple) or not hosts:
        raise LocalProtocolError("a server needs a non-empty tuple of hosts")
    if len(hosts) > 255:
        raise LocalProtocolError("at most 255 hosts")
    for h in hosts:
        _check_host(h)


def _check_port(_inst: object, _attr: object, port: str) -> None:
    if not isinstance(port, str) or len(_unlatin1(port, "port")) > 255:
        raise LocalProtocolError("port must be a str of at most 255 bytes")


def _check_sb_bytes(_inst: object, attr: attrs.Attribute, value: bytes) -> None:  # type: ignore[type-arg]
    if not isinstance(value, bytes) or len(value) > 255:
        raise LocalProtocolError(f"{attr.name} must be bytes of at most 255")


def _check_scheme(_inst: object, _attr: object, scheme: str) -> None:
    if scheme not in ("smp", "ntf", "xftp"):
        raise LocalProtocolError(f"unknown server scheme {scheme!r}")


def _query_escape(value: bytes) -> str:
    """http-types ``urlEncode True``: keep ``A-Z a-z 0-9 - _ . ~``, ``%XX`` (upper hex) the rest."""
    out = []
    for c in value:
        if 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A or 0x30 <= c <= 0x39 or c in b"-_.~":
            out.append(chr(c))
        else:
            out.append(f"%{c:02X}")
    return "".join(out)


def _url_decode(value: bytes) -> bytes:
    """http-types ``urlDecode True``: ``+`` → space, ``%XX`` decoded, a stray ``%`` kept."""
    out = bytearray()
    i, n = 0, len(value)
    hexd = b"0123456789abcdefABCDEF"
    while i < n:
        c = value[i]
        if c == 0x2B:
            out.append(0x20)
            i += 1
        elif c == 0x25 and i + 2 < n and value[i + 1] in hexd and value[i + 2] in hexd:
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _render_query(params: list[tuple[str, bytes]]) -> str:
    return "&".join(f"{_query_escape(k.encode())}={_query_escape(v)}" for k, v in params)


def _parse_query(r: Reader) -> list[tuple[bytes, bytes]]:
    """``QSP`` ``strP``: text up to a space/newline parsed by ``parseSimpleQuery``."""
    raw = _take_while(r, lambda c: c not in (0x20, 0x0A))
    if raw.startswith(b"?"):
        raw = raw[1:]
    out: list[tuple[bytes, bytes]] = []
    if not raw:
        return out
    for part in raw.replace(b";", b"&").split(b"&"):
        k, eq, v = part.partition(b"=")
        out.append((_url_decode(k), _url_decode(v) if eq else b""))
    return out


def _query_get(query: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in query:
        if k == name:
            return v
    return None


def _query_parse_all(value: bytes, parse: Callable[[Reader], object]) -> object:
    r = Reader(value)
    out = parse(r)
    r.end()
    return out


# ---------------------------------------------------------------- servers


@attrs.frozen
class ProtocolServer:
    """A router address: hosts, port (``""`` = default) and the identity key hash (smp.md §2.3).

    ``scheme`` is only used by the text form; the binary form is ``ne(sb host) sb(port) sb(keyHash)``.
    """

    hosts: tuple[str, ...] = attrs.field(validator=_check_hosts)
    port: str = attrs.field(default="", validator=_check_port)
    key_hash: bytes = attrs.field(default=b"", validator=_check_sb_bytes)
    scheme: str = attrs.field(default="smp", validator=_check_scheme)

    # -- binary
    def encode(self) -> bytes:
        return ne(sb(_unlatin1(h, "host")) for h in self.hosts) + sb(_unlatin1(self.port, "port")) + sb(self.key_hash)

    @staticmethod
    def parse(r: Reader, scheme: str = "smp") -> "ProtocolServer":
        hosts = tuple(r.ne(lambda rr: parse_host(rr.sb())))
        port = _latin1(r.sb())
        return ProtocolServer(hosts, port, r.sb(), scheme)

    @staticmethod
    def decode(data: bytes, scheme: str = "smp") -> "ProtocolServer":
        r = Reader(data)
        srv = ProtocolServer.parse(r, scheme)
        r.end()
        return srv

    def legacy_encode(self) -> bytes:
        """``legacyEncodeServer``: only the first host (SMPQueueInfo v1)."""
        return sb(_unlatin1(self.hosts[0], "host")) + sb(_unlatin1(self.port, "port")) + sb(self.key_hash)

    @staticmethod
    def legacy_parse(r: Reader) -> "ProtocolServer":
        host = parse_host(r.sb())
        port = _latin1(r.sb())
        return with_extra_hosts(ProtocolServer((host,), port, r.sb()))

    @staticmethod
    def for_host(
        host: str | bytes, port: int | str | None = None, key_hash: bytes = b"", scheme: str = "smp"
    ) -> "ProtocolServer":
        """A one-host server from host text in any form ``strP`` reads (``[::1]``, ``010.0.0.1``…),
        kept canonical; ``port`` ``None``/``""`` for the default. :class:`ParseError` for a bad host."""
        port_text = "" if port is None or port == "" else str(int(port))
        return ProtocolServer((parse_host(host),), port_text, key_hash, scheme)

    # -- connecting
    @property
    def default_port(self) -> str:
        """The port used when the address has none: 5223 for ``smp``, 443 for ``xftp``/``ntf``."""
        return DEFAULT_PORTS[self.scheme]

    @property
    def port_number(self) -> int:
        """The TCP port to connect to (the address's port, else :attr:`default_port`)."""
        text = self.port or self.default_port
        if not text.isascii() or not text.isdigit() or not 0 <= int(text) <= 0xFFFF:
            raise LocalProtocolError(f"not a TCP port: {text!r}")
        return int(text)

    def sort_key(self) -> tuple[int, tuple[tuple[int, object], ...], str, bytes]:
        """Haskell's derived ``Ord (ProtocolServer p)``: scheme, hosts (list order), port text, key
        hash — e.g. the order of replica groups in XFTP file descriptions (xftp-ntf.md §1.11)."""
        return (_SCHEME_ORDER[self.scheme], tuple(host_sort_key(h) for h in self.hosts), self.port, self.key_hash)

    # -- text
    def to_str(self, basic_auth: bytes | None = None, *, legacy: bool = False) -> str:
        """``strEncodeServer``: ``<scheme>://<b64url keyHash>[:<auth>]@<hosts>[:<port>]``.

        One deviation: when a port follows, IPv6 hosts are written in brackets — the reference
        writes them bare, and its own parser then reads ``::1:5223`` as one address."""
        _check_basic_auth(basic_auth)
        hosts = self.hosts[:1] if legacy else self.hosts
        auth = "" if basic_auth is None else ":" + _latin1(basic_auth)
        port = f":{self.port}" if self.port else ""
        if self.port:
            hosts = tuple(bracketed_host(h) for h in hosts)
        return f"{self.scheme}://{b64url_encode(self.key_hash)}{auth}@{','.join(hosts)}{port}"

    def __str__(self) -> str:
        return self.to_str()

    @staticmethod
    def from_str(text: str | bytes, scheme: str | None = None) -> "ProtocolServer":
        """Parse a server address; basic auth is not allowed here (``ProtocolServer`` ``strP``).
        With ``scheme`` (``"smp"``, ``"xftp"``, ``"ntf"``) another scheme is a ``bad ProtocolType``."""
        r = Reader(_to_bytes(text))
        srv, auth = _server_str_p(r, scheme)
        r.end()
        if auth is not None:
            raise ParseError("ProtocolServer with basic auth not allowed")
        return srv


SMPServer = ProtocolServer


def with_extra_hosts(srv: ProtocolServer) -> ProtocolServer:
    """``updateSMPServerHosts``: a lone preset host gains its onion address."""
    if len(srv.hosts) == 1 and srv.hosts[0] in EXTRA_SMP_SERVER_HOSTS:
        return attrs.evolve(srv, hosts=(srv.hosts[0], EXTRA_SMP_SERVER_HOSTS[srv.hosts[0]]))
    return srv


@attrs.frozen
class ServerWithAuth:
    """``ProtoServerWithAuth``: a server address with optional basic auth (``create_password``)."""

    server: ProtocolServer
    basic_auth: bytes | None = None

    def __attrs_post_init__(self) -> None:
        _check_basic_auth(self.basic_auth)

    def to_str(self) -> str:
        return self.server.to_str(self.basic_auth)

    def __str__(self) -> str:
        return self.to_str()


def _scheme_p(r: Reader) -> str:
    word = _take_while(r, lambda c: c not in (0x3A, 0x20))
    if word not in (b"smp", b"ntf", b"xftp"):
        raise ParseError("bad ProtocolType")
    return word.decode()


def _server_str_p(r: Reader, want_scheme: str | None = None) -> tuple[ProtocolServer, bytes | None]:
    """``serverStrP``, then ``checkProtocolType`` when ``want_scheme`` is given."""
    scheme = _scheme_p(r)
    if want_scheme is not None and scheme != want_scheme:
        raise ParseError("bad ProtocolType")
    r.expect(b"://")
    key_hash = _b64url_str(r)
    auth = None
    if r.peek() == 0x3A:
        save = r.pos
        r.pos += 1
        try:
            value = _take_while1(r, lambda c: c != 0x40, "basic auth")
            if not is_valid_basic_auth(value):
                raise ParseError("invalid character in BasicAuth")
            auth = value
        except ParseError:
            r.pos = save
    r.expect(b"@")
    hosts = _hosts1_p(r)
    port = ""
    if r.peek() == 0x3A:
        save = r.pos
        r.pos += 1
        try:
            port = str(_decimal_int(r))
        except ParseError:
            r.pos = save
    # the reference's text parser has no limits, but these fields are short strings on the wire
    # (``smpEncode``): keep every parsed server encodable
    if len(key_hash) > 255 or (auth is not None and len(auth) > 255) or len(port) > 255:
        raise ParseError("field too long")
    if len(hosts) > 255:
        raise ParseError("too many hosts")
    return ProtocolServer(tuple(hosts), port, key_hash, scheme), auth


def parse_server_with_auth(text: str | bytes, scheme: str | None = None) -> ServerWithAuth:
    """Parse ``<scheme>://<keyHash>[:<basicAuth>]@<hosts>[:<port>]`` (``AProtoServerWithAuth``;
    with ``scheme``, ``ProtoServerWithAuth p``: another scheme is a ``bad ProtocolType``)."""
    r = Reader(_to_bytes(text))
    srv, auth = _server_str_p(r, scheme)
    r.end()
    return ServerWithAuth(srv, auth)


def parse_servers_with_auth(text: str | bytes, scheme: str | None = None) -> list[ServerWithAuth]:
    """A ``;``-separated list of server addresses (``strP `sepBy1` char ';'``, as the reference's
    ``xftp -s`` option reads it): ``;`` inside basic auth belongs to the password."""
    r = Reader(_to_bytes(text))
    out = []
    while True:
        srv, auth = _server_str_p(r, scheme)
        out.append(ServerWithAuth(srv, auth))
        if r.peek() != 0x3B:  # ';'
            break
        r.pos += 1
    r.end()
    return out


# ---------------------------------------------------------------- queue addresses


def _check_x25519(_inst: object, _attr: object, key: PublicKey) -> None:
    if not isinstance(key, PublicKey) or key.alg is not KeyAlgorithm.X25519:
        raise LocalProtocolError("an X25519 public key is required")


def _opt_queue_mode(_inst: object, _attr: object, mode: QueueMode | None) -> None:
    if mode is not None and not isinstance(mode, QueueMode):
        raise LocalProtocolError("queue_mode must be a QueueMode or None")


def _parse_x25519(r: Reader) -> PublicKey:
    key = PublicKey.parse(r)
    if key.alg is not KeyAlgorithm.X25519:
        raise ParseError("expected an X25519 key")
    return key


def _x25519_from_spki(der: bytes) -> PublicKey:
    key = PublicKey.from_spki(der)
    if key.alg is not KeyAlgorithm.X25519:
        raise ParseError("expected an X25519 key")
    return key


def _queue_mode_p(r: Reader) -> QueueMode | None:
    """``queueModeP``: ``'M'``/``'C'``, or a legacy sndSecure bool (T → M, F → C), or nothing."""
    c = r.peek()
    if c in (0x4D, 0x43):
        r.pos += 1
        return QueueMode(bytes((c,)))
    if c == 0x54:
        r.pos += 1
        return QueueMode.MESSAGING
    if c == 0x46:
        r.pos += 1
        return QueueMode.CONTACT
    return None


@attrs.frozen
class SMPQueueAddress:
    """Where a sender sends: server, sender id, recipient's e2e X25519 key, queue mode (agent-crypto.md §2.1)."""

    server: ProtocolServer
    sender_id: bytes = attrs.field(validator=_check_sb_bytes)
    dh_key: PublicKey = attrs.field(validator=_check_x25519)
    queue_mode: QueueMode | None = attrs.field(default=None, validator=_opt_queue_mode)

    @property
    def sender_can_secure(self) -> bool:
        """``senderCanSecure``: only messaging-mode queues."""
        return self.queue_mode is QueueMode.MESSAGING


def _check_client_version(_inst: object, _attr: object, v: int) -> None:
    if not isinstance(v, int) or not 0 <= v <= 0xFFFF:
        raise LocalProtocolError("client version must be a Word16")


@attrs.frozen
class SMPQueueInfo:
    """A queue address at one SMP client version (binary ``Encoding SMPQueueInfo``)."""

    client_version: int = attrs.field(validator=_check_client_version)
    address: SMPQueueAddress

    def encode(self) -> bytes:
        a = self.address
        v = self.client_version
        addr = w16(v) + a.server.encode() + sb(a.sender_id) + a.dh_key.encode()
        if v >= SHORT_LINKS_SMP_CLIENT_VERSION:
            return addr + (a.queue_mode.value if a.queue_mode is not None else b"")
        if v >= SND_AUTH_KEY_SMP_CLIENT_VERSION and a.sender_can_secure:
            return addr + b"T"
        if v > INITIAL_SMP_CLIENT_VERSION:
            return addr
        return w16(v) + a.server.legacy_encode() + sb(a.sender_id) + a.dh_key.encode()

    @staticmethod
    def parse(r: Reader) -> "SMPQueueInfo":
        v = r.w16()
        server = ProtocolServer.parse(r) if v > INITIAL_SMP_CLIENT_VERSION else ProtocolServer.legacy_parse(r)
        sender_id = r.sb()
        dh_key = _parse_x25519(r)
        return SMPQueueInfo(v, SMPQueueAddress(server, sender_id, dh_key, _queue_mode_p(r)))

    @staticmethod
    def decode(data: bytes) -> "SMPQueueInfo":
        r = Reader(data)
        out = SMPQueueInfo.parse(r)
        r.end()
        return out


@attrs.frozen
class SMPQueueUri:
    """A queue address with an SMP client version range: binary and ``smp://`` text (agent-crypto.md §2.1)."""

    versions: VersionRange
    address: SMPQueueAddress

    # -- binary
    def encode(self) -> bytes:
        a = self.address
        vr = self.versions
        addr = vr.encode() + a.server.encode() + sb(a.sender_id) + a.dh_key.encode()
        if vr.min >= SHORT_LINKS_SMP_CLIENT_VERSION:
            return addr + (a.queue_mode.value if a.queue_mode is not None else b"")
        snd_secure = a.sender_can_secure
        if vr.min >= SND_AUTH_KEY_SMP_CLIENT_VERSION or (vr.max >= SND_AUTH_KEY_SMP_CLIENT_VERSION and snd_secure):
            return addr + (b"T" if snd_secure else b"F")
        return addr

    @staticmethod
    def parse(r: Reader) -> "SMPQueueUri":
        vr = VersionRange.parse(r)
        server = ProtocolServer.parse(r)
        sender_id = r.sb()
        dh_key = _parse_x25519(r)
        return SMPQueueUri(vr, SMPQueueAddress(server, sender_id, dh_key, _queue_mode_p(r)))

    @staticmethod
    def decode(data: bytes) -> "SMPQueueUri":
        r = Reader(data)
        out = SMPQueueUri.parse(r)
        r.end()
        return out

    # -- text
    def to_str(self) -> str:
        """``smp://<keyHash>@<hosts>[:port]/<senderId>#/?v=…&dh=…[&q=m|c][&k=s][&srv=…]``."""
        a = self.address
        vr = self.versions
        params: list[tuple[str, bytes]] = [
            ("v", _version_range_str(vr).encode()),
            ("dh", b64url_encode(a.dh_key.spki()).encode()),
        ]
        if a.queue_mode is QueueMode.MESSAGING:
            params.append(("q", b"m"))
        elif a.queue_mode is QueueMode.CONTACT:
            params.append(("q", b"c"))
        if a.sender_can_secure and vr.min < SHORT_LINKS_SMP_CLIENT_VERSION:
            params.append(("k", b"s"))
        legacy = vr.min < SRV_HOSTNAMES_SMP_CLIENT_VERSION
        if legacy and len(a.server.hosts) > 1:
            params.append(("srv", ",".join(a.server.hosts[1:]).encode("latin-1")))
        srv = a.server.to_str(legacy=legacy)
        return f"{srv}/{b64url_encode(a.sender_id)}#/?{_render_query(params)}"

    def __str__(self) -> str:
        return self.to_str()

    @staticmethod
    def from_str(text: str | bytes) -> "SMPQueueUri":
        r = Reader(_to_bytes(text))
        out = _queue_uri_p(r)
        r.end()
        return out


def _version_range_str(vr: VersionRange) -> str:
    return str(vr.min) if vr.min == vr.max else f"{vr.min}-{vr.max}"


def _version_range_str_p(r: Reader) -> VersionRange:
    v1 = _decimal_word(r, 16)
    v2 = v1
    if r.peek() == 0x2D:
        r.pos += 1
        v2 = _decimal_word(r, 16)
    if v1 > v2:
        raise ParseError("invalid version range")
    return VersionRange(v1, v2)


def _dh_key_str_p(r: Reader) -> PublicKey:
    return _x25519_from_spki(_b64url_str(r))


def _queue_uri_p(r: Reader) -> SMPQueueUri:
    srv, auth = _server_str_p(r)
    if auth is not None or srv.scheme != "smp":
        raise ParseError("bad SMP server in queue URI")
    r.expect(b"/")
    sender_id = _b64url_str(r)
    if r.peek() == 0x2F:
        r.pos += 1
    r.expect(b"#")
    start = r.pos
    try:
        vr, extra_hosts, dh_key, mode = _queue_uri_versioned_p(r)
    except ParseError:
        r.pos = start
        dh_key = _dh_key_str_p(r)
        r.end()
        vr, extra_hosts, mode = VersionRange(1, 1), [], None
    hosts = srv.hosts + tuple(extra_hosts)
    if len(hosts) > 255 or len(sender_id) > 255:
        raise ParseError("too many hosts or sender id too long")
    server = attrs.evolve(srv, hosts=hosts)
    if vr.max < SRV_HOSTNAMES_SMP_CLIENT_VERSION:
        server = with_extra_hosts(server)
    return SMPQueueUri(vr, SMPQueueAddress(server, sender_id, dh_key, mode))


def _queue_uri_versioned_p(r: Reader) -> tuple[VersionRange, list[str], PublicKey, QueueMode | None]:
    dh_key: PublicKey | None = None
    save = r.pos
    try:
        dh_key = _dh_key_str_p(r)
    except ParseError:
        r.pos = save
    if r.peek() == 0x2F:
        r.pos += 1
    r.expect(b"?")
    query = _parse_query(r)
    v = _query_get(query, b"v")
    if v is None:
        raise ParseError("no qs param v")
    vr = _query_parse_all(v, _version_range_str_p)
    if dh_key is None:
        dh = _query_get(query, b"dh")
        if dh is None:
            raise ParseError("no qs param dh")
        dh_key = _query_parse_all(dh, _dh_key_str_p)  # type: ignore[assignment]
    srv = _query_get(query, b"srv")
    extra = _query_parse_all(srv, _hosts0_p) if srv is not None else []
    q = _query_get(query, b"q")
    if q == b"m":
        mode: QueueMode | None = QueueMode.MESSAGING
    elif q == b"c":
        mode = QueueMode.CONTACT
    elif _query_get(query, b"k") == b"s":
        mode = QueueMode.MESSAGING
    else:
        mode = None
    return vr, extra, dh_key, mode  # type: ignore[return-value]


# ---------------------------------------------------------------- short links


class ContactType(enum.Enum):
    """Contact short-link types (``ctTypeChar``): binary upper case, text lower case."""

    CONTACT = "A"
    CHANNEL = "C"
    GROUP = "G"
    RELAY = "R"


class ShortLinkScheme(enum.Enum):
    SIMPLEX = "simplex"  # ``simplex:/…``
    SERVER = "https"  # ``https://<first host>/…``


def _check_link_id(inst: "ConnShortLink", _attr: object, link_id: bytes | None) -> None:
    if (link_id is None) != (inst.contact_type is not None):
        raise LocalProtocolError("invitation links have a link id, contact links a contact type")
    if link_id is not None and (not isinstance(link_id, bytes) or len(link_id) > 255):
        raise LocalProtocolError("link id must be bytes of at most 255")


@attrs.frozen
class ConnShortLink:
    """A short connection link (agent-crypto.md §2.2).

    Invitation: ``contact_type is None`` and ``link_id`` set; contact: ``contact_type`` set, no link id.
    """

    scheme: ShortLinkScheme
    server: ProtocolServer
    link_key: bytes = attrs.field(validator=_check_sb_bytes)
    contact_type: ContactType | None = None
    link_id: bytes | None = attrs.field(default=None, validator=_check_link_id)

    @property
    def is_invitation(self) -> bool:
        return self.contact_type is None

    # -- text
    def to_str(self) -> str:
        srv = self.server
        if self.scheme is ShortLinkScheme.SIMPLEX:
            authority, param_hosts = "simplex:", list(srv.hosts)
        else:
            authority, param_hosts = "https://" + srv.hosts[0], list(srv.hosts[1:])
        t = "i" if self.contact_type is None else self.contact_type.value.lower()
        lnk = "" if not self.link_id else _b64url_unpadded(self.link_id) + "/"
        params: list[tuple[str, bytes]] = []
        if param_hosts:
            params.append(("h", ",".join(param_hosts).encode("latin-1")))
        if srv.port:
            params.append(("p", srv.port.encode("latin-1")))
        if srv.key_hash:
            params.append(("c", _b64url_unpadded(srv.key_hash).encode()))
        query = _render_query(params)
        return f"{authority}/{t}#{lnk}{_b64url_unpadded(self.link_key)}{'?' + query if query else ''}"

    def __str__(self) -> str:
        return self.to_str()

    @staticmethod
    def from_str(text: str | bytes) -> "ConnShortLink":
        r = Reader(_to_bytes(text))
        out = _short_link_p(r)
        r.end()
        return out

    # -- binary
    def encode(self) -> bytes:
        if self.contact_type is None:
            return b"I" + self.server.encode() + sb(self.link_id or b"") + sb(self.link_key)
        return b"C" + self.contact_type.value.encode() + self.server.encode() + sb(self.link_key)

    @staticmethod
    def parse(r: Reader) -> "ConnShortLink":
        mode = r.byte()
        if mode == 0x49:  # 'I'
            server = ProtocolServer.parse(r)
            link_id = r.sb()
            return ConnShortLink(ShortLinkScheme.SERVER, server, r.sb(), None, link_id)
        if mode == 0x43:  # 'C'
            ct = _contact_type(r.byte())
            server = ProtocolServer.parse(r)
            return ConnShortLink(ShortLinkScheme.SERVER, server, r.sb(), ct)
        raise ParseError("bad connection mode")

    @staticmethod
    def decode(data: bytes) -> "ConnShortLink":
        r = Reader(data)
        out = ConnShortLink.parse(r)
        r.end()
        return out


def _contact_type(c: int) -> ContactType:
    for ct in ContactType:
        if ct.value.encode()[0] == c:
            return ct
    raise ParseError("unknown contact address type")


def _short_link_p(r: Reader) -> ConnShortLink:
    if r.data.startswith(b"simplex:", r.pos):
        r.pos += 8
        scheme, first_host = ShortLinkScheme.SIMPLEX, None
    elif r.data.startswith(b"https://", r.pos):
        r.pos += 8
        scheme, first_host = ShortLinkScheme.SERVER, _host_p(r)
    else:
        raise ParseError("bad short link scheme")
    r.expect(b"/")
    c = r.byte()
    ct: ContactType | None
    upper = c - 0x20 if 0x61 <= c <= 0x7A else c
    try:
        ct = _contact_type(upper)
    except ParseError:
        if c != 0x69:  # 'i'
            raise ParseError("unknown short link type") from None
        ct = None
    if r.peek() == 0x2F:
        r.pos += 1
    r.expect(b"#")
    link_id = None
    if ct is None:
        link_id = _b64url_str(r)
        r.expect(b"/")
    link_key = _b64url_str(r)
    if r.peek() == 0x3F:  # '?'
        r.pos += 1
        query = _parse_query(r)
        h = _query_get(query, b"h")
        hosts = ([first_host] if first_host is not None else []) + (
            _query_parse_all(h, _hosts0_p) if h is not None else []  # type: ignore[operator]
        )
        if not hosts:
            raise ParseError("short link without server")
        p = _query_get(query, b"p")
        port = str(_query_parse_all(p, lambda rr: _decimal_word(rr, 16))) if p is not None else ""
        c_ = _query_get(query, b"c")
        key_hash = _query_parse_all(c_, _b64url_str) if c_ is not None else b""
        if len(hosts) > 255 or len(key_hash) > 255:  # type: ignore[arg-type]
            raise ParseError("short link server too large")
        server = ProtocolServer(tuple(hosts), port, key_hash)  # type: ignore[arg-type]
    elif first_host is not None:
        server = ProtocolServer((first_host,))
    else:
        raise ParseError("short link without server")
    if len(link_key) > 255 or (link_id is not None and len(link_id) > 255):
        raise ParseError("short link id or key too long")
    return ConnShortLink(scheme, server, link_key, ct, link_id)
