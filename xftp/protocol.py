"""XFTP commands, responses, errors and their blocks (xftp-ntf.md §1.1, §1.5–§1.8).

Commands and responses are frozen value classes with ``encode()`` and total parsers. The
transmission/batch/block framing is the shared :mod:`sansio_smp.transmission` codec with XFTP's
parameters (session id sent, no service signature, one transmission per 16384-byte block).

Request decoding for a server (:func:`decode_request`) follows ``tDecodeServer`` +
``checkCredentials``: a bad block is ``BLOCK`` (empty corrId/entity), a wrong session id
``SESSION``, a bad authenticator length ``BLOCK``, an unknown tag ``CMD UNKNOWN``, bad arguments
``CMD SYNTAX``, then the credential rules. Response decoding for a client
(:func:`decode_response`) follows ``tDecodeClient``.
"""

from __future__ import annotations

import hmac
from typing import Union

import attrs

from sansio_smp import transmission as tx
from sansio_smp.addresses import is_valid_basic_auth
from sansio_smp.crypto import (
    KeyAlgorithm,
    parse_auth_key,
    parse_dh_key,
    PrivateKey,
    PublicKey,
    SecretBoxStream,
    cb_authenticate,
    cb_nonce,
    cb_verify,
)
from sansio_smp.encoding import Reader, VersionRange, mb, ne, sb, unpad, w32
from sansio_smp.errors import LocalProtocolError, ParseError, ProtocolError
from sansio_smp.protocol import BlockingInfo, BlockingReason, ClientNotice

XFTP_BLOCK_SIZE = 16384
INITIAL_XFTP_VERSION = 1
AUTH_CMDS_XFTP_VERSION = 2
BLOCKED_FILES_XFTP_VERSION = 3
CURRENT_XFTP_VERSION = 3
SUPPORTED_XFTP_VERSIONS = VersionRange(INITIAL_XFTP_VERSION, CURRENT_XFTP_VERSION)
XFTP_ALPN = "xftp/1"
FILE_ID_SIZE = 16
NONCE_SIZE = 24
AUTH_TAG_SIZE = 16
FILE_BLOCK_SIZE = 16384  # bodies are streamed in pieces of this size (fileBlockSize)
MAX_RECIPIENTS_PER_REQUEST = 200  # xftpMaxRecipientsPerRequest (agent)



def xftp_params(session_id: bytes, version: int = INITIAL_XFTP_VERSION) -> tx.TransmissionParams:
    """XFTP ``THandleParams``: session id on the wire, no service auth, 16384-byte blocks."""
    return tx.TransmissionParams(
        version, session_id, implied_session=False, service_auth=False, block_size=XFTP_BLOCK_SIZE, batch=True
    )


# ---------------------------------------------------------------- errors (§1.7)

COMMAND_ERRORS = ("UNKNOWN", "SYNTAX", "PROHIBITED", "NO_AUTH", "HAS_AUTH", "NO_ENTITY")
SIMPLE_ERRORS = (
    "BLOCK",
    "SESSION",
    "HANDSHAKE",
    "AUTH",
    "SIZE",
    "QUOTA",
    "DIGEST",
    "CRYPTO",
    "NO_FILE",
    "HAS_FILE",
    "FILE_IO",
    "TIMEOUT",
    "INTERNAL",
    "DUPLICATE_",
)
# ``BLOCKED``'s ``BlockingInfo`` is SMP's (the reference's one type): sansio_smp.protocol.BlockingInfo


