"""The sans-IO SMP client machine: commands, correlation, pushes, keep-alive.

smp.md §3.7, §4, §5.3, §5.4, §6.3, §6.4.

:class:`SMPClient` sits on a :class:`~sansio_smp.connection.ClientConnection` (handshake, block
encryption, batching) and adds what the reference ``Simplex.Messaging.Client`` does:

* every command gets a fresh 24-byte corrId from the injected ``random_bytes`` (it is also the
  nonce of X25519 authenticators, §4.2); command helpers return that corrId;
* a table of pending commands keyed by corrId, holding the command, its entity and the queue keys
  it needs; responses are matched by corrId and checked like ``processMsg``: the response entity
  must equal the command's, the response kind must fit the command (``IDS`` for ``NEW``, ``OK``/``SOK``
  for ``SUB`` …), §4.3's response-side entity rules hold, else a typed error;
* transmissions with an empty corrId are router pushes: ``MSG``, ``END``, ``DELD``, ``NMSG``, ``ENDS``;
* the set of subscribed queues (``SUB``/``NEW`` in subscribe mode add; ``END``/``DELD``/``DEL`` remove);
* keep-alive from injected time (§3.7): only once something is subscribed, a ``PING`` when nothing was
  received for 600 s; after 3 consecutive command timeouts *and* 15 minutes without any received data
  the connection is dropped (:class:`Disconnected`);
* ``MSG`` bodies are decrypted: the router layer (§5.3) with the queue's DH secret from ``IDS``, then,
  if the queue has an e2e key, the per-queue e2e envelope (§5.4), remembering the sender's e2e key
  from the first (confirmation) message.

The machine never does I/O: feed it bytes (:meth:`SMPClient.receive_data`), take the bytes to write
(:meth:`SMPClient.data_to_send`), and call :meth:`SMPClient.handle_timer` at
:meth:`SMPClient.next_timer`. Time is passed as ``now`` (seconds, any monotonic origin).

Events: :class:`Connected`, :class:`CommandResult`, :class:`CommandFailed`, :class:`ServerPush`,
:class:`UnexpectedTransmission`, :class:`Disconnected`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence, Union

import attrs

from . import messages as m
from . import protocol as p
from .addresses import ProtocolServer, QueueMode, SMPQueueAddress, SMPQueueUri
from .connection import (
    ClientConnection,
    ConnectionClosed,
    ConnectionState,
    HandshakeComplete,
    SessionKeyVerifier,
    TransmissionError,
    TransmissionReceived,
)
from .crypto import KeyAlgorithm, PrivateKey, PublicKey
from .encoding import VersionRange
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .handshake import SUPPORTED_SMP_VERSIONS
from .transmission import Transmission

RandomBytes = Callable[[int], bytes]

CORR_ID_SIZE = 24
PING_INTERVAL = 600.0  # smpPingInterval (smp.md §3.7)
PING_COUNT = 3  # smpPingCount
RECOVER_WINDOW = 15 * 60.0  # drop only after 15 minutes without received data
COMMAND_TIMEOUT = 30.0  # background command timeout (smp.md §6.10)
CURRENT_SMP_CLIENT_VERSION = 4  # e2e PubHeader version (smp.md §1.2)
SMP_CLIENT_VERSIONS = VersionRange(1, CURRENT_SMP_CLIENT_VERSION)


# ---------------------------------------------------------------- errors


class ClientError(ProtocolError):
    """Base of the client-side failures of one command (reference ``ProtocolClientError``)."""


class ResponseError(ClientError, RemoteProtocolError):
    """The response did not parse or broke §4.3's entity rules (``PCEResponseError``)."""


class UnexpectedResponse(ClientError, RemoteProtocolError):
    """A well-formed response that does not answer the command (``PCEUnexpectedResponse``)."""


class ResponseTimeout(ClientError):
    """No response within the command timeout (``PCEResponseTimeout``)."""


class ConnectionLost(ClientError):
    """The connection closed before the response arrived."""


class SMPErrorResponse(ClientError):
    """The router answered ``ERR`` (``PCEProtocolError``); ``error`` is the typed ``ErrorType``."""

    def __init__(self, error: p.ErrorType) -> None:
        super().__init__(error.encode().decode("utf-8", "replace"))
        self.error = error


class MessageDecryptError(ClientError, RemoteProtocolError):
    """A delivered message could not be decrypted or parsed (router layer or e2e layer)."""


# ---------------------------------------------------------------- queues


