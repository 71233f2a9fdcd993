"""XFTP handshakes: messages, the server's per-connection machine, client checks
(xftp-ntf.md §1.2–§1.4, §3.4).

* Native (ALPN ``xftp/1`` or ``http/1.1``): the client POSTs an empty body and gets the padded
  :class:`ServerHandshake`; it checks the session id (tls-unique), the version range, the chain
  ``[leaf, ca]`` against the address key hash and the session key signature by the TLS leaf,
  then POSTs the padded :class:`ClientHandshake` and requires an empty reply.
* Web (SNI connections): the hello carries a 32-byte challenge (header ``xftp-web-hello``); the
  server adds ``webIdentityProof`` = leaf signature over ``challenge ‖ sessionId``. The client
  handshake may carry the header ``xftp-handshake``.

:class:`ServerConnection` is the pure state machine of one TLS connection's ``sessions`` entry
(``xftpServerHandshakeV1``) plus the request routing of ``runServer``; the I/O layer feeds it
each request's method, headers and 16384-byte body head and acts on the returned decision.
"""

from __future__ import annotations

import enum
from typing import Callable, Sequence

import attrs

from sansio_smp import transmission as tx
from sansio_smp import x509
from sansio_smp.crypto import KeyAlgorithm, PrivateKey, PublicKey
from sansio_smp.encoding import Reader, VersionRange, mb, sb, unpad, w16
from sansio_smp.errors import ParseError

from .protocol import (
    HANDSHAKE,
    SESSION,
    SUPPORTED_XFTP_VERSIONS,
    XFTP_ALPN,
    XFTP_BLOCK_SIZE,
    XFTPError,
    XFTPErrorResponse,
    encode_bare_error,
    xftp_params,
)

RandomBytes = Callable[[int], bytes]
HTTP_ALPN = "http/1.1"
H2_ALPN = "h2"
SERVER_ALPN = (XFTP_ALPN, H2_ALPN, HTTP_ALPN)
WEB_HELLO_HEADER = "xftp-web-hello"
WEB_HANDSHAKE_HEADER = "xftp-handshake"
CHALLENGE_SIZE = 32

CORS_HEADERS = (("access-control-allow-origin", "*"), ("access-control-expose-headers", "*"))
CORS_PREFLIGHT_HEADERS = (
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "POST, OPTIONS"),
    ("access-control-allow-headers", "*"),
    ("access-control-max-age", "86400"),
)


# ---------------------------------------------------------------- messages


@attrs.frozen
class ClientHello:
    """``XFTPClientHello``: ``maybe(str(challenge))`` (32 bytes), then ignored tail."""

    web_challenge: bytes | None = None

    def encode(self) -> bytes:
        return mb(None if self.web_challenge is None else sb(self.web_challenge))

    def block(self) -> bytes:
        return tx.pad_block(self.encode(), XFTP_BLOCK_SIZE)

    @staticmethod
    def parse(data: bytes) -> "ClientHello":
        r = Reader(data)
        challenge = r.maybe(lambda x: x.sb())
        if challenge is not None and len(challenge) != CHALLENGE_SIZE:
            raise ParseError("bad XFTPClientHello webChallenge")
        return ClientHello(challenge)


@attrs.frozen
class ClientHandshake:
    """``XFTPClientHandshake``: ``Word16 version ‖ str(keyHash)``, then ignored tail."""

    version: int
    key_hash: bytes

    def encode(self) -> bytes:
        return w16(self.version) + sb(self.key_hash)

    def block(self) -> bytes:
        return tx.pad_block(self.encode(), XFTP_BLOCK_SIZE)

    @staticmethod
    def parse(data: bytes) -> "ClientHandshake":
        r = Reader(data)
        return ClientHandshake(r.w16(), r.sb())


