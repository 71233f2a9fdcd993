"""SMP commands and responses: the bytes after ``sb(corrId) ‖ sb(entityId)`` of a transmission.

smp.md §4.3 (credential rules), §4.4 (commands), §4.5 (responses), §4.6 (version-dependent NEW/IDS),
§4.7 (errors), §1.1 (version gates). The transmission framing around these bytes is
:mod:`sansio_smp.transmission`.

* :func:`encode_command` / :func:`parse_command` and :func:`encode_response` / :func:`parse_response`
  take the negotiated SMP version (6–18). Parsers are total: a value, or
  :class:`CommandParseError` / :class:`ResponseParseError` (both :class:`~sansio_smp.errors.ParseError`)
  carrying the reference's error — ``CMD UNKNOWN`` for an unknown tag (including a response tag sent
  as a command, or ``SUB=``), ``CMD SYNTAX`` for a known tag with bad parameters. Parameters must be
  consumed completely.
* Encoders follow the reference's version downgrades: ``SOK`` → ``OK`` below v16, ``DELD`` → ``END``
  below v10, ``ERR BLOCKED`` → ``ERR AUTH`` below v12 and its notice dropped below v18; ``NEW`` and
  ``IDS`` drop fields the version does not carry (§4.6).
* :func:`check_credentials` / :func:`check_response_credentials` implement §4.3.
"""

from __future__ import annotations

import codecs
import decimal
import enum
import json
import re
from typing import Any, Callable, ClassVar, Union

import attrs

from .addresses import ProtocolServer, QueueMode, is_valid_basic_auth
from .crypto import AUTH_KEY_ALGORITHMS, KeyAlgorithm, PublicKey, parse_auth_key, parse_dh_key
from .encoding import Reader, VersionRange, i64, lg, mb, ne, sb, w16
from .errors import LocalProtocolError, ParseError
from .x509 import CertChainPubKey

# ---------------------------------------------------------------- versions and sizes (smp.md §1.1, §5)

MIN_SMP_VERSION = 6
SUB_MODE_SMP_VERSION = 6
AUTH_CMDS_SMP_VERSION = 7
SENDING_PROXY_SMP_VERSION = 8
SND_AUTH_KEY_SMP_VERSION = 9
DELETED_EVENT_SMP_VERSION = 10
ENCRYPTED_BLOCK_SMP_VERSION = 11
BLOCKED_ENTITY_SMP_VERSION = 12
PROXY_SERVER_HANDSHAKE_SMP_VERSION = 14
SHORT_LINKS_SMP_VERSION = 15
SERVICE_CERTS_SMP_VERSION = 16
NEW_NTF_CREDS_SMP_VERSION = 17
CLIENT_NOTICES_SMP_VERSION = 18
CURRENT_SMP_VERSION = 18
PROXIED_SMP_RELAY_VERSION = 17

MAX_MESSAGE_LEN = 16088  # ``MaxMessageLen``: the type-level cap of a stored body
MAX_RCV_MESSAGE_LEN = MAX_MESSAGE_LEN + 16  # 16104: ts(8) + flags + ' ' + body
RCV_MSG_PADDED_LENGTH = MAX_RCV_MESSAGE_LEN + 2  # 16106 (smp.md §5.3)
ENC_RCV_MSG_BODY_LENGTH = RCV_MSG_PADDED_LENGTH + 16  # 16122
E2E_ENC_CONFIRMATION_LENGTH = 15904  # smp.md §5.4
E2E_ENC_MESSAGE_LENGTH = 16000
PADDED_PROXIED_T_LENGTH = 16226  # smp.md §5.6
ENC_PROXIED_T_LENGTH = PADDED_PROXIED_T_LENGTH + 16  # 16242
NMSG_META_PADDED_LENGTH = 128  # smp.md §5.5
ENC_NMSG_META_LENGTH = NMSG_META_PADDED_LENGTH + 16  # 144
NONCE_LENGTH = 24


def max_message_length(version: int) -> int:
    """``maxMessageLength``: 16048 from v11, 16064 from v8, else 16088 (smp.md §1.3)."""
    if version >= ENCRYPTED_BLOCK_SMP_VERSION:
        return 16048
    if version >= SENDING_PROXY_SMP_VERSION:
        return 16064
    return 16088


# ---------------------------------------------------------------- enums


class CommandError(enum.Enum):
    """``CommandError`` (smp.md §4.7); the value is the wire word."""

    UNKNOWN = b"UNKNOWN"
    SYNTAX = b"SYNTAX"
    PROHIBITED = b"PROHIBITED"
    NO_AUTH = b"NO_AUTH"
    HAS_AUTH = b"HAS_AUTH"
    NO_ENTITY = b"NO_ENTITY"


class CommandParseError(ParseError):
    """Command bytes the router cannot accept; ``code`` is ``UNKNOWN`` or ``SYNTAX`` (smp.md §4.4)."""

    def __init__(self, code: CommandError, message: str = "") -> None:
        super().__init__(f"CMD {code.value.decode()}{': ' + message if message else ''}")
        self.code = code

    @property
    def error(self) -> "ErrorType":
        """The ``ERR`` a router sends back (with the request's corrId and entity)."""
        return CmdError(self.code)


class ResponseParseError(CommandParseError):
    """Response bytes a client cannot accept (same ``UNKNOWN``/``SYNTAX`` distinction)."""


class Party(enum.Enum):
    """Which role sends a command; the entity id refers to that party's id (smp.md §4.4)."""

    CREATOR = "Creator"
    RECIPIENT = "Recipient"
    RECIPIENT_SERVICE = "RecipientService"
    SENDER = "Sender"
    IDLE_CLIENT = "IdleClient"
    NOTIFIER = "Notifier"
    NOTIFIER_SERVICE = "NotifierService"
    LINK_CLIENT = "LinkClient"
    PROXIED_CLIENT = "ProxiedClient"
    PROXY_SERVICE = "ProxyService"


class CredentialRule(enum.Enum):
    """The five shapes of ``checkCredentials`` (smp.md §4.3)."""

    AUTH_NO_ENTITY = "auth required, entity must be empty"  # NEW
    ENTITY_OPTIONAL_AUTH = "entity required, auth optional"  # SEND
    ENTITY_NO_AUTH = "entity required, auth forbidden"  # LGET, PFWD
    NO_AUTH_NO_ENTITY = "auth and entity forbidden"  # PING, PRXY, RFWD
    AUTH_AND_ENTITY = "auth and entity required"  # everything else


class SubscriptionMode(enum.Enum):
    SUBSCRIBE = b"S"
    ONLY_CREATE = b"C"


class BlockingReason(enum.Enum):
    SPAM = b"spam"
    CONTENT = b"content"


class TransportErrorCode(enum.Enum):
    """``TransportError`` as it appears on the wire (smp.md §4.7)."""

    BLOCK = b"BLOCK"
    VERSION = b"VERSION"
    LARGE_MSG = b"LARGE_MSG"
    SESSION = b"SESSION"
    NO_AUTH = b"NO_AUTH"
    HANDSHAKE_PARSE = b"HANDSHAKE PARSE"
    HANDSHAKE_IDENTITY = b"HANDSHAKE IDENTITY"
    HANDSHAKE_BAD_AUTH = b"HANDSHAKE BAD_AUTH"
    HANDSHAKE_BAD_SERVICE = b"HANDSHAKE BAD_SERVICE"


class QSubThread(enum.Enum):
    NO_SUB = "noSub"
    SUB_PENDING = "subPending"
    SUB_THREAD = "subThread"
    PROHIBIT_SUB = "prohibitSub"


class MsgType(enum.Enum):
    MESSAGE = "message"
    QUOTA = "quota"


# ---------------------------------------------------------------- field validators


def _is_bytes(max_len: int | None = 255) -> Callable[[Any, Any, Any], None]:
    def check(_inst: Any, attr: Any, value: Any) -> None:
        if not isinstance(value, bytes):
            raise LocalProtocolError(f"{attr.name} must be bytes")
        if max_len is not None and len(value) > max_len:
            raise LocalProtocolError(f"{attr.name} longer than {max_len} bytes")

    return check


def _opt(check: Callable[[Any, Any, Any], None]) -> Callable[[Any, Any, Any], None]:
    def opt(inst: Any, attr: Any, value: Any) -> None:
        if value is not None:
            check(inst, attr, value)

    return opt


