"""The sans-IO SMP client machine (sansio_smp/client.py): corrIds, pending commands, typed results,
pushes, keep-alive with a virtual clock, typed errors on bad responses (smp.md §3.7, §4.3, §5.3, §5.4,
§6.3), against a hand-driven RouterConnection and the reference vectors in tests/data/smp/."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sansio_smp import client as c
from sansio_smp import messages as m
from sansio_smp import protocol as p
from sansio_smp.addresses import ProtocolServer, QueueMode, SMPQueueUri
from sansio_smp.connection import RouterConnection, TransmissionReceived
from sansio_smp.crypto import KeyAlgorithm, PrivateKey, PublicKey
from sansio_smp.encoding import lg
from sansio_smp.errors import LocalProtocolError, RemoteProtocolError
from sansio_smp.transmission import encode_transmission, pad_block
from sansio_smp.x509 import generate_router_identity, verify_session_key

DATA = Path(__file__).parent / "data" / "smp"
_X25519_PUB = PrivateKey(KeyAlgorithm.X25519, b"\x07" * 32).public()


def _ed(i: int) -> PrivateKey:
    return PrivateKey(KeyAlgorithm.ED25519, bytes([i]) * 32)
T0 = 1_000.0


def _rng(seed: int):
    r = random.Random(seed)
    return r.randbytes


_IDENTITY = generate_router_identity("router.test", _rng(99), 1_700_000_000)


class FakeRouter:
    """A RouterConnection driven by hand: the test decides every response."""

    def __init__(self, seed: int = 1, *, send_key: bool = True, alpn: str | None = "smp/1", **client_kwargs) -> None:
        rb = _rng(seed)
        session_id = rb(32)
        self.rconn = RouterConnection(
            session_id=session_id, key_hash=_IDENTITY.key_hash, identity=_IDENTITY, random_bytes=rb, alpn=alpn
        )
        self.client = c.SMPClient(
            key_hash=_IDENTITY.key_hash,
            session_id=session_id,
            random_bytes=rb,
            now=T0,
            peer_chain=_IDENTITY.chain_der,
            verify_session_key=verify_session_key,
            send_key=send_key,
            server=ProtocolServer(("router.test",), "5223", _IDENTITY.key_hash),
            **client_kwargs,
        )
        self.events = self.client.receive_data(self.rconn.data_to_send(), T0)
        self.rconn.receive_data(self.client.data_to_send())
        self.version = self.client.version

    def received(self) -> list:
        """Transmissions the client sent since the last call, as (transmission, command)."""
        out = []
        data = self.client.data_to_send()
        for ev in self.rconn.receive_data(data) if data else []:
            assert isinstance(ev, TransmissionReceived)
            t = ev.transmission
            out.append((t, p.parse_command(t.command, self.version)))
        return out

    def reply(self, items, now: float = T0) -> list[c.Event]:
        """Send (corrId, entityId, response | raw bytes) transmissions to the client in one batch."""
        ts = []
        for corr_id, entity, resp in items:
            body = resp if isinstance(resp, bytes) else p.encode_response(resp, self.version)
            ts.append(self.rconn.encode(corr_id, entity, body))
        assert self.rconn.send_transmissions(ts) == []
        return self.client.receive_data(self.rconn.data_to_send(), now)


def _new_queue(fr: FakeRouter, **kwargs) -> tuple[c.RecipientQueue, PrivateKey]:
    """NEW answered by IDS; returns the queue and the router's per-queue DH key."""
    corr = fr.client.create_queue(now=T0, **kwargs)
    [(t, cmd)] = fr.received()
    assert isinstance(cmd, p.New) and t.corr_id == corr and t.entity_id == b""
    assert cmd.rcv_auth_key.verify(t.auth, t.authorized)  # NEW is signed with the new recipient key
    fr.last_new = cmd
    srv_dh = PrivateKey.generate(KeyAlgorithm.X25519, _rng(5))
    ids = p.Ids(b"R" * 24, b"S" * 24, srv_dh.public(), QueueMode.MESSAGING)
    [ev] = fr.reply([(corr, b"", ids)])
    assert isinstance(ev, c.CommandResult) and ev.ok and ev.queue is not None
    return ev.queue, srv_dh


