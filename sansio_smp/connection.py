"""Sans-IO SMP connection machines: handshake, block framing, block encryption, batching,
and transmission authorization (smp.md §1.3, §3, §4.1, §4.2).

One :class:`RouterConnection` or :class:`ClientConnection` per TLS connection. They consume
the bytes read from the stream with :meth:`receive_data` and return events; the bytes to write
are collected by :meth:`data_to_send`. Command semantics live above them
(:mod:`sansio_smp.router`, :mod:`sansio_smp.client`); they see opaque command bytes.

State table (both roles)::

    HANDSHAKE --hello ok--> ESTABLISHED --close()/peer error--> CLOSED
        any state --bad handshake / undecryptable block--> ERROR (poisoned, like h11)
"""

from __future__ import annotations

import enum
from typing import Callable, Protocol, Sequence

import attrs

from . import crypto
from .crypto import KeyAlgorithm, PrivateKey, PublicKey
from .encoding import VersionRange
from .errors import LocalProtocolError, ParseError, RemoteProtocolError
from .handshake import (
    AUTH_CMDS_VERSION,
    ENCRYPTED_BLOCK_VERSION,
    LEGACY_SMP_VERSIONS,
    SUPPORTED_SMP_VERSIONS,
    CertChainPubKey,
    ClientHello,
    ServerHello,
    negotiate_client_version,
)
from .transmission import (
    SMP_BLOCK_SIZE,
    BlockCipher,
    Transmission,
    TransmissionParams,
    authorized_bytes,
    encode_blocks,
    encode_transmission,
    pad_block,
    parse_batch,
    parse_transmission,
    unpad_block,
)

RandomBytes = Callable[[int], bytes]


class ConnectionState(enum.Enum):
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSED = "closed"
    ERROR = "error"


class HandshakeErrorCode(enum.Enum):
    """``TransportError``/``HandshakeError`` codes (smp.md §4.7)."""

    PARSE = "HANDSHAKE PARSE"
    IDENTITY = "HANDSHAKE IDENTITY"
    BAD_AUTH = "HANDSHAKE BAD_AUTH"
    BAD_SERVICE = "HANDSHAKE BAD_SERVICE"
    VERSION = "VERSION"
    SESSION = "SESSION"
    BLOCK = "BLOCK"


class TransportError(RemoteProtocolError):
    """A transport-level failure; the connection is unusable (``TEHandshake``, ``TEVersion``…)."""

    def __init__(self, code: HandshakeErrorCode, detail: str = "") -> None:
        super().__init__(f"{code.value}{': ' + detail if detail else ''}")
        self.code = code


# ---------------------------------------------------------------- events


@attrs.frozen
class HandshakeComplete:
    """The handshake finished; ``params`` are the framing parameters in force."""

    version: int
    params: TransmissionParams
    block_encryption: bool
    peer_key: PublicKey | None  # router: the client's X25519 key; client: the router's
    proxy_client: bool = False


@attrs.frozen
class TransmissionReceived:
    """A well-formed transmission (its command bytes are not parsed yet)."""

    transmission: Transmission


@attrs.frozen
class TransmissionError:
    """A transmission that failed at the framing layer: ``code`` is ``BLOCK`` or ``SESSION``.

    ``corr_id`` is the request's when it could be read, else empty (smp.md §4.8)."""

    corr_id: bytes
    code: str


@attrs.frozen
class ConnectionClosed:
    reason: str


Event = HandshakeComplete | TransmissionReceived | TransmissionError | ConnectionClosed


class RouterIdentity(Protocol):
    """What a router needs to prove its identity in the hello (implemented in ``x509``)."""

    chain: tuple[bytes, ...]  # DER, leaf first

    def sign_session_key(self, key: PublicKey) -> bytes: ...


SessionKeyVerifier = Callable[[bytes, bytes], PublicKey]
"""``(leaf certificate DER, signed key DER) -> X25519 session key`` or raise."""


# ---------------------------------------------------------------- shared framing


