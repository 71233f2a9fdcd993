"""Whole router + client scenarios on the deterministic in-memory network (transports/simulation.py):
the reference scenarios of smp.md §7.1 seen from real client machines — duplex exchange, switching
the subscription (END, DELD), quota, GET, reconnecting, keep-alive, determinism from a seed."""

from __future__ import annotations

import pytest

from sansio_smp import client as c
from sansio_smp import messages as m
from sansio_smp import protocol as p
from sansio_smp.addresses import QueueMode, SMPQueueUri
from sansio_smp.crypto import KeyAlgorithm, PrivateKey
from sansio_smp.router import RouterConfig
from transports.simulation import Network, SimClient


def _ok(ev) -> c.CommandResult:
    assert isinstance(ev, c.CommandResult), ev
    assert ev.ok, ev.error
    return ev


def _err(ev) -> p.ErrorType:
    assert isinstance(ev, c.CommandResult) and not ev.ok, ev
    return ev.error


def _new_queue(cl: SimClient, **kwargs) -> c.RecipientQueue:
    q = _ok(cl.call("create_queue", **kwargs)).queue
    assert q is not None
    return q


def _sender(net: Network, q: c.RecipientQueue) -> c.SenderQueue:
    return c.SenderQueue.from_uri(SMPQueueUri.from_str(q.queue_uri().to_str()), net.random_bytes)


def _receive_one(cl: SimClient, q: c.RecipientQueue, before: int) -> c.ReceivedMessage:
    msgs = cl.messages()
    assert len(msgs) == before + 1, msgs
    msg = msgs[-1]
    assert msg.rcv_id == q.rcv_id and msg.error is None
    return msg


# ---------------------------------------------------------------- §7.1 scenarios


def test_duplex_exchange_with_ack() -> None:
    """testDuplex: two queues set up by exchanging their URIs in messages, then a conversation."""
    net = Network(seed=11)
    router = net.add_router()
    alice = net.add_client(router, name="alice")
    bob = net.add_client(router, name="bob")
    qa = _new_queue(alice)  # Alice receives here
    qb = _new_queue(bob)  # Bob receives here
    to_alice = _sender(net, qa)
    _ok(bob.call("secure_sender", to_alice))
    _ok(bob.call("send_message", to_alice, b"reply to " + qb.queue_uri().to_str().encode()))
    msg = _receive_one(alice, qa, 0)
    assert msg.body.startswith(b"reply to smp://") and msg.priv_header == m.PHEmpty()
    _ok(alice.call("ack", qa, msg.msg_id))
    to_bob = c.SenderQueue.from_uri(SMPQueueUri.from_str(msg.body[len(b"reply to ") :].decode()), net.random_bytes)
    _ok(alice.call("secure_sender", to_bob))
    for i in range(3):
        _ok(alice.call("send_message", to_bob, f"alice {i}".encode()))
        got = _receive_one(bob, qb, i)
        assert got.body == f"alice {i}".encode()
        _ok(bob.call("ack", qb, got.msg_id))
        _ok(bob.call("send_message", to_alice, f"bob {i}".encode()))
        got = _receive_one(alice, qa, 1 + i)
        assert got.body == f"bob {i}".encode()
        _ok(alice.call("ack", qa, got.msg_id))
    assert qa.sender_e2e_key == to_alice.e2e_key.public() and qb.sender_e2e_key == to_bob.e2e_key.public()


def test_recipient_secures_with_key_from_the_confirmation() -> None:
    """testCreateSecure: a contact-mode queue; unsigned confirmation carries the sender key; KEY."""
    net = Network(seed=12)
    router = net.add_router()
    alice = net.add_client(router)
    bob = net.add_client(router)
    q = _new_queue(alice, sender_can_secure=False)
    uri = q.queue_uri()
    assert not uri.address.sender_can_secure and "k=s" not in uri.to_str()
    sq = _sender(net, q)
    assert _err(bob.call("secure_sender", sq)) == p.AUTH  # SKEY needs a messaging queue (§6.2)
    _ok(bob.call("send_message", sq, b"my key is inside"))
    msg = _receive_one(alice, q, 0)
    assert isinstance(msg.priv_header, m.PHConfirmation) and msg.priv_header.sender_key == sq.snd_auth_key.public()
    _ok(alice.call("secure", q, msg.priv_header.sender_key))
    _ok(alice.call("ack", q, msg.msg_id))
    _ok(bob.call("send_message", sq, b"now signed"))
    assert _receive_one(alice, q, 1).body == b"now signed"
    assert _err(bob.call("send", sq.snd_id, b"unsigned")) == p.AUTH
    other = PrivateKey.generate(KeyAlgorithm.ED25519, net.random_bytes).public()
    assert _err(alice.call("secure", q, other)) == p.AUTH  # another key ⇒ AUTH
    _ok(alice.call("secure", q, sq.snd_auth_key.public()))  # the same key again ⇒ OK