@attrs.frozen
class ServerHandshake:
    """``XFTPServerHandshake``: versions, session id, ``CertChainPubKey``, optional proof."""

    versions: VersionRange
    session_id: bytes
    auth_pub_key: x509.CertChainPubKey
    web_identity_proof: bytes | None = None

    def encode(self) -> bytes:
        return (
            self.versions.encode()
            + sb(self.session_id)
            + self.auth_pub_key.encode()
            + sb(self.web_identity_proof or b"")
        )

    def block(self) -> bytes:
        return tx.pad_block(self.encode(), XFTP_BLOCK_SIZE)

    @staticmethod
    def parse(data: bytes) -> "ServerHandshake":
        r = Reader(data)
        versions = VersionRange.parse(r)
        session_id = r.sb()
        auth = x509.CertChainPubKey.parse(r)
        proof = None
        if not r.at_end():
            save = r.pos
            try:
                sig = r.sb()
                proof = sig if len(sig) in (64, 114) else None
            except ParseError:
                proof = None
            if proof is None:
                r.pos = save  # ``optional`` backtracks; the rest is an ignored tail
        return ServerHandshake(versions, session_id, auth, proof)

    @staticmethod
    def parse_block(block: bytes) -> "ServerHandshake":
        """Unpad and parse; a padded bare error string raises :class:`XFTPErrorResponse`."""
        try:
            data = unpad(block)
        except ParseError as e:
            raise XFTPErrorResponse(XFTPError("BLOCK"), "bad handshake block") from e
        try:
            return ServerHandshake.parse(data)
        except ParseError as e:
            if 0 < len(data) < 20 and all(0x41 <= c <= 0x5A or c == 0x5F for c in data):
                try:
                    raise XFTPErrorResponse(XFTPError.parse(data)) from e
                except ParseError:
                    pass
            raise XFTPErrorResponse(HANDSHAKE, f"bad server handshake: {e}") from e


# ---------------------------------------------------------------- server identity


@attrs.frozen
class ServerIdentity:
    """The router's TLS identity as the handshake uses it: the chain ``[server.crt, ca.crt]``
    (DER), the online signing key (``server.key``, Ed25519/Ed448) and ``SHA-256(ca.crt)``."""

    chain: tuple[bytes, ...] = attrs.field(converter=tuple)
    sign_key: PrivateKey

    @property
    def key_hash(self) -> bytes:
        return x509.key_hash(self.chain[-1])

    @property
    def leaf(self) -> bytes:
        return self.chain[0]


def server_handshake(
    identity: ServerIdentity,
    versions: VersionRange,
    session_id: bytes,
    session_key: PublicKey,
    challenge: bytes | None = None,
) -> ServerHandshake:
    """Build the server handshake: the X25519 session key signed by the leaf key, and for a web
    hello the proof = leaf signature over ``challenge ‖ sessionId``."""
    auth = x509.CertChainPubKey.make(identity.chain, identity.sign_key, session_key)
    proof = None if challenge is None else identity.sign_key.sign(challenge + session_id)
    return ServerHandshake(versions, session_id, auth, proof)


# ---------------------------------------------------------------- server machine


class Route(enum.Enum):
    """What ``runServer`` does with a request before any XFTP parsing (§1.2 table)."""

    CORS_PREFLIGHT = "cors-preflight"  # 200, preflight headers, no body
    STATIC = "static"  # GET on an SNI connection: the static web page (if configured)
    NO_HANDSHAKE = "no-handshake"  # no ALPN: a command at version 1
    HANDSHAKE = "handshake"  # through the handshake machine
    EMPTY = "empty"  # 200 with an empty body


def route_request(method: str, alpn: str | None, sni_used: bool, cors: bool) -> Route:
    if method == "OPTIONS" and sni_used and cors:
        return Route.CORS_PREFLIGHT
    if method == "GET" and sni_used:
        return Route.STATIC
    if alpn is None:
        return Route.NO_HANDSHAKE
    if alpn in (XFTP_ALPN, HTTP_ALPN) or (sni_used and alpn == H2_ALPN):
        return Route.HANDSHAKE
    return Route.EMPTY