# ---------------------------------------------------------------- handshake and corrIds


def test_handshake_v18_with_block_encryption() -> None:
    fr = FakeRouter()
    assert fr.events == [c.Connected(18, True)]
    assert fr.client.established


def test_handshake_without_alpn_is_v6() -> None:
    fr = FakeRouter(alpn=None)
    assert fr.events == [c.Connected(6, False)]


def test_wrong_key_hash_fails_the_handshake() -> None:
    rb = _rng(3)
    sid = rb(32)
    rconn = RouterConnection(session_id=sid, key_hash=_IDENTITY.key_hash, identity=_IDENTITY, random_bytes=rb)
    cl = c.SMPClient(
        key_hash=b"\x01" * 32, session_id=sid, random_bytes=rb, peer_chain=_IDENTITY.chain_der,
        verify_session_key=verify_session_key,
    )  # fmt: skip
    events = cl.receive_data(rconn.data_to_send(), T0)
    assert len(events) == 1 and isinstance(events[0], c.Disconnected)
    assert "HANDSHAKE" in events[0].reason
    with pytest.raises(LocalProtocolError):
        cl.ping()


def test_commands_before_the_handshake_are_refused() -> None:
    cl = c.SMPClient(key_hash=b"k" * 32, session_id=b"s" * 32, random_bytes=_rng(1))
    with pytest.raises(LocalProtocolError):
        cl.create_queue()


def test_corr_ids_come_from_the_injected_random_source() -> None:
    drawn: list[bytes] = []
    base = _rng(7)

    def rb(n: int) -> bytes:
        out = base(n)
        drawn.append(out)
        return out

    fr = FakeRouter()
    fr.client.random_bytes = rb
    ids = [fr.client.ping(now=T0) for _ in range(5)]
    assert all(len(i) == 24 for i in ids) and len(set(ids)) == 5
    assert ids == [d for d in drawn if len(d) == 24]
    sent = fr.received()
    assert [t.corr_id for t, _ in sent] == ids
    assert all(isinstance(cmd, p.Ping) and t.auth == b"" and t.entity_id == b"" for t, cmd in sent)
    assert set(fr.client.pending) == set(ids)


def test_responses_are_matched_by_corr_id_in_any_order() -> None:
    fr = FakeRouter()
    q, _ = _new_queue(fr)
    a = fr.client.get(q, now=T0)
    b = fr.client.ping(now=T0)
    cc = fr.client.queue_info(q, now=T0)
    sent = fr.received()
    assert [type(cmd) for _, cmd in sent] == [p.Get, p.Ping, p.Que]
    # each recipient command is signed with the queue's recipient key over the authorized bytes
    for t, cmd in sent:
        if not isinstance(cmd, p.Ping):
            assert t.entity_id == q.rcv_id and q.rcv_auth_key.public().verify(t.auth, t.authorized)
    info = p.QueueInfo(False, False, 0)
    events = fr.reply([(cc, q.rcv_id, p.Info(info)), (b, b"", p.Pong()), (a, q.rcv_id, p.Ok())])
    assert [(type(e), e.corr_id) for e in events] == [(c.CommandResult, cc), (c.CommandResult, b), (c.CommandResult, a)]
    assert events[0].response == p.Info(info)
    assert fr.client.pending == {}


def test_new_registers_the_queue_and_its_subscription() -> None:
    fr = FakeRouter()
    q, srv_dh = _new_queue(fr)
    assert fr.client.queues[q.rcv_id] is q
    assert q.rcv_id in fr.client.subscriptions and fr.client.pings_enabled
    assert q.snd_id == b"S" * 24 and q.queue_mode is QueueMode.MESSAGING and q.sender_can_secure
    # the recipient's DH secret equals the router's side (smp.md §5.3)
    assert q.rcv_dh_secret == srv_dh.dh(fr.last_new.rcv_dh_key)
    uri = q.queue_uri()
    text = uri.to_str()
    assert "k=s" in text and "dh=" in text and text.startswith("smp://")
    back = SMPQueueUri.from_str(text)
    assert back.address.sender_id == q.snd_id and back.address.dh_key == q.e2e_key.public()
    assert back.address.sender_can_secure