def test_switch_subscription_end_and_deld() -> None:
    """testSwitchSub: a second connection's SUB takes over (SOK + redelivery), the first gets END;
    ACK from the first ⇒ NO_MSG; DEL from the first ⇒ DELD to the second."""
    net = Network(seed=13)
    router = net.add_router(RouterConfig(pending_end_interval=0.5))
    a1 = net.add_client(router, name="a1")
    bob = net.add_client(router, name="bob")
    q = _new_queue(a1)
    sq = _sender(net, q)
    _ok(bob.call("secure_sender", sq))
    _ok(bob.call("send_message", sq, b"one"))
    first = _receive_one(a1, q, 0)
    a2 = net.add_client(router, name="a2")
    a2.machine.add_queue(q)
    res = _ok(a2.call("subscribe", q))
    assert isinstance(res.response, p.SOk)
    again = _receive_one(a2, q, 0)  # redelivered, not acknowledged by a1
    assert again.msg_id == first.msg_id and again.body == b"one"
    assert a1.pushes(p.End) == []  # END waits for the pending-events timer (§6.3)
    net.advance(1)
    assert [e.entity_id for e in a1.pushes(p.End)] == [q.rcv_id]
    assert q.rcv_id not in a1.machine.subscriptions and q.rcv_id in a2.machine.subscriptions
    _ok(bob.call("send_message", sq, b"two"))
    assert _err(a1.call("ack", q, first.msg_id)) == p.NO_MSG
    ack = _ok(a2.call("ack", q, again.msg_id))
    assert ack.message is not None and ack.message.body == b"two"  # next MSG in the ACK reply
    _ok(a2.call("ack", q, ack.message.msg_id))
    _ok(a1.call("delete", q))
    net.advance(1)
    assert [e.entity_id for e in a2.pushes(p.Deld)] == [q.rcv_id]
    assert len(a1.messages()) == 1 and a1.pushes(p.Deld) == []
    assert _err(bob.call("send_message", sq, b"gone")) == p.AUTH


def test_exceed_queue_quota_and_marker() -> None:
    """testExceedQueueQuota with quota 2, seen through the client machines."""
    net = Network(seed=14)
    router = net.add_router(RouterConfig(queue_quota=2))
    alice = net.add_client(router)
    bob = net.add_client(router)
    q = _new_queue(alice, subscribe=False)
    sq = _sender(net, q)
    _ok(bob.call("secure_sender", sq))
    _ok(bob.call("send_message", sq, b"1"))
    _ok(bob.call("send_message", sq, b"2"))
    assert _err(bob.call("send_message", sq, b"3")) == p.QUOTA
    _ok(alice.call("subscribe", q))
    m1 = _receive_one(alice, q, 0)
    assert m1.body == b"1"
    m2 = _ok(alice.call("ack", q, m1.msg_id)).message
    assert m2.body == b"2"
    assert _err(bob.call("send_message", sq, b"4")) == p.QUOTA
    marker = _ok(alice.call("ack", q, m2.msg_id)).message
    assert marker.quota and marker.body == b""
    assert _err(bob.call("send_message", sq, b"5")) == p.QUOTA
    assert _ok(alice.call("ack", q, marker.msg_id)).message is None
    _ok(bob.call("send_message", sq, b"6"))
    assert alice.messages()[-1].body == b"6"


def test_get_then_ack_and_prohibited_sub() -> None:
    """testGetCommand / testGetSubCommands: GET ⇒ MSG, ACK ⇒ OK, GET on empty ⇒ OK; SUB after GET
    on the same connection ⇒ CMD PROHIBITED."""
    net = Network(seed=15)
    router = net.add_router()
    alice = net.add_client(router)
    bob = net.add_client(router)
    q = _new_queue(alice, subscribe=False)
    sq = _sender(net, q)
    _ok(bob.call("secure_sender", sq))
    _ok(bob.call("send_message", sq, b"polled"))
    got = _ok(alice.call("get", q))
    assert got.message.body == b"polled"
    assert _ok(alice.call("get", q)).message.msg_id == got.message.msg_id  # same until ACK
    _ok(alice.call("ack", q, got.message.msg_id))
    empty = _ok(alice.call("get", q))
    assert isinstance(empty.response, p.Ok) and empty.message is None
    assert _err(alice.call("subscribe", q)) == p.CmdError(p.CommandError.PROHIBITED)
    assert alice.messages() == []


