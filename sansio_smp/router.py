"""The SMP router as a pure machine: queues, messages, subscriptions, delivery, quotas, expiry,
notifications and persistence records (smp.md §4.2, §4.3, §4.8, §5.3, §5.5, §6).

No I/O, no clock, no randomness of its own: ``now`` (seconds, float) is passed to every entry
point and ``random_bytes`` is injected. One :class:`Router` serves many connections, each a
:class:`~sansio_smp.connection.RouterConnection` the caller owns::

    router = Router(RouterConfig(...), random_bytes)
    router.connect(conn_id, connection)           # after TLS, before the handshake
    router.handle_events(conn_id, connection.receive_data(block), now)
    router.handle_timer(now)                      # when router.next_timer() is due
    for cid in router.dirty_connections(): write(cid, connections[cid].data_to_send())
    router.disconnect(conn_id)

Semantics follow the reference's ``Server.hs`` (fns ``receive``, ``verifyTransmission``,
``processCommand``, ``serverThread``, ``sendPendingEvtsThread``, ``deliverNtfsThread``,
``expireMessagesThread``):

* a received block is handled as a unit: framing/credential/authorization errors are sent back
  as one batch, the verified commands are then executed **last to first** (the reference's
  right fold) and their responses sent as one batch in request order; up to 4 responses share
  the block with the first ``MSG`` a ``SUB`` produced, further ``MSG``s go in their own blocks;
* authorization is checked against the state at the start of the block, with a verification
  against a dummy key of the same kind when the queue or the key is missing (§6.7);
* a ``MSG`` pushed by a ``SEND`` is queued to the subscriber at once, so on the sender's own
  connection it precedes the ``OK`` (§6.4); ``END``/``DELD`` to a replaced subscriber wait for
  the pending-events timer (§6.3); ``NMSG`` for the notification-delivery timer (§5.5).

**Persistence contract** (``RouterConfig.persistence``): every change that must survive a
restart becomes a *store record* — a queue store-log line (smp.md §6.8) or a message-journal
line (:mod:`sansio_smp.store_log`). Records accumulate until the runtime calls
:meth:`Router.pending_store_writes`, appends them durably in order (one fsync per batch,
whatever the number of connections) and calls :meth:`Router.store_written`.

* Records that protect data a client is told is safe are *blocking*: every transmission
  produced after one is held back until it is durable, so e.g. ``OK`` to ``SEND`` (and the
  ``MSG`` it pushes) is only sent after the message is on disk. All queue store-log records
  (NEW/KEY/SKEY/DEL/...) and message additions are blocking.
* The removal of a message by ``ACK`` is *non-blocking*: the reply to ``ACK`` does not wait
  for it (it is still written in order, in the next group commit). Losing it in a crash only
  re-delivers an already acknowledged message after restart — duplicate delivery is normal in
  SMP, clients dedupe by msgId (smp.md §6.3) — and never loses one.
* If a write fails (``store_written(error)``), everything since the last durable point is
  rolled back (queue records, message queues, delivery state), held replies become
  ``ERR STORE <error>``, held events are dropped — the in-memory state equals the files again.
  An ``ACK`` whose reply already went out is undone like a crash would undo it: its message is
  back at the head of the queue and is pushed again to the subscriber (a duplicate).
"""

from __future__ import annotations

import base64
import datetime as _dt
from collections import deque
from typing import Callable, Hashable, Iterable, Sequence

import attrs

from .addresses import QueueMode
from .connection import (
    ConnectionClosed,
    ConnectionState,
    HandshakeComplete,
    RouterConnection,
    TransmissionError,
    TransmissionReceived,
)
from .crypto import (
    CryptoError,
    KeyAlgorithm,
    PrivateKey,
    PublicKey,
    cb_decrypt,
    cb_encrypt,
    cb_nonce,
    reverse_nonce,
    sha3_384,
)
from .encoding import Reader, b64_decode, sb
from .errors import LocalProtocolError, ParseError, RemoteProtocolError
from .messages import NMsgMeta, RcvMsgBody, RcvMsgQuota, encrypt_nmsg_meta, encrypt_rcv_msg_body
from .protocol import (
    AUTH,
    BLOCK,
    CRYPTO,
    PADDED_PROXIED_T_LENGTH,
    SESSION,
    RRes,
    TransportErrorCode,
    broker_transport,
    proxy_broker,
    INTERNAL,
    LARGE_MSG,
    MAX_MESSAGE_LEN,
    NO_MSG,
    QUOTA,
    SERVICE,
    Ack,
    BlockedError,
    CmdError,
    Command,
    CommandError,
    CommandParseError,
    Del,
    Deld,
    End,
    Err,
    ErrorType,
    Get,
    Ids,
    Info,
    Key,
    LDel,
    LGet,
    LKey,
    Lnk,
    LSet,
    Msg,
    MsgInfo,
    MsgType,
    NDel,
    New,
    Nid,
    NKey,
    NMsg,
    NSub,
    NSubs,
    Off,
    Ok,
    PFwd,
    Ping,
    Pong,
    Prxy,
    PROXY_BASIC_AUTH,
    PROXY_NO_SESSION,
    ProxyErrorType,
    QSub,
    QSubThread,
    Que,
    QueueInfo,
    QueueLinkData,
    Response,
    RFwd,
    RKey,
    Send,
    ServerNtfCreds,
    SimpleError,
    SKey,
    SOk,
    StoreError as StoreErrorType,
    Sub,
    Subs,
    SubscriptionMode,
    check_credentials,
    encode_response,
    max_message_length,
    parse_command,
)
from .store_log import (
    ACTIVE,
    OFF,
    AddNotifier,
    CreateLink,
    CreateQueue,
    DeleteLink,
    DeleteNotifier,
    DeleteQueue,
    JournalRecord,
    Message,
    MessageAdded,
    MessageRemoved,
    NtfCreds,
    QueueLink,
    QueueMessagesDeleted,
    QueueRec,
    QueueStore,
    SecureQueue,
    StoreError,
    StoreLogRecord,
    SuspendQueue,
    UpdateKeys,
    UpdateTime,
    day_start,
    encode_journal_record,
    encode_record,
)
from .transmission import (
    Transmission,
    TransmissionParams,
    encode_batch1,
    encode_transmission,
    parse_batch,
    parse_transmission,
)

RandomBytes = Callable[[int], bytes]
ConnId = Hashable
Verifier = Callable[[RouterConnection, Transmission, PublicKey], bool]

DAY = 86400
ID_SIZE = 24
NONCE_SIZE = 24
MAX_SOKS_WITH_MSG = 4  # responses that may share a block with the first MSG (fn ``send``)