def test_create_only_queue_is_not_subscribed() -> None:
    fr = FakeRouter()
    q, _ = _new_queue(fr, subscribe=False)
    assert q.rcv_id not in fr.client.subscriptions and not fr.client.pings_enabled


def test_err_response_is_a_typed_result() -> None:
    fr = FakeRouter()
    q, _ = _new_queue(fr)
    corr = fr.client.ack(q, b"m" * 24, now=T0)
    fr.received()
    [ev] = fr.reply([(corr, q.rcv_id, p.Err(p.NO_MSG))])
    assert isinstance(ev, c.CommandResult) and not ev.ok and ev.error == p.NO_MSG


# ---------------------------------------------------------------- bad responses → typed errors


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda q, corr: (corr, b"X" * 24, p.Ok()), c.UnexpectedResponse),  # another entity
        (lambda q, corr: (corr, q.rcv_id, p.Pong()), c.ResponseError),  # PONG must have no entity (§4.3)
        (lambda q, corr: (corr, q.rcv_id, p.Ids(b"a", b"b", _X25519_PUB)), c.UnexpectedResponse),  # wrong kind
        (lambda q, corr: (corr, q.rcv_id, b"NOPE"), c.ResponseError),  # unknown tag
        (lambda q, corr: (corr, q.rcv_id, b"OK trailing"), c.ResponseError),  # bad parameters
        (lambda q, corr: (corr, q.rcv_id, b"ERR WHATEVER"), c.ResponseError),
    ],
)
def test_bad_responses_fail_the_command_with_a_typed_error(make, error) -> None:
    fr = FakeRouter()
    q, _ = _new_queue(fr)
    corr = fr.client.subscribe(q, now=T0)
    fr.received()
    [ev] = fr.reply([make(q, corr)])
    assert isinstance(ev, c.CommandFailed) and ev.corr_id == corr and isinstance(ev.error, error)
    assert isinstance(ev.error, RemoteProtocolError)
    assert corr not in fr.client.pending


def test_response_to_nothing_is_an_unexpected_transmission() -> None:
    fr = FakeRouter()
    [ev] = fr.reply([(b"z" * 24, b"", p.Pong())])
    assert isinstance(ev, c.UnexpectedTransmission) and isinstance(ev.error, c.UnexpectedResponse)


def test_non_event_without_corr_id_is_unexpected() -> None:
    fr = FakeRouter()
    q, _ = _new_queue(fr)
    [ev] = fr.reply([(b"", q.rcv_id, p.Ok())])
    assert isinstance(ev, c.UnexpectedTransmission)
    [ev] = fr.reply([(b"", b"", p.End())])  # END needs an entity (§4.3)
    assert isinstance(ev, c.UnexpectedTransmission) and isinstance(ev.error, c.ResponseError)


def test_router_block_error_for_a_pending_command() -> None:
    fr = FakeRouter()
    corr = fr.client.ping(now=T0)
    fr.received()
    # an unparsable transmission (bad auth length) from the router carrying our corrId
    bad = b"\x05abcde" + b"0" + b"\x18" + corr + b"\x00PONG"
    fr.rconn.send_transmissions([bad])
    events = fr.client.receive_data(fr.rconn.data_to_send(), T0)
    assert len(events) == 1 and isinstance(events[0], c.CommandFailed) and isinstance(events[0].error, c.ResponseError)


# ---------------------------------------------------------------- pushes and messages


def _msg_for(q: c.RecipientQueue, msg_id: bytes, body: m.RcvMessage) -> p.Msg:
    return p.Msg(msg_id, m.encrypt_rcv_msg_body(q.rcv_dh_secret, msg_id, body))