def _instance(cls: type | tuple[type, ...]) -> Callable[[Any, Any, Any], None]:
    def check(_inst: Any, attr: Any, value: Any) -> None:
        if not isinstance(value, cls):
            raise LocalProtocolError(f"{attr.name} has the wrong type {type(value).__name__}")

    return check




def _auth_key(_inst: Any, attr: Any, key: Any) -> None:
    """``APublicAuthKey``: Ed25519, Ed448 or X25519 (smp.md §5.2)."""
    if not isinstance(key, PublicKey) or key.alg not in AUTH_KEY_ALGORITHMS:
        raise LocalProtocolError(f"{attr.name} must be an Ed25519/Ed448/X25519 public key")


def _dh_key(_inst: Any, attr: Any, key: Any) -> None:
    if not isinstance(key, PublicKey) or key.alg is not KeyAlgorithm.X25519:
        raise LocalProtocolError(f"{attr.name} must be an X25519 public key")


def _utf8_text(_inst: Any, attr: Any, value: Any) -> None:
    """A Haskell ``Text``: any str that UTF-8 can encode (no lone surrogates)."""
    if not isinstance(value, str):
        raise LocalProtocolError(f"{attr.name} must be a str")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise LocalProtocolError(f"{attr.name} is not encodable as UTF-8") from e