@attrs.define
class RecipientQueue:
    """What the recipient keeps for one queue (reference ``RcvQueue``, reduced).

    ``rcv_dh_secret`` = X25519(our rcvDhKey, router ``srvDh`` from IDS) opens ``MSG`` bodies (§5.3);
    ``e2e_key`` is the private half of the queue URI's ``dh=`` key (§5.4); ``sender_e2e_key`` is
    learned from the first message that carries it."""

    server: ProtocolServer | None
    rcv_id: bytes
    snd_id: bytes
    rcv_auth_key: PrivateKey
    rcv_dh_secret: bytes
    e2e_key: PrivateKey | None = None
    queue_mode: QueueMode | None = None
    sender_e2e_key: PublicKey | None = None
    link_id: bytes | None = None
    notifier_id: bytes | None = None

    @property
    def sender_can_secure(self) -> bool:
        return self.queue_mode is QueueMode.MESSAGING

    def queue_uri(self, client_versions: VersionRange = SMP_CLIENT_VERSIONS) -> SMPQueueUri:
        """The SMP queue URI to give the sender (needs ``server`` and ``e2e_key``)."""
        if self.server is None or self.e2e_key is None:
            raise LocalProtocolError("a queue URI needs the server address and the e2e key")
        addr = SMPQueueAddress(self.server, self.snd_id, self.e2e_key.public(), self.queue_mode)
        return SMPQueueUri(client_versions, addr)


@attrs.define
class SenderQueue:
    """What the sender keeps for one queue (reference ``SndQueue``, reduced).

    ``snd_auth_key`` authorizes SEND once the queue is secured (by ``SKEY``, or by the recipient's
    ``KEY`` after the unsigned confirmation); ``e2e_key`` is the sender's ephemeral X25519 key whose
    public half travels in the first message's ``PubHeader``. The machine sets ``secured`` when
    ``SKEY`` succeeds and ``confirmed`` when the first message was accepted."""

    server: ProtocolServer | None
    snd_id: bytes
    recipient_dh_key: PublicKey
    snd_auth_key: PrivateKey
    e2e_key: PrivateKey
    queue_mode: QueueMode | None = None
    client_version: int = CURRENT_SMP_CLIENT_VERSION
    secured: bool = False
    confirmed: bool = False

    @property
    def sender_can_secure(self) -> bool:
        return self.queue_mode is QueueMode.MESSAGING

    @property
    def e2e_secret(self) -> bytes:
        return self.e2e_key.dh(self.recipient_dh_key)

    def next_headers(self) -> tuple[bool, m.PrivHeader]:
        """(is the next message the confirmation?, its PrivHeader) — see :meth:`SMPClient.send_message`."""
        confirmation = not self.confirmed
        if confirmation and not self.secured:
            return True, m.PHConfirmation(self.snd_auth_key.public())
        return confirmation, m.PHEmpty()

    @property
    def max_body_length(self) -> int:
        """The longest body the next :meth:`SMPClient.send_message` accepts."""
        return max_body_length(*self.next_headers())

    @staticmethod
    def from_uri(
        uri: SMPQueueUri, random_bytes: RandomBytes, auth_alg: KeyAlgorithm = KeyAlgorithm.ED25519
    ) -> "SenderQueue":
        """New sender keys for a queue URI; the e2e version is the highest both support."""
        common = uri.versions.intersect(SMP_CLIENT_VERSIONS)
        if common is None:
            raise LocalProtocolError(f"queue URI client versions {uri.versions} are not supported")
        a = uri.address
        return SenderQueue(
            a.server,
            a.sender_id,
            a.dh_key,
            PrivateKey.generate(auth_alg, random_bytes),
            PrivateKey.generate(KeyAlgorithm.X25519, random_bytes),
            a.queue_mode,
            common.max,
        )


@attrs.frozen
class ReceivedMessage:
    """A decrypted ``MSG`` (§5.3, §5.4).

    ``quota`` is the router's quota marker (no body). When the queue has an e2e key, ``body`` is the
    e2e plaintext and ``priv_header`` its ``PrivHeader`` (a :class:`~sansio_smp.messages.PHConfirmation`
    carries the sender's key for ``KEY``); otherwise ``body`` is the body as sent. ``error`` is set
    (and ``body`` empty) when decryption failed; such a message must still be acknowledged."""

    rcv_id: bytes
    msg_id: bytes
    ts: int = 0
    notification: bool = False
    body: bytes = b""
    quota: bool = False
    priv_header: m.PrivHeader | None = None
    sender_e2e_key: PublicKey | None = None
    error: MessageDecryptError | None = None


# ---------------------------------------------------------------- events


@attrs.frozen
class Connected:
    """The transport handshake finished (smp.md §3)."""

    version: int
    block_encryption: bool