@attrs.frozen
class Reply:
    """Send this body (a padded handshake, a padded bare error, or ``b""``) and stop."""

    body: bytes


@attrs.frozen
class Proceed:
    """Process the request as a command with these parameters (and the session key, if any)."""

    params: tx.TransmissionParams
    session_priv: PrivateKey | None


class ServerConnection:
    """One TLS connection's handshake state (the reference's ``sessions`` entry)."""

    def __init__(
        self,
        identity: ServerIdentity,
        session_id: bytes,
        sni_used: bool,
        random_bytes: RandomBytes,
        versions: VersionRange = SUPPORTED_XFTP_VERSIONS,
    ) -> None:
        self.identity = identity
        self.session_id = session_id
        self.sni_used = sni_used
        self.versions = versions
        self._random = random_bytes
        self.sent_key: PrivateKey | None = None  # HandshakeSent
        self.accepted: Proceed | None = None  # HandshakeAccepted

    def v1(self) -> Proceed:
        """Parameters for a connection without ALPN (no handshake, version 1)."""
        return Proceed(xftp_params(self.session_id, 1), None)

    def handle(self, body_head: bytes, headers: Sequence[str] = ()) -> Reply | Proceed:
        """Feed one request on a handshake connection; ``headers`` are lower-case names."""
        names = {h.lower() for h in headers}
        web_hello = self.sni_used and WEB_HELLO_HEADER in names
        web_handshake = self.sni_used and WEB_HANDSHAKE_HEADER in names
        try:
            if self.accepted is not None:
                if web_hello:
                    return self._hello(body_head, self.accepted.session_priv)
                if web_handshake and self.accepted.session_priv is not None:
                    return self._client_handshake(body_head, self.accepted.session_priv)
                return self.accepted
            if self.sent_key is not None:
                if web_hello:
                    return self._hello(body_head, self.sent_key)
                return self._client_handshake(body_head, self.sent_key)
            if self.sni_used and not web_hello:
                raise _HandshakeFailure(SESSION)
            return self._hello(body_head, None)
        except _HandshakeFailure as e:
            return Reply(encode_bare_error(e.error))

    def _hello(self, body: bytes, key: PrivateKey | None) -> Reply:
        challenge = None
        if body:
            if not self.sni_used:
                raise _HandshakeFailure(HANDSHAKE)
            try:
                challenge = ClientHello.parse(unpad(body)).web_challenge
            except ParseError as e:
                raise _HandshakeFailure(HANDSHAKE) from e
        if self.sent_key is None:
            self.sent_key = key if key is not None else PrivateKey.generate(KeyAlgorithm.X25519, self._random)
        self.accepted = None
        hs = server_handshake(self.identity, self.versions, self.session_id, self.sent_key.public(), challenge)
        return Reply(hs.block())

    def _client_handshake(self, body: bytes, key: PrivateKey) -> Reply:
        if len(body) != XFTP_BLOCK_SIZE:
            raise _HandshakeFailure(HANDSHAKE)
        try:
            chs = ClientHandshake.parse(unpad(body))
        except ParseError as e:
            raise _HandshakeFailure(HANDSHAKE) from e
        if chs.key_hash != self.identity.key_hash or chs.version not in self.versions:
            raise _HandshakeFailure(HANDSHAKE)
        self.accepted = Proceed(xftp_params(self.session_id, chs.version), key)
        self.sent_key = None
        return Reply(b"")


class _HandshakeFailure(Exception):
    def __init__(self, error: XFTPError) -> None:
        self.error = error


# ---------------------------------------------------------------- client checks


@attrs.frozen
class NegotiatedSession:
    """What a client keeps after the handshake."""

    version: int
    server_versions: VersionRange
    session_id: bytes
    server_session_key: PublicKey

    def params(self) -> tx.TransmissionParams:
        return xftp_params(self.session_id, self.version)