class _BlockConnection:
    """Block buffering, encryption and batching common to both roles."""

    is_router: bool

    def __init__(self, block_size: int = SMP_BLOCK_SIZE) -> None:
        self.state = ConnectionState.HANDSHAKE
        self.block_size = block_size
        self.params: TransmissionParams | None = None
        self._in = bytearray()
        self._out: list[bytes] = []
        self._snd_cipher: BlockCipher | None = None
        self._rcv_cipher: BlockCipher | None = None

    # -- output
    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _send_plain_block(self, payload: bytes) -> None:
        self._out.append(pad_block(payload, self.block_size))

    # -- input
    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the stream; ``b""`` means the peer closed it."""
        if self.state in (ConnectionState.CLOSED, ConnectionState.ERROR):
            if data:
                raise LocalProtocolError(f"receive_data in state {self.state.value}")
            return []
        if not data:
            self.state = ConnectionState.CLOSED
            partial = " mid-block" if self._in else ""
            return [ConnectionClosed(f"peer closed the connection{partial}")]
        if self._in:
            self._in += data
            data = bytes(self._in)
            self._in.clear()
        # whole blocks are sliced out of ``data`` (no copy when it is exactly one block); a
        # partial block waits in ``self._in``
        bs, pos, end = self.block_size, 0, len(data)
        events: list[Event] = []
        while end - pos >= bs and self.state not in (ConnectionState.CLOSED, ConnectionState.ERROR):
            block = data if end == bs and type(data) is bytes else bytes(data[pos : pos + bs])
            pos += bs
            try:
                if self.state is ConnectionState.HANDSHAKE:
                    events.extend(self._handshake_block(block))
                else:
                    events.extend(self._transport_block(block))
            except TransportError as e:
                self.state = ConnectionState.ERROR
                events.append(ConnectionClosed(str(e)))
        if pos < end:
            self._in += data[pos:]
        return events

    def _transport_block(self, block: bytes) -> list[Event]:
        assert self.params is not None
        if self._rcv_cipher is not None:
            try:
                payload = self._rcv_cipher.decrypt(block)
            except RemoteProtocolError as e:  # tampered or out-of-sync: unrecoverable
                raise TransportError(HandshakeErrorCode.BLOCK, f"block decryption failed: {e}") from e
        else:
            try:
                payload = unpad_block(block)
            except ParseError:
                return [TransmissionError(b"", "BLOCK")]
        try:
            items = parse_batch(payload) if self.params.batch else [payload]
        except ParseError:
            return [TransmissionError(b"", "BLOCK")]
        events: list[Event] = []
        for item in items:
            try:
                t = parse_transmission(self.params, item)
            except ParseError:
                events.append(TransmissionError(b"", "BLOCK"))
                continue
            if not self.params.implied_session and t.session_id != self.params.session_id:
                events.append(TransmissionError(t.corr_id, "SESSION"))
            elif not t.auth_size_valid:
                events.append(TransmissionError(t.corr_id, "BLOCK"))
            else:
                events.append(TransmissionReceived(t))
        return events

    def _handshake_block(self, block: bytes) -> list[Event]:  # pragma: no cover - overridden
        raise NotImplementedError

    def send_transmissions(self, transmissions: Sequence[bytes]) -> list[int]:
        """Batch encoded transmissions into blocks; returns indices too large to send."""
        if self.state is not ConnectionState.ESTABLISHED:
            raise LocalProtocolError(f"cannot send in state {self.state.value}")
        blocks, too_large = encode_blocks(transmissions, self._snd_cipher, self.block_size)
        self._out.extend(blocks)
        return too_large

    def close(self) -> None:
        self.state = ConnectionState.CLOSED

    def _start_encryption(self, dh_secret: bytes) -> None:
        assert self.params is not None
        self._snd_cipher, self._rcv_cipher = BlockCipher.pair(self.params.session_id, dh_secret, self.is_router)


# ---------------------------------------------------------------- router side


class RouterConnection(_BlockConnection):
    """The router's end of one client connection (``smpServerHandshake``, smp.md §1.3, §3).

    The router hello is queued at construction: call :meth:`data_to_send` first.
    ``alpn`` is the negotiated ALPN protocol (``None`` ⇒ v6 only, §2.2).
    """

    is_router = True

    def __init__(
        self,
        *,
        session_id: bytes,
        key_hash: bytes,
        identity: RouterIdentity | None,
        random_bytes: RandomBytes,
        alpn: str | None = "smp/1",
        versions: VersionRange = SUPPORTED_SMP_VERSIONS,
    ) -> None:
        super().__init__()
        self.session_id = session_id
        self.key_hash = key_hash
        self.versions = versions if alpn is not None else LEGACY_SMP_VERSIONS
        self.session_key = PrivateKey.generate(KeyAlgorithm.X25519, random_bytes)
        self.client_key: PublicKey | None = None
        self.proxy_client = False
        auth = None
        self._key_sent = identity is not None and self.versions.max >= AUTH_CMDS_VERSION
        if self._key_sent:
            assert identity is not None
            auth = CertChainPubKey(tuple(identity.chain), identity.sign_session_key(self.session_key.public()))
        self._send_plain_block(ServerHello(self.versions, session_id, auth).encode())

    def _handshake_block(self, block: bytes) -> list[Event]:
        try:
            hello = ClientHello.parse(unpad_block(block))
        except ParseError as e:
            raise TransportError(HandshakeErrorCode.PARSE, str(e)) from e
        if hello.version not in self.versions:
            raise TransportError(HandshakeErrorCode.VERSION, f"client chose {hello.version}")
        if hello.key_hash != self.key_hash:
            raise TransportError(HandshakeErrorCode.IDENTITY, "key hash does not match this router")
        if hello.service is not None:
            raise TransportError(HandshakeErrorCode.BAD_SERVICE, "service certificates are not supported")
        v = hello.version
        self.params = TransmissionParams.smp(v, self.session_id)
        self.client_key = hello.auth_key if v >= AUTH_CMDS_VERSION else None
        if self.client_key is not None and self.client_key.alg is not KeyAlgorithm.X25519:
            raise TransportError(HandshakeErrorCode.PARSE, "client session key must be X25519")
        self.proxy_client = hello.proxy_server
        encrypt = (
            self._key_sent and self.client_key is not None and v >= ENCRYPTED_BLOCK_VERSION and not hello.proxy_server
        )
        if encrypt:
            assert self.client_key is not None
            self._start_encryption(self.session_key.dh(self.client_key))
        self.state = ConnectionState.ESTABLISHED
        return [HandshakeComplete(v, self.params, encrypt, self.client_key, hello.proxy_server)]

    def verify_auth(self, t: Transmission, key: PublicKey) -> bool:
        """Verify a transmission's authorization with a queue key (smp.md §4.2)."""
        if key.alg is KeyAlgorithm.X25519:
            return crypto.cb_verify(key, self.session_key, t.corr_id, t.auth, t.authorized)
        return key.verify(t.auth, t.authorized)

    def encode(self, corr_id: bytes, entity_id: bytes, command: bytes) -> bytes:
        """Encode an (unsigned) response transmission."""
        if self.params is None:
            raise LocalProtocolError("handshake not complete")
        return encode_transmission(self.params, corr_id, entity_id, command)