@attrs.frozen
class CommandResult:
    """The router answered command ``corr_id``; ``response`` may be :class:`~sansio_smp.protocol.Err`.

    ``queue`` is set for ``NEW`` (the new :class:`RecipientQueue`), ``message`` for a ``MSG`` answer
    to ``GET``/``ACK``/``SUB``."""

    corr_id: bytes
    command: p.Command
    entity_id: bytes
    response: p.Response
    queue: RecipientQueue | None = None
    message: ReceivedMessage | None = None

    @property
    def error(self) -> p.ErrorType | None:
        return self.response.error if isinstance(self.response, p.Err) else None

    @property
    def ok(self) -> bool:
        return not isinstance(self.response, p.Err)


@attrs.frozen
class CommandFailed:
    """Command ``corr_id`` failed without a usable answer (bad/unexpected response, timeout, closed)."""

    corr_id: bytes
    command: p.Command
    entity_id: bytes
    error: ClientError


@attrs.frozen
class ServerPush:
    """A router event with an empty corrId: ``MSG``, ``END``, ``DELD``, ``NMSG`` or ``ENDS`` (§6.3).

    ``MSG`` replies to ``ACK`` (the next message) are also reported here, after the ACK's result."""

    entity_id: bytes
    response: p.Response
    message: ReceivedMessage | None = None


@attrs.frozen
class UnexpectedTransmission:
    """A transmission that answers nothing we sent, or a push we cannot accept (``STUnexpectedError``)."""

    corr_id: bytes
    entity_id: bytes
    error: RemoteProtocolError


@attrs.frozen
class Disconnected:
    """The connection is over (peer closed, fatal transport error, or keep-alive gave up)."""

    reason: str


Event = Union[Connected, CommandResult, CommandFailed, ServerPush, UnexpectedTransmission, Disconnected]

PUSH_RESPONSES = (p.Msg, p.End, p.Deld, p.NMsg, p.Ends)

# responses (besides ERR) that answer each command (reference Client.hs per-command functions)
_EXPECTED: dict[type[p.Command], tuple[type[p.Response], ...]] = {
    p.New: (p.Ids,),
    p.Sub: (p.Ok, p.SOk, p.Msg),
    p.NSub: (p.Ok, p.SOk),
    p.Subs: (p.SOks,),
    p.NSubs: (p.SOks,),
    p.Key: (p.Ok,),
    p.SKey: (p.Ok,),
    p.RKey: (p.Ok,),
    p.LSet: (p.Ok,),
    p.LDel: (p.Ok,),
    p.NDel: (p.Ok,),
    p.Off: (p.Ok,),
    p.Del: (p.Ok,),
    p.Send: (p.Ok,),
    p.Get: (p.Ok, p.Msg),
    p.Ack: (p.Ok, p.Msg),
    p.NKey: (p.Nid,),
    p.Que: (p.Info,),
    p.Ping: (p.Pong,),
    p.LKey: (p.Lnk,),
    p.LGet: (p.Lnk,),
    p.Prxy: (p.PKey,),
    p.PFwd: (p.PRes,),
}


@attrs.define
class _Pending:
    corr_id: bytes
    entity_id: bytes
    command: p.Command
    deadline: float
    internal: bool = False  # keep-alive PING: no events
    new_queue: tuple[PrivateKey, PrivateKey, PrivateKey | None, ProtocolServer | None] | None = None
    sender_queue: SenderQueue | None = None
    confirmation: bool = False


def _describe(resp: p.Response) -> str:
    return type(resp).__name__.upper()


# ---------------------------------------------------------------- the machine