def test_pushed_msg_end_and_deld() -> None:
    fr = FakeRouter()
    q, _ = _new_queue(fr, with_e2e_key=False)
    [ev] = fr.reply([(b"", q.rcv_id, _msg_for(q, b"1" * 24, m.RcvMsgBody(1234, b"hi", True)))])
    assert isinstance(ev, c.ServerPush) and ev.message == c.ReceivedMessage(q.rcv_id, b"1" * 24, 1234, True, b"hi")
    [ev] = fr.reply([(b"", q.rcv_id, _msg_for(q, b"2" * 24, m.RcvMsgQuota(99)))])
    assert ev.message.quota and ev.message.ts == 99 and ev.message.body == b""
    [ev] = fr.reply([(b"", q.rcv_id, p.End())])
    assert isinstance(ev.response, p.End) and q.rcv_id not in fr.client.subscriptions
    fr.client.subscriptions.add(q.rcv_id)
    [ev] = fr.reply([(b"", q.rcv_id, p.Deld())])
    assert isinstance(ev.response, p.Deld) and q.rcv_id not in fr.client.subscriptions


def test_undecryptable_msg_is_reported_not_raised() -> None:
    fr = FakeRouter()
    q, _ = _new_queue(fr)
    [ev] = fr.reply([(b"", q.rcv_id, p.Msg(b"3" * 24, b"\x00" * 16122))])
    assert isinstance(ev, c.ServerPush) and isinstance(ev.message.error, c.MessageDecryptError)
    [ev] = fr.reply([(b"", b"U" * 24, p.Msg(b"3" * 24, b"\x00" * 100))])
    assert ev.message.error is not None  # unknown queue


def test_get_and_ack_results_carry_the_message() -> None:
    fr = FakeRouter()
    q, _ = _new_queue(fr, with_e2e_key=False)
    g = fr.client.get(q, now=T0)
    fr.received()
    [ev] = fr.reply([(g, q.rcv_id, _msg_for(q, b"4" * 24, m.RcvMsgBody(5, b"got")))])
    assert isinstance(ev, c.CommandResult) and ev.message.body == b"got"
    a = fr.client.ack(q, b"4" * 24, now=T0)
    fr.received()
    events = fr.reply([(a, q.rcv_id, _msg_for(q, b"5" * 24, m.RcvMsgBody(6, b"next")))])
    assert [type(e) for e in events] == [c.CommandResult, c.ServerPush]
    assert events[0].message.body == events[1].message.body == b"next"


def test_sok_then_pushed_msg_vector() -> None:
    """responses.json 'sok-then-pushed-msg': SOK to our SUB, then the pushed MSG, decrypted through
    both layers with message-layers.json's keys (smp.md §5.3, §5.4)."""
    resp = json.loads((DATA / "responses.json").read_text())
    layers = json.loads((DATA / "message-layers.json").read_text())
    case = next(t for t in resp["transmissions"] if t["id"] == "sok-then-pushed-msg")
    rcv = next(x for x in layers["rcv_msg"] if x["id"] == "message-envelope")["inputs"]
    e2e = next(x for x in layers["e2e_envelope"] if x["id"] == "message-v4")["inputs"]
    corr = bytes.fromhex(case["items"][0]["corr_id"])
    rcv_id = bytes.fromhex(case["items"][0]["entity_id"])
    rcv_dh = PrivateKey(KeyAlgorithm.X25519, bytes.fromhex(rcv["recipient_dh_key"]["priv"]))
    q = c.RecipientQueue(
        None, rcv_id, b"S", PrivateKey.generate(KeyAlgorithm.ED25519, _rng(4)),
        rcv_dh.dh(PublicKey(KeyAlgorithm.X25519, bytes.fromhex(rcv["router_queue_dh_key"]["pub"]))),
        e2e_key=PrivateKey(KeyAlgorithm.X25519, bytes.fromhex(e2e["recipient_e2e_key"]["priv"])),
        sender_e2e_key=PublicKey(KeyAlgorithm.X25519, bytes.fromhex(e2e["sender_e2e_key"]["pub"])),
    )  # fmt: skip
    fr = FakeRouter(send_key=False)  # the vector blocks are not block-encrypted
    assert fr.version == 18
    fr.client.add_queue(q)
    assert fr.client.send_command(rcv_id, p.Sub(), q.rcv_auth_key, now=T0, corr_id=corr) == corr
    fr.received()
    events = fr.client.receive_data(pad_block(bytes.fromhex(case["block_payload"])), T0)
    assert [type(e) for e in events] == [c.CommandResult, c.ServerPush]
    assert isinstance(events[0].response, p.SOk) and rcv_id in fr.client.subscriptions
    msg = events[1].message
    assert msg.msg_id == bytes.fromhex(rcv["msg_id"]) and msg.ts == rcv["msg_ts"] and msg.error is None
    assert msg.body == bytes.fromhex(e2e["agent_body"]) and msg.priv_header == m.PHEmpty()