# Dummy keys for constant-time AUTH (smp.md §6.7, §8; ``dummyKeyEd25519`` etc. in Server.hs).
DUMMY_KEYS = {
    KeyAlgorithm.ED25519: PublicKey.from_spki(b64_decode("MCowBQYDK2VwAyEA139Oqs4QgpqbAmB0o7rZf6T19ryl7E65k4AYe0kE3Qs=")),
    KeyAlgorithm.ED448: PublicKey.from_spki(
        b64_decode("MEMwBQYDK2VxAzoA6ibQc9XpkSLtwrf7PLvp81qW/etiumckVFImCMRdftcG/XopbOSaq9qyLhrgJWKOLyNrQPNVvpMA")
    ),
    KeyAlgorithm.X25519: PublicKey.from_spki(b64_decode("MCowBQYDK2VuAyEA4JGSMYht18H4mas/jHeBwfcM7jLwNYJNOAhi2/g4RXg=")),
}
_AUTH_KIND = {64: KeyAlgorithm.ED25519, 114: KeyAlgorithm.ED448, 80: KeyAlgorithm.X25519}


def default_verifier(conn: RouterConnection, t: Transmission, key: PublicKey) -> bool:
    """Verify ``t``'s authorization with ``key``: a signature, or the X25519 authenticator
    against the connection's session key (smp.md §4.2)."""
    return conn.verify_auth(t, key)


@attrs.define
class RouterConfig:
    """Router settings (smp.md §6.10 defaults)."""

    allow_new_queues: bool = True
    basic_auth: bytes | None = None  # INI [AUTH] create_password
    queue_quota: int = 128
    message_ttl: int | None = 21 * DAY  # seconds; None = never expire
    expire_interval: float = 7200.0
    expire_on_send: bool = False
    pending_end_interval: float = 15.0
    ntf_delivery_interval: float = 1.5
    ntf_ttl: int = 24 * 3600
    max_ntfs_per_notifier: int = 128
    persistence: bool = False
    queue_id_size: int = ID_SIZE
    msg_id_size: int = ID_SIZE


@attrs.frozen
class StoreWrites:
    """One batch of store records: queue store-log lines and message-journal lines (no newlines)."""

    queue_log: tuple[str, ...]
    journal: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.queue_log or self.journal)


# ---------------------------------------------------------------- internal state


class _MsgQueue:
    __slots__ = ("msgs", "can_write")

    def __init__(self) -> None:
        self.msgs: deque[Message] = deque()
        self.can_write = True


class _Sub:
    """A recipient subscription (``Sub``): ``get_mode`` = the ``ProhibitSub`` of GET clients."""

    __slots__ = ("get_mode", "delivered")

    def __init__(self, get_mode: bool) -> None:
        self.get_mode = get_mode
        self.delivered: tuple[bytes, int] | None = None


_Out = tuple[bytes, bytes, Response]  # corrId, entityId, response


class _Client:
    __slots__ = ("conn_id", "conn", "version", "subs", "ntf_subs", "held")

    def __init__(self, conn_id: ConnId, conn: RouterConnection) -> None:
        self.conn_id = conn_id
        self.conn = conn
        self.version: int | None = None
        self.subs: dict[bytes, _Sub] = {}
        self.ntf_subs: set[bytes] = set()
        self.held: deque[tuple[int, list[_Out]]] = deque()


@attrs.frozen
class _Ntf:
    seq: int
    msg_id: bytes
    ts: int
    nonce: bytes
    enc_meta: bytes


class _Epoch:
    """Snapshots of everything touched since the previous epoch, to roll back a failed write."""

    __slots__ = ("upto", "queues", "msgs", "delivered", "acks")

    def __init__(self) -> None:
        self.upto = 0
        self.queues: dict[bytes, QueueRec | None] = {}
        self.msgs: dict[bytes, tuple[tuple[Message, ...], bool] | None] = {}
        self.delivered: dict[bytes, list[tuple[ConnId, tuple[bytes, int] | None]]] = {}
        # ACKs that removed a message: (connection, queue, seq their reply was emitted at)
        self.acks: list[tuple[ConnId, bytes, int]] = []


class _Failed(Exception):
    def __init__(self, error: ErrorType) -> None:
        self.error = error