@attrs.frozen
class XFTPError:
    """``XFTPErrorType``: ``kind`` is one of :data:`SIMPLE_ERRORS`, ``CMD`` or ``BLOCKED``."""

    kind: str
    cmd: str | None = None
    block_info: BlockingInfo | None = None

    def encode(self) -> bytes:
        if self.kind == "CMD":
            return b"CMD " + (self.cmd or "").encode()
        if self.kind == "BLOCKED":
            assert self.block_info is not None
            return b"BLOCKED " + self.block_info.encode()
        return self.kind.encode()

    @staticmethod
    def parse(data: bytes) -> "XFTPError":
        tag, sp, rest = data.partition(b" ")
        name = tag.decode("ascii", errors="replace")
        if name == "CMD":
            if not sp:
                raise ParseError("CMD error without an argument")
            arg = rest.decode("ascii", errors="replace")
            if arg == "NO_QUEUE":
                arg = "NO_ENTITY"
            if arg not in COMMAND_ERRORS:
                raise ParseError(f"bad CommandError {arg!r}")
            return XFTPError("CMD", cmd=arg)
        if name == "BLOCKED":
            if not sp:
                raise ParseError("BLOCKED error without info")
            return XFTPError("BLOCKED", block_info=BlockingInfo.decode(rest))
        if name in SIMPLE_ERRORS and not sp:
            return XFTPError(name)
        raise ParseError(f"bad error type {data[:20]!r}")

    def for_version(self, version: int) -> "XFTPError":
        """``BLOCKED`` is sent as ``AUTH`` below v3 (``encodeProtocol``)."""
        if self.kind == "BLOCKED" and version < BLOCKED_FILES_XFTP_VERSION:
            return AUTH
        return self

    def __str__(self) -> str:
        return self.encode().decode("ascii", errors="replace")


def cmd_error(name: str) -> XFTPError:
    return XFTPError("CMD", cmd=name)


BLOCK, SESSION, HANDSHAKE, AUTH = (XFTPError(k) for k in ("BLOCK", "SESSION", "HANDSHAKE", "AUTH"))
SIZE, QUOTA, DIGEST, CRYPTO = (XFTPError(k) for k in ("SIZE", "QUOTA", "DIGEST", "CRYPTO"))
NO_FILE, HAS_FILE, FILE_IO, TIMEOUT, INTERNAL = (
    XFTPError(k) for k in ("NO_FILE", "HAS_FILE", "FILE_IO", "TIMEOUT", "INTERNAL")
)


class XFTPErrorResponse(ProtocolError):
    """A client-side exception carrying an :class:`XFTPError` (from ``ERR`` or detected locally)."""

    def __init__(self, error: XFTPError, detail: str = "") -> None:
        super().__init__(str(error) + (f": {detail}" if detail else ""))
        self.error = error

    @property
    def retriable(self) -> bool:
        """Transient errors worth a reconnect/retry (sessions, handshakes, timeouts, I/O)."""
        return self.error.kind in ("SESSION", "HANDSHAKE", "TIMEOUT", "FILE_IO", "INTERNAL", "BLOCK")


# ---------------------------------------------------------------- key helpers


def _basic_auth(r: Reader) -> bytes:
    value = r.sb()
    if not value or not is_valid_basic_auth(value):
        raise ParseError("invalid character in BasicAuth")
    return value


# ---------------------------------------------------------------- commands (§1.6)


@attrs.frozen
class FileInfo:
    """``FileInfo``: ``str(sndKey) ‖ Word32 size ‖ str(digest)``."""

    snd_key: PublicKey
    size: int
    digest: bytes

    def encode(self) -> bytes:
        return self.snd_key.encode() + w32(self.size) + sb(self.digest)

    @staticmethod
    def parse(r: Reader) -> "FileInfo":
        return FileInfo(parse_auth_key(r), r.w32(), r.sb())


@attrs.frozen
class FNEW:
    file_info: FileInfo
    rcv_keys: tuple[PublicKey, ...] = attrs.field(converter=tuple)
    basic_auth: bytes | None = None
    tag = b"FNEW"
    party = "sender"

    def encode(self) -> bytes:
        auth = None if self.basic_auth is None else sb(self.basic_auth)
        return b"FNEW " + self.file_info.encode() + ne(k.encode() for k in self.rcv_keys) + mb(auth)


@attrs.frozen
class FADD:
    rcv_keys: tuple[PublicKey, ...] = attrs.field(converter=tuple)
    tag = b"FADD"
    party = "sender"

    def encode(self) -> bytes:
        return b"FADD " + ne(k.encode() for k in self.rcv_keys)