def test_reconnect_gets_queued_messages_in_order() -> None:
    net = Network(seed=16)
    router = net.add_router()
    alice = net.add_client(router)
    bob = net.add_client(router)
    q = _new_queue(alice)
    alice.disconnect()
    assert isinstance(alice.events[-1], c.Disconnected) and not alice.connected
    sq = _sender(net, q)
    _ok(bob.call("secure_sender", sq))
    for i in range(3):
        _ok(bob.call("send_message", sq, f"m{i}".encode()))
    alice.reconnect()
    assert alice.connected
    _ok(alice.call("subscribe", q))
    bodies = []
    for _ in range(3):
        msg = alice.messages()[-1]
        bodies.append(msg.body)
        _ok(alice.call("ack", q, msg.msg_id))
    assert bodies == [b"m0", b"m1", b"m2"]


def test_router_closing_the_connection_fails_pending_commands() -> None:
    net = Network(seed=17)
    router = net.add_router()
    alice = net.add_client(router)
    corr = alice.issue("ping")
    router.drop_client(alice)
    failed = [e for e in alice.events if isinstance(e, c.CommandFailed)]
    assert [e.corr_id for e in failed] == [corr] and isinstance(failed[0].error, c.ConnectionLost)
    assert isinstance(alice.events[-1], c.Disconnected)


def test_many_queues_subscribed_in_batches_after_reconnect() -> None:
    """stressTest: 50 queues, reconnect, SUB all (batched) ⇒ SOK for each with its entity."""
    net = Network(seed=18)
    router = net.add_router()
    alice = net.add_client(router)
    qs = [_new_queue(alice, subscribe=False) for _ in range(50)]
    alice.reconnect()
    results = alice.call_many("subscribe_many", qs)
    assert [(type(r.response), r.entity_id) for r in results] == [(p.SOk, q.rcv_id) for q in qs]
    assert alice.machine.subscriptions == {q.rcv_id for q in qs}


def test_concurrent_sends_are_each_delivered_once() -> None:
    """testConcurrentSendDelivery: two connections SEND at the same time, rounds repeated."""
    net = Network(seed=19)
    router = net.add_router()
    alice = net.add_client(router)
    b1 = net.add_client(router)
    b2 = net.add_client(router)
    q = _new_queue(alice)
    sq = _sender(net, q)
    _ok(b1.call("secure_sender", sq))
    _ok(b1.call("send_message", sq, b"hello"))
    _ok(alice.call("ack", q, alice.messages()[-1].msg_id))
    seen: list[bytes] = []
    for r in range(10):
        c1 = b1.issue("send_message", sq, f"{r}a".encode())
        c2 = b2.issue("send_message", sq, f"{r}b".encode())
        net.run_until_idle()
        _ok(b1.results[c1])
        _ok(b2.results[c2])
        for _ in range(2):
            msg = alice.messages()[-1]
            seen.append(msg.body)
            _ok(alice.call("ack", q, msg.msg_id))
    assert sorted(seen) == sorted(f"{r}{x}".encode() for r in range(10) for x in "ab")


def test_keep_alive_pings_keep_the_subscription() -> None:
    net = Network(seed=20)
    router = net.add_router()
    alice = net.add_client(router)
    idle = net.add_client(router)
    _new_queue(alice)
    net.advance(3600)
    assert alice.machine.pings_sent == 6 and alice.connected
    assert idle.machine.pings_sent == 0  # nothing subscribed: no pings (§3.7)
    assert not any(isinstance(e, (c.Disconnected, c.CommandFailed)) for e in alice.events)


def test_same_seed_same_run_other_seed_other_run() -> None:
    def run(seed: int) -> list:
        net = Network(seed=seed, fragment=True)
        router = net.add_router()
        alice = net.add_client(router)
        bob = net.add_client(router)
        q = _new_queue(alice)
        sq = _sender(net, q)
        _ok(bob.call("secure_sender", sq))
        for i in range(3):
            bob.issue("send_message", sq, bytes([i]))
        net.run_until_idle()
        return [q.rcv_id, *[(msg.msg_id, msg.body) for msg in alice.messages()], net.steps]

    assert run(5) == run(5)
    assert run(5)[0] != run(6)[0]