def _iso8601(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64std(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------- the router


class Router:
    """The router state machine (see the module docstring)."""

    def __init__(
        self,
        config: RouterConfig | None = None,
        random_bytes: RandomBytes | None = None,
        *,
        verifier: Verifier | None = None,
        store: QueueStore | None = None,
        messages: dict[bytes, Sequence[Message]] | None = None,
    ) -> None:
        if random_bytes is None:
            raise TypeError("Router needs an injected random_bytes")
        self.config = config or RouterConfig()
        self.random_bytes = random_bytes
        self.verifier = verifier or default_verifier
        self.store = store or QueueStore()
        self.msg_queues: dict[bytes, _MsgQueue] = {}
        for rid, msgs in (messages or {}).items():
            if rid in self.store.queues and msgs:
                mq = _MsgQueue()
                mq.msgs.extend(msgs)
                # a restored queue that holds a quota marker stays over quota until emptied
                mq.can_write = not any(m.quota for m in msgs)
                self.msg_queues[rid] = mq
        self.clients: dict[ConnId, _Client] = {}
        self.subscribers: dict[bytes, ConnId] = {}
        self._getters: dict[bytes, set[ConnId]] = {}  # connections using GET on a queue
        self.ntf_subscribers: dict[bytes, ConnId] = {}
        self.pending_events: dict[ConnId, list[tuple[bytes, Response]]] = {}
        self._events_due: float | None = None
        self.ntf_store: dict[bytes, list[_Ntf]] = {}
        self._ntfs_due: float | None = None
        self._expire_due: float | None = None
        self._dirty: dict[ConnId, None] = {}
        # persistence
        self._queue_log: list[str] = []
        self._journal: list[str] = []
        self._seq = 0  # store records produced so far
        self._barrier = 0  # output emitted now waits until this many records are durable
        self._durable = 0  # records known to be on disk
        self._block_acks: list[tuple[ConnId, bytes]] = []  # ACK removals in the current block
        self._inflight: deque[int] = deque()  # upto-seq of batches handed out
        self._epochs: list[_Epoch] = []  # closed (in flight) epochs then the open one
        self._open_epoch: _Epoch | None = None
        # statistics
        self.stats: dict[str, int] = {"msg_expired": 0, "msg_sent": 0, "msg_recv": 0}

    # ------------------------------------------------------------ connections

    def connect(self, conn_id: ConnId, connection: RouterConnection) -> None:
        """Register a connection (its router hello is already queued in ``connection``)."""
        if conn_id in self.clients:
            raise ValueError(f"connection {conn_id!r} already registered")
        self.clients[conn_id] = _Client(conn_id, connection)
        self._dirty[conn_id] = None

    def disconnect(self, conn_id: ConnId) -> None:
        """Forget a connection: its subscriptions end, its held output is dropped."""
        cl = self.clients.pop(conn_id, None)
        if cl is None:
            return
        for rid, sub in cl.subs.items():
            if self.subscribers.get(rid) == conn_id:
                del self.subscribers[rid]
            if sub.get_mode:
                self._forget_getter(rid, conn_id)
        for nid in cl.ntf_subs:
            if self.ntf_subscribers.get(nid) == conn_id:
                del self.ntf_subscribers[nid]
        self.pending_events.pop(conn_id, None)
        self._dirty.pop(conn_id, None)

    def _forget_getter(self, rid: bytes, conn_id: ConnId) -> None:
        getters = self._getters.get(rid)
        if getters is not None:
            getters.discard(conn_id)
            if not getters:
                del self._getters[rid]

    def dirty_connections(self) -> list[ConnId]:
        """Connections that have new bytes in ``data_to_send()`` since the last call."""
        out = [c for c in self._dirty if c in self.clients]
        self._dirty.clear()
        return out

    @property
    def connection_count(self) -> int:
        return len(self.clients)

    def has_subscriptions(self, conn_id: ConnId) -> bool:
        """Whether the connection holds a queue (``SUB``, ``NEW`` with subscribe) or notifier
        (``NSUB``) subscription: the reference's ``subClients`` membership, which keeps a
        connection from the inactive-client disconnect (smp.md §3.7). ``GET`` does not count."""
        cl = self.clients.get(conn_id)
        return cl is not None and (bool(cl.ntf_subs) or any(not s.get_mode for s in cl.subs.values()))

    # ------------------------------------------------------------ events

    def handle_events(self, conn_id: ConnId, events: Iterable[object], now: float) -> None:
        """Process the events of one received block (``RouterConnection.receive_data``)."""
        cl = self.clients.get(conn_id)
        if cl is None:
            return
        self._now = now
        block: list[TransmissionReceived | TransmissionError] = []
        for ev in events:
            if isinstance(ev, HandshakeComplete):
                cl.version = ev.version
            elif isinstance(ev, (TransmissionReceived, TransmissionError)):
                block.append(ev)
            elif isinstance(ev, ConnectionClosed):
                if block:
                    self._process_block(cl, block, now)
                    block = []
                self.disconnect(conn_id)
                return
        if block:
            self._process_block(cl, block, now)
        self._maybe_start_expiry(now)

    def _process_block(self, cl: _Client, block: list, now: float) -> None:
        version = cl.version or 6
        errors: list[_Out] = []
        verified: list[tuple[Transmission, Command, bytes | None]] = []
        for ev in block:
            if isinstance(ev, TransmissionError):
                errors.append((ev.corr_id, b"", Err(SimpleError(ev.code.encode()))))
                continue
            t = ev.transmission
            try:
                cmd = parse_command(t.command, version)
            except CommandParseError as e:
                errors.append((t.corr_id, t.entity_id, Err(e.error)))
                continue
            cred_err = check_credentials(cmd, bool(t.auth), t.entity_id)
            if cred_err is not None:
                errors.append((t.corr_id, t.entity_id, Err(cred_err)))
                continue
            result = self._verify(cl, t, cmd)
            if isinstance(result, ErrorType):
                errors.append((t.corr_id, t.entity_id, Err(result)))
            else:
                verified.append((t, cmd, result))
        if errors:
            self._emit(cl, errors)
        if not verified:
            return
        responses: list[_Out] = []
        msgs: list[_Out] = []
        for t, cmd, rid in reversed(verified):  # the reference folds from the right
            resp, msg = self._process_command(cl, version, t, cmd, rid, now)
            if resp is not None:
                responses.append(resp)
            if msg is not None:
                msgs.append(msg)
        responses.reverse()
        msgs.reverse()
        if self._block_acks:
            # the replies below go out once self._barrier is durable: remember at what seq, to
            # know at a rollback whether the client saw its ACK succeed (see _rollback)
            self._epoch().acks.extend((cid, rid, self._barrier) for cid, rid in self._block_acks)
            self._block_acks.clear()
        if not responses:
            return
        if msgs and len(responses) <= MAX_SOKS_WITH_MSG:
            self._emit(cl, responses + [msgs[0]])
            msgs = msgs[1:]
        else:
            self._emit(cl, responses)
        for m in msgs:
            self._emit(cl, [m])

    # ------------------------------------------------------------ authorization (§4.2, §6.7)

    def _verify_with(self, cl: _Client, t: Transmission, key: PublicKey) -> bool:
        """``verifyCmdAuthorization``: the auth kind is given by its length; a key of another
        kind is still "verified" against the dummy key of the auth's kind."""
        kind = _AUTH_KIND.get(len(t.auth))
        if kind is None:
            return False
        if key.alg is kind:
            return bool(self.verifier(cl.conn, t, key))
        self.verifier(cl.conn, t, DUMMY_KEYS[kind])
        return False

    def _dummy_verify(self, cl: _Client, t: Transmission) -> None:
        kind = _AUTH_KIND.get(len(t.auth))
        if kind is not None:
            self.verifier(cl.conn, t, DUMMY_KEYS[kind])

    def _verify(self, cl: _Client, t: Transmission, cmd: Command) -> bytes | None | ErrorType:
        """``verifyTransmission``: the recipient id the command acts on (or ``None``), or an error."""
        if t.service_sig is not None:
            return SERVICE  # no service sessions: a service signature is never expected
        if isinstance(cmd, New):
            return None if self._verify_with(cl, t, cmd.rcv_auth_key) else AUTH
        if isinstance(cmd, (Ping, Prxy, PFwd, RFwd)):
            return None
        if isinstance(cmd, (Subs, NSubs)):
            return SERVICE
        eid = t.entity_id
        if isinstance(cmd, (SKey, Send)):
            rid = self.store.by_sender(eid)
        elif isinstance(cmd, (LKey, LGet)):
            rid = self.store.by_link(eid)
        elif isinstance(cmd, NSub):
            rid = self.store.by_notifier(eid)
        else:
            rid = eid if eid in self.store.queues else None
        q = self.store.queues.get(rid) if rid is not None else None
        if q is None:
            self._dummy_verify(cl, t)
            return AUTH
        if isinstance(cmd, (SKey, LKey)):
            allowed = q.queue_mode is QueueMode.MESSAGING and (q.sender_key is None or q.sender_key == cmd.sender_key)
            if not allowed:
                self._dummy_verify(cl, t)
                return AUTH
            return rid if self._verify_with(cl, t, cmd.sender_key) else AUTH
        if isinstance(cmd, Send):
            if q.sender_key is None:
                return rid if not t.auth else AUTH
            return rid if self._verify_with(cl, t, q.sender_key) else AUTH
        if isinstance(cmd, LGet):
            return rid if q.is_contact else AUTH
        if isinstance(cmd, NSub):
            if q.notifier is None:
                self._dummy_verify(cl, t)
                return AUTH
            return rid if self._verify_with(cl, t, q.notifier.notifier_key) else AUTH
        # recipient commands: any of the recipient keys
        return rid if any(self._verify_with(cl, t, k) for k in q.recipient_keys) else AUTH

    # ------------------------------------------------------------ commands (§6.2)

    def _process_command(
        self, cl: _Client, version: int, t: Transmission, cmd: Command, rid: bytes | None, now: float
    ) -> tuple[_Out | None, _Out | None]:
        corr, eid = t.corr_id, t.entity_id

        def reply(resp: Response) -> tuple[_Out, None]:
            return (corr, eid, resp), None

        if isinstance(cmd, Ping):
            return (corr, b"", Pong()), None
        if isinstance(cmd, New):
            return reply(self._new(cl, corr, cmd, now))
        if isinstance(cmd, Prxy):
            return reply(Err(ProxyErrorType(PROXY_BASIC_AUTH)))
        if isinstance(cmd, PFwd):
            return reply(Err(ProxyErrorType(PROXY_NO_SESSION)))
        if isinstance(cmd, RFwd):
            return (corr, b"", self._forwarded(cl, t, cmd, now)), None
        if rid is None or rid not in self.store.queues:
            return reply(Err(AUTH))  # deleted by an earlier command of the same block
        try:
            if isinstance(cmd, NSub):
                return reply(self._nsub(cl, eid, rid))
            if isinstance(cmd, Off):
                self._write(rid, [SuspendQueue(rid)])
                return reply(Ok())
            if isinstance(cmd, Del):
                return reply(self._delete_queue(cl, rid))
            q = self.store.queues[rid]
            if not isinstance(cmd, Send) and isinstance(q.status, BlockingInfoT):
                return reply(Err(BlockedError(q.status)))
            self._update_time(rid, now)
            if isinstance(cmd, Sub):
                return self._sub(cl, corr, rid)
            if isinstance(cmd, Send):
                return reply(self._send(cl, version, rid, cmd, now))
            if isinstance(cmd, Get):
                return reply(self._get(cl, rid))
            if isinstance(cmd, Ack):
                return reply(self._ack(cl, rid, cmd.msg_id))
            if isinstance(cmd, Key):
                self._write(rid, [SecureQueue(rid, cmd.sender_key)])
                return reply(Ok())
            if isinstance(cmd, SKey):
                self._check_mode(rid, QueueMode.MESSAGING)
                self._write(rid, [SecureQueue(rid, cmd.sender_key)])
                return reply(Ok())
            if isinstance(cmd, LKey):
                self._check_mode(rid, QueueMode.MESSAGING)
                self._write(rid, [SecureQueue(rid, cmd.sender_key)])
                return reply(self._link_data(rid, eid))
            if isinstance(cmd, LGet):
                if not self.store.queues[rid].is_contact:
                    return reply(Err(AUTH))
                return reply(self._link_data(rid, eid))
            if isinstance(cmd, RKey):
                self._check_mode(rid, QueueMode.CONTACT)
                self._write(rid, [UpdateKeys(rid, cmd.keys)])
                return reply(Ok())
            if isinstance(cmd, LSet):
                return reply(self._lset(rid, cmd))
            if isinstance(cmd, LDel):
                if self.store.queues[rid].link is not None:
                    self._write(rid, [DeleteLink(rid)])
                return reply(Ok())
            if isinstance(cmd, NKey):
                return reply(self._nkey(cl, rid, cmd))
            if isinstance(cmd, NDel):
                self._delete_notifier(cl, rid)
                return reply(Ok())
            if isinstance(cmd, Que):
                return reply(self._queue_info(cl, rid))
        except _Failed as f:
            return reply(Err(f.error))
        return reply(Err(CmdError(CommandError.PROHIBITED)))  # SUBS/NSUBS never get here

    # -- private routing, relay side (smp.md §5.6 steps 3–5, fn ``processForwardedCommand``)
    def _forwarded(self, cl: _Client, t: Transmission, cmd: RFwd, now: float) -> Response:
        conn = cl.conn
        if conn.client_key is None or conn.params is None:
            return Err(ProxyErrorType(proxy_broker(broker_transport(TransportErrorCode.NO_AUTH))))
        try:
            sess_secret = conn.session_key.dh(conn.client_key)
            fwd = cb_decrypt(sess_secret, cb_nonce(t.corr_id), cmd.enc_fwd_transmission, padded=False)
        except RemoteProtocolError:
            return Err(CRYPTO)
        try:
            r = Reader(fwd)
            fwd_corr = r.sb()
            fwd_version = r.w16()
            fwd_key = PublicKey.parse(r)
            if fwd_key.alg is not KeyAlgorithm.X25519:
                raise ParseError("forwarded key must be X25519")
            et = r.tail()
        except ParseError:
            return Err(CmdError(CommandError.SYNTAX))
        client_nonce = cb_nonce(fwd_corr)
        try:
            client_secret = conn.session_key.dh(fwd_key)
            b = cb_decrypt(client_secret, client_nonce, et)
        except RemoteProtocolError:
            return Err(CRYPTO)
        params = TransmissionParams.smp(fwd_version, conn.params.session_id)
        try:
            items = parse_batch(b)
        except ParseError:
            items = []
        if len(items) != 1:
            return Err(BLOCK)
        inner: tuple[bytes, bytes, Response]
        try:
            it = parse_transmission(params, items[0])
        except ParseError:
            it = None
        if it is None or not it.auth_size_valid or (not params.implied_session and it.session_id != params.session_id):
            code = SESSION if it is not None and it.auth_size_valid else BLOCK
            inner = (it.corr_id if it is not None else b"", b"", Err(code))
        else:
            inner = self._forwarded_command(cl, fwd_version, it, now)
        try:
            r_block = encode_batch1(encode_transmission(params, inner[0], inner[1], encode_response(inner[2], fwd_version)))
            r2 = cb_encrypt(client_secret, reverse_nonce(client_nonce), r_block, PADDED_PROXIED_T_LENGTH)
        except LocalProtocolError:
            return Err(BLOCK)
        return RRes(cb_encrypt(sess_secret, reverse_nonce(cb_nonce(t.corr_id)), sb(fwd_corr) + r2))

    def _forwarded_command(self, cl: _Client, version: int, t: Transmission, now: float) -> tuple[bytes, bytes, Response]:
        try:
            cmd = parse_command(t.command, version)
        except CommandParseError as e:
            return t.corr_id, t.entity_id, Err(e.error)
        cred_err = check_credentials(cmd, bool(t.auth), t.entity_id)
        if cred_err is not None:
            return t.corr_id, t.entity_id, Err(cred_err)
        if not isinstance(cmd, (Send, SKey, LKey, LGet)):
            return t.corr_id, t.entity_id, Err(CmdError(CommandError.PROHIBITED))
        result = self._verify(cl, t, cmd)
        if isinstance(result, ErrorType):
            return t.corr_id, t.entity_id, Err(result)
        resp, _ = self._process_command(cl, version, t, cmd, result, now)
        assert resp is not None
        return resp

    def _check_mode(self, rid: bytes, mode: QueueMode) -> None:
        if self.store.queues[rid].queue_mode is not mode:
            raise _Failed(AUTH)

    def _link_data(self, rid: bytes, link_id: bytes) -> Response:
        q = self.store.queues[rid]
        if q.link is None or q.link.link_id != link_id:
            raise _Failed(AUTH)
        return Lnk(q.sender_id, QueueLinkData(q.link.fixed_data, q.link.user_data))

    def _update_time(self, rid: bytes, now: float) -> None:
        """A ``TIME`` record on the first access of each day (``updateQueueTime``)."""
        today = day_start(now)
        if self.store.queues[rid].updated_at != today:
            self._write(rid, [UpdateTime(rid, today)])

    # -- NEW
    def _new(self, cl: _Client, corr: bytes, cmd: New, now: float) -> Response:
        cfg = self.config
        if not cfg.allow_new_queues or (cfg.basic_auth is not None and cmd.basic_auth != cfg.basic_auth):
            return Err(AUTH)
        try:
            dh_priv = PrivateKey.generate(KeyAlgorithm.X25519, self.random_bytes)
            rcv_dh_secret = dh_priv.dh(cmd.rcv_dh_key)
            ntf_keys = None
            if cmd.ntf_creds is not None:
                ntf_priv = PrivateKey.generate(KeyAlgorithm.X25519, self.random_bytes)
                ntf_keys = (cmd.ntf_creds.auth_key, ntf_priv.dh(cmd.ntf_creds.dh_key), ntf_priv.public())
        except CryptoError:
            return Err(AUTH)
        req = cmd.queue_req_data
        mode = req.mode if req is not None else None
        client_ids = req is not None and req.sender_id is not None
        if client_ids:
            assert req is not None and req.sender_id is not None and req.link_data is not None
            if req.sender_id != sha3_384(corr)[:24]:
                return Err(CmdError(CommandError.PROHIBITED))
        for _ in range(3):
            rid = self.random_bytes(cfg.queue_id_size)
            link = None
            if client_ids:
                assert req is not None and req.sender_id is not None and req.link_data is not None
                sid = req.sender_id
                link_id = req.link_id if req.mode is QueueMode.CONTACT else self.random_bytes(cfg.queue_id_size)
                assert link_id is not None
                link = QueueLink(link_id, req.link_data.fixed_data, req.link_data.user_data)
            else:
                sid = self.random_bytes(cfg.queue_id_size)
            notifier = None
            if ntf_keys is not None:
                notifier = NtfCreds(self.random_bytes(cfg.queue_id_size), ntf_keys[0], ntf_keys[1])
            rec = QueueRec(
                (cmd.rcv_auth_key,), rcv_dh_secret, sid, None, mode, link, notifier, ACTIVE, day_start(now)
            )
            if self.store.has_id(rid, rec):
                if client_ids:
                    return Err(AUTH)  # no retry when the client chose the ids
                continue
            self._write(rid, [CreateQueue(rid, rec)])
            if cmd.sub_mode is SubscriptionMode.SUBSCRIBE:
                self._add_subscriber(cl, rid, _Sub(get_mode=False))
            return Ids(
                rid,
                sid,
                dh_priv.public(),
                mode,
                link.link_id if link is not None else None,
                None,
                ServerNtfCreds(notifier.notifier_id, ntf_keys[2]) if notifier is not None and ntf_keys else None,
            )
        return Err(INTERNAL)

    # -- subscriptions (§6.3)
    def _add_subscriber(self, cl: _Client, rid: bytes, sub: _Sub) -> None:
        cl.subs[rid] = sub
        prev = self.subscribers.get(rid)
        self.subscribers[rid] = cl.conn_id
        if prev is not None and prev != cl.conn_id:
            self._end_sub(prev, rid, End())

    def _end_sub(self, conn_id: ConnId, rid: bytes, event: Response) -> None:
        """The previous subscriber loses the queue and gets ``END``/``DELD`` later."""
        other = self.clients.get(conn_id)
        if other is None:
            return
        self._note_delivered(rid)
        other.subs.pop(rid, None)
        self._queue_event(conn_id, rid, event)

    def _queue_event(self, conn_id: ConnId, entity: bytes, event: Response) -> None:
        self.pending_events.setdefault(conn_id, []).append((entity, event))
        if self._events_due is None:
            self._events_due = self._now + self.config.pending_end_interval

    def _sub(self, cl: _Client, corr: bytes, rid: bytes) -> tuple[_Out | None, _Out | None]:
        self._note_delivered(rid)
        sub = cl.subs.get(rid)
        if sub is None:
            sub = _Sub(get_mode=False)
            self._add_subscriber(cl, rid, sub)
        elif sub.get_mode:
            return (corr, rid, Err(CmdError(CommandError.PROHIBITED))), None
        else:
            sub.delivered = None
        msg = None
        head = self._peek(rid)
        if head is not None:
            sub.delivered = (head.msg_id, head.ts)
            msg = (b"", rid, self._msg(rid, head))
        return (corr, rid, SOk()), msg

    def _nsub(self, cl: _Client, nid: bytes, rid: bytes) -> Response:
        q = self.store.queues[rid]
        if q.notifier is None or q.notifier.notifier_id != nid:
            return Err(AUTH)
        cl.ntf_subs.add(nid)
        prev = self.ntf_subscribers.get(nid)
        self.ntf_subscribers[nid] = cl.conn_id
        if prev is not None and prev != cl.conn_id:
            other = self.clients.get(prev)
            if other is not None:
                other.ntf_subs.discard(nid)
                self._queue_event(prev, nid, End())
        if self.ntf_store.get(nid):
            self._schedule_ntfs()
        return SOk()

    # -- messages (§6.4, §6.5)
    def _peek(self, rid: bytes) -> Message | None:
        mq = self.msg_queues.get(rid)
        return mq.msgs[0] if mq is not None and mq.msgs else None

    def _msg(self, rid: bytes, m: Message) -> Msg:
        """``encryptMsg``: the router → recipient encryption of one stored message (§5.3)."""
        q = self.store.queues[rid]
        body = RcvMsgQuota(m.ts) if m.quota else RcvMsgBody(m.ts, m.body, m.notification)
        return Msg(m.msg_id, encrypt_rcv_msg_body(q.rcv_dh_secret, m.msg_id, body))

    def _send(self, cl: _Client, version: int, rid: bytes, cmd: Send, now: float) -> Response:
        body = cmd.body
        if len(body) > max_message_length(version) or len(body) > MAX_MESSAGE_LEN:
            return Err(LARGE_MSG)
        q = self.store.queues[rid]
        if q.status == OFF:
            return Err(AUTH)
        if isinstance(q.status, BlockingInfoT):
            return Err(BlockedError(q.status))
        if q.link is not None and q.is_secured_messaging:
            self._write(rid, [DeleteLink(rid)])
        if self.config.expire_on_send and self.config.message_ttl is not None:
            self._expire_queue(rid, now - self.config.message_ttl)
        msg_id = self.random_bytes(self.config.msg_id_size)
        ts = int(now)
        mq = self.msg_queues.get(rid)
        if mq is None:
            mq = self.msg_queues[rid] = _MsgQueue()
        empty = not mq.msgs
        if not (mq.can_write or empty):
            return Err(QUOTA)
        self._note_msgs(rid)
        can_write = self.config.queue_quota > len(mq.msgs)
        mq.can_write = can_write
        if not can_write:
            marker = Message(msg_id, ts, quota=True)
            mq.msgs.append(marker)
            self._journal_write([MessageAdded(rid, marker)])
            return Err(QUOTA)
        msg = Message(msg_id, ts, cmd.notification, body)
        mq.msgs.append(msg)
        self._journal_write([MessageAdded(rid, msg)])
        self.stats["msg_sent"] += 1
        if empty:
            self._try_deliver(rid, msg)
        if cmd.notification and q.notifier is not None:
            self._enqueue_ntf(q.notifier, msg)
        return Ok()

    def _try_deliver(self, rid: bytes, msg: Message) -> None:
        """``tryDeliverMessage``: push to the subscriber if nothing is outstanding."""
        conn_id = self.subscribers.get(rid)
        if conn_id is None:
            return
        sub_cl = self.clients.get(conn_id)
        if sub_cl is None:
            return
        sub = sub_cl.subs.get(rid)
        if sub is None or sub.get_mode or sub.delivered is not None:
            return
        self._note_delivered(rid)
        sub.delivered = (msg.msg_id, msg.ts)
        self._emit(sub_cl, [(b"", rid, self._msg(rid, msg))])

    def _get(self, cl: _Client, rid: bytes) -> Response:
        self._note_delivered(rid)
        sub = cl.subs.get(rid)
        if sub is None:
            sub = cl.subs[rid] = _Sub(get_mode=True)  # not a server subscriber (no END)
            self._getters.setdefault(rid, set()).add(cl.conn_id)
        elif not sub.get_mode:
            return Err(CmdError(CommandError.PROHIBITED))
        sub.delivered = None
        head = self._peek(rid)
        if head is None:
            return Ok()
        sub.delivered = (head.msg_id, head.ts)
        return self._msg(rid, head)

    def _ack(self, cl: _Client, rid: bytes, msg_id: bytes) -> Response:
        sub = cl.subs.get(rid)
        if sub is None or sub.delivered is None:
            return Err(NO_MSG)
        if msg_id and sub.delivered[0] != msg_id:
            return Err(NO_MSG)
        head = self._peek(rid)
        deletes = head is not None and head.msg_id == msg_id
        if deletes:
            self._note_msgs(rid)  # snapshot (messages and delivery state) before any change
        else:
            self._note_delivered(rid)
        sub.delivered = None
        if deletes:
            # non-blocking: losing this record re-delivers an acknowledged message, never loses one
            self._delete_head(rid, blocking=False)
            if self.config.persistence:
                self._block_acks.append((cl.conn_id, rid))
        if sub.get_mode:
            return Ok()
        nxt = self._peek(rid)  # the next message, or the head if the ACK did not match it
        if nxt is None:
            return Ok()
        sub.delivered = (nxt.msg_id, nxt.ts)
        return self._msg(rid, nxt)

    def _delete_head(self, rid: bytes, blocking: bool = True) -> None:
        mq = self.msg_queues[rid]
        self._note_msgs(rid)
        m = mq.msgs.popleft()
        if not m.quota:
            self.stats["msg_recv"] += 1
        self._journal_write([MessageRemoved(rid, m.msg_id)], blocking)
        if not mq.msgs:
            del self.msg_queues[rid]

    # -- queue records
    def _lset(self, rid: bytes, cmd: LSet) -> Response:
        q = self.store.queues[rid]
        if q.is_secured_messaging:
            return Err(AUTH)
        if q.link is not None and q.link.link_id != cmd.link_id:
            return Err(AUTH)
        self._write(rid, [CreateLink(rid, cmd.link_id, cmd.link_data.fixed_data, cmd.link_data.user_data)])
        return Ok()

    def _nkey(self, cl: _Client, rid: bytes, cmd: NKey) -> Response:
        try:
            priv = PrivateKey.generate(KeyAlgorithm.X25519, self.random_bytes)
            secret = priv.dh(cmd.rcv_ntf_dh_key)
        except CryptoError:
            return Err(AUTH)
        old = self.store.queues[rid].notifier
        for _ in range(3):
            nid = self.random_bytes(self.config.queue_id_size)
            if nid in self.store.notifiers:
                continue
            self._write(rid, [AddNotifier(rid, NtfCreds(nid, cmd.notifier_key, secret))])
            if old is not None:
                self._notifier_deleted(cl, old.notifier_id)
            return Nid(nid, priv.public())
        return Err(INTERNAL)

    def _delete_notifier(self, cl: _Client, rid: bytes) -> None:
        old = self.store.queues[rid].notifier
        if old is None:
            return
        self._write(rid, [DeleteNotifier(rid)])
        self._notifier_deleted(cl, old.notifier_id)

    def _notifier_deleted(self, cl: _Client, nid: bytes) -> None:
        self.ntf_store.pop(nid, None)
        prev = self.ntf_subscribers.pop(nid, None)
        if prev is None:
            return
        other = self.clients.get(prev)
        if other is not None:
            other.ntf_subs.discard(nid)
            if prev != cl.conn_id:
                self._queue_event(prev, nid, Deld())

    def _delete_queue(self, cl: _Client, rid: bytes) -> Response:
        q = self.store.queues[rid]
        self._note_delivered(rid)
        self._write(rid, [DeleteQueue(rid)])
        if rid in self.msg_queues:
            self._note_msgs(rid)
            del self.msg_queues[rid]
        self._journal_write([QueueMessagesDeleted(rid)])
        cl.subs.pop(rid, None)
        for getter in self._getters.pop(rid, ()):
            other = self.clients.get(getter)
            if other is not None:
                other.subs.pop(rid, None)
        prev = self.subscribers.pop(rid, None)
        if prev is not None and prev != cl.conn_id:
            other = self.clients.get(prev)
            if other is not None:
                other.subs.pop(rid, None)
                self._queue_event(prev, rid, Deld())
        if q.notifier is not None:
            self._notifier_deleted(cl, q.notifier.notifier_id)
        return Ok()

    def _queue_info(self, cl: _Client, rid: bytes) -> Response:
        q = self.store.queues[rid]
        mq = self.msg_queues.get(rid)
        sub = cl.subs.get(rid)
        qsub = None
        if sub is not None:
            thread = QSubThread.PROHIBIT_SUB if sub.get_mode else QSubThread.NO_SUB
            qsub = QSub(thread, _b64std(sub.delivered[0]) if sub.delivered else None)
        head = self._peek(rid)
        msg_info = None
        if head is not None:
            msg_info = MsgInfo(_b64std(head.msg_id), _iso8601(head.ts), MsgType.QUOTA if head.quota else MsgType.MESSAGE)
        size = len(mq.msgs) if mq is not None else 0
        return Info(QueueInfo(q.sender_key is not None, q.notifier is not None, size, qsub, msg_info))

    # -- notifications (§5.5)
    def _enqueue_ntf(self, creds: NtfCreds, msg: Message) -> None:
        nonce = self.random_bytes(NONCE_SIZE)
        enc = encrypt_nmsg_meta(creds.rcv_ntf_dh_secret, nonce, NMsgMeta(msg.msg_id, msg.ts))
        lst = self.ntf_store.setdefault(creds.notifier_id, [])
        lst.append(_Ntf(self._seq, msg.msg_id, msg.ts, nonce, enc))
        if len(lst) > self.config.max_ntfs_per_notifier:
            del lst[0]
        if creds.notifier_id in self.ntf_subscribers:
            self._schedule_ntfs()

    def _schedule_ntfs(self) -> None:
        if self._ntfs_due is None:
            self._ntfs_due = self._now + self.config.ntf_delivery_interval

    # ------------------------------------------------------------ timers

    _now: float = 0.0

    def next_timer(self) -> float | None:
        """The earliest time :meth:`handle_timer` has work to do, or ``None``."""
        due = None  # (no list: the runtime asks after every block)
        for t in (self._events_due, self._ntfs_due, self._expire_due):
            if t is not None and (due is None or t < due):
                due = t
        return due

    def _maybe_start_expiry(self, now: float) -> None:
        if self._expire_due is None:
            self._expire_due = now + self.config.expire_interval

    def start(self, now: float) -> None:
        """Start the periodic timers (optional: the first event does it too)."""
        self._now = now
        self._maybe_start_expiry(now)

    def handle_timer(self, now: float) -> None:
        """Flush pending ``END``/``DELD`` events and ``NMSG``s, expire messages — when due."""
        self._now = now
        if self._events_due is not None and now >= self._events_due:
            self._events_due = None
            self._flush_events()
        if self._ntfs_due is not None and now >= self._ntfs_due:
            self._ntfs_due = None
            self._flush_ntfs(now)
        if self._expire_due is not None and now >= self._expire_due:
            self._expire_due = now + self.config.expire_interval
            if self.config.message_ttl is not None:
                self.expire_messages(now)
            self._expire_ntfs(now)
        self._maybe_start_expiry(now)

    def _flush_events(self) -> None:
        pending, self.pending_events = self.pending_events, {}
        for conn_id, evts in pending.items():
            cl = self.clients.get(conn_id)
            if cl is not None:
                self._emit(cl, [(b"", entity, ev) for entity, ev in evts])

    def _flush_ntfs(self, now: float) -> None:
        old = now - self.config.ntf_ttl
        later = False
        for nid in list(self.ntf_store):
            ntfs = [n for n in self.ntf_store[nid] if n.ts >= old]
            if not ntfs:
                del self.ntf_store[nid]
                continue
            conn_id = self.ntf_subscribers.get(nid)
            cl = self.clients.get(conn_id) if conn_id is not None else None
            if cl is None:
                self.ntf_store[nid] = ntfs
                continue
            ready = [n for n in ntfs if n.seq <= self._durable]
            rest = [n for n in ntfs if n.seq > self._durable]
            if ready:
                self._emit(cl, [(b"", nid, NMsg(n.nonce, n.enc_meta)) for n in ready])
            if rest:
                self.ntf_store[nid] = rest
                later = True
            else:
                del self.ntf_store[nid]
        if later:
            self._schedule_ntfs()

    def _expire_ntfs(self, now: float) -> None:
        """Drop notifications older than ``ntf_ttl`` that nobody collected (``expireNtfsThread``)."""
        old = now - self.config.ntf_ttl
        for nid in list(self.ntf_store):
            kept = [n for n in self.ntf_store[nid] if n.ts >= old]
            if kept:
                self.ntf_store[nid] = kept
            else:
                del self.ntf_store[nid]

    def expire_messages(self, now: float) -> int:
        """Delete messages older than the TTL from the head of every queue (``deleteExpireMsgs_``)."""
        ttl = self.config.message_ttl
        if ttl is None:
            return 0
        old = now - ttl
        n = 0
        for rid in list(self.msg_queues):
            n += self._expire_queue(rid, old)
        return n

    def _expire_queue(self, rid: bytes, old: float) -> int:
        n = 0
        mq = self.msg_queues.get(rid)
        while mq is not None and mq.msgs and not mq.msgs[0].quota and mq.msgs[0].ts < old:
            self._delete_head(rid)
            mq = self.msg_queues.get(rid)
            n += 1
        self.stats["msg_expired"] += n
        return n

    # ------------------------------------------------------------ output

    def _emit(self, cl: _Client, items: list[_Out]) -> None:
        cl.held.append((self._barrier, items))
        self._release(cl)

    def _release(self, cl: _Client) -> None:
        sent = False
        while cl.held and cl.held[0][0] <= self._durable:
            _, items = cl.held.popleft()
            if cl.conn.state is not ConnectionState.ESTABLISHED or cl.version is None:
                continue
            v = cl.version
            cl.conn.send_transmissions([cl.conn.encode(c, e, encode_response(r, v)) for c, e, r in items])
            sent = True
        if sent:
            self._dirty[cl.conn_id] = None

    # ------------------------------------------------------------ persistence

    def _epoch(self) -> _Epoch:
        if self._open_epoch is None:
            self._open_epoch = _Epoch()
            self._epochs.append(self._open_epoch)
        return self._open_epoch

    def _snapshotting(self) -> bool:
        return self.config.persistence and (self._seq > self._durable or self._open_epoch is not None)

    def _note_queue(self, rid: bytes) -> None:
        ep = self._epoch()
        if rid not in ep.queues:
            ep.queues[rid] = self.store.queues.get(rid)

    def _note_msgs(self, rid: bytes) -> None:
        if not self.config.persistence:
            return
        ep = self._epoch()
        if rid not in ep.msgs:
            mq = self.msg_queues.get(rid)
            ep.msgs[rid] = (tuple(mq.msgs), mq.can_write) if mq is not None else None
        self._note_delivered(rid)

    def _note_delivered(self, rid: bytes) -> None:
        """Remember delivery state of ``rid`` before it changes while a write is pending."""
        if not self._snapshotting():
            return
        ep = self._epoch()
        if rid not in ep.delivered:
            holders = set(self._getters.get(rid, ()))
            sub_conn = self.subscribers.get(rid)
            if sub_conn is not None:
                holders.add(sub_conn)
            saved = []
            for cid in holders:
                cl = self.clients.get(cid)
                if cl is not None and rid in cl.subs:
                    saved.append((cid, cl.subs[rid].delivered))
            ep.delivered[rid] = saved

    def _write(self, rid: bytes, records: list[StoreLogRecord]) -> None:
        """Apply queue-store records (raising :class:`_Failed` with the reference error) and
        queue their log lines."""
        if self.config.persistence:
            self._note_queue(rid)
            self._note_delivered(rid)
        for r in records:
            try:
                self.store.apply(r)
            except StoreError as e:
                raise _Failed(AUTH if e.code in ("AUTH", "DUPLICATE_") else INTERNAL) from None
            if self.config.persistence:
                self._queue_log.append(encode_record(r))
                self._seq += 1
                self._barrier = self._seq  # queue records are always blocking

    def _journal_write(self, records: list[JournalRecord], blocking: bool = True) -> None:
        """Queue message-journal lines; a *blocking* record holds back all output produced after
        it until it is durable (see the module docstring)."""
        if self.config.persistence:
            self._journal.extend(encode_journal_record(r) for r in records)
            self._seq += len(records)
            if blocking:
                self._barrier = self._seq

    @property
    def has_pending_store_writes(self) -> bool:
        """Records are waiting for :meth:`pending_store_writes`."""
        return bool(self._queue_log or self._journal)

    @property
    def store_write_urgent(self) -> bool:
        """A pending record is blocking (output waits for it): write now. If ``False`` the
        pending records (``ACK`` removals) hold nothing back and may wait for a later batch."""
        handed_out = self._inflight[-1] if self._inflight else self._durable
        return self._barrier > handed_out

    @property
    def store_idle(self) -> bool:
        """No record is pending or in flight: memory equals the files."""
        return not (self._queue_log or self._journal or self._inflight)

    def pending_store_writes(self) -> StoreWrites:
        """Take the records produced since the last call (empty if none). The caller must
        append them durably and then call :meth:`store_written` (once per non-empty batch)."""
        if not (self._queue_log or self._journal):
            return StoreWrites((), ())
        out = StoreWrites(tuple(self._queue_log), tuple(self._journal))
        self._queue_log, self._journal = [], []
        self._inflight.append(self._seq)
        if self._open_epoch is not None:
            self._open_epoch.upto = self._seq
            self._open_epoch = None
        return out

    def store_written(self, error: str | None = None) -> None:
        """The oldest batch from :meth:`pending_store_writes` is durable (``error is None``)
        or failed to be written (then everything not yet durable is rolled back)."""
        if not self._inflight:
            raise ValueError("store_written without a pending batch")
        if error is None:
            self._durable = self._inflight.popleft()
            while self._epochs and self._epochs[0] is not self._open_epoch and self._epochs[0].upto <= self._durable:
                self._epochs.pop(0)
            if self._seq == self._durable:
                # nothing is undurable: no change since the last write can be rolled back
                self._epochs.clear()
                self._open_epoch = None
        else:
            self._rollback(error)
        for cl in list(self.clients.values()):
            if cl.held:
                self._release(cl)

    def _rollback(self, error: str) -> None:
        # ACKs whose reply already went out (emitted at a seq that was durable): their clients
        # believe the message is gone, but its removal was never written
        seen_acks = [(cid, rid) for ep in self._epochs for cid, rid, seq in ep.acks if seq <= self._durable]
        for ep in reversed(self._epochs):
            for rid, rec in ep.queues.items():
                self.store.put(rid, rec)
            for rid, saved in ep.msgs.items():
                if saved is None:
                    self.msg_queues.pop(rid, None)
                else:
                    mq = _MsgQueue()
                    mq.msgs.extend(saved[0])
                    mq.can_write = saved[1]
                    self.msg_queues[rid] = mq
            for rid, subs in ep.delivered.items():
                for cid, delivered in subs:
                    cl = self.clients.get(cid)
                    if cl is not None and rid in cl.subs:
                        cl.subs[rid].delivered = delivered
        self._epochs.clear()
        self._open_epoch = None
        self._queue_log, self._journal = [], []
        self._inflight.clear()
        self._seq = self._barrier = self._durable
        self._block_acks.clear()
        err = Err(StoreErrorType(error))
        for cl in self.clients.values():
            converted: deque[tuple[int, list[_Out]]] = deque()
            for _, items in cl.held:
                replies = [(c, e, err) for c, e, _r in items if c]
                if replies:
                    converted.append((self._durable, replies))
            cl.held = converted
        self._redeliver_after_rollback(seen_acks)
        for nid in list(self.ntf_store):
            kept = [n for n in self.ntf_store[nid] if n.seq <= self._durable]
            if kept:
                self.ntf_store[nid] = kept
            else:
                del self.ntf_store[nid]

    def _redeliver_after_rollback(self, acks: list[tuple[ConnId, bytes]]) -> None:
        """After a rollback undid ``ACK`` s whose reply was already sent: push the queue head
        again to each such subscriber, as a restart after a crash would (a duplicate its client
        drops by msgId, smp.md §6.3). ``GET`` users get it from their next ``GET``."""
        for cid, rid in dict.fromkeys(acks):
            cl = self.clients.get(cid)
            sub = cl.subs.get(rid) if cl is not None else None
            if cl is None or sub is None or sub.get_mode or self.subscribers.get(rid) != cid:
                continue
            if rid not in self.store.queues:
                continue
            head = self._peek(rid)
            sub.delivered = None
            if head is not None:
                sub.delivered = (head.msg_id, head.ts)
                cl.held.append((self._durable, [(b"", rid, self._msg(rid, head))]))

    # ------------------------------------------------------------ introspection (tests, stats)

    def queue_messages(self, rid: bytes) -> list[Message]:
        mq = self.msg_queues.get(rid)
        return list(mq.msgs) if mq is not None else []

    def all_messages(self) -> dict[bytes, list[Message]]:
        return {rid: list(mq.msgs) for rid, mq in self.msg_queues.items() if mq.msgs}


# the status type of blocked queues (protocol.BlockingInfo); imported late to keep names short
from .protocol import BlockingInfo as BlockingInfoT  # noqa: E402