@pytest.mark.parametrize("case_id", ["confirmation-v4", "message-v4"])
def test_e2e_envelope_vectors(case_id: str) -> None:
    """encrypt_envelope reproduces message-layers.json's ClientMsgEnvelope byte for byte (§5.4)."""
    layers = json.loads((DATA / "message-layers.json").read_text())
    case = next(x for x in layers["e2e_envelope"] if x["id"] == case_id)
    i, exp = case["inputs"], case["expected"]
    sq = c.SenderQueue(
        None, b"S", PublicKey(KeyAlgorithm.X25519, bytes.fromhex(i["recipient_e2e_key"]["pub"])),
        PrivateKey.generate(KeyAlgorithm.ED25519, _rng(1)),
        PrivateKey(KeyAlgorithm.X25519, bytes.fromhex(i["sender_e2e_key"]["priv"])),
        client_version=i["smp_client_version"],
    )  # fmt: skip
    confirmation = case_id.startswith("confirmation")
    priv = m.PHEmpty()
    if i["priv_header"]["type"] == "PHConfirmation":
        priv = m.PHConfirmation(PublicKey.from_spki(bytes.fromhex(i["priv_header"]["key"])))
    env = c.encrypt_envelope(sq, bytes.fromhex(i["agent_body"]), bytes.fromhex(i["nonce"]), confirmation, priv)
    assert env.hex() == exp["envelope"] and len(env) == exp["envelope_length"]


def test_send_message_flow_confirmation_then_messages() -> None:
    """Sender side: SKEY, a signed confirmation carrying the e2e key, then 16000-padded messages; the
    recipient machine decrypts both and remembers the sender key (§5.4)."""
    fr = FakeRouter()
    q, _ = _new_queue(fr)
    uri = q.queue_uri()
    sq = c.SenderQueue.from_uri(uri, _rng(8))
    assert sq.sender_can_secure and sq.client_version == 4
    sk = fr.client.secure_sender(sq, now=T0)
    [(t, cmd)] = fr.received()
    assert isinstance(cmd, p.SKey) and t.entity_id == sq.snd_id
    assert sq.snd_auth_key.public().verify(t.auth, t.authorized)
    fr.reply([(sk, sq.snd_id, p.Ok())])
    assert sq.secured and not sq.confirmed
    bodies = []
    for text in (b"first", b"second"):
        corr = fr.client.send_message(sq, text, now=T0)
        [(t, cmd)] = fr.received()
        assert isinstance(cmd, p.Send) and cmd.notification and sq.snd_auth_key.public().verify(t.auth, t.authorized)
        bodies.append(cmd.body)
        fr.reply([(corr, sq.snd_id, p.Ok())])
        assert sq.confirmed
    assert [len(b) for b in bodies] == [15992, 16043]  # smp.md §5.4 sizes
    for i, (body, text) in enumerate(zip(bodies, (b"first", b"second"))):
        msg = _msg_for(q, bytes([i]) * 24, m.RcvMsgBody(7, body, True))
        [ev] = fr.reply([(b"", q.rcv_id, msg)])
        assert ev.message.body == text and ev.message.error is None
        assert ev.message.priv_header == m.PHEmpty()
    assert q.sender_e2e_key == sq.e2e_key.public()


def test_unsecured_confirmation_carries_the_sender_key() -> None:
    fr = FakeRouter()
    q, _ = _new_queue(fr, sender_can_secure=False)
    sq = c.SenderQueue(None, q.snd_id, q.e2e_key.public(), PrivateKey.generate(KeyAlgorithm.ED25519, _rng(2)),
                       PrivateKey.generate(KeyAlgorithm.X25519, _rng(3)), QueueMode.CONTACT)  # fmt: skip
    corr = fr.client.send_message(sq, b"knock", now=T0)
    [(t, cmd)] = fr.received()
    assert t.auth == b""  # unsigned: the queue is not secured yet
    fr.reply([(corr, sq.snd_id, p.Ok())])
    [ev] = fr.reply([(b"", q.rcv_id, _msg_for(q, b"c" * 24, m.RcvMsgBody(1, cmd.body)))])
    assert ev.message.priv_header == m.PHConfirmation(sq.snd_auth_key.public()) and ev.message.body == b"knock"