@attrs.frozen
class FPUT:
    tag = b"FPUT"
    party = "sender"

    def encode(self) -> bytes:
        return b"FPUT"


@attrs.frozen
class FDEL:
    tag = b"FDEL"
    party = "sender"

    def encode(self) -> bytes:
        return b"FDEL"


@attrs.frozen
class FGET:
    dh_key: PublicKey
    tag = b"FGET"
    party = "recipient"

    def encode(self) -> bytes:
        return b"FGET " + self.dh_key.encode()


@attrs.frozen
class FACK:
    tag = b"FACK"
    party = "recipient"

    def encode(self) -> bytes:
        return b"FACK"


@attrs.frozen
class PING:
    tag = b"PING"
    party = "recipient"

    def encode(self) -> bytes:
        return b"PING"


Command = Union[FNEW, FADD, FPUT, FDEL, FGET, FACK, PING]


class CommandError(ParseError):
    """A command that does not parse: ``error`` is ``CMD UNKNOWN`` or ``CMD SYNTAX``."""

    def __init__(self, error: XFTPError, detail: str = "") -> None:
        super().__init__(f"{error}{': ' + detail if detail else ''}")
        self.error = error


def parse_command(data: bytes) -> Command:
    """``parseProtocol`` for ``FileCmd``: the tag up to the first space, then the arguments,
    which must be consumed exactly. Raises :class:`CommandError`."""
    tag, _, _ = data.partition(b" ")
    params = data[len(tag) :]
    r = Reader(params)

    def space() -> None:
        r.expect(b" ")

    try:
        if tag == b"FNEW":
            space()
            cmd: Command = FNEW(FileInfo.parse(r), tuple(r.ne(parse_auth_key)), r.maybe(_basic_auth))
        elif tag == b"FADD":
            space()
            cmd = FADD(tuple(r.ne(parse_auth_key)))
        elif tag == b"FPUT":
            cmd = FPUT()
        elif tag == b"FDEL":
            cmd = FDEL()
        elif tag == b"FGET":
            space()
            cmd = FGET(parse_dh_key(r))
        elif tag == b"FACK":
            cmd = FACK()
        elif tag == b"PING":
            cmd = PING()
        else:
            raise CommandError(cmd_error("UNKNOWN"))
        r.end()
    except CommandError:
        raise
    except ParseError as e:
        raise CommandError(cmd_error("SYNTAX"), str(e)) from e
    return cmd


def check_command_credentials(has_auth: bool, entity_id: bytes, cmd: Command) -> XFTPError | None:
    """``checkCredentials`` for commands: FNEW needs auth and no entity, PING neither, the others
    both."""
    if isinstance(cmd, FNEW):
        if not has_auth:
            return cmd_error("NO_AUTH")
        if entity_id:
            return cmd_error("HAS_AUTH")
        return None
    if isinstance(cmd, PING):
        return None if not has_auth and not entity_id else cmd_error("HAS_AUTH")
    if not has_auth or not entity_id:
        return cmd_error("NO_AUTH")
    return None


# ---------------------------------------------------------------- responses (§1.6)


@attrs.frozen
class SIDS:
    sender_id: bytes
    recipient_ids: tuple[bytes, ...] = attrs.field(converter=tuple)

    def encode(self, version: int = CURRENT_XFTP_VERSION) -> bytes:
        return b"SIDS " + sb(self.sender_id) + ne(sb(r) for r in self.recipient_ids)


@attrs.frozen
class RIDS:
    recipient_ids: tuple[bytes, ...] = attrs.field(converter=tuple)

    def encode(self, version: int = CURRENT_XFTP_VERSION) -> bytes:
        return b"RIDS " + ne(sb(r) for r in self.recipient_ids)


@attrs.frozen
class FILE:
    dh_key: PublicKey
    nonce: bytes

    def encode(self, version: int = CURRENT_XFTP_VERSION) -> bytes:
        if len(self.nonce) != NONCE_SIZE:
            raise LocalProtocolError("FILE nonce must be 24 bytes")
        return b"FILE " + self.dh_key.encode() + self.nonce


