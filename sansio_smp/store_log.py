"""Router persistence formats: the queue store log (smp.md §6.8) and the message journal.

Pure codec and state, no I/O (the driver is :mod:`transports.store_files`).

* **Queue store log** — the reference's append-only text format, one record per line
  (``StoreLog.hs``): ``CREATE rid=… rk=… rdh=… sid=… sk=…[ queue_mode=M|C][ link_id=… queue_data=… …]
  [ notifier=…][ updated_at=…][ status=…][ rsrv=…]``, ``SECURE``, ``LINK``, ``LDELETE``, ``KEYS``,
  ``NOTIFIER``, ``SUSPEND``, ``BLOCK``, ``UNBLOCK``, ``DELETE``, ``NDELETE``, ``TIME``,
  ``NEW_SERVICE``, ``QUEUE_SERVICE``. Ids, secrets and data are base64url with ``=`` padding,
  keys are base64url of their DER SPKI. :func:`encode_record` / :func:`parse_record` are exact
  inverses; parsing is total (:class:`~sansio_smp.errors.ParseError`).
* :class:`QueueStore` — the queue records and their id indexes. Every mutation is a store-log
  record applied with :meth:`QueueStore.apply`, with the reference's semantics
  (``QueueStore/STM.hs``), so the live state is by construction what replaying the log yields.
  :meth:`QueueStore.compacted_records` is the compacted log (services, then one ``CREATE`` per
  live queue).
* **Message journal** (this project's format, one record per line; smp.md §6.9 describes what
  the reference keeps):

  - ``M <rid> <msgId> <ts> <T|F> <body>`` — a message appended to a queue (flag = notification);
  - ``Q <rid> <msgId> <ts>`` — the quota marker appended (§6.5);
  - ``A <rid> <msgId>`` — that message removed (ACK or expiry);
  - ``D <rid>`` — every message of the queue removed (queue deleted).

  :func:`restore_messages` replays a journal into per-queue message lists, dropping expired
  messages (as the reference's import does, ``importMessages``) and messages of queues that no
  longer exist.
"""

from __future__ import annotations

import binascii
import re
from typing import Iterable, Iterator, Union

import attrs

from .addresses import QueueMode
from .crypto import AUTH_KEY_ALGORITHMS, PublicKey
from .encoding import b64url_decode
from .errors import ParseError
from .protocol import BlockingInfo, BlockingReason, ClientNotice

SERVICE_ROLES = ("M", "N", "P")
DAY = 86400


# ---------------------------------------------------------------- values


@attrs.frozen
class NtfCreds:
    """Notifier credentials of a queue (``NtfCreds``)."""

    notifier_id: bytes
    notifier_key: PublicKey
    rcv_ntf_dh_secret: bytes
    ntf_service_id: bytes | None = None


@attrs.frozen
class QueueLink:
    """Short-link data: the link id and the two opaque encrypted blobs (smp.md §5.7)."""

    link_id: bytes
    fixed_data: bytes
    user_data: bytes


Status = Union[str, BlockingInfo]  # "active" | "off" | BlockingInfo
ACTIVE = "active"
OFF = "off"


_DAY_SECONDS = 86400
_shared_ints: dict[int, int] = {}


def shared_int(value: int) -> int:
    """One int object per distinct ``updated_at`` (day-rounded, so few distinct values): an
    idle queue then costs a pointer, not a 32-byte int."""
    if len(_shared_ints) > 4096:
        _shared_ints.clear()
    return _shared_ints.setdefault(value, value)