def check_native_handshake(
    hs: ServerHandshake,
    tls_unique: bytes,
    tls_leaf_der: bytes,
    key_hash: bytes,
    client_versions: VersionRange = SUPPORTED_XFTP_VERSIONS,
) -> NegotiatedSession:
    """``xftpClientHandshakeV1``'s checks (the TLS chain itself was validated on connect):
    session id = tls-unique (SESSION), a common version (HANDSHAKE), the handshake chain exactly
    ``[leaf, ca]`` with ``SHA-256(ca) = key_hash`` and the session key signed by the TLS leaf."""
    if hs.session_id != tls_unique:
        raise XFTPErrorResponse(SESSION, "session id differs from tls-unique")
    common = hs.versions.intersect(client_versions)
    if common is None:
        raise XFTPErrorResponse(HANDSHAKE, "incompatible server version")
    chain = hs.auth_pub_key.chain
    if len(chain) != 2 or x509.key_hash(chain[1]) != bytes(key_hash):
        raise XFTPErrorResponse(HANDSHAKE, "bad certificate")
    try:
        key = x509.verify_session_key(tls_leaf_der, hs.auth_pub_key.signed_key)
    except x509.CertificateError as e:
        raise XFTPErrorResponse(HANDSHAKE, f"BAD_AUTH: {e}") from e
    return NegotiatedSession(common.max, common, hs.session_id, key)


def check_web_handshake(
    hs: ServerHandshake,
    challenge: bytes,
    key_hash: bytes,
    now: float,
    client_versions: VersionRange = SUPPORTED_XFTP_VERSIONS,
) -> NegotiatedSession:
    """A web client's checks (xftp-web ``verifyIdentityProof`` + ``connectXFTP``) **plus** the
    reference's chain validation that xftp-web omits (vectors README finding 1): the chain must
    be 2–4 certificates with ``SHA-256(idCert) = key_hash``, the leaf must be issued by it
    (X.509 validation against the CA), the leaf must sign ``challenge ‖ sessionId`` and the
    session key. The session id is the server's (a browser cannot see tls-unique)."""
    if hs.web_identity_proof is None:
        raise XFTPErrorResponse(HANDSHAKE, "server did not provide web identity proof")
    try:
        cc = x509.chain_id_ca_certs(hs.auth_pub_key.chain)
        assert cc.id_cert is not None and cc.ca_cert is not None and cc.leaf is not None
        if x509.key_hash(cc.id_cert) != bytes(key_hash):
            raise XFTPErrorResponse(HANDSHAKE, "identity certificate does not match the key hash")
        failures = x509.x509_validate(cc.ca_cert, list(hs.auth_pub_key.chain), now)
        if failures:
            raise XFTPErrorResponse(HANDSHAKE, f"certificate chain: {failures[0].value}")
        leaf_key = x509.certificate_public_key(cc.leaf)
        if not leaf_key.verify(hs.web_identity_proof, challenge + hs.session_id):
            raise XFTPErrorResponse(HANDSHAKE, "bad web identity proof")
        key = x509.verify_session_key(cc.leaf, hs.auth_pub_key.signed_key)
    except x509.CertificateError as e:
        raise XFTPErrorResponse(HANDSHAKE, f"server identity: {e}") from e
    common = hs.versions.intersect(client_versions)
    if common is None:
        raise XFTPErrorResponse(HANDSHAKE, "incompatible server version")
    return NegotiatedSession(common.max, common, hs.session_id, key)


__all__ = [
    "CORS_HEADERS",
    "CORS_PREFLIGHT_HEADERS",
    "ClientHandshake",
    "ClientHello",
    "NegotiatedSession",
    "Proceed",
    "Reply",
    "Route",
    "SERVER_ALPN",
    "ServerConnection",
    "ServerHandshake",
    "ServerIdentity",
    "check_native_handshake",
    "check_web_handshake",
    "route_request",
    "server_handshake",
]