@attrs.frozen
class OK:
    def encode(self, version: int = CURRENT_XFTP_VERSION) -> bytes:
        return b"OK"


@attrs.frozen
class PONG:
    def encode(self, version: int = CURRENT_XFTP_VERSION) -> bytes:
        return b"PONG"


@attrs.frozen
class ERR:
    error: XFTPError

    def encode(self, version: int = CURRENT_XFTP_VERSION) -> bytes:
        return b"ERR " + self.error.for_version(version).encode()


Response = Union[SIDS, RIDS, FILE, OK, PONG, ERR]


def parse_response(data: bytes) -> Response:
    """``parseProtocol`` for ``FileResponse``; :class:`CommandError` (UNKNOWN/SYNTAX) otherwise."""
    tag, _, _ = data.partition(b" ")
    r = Reader(data[len(tag) :])
    try:
        if tag == b"SIDS":
            r.expect(b" ")
            resp: Response = SIDS(r.sb(), tuple(r.ne(lambda x: x.sb())))
        elif tag == b"RIDS":
            r.expect(b" ")
            resp = RIDS(tuple(r.ne(lambda x: x.sb())))
        elif tag == b"FILE":
            r.expect(b" ")
            resp = FILE(parse_dh_key(r), r.take(NONCE_SIZE))
        elif tag == b"OK":
            resp = OK()
        elif tag == b"PONG":
            resp = PONG()
        elif tag == b"ERR":
            r.expect(b" ")
            resp = ERR(XFTPError.parse(r.tail()))
        else:
            raise CommandError(cmd_error("UNKNOWN"))
        r.end()
    except CommandError:
        raise
    except ParseError as e:
        raise CommandError(cmd_error("SYNTAX"), str(e)) from e
    return resp


def check_response_credentials(entity_id: bytes, resp: Response) -> XFTPError | None:
    """``checkCredentials`` for responses: SIDS/PONG without entity, ERR either, others with one."""
    if isinstance(resp, (SIDS, PONG)):
        return None if not entity_id else cmd_error("HAS_AUTH")
    if isinstance(resp, ERR):
        return None
    return None if entity_id else cmd_error("NO_ENTITY")


# ---------------------------------------------------------------- authorization (§1.5)


def authorize(
    authorized: bytes, key: PrivateKey, corr_id: bytes = b"", server_session_key: PublicKey | None = None
) -> bytes:
    """The transmission's ``auth`` field: an Ed25519/Ed448 signature over the authorized bytes,
    or for an X25519 key the 80-byte ``cbAuthenticate`` with the server's session key (v≥2)."""
    if key.alg is KeyAlgorithm.X25519:
        if server_session_key is None:
            raise LocalProtocolError("X25519 command auth needs the server session key (v2 handshake)")
        return cb_authenticate(server_session_key, key, cb_nonce(corr_id), authorized)
    return key.sign(authorized)


def verify_auth(
    auth: bytes,
    authorized: bytes,
    corr_id: bytes,
    key: PublicKey,
    server_session_priv: PrivateKey | None = None,
) -> bool:
    """``verifyCmdAuthorization``: signature algorithm chosen by the auth length and matching the
    stored key, or an authenticator checked with the server's session key."""
    if not auth:
        return False
    if len(auth) == tx.AUTHENTICATOR_SIZE:
        if key.alg is not KeyAlgorithm.X25519 or server_session_priv is None:
            return False
        return cb_verify(key, server_session_priv, cb_nonce(corr_id), auth, authorized)
    if len(auth) == tx.ED25519_SIG_SIZE:
        return key.alg is KeyAlgorithm.ED25519 and key.verify(auth, authorized)
    if len(auth) == tx.ED448_SIG_SIZE:
        return key.alg is KeyAlgorithm.ED448 and key.verify(auth, authorized)
    return False


# ---------------------------------------------------------------- blocks


