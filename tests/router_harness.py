"""In-memory harness for router tests: a :class:`~sansio_smp.router.Router`, real
:class:`RouterConnection`/:class:`ClientConnection` machines exchanging real blocks (no sockets),
a virtual clock and seeded randomness. Used by test_router.py and test_router_stateful.py."""

from __future__ import annotations

import random
from collections import deque
from functools import lru_cache
from typing import Any

from sansio_smp.connection import ClientConnection, HandshakeComplete, RouterConnection, TransmissionReceived
from sansio_smp.crypto import KeyAlgorithm, PrivateKey, PublicKey
from sansio_smp.encoding import VersionRange
from sansio_smp.handshake import SUPPORTED_SMP_VERSIONS
from sansio_smp.messages import decrypt_rcv_msg_body
from sansio_smp.protocol import (
    Command,
    Ids,
    Key,
    New,
    QueueReqData,
    Response,
    SubscriptionMode,
    encode_command,
    parse_response,
)
from sansio_smp.addresses import QueueMode
from sansio_smp.router import Router, RouterConfig
from sansio_smp.store_log import (
    compacted_journal,
    encode_journal_record,
    encode_record,
    restore_messages,
    restore_queue_store,
)
from sansio_smp.transmission import SMP_BLOCK_SIZE, encode_transmission
from sansio_smp.x509 import RouterIdentity, generate_router_identity, verify_session_key

START = 1_700_000_000.0


@lru_cache(maxsize=1)
def router_identity() -> RouterIdentity:
    rng = random.Random(12345)
    return generate_router_identity("localhost", rng.randbytes, START - 86400, KeyAlgorithm.ED25519)


class TClient:
    """One client connection: sends commands, collects ``(corrId, entityId, Response)``."""

    def __init__(self, h: "Harness", conn_id: int, rc: RouterConnection, cc: ClientConnection) -> None:
        self.h = h
        self.conn_id = conn_id
        self.rc = rc
        self.cc = cc
        self.inbox: deque[tuple[bytes, bytes, Response]] = deque()
        self.blocks: list[list[tuple[bytes, bytes, Response]]] = []  # received, grouped per block
        self.handshake: HandshakeComplete | None = None
        self.closed = False

    @property
    def version(self) -> int:
        assert self.cc.version is not None
        return self.cc.version

    # -- sending
    def transmission(self, corr: bytes, entity: bytes, cmd: Command | bytes, key: PrivateKey | None = None) -> bytes:
        data = cmd if isinstance(cmd, bytes) else encode_command(cmd, self.version)
        return self.cc.authorize(corr, entity, data, key)

    def raw_transmission(self, corr: bytes, entity: bytes, data: bytes, auth: bytes = b"") -> bytes:
        assert self.cc.params is not None
        return encode_transmission(self.cc.params, corr, entity, data, auth)

    def send(self, corr: bytes, entity: bytes, cmd: Command | bytes, key: PrivateKey | None = None) -> None:
        self.send_raw([self.transmission(corr, entity, cmd, key)])

    def send_raw(self, transmissions: list[bytes]) -> None:
        too_large = self.cc.send_transmissions(transmissions)
        assert not too_large
        self.feed_router(self.cc.data_to_send())

    def feed_router(self, data: bytes) -> None:
        for i in range(0, len(data), SMP_BLOCK_SIZE):
            events = self.rc.receive_data(data[i : i + SMP_BLOCK_SIZE])
            self.h.router.handle_events(self.conn_id, events, self.h.now)
            self.h.pump()

    def send_recv(self, corr: bytes, entity: bytes, cmd: Command | bytes, key: PrivateKey | None = None):
        self.send(corr, entity, cmd, key)
        return self.recv()

    def send_recv2(self, corr: bytes, entity: bytes, cmd: Command | bytes, key: PrivateKey | None = None):
        self.send(corr, entity, cmd, key)
        return self.recv(), self.recv()

    # -- receiving
    def receive_bytes(self, data: bytes) -> None:
        for i in range(0, len(data), SMP_BLOCK_SIZE):
            block: list[tuple[bytes, bytes, Response]] = []
            for ev in self.cc.receive_data(data[i : i + SMP_BLOCK_SIZE]):
                if isinstance(ev, HandshakeComplete):
                    self.handshake = ev
                elif isinstance(ev, TransmissionReceived):
                    t = ev.transmission
                    item = (t.corr_id, t.entity_id, parse_response(t.command, self.version))
                    block.append(item)
                    self.inbox.append(item)
                else:
                    raise AssertionError(f"unexpected client event {ev!r}")
            if block:
                self.blocks.append(block)

    def recv(self) -> tuple[bytes, bytes, Response]:
        assert self.inbox, "nothing received"
        return self.inbox.popleft()

    def assert_nothing(self) -> None:
        assert not self.inbox, f"unexpected: {list(self.inbox)!r}"

    def close(self) -> None:
        self.closed = True
        self.h.router.disconnect(self.conn_id)


