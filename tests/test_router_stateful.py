"""A Hypothesis state machine of the router against a simple model (smp.md §6.2–§6.6, §6.8):
queues, secured/unsecured SENDs, quotas with the quota marker, subscriptions with pushed MSGs,
ACKs, OFF, DEL, expiry, failed store writes and restarts from the store files.

The model is a list of messages per queue plus "what was delivered". After every step the
router's messages must equal the model's, and replaying the store files must give exactly the
router's in-memory state (persistence loses nothing and invents nothing)."""

from __future__ import annotations

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from router_harness import Harness, create_queue, dec, restart
from sansio_smp.crypto import KeyAlgorithm
from sansio_smp.messages import RcvMsgQuota
from sansio_smp.protocol import (
    AUTH,
    NO_MSG,
    QUOTA,
    Ack,
    Del,
    Err,
    Key,
    Msg,
    Off,
    Ok,
    Send,
    SOk,
    StoreError,
    Sub,
    SubscriptionMode,
)
from sansio_smp.router import RouterConfig
from sansio_smp.store_log import restore_messages, restore_queue_store

QUOTA_N = 2
TTL = 100
MARKER = "QUOTA"


@attrs.define
class MQueue:
    rid: bytes
    sid: bytes
    rkey: object
    dh: bytes
    skey: object = None
    msgs: list = attrs.Factory(list)  # bodies, or MARKER; each (body, ts)
    can_write: bool = True
    off: bool = False
    deleted: bool = False
    subscribed: bool = False
    delivered: bytes | None = None  # msg id delivered to the subscriber, not yet ACKed
    delivered_body: object = None