def test_message_without_known_sender_key_is_an_error() -> None:
    fr = FakeRouter()
    q, _ = _new_queue(fr)
    sq = c.SenderQueue.from_uri(q.queue_uri(), _rng(9))
    sq.confirmed = True  # pretend the confirmation was lost: no key in this PubHeader
    env = c.encrypt_envelope(sq, b"x", b"n" * 24, False)
    [ev] = fr.reply([(b"", q.rcv_id, _msg_for(q, b"d" * 24, m.RcvMsgBody(1, env)))])
    assert isinstance(ev.message.error, c.MessageDecryptError) and ev.message.body == b""


def test_too_long_message_is_a_local_error() -> None:
    fr = FakeRouter()
    q, _ = _new_queue(fr)
    sq = c.SenderQueue.from_uri(q.queue_uri(), _rng(9))
    limit = sq.max_body_length
    assert limit == c.max_body_length(True, m.PHConfirmation(sq.snd_auth_key.public())) == 15904 - 2 - 46
    with pytest.raises(LocalProtocolError):
        fr.client.send_message(sq, b"x" * (limit + 1), now=T0)
    fr.client.send_message(sq, b"x" * limit, now=T0)
    assert len(fr.received()) == 1


def test_subscribe_many_batches_like_the_reference() -> None:
    """136 signed SUBs: 2 blocks, the partial one first (smp.md §3.6, §7.3)."""
    fr = FakeRouter()
    qs = [
        c.RecipientQueue(None, i.to_bytes(24, "big"), b"s", _ed(i), b"k" * 32)
        for i in range(136)
    ]
    fr.client.subscribe_many(qs, now=T0)
    data = fr.client.data_to_send()
    assert len(data) == 2 * 16384
    first = fr.rconn.receive_data(data[:16384])
    second = fr.rconn.receive_data(data[16384:])
    assert (len(first), len(second)) == (1, 135)


# ---------------------------------------------------------------- time: timeouts and keep-alive (§3.7)


def test_command_timeout() -> None:
    fr = FakeRouter(command_timeout=10)
    corr = fr.client.ping(now=T0)
    assert fr.client.next_timer() == T0 + 10
    assert fr.client.handle_timer(T0 + 9.9) == []
    [ev] = fr.client.handle_timer(T0 + 10)
    assert isinstance(ev, c.CommandFailed) and ev.corr_id == corr and isinstance(ev.error, c.ResponseTimeout)
    assert fr.client.next_timer() is None


def test_no_pings_without_subscriptions() -> None:
    fr = FakeRouter()
    assert fr.client.next_timer() is None
    assert fr.client.handle_timer(T0 + 10_000) == []
    assert fr.received() == []


def test_keep_alive_pings_after_idle_and_pong_resets() -> None:
    fr = FakeRouter()
    q, _ = _new_queue(fr)  # subscribed (NEW in subscribe mode), last data received at T0
    assert fr.client.next_timer() == T0 + 600
    assert fr.client.handle_timer(T0 + 599) == [] and fr.received() == []
    fr.client.handle_timer(T0 + 600)
    [(t, cmd)] = fr.received()
    assert isinstance(cmd, p.Ping) and fr.client.pings_sent == 1
    assert fr.reply([(t.corr_id, b"", p.Pong())], now=T0 + 601) == []  # internal: no event
    assert fr.client.next_timer() == T0 + 1201
    # traffic postpones the next ping
    fr.reply([(b"", q.rcv_id, p.End())], now=T0 + 1000)
    fr.client.subscriptions.add(q.rcv_id)
    assert fr.client.next_timer() == T0 + 1600