class Harness:
    def __init__(
        self,
        config: RouterConfig | None = None,
        seed: int = 1,
        now: float = START,
        verifier: Any = None,
        router: Router | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.identity = router_identity()
        self.router = router or Router(config or RouterConfig(), self.rand, verifier=verifier)
        self.router.start(now)
        self.clients: dict[int, TClient] = {}
        self.next_id = 0
        # persistence simulation
        self.auto_store = True
        self.fail_next_write: str | None = None
        self.queue_log: list[str] = []
        self.journal: list[str] = []

    def rand(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def key(self, alg: KeyAlgorithm = KeyAlgorithm.ED25519) -> PrivateKey:
        return PrivateKey.generate(alg, self.rand)

    def connect(
        self,
        versions: VersionRange = SUPPORTED_SMP_VERSIONS,
        send_key: bool = True,
        alpn: str | None = "smp/1",
        proxy_server: bool = False,
    ) -> TClient:
        self.next_id += 1
        cid = self.next_id
        session_id = self.rand(32)
        rc = RouterConnection(
            session_id=session_id,
            key_hash=self.identity.key_hash,
            identity=self.identity,
            random_bytes=self.rand,
            alpn=alpn,
        )
        cc = ClientConnection(
            key_hash=self.identity.key_hash,
            session_id=session_id,
            random_bytes=self.rand,
            peer_chain=self.identity.chain_der,
            verify_session_key=lambda leaf, signed: verify_session_key(leaf, signed),
            versions=versions,
            send_key=send_key,
            proxy_server=proxy_server,
        )
        c = TClient(self, cid, rc, cc)
        self.clients[cid] = c
        self.router.connect(cid, rc)
        self.pump()  # router hello → client, client hello → router
        assert c.handshake is not None
        return c

    def pump(self) -> None:
        for _ in range(100):
            if self.auto_store:
                self.flush_store()
            dirty = self.router.dirty_connections()
            if not dirty:
                return
            for cid in dirty:
                c = self.clients[cid]
                data = c.rc.data_to_send()
                if not data:
                    continue
                hello_pending = c.handshake is None
                c.receive_bytes(data)
                if hello_pending and c.handshake is not None:
                    c.feed_router(c.cc.data_to_send())
        raise AssertionError("pump did not settle")

    def flush_store(self) -> int:
        w = self.router.pending_store_writes()
        if not w:
            return 0
        if self.fail_next_write is not None:
            err, self.fail_next_write = self.fail_next_write, None
            self.router.store_written(err)
        else:
            self.queue_log.extend(w.queue_log)
            self.journal.extend(w.journal)
            self.router.store_written()
        return len(w.queue_log) + len(w.journal)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for _ in range(1000):
            t = self.router.next_timer()
            if t is None or t > self.now:
                break
            self.router.handle_timer(self.now)
            self.pump()
        self.pump()


def restart(h: Harness, config: RouterConfig | None = None, with_log: bool = True, advance: float = 0.0) -> Harness:
    """Stop the router and start a new one from the harness's store files (compacted)."""
    config = config or h.router.config
    now = h.now + advance
    if not with_log:
        return Harness(config, seed=h.rng.randrange(1 << 30), now=now)
    store, warnings = restore_queue_store(h.queue_log)
    assert warnings == []
    restored = restore_messages(h.journal, store.queues, now, config.message_ttl)
    assert restored.warnings == []
    router = Router(config, lambda n: b"", store=store, messages=restored.queues)
    h2 = Harness(config, seed=h.rng.randrange(1 << 30), now=now, router=router)
    router.random_bytes = h2.rand
    h2.queue_log = [encode_record(r) for r in store.compacted_records()]
    h2.journal = [encode_journal_record(r) for r in compacted_journal(restored.queues)]
    h2.expired_on_restore = restored.expired  # type: ignore[attr-defined]
    return h2


# ---------------------------------------------------------------- protocol helpers


def new_cmd(rkey: PrivateKey, dh: PrivateKey, mode: QueueMode = QueueMode.MESSAGING, **kw) -> New:
    req = kw.pop("queue_req_data", QueueReqData(mode))
    return New(rkey.public(), dh.public(), kw.pop("basic_auth", None), kw.pop("sub_mode", SubscriptionMode.SUBSCRIBE), req, kw.pop("ntf_creds", None))


def create_queue(c: TClient, alg: KeyAlgorithm = KeyAlgorithm.ED448, mode: QueueMode = QueueMode.MESSAGING, corr: bytes = b"abcd", **kw):
    """NEW → ``(rid, sid, rkey, dh_secret, ids)``."""
    rkey = c.h.key(alg)
    dh = c.h.key(KeyAlgorithm.X25519)
    corr_, ent, resp = c.send_recv(corr, b"", new_cmd(rkey, dh, mode, **kw), rkey)
    assert (corr_, ent) == (corr, b""), (corr_, ent, resp)
    assert isinstance(resp, Ids), resp
    return resp.rcv_id, resp.snd_id, rkey, dh.dh(resp.srv_dh_key), resp


def create_and_secure(c: TClient, s_pub: PublicKey, **kw):
    """``createAndSecureQueue``: NEW (Ed448) then KEY → ``(sid, rid, rkey, dh_secret)``."""
    rid, sid, rkey, dh, _ = create_queue(c, **kw)
    from sansio_smp.protocol import Ok

    assert c.send_recv(b"dabc", rid, Key(s_pub), rkey) == (b"dabc", rid, Ok())
    return sid, rid, rkey, dh


def dec(dh_secret: bytes, msg) -> object:
    """Decrypt a MSG body: the RcvMsgBody body bytes, or the RcvMsgQuota marker."""
    from sansio_smp.messages import RcvMsgBody

    body = decrypt_rcv_msg_body(dh_secret, msg.msg_id, msg.enc_body)
    return body.body if isinstance(body, RcvMsgBody) else body
