"""XFTP web-link fragments (xftp-ntf.md §1.12).

``base64url(raw DEFLATE(yaml))`` (zlib level 6, window 15, memLevel 8): the fragment of
``https://<host>/#<fragment>`` web links.

XFTP server addresses (``xftp://<keyHash>[:<basicAuth>]@<hosts>[:<port>]``) are the shared
:class:`sansio_smp.addresses.ProtocolServer` with ``scheme="xftp"`` (parse with
``ProtocolServer.from_str(text, "xftp")`` / ``parse_server_with_auth(text, "xftp")``); their
derived-``Ord`` sort key, default port 443 and bracketed IPv6 output live there too.
"""

from __future__ import annotations

import zlib

from sansio_smp.addresses import ProtocolServer, ServerWithAuth
from sansio_smp.encoding import b64url_decode, b64url_encode
from sansio_smp.errors import ParseError

MAX_WEB_DESCRIPTION = 1 << 20  # inflate limit for web-link fragments (a description is a few KB)


# ---------------------------------------------------------------- aliases for callers outside xftp/ (bench/)

XFTPServerWithAuth = ServerWithAuth


class XFTPServer:
    """Not a type: ``XFTPServer.make`` for callers not yet moved to the shared
    :meth:`ProtocolServer.for_host` (bench/bench_xftp.py); the values are ``ProtocolServer``."""

    @staticmethod
    def make(host: str, port: int | str | None, key_hash: bytes) -> ProtocolServer:
        return ProtocolServer.for_host(host, port, key_hash, "xftp")


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