def test_fragmented_byte_delivery() -> None:
    """Chunks split at random points still reassemble into blocks on both sides."""
    net = Network(seed=21, fragment=True)
    router = net.add_router()
    alice = net.add_client(router)
    bob = net.add_client(router)
    q = _new_queue(alice)
    sq = _sender(net, q)
    _ok(bob.call("secure_sender", sq))
    _ok(bob.call("send_message", sq, b"x" * 15000))
    assert alice.messages()[-1].body == b"x" * 15000


def test_legacy_v6_connection_without_alpn() -> None:
    """No ALPN ⇒ v6 only (§2.2): no session key, no block encryption, session id in every
    transmission; no sender-secured queues, so the recipient secures with KEY."""
    net = Network(seed=22)
    router = net.add_router()
    alice = net.add_client(router, alpn=None)
    bob = net.add_client(router, alpn=None)
    assert alice.events[0] == c.Connected(6, False)
    q = _new_queue(alice)
    assert q.queue_mode is None and not q.sender_can_secure
    sq = _sender(net, q)
    _ok(bob.call("send_message", sq, b"v6 hello"))
    msg = _receive_one(alice, q, 0)
    assert isinstance(msg.priv_header, m.PHConfirmation)
    _ok(alice.call("secure", q, msg.priv_header.sender_key))
    _ok(alice.call("ack", q, msg.msg_id))
    _ok(bob.call("send_message", sq, b"v6 signed"))
    assert alice.messages()[-1].body == b"v6 signed"


def test_wrong_key_hash_is_refused() -> None:
    net = Network(seed=23)
    router = net.add_router()
    mallory = net.add_client(router, key_hash=b"\x00" * 32)
    assert not mallory.connected and isinstance(mallory.events[-1], c.Disconnected)
    assert router.connections == {}


def test_x25519_recipient_key_and_queue_info() -> None:
    """X25519 authenticators (v7+, §4.2) for recipient commands; QUE ⇒ INFO."""
    net = Network(seed=24)
    router = net.add_router()
    alice = net.add_client(router)
    q = _new_queue(alice, auth_alg=KeyAlgorithm.X25519, subscribe=False)
    info = _ok(alice.call("queue_info", q)).response
    assert isinstance(info, p.Info) and info.info.size == 0 and not info.info.snd
    _ok(alice.call("off", q))
    _ok(alice.call("delete", q))
    assert _err(alice.call("queue_info", q)) == p.AUTH


def test_new_queue_refused_without_password() -> None:
    net = Network(seed=25)
    router = net.add_router(RouterConfig(basic_auth=b"secret"))
    alice = net.add_client(router)
    assert _err(alice.call("create_queue")) == p.AUTH
    q = _new_queue(alice, basic_auth=b"secret")
    assert q.queue_mode is QueueMode.MESSAGING


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_router_store_records_in_simulation(seed: int) -> None:
    """With persistence on, every acknowledged change reached the (simulated) store first."""
    net = Network(seed=seed)
    router = net.add_router(RouterConfig(persistence=True))
    alice = net.add_client(router)
    bob = net.add_client(router)
    q = _new_queue(alice, subscribe=False)
    sq = _sender(net, q)
    _ok(bob.call("secure_sender", sq))
    _ok(bob.call("send_message", sq, b"durable"))
    assert any(line.startswith("CREATE") for line in router.store_log)
    assert len(router.journal) >= 1
    assert _ok(alice.call("get", q)).message.body == b"durable"


def test_router_restart_restores_queues_and_messages() -> None:
    """testRestoreMessages seen from clients: queues and unacknowledged messages survive a restart;
    clients see the connection close, reconnect and resubscribe."""
    net = Network(seed=26)
    router = net.add_router(RouterConfig(persistence=True, queue_quota=4))
    alice = net.add_client(router)
    bob = net.add_client(router)
    q = _new_queue(alice, subscribe=False)
    sq = _sender(net, q)
    _ok(bob.call("secure_sender", sq))
    for i in range(5):
        bob.call("send_message", sq, f"r{i}".encode())
    router.restart()
    assert not alice.connected and isinstance(alice.events[-1], c.Disconnected)
    alice.reconnect()
    bob.reconnect()
    _ok(alice.call("subscribe", q))
    got = []
    for _ in range(5):
        msg = alice.messages()[-1]
        got.append(b"QUOTA" if msg.quota else msg.body)
        _ok(alice.call("ack", q, msg.msg_id))
    assert got == [b"r0", b"r1", b"r2", b"r3", b"QUOTA"]
    _ok(bob.call("send_message", sq, b"after restart"))  # still secured with Bob's key
    assert alice.messages()[-1].body == b"after restart"
