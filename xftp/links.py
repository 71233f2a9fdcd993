"""XFTP server addresses and web-link fragments (xftp-ntf.md §1.12).

* ``xftp://<base64url keyHash>[:<basicAuth>]@<host>[,<host2>…][:<port>]`` — the reference's
  ``ProtocolServer`` / ``ProtoServerWithAuth`` text form (``strEncodeServer``/``serverStrP``).
  The port is kept as text, empty when absent (the client then uses 443). Hosts are IPv4, IPv6,
  ``.onion`` or domain names, ordered as Haskell's derived ``Ord TransportHost`` (constructor first),
  which decides the replica grouping order in file descriptions. IPv6 hosts are written in
  brackets (the reference writes them bare, which its own parser then reads with the port
  swallowed into the address; its parser accepts the bracketed form).
* Web-link fragments: ``base64url(raw DEFLATE(yaml))`` (zlib level 6, window 15, memLevel 8).

Where xftp-web is weaker than the reference we follow the reference: basic auth is accepted,
``host1,host2:port`` gives both hosts and the port, a key hash of any non-empty length parses
(the reference fixture uses ``abc=``), and the port is not written when it was not given.
"""

from __future__ import annotations

import ipaddress
import re
import zlib

import attrs

from sansio_smp.encoding import b64url_decode, b64url_encode
from sansio_smp.errors import LocalProtocolError, ParseError

DEFAULT_PORT = "443"
MAX_WEB_DESCRIPTION = 1 << 20  # inflate limit for web-link fragments (a description is a few KB)

_B64URL = r"[A-Za-z0-9_-]+=*"
_IPV4 = re.compile(r"(\d+)\.(\d+)\.(\d+)\.(\d+)")
_IPV6_BRACKETED = re.compile(r"\[([^\]]+)\]")
_IPV6_BARE = re.compile(r"[0-9A-Fa-f:]+")
_ONION = re.compile(r"[a-z0-9]*\.onion")
_DOMAIN = re.compile(r"[^:#,;/ \n\r\t]+")


class AddressError(ParseError):
    """Text that is not an XFTP server address."""


@attrs.frozen(order=False)
class TransportHost:
    """One host of a server address (``TransportHost``): ``kind`` is ``ipv4``, ``ipv6``, ``onion``
    or ``domain``; ``text`` its canonical text."""

    kind: str
    text: str

    _KIND_ORDER = {"ipv4": 0, "ipv6": 1, "onion": 2, "domain": 3}

    def sort_key(self) -> tuple:
        if self.kind == "ipv4":
            value: object = tuple(int(x) for x in self.text.split("."))
        elif self.kind == "ipv6":
            value = int(ipaddress.IPv6Address(self.text))
        elif self.kind == "onion":
            value = self.text.encode()
        else:
            value = self.text
        return (self._KIND_ORDER[self.kind], value)

    @property
    def connect_name(self) -> str:
        """The name to open a socket to (IPv6 without brackets)."""
        return self.text


def _parse_host(s: str, pos: int) -> tuple[TransportHost, int]:
    """``strP @TransportHost`` at ``pos``: the first alternative that parses wins (attoparsec
    ``choice``), without backtracking into it afterwards."""
    m = _IPV4.match(s, pos)
    if m:
        parts = [int(x) for x in m.groups()]
        if all(p <= 255 for p in parts[:3]):
            # the reference parses the last number as Word8 without a range check (wraps)
            parts[3] %= 256
            return TransportHost("ipv4", ".".join(map(str, parts))), m.end()
    m = _IPV6_BRACKETED.match(s, pos) or _IPV6_BARE.match(s, pos)
    if m:
        raw = m.group(1) if m.re is _IPV6_BRACKETED else m.group(0)
        try:
            return TransportHost("ipv6", ipaddress.IPv6Address(raw).compressed), m.end()
        except ValueError:
            pass
    m = _ONION.match(s, pos)
    if m:
        return TransportHost("onion", m.group(0)), m.end()
    m = _DOMAIN.match(s, pos)
    if m and not m.group(0).endswith(".onion"):
        return TransportHost("domain", m.group(0)), m.end()
    raise AddressError("invalid host")


def _valid_basic_auth(auth: bytes) -> bool:
    return bool(auth) and all(0x21 <= c <= 0x7E and c not in b"@:/" for c in auth)