def encode_command_block(
    params: tx.TransmissionParams,
    entity_id: bytes,
    cmd: Command,
    key: PrivateKey | None = None,
    corr_id: bytes = b"",
    server_session_key: PublicKey | None = None,
) -> bytes:
    """A client's 16384-byte request block (``xftpEncodeAuthTransmission``)."""
    body = cmd.encode()
    auth = b""
    if key is not None:
        authorized = tx.authorized_bytes(params.session_id, corr_id, entity_id, body)
        auth = authorize(authorized, key, corr_id, server_session_key)
    t = tx.encode_transmission(params, corr_id, entity_id, body, auth)
    return tx.pad_block(tx.encode_batch1(t), params.block_size)


def encode_response_block(params: tx.TransmissionParams, corr_id: bytes, entity_id: bytes, resp: Response) -> bytes:
    """A server's unsigned response block (``xftpEncodeTransmission``)."""
    t = tx.encode_transmission(params, corr_id, entity_id, resp.encode(params.version))
    return tx.pad_block(tx.encode_batch1(t), params.block_size)


def _single_transmission(params: tx.TransmissionParams, block: bytes) -> tx.Transmission:
    """``xftpDecodeTransmission`` up to the raw transmission; :class:`ParseError` = BLOCK."""
    payload = unpad(block)
    r = Reader(payload)
    n = r.byte()
    if n != 1:
        raise ParseError(f"expected batch count 1, got {n}")
    t = r.lg()
    r.end()
    return tx.parse_transmission(params, t)


@attrs.frozen
class Request:
    """A decoded, credential-checked request (``SignedTransmission FileCmd``)."""

    corr_id: bytes
    entity_id: bytes
    auth: bytes
    authorized: bytes
    command: Command


@attrs.frozen
class RequestError:
    """A request that must be answered with ``ERR`` at once."""

    corr_id: bytes
    entity_id: bytes
    error: XFTPError


def decode_request(params: tx.TransmissionParams, block: bytes) -> Request | RequestError:
    """Decode a request block as the reference server does (``processRequest``): total."""
    if len(block) != params.block_size:
        return RequestError(b"", b"", BLOCK)
    try:
        t = _single_transmission(params, block)
    except ParseError:
        return RequestError(b"", b"", BLOCK)
    if t.session_id != params.session_id:
        return RequestError(t.corr_id, b"", SESSION)
    if not t.auth_size_valid:
        return RequestError(t.corr_id, b"", BLOCK)
    try:
        cmd = parse_command(t.command)
    except CommandError as e:
        return RequestError(t.corr_id, t.entity_id, e.error)
    err = check_command_credentials(bool(t.auth), t.entity_id, cmd)
    if err is not None:
        return RequestError(t.corr_id, t.entity_id, err)
    return Request(t.corr_id, t.entity_id, t.auth, t.authorized, cmd)


@attrs.frozen
class ResponseTransmission:
    corr_id: bytes
    entity_id: bytes
    response: Response | XFTPError  # an XFTPError: the response did not decode / check


def decode_response(params: tx.TransmissionParams, block: bytes) -> ResponseTransmission:
    """``xftpDecodeTClient``; raises :class:`XFTPErrorResponse` (BLOCK) if the block is not one
    transmission, else returns the response or the decoding error (SESSION, CMD …)."""
    try:
        t = _single_transmission(params, block)
    except ParseError as e:
        raise XFTPErrorResponse(BLOCK, str(e)) from e
    if t.session_id != params.session_id:
        return ResponseTransmission(t.corr_id, b"", SESSION)
    try:
        resp = parse_response(t.command)
    except CommandError as e:
        return ResponseTransmission(t.corr_id, t.entity_id, e.error)
    err = check_response_credentials(t.entity_id, resp)
    return ResponseTransmission(t.corr_id, t.entity_id, err if err is not None else resp)


# ---------------------------------------------------------------- bare handshake-phase errors (§1.3)


def encode_bare_error(error: XFTPError) -> bytes:
    """A handshake-phase error: the padded error name, not a transmission."""
    return tx.pad_block(error.encode(), XFTP_BLOCK_SIZE)


