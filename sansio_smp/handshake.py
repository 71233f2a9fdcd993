"""SMP transport handshake messages (smp.md §1.3, §3.2, §3.3, §3.4).

Both hellos travel as unencrypted padded blocks; their parsers ignore trailing bytes
(reference ``getHandshake`` uses ``parseOnly``).
"""

from __future__ import annotations

import attrs

from .crypto import PublicKey
from .encoding import Reader, VersionRange, boolean, mb, sb, w16
from .errors import ParseError
from .x509 import CertChainPubKey

SMP_VERSION_MIN = 6
SMP_VERSION_MAX = 18
SUPPORTED_SMP_VERSIONS = VersionRange(SMP_VERSION_MIN, SMP_VERSION_MAX)
LEGACY_SMP_VERSIONS = VersionRange(6, 6)  # offered when no ALPN was negotiated (§2.2)
PROXIED_SMP_VERSIONS = VersionRange(8, 17)

AUTH_CMDS_VERSION = 7  # session key in hellos, implied session id
PROXY_SERVER_HELLO_VERSION = 14
SERVICE_CERTS_VERSION = 16
ENCRYPTED_BLOCK_VERSION = 11


@attrs.frozen
class ServerHello:
    """``SMPServerHandshake``: version range, session id, and (max ≥ 7) the signed session key."""

    versions: VersionRange
    session_id: bytes
    auth_key: CertChainPubKey | None = None

    def encode(self) -> bytes:
        out = self.versions.encode() + sb(self.session_id)
        if self.auth_key is not None:
            out += self.auth_key.encode()
        return out

    @staticmethod
    def parse(data: bytes) -> "ServerHello":
        r = Reader(data)
        versions = VersionRange.parse(r)
        session_id = r.sb()
        auth_key = None
        if versions.max >= AUTH_CMDS_VERSION and not r.at_end():
            auth_key = CertChainPubKey.parse(r)
        return ServerHello(versions, session_id, auth_key)


@attrs.frozen
class ClientService:
    """v16 client-service credentials: role ('M', 'N', 'P') and its CertChainPubKey (§3.3)."""

    role: bytes
    cert_key: CertChainPubKey

    def encode(self) -> bytes:
        return self.role + self.cert_key.encode()

    @staticmethod
    def parse(r: Reader) -> "ClientService":
        role = r.char()
        if role not in (b"M", b"N", b"P"):
            raise ParseError("bad client service role")
        return ClientService(role, CertChainPubKey.parse(r))


@attrs.frozen
class ClientHello:
    """``SMPClientHandshake`` (§3.3). Fields beyond the chosen version's set are not encoded."""

    version: int
    key_hash: bytes
    auth_key: PublicKey | None = None
    proxy_server: bool = False
    service: ClientService | None = None

    def encode(self) -> bytes:
        out = w16(self.version) + sb(self.key_hash)
        if self.version >= AUTH_CMDS_VERSION and self.auth_key is not None:
            out += self.auth_key.encode()
        if self.version >= PROXY_SERVER_HELLO_VERSION:
            out += boolean(self.proxy_server)
        if self.version >= SERVICE_CERTS_VERSION:
            out += mb(self.service.encode() if self.service else None)
        return out

    @staticmethod
    def parse(data: bytes) -> "ClientHello":
        r = Reader(data)
        version = r.w16()
        key_hash = r.sb()
        auth_key = None
        # The key has no Maybe tag: present iff the next byte starts an sb(SPKI) (§3.3).
        if version >= AUTH_CMDS_VERSION and r.peek() in (0x2C, 0x43, 0x44):
            auth_key = PublicKey.parse(r)
        proxy_server = False
        service = None
        if version >= PROXY_SERVER_HELLO_VERSION:
            proxy_server = r.boolean()
        if version >= SERVICE_CERTS_VERSION:
            service = r.maybe(ClientService.parse)
        return ClientHello(version, key_hash, auth_key, proxy_server, service)


def negotiate_client_version(router: VersionRange, client: VersionRange, proxy: bool = False) -> int | None:
    """The client's choice: max of the intersection, ``None`` if empty (§1.3 steps 2–3)."""
    if proxy and router.max < PROXY_SERVER_HELLO_VERSION:
        client = VersionRange(client.min, max(client.min, min(client.max, 10)))
    common = router.intersect(client)
    return None if common is None else common.max