def day_start(seconds: float) -> int:
    """``updated_at`` of a queue touched at ``seconds``: rounded down to the day (smp.md §6.1)."""
    return shared_int(int(seconds) // _DAY_SECONDS * _DAY_SECONDS)


@attrs.frozen
class QueueRec:
    """One queue record (smp.md §6.1, ``QueueRec``). Immutable: updates make a new record."""

    recipient_keys: tuple[PublicKey, ...]
    rcv_dh_secret: bytes
    sender_id: bytes
    sender_key: PublicKey | None = None
    queue_mode: QueueMode | None = None  # None: a legacy queue created before queue modes
    link: QueueLink | None = None
    notifier: NtfCreds | None = None
    status: Status = ACTIVE
    updated_at: int | None = None
    rcv_service_id: bytes | None = None

    @property
    def is_contact(self) -> bool:
        """``isContactQueue``: mode C, or a legacy mode-less queue without sender key."""
        if self.queue_mode is QueueMode.MESSAGING:
            return False
        if self.queue_mode is QueueMode.CONTACT:
            return True
        return self.sender_key is None

    @property
    def is_secured_messaging(self) -> bool:
        """``isSecuredMsgQueue``: not a contact queue and a sender key is set."""
        return self.queue_mode is not QueueMode.CONTACT and self.sender_key is not None


@attrs.frozen
class ServiceRec:
    """A registered service client (``ServiceRec``); kept so logs round-trip."""

    service_id: bytes
    role: str
    cert_chain: tuple[bytes, ...]
    cert_hash: bytes
    created_at: int


# ---------------------------------------------------------------- records


@attrs.frozen
class CreateQueue:
    rid: bytes
    rec: QueueRec


@attrs.frozen
class CreateLink:
    rid: bytes
    link_id: bytes
    fixed_data: bytes
    user_data: bytes


@attrs.frozen
class DeleteLink:
    rid: bytes


@attrs.frozen
class SecureQueue:
    rid: bytes
    sender_key: PublicKey


@attrs.frozen
class UpdateKeys:
    rid: bytes
    keys: tuple[PublicKey, ...]


@attrs.frozen
class AddNotifier:
    rid: bytes
    creds: NtfCreds


@attrs.frozen
class SuspendQueue:
    rid: bytes


@attrs.frozen
class BlockQueue:
    rid: bytes
    info: BlockingInfo


@attrs.frozen
class UnblockQueue:
    rid: bytes


@attrs.frozen
class DeleteQueue:
    rid: bytes


@attrs.frozen
class DeleteNotifier:
    rid: bytes


@attrs.frozen
class UpdateTime:
    rid: bytes
    date: int


@attrs.frozen
class NewService:
    rec: ServiceRec


@attrs.frozen
class QueueService:
    rid: bytes
    party: str  # "R" recipient service, "N" notifier service
    service_id: bytes | None


StoreLogRecord = Union[
    CreateQueue, CreateLink, DeleteLink, SecureQueue, UpdateKeys, AddNotifier, SuspendQueue, BlockQueue,
    UnblockQueue, DeleteQueue, DeleteNotifier, UpdateTime, NewService, QueueService,
]


# ---------------------------------------------------------------- encoding


_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b(data: bytes) -> str:
    """base64url with ``=`` padding (as :func:`sansio_smp.encoding.b64url_encode`, faster)."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).decode("ascii")


def _key(key: PublicKey) -> str:
    return _b(key.spki())


def _keys(keys: Iterable[PublicKey]) -> str:
    return ",".join(_key(k) for k in keys)


def _ntf(creds: NtfCreds) -> str:
    out = f"{_b(creds.notifier_id)} {_key(creds.notifier_key)} {_b(creds.rcv_ntf_dh_secret)}"
    if creds.ntf_service_id is not None:
        out += f" nsrv={_b(creds.ntf_service_id)}"
    return out


def _blocking(info: BlockingInfo) -> str:
    """``strEncode BlockingInfo``: ``reason=spam|content[,notice=<JSON>]``."""
    return info.encode().decode("ascii")


def _status(status: Status) -> str:
    return "blocked," + _blocking(status) if isinstance(status, BlockingInfo) else status


def encode_queue_rec(q: QueueRec) -> str:
    """``strEncode QueueRec`` (the part of a ``CREATE`` line after ``rid=…``)."""
    out = [f"rk={_keys(q.recipient_keys)} rdh={_b(q.rcv_dh_secret)} sid={_b(q.sender_id)} sk="]
    if q.sender_key is not None:
        out.append(_key(q.sender_key))
    if q.queue_mode is not None:
        out.append(f" queue_mode={q.queue_mode.value.decode()}")
    if q.link is not None:
        out.append(f" link_id={_b(q.link.link_id)} queue_data={_b(q.link.fixed_data)} {_b(q.link.user_data)}")
    if q.notifier is not None:
        out.append(f" notifier={_ntf(q.notifier)}")
    if q.updated_at is not None:
        out.append(f" updated_at={q.updated_at}")
    if q.status != ACTIVE:
        out.append(f" status={_status(q.status)}")
    if q.rcv_service_id is not None:
        out.append(f" rsrv={_b(q.rcv_service_id)}")
    return "".join(out)


def encode_record(r: StoreLogRecord) -> str:
    """One store-log line, without the newline (``strEncode StoreLogRecord``)."""
    if isinstance(r, CreateQueue):
        return f"CREATE rid={_b(r.rid)} {encode_queue_rec(r.rec)}"
    if isinstance(r, CreateLink):
        return f"LINK {_b(r.rid)} {_b(r.link_id)} {_b(r.fixed_data)} {_b(r.user_data)}"
    if isinstance(r, DeleteLink):
        return f"LDELETE {_b(r.rid)}"
    if isinstance(r, SecureQueue):
        return f"SECURE {_b(r.rid)} {_key(r.sender_key)}"
    if isinstance(r, UpdateKeys):
        return f"KEYS {_b(r.rid)} {_keys(r.keys)}"
    if isinstance(r, AddNotifier):
        return f"NOTIFIER {_b(r.rid)} {_ntf(r.creds)}"
    if isinstance(r, SuspendQueue):
        return f"SUSPEND {_b(r.rid)}"
    if isinstance(r, BlockQueue):
        return f"BLOCK {_b(r.rid)} {_blocking(r.info)}"
    if isinstance(r, UnblockQueue):
        return f"UNBLOCK {_b(r.rid)}"
    if isinstance(r, DeleteQueue):
        return f"DELETE {_b(r.rid)}"
    if isinstance(r, DeleteNotifier):
        return f"NDELETE {_b(r.rid)}"
    if isinstance(r, UpdateTime):
        return f"TIME {_b(r.rid)} {r.date}"
    if isinstance(r, NewService):
        s = r.rec
        certs = ",".join(_b(c) for c in s.cert_chain)
        return (
            f"NEW_SERVICE service_id={_b(s.service_id)} role={s.role} cert={certs} "
            f"cert_hash={_b(s.cert_hash)} created_at={s.created_at}"
        )
    if isinstance(r, QueueService):
        sid = _b(r.service_id) if r.service_id is not None else ""
        return f"QUEUE_SERVICE {_b(r.rid)} {r.party} {sid}"
    raise TypeError(f"not a store log record: {r!r}")


# ---------------------------------------------------------------- parsing


_B64_TOKEN = re.compile(r"[A-Za-z0-9_-]*=*")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
# the common CREATE line (no link, status or service; a notifier without nsrv), parsed in one regex match
_B64_RE = r"[A-Za-z0-9_-]+=*"
_FAST_CREATE = re.compile(
    rf"CREATE rid=({_B64_RE}) rk=({_B64_RE}(?:,{_B64_RE})*) rdh=({_B64_RE}) sid=({_B64_RE}) "
    rf"sk=((?:{_B64_RE})?)(?: queue_mode=([MC]))?(?: notifier=({_B64_RE}) ({_B64_RE}) ({_B64_RE}))?"
    rf"(?: updated_at=([0-9]+))?\Z"
)
_TILL = {stops: re.compile("[^" + re.escape(stops) + "]*") for stops in (" ", ", \n", " ,\n", ", ")}


def _b64d(text: str) -> bytes:
    """base64url, padded or not, of a token already matched by :data:`_B64_TOKEN`
    (same acceptance as :func:`sansio_smp.encoding.b64url_decode`, at C speed)."""
    stripped = text.rstrip("=")
    pad_n = len(text) - len(stripped)
    if pad_n > 2 or len(stripped) % 4 == 1 or (pad_n and len(text) % 4):
        raise ParseError("base64url: bad length or padding")
    try:
        return binascii.a2b_base64((stripped + "=" * (-len(stripped) % 4)).encode("ascii").translate(_FROM_URLSAFE))
    except (binascii.Error, ValueError) as e:  # pragma: no cover - guarded above
        raise ParseError(f"base64url: {e}") from e


class _Cursor:
    """A total parser over one text line (attoparsec-like, ASCII only)."""

    __slots__ = ("s", "i")

    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0

    def at_end(self) -> bool:
        return self.i >= len(self.s)

    def startswith(self, lit: str) -> bool:
        return self.s.startswith(lit, self.i)

    def lit(self, lit: str) -> None:
        if not self.s.startswith(lit, self.i):
            raise ParseError(f"expected {lit!r} at {self.i}")
        self.i += len(lit)

    def opt(self, lit: str) -> bool:
        if self.s.startswith(lit, self.i):
            self.i += len(lit)
            return True
        return False

    def take_till(self, stops: str) -> str:
        pat = _TILL.get(stops)
        if pat is None:
            pat = _TILL[stops] = re.compile("[^" + re.escape(stops) + "]*")
        m = pat.match(self.s, self.i)
        assert m is not None  # a star pattern always matches
        self.i = m.end()
        return m.group()

    def rest(self) -> str:
        out = self.s[self.i :]
        self.i = len(self.s)
        return out

    def b64(self, allow_empty: bool = False) -> bytes:
        """``base64urlP``: base64url characters then ``=`` padding."""
        m = _B64_TOKEN.match(self.s, self.i)
        assert m is not None
        text = m.group()
        if not text and not allow_empty:
            raise ParseError(f"expected base64url at {self.i}")
        self.i = m.end()
        return _b64d(text)

    def item(self) -> str:
        """A list item: up to ``,``, space or end (``listItem``)."""
        return self.take_till(", \n")

    def decimal(self) -> int:
        text = self.take_till(" ,\n")
        neg = text.startswith("-")
        digits = text[1:] if neg else text
        if not digits.isascii() or not digits.isdigit():
            raise ParseError(f"expected a decimal number, got {text!r}")
        v = int(digits)
        return -v if neg else v

    def end(self) -> None:
        if not self.at_end():
            raise ParseError(f"unexpected trailing text at {self.i}")


def _parse_key_text(text: str) -> PublicKey:
    m = _B64_TOKEN.fullmatch(text)
    if m is None:
        raise ParseError("key: not base64url")
    key = PublicKey.from_spki(_b64d(text))
    if key.alg not in AUTH_KEY_ALGORITHMS:
        raise ParseError("not an authorization key algorithm")
    return key


def _p_key(c: _Cursor) -> PublicKey:
    return _parse_key_text(c.item())


def _p_keys(c: _Cursor) -> tuple[PublicKey, ...]:
    keys = [_p_key(c)]
    while c.opt(","):
        keys.append(_p_key(c))
    return tuple(keys)


def _p_secret(c: _Cursor) -> bytes:
    s = c.b64()
    if len(s) != 32:
        raise ParseError("DH secret must be 32 bytes")
    return s


def _p_ntf(c: _Cursor) -> NtfCreds:
    nid = c.b64()
    c.lit(" ")
    nkey = _parse_key_text(c.take_till(" "))
    c.lit(" ")
    secret = _p_secret(c)
    nsrv = c.b64() if c.opt(" nsrv=") else None
    return NtfCreds(nid, nkey, secret, nsrv)


def _p_blocking(c: _Cursor) -> BlockingInfo:
    c.lit("reason=")
    reason = c.take_till(", ")
    try:
        reason_v = BlockingReason(reason.encode("ascii"))
    except ValueError as e:
        raise ParseError(f"bad blocking reason {reason!r}") from e
    notice = None
    if c.opt(",notice="):
        # the reference takes the rest of the line as the notice JSON
        notice = ClientNotice.from_json(c.rest().encode("utf-8"))
    return BlockingInfo(reason_v, notice)


def _p_status(c: _Cursor) -> Status:
    if c.opt("active"):
        return ACTIVE
    if c.opt("off"):
        return OFF
    if c.opt("blocked,"):
        return _p_blocking(c)
    raise ParseError("bad queue status")


def encode_status(status: Status) -> str:
    """``strEncode ServerEntityStatus``: ``active``, ``off`` or ``blocked,<BlockingInfo>`` — the
    queue status here and the file status of the XFTP store log (xftp-ntf.md §1.13)."""
    return _status(status)


def parse_status(text: str) -> Status:
    """A whole ``ServerEntityStatus`` text (inverse of :func:`encode_status`); :class:`ParseError`."""
    c = _Cursor(text)
    status = _p_status(c)
    c.end()
    return status


def parse_queue_rec(c: _Cursor) -> QueueRec:
    c.lit("rk=")
    rk = _p_keys(c)
    c.lit(" rdh=")
    rdh = _p_secret(c)
    c.lit(" sid=")
    sid = c.b64()
    c.lit(" sk=")
    sk = None if c.at_end() or c.startswith(" ") else _parse_key_text(c.take_till(" "))
    mode = None
    if c.opt(" sndSecure="):
        flag = c.take_till(" ")
        if flag not in ("T", "F"):
            raise ParseError("bad sndSecure flag")
        mode = QueueMode.MESSAGING if flag == "T" else QueueMode.CONTACT
    elif c.opt(" queue_mode="):
        text = c.take_till(" ")
        if text not in ("M", "C"):
            raise ParseError("bad queue mode")
        mode = QueueMode(text.encode("ascii"))
    link = None
    if c.opt(" link_id="):
        link_id = c.b64()
        c.lit(" queue_data=")
        fixed = c.b64(allow_empty=True)
        c.lit(" ")
        user = c.b64(allow_empty=True)
        link = QueueLink(link_id, fixed, user)
    notifier = _p_ntf(c) if c.opt(" notifier=") else None
    updated_at = shared_int(c.decimal()) if c.opt(" updated_at=") else None
    status: Status = _p_status(c) if c.opt(" status=") else ACTIVE
    rsrv = c.b64() if c.opt(" rsrv=") else None
    return QueueRec(rk, rdh, sid, sk, mode, link, notifier, status, updated_at, rsrv)


def parse_record(line: str | bytes) -> StoreLogRecord:
    """Parse one store-log line (without its newline); :class:`ParseError` if malformed."""
    if isinstance(line, bytes):
        try:
            line = line.decode("ascii")
        except UnicodeDecodeError as e:
            raise ParseError("store log line is not ASCII") from e
    try:
        m = _FAST_CREATE.match(line)
        if m is not None:
            return _fast_create(m)
        return _parse_record(_Cursor(line))
    except ParseError:
        raise
    except (ValueError, IndexError) as e:  # defensive: any other decoding failure is a parse error
        raise ParseError(str(e)) from e


def _fast_create(m: "re.Match[str]") -> CreateQueue:
    rid, rk, rdh, sid, sk, mode, nid, nkey, nsecret, updated = m.groups()
    secret = _b64d(rdh)
    if len(secret) != 32:
        raise ParseError("DH secret must be 32 bytes")
    notifier = None
    if nid is not None:  # ``notifier=<nid> <key> <secret>`` without ``nsrv=`` (as _p_ntf)
        ntf_secret = _b64d(nsecret)
        if len(ntf_secret) != 32:
            raise ParseError("DH secret must be 32 bytes")
        notifier = NtfCreds(_b64d(nid), _parse_key_text(nkey), ntf_secret)
    rec = QueueRec(
        tuple(_parse_key_text(k) for k in rk.split(",")),
        secret,
        _b64d(sid),
        _parse_key_text(sk) if sk else None,
        QueueMode(mode.encode("ascii")) if mode else None,
        notifier=notifier,
        updated_at=shared_int(int(updated)) if updated is not None else None,
    )
    return CreateQueue(_b64d(rid), rec)


def _parse_record(c: _Cursor) -> StoreLogRecord:
    tag = c.take_till(" ")
    c.lit(" ")
    r: StoreLogRecord
    if tag == "CREATE":
        c.lit("rid=")
        rid = c.b64()
        c.lit(" ")
        r = CreateQueue(rid, parse_queue_rec(c))
    elif tag == "NEW_SERVICE":
        c.lit("service_id=")
        sid = c.b64()
        c.lit(" role=")
        role = c.take_till(" ")
        if role not in SERVICE_ROLES:
            raise ParseError("bad service role")
        c.lit(" cert=")
        certs = [b64url_decode(c.item())]
        while c.opt(","):
            certs.append(b64url_decode(c.item()))
        c.lit(" cert_hash=")
        cert_hash = c.b64()
        c.lit(" created_at=")
        r = NewService(ServiceRec(sid, role, tuple(certs), cert_hash, c.decimal()))
    else:
        rid = c.b64()
        if tag == "LINK":
            c.lit(" ")
            link_id = c.b64()
            c.lit(" ")
            fixed = c.b64(allow_empty=True)
            c.lit(" ")
            r = CreateLink(rid, link_id, fixed, c.b64(allow_empty=True))
        elif tag == "LDELETE":
            r = DeleteLink(rid)
        elif tag == "SECURE":
            c.lit(" ")
            r = SecureQueue(rid, _parse_key_text(c.take_till(" ")))
        elif tag == "KEYS":
            c.lit(" ")
            r = UpdateKeys(rid, _p_keys(c))
        elif tag == "NOTIFIER":
            c.lit(" ")
            r = AddNotifier(rid, _p_ntf(c))
        elif tag == "SUSPEND":
            r = SuspendQueue(rid)
        elif tag == "BLOCK":
            c.lit(" ")
            r = BlockQueue(rid, _p_blocking(c))
        elif tag == "UNBLOCK":
            r = UnblockQueue(rid)
        elif tag == "DELETE":
            r = DeleteQueue(rid)
        elif tag == "NDELETE":
            r = DeleteNotifier(rid)
        elif tag == "TIME":
            c.lit(" ")
            r = UpdateTime(rid, c.decimal())
        elif tag == "QUEUE_SERVICE":
            c.lit(" ")
            party = c.take_till(" ")
            if party not in ("R", "N"):
                raise ParseError("bad service party")
            c.lit(" ")
            r = QueueService(rid, party, None if c.at_end() else c.b64())
        else:
            raise ParseError(f"unknown store log record {tag!r}")
    c.end()
    return r


# ---------------------------------------------------------------- the queue store


class StoreError(Exception):
    """A record that cannot be applied: ``code`` is the reference ``ErrorType`` (``AUTH``,
    ``DUPLICATE_``). Not a protocol error: the router maps it to a response."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class QueueStore:
    """Queue records keyed by recipient id, with sender / notifier / link id indexes
    (``STMQueueStore``). Mutated only through :meth:`apply`."""

    __slots__ = ("queues", "senders", "notifiers", "links", "services")

    def __init__(self) -> None:
        self.queues: dict[bytes, QueueRec] = {}
        self.senders: dict[bytes, bytes] = {}
        self.notifiers: dict[bytes, bytes] = {}
        self.links: dict[bytes, bytes] = {}
        self.services: dict[bytes, ServiceRec] = {}

    # -- lookups (party → recipient id)
    def by_sender(self, sid: bytes) -> bytes | None:
        return self.senders.get(sid)

    def by_notifier(self, nid: bytes) -> bytes | None:
        return self.notifiers.get(nid)

    def by_link(self, lid: bytes) -> bytes | None:
        return self.links.get(lid)

    # -- index maintenance
    def _unindex(self, rid: bytes, q: QueueRec) -> None:
        if self.senders.get(q.sender_id) == rid:
            del self.senders[q.sender_id]
        if q.notifier is not None and self.notifiers.get(q.notifier.notifier_id) == rid:
            del self.notifiers[q.notifier.notifier_id]
        if q.link is not None and self.links.get(q.link.link_id) == rid:
            del self.links[q.link.link_id]

    def _index(self, rid: bytes, q: QueueRec) -> None:
        self.senders[q.sender_id] = rid
        if q.notifier is not None:
            self.notifiers[q.notifier.notifier_id] = rid
        if q.link is not None:
            self.links[q.link.link_id] = rid

    def put(self, rid: bytes, q: QueueRec | None) -> None:
        """Set (or remove, with ``None``) a record with its indexes — used to roll back."""
        old = self.queues.get(rid)
        if old is not None:
            self._unindex(rid, old)
        if q is None:
            self.queues.pop(rid, None)
        else:
            self.queues[rid] = q
            self._index(rid, q)

    def has_id(self, rid: bytes, q: QueueRec) -> bool:
        return (
            rid in self.queues
            or q.sender_id in self.senders
            or (q.notifier is not None and q.notifier.notifier_id in self.notifiers)
            or (q.link is not None and q.link.link_id in self.links)
        )

    def _get(self, rid: bytes) -> QueueRec:
        q = self.queues.get(rid)
        if q is None:
            raise StoreError("AUTH")
        return q

    # -- the one mutation entry point
    def apply(self, r: StoreLogRecord) -> None:
        """Apply one record with the reference semantics; :class:`StoreError` if it cannot be."""
        if isinstance(r, CreateQueue):
            if self.has_id(r.rid, r.rec):
                raise StoreError("DUPLICATE_")
            self.put(r.rid, r.rec)
        elif isinstance(r, NewService):
            self.services[r.rec.service_id] = r.rec
        else:
            q = self._get(r.rid)
            self.put(r.rid, self._update(r, q))

    def _update(self, r: StoreLogRecord, q: QueueRec) -> QueueRec | None:
        if isinstance(r, CreateLink):
            if q.link is not None and (q.link.link_id != r.link_id or q.link.fixed_data != r.fixed_data):
                raise StoreError("AUTH")
            if q.link is None and r.link_id in self.links:
                raise StoreError("DUPLICATE_")
            return attrs.evolve(q, link=QueueLink(r.link_id, r.fixed_data, r.user_data))
        if isinstance(r, DeleteLink):
            return attrs.evolve(q, link=None)
        if isinstance(r, SecureQueue):
            if q.sender_key is not None:
                if q.sender_key != r.sender_key:
                    raise StoreError("AUTH")
                return q
            return attrs.evolve(q, sender_key=r.sender_key)
        if isinstance(r, UpdateKeys):
            return attrs.evolve(q, recipient_keys=tuple(r.keys))
        if isinstance(r, AddNotifier):
            owner = self.notifiers.get(r.creds.notifier_id)
            if owner is not None:
                raise StoreError("DUPLICATE_")
            return attrs.evolve(q, notifier=r.creds)
        if isinstance(r, SuspendQueue):
            return attrs.evolve(q, status=OFF)
        if isinstance(r, BlockQueue):
            return attrs.evolve(q, status=r.info)
        if isinstance(r, UnblockQueue):
            return attrs.evolve(q, status=ACTIVE)
        if isinstance(r, DeleteQueue):
            return None
        if isinstance(r, DeleteNotifier):
            return attrs.evolve(q, notifier=None)
        if isinstance(r, UpdateTime):
            return attrs.evolve(q, updated_at=r.date)
        if isinstance(r, QueueService):
            if r.party == "R":
                return attrs.evolve(q, rcv_service_id=r.service_id)
            if q.notifier is None:
                raise StoreError("AUTH")
            return attrs.evolve(q, notifier=attrs.evolve(q.notifier, ntf_service_id=r.service_id))
        raise TypeError(f"not a queue record: {r!r}")  # pragma: no cover

    def compacted_records(self) -> list[StoreLogRecord]:
        """The compacted log: every service, then one ``CREATE`` per live queue (``writeQueueStore``)."""
        out: list[StoreLogRecord] = [NewService(s) for _, s in sorted(self.services.items())]
        out.extend(CreateQueue(rid, q) for rid, q in sorted(self.queues.items()))
        return out



def _numbered_lines(lines: Iterable[str | bytes]) -> Iterator[tuple[int, str | bytes]]:
    """Non-empty lines without their line ending, numbered from 1 (for warnings)."""
    for n, line in enumerate(lines, 1):
        line = line.rstrip(b"\r\n") if isinstance(line, bytes) else line.rstrip("\r\n")
        if line:
            yield n, line

def restore_queue_store(lines: Iterable[str | bytes]) -> tuple[QueueStore, list[str]]:
    """Replay store-log lines (``readQueueStore``): bad or inapplicable lines are skipped and
    reported as warnings (the reference logs and skips them)."""
    store = QueueStore()
    warnings: list[str] = []
    for n, line in _numbered_lines(lines):
        try:
            store.apply(parse_record(line))
        except ParseError as e:
            warnings.append(f"line {n}: parse error: {e}")
        except StoreError as e:
            warnings.append(f"line {n}: {e.code}")
    return store, warnings


# ---------------------------------------------------------------- messages and the journal


@attrs.frozen(slots=True)
class Message:
    """A stored message, or the quota marker (``quota=True``, empty body) — smp.md §6.5."""

    msg_id: bytes
    ts: int
    notification: bool = False
    body: bytes = b""
    quota: bool = False


@attrs.frozen
class MessageAdded:
    rid: bytes
    message: Message


@attrs.frozen
class MessageRemoved:
    rid: bytes
    msg_id: bytes


@attrs.frozen
class QueueMessagesDeleted:
    rid: bytes


JournalRecord = Union[MessageAdded, MessageRemoved, QueueMessagesDeleted]


def encode_journal_record(r: JournalRecord) -> str:
    if isinstance(r, MessageAdded):
        m = r.message
        if m.quota:
            return f"Q {_b(r.rid)} {_b(m.msg_id)} {m.ts}"
        return f"M {_b(r.rid)} {_b(m.msg_id)} {m.ts} {'T' if m.notification else 'F'} {_b(m.body)}"
    if isinstance(r, MessageRemoved):
        return f"A {_b(r.rid)} {_b(r.msg_id)}"
    if isinstance(r, QueueMessagesDeleted):
        return f"D {_b(r.rid)}"
    raise TypeError(f"not a journal record: {r!r}")


def parse_journal_record(line: str | bytes) -> JournalRecord:
    if isinstance(line, bytes):
        try:
            line = line.decode("ascii")
        except UnicodeDecodeError as e:
            raise ParseError("journal line is not ASCII") from e
    c = _Cursor(line)
    tag = c.take_till(" ")
    c.lit(" ")
    rid = c.b64()
    r: JournalRecord
    if tag == "M":
        c.lit(" ")
        msg_id = c.b64()
        c.lit(" ")
        ts = c.decimal()
        c.lit(" ")
        flag = c.take_till(" ")
        if flag not in ("T", "F"):
            raise ParseError("bad message flag")
        c.lit(" ")
        r = MessageAdded(rid, Message(msg_id, ts, flag == "T", c.b64(allow_empty=True)))
    elif tag == "Q":
        c.lit(" ")
        msg_id = c.b64()
        c.lit(" ")
        r = MessageAdded(rid, Message(msg_id, c.decimal(), quota=True))
    elif tag == "A":
        c.lit(" ")
        r = MessageRemoved(rid, c.b64())
    elif tag == "D":
        r = QueueMessagesDeleted(rid)
    else:
        raise ParseError(f"unknown journal record {tag!r}")
    c.end()
    return r


@attrs.frozen
class RestoredMessages:
    """Result of :func:`restore_messages`."""

    queues: dict[bytes, list[Message]]
    stored: int
    expired: int
    warnings: list[str]


def restore_messages(
    lines: Iterable[str | bytes],
    live_queues: "set[bytes] | dict[bytes, object]",
    now: float,
    ttl: int | None,
) -> RestoredMessages:
    """Replay a journal into per-queue message lists (in order).

    Messages older than ``now - ttl`` are dropped (the quota marker is kept, as in the
    reference's ``importMessages``); messages of queues not in ``live_queues`` are dropped.
    """
    queues: dict[bytes, list[Message]] = {}
    warnings: list[str] = []
    for n, line in _numbered_lines(lines):
        try:
            r = parse_journal_record(line)
        except ParseError as e:
            warnings.append(f"journal line {n}: parse error: {e}")
            continue
        if isinstance(r, MessageAdded):
            queues.setdefault(r.rid, []).append(r.message)
        elif isinstance(r, MessageRemoved):
            msgs = queues.get(r.rid)
            if msgs:
                if msgs[0].msg_id == r.msg_id:
                    del msgs[0]
                else:
                    for i, m in enumerate(msgs):
                        if m.msg_id == r.msg_id:
                            del msgs[i]
                            break
        else:
            queues.pop(r.rid, None)
    old = None if ttl is None else now - ttl
    stored = expired = 0
    out: dict[bytes, list[Message]] = {}
    for rid, msgs in queues.items():
        if rid not in live_queues:
            continue
        kept = []
        for m in msgs:
            if old is not None and not m.quota and m.ts < old:
                expired += 1
            else:
                kept.append(m)
                stored += 0 if m.quota else 1
        if kept:
            out[rid] = kept
    return RestoredMessages(out, stored, expired, warnings)


def compacted_journal(queues: "dict[bytes, Iterable[Message]]") -> list[JournalRecord]:
    """The journal that recreates exactly these message queues."""
    return [MessageAdded(rid, m) for rid, msgs in sorted(queues.items()) for m in msgs]