def _int_range(lo: int, hi: int) -> Callable[[Any, Any, Any], None]:
    def check(_inst: Any, attr: Any, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise LocalProtocolError(f"{attr.name} must be an integer in {lo}..{hi}")

    return check


_INT64 = _int_range(-(1 << 63), (1 << 63) - 1)


def _basic_auth(_inst: Any, attr: Any, value: Any) -> None:
    """Like the reference encoder, any ≤255 bytes are *sent*; the parser only accepts
    :func:`~sansio_smp.addresses.is_valid_basic_auth` values (so e.g. a space ⇒ ``CMD SYNTAX``)."""
    if value is None:
        return
    if not isinstance(value, bytes) or len(value) > 255:
        raise LocalProtocolError(f"{attr.name}: basic auth must be bytes of at most 255")


def _latin1_text(max_len: int | None) -> Callable[[Any, Any, Any], None]:
    """A Haskell ``String`` sent via ``B.pack``: one byte per character."""

    def check(_inst: Any, attr: Any, value: Any) -> None:
        if not isinstance(value, str) or any(ord(c) > 255 for c in value):
            raise LocalProtocolError(f"{attr.name} must be a str of characters < 256")
        if max_len is not None and len(value) > max_len:
            raise LocalProtocolError(f"{attr.name} longer than {max_len}")

    return check


def _word(r: Reader) -> bytes:
    """``A.takeTill (== ' ')``."""
    return r.word()


# ---------------------------------------------------------------- JSON (aeson-compatible subset)


def _json_str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _json_reject_constant(name: str) -> Any:
    raise ValueError(f"non-JSON constant {name}")


def _json_loads(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
        return json.loads(text, parse_float=decimal.Decimal, parse_constant=_json_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ParseError(f"bad JSON: {e}") from e


def _json_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ParseError(f"{what}: expected a number")
    if isinstance(value, int):
        n = value
    elif isinstance(value, decimal.Decimal):
        if not value.is_finite() or value != value.to_integral_value():
            raise ParseError(f"{what}: not an integer")
        n = int(value)
    else:
        raise ParseError(f"{what}: expected a number")
    if not -(1 << 63) <= n < (1 << 63):
        raise ParseError(f"{what}: out of range")
    return n


def _json_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ParseError(f"{what}: expected a boolean")
    return value


def _json_opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError(f"{key}: expected a string")
    return value


def _json_obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ParseError(f"{what}: expected an object")
    return value


# aeson's UTCTime parser: date, 'T' or ' ', hh:mm[:ss[.s+]], optional zone (Z, ±hh[:mm], ±hhmm)
_UTC_TIME = re.compile(
    r"-?\d{4,}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?\Z", re.ASCII
)


@attrs.frozen
class ClientNotice:
    """``ClientNotice`` JSON ``{"ttl": seconds}`` (omitted = indefinite) inside ``BLOCKED`` (v18)."""

    ttl: int | None = attrs.field(default=None, validator=_opt(_INT64))

    def to_json(self) -> bytes:
        return b"{}" if self.ttl is None else b'{"ttl":%d}' % self.ttl

    @staticmethod
    def from_json(data: bytes) -> "ClientNotice":
        obj = _json_obj(_json_loads(data), "ClientNotice")
        ttl = obj.get("ttl")
        return ClientNotice(None if ttl is None else _json_int(ttl, "ttl"))


@attrs.frozen
class QSub:
    thread: QSubThread = attrs.field(validator=_instance(QSubThread))
    delivered: str | None = attrs.field(default=None, validator=_opt(_utf8_text))


@attrs.frozen
class MsgInfo:
    """``MsgInfo``: ``msgId`` (standard base64 text), ``msgTs`` (ISO 8601 text), ``msgType``."""

    msg_id: str = attrs.field(validator=_utf8_text)
    msg_ts: str = attrs.field(validator=_utf8_text)
    msg_type: MsgType = attrs.field(validator=_instance(MsgType))

    def __attrs_post_init__(self) -> None:
        if not _UTC_TIME.match(self.msg_ts):
            raise LocalProtocolError(f"msg_ts is not an ISO 8601 UTC time: {self.msg_ts!r}")


@attrs.frozen
class QueueInfo:
    """``QueueInfo`` JSON carried by ``INFO`` (smp.md §4.5); Nothing fields are omitted."""

    snd: bool = attrs.field(validator=_instance(bool))
    ntf: bool = attrs.field(validator=_instance(bool))
    size: int = attrs.field(validator=_INT64)
    sub: QSub | None = attrs.field(default=None, validator=_opt(_instance(QSub)))
    msg: MsgInfo | None = attrs.field(default=None, validator=_opt(_instance(MsgInfo)))

    def to_json(self) -> bytes:
        parts = [f'"qiSnd":{"true" if self.snd else "false"}', f'"qiNtf":{"true" if self.ntf else "false"}']
        if self.sub is not None:
            sub = f'"qSubThread":{_json_str(self.sub.thread.value)}'
            if self.sub.delivered is not None:
                sub += f',"qDelivered":{_json_str(self.sub.delivered)}'
            parts.append(f'"qiSub":{{{sub}}}')
        parts.append(f'"qiSize":{self.size}')
        if self.msg is not None:
            m = self.msg
            parts.append(
                f'"qiMsg":{{"msgId":{_json_str(m.msg_id)},"msgTs":{_json_str(m.msg_ts)},'
                f'"msgType":{_json_str(m.msg_type.value)}}}'
            )
        return ("{" + ",".join(parts) + "}").encode("utf-8")

    @staticmethod
    def from_json(data: bytes) -> "QueueInfo":
        obj = _json_obj(_json_loads(data), "QueueInfo")
        for key in ("qiSnd", "qiNtf", "qiSize"):
            if key not in obj:
                raise ParseError(f"QueueInfo: missing {key}")
        sub = None
        if obj.get("qiSub") is not None:
            s = _json_obj(obj["qiSub"], "qiSub")
            thread = s.get("qSubThread")
            try:
                thread_v = QSubThread(thread)
            except ValueError as e:
                raise ParseError("bad qSubThread") from e
            sub = QSub(thread_v, _json_opt_str(s, "qDelivered"))
        msg = None
        if obj.get("qiMsg") is not None:
            m = _json_obj(obj["qiMsg"], "qiMsg")
            msg_id, msg_ts = m.get("msgId"), m.get("msgTs")
            if not isinstance(msg_id, str) or not isinstance(msg_ts, str) or not _UTC_TIME.match(msg_ts):
                raise ParseError("bad qiMsg")
            try:
                msg_type = MsgType(m.get("msgType"))
            except ValueError as e:
                raise ParseError("bad msgType") from e
            msg = MsgInfo(msg_id, msg_ts, msg_type)
        return QueueInfo(
            _json_bool(obj["qiSnd"], "qiSnd"),
            _json_bool(obj["qiNtf"], "qiNtf"),
            _json_int(obj["qiSize"], "qiSize"),
            sub,
            msg,
        )


# ---------------------------------------------------------------- errors (smp.md §4.7)


@attrs.frozen
class NetworkError:
    """``NetworkError`` detail of ``BROKER NETWORK`` (never sent by 6.5.5 routers; parsed if present)."""

    KINDS_WITH_TEXT: ClassVar[frozenset[bytes]] = frozenset({b"CONNECT", b"TLS", b"SUBSCRIBE"})
    KINDS: ClassVar[frozenset[bytes]] = KINDS_WITH_TEXT | {b"UNKNOWNCA", b"FAILED", b"TIMEOUT"}

    kind: bytes
    text: str | None = attrs.field(default=None, validator=_opt(_latin1_text(255)))

    def __attrs_post_init__(self) -> None:
        if self.kind not in self.KINDS or (self.text is not None) != (self.kind in self.KINDS_WITH_TEXT):
            raise LocalProtocolError(f"bad NetworkError {self.kind!r}")

    def encode(self) -> bytes:
        if self.text is None:
            return self.kind
        return self.kind + b" " + sb(self.text.encode("latin-1"))


@attrs.frozen
class BrokerErrorType:
    """``BrokerErrorType`` (inside ``PROXY BROKER``).

    ``kind`` is one of ``RESPONSE``/``UNEXPECTED`` (with ``text``, length-prefixed on the wire),
    ``TRANSPORT`` (with ``transport``), ``NETWORK`` (optional ``network`` detail, never encoded),
    ``TIMEOUT``, ``HOST``, ``NO_SERVICE``.
    """

    kind: bytes
    text: str | None = attrs.field(default=None, validator=_opt(_latin1_text(255)))
    transport: TransportErrorCode | None = attrs.field(default=None, validator=_opt(_instance(TransportErrorCode)))
    network: NetworkError | None = attrs.field(default=None, validator=_opt(_instance(NetworkError)))

    def __attrs_post_init__(self) -> None:
        k = self.kind
        ok = (
            (k in (b"RESPONSE", b"UNEXPECTED") and self.text is not None and self.transport is None and self.network is None)
            or (k == b"TRANSPORT" and self.transport is not None and self.text is None and self.network is None)
            or (k == b"NETWORK" and self.text is None and self.transport is None)
            or (k in (b"TIMEOUT", b"HOST", b"NO_SERVICE") and self.text is None and self.transport is None and self.network is None)
        )
        if not ok:
            raise LocalProtocolError(f"bad BrokerErrorType {k!r}")

    def encode(self) -> bytes:
        if self.text is not None:
            return self.kind + b" " + sb(self.text.encode("latin-1"))
        if self.transport is not None:
            return b"TRANSPORT " + self.transport.value
        return self.kind  # NETWORK's detail is not sent (reference TODO)


def broker_response(text: str) -> BrokerErrorType:
    return BrokerErrorType(b"RESPONSE", text)


def broker_unexpected(text: str) -> BrokerErrorType:
    return BrokerErrorType(b"UNEXPECTED", text)


def broker_transport(code: TransportErrorCode) -> BrokerErrorType:
    return BrokerErrorType(b"TRANSPORT", transport=code)


BROKER_NETWORK = BrokerErrorType(b"NETWORK")
BROKER_TIMEOUT = BrokerErrorType(b"TIMEOUT")
BROKER_HOST = BrokerErrorType(b"HOST")
BROKER_NO_SERVICE = BrokerErrorType(b"NO_SERVICE")


@attrs.frozen
class ProxyError:
    """``ProxyError``: ``PROTOCOL <ErrorType>``, ``BROKER <BrokerErrorType>``, ``BASIC_AUTH``, ``NO_SESSION``."""

    kind: bytes
    protocol: "ErrorType | None" = None
    broker: BrokerErrorType | None = attrs.field(default=None, validator=_opt(_instance(BrokerErrorType)))

    def __attrs_post_init__(self) -> None:
        k = self.kind
        ok = (
            (k == b"PROTOCOL" and isinstance(self.protocol, ErrorType) and self.broker is None)
            or (k == b"BROKER" and self.broker is not None and self.protocol is None)
            or (k in (b"BASIC_AUTH", b"NO_SESSION") and self.protocol is None and self.broker is None)
        )
        if not ok:
            raise LocalProtocolError(f"bad ProxyError {k!r}")

    def encode(self) -> bytes:
        if self.protocol is not None:
            return b"PROTOCOL " + self.protocol.encode()
        if self.broker is not None:
            return b"BROKER " + self.broker.encode()
        return self.kind


def proxy_protocol(error: "ErrorType") -> ProxyError:
    return ProxyError(b"PROTOCOL", protocol=error)


def proxy_broker(error: BrokerErrorType) -> ProxyError:
    return ProxyError(b"BROKER", broker=error)


PROXY_BASIC_AUTH = ProxyError(b"BASIC_AUTH")
PROXY_NO_SESSION = ProxyError(b"NO_SESSION")


@attrs.frozen
class BlockingInfo:
    """``BlockingInfo``: ``reason=spam|content[,notice=<ClientNotice JSON>]``."""

    reason: BlockingReason = attrs.field(validator=_instance(BlockingReason))
    notice: ClientNotice | None = attrs.field(default=None, validator=_opt(_instance(ClientNotice)))

    def encode(self) -> bytes:
        out = b"reason=" + self.reason.value
        if self.notice is not None:
            out += b",notice=" + self.notice.to_json()
        return out

    @staticmethod
    def parse(r: Reader) -> "BlockingInfo":
        """``strP``: ``reason=…``, then ``,notice=<JSON>`` (the rest of the input) if it parses."""
        return _blocking_info_p(r)

    @staticmethod
    def decode(data: bytes) -> "BlockingInfo":
        """A whole ``BlockingInfo`` text (SMP and XFTP ``BLOCKED`` errors, store logs)."""
        r = Reader(data)
        info = _blocking_info_p(r)
        r.end()
        return info


class ErrorType:
    """Base of the ``ErrorType`` variants below; ``encode()`` gives the wire text (smp.md §4.7)."""

    __slots__ = ()

    def encode(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError


SIMPLE_ERRORS = (
    b"BLOCK", b"SESSION", b"AUTH", b"SERVICE", b"CRYPTO", b"QUOTA",
    b"NO_MSG", b"LARGE_MSG", b"EXPIRED", b"INTERNAL", b"DUPLICATE_",
)  # fmt: skip


@attrs.frozen
class SimpleError(ErrorType):
    """An ``ErrorType`` without parameters: ``AUTH``, ``QUOTA``, ``NO_MSG``, …"""

    name: bytes

    def __attrs_post_init__(self) -> None:
        if self.name not in SIMPLE_ERRORS:
            raise LocalProtocolError(f"unknown simple error {self.name!r}")

    def encode(self) -> bytes:
        return self.name


@attrs.frozen
class CmdError(ErrorType):
    """``CMD <CommandError>``."""

    code: CommandError = attrs.field(validator=_instance(CommandError))

    def encode(self) -> bytes:
        return b"CMD " + self.code.value


@attrs.frozen
class ProxyErrorType(ErrorType):
    """``PROXY <ProxyError>``."""

    error: ProxyError = attrs.field(validator=_instance(ProxyError))

    def encode(self) -> bytes:
        prefix = b""
        error: ErrorType = self
        while isinstance(error, ProxyErrorType) and error.error.protocol is not None:
            prefix += _PROXY_PROTOCOL
            error = error.error.protocol
        if isinstance(error, ProxyErrorType):
            return prefix + b"PROXY " + error.error.encode()
        return prefix + error.encode()


@attrs.frozen
class BlockedError(ErrorType):
    """``BLOCKED <BlockingInfo>`` (v ≥ 12; the notice v ≥ 18)."""

    info: BlockingInfo = attrs.field(validator=_instance(BlockingInfo))

    def encode(self) -> bytes:
        return b"BLOCKED " + self.info.encode()


@attrs.frozen
class StoreError(ErrorType):
    """``STORE <utf-8 text>``."""

    text: str = attrs.field(validator=_utf8_text)

    def encode(self) -> bytes:
        return b"STORE " + self.text.encode("utf-8")


BLOCK = SimpleError(b"BLOCK")
SESSION = SimpleError(b"SESSION")
AUTH = SimpleError(b"AUTH")
SERVICE = SimpleError(b"SERVICE")
CRYPTO = SimpleError(b"CRYPTO")
QUOTA = SimpleError(b"QUOTA")
NO_MSG = SimpleError(b"NO_MSG")
LARGE_MSG = SimpleError(b"LARGE_MSG")
EXPIRED = SimpleError(b"EXPIRED")
INTERNAL = SimpleError(b"INTERNAL")
DUPLICATE = SimpleError(b"DUPLICATE_")


def _safe_utf8_handler(e: UnicodeError) -> tuple[str, int]:
    assert isinstance(e, UnicodeDecodeError)
    return "?" * (e.end - e.start), e.end


codecs.register_error("sansio_smp_question_mark", _safe_utf8_handler)


def safe_decode_utf8(data: bytes) -> str:
    """``safeDecodeUtf8``: invalid UTF-8 bytes become ``'?'``."""
    return data.decode("utf-8", errors="sansio_smp_question_mark")


def _haskell_read_enum(word: bytes, names: tuple[str, ...]) -> str:
    """``parseRead1`` of a nullary-constructor enum: optional parentheses and whitespace allowed."""
    text = word.decode("latin-1")
    ws = "\t\x0b\x0c\r\xa0 \n"
    text = text.strip(ws)
    while text.startswith("(") and text.endswith(")") and len(text) >= 2:
        text = text[1:-1].strip(ws)
    if text not in names:
        raise ParseError("bad handshake error")
    return text


def _transport_error_p(r: Reader) -> TransportErrorCode:
    word = _word(r)
    if word == b"HANDSHAKE":
        r.space()
        i = r.pos
        while i < len(r.data) and r.data[i] not in (0x20, 0x0A):
            i += 1
        name = _haskell_read_enum(r.data[r.pos : i], ("PARSE", "IDENTITY", "BAD_AUTH", "BAD_SERVICE"))
        r.pos = i
        return TransportErrorCode(b"HANDSHAKE " + name.encode())
    if word in (b"BLOCK", b"VERSION", b"LARGE_MSG", b"SESSION", b"NO_AUTH"):
        return TransportErrorCode(word)
    raise ParseError("bad TransportError")


def _string_p(r: Reader) -> str:
    """``_smpP :: Parser String``: space, then ``sb`` bytes as Latin-1 characters."""
    r.space()
    return r.sb().decode("latin-1")


def _network_error_p(r: Reader) -> NetworkError:
    word = _word(r)
    if word in NetworkError.KINDS_WITH_TEXT:
        return NetworkError(word, _string_p(r))
    if word in NetworkError.KINDS:
        return NetworkError(word)
    raise ParseError("bad NetworkError")


def _broker_error_p(r: Reader) -> BrokerErrorType:
    word = _word(r)
    if word in (b"RESPONSE", b"UNEXPECTED"):
        return BrokerErrorType(word, _string_p(r))
    if word == b"TRANSPORT":
        r.space()
        return broker_transport(_transport_error_p(r))
    if word == b"NETWORK":
        save = r.pos
        try:
            r.space()
            return BrokerErrorType(b"NETWORK", network=_network_error_p(r))
        except ParseError:
            r.pos = save
            return BROKER_NETWORK
    if word in (b"TIMEOUT", b"HOST", b"NO_SERVICE"):
        return BrokerErrorType(word)
    raise ParseError("bad BrokerErrorType")


def _proxy_error_p(r: Reader) -> ProxyError:
    word = _word(r)
    if word == b"PROTOCOL":
        r.space()
        return proxy_protocol(parse_error_type(r))
    if word == b"BROKER":
        r.space()
        return proxy_broker(_broker_error_p(r))
    if word == b"BASIC_AUTH":
        return PROXY_BASIC_AUTH
    if word == b"NO_SESSION":
        return PROXY_NO_SESSION
    raise ParseError("bad ProxyError")


def _blocking_info_p(r: Reader) -> BlockingInfo:
    r.expect(b"reason=")
    if r.data.startswith(b"spam", r.pos):
        r.pos += 4
        reason = BlockingReason.SPAM
    elif r.data.startswith(b"content", r.pos):
        r.pos += 7
        reason = BlockingReason.CONTENT
    else:
        raise ParseError("bad BlockingReason")
    notice = None
    if r.data.startswith(b",notice=", r.pos):
        save = r.pos
        r.pos += 8
        try:
            notice = ClientNotice.from_json(r.tail())
        except ParseError:
            r.pos = save
    return BlockingInfo(reason, notice)


_PROXY_PROTOCOL = b"PROXY PROTOCOL "


def parse_error_type(r: Reader) -> ErrorType:
    """``smpP :: Parser ErrorType`` (partial: the caller checks full consumption).

    ``PROXY PROTOCOL`` nesting is unwound iteratively, so a block full of it cannot exhaust the stack.
    """
    depth = 0
    while r.data.startswith(_PROXY_PROTOCOL, r.pos):
        r.pos += len(_PROXY_PROTOCOL)
        depth += 1
    error = _error_type_p(r)
    for _ in range(depth):
        error = ProxyErrorType(proxy_protocol(error))
    return error


def _error_type_p(r: Reader) -> ErrorType:
    word = _word(r)
    if word in SIMPLE_ERRORS:
        return SimpleError(word)
    if word == b"CMD":
        r.space()
        code = _word(r)
        if code == b"NO_QUEUE":
            return CmdError(CommandError.NO_ENTITY)
        try:
            return CmdError(CommandError(code))
        except ValueError:
            raise ParseError("bad CommandError") from None
    if word == b"PROXY":
        r.space()
        return ProxyErrorType(_proxy_error_p(r))
    if word == b"BLOCKED":
        r.space()
        return BlockedError(_blocking_info_p(r))
    if word == b"STORE":
        r.space()
        return StoreError(safe_decode_utf8(r.tail()))
    raise ParseError("bad ErrorType")


def decode_error_type(data: bytes) -> ErrorType:
    """A whole ``ErrorType`` text → value, or :class:`ParseError`."""
    r = Reader(data)
    try:
        e = parse_error_type(r)
    except LocalProtocolError as exc:  # defensive: constructors reject what the parser accepted
        raise ParseError(str(exc)) from exc
    r.end()
    return e


def error_for_version(error: ErrorType, version: int) -> ErrorType:
    """The error a router of ``version`` actually sends: ``BLOCKED`` → ``AUTH`` (v<12), notice dropped (v<18)."""
    if isinstance(error, BlockedError):
        if version < BLOCKED_ENTITY_SMP_VERSION:
            return AUTH
        if version < CLIENT_NOTICES_SMP_VERSION and error.info.notice is not None:
            return BlockedError(BlockingInfo(error.info.reason))
    return error


# ---------------------------------------------------------------- NEW / IDS parameter types (smp.md §4.6)


@attrs.frozen
class QueueLinkData:
    """``QueueLinkData``: encrypted fixed and user link data, each ``lg(...)`` on the wire."""

    fixed_data: bytes = attrs.field(validator=_is_bytes(0xFFFF))
    user_data: bytes = attrs.field(validator=_is_bytes(0xFFFF))

    def encode(self) -> bytes:
        return lg(self.fixed_data) + lg(self.user_data)

    @staticmethod
    def parse(r: Reader) -> "QueueLinkData":
        return QueueLinkData(r.lg(), r.lg())


@attrs.frozen
class QueueReqData:
    """``QueueReqData``: ``'M' mb(sb senderId, linkData)`` or ``'C' mb(sb linkId, sb senderId, linkData)``.

    Without ``sender_id``/``link_data`` (and ``link_id``) it is ``QRMessaging Nothing``/``QRContact Nothing``.
    """

    mode: QueueMode = attrs.field(validator=_instance(QueueMode))
    sender_id: bytes | None = attrs.field(default=None, validator=_opt(_is_bytes()))
    link_data: QueueLinkData | None = attrs.field(default=None, validator=_opt(_instance(QueueLinkData)))
    link_id: bytes | None = attrs.field(default=None, validator=_opt(_is_bytes()))

    def __attrs_post_init__(self) -> None:
        if (self.sender_id is None) != (self.link_data is None):
            raise LocalProtocolError("sender_id and link_data go together")
        if self.mode is QueueMode.MESSAGING and self.link_id is not None:
            raise LocalProtocolError("messaging queues get their link id from the router")
        if self.mode is QueueMode.CONTACT and (self.link_id is None) != (self.sender_id is None):
            raise LocalProtocolError("contact link data needs link_id, sender_id and link_data")

    def encode(self) -> bytes:
        if self.sender_id is None or self.link_data is None:
            return self.mode.value + b"0"
        link = sb(self.sender_id) + self.link_data.encode()
        if self.mode is QueueMode.CONTACT:
            link = sb(self.link_id or b"") + link
        return self.mode.value + b"1" + link

    @staticmethod
    def parse(r: Reader) -> "QueueReqData":
        c = r.byte()
        if c == 0x4D:  # 'M'
            link = r.maybe(lambda rr: (rr.sb(), QueueLinkData.parse(rr)))
            if link is None:
                return QueueReqData(QueueMode.MESSAGING)
            return QueueReqData(QueueMode.MESSAGING, link[0], link[1])
        if c == 0x43:  # 'C'
            clink = r.maybe(lambda rr: (rr.sb(), rr.sb(), QueueLinkData.parse(rr)))
            if clink is None:
                return QueueReqData(QueueMode.CONTACT)
            return QueueReqData(QueueMode.CONTACT, clink[1], clink[2], clink[0])
        raise ParseError("bad QueueReqData")


@attrs.frozen
class NewNtfCreds:
    """``NewNtfCreds``: notifier auth key and the recipient's notification DH key (NEW, v ≥ 17)."""

    auth_key: PublicKey = attrs.field(validator=_auth_key)
    dh_key: PublicKey = attrs.field(validator=_dh_key)

    def encode(self) -> bytes:
        return self.auth_key.encode() + self.dh_key.encode()

    @staticmethod
    def parse(r: Reader) -> "NewNtfCreds":
        return NewNtfCreds(parse_auth_key(r), parse_dh_key(r))


@attrs.frozen
class ServerNtfCreds:
    """``ServerNtfCreds``: notifier id and the router's notification DH key (IDS, v ≥ 17)."""

    notifier_id: bytes = attrs.field(validator=_is_bytes())
    dh_key: PublicKey = attrs.field(validator=_dh_key)

    def encode(self) -> bytes:
        return sb(self.notifier_id) + self.dh_key.encode()

    @staticmethod
    def parse(r: Reader) -> "ServerNtfCreds":
        return ServerNtfCreds(r.sb(), parse_dh_key(r))


# ---------------------------------------------------------------- commands (smp.md §4.4)


class Command:
    """Base of client → router commands. ``TAG``, ``PARTY``, ``CREDENTIALS`` are class data."""

    __slots__ = ()
    TAG: ClassVar[bytes]
    PARTY: ClassVar[Party]
    CREDENTIALS: ClassVar[CredentialRule] = CredentialRule.AUTH_AND_ENTITY
    SINCE: ClassVar[int] = MIN_SMP_VERSION  # the router version that introduced it (informative)

    def _params(self, version: int) -> bytes:
        return b""


@attrs.frozen
class New(Command):
    """``NEW``: create a queue (Creator, empty entity, must be authorized). Fields vary by version (§4.6)."""

    TAG = b"NEW"
    PARTY = Party.CREATOR
    CREDENTIALS = CredentialRule.AUTH_NO_ENTITY

    rcv_auth_key: PublicKey = attrs.field(validator=_auth_key)
    rcv_dh_key: PublicKey = attrs.field(validator=_dh_key)
    basic_auth: bytes | None = attrs.field(default=None, validator=_basic_auth)
    sub_mode: SubscriptionMode = attrs.field(default=SubscriptionMode.SUBSCRIBE, validator=_instance(SubscriptionMode))
    queue_req_data: QueueReqData | None = attrs.field(default=None, validator=_opt(_instance(QueueReqData)))
    ntf_creds: NewNtfCreds | None = attrs.field(default=None, validator=_opt(_instance(NewNtfCreds)))

    @property
    def sender_can_secure(self) -> bool:
        return self.queue_req_data is not None and self.queue_req_data.mode is QueueMode.MESSAGING

    def _params(self, version: int) -> bytes:
        out = b" " + self.rcv_auth_key.encode() + self.rcv_dh_key.encode()
        auth = None if self.basic_auth is None else sb(self.basic_auth)
        if version >= SND_AUTH_KEY_SMP_VERSION:
            out += mb(auth) + self.sub_mode.value
            if version >= SHORT_LINKS_SMP_VERSION:
                out += mb(None if self.queue_req_data is None else self.queue_req_data.encode())
                if version >= NEW_NTF_CREDS_SMP_VERSION:
                    out += mb(None if self.ntf_creds is None else self.ntf_creds.encode())
            else:
                out += b"T" if self.sender_can_secure else b"F"
            return out
        return out + (b"" if auth is None else b"A" + auth) + self.sub_mode.value

    @staticmethod
    def _parse(r: Reader, version: int) -> "New":
        r.space()
        rcv_auth_key = parse_auth_key(r)
        rcv_dh_key = parse_dh_key(r)
        req: QueueReqData | None = None
        ntf: NewNtfCreds | None = None
        if version >= SND_AUTH_KEY_SMP_VERSION:
            auth = r.maybe(_basic_auth_p)
            sub_mode = _sub_mode_p(r)
            if version >= SHORT_LINKS_SMP_VERSION:
                req = r.maybe(QueueReqData.parse)
                if version >= NEW_NTF_CREDS_SMP_VERSION:
                    ntf = r.maybe(NewNtfCreds.parse)
            else:
                req = QueueReqData(QueueMode.MESSAGING if r.boolean() else QueueMode.CONTACT)
        else:
            auth = None
            if r.peek() == 0x41:  # optional ('A' *> sb basicAuth)
                save = r.pos
                r.pos += 1
                try:
                    auth = _basic_auth_p(r)
                except ParseError:
                    r.pos = save
            sub_mode = _sub_mode_p(r)
        return New(rcv_auth_key, rcv_dh_key, auth, sub_mode, req, ntf)


def _basic_auth_p(r: Reader) -> bytes:
    value = r.sb()
    if not is_valid_basic_auth(value):
        raise ParseError("invalid character in BasicAuth")
    return value


def _sub_mode_p(r: Reader) -> SubscriptionMode:
    c = r.byte()
    if c == 0x53:
        return SubscriptionMode.SUBSCRIBE
    if c == 0x43:
        return SubscriptionMode.ONLY_CREATE
    raise ParseError("bad SubscriptionMode")


@attrs.frozen
class Sub(Command):
    """``SUB``: subscribe to the queue (→ ``SOK``, then ``MSG``)."""

    TAG = b"SUB"
    PARTY = Party.RECIPIENT


@attrs.frozen
class Subs(Command):
    """``SUBS``: subscribe all queues of the recipient service (entity = service id)."""

    TAG = b"SUBS"
    PARTY = Party.RECIPIENT_SERVICE
    SINCE = SERVICE_CERTS_SMP_VERSION


@attrs.frozen
class Key(Command):
    """``KEY``: secure the queue with the sender's key."""

    TAG = b"KEY"
    PARTY = Party.RECIPIENT

    sender_key: PublicKey = attrs.field(validator=_auth_key)

    def _params(self, version: int) -> bytes:
        return b" " + self.sender_key.encode()


def _check_rkeys(_inst: Any, _attr: Any, keys: Any) -> None:
    if not isinstance(keys, tuple) or not 1 <= len(keys) <= 255:
        raise LocalProtocolError("RKEY needs a tuple of 1..255 keys")
    for k in keys:
        _auth_key(None, _attr, k)


@attrs.frozen
class RKey(Command):
    """``RKEY``: replace the recipient key list (contact queues)."""

    TAG = b"RKEY"
    PARTY = Party.RECIPIENT

    keys: tuple[PublicKey, ...] = attrs.field(validator=_check_rkeys)

    def _params(self, version: int) -> bytes:
        return b" " + ne(k.encode() for k in self.keys)


@attrs.frozen
class LSet(Command):
    """``LSET``: set the queue's short-link id and data."""

    TAG = b"LSET"
    PARTY = Party.RECIPIENT
    SINCE = SHORT_LINKS_SMP_VERSION

    link_id: bytes = attrs.field(validator=_is_bytes())
    link_data: QueueLinkData = attrs.field(validator=_instance(QueueLinkData))

    def _params(self, version: int) -> bytes:
        return b" " + sb(self.link_id) + self.link_data.encode()


@attrs.frozen
class LDel(Command):
    TAG = b"LDEL"
    PARTY = Party.RECIPIENT
    SINCE = SHORT_LINKS_SMP_VERSION


@attrs.frozen
class NKey(Command):
    """``NKEY``: create notifier credentials (→ ``NID``)."""

    TAG = b"NKEY"
    PARTY = Party.RECIPIENT

    notifier_key: PublicKey = attrs.field(validator=_auth_key)
    rcv_ntf_dh_key: PublicKey = attrs.field(validator=_dh_key)

    def _params(self, version: int) -> bytes:
        return b" " + self.notifier_key.encode() + self.rcv_ntf_dh_key.encode()


@attrs.frozen
class NDel(Command):
    TAG = b"NDEL"
    PARTY = Party.RECIPIENT


@attrs.frozen
class Get(Command):
    TAG = b"GET"
    PARTY = Party.RECIPIENT


@attrs.frozen
class Ack(Command):
    """``ACK``: acknowledge ``msg_id`` (empty matches any delivered message)."""

    TAG = b"ACK"
    PARTY = Party.RECIPIENT

    msg_id: bytes = attrs.field(validator=_is_bytes())

    def _params(self, version: int) -> bytes:
        return b" " + sb(self.msg_id)


@attrs.frozen
class Off(Command):
    TAG = b"OFF"
    PARTY = Party.RECIPIENT


@attrs.frozen
class Del(Command):
    TAG = b"DEL"
    PARTY = Party.RECIPIENT


@attrs.frozen
class Que(Command):
    TAG = b"QUE"
    PARTY = Party.RECIPIENT


@attrs.frozen
class SKey(Command):
    """``SKEY``: the sender secures a messaging queue with its key."""

    TAG = b"SKEY"
    PARTY = Party.SENDER
    SINCE = SND_AUTH_KEY_SMP_VERSION

    sender_key: PublicKey = attrs.field(validator=_auth_key)

    def _params(self, version: int) -> bytes:
        return b" " + self.sender_key.encode()


@attrs.frozen
class Send(Command):
    """``SEND``: ``flags ' ' body``; flags = ``bool notification`` (the parser skips further flag bytes)."""

    TAG = b"SEND"
    PARTY = Party.SENDER
    CREDENTIALS = CredentialRule.ENTITY_OPTIONAL_AUTH

    body: bytes = attrs.field(validator=_is_bytes(None))
    notification: bool = attrs.field(default=False, validator=_instance(bool))

    def _params(self, version: int) -> bytes:
        return b" " + (b"T" if self.notification else b"F") + b" " + self.body

    @staticmethod
    def _parse(r: Reader, version: int) -> "Send":
        r.space()
        notification = r.boolean()
        _word(r)  # reserved flag bytes up to the space are skipped (MsgFlags smpP)
        r.space()
        return Send(r.tail(), notification)


@attrs.frozen
class Ping(Command):
    TAG = b"PING"
    PARTY = Party.IDLE_CLIENT
    CREDENTIALS = CredentialRule.NO_AUTH_NO_ENTITY


@attrs.frozen
class LKey(Command):
    """``LKEY``: secure an invitation queue via its link id and get its link data (→ ``LNK``)."""

    TAG = b"LKEY"
    PARTY = Party.LINK_CLIENT
    SINCE = SHORT_LINKS_SMP_VERSION

    sender_key: PublicKey = attrs.field(validator=_auth_key)

    def _params(self, version: int) -> bytes:
        return b" " + self.sender_key.encode()


@attrs.frozen
class LGet(Command):
    """``LGET``: get a contact queue's link data, unauthorized (→ ``LNK``)."""

    TAG = b"LGET"
    PARTY = Party.LINK_CLIENT
    CREDENTIALS = CredentialRule.ENTITY_NO_AUTH
    SINCE = SHORT_LINKS_SMP_VERSION


@attrs.frozen
class NSub(Command):
    TAG = b"NSUB"
    PARTY = Party.NOTIFIER


@attrs.frozen
class NSubs(Command):
    TAG = b"NSUBS"
    PARTY = Party.NOTIFIER_SERVICE
    SINCE = SERVICE_CERTS_SMP_VERSION


@attrs.frozen
class Prxy(Command):
    """``PRXY``: ask a proxy for a session with ``server`` (→ ``PKEY``), smp.md §5.6."""

    TAG = b"PRXY"
    PARTY = Party.PROXIED_CLIENT
    CREDENTIALS = CredentialRule.NO_AUTH_NO_ENTITY
    SINCE = SENDING_PROXY_SMP_VERSION

    server: ProtocolServer = attrs.field(validator=_instance(ProtocolServer))
    basic_auth: bytes | None = attrs.field(default=None, validator=_basic_auth)

    def _params(self, version: int) -> bytes:
        return b" " + self.server.encode() + mb(None if self.basic_auth is None else sb(self.basic_auth))


@attrs.frozen
class PFwd(Command):
    """``PFWD``: forward an encrypted transmission through the proxy session (entity = relay session id)."""

    TAG = b"PFWD"
    PARTY = Party.PROXIED_CLIENT
    CREDENTIALS = CredentialRule.ENTITY_NO_AUTH
    SINCE = SENDING_PROXY_SMP_VERSION

    relay_version: int = attrs.field(validator=_int_range(0, 0xFFFF))
    cmd_key: PublicKey = attrs.field(validator=_dh_key)
    enc_transmission: bytes = attrs.field(validator=_is_bytes(None))

    def _params(self, version: int) -> bytes:
        return b" " + w16(self.relay_version) + self.cmd_key.encode() + self.enc_transmission


@attrs.frozen
class RFwd(Command):
    """``RFWD``: proxy → relay forwarded transmission."""

    TAG = b"RFWD"
    PARTY = Party.PROXY_SERVICE
    CREDENTIALS = CredentialRule.NO_AUTH_NO_ENTITY
    SINCE = SENDING_PROXY_SMP_VERSION

    enc_fwd_transmission: bytes = attrs.field(validator=_is_bytes(None))

    def _params(self, version: int) -> bytes:
        return b" " + self.enc_fwd_transmission


def _key_cmd(cls: type) -> Callable[[Reader, int], Command]:
    def parse(r: Reader, version: int) -> Command:
        r.space()
        return cls(parse_auth_key(r))

    return parse


def _no_params(cls: type) -> Callable[[Reader, int], Any]:
    return lambda r, version: cls()


def _parse_rkey(r: Reader, version: int) -> RKey:
    r.space()
    return RKey(tuple(r.ne(parse_auth_key)))


def _parse_lset(r: Reader, version: int) -> LSet:
    r.space()
    return LSet(r.sb(), QueueLinkData.parse(r))


def _parse_nkey(r: Reader, version: int) -> NKey:
    r.space()
    return NKey(parse_auth_key(r), parse_dh_key(r))


def _parse_ack(r: Reader, version: int) -> Ack:
    r.space()
    return Ack(r.sb())


def _parse_prxy(r: Reader, version: int) -> Prxy:
    r.space()
    server = ProtocolServer.parse(r)
    return Prxy(server, r.maybe(_basic_auth_p))


def _parse_pfwd(r: Reader, version: int) -> PFwd:
    r.space()
    v = r.w16()
    key = parse_dh_key(r)
    return PFwd(v, key, r.tail())


def _parse_rfwd(r: Reader, version: int) -> RFwd:
    r.space()
    return RFwd(r.tail())


COMMAND_CLASSES: tuple[type[Command], ...] = (
    New, Sub, Subs, Key, RKey, LSet, LDel, NKey, NDel, Get, Ack, Off, Del, Que,
    SKey, Send, Ping, LKey, LGet, NSub, NSubs, Prxy, PFwd, RFwd,
)  # fmt: skip

_COMMAND_PARSERS: dict[bytes, Callable[[Reader, int], Command]] = {
    b"NEW": New._parse,
    b"SUB": _no_params(Sub),
    b"SUBS": _no_params(Subs),
    b"KEY": _key_cmd(Key),
    b"RKEY": _parse_rkey,
    b"LSET": _parse_lset,
    b"LDEL": _no_params(LDel),
    b"NKEY": _parse_nkey,
    b"NDEL": _no_params(NDel),
    b"GET": _no_params(Get),
    b"ACK": _parse_ack,
    b"OFF": _no_params(Off),
    b"DEL": _no_params(Del),
    b"QUE": _no_params(Que),
    b"SKEY": _key_cmd(SKey),
    b"SEND": Send._parse,
    b"PING": _no_params(Ping),
    b"LKEY": _key_cmd(LKey),
    b"LGET": _no_params(LGet),
    b"NSUB": _no_params(NSub),
    b"NSUBS": _no_params(NSubs),
    b"PRXY": _parse_prxy,
    b"PFWD": _parse_pfwd,
    b"RFWD": _parse_rfwd,
}

#: tag → party, from the command classes (smp.md §4.4 "Party / entity").
COMMAND_PARTIES: dict[bytes, Party] = {c.TAG: c.PARTY for c in COMMAND_CLASSES}
COMMAND_CREDENTIALS: dict[bytes, CredentialRule] = {c.TAG: c.CREDENTIALS for c in COMMAND_CLASSES}

#: parties whose commands may carry a service signature in a service session (``useServiceAuth``)
SERVICE_AUTH_COMMANDS = frozenset({b"NEW", b"SUB", b"NSUB"})


def _check_version(version: int) -> None:
    if not isinstance(version, int) or not 0 <= version <= 0xFFFF:
        raise LocalProtocolError(f"bad SMP version {version!r}")


def encode_command(cmd: Command, version: int) -> bytes:
    """``encodeProtocol``: tag, then parameters as the negotiated ``version`` encodes them."""
    _check_version(version)
    if not isinstance(cmd, Command):
        raise LocalProtocolError(f"not a command: {cmd!r}")
    return cmd.TAG + cmd._params(version)


def _split_tag(data: bytes) -> tuple[bytes, Reader]:
    """``B.break (== ' ')``: the tag, and a reader over the rest (including its leading space)."""
    data = bytes(data)
    i = data.find(b" ")
    if i < 0:
        i = len(data)
    return data[:i], Reader(data, i)


def parse_command(data: bytes, version: int) -> Command:
    """``parseProtocol``: command bytes → :class:`Command`, or :class:`CommandParseError`."""
    tag, r = _split_tag(data)
    parser = _COMMAND_PARSERS.get(tag)
    if parser is None:
        raise CommandParseError(CommandError.UNKNOWN, f"unknown command {tag[:16]!r}")
    try:
        cmd = parser(r, version)
        r.end()
    except (ParseError, LocalProtocolError) as e:
        raise CommandParseError(CommandError.SYNTAX, f"{tag.decode()}: {e}") from e
    return cmd


def check_credentials(cmd: Command, has_auth: bool, entity_id: bytes) -> ErrorType | None:
    """``checkCredentials`` (smp.md §4.3): ``None`` if acceptable, else the ``CMD`` error to send."""
    rule = cmd.CREDENTIALS
    has_entity = bool(entity_id)
    if rule is CredentialRule.AUTH_NO_ENTITY:
        if not has_auth:
            return CmdError(CommandError.NO_AUTH)
        if has_entity:
            return CmdError(CommandError.HAS_AUTH)
        return None
    if rule is CredentialRule.ENTITY_OPTIONAL_AUTH:
        return None if has_entity else CmdError(CommandError.NO_ENTITY)
    if rule is CredentialRule.ENTITY_NO_AUTH:
        if not has_entity:
            return CmdError(CommandError.NO_ENTITY)
        return CmdError(CommandError.HAS_AUTH) if has_auth else None
    if rule is CredentialRule.NO_AUTH_NO_ENTITY:
        return CmdError(CommandError.HAS_AUTH) if has_auth or has_entity else None
    return None if has_auth and has_entity else CmdError(CommandError.NO_AUTH)


def uses_service_auth(cmd: Command) -> bool:
    """``useServiceAuth``: commands signed with the service key in a service session (NEW, SUB, NSUB)."""
    return cmd.TAG in SERVICE_AUTH_COMMANDS


# ---------------------------------------------------------------- responses (smp.md §4.5)


class Response:
    """Base of router → client responses and events (``BrokerMsg``)."""

    __slots__ = ()
    TAG: ClassVar[bytes]
    #: ``checkResponseCredentials``: True = entity must be empty, False = required, None = any
    EMPTY_ENTITY: ClassVar[bool | None] = False

    def _encode(self, version: int) -> bytes:
        return self.TAG


@attrs.frozen
class Ids(Response):
    """``IDS``: the new queue's ids and the router's DH key; further fields by version (§4.6)."""

    TAG = b"IDS"
    EMPTY_ENTITY = None

    rcv_id: bytes = attrs.field(validator=_is_bytes())
    snd_id: bytes = attrs.field(validator=_is_bytes())
    srv_dh_key: PublicKey = attrs.field(validator=_dh_key)
    queue_mode: QueueMode | None = attrs.field(default=None, validator=_opt(_instance(QueueMode)))
    link_id: bytes | None = attrs.field(default=None, validator=_opt(_is_bytes()))
    service_id: bytes | None = attrs.field(default=None, validator=_opt(_is_bytes()))
    ntf_creds: ServerNtfCreds | None = attrs.field(default=None, validator=_opt(_instance(ServerNtfCreds)))

    def _encode(self, version: int) -> bytes:
        out = b"IDS " + sb(self.rcv_id) + sb(self.snd_id) + self.srv_dh_key.encode()
        if version >= SHORT_LINKS_SMP_VERSION:
            out += mb(None if self.queue_mode is None else self.queue_mode.value)
            out += mb(None if self.link_id is None else sb(self.link_id))
            if version >= SERVICE_CERTS_SMP_VERSION:
                out += mb(None if self.service_id is None else sb(self.service_id))
            if version >= NEW_NTF_CREDS_SMP_VERSION:
                out += mb(None if self.ntf_creds is None else self.ntf_creds.encode())
        elif version >= SND_AUTH_KEY_SMP_VERSION:
            out += b"T" if self.queue_mode is QueueMode.MESSAGING else b"F"
        return out

    @staticmethod
    def _parse(r: Reader, version: int) -> "Ids":
        r.space()
        rcv_id, snd_id = r.sb(), r.sb()
        key = parse_dh_key(r)
        mode = link_id = service_id = ntf = None
        if version >= SHORT_LINKS_SMP_VERSION:
            mode = r.maybe(_queue_mode_p)
            link_id = r.maybe(Reader.sb)
            if version >= SERVICE_CERTS_SMP_VERSION:
                service_id = r.maybe(Reader.sb)
            if version >= NEW_NTF_CREDS_SMP_VERSION:
                ntf = r.maybe(ServerNtfCreds.parse)
        elif version >= SND_AUTH_KEY_SMP_VERSION:
            mode = QueueMode.MESSAGING if r.boolean() else QueueMode.CONTACT
        return Ids(rcv_id, snd_id, key, mode, link_id, service_id, ntf)


def _queue_mode_p(r: Reader) -> QueueMode:
    c = r.byte()
    if c == 0x4D:
        return QueueMode.MESSAGING
    if c == 0x43:
        return QueueMode.CONTACT
    raise ParseError("bad QueueMode")


@attrs.frozen
class Lnk(Response):
    """``LNK``: sender id and the queue's link data (reply to LKEY/LGET)."""

    TAG = b"LNK"

    sender_id: bytes = attrs.field(validator=_is_bytes())
    link_data: QueueLinkData = attrs.field(validator=_instance(QueueLinkData))

    def _encode(self, version: int) -> bytes:
        return b"LNK " + sb(self.sender_id) + self.link_data.encode()


@attrs.frozen
class SOk(Response):
    """``SOK``: subscribed (reply to SUB/NSUB); sent as plain ``OK`` below v16."""

    TAG = b"SOK"

    service_id: bytes | None = attrs.field(default=None, validator=_opt(_is_bytes()))

    def _encode(self, version: int) -> bytes:
        if version < SERVICE_CERTS_SMP_VERSION:
            return b"OK"
        return b"SOK " + mb(None if self.service_id is None else sb(self.service_id))


@attrs.frozen
class SOks(Response):
    """``SOKS``: number of queues subscribed by SUBS/NSUBS."""

    TAG = b"SOKS"

    count: int = attrs.field(validator=_INT64)

    def _encode(self, version: int) -> bytes:
        return b"SOKS " + i64(self.count)


@attrs.frozen
class Msg(Response):
    """``MSG``: ``sb(msgId)`` then the 16122-byte router-encrypted body (smp.md §5.3)."""

    TAG = b"MSG"

    msg_id: bytes = attrs.field(validator=_is_bytes())
    enc_body: bytes = attrs.field(validator=_is_bytes(None))

    def _encode(self, version: int) -> bytes:
        return b"MSG " + sb(self.msg_id) + self.enc_body


@attrs.frozen
class Nid(Response):
    """``NID``: notifier id and the router's notification DH key (reply to NKEY)."""

    TAG = b"NID"

    notifier_id: bytes = attrs.field(validator=_is_bytes())
    srv_ntf_dh_key: PublicKey = attrs.field(validator=_dh_key)

    def _encode(self, version: int) -> bytes:
        return b"NID " + sb(self.notifier_id) + self.srv_ntf_dh_key.encode()


def _nonce24(_inst: Any, attr: Any, value: Any) -> None:
    if not isinstance(value, bytes) or len(value) != NONCE_LENGTH:
        raise LocalProtocolError(f"{attr.name} must be {NONCE_LENGTH} bytes")


@attrs.frozen
class NMsg(Response):
    """``NMSG``: raw 24-byte nonce then ``sb(encrypted NMsgMeta)`` (smp.md §5.5)."""

    TAG = b"NMSG"

    nonce: bytes = attrs.field(validator=_nonce24)
    enc_meta: bytes = attrs.field(validator=_is_bytes())

    def _encode(self, version: int) -> bytes:
        return b"NMSG " + self.nonce + sb(self.enc_meta)


@attrs.frozen
class PKey(Response):
    """``PKEY``: relay session id, relay version range (∩ 8–17) and its signed session key (smp.md §5.6)."""

    TAG = b"PKEY"
    EMPTY_ENTITY = True

    session_id: bytes = attrs.field(validator=_is_bytes())
    versions: VersionRange = attrs.field(validator=_instance(VersionRange))
    cert_key: CertChainPubKey = attrs.field(validator=_instance(CertChainPubKey))

    def _encode(self, version: int) -> bytes:
        return b"PKEY " + sb(self.session_id) + self.versions.encode() + self.cert_key.encode()


@attrs.frozen
class RRes(Response):
    """``RRES``: relay → proxy encrypted response."""

    TAG = b"RRES"
    EMPTY_ENTITY = True

    enc_fwd_response: bytes = attrs.field(validator=_is_bytes(None))

    def _encode(self, version: int) -> bytes:
        return b"RRES " + self.enc_fwd_response


@attrs.frozen
class PRes(Response):
    """``PRES``: proxy → client encrypted response (entity = relay session id)."""

    TAG = b"PRES"

    enc_response: bytes = attrs.field(validator=_is_bytes(None))

    def _encode(self, version: int) -> bytes:
        return b"PRES " + self.enc_response


@attrs.frozen
class End(Response):
    """``END``: the subscription moved to another connection."""

    TAG = b"END"


@attrs.frozen
class Ends(Response):
    """``ENDS``: a service subscription ended (count of queues)."""

    TAG = b"ENDS"

    count: int = attrs.field(validator=_INT64)

    def _encode(self, version: int) -> bytes:
        return b"ENDS " + i64(self.count)


@attrs.frozen
class Deld(Response):
    """``DELD``: the queue was deleted; sent as ``END`` below v10."""

    TAG = b"DELD"

    def _encode(self, version: int) -> bytes:
        return b"DELD" if version >= DELETED_EVENT_SMP_VERSION else b"END"


@attrs.frozen
class Info(Response):
    """``INFO``: ``QueueInfo`` JSON (reply to QUE)."""

    TAG = b"INFO"

    info: QueueInfo = attrs.field(validator=_instance(QueueInfo))

    def _encode(self, version: int) -> bytes:
        return b"INFO " + self.info.to_json()


@attrs.frozen
class Ok(Response):
    TAG = b"OK"


@attrs.frozen
class Err(Response):
    """``ERR <ErrorType>``; any entity. The encoder applies :func:`error_for_version`."""

    TAG = b"ERR"
    EMPTY_ENTITY = None

    error: ErrorType = attrs.field(validator=_instance(ErrorType))

    def _encode(self, version: int) -> bytes:
        return b"ERR " + error_for_version(self.error, version).encode()


@attrs.frozen
class Pong(Response):
    TAG = b"PONG"
    EMPTY_ENTITY = True


def _parse_lnk(r: Reader, version: int) -> Lnk:
    r.space()
    return Lnk(r.sb(), QueueLinkData.parse(r))


def _parse_sok(r: Reader, version: int) -> SOk:
    r.space()
    return SOk(r.maybe(Reader.sb))


def _parse_soks(r: Reader, version: int) -> SOks:
    r.space()
    return SOks(r.i64())


def _parse_msg(r: Reader, version: int) -> Msg:
    r.space()
    return Msg(r.sb(), r.tail())


def _parse_nid(r: Reader, version: int) -> Nid:
    r.space()
    return Nid(r.sb(), parse_dh_key(r))


def _parse_nmsg(r: Reader, version: int) -> NMsg:
    r.space()
    return NMsg(r.take(NONCE_LENGTH), r.sb())


def _parse_pkey(r: Reader, version: int) -> PKey:
    r.space()
    sid = r.sb()
    versions = VersionRange.parse(r)
    return PKey(sid, versions, CertChainPubKey.parse(r))


def _parse_rres(r: Reader, version: int) -> RRes:
    r.space()
    return RRes(r.tail())


def _parse_pres(r: Reader, version: int) -> PRes:
    r.space()
    return PRes(r.tail())


def _parse_ends(r: Reader, version: int) -> Ends:
    r.space()
    return Ends(r.i64())


def _parse_info(r: Reader, version: int) -> Info:
    r.space()
    return Info(QueueInfo.from_json(r.tail()))


def _parse_err(r: Reader, version: int) -> Err:
    r.space()
    return Err(parse_error_type(r))


RESPONSE_CLASSES: tuple[type[Response], ...] = (
    Ids, Lnk, SOk, SOks, Msg, Nid, NMsg, PKey, RRes, PRes, End, Ends, Deld, Info, Ok, Err, Pong,
)  # fmt: skip

_RESPONSE_PARSERS: dict[bytes, Callable[[Reader, int], Response]] = {
    b"IDS": Ids._parse,
    b"LNK": _parse_lnk,
    b"SOK": _parse_sok,
    b"SOKS": _parse_soks,
    b"MSG": _parse_msg,
    b"NID": _parse_nid,
    b"NMSG": _parse_nmsg,
    b"PKEY": _parse_pkey,
    b"RRES": _parse_rres,
    b"PRES": _parse_pres,
    b"END": _no_params(End),
    b"ENDS": _parse_ends,
    b"DELD": _no_params(Deld),
    b"INFO": _parse_info,
    b"OK": _no_params(Ok),
    b"ERR": _parse_err,
    b"PONG": _no_params(Pong),
}


def encode_response(resp: Response, version: int) -> bytes:
    """``encodeProtocol`` for ``BrokerMsg`` with the version downgrades of §4.5–§4.7."""
    _check_version(version)
    if not isinstance(resp, Response):
        raise LocalProtocolError(f"not a response: {resp!r}")
    return resp._encode(version)


def parse_response(data: bytes, version: int) -> Response:
    """Response bytes → :class:`Response`, or :class:`ResponseParseError` (``UNKNOWN``/``SYNTAX``)."""
    tag, r = _split_tag(data)
    parser = _RESPONSE_PARSERS.get(tag)
    if parser is None:
        raise ResponseParseError(CommandError.UNKNOWN, f"unknown response {tag[:16]!r}")
    try:
        resp = parser(r, version)
        r.end()
    except (ParseError, LocalProtocolError) as e:
        raise ResponseParseError(CommandError.SYNTAX, f"{tag.decode()}: {e}") from e
    return resp


def check_response_credentials(resp: Response, entity_id: bytes) -> ErrorType | None:
    """``checkCredentials`` for ``BrokerMsg`` (smp.md §4.3): IDS/ERR any entity; PONG/PKEY/RRES
    none (else ``CMD HAS_AUTH``); everything else needs one (else ``CMD NO_ENTITY``)."""
    rule = resp.EMPTY_ENTITY
    if rule is None:
        return None
    if rule:
        return CmdError(CommandError.HAS_AUTH) if entity_id else None
    return None if entity_id else CmdError(CommandError.NO_ENTITY)


AnyMessage = Union[Command, Response]