def test_dead_link_is_dropped_after_three_ping_timeouts_and_15_minutes() -> None:
    fr = FakeRouter(command_timeout=30)
    _new_queue(fr)
    now = T0
    pings = 0
    drop = None
    for _ in range(10):
        t = fr.client.next_timer()
        assert t is not None
        now = t
        events = fr.client.handle_timer(now)
        sent = fr.received()
        pings += sum(isinstance(cmd, p.Ping) for _, cmd in sent)
        if any(isinstance(e, c.Disconnected) for e in events):
            drop = (now, events)
            break
    assert drop is not None
    now, events = drop
    # pings at T0+600, +1230, +1860; each times out after 30 s; dropped at the third timeout
    assert pings == 3 and now == T0 + 1890
    assert now - T0 >= 900
    assert not fr.client.established and fr.client.next_timer() is None


def test_received_data_resets_the_timeout_count() -> None:
    fr = FakeRouter(command_timeout=30, recover_window=0)
    q, _ = _new_queue(fr)
    for i in range(2):
        fr.client.ping(now=T0 + 100 * i)
        [ev] = fr.client.handle_timer(T0 + 100 * i + 30)
        assert isinstance(ev.error, c.ResponseTimeout)
    assert fr.client._timeout_count == 2
    fr.reply([(b"", q.rcv_id, p.End())], now=T0 + 400)
    assert fr.client._timeout_count == 0


def test_peer_close_fails_pending_commands() -> None:
    fr = FakeRouter()
    corr = fr.client.ping(now=T0)
    events = fr.client.receive_data(b"", T0)
    assert isinstance(events[0], c.CommandFailed) and events[0].corr_id == corr
    assert isinstance(events[0].error, c.ConnectionLost)
    assert isinstance(events[-1], c.Disconnected)
    assert fr.client.receive_data(b"more", T0) == []


# ---------------------------------------------------------------- fuzz: any bytes → events, never other exceptions


_TAGS = [b"OK", b"SOK 0", b"PONG", b"END", b"DELD", b"MSG ", b"IDS ", b"ERR AUTH", b"ERR ", b"NID ", b"INFO {}"]
_TAGS += [b"LNK ", b"NMSG ", b"X"]
_EVENT_KINDS = (c.CommandResult, c.CommandFailed, c.ServerPush, c.UnexpectedTransmission, c.Disconnected)


@st.composite
def _router_items(draw, corr_ids):
    n = draw(st.integers(1, 6))
    items = []
    for _ in range(n):
        corr = draw(st.sampled_from([b"", *corr_ids]) | st.binary(max_size=30))
        entity = draw(st.sampled_from([b"", b"R" * 24, b"S" * 24]) | st.binary(max_size=30))
        cmd = draw(st.sampled_from(_TAGS)) + draw(st.binary(max_size=200))
        items.append((corr, entity, cmd))
    return items


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_responses_give_events_never_exceptions(data) -> None:
    fr = FakeRouter(send_key=False)  # plaintext blocks so random transmissions reach the parsers
    q, _ = _new_queue(fr)
    corrs = [fr.client.subscribe(q, now=T0), fr.client.get(q, now=T0), fr.client.ping(now=T0)]
    fr.received()
    items = data.draw(_router_items(corrs))
    ts = [encode_transmission(fr.rconn.params, cr, en, cmd) for cr, en, cmd in items]
    fr.rconn.send_transmissions(ts)
    events = fr.client.receive_data(fr.rconn.data_to_send(), T0)
    kinds = (c.CommandResult, c.CommandFailed, c.ServerPush, c.UnexpectedTransmission, c.Disconnected)
    assert all(isinstance(e, kinds) for e in events)
    for e in events:
        if isinstance(e, c.CommandFailed):
            assert isinstance(e.error, c.ClientError)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.binary(min_size=0, max_size=16384 * 2), min_size=1, max_size=3), encrypted=st.booleans())
def test_fuzz_random_blocks(blocks, encrypted) -> None:
    fr = FakeRouter(send_key=encrypted)
    fr.client.ping(now=T0)
    for raw in blocks:
        # random bytes, and the same bytes as a well-padded block (so the batch parser sees them)
        for chunk in (raw, pad_block(b"\x01" + lg(raw[:16000])) if len(raw) <= 16000 else raw):
            events = fr.client.receive_data(chunk, T0)
            for e in events:
                assert isinstance(e, _EVENT_KINDS)
    fr.client.handle_timer(T0 + 1e6)