# ---------------------------------------------------------------- client side


class ClientConnection(_BlockConnection):
    """The client's end (``smpClientHandshake``, smp.md §1.3, §2.4, §3).

    ``session_id`` is the client's own tls-unique; ``peer_chain`` the TLS chain (leaf first),
    used to check the hello's signed session key with ``verify_session_key``.
    """

    is_router = False

    def __init__(
        self,
        *,
        key_hash: bytes,
        session_id: bytes,
        random_bytes: RandomBytes,
        peer_chain: Sequence[bytes] = (),
        verify_session_key: SessionKeyVerifier | None = None,
        versions: VersionRange = SUPPORTED_SMP_VERSIONS,
        send_key: bool = True,
        proxy_server: bool = False,
    ) -> None:
        super().__init__()
        self.key_hash = key_hash
        self.session_id = session_id
        self.random_bytes = random_bytes
        self.peer_chain = tuple(peer_chain)
        self.verify_session_key = verify_session_key
        self.versions = versions
        self.send_key = send_key
        self.proxy_server = proxy_server
        self.session_key = PrivateKey.generate(KeyAlgorithm.X25519, random_bytes)
        self.router_key: PublicKey | None = None
        self.version: int | None = None

    def _handshake_block(self, block: bytes) -> list[Event]:
        try:
            hello = ServerHello.parse(unpad_block(block))
        except ParseError as e:
            raise TransportError(HandshakeErrorCode.PARSE, str(e)) from e
        if hello.session_id != self.session_id:
            raise TransportError(HandshakeErrorCode.SESSION, "router session id differs from tls-unique")
        v = negotiate_client_version(hello.versions, self.versions, self.proxy_server)
        if v is None:
            raise TransportError(HandshakeErrorCode.VERSION, f"no common version with {hello.versions}")
        if hello.auth_key is not None and v >= AUTH_CMDS_VERSION:
            self.router_key = self._check_router_key(hello.auth_key)
        send_key = self.send_key and v >= AUTH_CMDS_VERSION
        self._send_plain_block(
            ClientHello(v, self.key_hash, self.session_key.public() if send_key else None, self.proxy_server).encode()
        )
        self.version = v
        self.params = TransmissionParams.smp(v, self.session_id)
        encrypt = send_key and self.router_key is not None and v >= ENCRYPTED_BLOCK_VERSION and not self.proxy_server
        if encrypt:
            assert self.router_key is not None
            self._start_encryption(self.session_key.dh(self.router_key))
        self.state = ConnectionState.ESTABLISHED
        return [HandshakeComplete(v, self.params, encrypt, self.router_key)]

    def _check_router_key(self, auth: CertChainPubKey) -> PublicKey:
        """Chain 2–4 certs, identity hash, and the key signed by the TLS leaf (§3.2).

        Every failure here is ``HANDSHAKE BAD_AUTH``, as in ``smpClientHandshake``."""
        leaf = self.peer_chain[0] if self.peer_chain else (auth.chain[0] if auth.chain else b"")
        try:
            if self.verify_session_key is not None:
                if not 2 <= len(auth.chain) <= 4 or crypto.sha256(auth.chain[1]) != self.key_hash:
                    raise RemoteProtocolError("router hello chain does not match the key hash")
                key = self.verify_session_key(leaf, auth.signed_key)
            else:
                key = auth.verify(leaf, self.key_hash, KeyAlgorithm.X25519)
        except RemoteProtocolError as e:
            raise TransportError(HandshakeErrorCode.BAD_AUTH, str(e)) from e
        if key.alg is not KeyAlgorithm.X25519:
            raise TransportError(HandshakeErrorCode.BAD_AUTH, "router session key must be X25519")
        return key

    def authorize(self, corr_id: bytes, entity_id: bytes, command: bytes, key: PrivateKey | None) -> bytes:
        """Encode a transmission signed (Ed25519/Ed448) or authenticated (X25519) with ``key``."""
        if self.params is None:
            raise LocalProtocolError("handshake not complete")
        auth = b""
        if key is not None:
            data = authorized_bytes(self.params.session_id, corr_id, entity_id, command)
            if key.alg is KeyAlgorithm.X25519:
                if self.router_key is None:
                    raise LocalProtocolError("X25519 authorization needs the router session key (v7+)")
                auth = crypto.cb_authenticate(self.router_key, key, corr_id, data)
            else:
                auth = key.sign(data)
        return encode_transmission(self.params, corr_id, entity_id, command, auth)