def detect_bare_error(body: bytes) -> XFTPError | None:
    """xftp-web's rule (unpadded < 20 bytes, ``^[A-Z_]+$``) for a padded bare error string."""
    try:
        text = unpad(body)
    except ParseError:
        return None
    if 0 < len(text) < 20 and all(0x41 <= c <= 0x5A or c == 0x5F for c in text):
        try:
            return XFTPError.parse(text)
        except ParseError:
            return XFTPError("HANDSHAKE")
    return None


# ---------------------------------------------------------------- FGET transport encryption (§1.8)


def encrypt_transport_chunk(dh_secret: bytes, nonce: bytes, chunk: bytes) -> bytes:
    """One-shot transport encryption: ``ciphertext ‖ tag`` under ``cbInit(secret, nonce)``."""
    s = SecretBoxStream(dh_secret, nonce)
    return s.encrypt(chunk) + s.tag()


class TransportDecryptor:
    """Client side of an FGET body: ``size`` encrypted bytes then a 16-byte tag, in any pieces
    (``receiveSbFile``). :meth:`feed` returns plaintext; :meth:`finish` checks the tag (CRYPTO)
    and the exact length (SIZE); excess bytes raise :class:`XFTPErrorResponse` (SIZE) at once."""

    def __init__(self, dh_secret: bytes, nonce: bytes, size: int) -> None:
        self._stream = SecretBoxStream(dh_secret, nonce)
        self._left = size
        self._tag = b""

    def feed(self, data: bytes) -> bytes:
        n = min(len(data), self._left)
        self._left -= n
        extra = data[n:]
        if len(self._tag) + len(extra) > AUTH_TAG_SIZE:
            raise XFTPErrorResponse(SIZE, "body longer than the chunk and tag")
        self._tag += bytes(extra)
        return self._stream.decrypt(data[:n]) if n else b""

    def feed_in_place(self, buf) -> memoryview:  # type: ignore[no-untyped-def]
        """:meth:`feed` of a writable buffer (bytearray or a memoryview of one): the chunk bytes in
        it are decrypted in place and returned as a view of ``buf``; tag bytes are kept aside."""
        view = memoryview(buf).cast("B")
        n = min(len(view), self._left)
        self._left -= n
        extra = view[n:]
        if len(self._tag) + len(extra) > AUTH_TAG_SIZE:
            raise XFTPErrorResponse(SIZE, "body longer than the chunk and tag")
        self._tag += bytes(extra)
        plain = view[:n]
        if n:
            self._stream.decrypt_in_place(plain)
        return plain

    def finish(self) -> None:
        if self._left or len(self._tag) != AUTH_TAG_SIZE:
            raise XFTPErrorResponse(SIZE, "body shorter than the chunk and tag")
        if not hmac.compare_digest(self._tag, self._stream.tag()):
            raise XFTPErrorResponse(CRYPTO, "transport auth tag")


__all__ = [
    "AUTH",
    "BLOCK",
    "BlockingInfo",
    "BlockingReason",
    "ClientNotice",
    "Command",
    "CommandError",
    "ERR",
    "FACK",
    "FADD",
    "FDEL",
    "FGET",
    "FILE",
    "FNEW",
    "FPUT",
    "FileInfo",
    "OK",
    "PING",
    "PONG",
    "RIDS",
    "Request",
    "RequestError",
    "Response",
    "ResponseTransmission",
    "SIDS",
    "SUPPORTED_XFTP_VERSIONS",
    "TransportDecryptor",
    "XFTPError",
    "XFTPErrorResponse",
    "XFTP_ALPN",
    "XFTP_BLOCK_SIZE",
    "authorize",
    "decode_request",
    "decode_response",
    "detect_bare_error",
    "encode_bare_error",
    "encode_command_block",
    "encode_response_block",
    "encrypt_transport_chunk",
    "parse_command",
    "parse_response",
    "verify_auth",
    "xftp_params",
]