class SMPClient:
    """One client connection to one router (reference ``ProtocolClient`` for SMP), sans-IO.

    ``key_hash`` is the router identity from its address; ``session_id`` the connection's
    tls-unique; ``peer_chain`` the TLS chain and ``verify_session_key`` the check of the hello's
    signed session key (:func:`sansio_smp.x509.verify_session_key`). ``server`` (optional) is only
    recorded in the queues created here."""

    def __init__(
        self,
        *,
        key_hash: bytes,
        session_id: bytes,
        random_bytes: RandomBytes,
        now: float = 0.0,
        peer_chain: Sequence[bytes] = (),
        verify_session_key: SessionKeyVerifier | None = None,
        versions: VersionRange = SUPPORTED_SMP_VERSIONS,
        server: ProtocolServer | None = None,
        command_timeout: float = COMMAND_TIMEOUT,
        ping_interval: float = PING_INTERVAL,
        ping_count: int = PING_COUNT,
        recover_window: float = RECOVER_WINDOW,
        send_key: bool = True,
    ) -> None:
        self.random_bytes = random_bytes
        self.server = server
        self.conn = ClientConnection(
            key_hash=key_hash,
            session_id=session_id,
            random_bytes=random_bytes,
            peer_chain=peer_chain,
            verify_session_key=verify_session_key,
            versions=versions,
            send_key=send_key,
        )
        self.command_timeout = command_timeout
        self.ping_interval = ping_interval
        self.ping_count = ping_count
        self.recover_window = recover_window
        self.version: int | None = None
        self.queues: dict[bytes, RecipientQueue] = {}  # by rcvId
        self.subscriptions: set[bytes] = set()  # rcvIds (and notifier ids) subscribed here
        self.pings_enabled = False
        self.closed = False
        self._pending: dict[bytes, _Pending] = {}
        self._now = now
        self._last_received = now
        self._ping_base = now  # last time the keep-alive loop started waiting
        self._ping_corr_id: bytes | None = None
        self._timeout_count = 0
        self.pings_sent = 0

    # ------------------------------------------------------------ I/O surface

    def data_to_send(self) -> bytes:
        """Bytes to write to the stream (handshake hello, command blocks)."""
        return self.conn.data_to_send()

    @property
    def established(self) -> bool:
        return self.conn.state is ConnectionState.ESTABLISHED and not self.closed

    @property
    def pending(self) -> dict[bytes, p.Command]:
        """Commands awaiting an answer, by corrId (a copy)."""
        return {c: e.command for c, e in self._pending.items() if not e.internal}

    def _tick(self, now: float | None) -> float:
        if now is not None and now > self._now:
            self._now = now
        return self._now

    def receive_data(self, data: bytes, now: float | None = None) -> list[Event]:
        """Feed bytes read from the stream (``b""`` = the peer closed it); returns events."""
        now = self._tick(now)
        if self.closed:
            return []
        if data:
            self._last_received = now
            self._timeout_count = 0
        events: list[Event] = []
        for ev in self.conn.receive_data(data):
            if isinstance(ev, HandshakeComplete):
                self.version = ev.version
                self._ping_base = now
                events.append(Connected(ev.version, ev.block_encryption))
            elif isinstance(ev, TransmissionReceived):
                events.extend(self._on_transmission(ev.transmission))
            elif isinstance(ev, TransmissionError):
                events.extend(self._on_transmission_error(ev))
            elif isinstance(ev, ConnectionClosed):
                events.extend(self._close(ev.reason))
        return events

    def close(self, reason: str = "closed by the client") -> list[Event]:
        """Stop using the connection: pending commands fail with :class:`ConnectionLost`."""
        return self._close(reason)

    def _close(self, reason: str) -> list[Event]:
        if self.closed:
            return []
        self.closed = True
        self.conn.close()
        events: list[Event] = []
        for e in list(self._pending.values()):
            if not e.internal:
                events.append(CommandFailed(e.corr_id, e.command, e.entity_id, ConnectionLost(reason)))
        self._pending.clear()
        self.subscriptions.clear()
        events.append(Disconnected(reason))
        return events

    # ------------------------------------------------------------ timers (smp.md §3.7)

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or ``None`` if nothing is scheduled."""
        if self.closed:
            return None
        times = [e.deadline for e in self._pending.values()]
        if self.pings_enabled and self.established and self._ping_corr_id is None:
            times.append(max(self._last_received, self._ping_base) + self.ping_interval)
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Event]:
        """Expire commands past their timeout, send a keep-alive PING when due, drop a dead link."""
        now = self._tick(now)
        if self.closed:
            return []
        events: list[Event] = []
        ping_finished = False
        for e in [e for e in self._pending.values() if e.deadline <= now]:
            del self._pending[e.corr_id]
            self._timeout_count += 1
            if e.internal:
                self._ping_corr_id = None
                self._ping_base = now
                ping_finished = True
            else:
                events.append(CommandFailed(e.corr_id, e.command, e.entity_id, ResponseTimeout("no response")))
        if ping_finished and self._should_drop(now):
            events.extend(self._close("keep-alive: no response to PING"))
            return events
        if (
            self.pings_enabled
            and self.established
            and self._ping_corr_id is None
            and now >= max(self._last_received, self._ping_base) + self.ping_interval
        ):
            self._ping_corr_id = self._send([(b"", p.Ping(), None)], now, internal=True)[0]
            self.pings_sent += 1
        return events

    def _should_drop(self, now: float) -> bool:
        return (
            self.ping_count > 0
            and self._timeout_count >= self.ping_count
            and now - self._last_received >= self.recover_window
        )

    # ------------------------------------------------------------ sending

    def _require_established(self) -> int:
        if self.closed or self.conn.state is not ConnectionState.ESTABLISHED or self.version is None:
            raise LocalProtocolError("the connection is not established")
        return self.version

    def _send(
        self,
        items: Sequence[tuple[bytes, p.Command, PrivateKey | None]],
        now: float | None,
        *,
        internal: bool = False,
        extra: Sequence[dict] | None = None,
        corr_ids: Sequence[bytes | None] | None = None,
    ) -> list[bytes]:
        """Encode, authorize and batch commands (one or more blocks, §3.6); register them pending."""
        now = self._tick(now)
        version = self._require_established()
        encoded: list[bytes] = []
        entries: list[_Pending] = []
        for i, (entity_id, cmd, key) in enumerate(items):
            corr_id = (corr_ids[i] if corr_ids else None) or self._new_corr_id()
            t = self.conn.authorize(corr_id, entity_id, p.encode_command(cmd, version), key)
            encoded.append(t)
            more = extra[i] if extra else {}
            entries.append(_Pending(corr_id, entity_id, cmd, now + self.command_timeout, internal, **more))
        too_large = self.conn.send_transmissions(encoded)
        if too_large:
            # the other transmissions of the batch were sent; the large ones were not (TELargeMsg)
            for i, e in enumerate(entries):
                if i not in too_large:
                    self._pending[e.corr_id] = e
            raise LocalProtocolError(f"transmission too large for a block: items {too_large}")
        for e in entries:
            self._pending[e.corr_id] = e
        return [e.corr_id for e in entries]

    def _new_corr_id(self) -> bytes:
        while True:
            c = self.random_bytes(CORR_ID_SIZE)
            if c not in self._pending:
                return c

    def send_command(
        self,
        entity_id: bytes,
        command: p.Command,
        key: PrivateKey | None = None,
        now: float | None = None,
        corr_id: bytes | None = None,
    ) -> bytes:
        """Send any command, authorized with ``key`` (signature or X25519 authenticator, §4.2)."""
        return self._send([(entity_id, command, key)], now, corr_ids=[corr_id])[0]

    def send_commands(
        self, items: Iterable[tuple[bytes, p.Command, PrivateKey | None]], now: float | None = None
    ) -> list[bytes]:
        """Several commands batched into as few blocks as possible (§3.6); returns their corrIds."""
        return self._send(list(items), now)

    # -- recipient commands

    def create_queue(
        self,
        *,
        now: float | None = None,
        subscribe: bool = True,
        sender_can_secure: bool = True,
        auth_alg: KeyAlgorithm = KeyAlgorithm.ED25519,
        basic_auth: bytes | None = None,
        e2e_key: PrivateKey | None = None,
        with_e2e_key: bool = True,
        ntf_creds: p.NewNtfCreds | None = None,
    ) -> bytes:
        """``NEW`` with fresh recipient keys; the :class:`CommandResult` carries the new queue.

        ``sender_can_secure`` asks for a messaging-mode queue (the sender may ``SKEY``, §4.6);
        ``e2e_key`` (generated unless ``with_e2e_key`` is false) is the queue URI's ``dh=`` key."""
        rcv_auth = PrivateKey.generate(auth_alg, self.random_bytes)
        rcv_dh = PrivateKey.generate(KeyAlgorithm.X25519, self.random_bytes)
        if e2e_key is None and with_e2e_key:
            e2e_key = PrivateKey.generate(KeyAlgorithm.X25519, self.random_bytes)
        mode = QueueMode.MESSAGING if sender_can_secure else QueueMode.CONTACT
        cmd = p.New(
            rcv_auth.public(),
            rcv_dh.public(),
            basic_auth,
            p.SubscriptionMode.SUBSCRIBE if subscribe else p.SubscriptionMode.ONLY_CREATE,
            p.QueueReqData(mode),
            ntf_creds,
        )
        return self._send(
            [(b"", cmd, rcv_auth)], now, extra=[{"new_queue": (rcv_auth, rcv_dh, e2e_key, self.server)}]
        )[0]

    def add_queue(self, queue: RecipientQueue) -> None:
        """Register a known queue so its ``MSG`` bodies can be decrypted (e.g. loaded from disk)."""
        self.queues[queue.rcv_id] = queue

    def _queue(self, rcv_id: bytes) -> RecipientQueue:
        try:
            return self.queues[rcv_id]
        except KeyError:
            raise LocalProtocolError("unknown recipient queue: register it with add_queue") from None

    def _rcv(self, queue: RecipientQueue | bytes, cmd: p.Command, now: float | None) -> bytes:
        q = queue if isinstance(queue, RecipientQueue) else self._queue(queue)
        if isinstance(queue, RecipientQueue) and q.rcv_id not in self.queues:
            self.add_queue(q)
        return self._send([(q.rcv_id, cmd, q.rcv_auth_key)], now)[0]

    def subscribe(self, queue: RecipientQueue | bytes, now: float | None = None) -> bytes:
        """``SUB`` (→ ``SOK``/``OK`` and maybe a pushed ``MSG``); enables keep-alive pings."""
        self.pings_enabled = True
        return self._rcv(queue, p.Sub(), now)

    def subscribe_many(self, queues: Iterable[RecipientQueue], now: float | None = None) -> list[bytes]:
        """``SUB`` for many queues, batched into blocks (135 signed SUBs per block at v18)."""
        qs = list(queues)
        for q in qs:
            self.queues.setdefault(q.rcv_id, q)
        self.pings_enabled = True
        return self._send([(q.rcv_id, p.Sub(), q.rcv_auth_key) for q in qs], now)

    def secure(self, queue: RecipientQueue | bytes, sender_key: PublicKey, now: float | None = None) -> bytes:
        """``KEY``: the recipient secures the queue with the sender's key (from a confirmation)."""
        return self._rcv(queue, p.Key(sender_key), now)

    def ack(self, queue: RecipientQueue | bytes, msg_id: bytes, now: float | None = None) -> bytes:
        """``ACK msgId`` (→ ``OK`` or the next ``MSG``)."""
        return self._rcv(queue, p.Ack(msg_id), now)

    def get(self, queue: RecipientQueue | bytes, now: float | None = None) -> bytes:
        """``GET`` (→ ``MSG`` or ``OK`` when empty)."""
        return self._rcv(queue, p.Get(), now)

    def off(self, queue: RecipientQueue | bytes, now: float | None = None) -> bytes:
        return self._rcv(queue, p.Off(), now)

    def delete(self, queue: RecipientQueue | bytes, now: float | None = None) -> bytes:
        """``DEL``: delete the queue and its messages."""
        return self._rcv(queue, p.Del(), now)

    def queue_info(self, queue: RecipientQueue | bytes, now: float | None = None) -> bytes:
        """``QUE`` (→ ``INFO``)."""
        return self._rcv(queue, p.Que(), now)

    def rotate_keys(self, queue: RecipientQueue | bytes, keys: Sequence[PublicKey], now: float | None = None) -> bytes:
        """``RKEY`` (contact queues)."""
        return self._rcv(queue, p.RKey(tuple(keys)), now)

    def nkey(
        self,
        queue: RecipientQueue | bytes,
        notifier_key: PublicKey,
        rcv_ntf_dh_key: PublicKey,
        now: float | None = None,
    ) -> bytes:
        """``NKEY`` (→ ``NID``)."""
        return self._rcv(queue, p.NKey(notifier_key, rcv_ntf_dh_key), now)

    def ndel(self, queue: RecipientQueue | bytes, now: float | None = None) -> bytes:
        return self._rcv(queue, p.NDel(), now)

    def nsub(self, notifier_id: bytes, notifier_key: PrivateKey, now: float | None = None) -> bytes:
        """``NSUB`` with the notifier key; enables keep-alive pings."""
        self.pings_enabled = True
        return self._send([(notifier_id, p.NSub(), notifier_key)], now)[0]

    def ping(self, now: float | None = None) -> bytes:
        return self._send([(b"", p.Ping(), None)], now)[0]

    # -- sender commands

    def secure_sender(self, sq: SenderQueue, now: float | None = None) -> bytes:
        """``SKEY``: the sender secures a messaging queue with its own key (v9+, §4.4)."""
        return self._send(
            [(sq.snd_id, p.SKey(sq.snd_auth_key.public()), sq.snd_auth_key)], now, extra=[{"sender_queue": sq}]
        )[0]

    def send(
        self,
        snd_id: bytes,
        body: bytes,
        key: PrivateKey | None = None,
        *,
        notification: bool = False,
        now: float | None = None,
    ) -> bytes:
        """Raw ``SEND`` of ``body`` (unsigned when ``key`` is ``None``)."""
        return self._send([(snd_id, p.Send(body, notification), key)], now)[0]

    def send_message(
        self, sq: SenderQueue, body: bytes, *, notification: bool = True, now: float | None = None
    ) -> bytes:
        """``SEND`` ``body`` in the per-queue e2e envelope (§5.4).

        Until a message was accepted (``sq.confirmed``) the envelope's PubHeader carries the sender's
        e2e key (the confirmation, padded to 15904); then 16000 without it. A queue that the sender
        secured (``SKEY``) gets ``PrivHeader '_'`` and a signed SEND; otherwise the confirmation is
        unsigned with ``PrivHeader 'K' senderKey`` so the recipient can ``KEY`` it (reference
        ``sendConfirmation``)."""
        confirmation, priv = sq.next_headers()
        key = None if isinstance(priv, m.PHConfirmation) else sq.snd_auth_key
        envelope = encrypt_envelope(sq, body, self.random_bytes(p.NONCE_LENGTH), confirmation, priv)
        return self._send(
            [(sq.snd_id, p.Send(envelope, notification), key)],
            now,
            extra=[{"sender_queue": sq, "confirmation": confirmation}],
        )[0]

    # ------------------------------------------------------------ receiving

    def _on_transmission_error(self, ev: TransmissionError) -> list[Event]:
        err = ResponseError(f"transmission error {ev.code}")
        entry = self._pending.pop(ev.corr_id, None) if ev.corr_id else None
        if entry is None:
            return [UnexpectedTransmission(ev.corr_id, b"", err)]
        return self._finish_failed(entry, err)

    def _finish_failed(self, entry: _Pending, err: ClientError) -> list[Event]:
        if entry.internal:
            self._ping_corr_id = None
            self._ping_base = self._now
            return []
        return [CommandFailed(entry.corr_id, entry.command, entry.entity_id, err)]

    def _on_transmission(self, t: Transmission) -> list[Event]:
        assert self.version is not None
        resp: p.Response | None = None
        perr: ResponseError | None = None
        try:
            resp = p.parse_response(t.command, self.version)
        except RemoteProtocolError as e:
            perr = ResponseError(f"bad response: {e}")
        if resp is not None:
            cred = p.check_response_credentials(resp, t.entity_id)
            if cred is not None:
                perr = ResponseError(f"{_describe(resp)}: {cred.encode().decode()}")
        if not t.corr_id:
            if perr is not None or resp is None:
                return [UnexpectedTransmission(b"", t.entity_id, perr or ResponseError("no response"))]
            if isinstance(resp, PUSH_RESPONSES):
                return self._on_push(t.entity_id, resp)
            return [UnexpectedTransmission(b"", t.entity_id, UnexpectedResponse(f"{_describe(resp)} without a corrId"))]
        entry = self._pending.pop(t.corr_id, None)
        if entry is None:
            err = UnexpectedResponse("response to no pending command")
            return [UnexpectedTransmission(t.corr_id, t.entity_id, err)]
        if entry.internal:
            self._ping_corr_id = None
            self._ping_base = self._now
        if perr is not None or resp is None:
            return self._finish_failed(entry, perr or ResponseError("no response"))
        if t.entity_id != entry.entity_id:
            return self._finish_failed(entry, UnexpectedResponse(f"{_describe(resp)} for another entity"))
        if isinstance(resp, p.Err):
            return [] if entry.internal else [CommandResult(entry.corr_id, entry.command, entry.entity_id, resp)]
        if not isinstance(resp, _EXPECTED.get(type(entry.command), ())):
            return self._finish_failed(
                entry, UnexpectedResponse(f"{_describe(resp)} in reply to {entry.command.TAG.decode()}")
            )
        if entry.internal:
            return []
        return self._on_result(entry, resp)

    def _on_result(self, entry: _Pending, resp: p.Response) -> list[Event]:
        cmd = entry.command
        queue: RecipientQueue | None = None
        message: ReceivedMessage | None = None
        extra: list[Event] = []
        if isinstance(cmd, p.New) and isinstance(resp, p.Ids) and entry.new_queue is not None:
            rcv_auth, rcv_dh, e2e_key, server = entry.new_queue
            try:
                secret = rcv_dh.dh(resp.srv_dh_key)
            except RemoteProtocolError as e:
                return self._finish_failed(entry, ResponseError(f"IDS: unusable router DH key: {e}"))
            queue = RecipientQueue(
                server,
                resp.rcv_id,
                resp.snd_id,
                rcv_auth,
                secret,
                e2e_key,
                resp.queue_mode,
                link_id=resp.link_id,
                notifier_id=resp.ntf_creds.notifier_id if resp.ntf_creds else None,
            )
            self.queues[queue.rcv_id] = queue
            if cmd.sub_mode is p.SubscriptionMode.SUBSCRIBE:
                self.subscriptions.add(queue.rcv_id)
                self.pings_enabled = True
        elif isinstance(cmd, (p.Sub, p.NSub)):
            self.subscriptions.add(entry.entity_id)
            if isinstance(resp, p.Msg):  # legacy routers answered SUB with the message
                message = self._decrypt(entry.entity_id, resp)
        elif isinstance(cmd, p.Del):
            self.subscriptions.discard(entry.entity_id)
            self.queues.pop(entry.entity_id, None)
        elif isinstance(cmd, p.SKey) and entry.sender_queue is not None:
            entry.sender_queue.secured = True
        elif isinstance(cmd, p.Send) and entry.sender_queue is not None and entry.confirmation:
            entry.sender_queue.confirmed = True
        elif isinstance(cmd, p.Get) and isinstance(resp, p.Msg):
            message = self._decrypt(entry.entity_id, resp)
        elif isinstance(cmd, p.Ack) and isinstance(resp, p.Msg):
            message = self._decrypt(entry.entity_id, resp)
            extra.append(ServerPush(entry.entity_id, resp, message))
        result = CommandResult(entry.corr_id, cmd, entry.entity_id, resp, queue, message)
        return [result, *extra]

    def _on_push(self, entity_id: bytes, resp: p.Response) -> list[Event]:
        message = None
        if isinstance(resp, p.Msg):
            message = self._decrypt(entity_id, resp)
        elif isinstance(resp, (p.End, p.Deld)):
            self.subscriptions.discard(entity_id)
        return [ServerPush(entity_id, resp, message)]

    def _decrypt(self, rcv_id: bytes, msg: p.Msg) -> ReceivedMessage | None:
        q = self.queues.get(rcv_id)
        if q is None:
            return ReceivedMessage(rcv_id, msg.msg_id, error=MessageDecryptError("message for an unknown queue"))
        return decrypt_message(q, msg)