@attrs.frozen
class XFTPServer:
    """An XFTP router (``ProtocolServer 'PXFTP``): hosts, port (text, ``""`` = default), key hash."""

    hosts: tuple[TransportHost, ...]
    port: str
    key_hash: bytes

    def __attrs_post_init__(self) -> None:
        if not self.hosts:
            raise LocalProtocolError("a server needs at least one host")

    @staticmethod
    def make(host: str, port: int | str | None, key_hash: bytes) -> "XFTPServer":
        h, end = _parse_host(host, 0)
        if end != len(host):
            raise LocalProtocolError(f"invalid host {host!r}")
        return XFTPServer((h,), "" if port in (None, "") else str(int(port)), key_hash)

    @property
    def host(self) -> str:
        return self.hosts[0].connect_name

    @property
    def port_number(self) -> int:
        return int(self.port or DEFAULT_PORT)

    def encode(self, basic_auth: bytes | None = None) -> str:
        """``strEncode``: ``xftp://<keyHash>[:auth]@<hosts>[:port]``."""
        auth = "" if basic_auth is None else ":" + basic_auth.decode("ascii")
        port = f":{self.port}" if self.port else ""
        hosts = ",".join(f"[{h.text}]" if h.kind == "ipv6" else h.text for h in self.hosts)
        return f"xftp://{b64url_encode(self.key_hash)}{auth}@{hosts}{port}"

    def __str__(self) -> str:
        return self.encode()

    def sort_key(self) -> tuple:
        """Haskell's derived ``Ord ProtocolServer``: scheme, hosts, port (as text), key hash."""
        return (tuple(h.sort_key() for h in self.hosts), self.port, self.key_hash)

    @staticmethod
    def parse(text: str) -> "XFTPServer":
        """``strP @(ProtocolServer 'PXFTP)``: basic auth is not allowed here."""
        server, auth = parse_server_with_auth(text)
        if auth is not None:
            raise AddressError("ProtocolServer with basic auth not allowed")
        return server


@attrs.frozen
class XFTPServerWithAuth:
    """``ProtoServerWithAuth``: a server plus the optional new-file password (CLI ``-s``)."""

    server: XFTPServer
    basic_auth: bytes | None = None

    def encode(self) -> str:
        return self.server.encode(self.basic_auth)

    @staticmethod
    def parse(text: str) -> "XFTPServerWithAuth":
        return XFTPServerWithAuth(*parse_server_with_auth(text))


def parse_server_with_auth(text: str) -> tuple[XFTPServer, bytes | None]:
    """``serverStrP`` for scheme ``xftp``; any malformed input is an :class:`AddressError`."""
    if not isinstance(text, str):
        raise AddressError("address must be text")
    if not text.startswith("xftp://"):
        raise AddressError("not an xftp:// address")
    pos = len("xftp://")
    m = re.compile(_B64URL).match(text, pos)
    if not m:
        raise AddressError("missing key hash")
    try:
        key_hash = b64url_decode(m.group(0))
    except ParseError as e:
        raise AddressError(f"bad key hash: {e}") from e
    pos = m.end()
    auth: bytes | None = None
    if text.startswith(":", pos):
        end = text.find("@", pos + 1)
        if end < 0:
            raise AddressError("missing '@'")
        try:
            auth = text[pos + 1 : end].encode("ascii")
        except UnicodeEncodeError as e:
            raise AddressError("invalid character in BasicAuth") from e
        if not _valid_basic_auth(auth):
            raise AddressError("invalid character in BasicAuth")
        pos = end
    if not text.startswith("@", pos):
        raise AddressError("missing '@'")
    pos += 1
    hosts = []
    while True:
        host, pos = _parse_host(text, pos)
        hosts.append(host)
        if text.startswith(",", pos):
            pos += 1
            continue
        break
    port = ""
    if text.startswith(":", pos):
        m = re.compile(r"\d+").match(text, pos + 1)
        if not m:
            raise AddressError("invalid port")
        port = str(int(m.group(0)))
        pos = m.end()
    if pos != len(text):
        raise AddressError("trailing characters in address")
    return XFTPServer(tuple(hosts), port, key_hash), auth


def parse_servers(text: str) -> list[XFTPServerWithAuth]:
    """The CLI ``-s`` list: servers separated by ``;``."""
    return [XFTPServerWithAuth.parse(s) for s in text.split(";")]


# ---------------------------------------------------------------- web-link fragments


def encode_web_fragment(yaml: bytes) -> str:
    """``encodeWebURI``: ``base64url(raw DEFLATE(yaml))`` with padding (§1.12)."""
    c = zlib.compressobj(-1, zlib.DEFLATED, -15)
    return b64url_encode(c.compress(yaml) + c.flush())


def decode_web_fragment(fragment: str) -> bytes:
    """Inverse of :func:`encode_web_fragment`, bounded to :data:`MAX_WEB_DESCRIPTION` bytes."""
    raw = b64url_decode(fragment)
    d = zlib.decompressobj(-15)
    try:
        out = d.decompress(raw, MAX_WEB_DESCRIPTION)
        if d.unconsumed_tail:
            raise ParseError("web link: description too large")
        out += d.flush()
    except zlib.error as e:
        raise ParseError(f"web link: bad DEFLATE data: {e}") from e
    if not d.eof:
        raise ParseError("web link: truncated DEFLATE data")
    return out


def fragment_of_link(link: str) -> str:
    """The fragment of ``https://host/#<fragment>`` (``xftp recv`` accepts such links)."""
    _, sep, fragment = link.partition("#")
    if not sep or not fragment:
        raise ParseError("Invalid URL: no fragment")
    return fragment