class RouterMachine(RuleBasedStateMachine):
    queues = Bundle("queues")

    def __init__(self) -> None:
        super().__init__()
        self.config = RouterConfig(queue_quota=QUOTA_N, persistence=True, message_ttl=TTL, expire_interval=10**9)
        self.h = Harness(self.config, seed=7)
        self._connect()
        self.model: list[MQueue] = []
        self.counter = 0

    def _connect(self) -> None:
        self.r = self.h.connect()
        self.s = self.h.connect()

    # -- helpers
    def _body(self) -> bytes:
        self.counter += 1
        return b"m%d" % self.counter

    def _check_push(self, q: MQueue) -> None:
        """Whatever the subscriber connection received unprompted must be the model's push."""
        while self.r.inbox:
            corr, ent, resp = self.r.recv()
            assert corr == b"" and isinstance(resp, Msg), (corr, resp)
            mq = next(x for x in self.model if x.rid == ent)
            assert mq.subscribed and mq.delivered is None and mq.msgs
            self._expect_msg(mq, resp)

    def _expect_msg(self, q: MQueue, resp) -> None:
        assert isinstance(resp, Msg), resp
        body = dec(q.dh, resp)
        head = q.msgs[0][0]
        assert (MARKER if isinstance(body, RcvMsgQuota) else body) == head
        q.delivered, q.delivered_body = resp.msg_id, head

    # -- rules
    @rule(target=queues, subscribe=st.booleans())
    def create(self, subscribe):
        mode = SubscriptionMode.SUBSCRIBE if subscribe else SubscriptionMode.ONLY_CREATE
        rid, sid, rkey, dh, _ = create_queue(self.r, KeyAlgorithm.ED25519, sub_mode=mode)
        q = MQueue(rid, sid, rkey, dh, subscribed=subscribe)
        self.model.append(q)
        return q

    @rule(q=queues)
    def secure(self, q):
        skey = self.h.key()
        resp = self.r.send_recv(b"k", q.rid, Key(skey.public()), q.rkey)[2]
        if q.deleted:
            assert resp == Err(AUTH)
        elif q.skey is None:
            assert resp == Ok()
            q.skey = skey
        else:
            assert resp == Err(AUTH)  # another key

    @rule(q=queues, signed=st.booleans(), fail=st.booleans())
    def send(self, q, signed, fail):
        body = self._body()
        key = q.skey if signed and q.skey is not None else (self.h.key() if signed else None)
        if fail:
            self.h.fail_next_write = "disk full"
        resp = self.s.send_recv(b"s", q.sid, Send(body), key)[2]
        self.h.fail_next_write = None
        authorized = not q.deleted and not q.off and ((key is None) == (q.skey is None)) and (key is None or key is q.skey)
        if not authorized:
            assert resp == Err(AUTH)
        elif not (q.can_write or not q.msgs):
            assert resp == Err(QUOTA)
        elif fail:
            assert resp == Err(StoreError("disk full"))  # nothing changed
        else:
            was_empty = not q.msgs
            if len(q.msgs) < QUOTA_N:
                q.msgs.append((body, self.h.now))
                q.can_write = True
                assert resp == Ok()
            else:
                q.msgs.append((MARKER, self.h.now))
                q.can_write = False
                assert resp == Err(QUOTA)
            if was_empty and q.subscribed and q.delivered is None:
                assert self.r.inbox, "expected a pushed MSG"
        self._check_push(q)

    @rule(q=queues, n=st.integers(2, 4))
    def send_burst(self, q, n):
        for _ in range(n):
            self.send(q, signed=q.skey is not None, fail=False)

    @rule(q=queues)
    def subscribe(self, q):
        self.r.send(b"sub", q.rid, Sub(), q.rkey)
        corr, ent, resp = self.r.recv()
        if q.deleted:
            assert resp == Err(AUTH)
            return
        assert resp == SOk()
        q.subscribed = True
        q.delivered = None
        if q.msgs:
            corr, ent, m = self.r.recv()
            assert corr == b""
            self._expect_msg(q, m)
        self.r.assert_nothing()

    @rule(q=queues, fail=st.booleans())
    def ack(self, q, fail):
        msg_id = q.delivered if q.delivered is not None else b"x" * 24
        if fail:
            self.h.fail_next_write = "disk full"
        resp = self.r.send_recv(b"a", q.rid, Ack(msg_id), q.rkey)[2]
        self.h.fail_next_write = None
        if q.deleted:
            assert resp == Err(AUTH)
            return
        if q.delivered is None:
            assert resp == Err(NO_MSG)
            return
        head_is_delivered = bool(q.msgs) and q.msgs[0][0] == q.delivered_body
        acked_id = q.delivered
        q.delivered = None
        # the reply to ACK does not wait for the removal record (smp.md §6.3: duplicates are
        # allowed, losses are not), so it is the same whether or not the write then fails
        removed = q.msgs.pop(0) if head_is_delivered else None
        if q.msgs:
            self._expect_msg(q, resp)
        else:
            assert resp == Ok()
        if fail and removed is not None:
            # the failed write rolled the removal back, as a crash would: the message is back
            # at the head and pushed again to the subscriber (same msgId)
            q.msgs.insert(0, removed)
            corr, ent, again = self.r.recv()
            assert (corr, ent) == (b"", q.rid) and isinstance(again, Msg) and again.msg_id == acked_id
            self._expect_msg(q, again)
        self.r.assert_nothing()

    @rule(q=queues)
    def suspend(self, q):
        resp = self.r.send_recv(b"o", q.rid, Off(), q.rkey)[2]
        assert resp == (Err(AUTH) if q.deleted else Ok())
        if not q.deleted:
            q.off = True

    @rule(q=queues)
    def delete(self, q):
        resp = self.r.send_recv(b"d", q.rid, Del(), q.rkey)[2]
        assert resp == (Err(AUTH) if q.deleted else Ok())
        q.deleted = True
        q.msgs = []
        q.subscribed = False

    @rule(dt=st.sampled_from([1, 30, 60]))
    def advance_and_expire(self, dt):
        self.h.advance(dt)
        self.h.router.expire_messages(self.h.now)
        self.h.pump()
        old = self.h.now - TTL
        for q in self.model:
            while q.msgs and q.msgs[0][0] != MARKER and q.msgs[0][1] < old:
                q.msgs.pop(0)

    @precondition(lambda self: self.model)
    @rule()
    def restart_router(self):
        self.h = restart(self.h)
        self._connect()
        for q in self.model:
            q.subscribed = False
            q.delivered = None
            q.can_write = q.can_write or not q.msgs
            if any(m[0] == MARKER for m in q.msgs):
                q.can_write = False

    # -- invariants
    @invariant()
    def messages_match_model(self):
        actual = self.h.router.all_messages()
        for q in self.model:
            got = [(MARKER if m.quota else m.body) for m in actual.get(q.rid, [])]
            assert got == [b for b, _ in q.msgs], (got, q.msgs)
            assert (q.rid in self.h.router.store.queues) == (not q.deleted)

    @invariant()
    def store_files_equal_memory(self):
        store, warnings = restore_queue_store(self.h.queue_log)
        assert warnings == []
        assert store.queues == self.h.router.store.queues
        restored = restore_messages(self.h.journal, store.queues, self.h.now, None)
        assert restored.queues == self.h.router.all_messages()


TestRouterMachine = RouterMachine.TestCase
TestRouterMachine.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