# ---------------------------------------------------------------- message layers (pure helpers)


def encrypt_envelope(
    sq: SenderQueue, body: bytes, nonce: bytes, confirmation: bool, priv_header: m.PrivHeader | None = None
) -> bytes:
    """The per-queue e2e ``ClientMsgEnvelope`` bytes (§5.4); the key rides only in a confirmation."""
    header = m.PubHeader(sq.client_version, sq.e2e_key.public() if confirmation else None)
    msg = m.ClientMessage(priv_header or m.PHEmpty(), body)
    return m.encrypt_client_message(sq.e2e_secret, header, nonce, msg).encode()


def max_body_length(confirmation: bool, priv_header: m.PrivHeader | None = None) -> int:
    """Largest e2e body that fits the padded envelope (15904 or 16000 minus pad length and header)."""
    header_len = len((priv_header or m.PHEmpty()).encode())
    padded = p.E2E_ENC_CONFIRMATION_LENGTH if confirmation else p.E2E_ENC_MESSAGE_LENGTH
    return padded - 2 - header_len


def decrypt_message(q: RecipientQueue, msg: p.Msg) -> ReceivedMessage:
    """Open a ``MSG``: router layer with ``q.rcv_dh_secret`` (§5.3), then, if ``q.e2e_key`` is set,
    the e2e envelope (§5.4) — updating ``q.sender_e2e_key`` from a confirmation. Never raises:
    failures are reported in :attr:`ReceivedMessage.error`."""
    try:
        rcv = m.decrypt_rcv_msg_body(q.rcv_dh_secret, msg.msg_id, msg.enc_body)
    except RemoteProtocolError as e:
        return ReceivedMessage(q.rcv_id, msg.msg_id, error=MessageDecryptError(f"router layer: {e}"))
    if isinstance(rcv, m.RcvMsgQuota):
        return ReceivedMessage(q.rcv_id, msg.msg_id, rcv.ts, quota=True)
    if q.e2e_key is None:
        return ReceivedMessage(q.rcv_id, msg.msg_id, rcv.ts, rcv.notification, rcv.body)
    try:
        env = m.ClientMsgEnvelope.decode(rcv.body)
        sender_key = env.header.e2e_dh_key or q.sender_e2e_key
        if sender_key is None:
            raise MessageDecryptError("no sender e2e key yet (the confirmation was not received)")
        cm = m.decrypt_client_message(q.e2e_key.dh(sender_key), env)
    except RemoteProtocolError as e:
        err = e if isinstance(e, MessageDecryptError) else MessageDecryptError(f"e2e layer: {e}")
        return ReceivedMessage(q.rcv_id, msg.msg_id, rcv.ts, rcv.notification, error=err)
    except LocalProtocolError as e:  # e.g. a malformed nonce length surfaced by a validator
        return ReceivedMessage(q.rcv_id, msg.msg_id, rcv.ts, rcv.notification, error=MessageDecryptError(str(e)))
    if env.header.e2e_dh_key is not None:
        q.sender_e2e_key = env.header.e2e_dh_key
    return ReceivedMessage(q.rcv_id, msg.msg_id, rcv.ts, rcv.notification, cm.body, False, cm.priv_header, sender_key)


__all__ = [
    "CORR_ID_SIZE",
    "ClientError",
    "CommandFailed",
    "CommandResult",
    "Connected",
    "ConnectionLost",
    "Disconnected",
    "MessageDecryptError",
    "ReceivedMessage",
    "RecipientQueue",
    "ResponseError",
    "ResponseTimeout",
    "SMPClient",
    "SMPErrorResponse",
    "SenderQueue",
    "ServerPush",
    "UnexpectedResponse",
    "UnexpectedTransmission",
    "decrypt_message",
    "encrypt_envelope",
    "max_body_length",
]
