"""Persistence that loses nothing (smp.md §6.8, §6.9; issue item 7).

* The anyio runtime over in-memory pipes with real store files: restart restores everything,
  a failed write answers ``ERR STORE`` and loses nothing already acknowledged.
* The real ``smp-server`` program in a subprocess over TLS on loopback: SIGKILL and SIGTERM in
  the middle of a stream of SENDs from several connections, restart, and every message whose
  SEND got ``OK`` is delivered; expired messages are dropped at start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import anyio
import pytest

from sansio_smp.addresses import QueueMode
from sansio_smp.connection import ClientConnection, HandshakeComplete, TransmissionReceived
from sansio_smp.crypto import KeyAlgorithm, PrivateKey
from sansio_smp.encoding import b64url_decode
from sansio_smp.messages import RcvMsgBody, decrypt_rcv_msg_body
from sansio_smp.protocol import (
    Ack,
    Err,
    Ids,
    Key,
    Msg,
    New,
    Ok,
    QueueReqData,
    Send,
    SOk,
    StoreError,
    Sub,
    SubscriptionMode,
    encode_command,
    parse_response,
)
from sansio_smp.router import Router, RouterConfig
from sansio_smp.x509 import verify_session_key
from transports.memory import memory_stream_pair
from transports.router_runtime import RouterRuntime
from transports.store_files import StoreFiles, StoreWriteError
from transports.tls import connect_tls

from router_harness import router_identity

ROOT = Path(__file__).resolve().parent.parent


class StreamClient:
    """A minimal SMP client over a :class:`~transports.tls.BlockStream` (TLS or memory)."""

    def __init__(self, stream, key_hash: bytes) -> None:
        self.stream = stream
        self.cc = ClientConnection(
            key_hash=key_hash,
            session_id=stream.tls_unique,
            random_bytes=os.urandom,
            peer_chain=stream.peer_chain_der,
            verify_session_key=lambda leaf, signed: verify_session_key(leaf, signed),
        )
        self.inbox: deque = deque()

    async def handshake(self) -> None:
        evs = self.cc.receive_data(await self.stream.receive_block())
        assert any(isinstance(e, HandshakeComplete) for e in evs), evs
        await self.stream.send(self.cc.data_to_send())

    async def send(self, corr: bytes, entity: bytes, cmd, key: PrivateKey | None = None) -> None:
        t = self.cc.authorize(corr, entity, encode_command(cmd, self.cc.version), key)
        self.cc.send_transmissions([t])
        await self.stream.send(self.cc.data_to_send())

    async def recv(self, timeout: float = 10.0):
        with anyio.fail_after(timeout):
            while not self.inbox:
                for ev in self.cc.receive_data(await self.stream.receive_block()):
                    if isinstance(ev, TransmissionReceived):
                        t = ev.transmission
                        self.inbox.append((t.corr_id, t.entity_id, parse_response(t.command, self.cc.version)))
        return self.inbox.popleft()

    async def call(self, corr: bytes, entity: bytes, cmd, key: PrivateKey | None = None):
        await self.send(corr, entity, cmd, key)
        while True:
            item = await self.recv()
            if item[0] == corr:
                return item
            self.inbox.append(item)  # a pushed MSG: keep it for later
            if len(self.inbox) > 1000:
                raise AssertionError("reply never came")


async def create_secured_queue(c: StreamClient):
    rkey = PrivateKey.generate(KeyAlgorithm.ED25519, os.urandom)
    skey = PrivateKey.generate(KeyAlgorithm.ED25519, os.urandom)
    dh = PrivateKey.generate(KeyAlgorithm.X25519, os.urandom)
    new = New(rkey.public(), dh.public(), None, SubscriptionMode.ONLY_CREATE, QueueReqData(QueueMode.MESSAGING))
    _, _, ids = await c.call(b"new", b"", new, rkey)
    assert isinstance(ids, Ids), ids
    assert (await c.call(b"key", ids.rcv_id, Key(skey.public()), rkey))[2] == Ok()
    return ids.rcv_id, ids.snd_id, rkey, skey, dh.dh(ids.srv_dh_key)


async def drain_queue(c: StreamClient, rid: bytes, rkey: PrivateKey, dh: bytes, idle: float = 1.5) -> list[bytes]:
    """SUB, then ACK every delivered message until nothing arrives for ``idle`` seconds;
    the message bodies in delivery order."""
    await c.send(b"sub", rid, Sub(), rkey)
    got: list[bytes] = []
    while True:
        try:
            corr, ent, resp = await c.recv(timeout=idle)
        except TimeoutError:
            return got
        if isinstance(resp, Msg):
            body = decrypt_rcv_msg_body(dh, resp.msg_id, resp.enc_body)
            assert isinstance(body, RcvMsgBody)
            got.append(body.body)
            await c.send(b"ack", rid, Ack(resp.msg_id), rkey)
        else:
            assert resp in (SOk(), Ok()), resp


# ---------------------------------------------------------------- runtime over memory pipes


async def _memory_client(runtime: RouterRuntime, tg, identity) -> StreamClient:
    client_end, server_end = memory_stream_pair(os.urandom(32), server_chain_der=identity.chain_der)
    tg.start_soon(runtime.serve_stream, server_end)
    c = StreamClient(client_end, identity.key_hash)
    await c.handshake()
    return c


def _runtime(tmp: Path, now: float | None = None) -> RouterRuntime:
    files = StoreFiles(str(tmp))
    state = files.open(time.time() if now is None else now, None)
    router = Router(RouterConfig(persistence=True), os.urandom, store=state.store, messages=state.messages)
    return RouterRuntime(router, router_identity(), files)


def test_runtime_memory_restart_restores_everything(tmp_path):
    identity = router_identity()
    sent: list[bytes] = []

    async def first_run():
        runtime = _runtime(tmp_path)
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            c = await _memory_client(runtime, tg, identity)
            senders = [await _memory_client(runtime, tg, identity) for _ in range(3)]
            queue = await create_secured_queue(c)
            rid, sid, rkey, skey, dh = queue
            # three connections send concurrently: their records share fsync batches
            async def send_many(s: StreamClient, n: int):
                for i in range(10):
                    body = b"c%d-%d" % (n, i)
                    assert (await s.call(b"%d" % i, sid, Send(body), skey))[2] == Ok()
                    sent.append(body)

            async with anyio.create_task_group() as stg:
                for n, s in enumerate(senders):
                    stg.start_soon(send_many, s, n)
            runtime.stop()
        return queue

    rid, sid, rkey, skey, dh = anyio.run(first_run)
    assert len(sent) == 30

    async def second_run():
        runtime = _runtime(tmp_path)
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            c = await _memory_client(runtime, tg, identity)
            got = await drain_queue(c, rid, rkey, dh)
            runtime.stop()
        return got

    got = anyio.run(second_run)
    assert sorted(got) == sorted(sent)  # every acknowledged message, once
    for n in range(3):  # per sender, in order
        mine = [b for b in got if b.startswith(b"c%d-" % n)]
        assert mine == [b"c%d-%d" % (n, i) for i in range(10)]


def test_runtime_store_failure_answers_store_error(tmp_path, monkeypatch):
    identity = router_identity()

    async def run():
        runtime = _runtime(tmp_path)
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            c = await _memory_client(runtime, tg, identity)
            rid, sid, rkey, skey, dh = await create_secured_queue(c)
            assert (await c.call(b"1", sid, Send(b"kept"), skey))[2] == Ok()
            real_append = StoreFiles.append

            def full_disk(self, q, j):
                raise StoreWriteError(28, "No space left on device")

            monkeypatch.setattr(StoreFiles, "append", full_disk)
            assert (await c.call(b"2", sid, Send(b"lost"), skey))[2] == Err(StoreError("No space left on device"))
            monkeypatch.setattr(StoreFiles, "append", real_append)
            assert (await c.call(b"3", sid, Send(b"kept too"), skey))[2] == Ok()
            runtime.stop()
        return rid, rkey, dh

    rid, rkey, dh = anyio.run(run)

    async def check():
        runtime = _runtime(tmp_path)
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            c = await _memory_client(runtime, tg, identity)
            got = await drain_queue(c, rid, rkey, dh)
            runtime.stop()
        return got

    assert anyio.run(check) == [b"kept", b"kept too"]


def test_runtime_ack_reply_precedes_its_record_and_a_crash_redelivers(tmp_path, monkeypatch):
    """The reply to ACK goes out while its removal record is still unwritten (the write is held
    in the store thread here); a crash at that moment (the files as they are on disk) restarts
    with the acknowledged message delivered again and nothing else lost (smp.md §6.3)."""
    import shutil
    import threading

    identity = router_identity()
    crash_dir = tmp_path / "crash"
    gate = threading.Event()
    real_append = StoreFiles.append

    def held_append(self, q, j):
        if any(line.startswith("A ") for line in j):
            assert gate.wait(10)
        real_append(self, q, j)

    async def run():
        runtime = _runtime(tmp_path)
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            c = await _memory_client(runtime, tg, identity)
            rid, sid, rkey, skey, dh = await create_secured_queue(c)
            other = await create_secured_queue(c)
            for corr, body in ((b"1", b"first"), (b"2", b"second")):
                assert (await c.call(corr, sid, Send(body), skey))[2] == Ok()
            assert (await c.call(b"3", other[1], Send(b"elsewhere"), other[3]))[2] == Ok()
            await c.send(b"sub", rid, Sub(), rkey)
            assert (await c.recv())[2] == SOk()
            _, _, m1 = await c.recv()
            monkeypatch.setattr(StoreFiles, "append", held_append)
            _, _, m2 = await c.call(b"ack", rid, Ack(m1.msg_id), rkey)  # answered...
            assert decrypt_rcv_msg_body(dh, m2.msg_id, m2.enc_body).body == b"second"
            journal = (tmp_path / "smp-server-messages.journal").read_text()
            assert not any(line.startswith("A ") for line in journal.splitlines())  # ...not written
            shutil.copytree(tmp_path, crash_dir, ignore=shutil.ignore_patterns("crash"))  # the crash
            gate.set()
            runtime.stop()
        return rid, rkey, dh, m1.msg_id, other

    rid, rkey, dh, m1_id, other = anyio.run(run)
    assert any(line.startswith("A ") for line in (tmp_path / "smp-server-messages.journal").read_text().splitlines())

    async def after_crash():
        runtime = _runtime(crash_dir)
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            c = await _memory_client(runtime, tg, identity)
            await c.send(b"sub", rid, Sub(), rkey)
            assert (await c.recv())[2] == SOk()
            _, _, again = await c.recv()
            got = await drain_queue(c, rid, rkey, dh)
            got_other = await drain_queue(c, other[0], other[2], other[4])
            runtime.stop()
        return again, got, got_other

    again, got, got_other = anyio.run(after_crash)
    assert again.msg_id == m1_id  # the acknowledged message, delivered again (same msgId)
    assert decrypt_rcv_msg_body(dh, again.msg_id, again.enc_body).body == b"first"
    assert got == [b"first", b"second"] and got_other == [b"elsewhere"]


# ---------------------------------------------------------------- the real program


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sansio_smp.server_cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


class Server:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sansio_smp.server_cli", "start", "--dir", str(self.directory), "--log-level", "warn"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening" in line, (line, self.proc.stderr.read() if self.proc.poll() is not None else "")

    def stop(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=20)
        self.stderr = self.proc.stderr.read() if self.proc.stderr else ""
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc


@pytest.fixture
def server_dir(tmp_path):
    d = tmp_path / "srv"
    port = _free_port()
    r = _cli("init", "--dir", str(d), "--port", str(port), "--no-password")
    assert r.returncode == 0, r.stderr
    fingerprint = (d / "fingerprint").read_text().strip()
    ini = d / "smp-server.ini"
    ini.write_text(ini.read_text().replace("msg_queue_quota = 128", "msg_queue_quota = 100000"))
    return d, port, b64url_decode(fingerprint)


async def _tls_client(port: int, key_hash: bytes) -> StreamClient:
    stream = await connect_tls("127.0.0.1", port, key_hash, timeout=10)
    c = StreamClient(stream, key_hash)
    await c.handshake()
    return c


def _crash_scenario(server_dir, sig: int) -> None:
    d, port, key_hash = server_dir
    srv = Server(d)
    srv.start()
    acked: list[bytes] = []
    unacked: list[bytes] = []

    async def phase1():
        admin = await _tls_client(port, key_hash)
        queue = await create_secured_queue(admin)
        rid, sid, rkey, skey, dh = queue
        senders = [await _tls_client(port, key_hash) for _ in range(3)]

        async def pump(n: int, s: StreamClient):
            i = 0
            while True:
                body = b"s%d-%d" % (n, i)
                i += 1
                unacked.append(body)
                try:
                    corr, _, resp = await s.call(b"%d" % i, sid, Send(body), skey)
                except Exception:
                    return  # the server went away
                assert resp == Ok(), resp
                unacked.remove(body)
                acked.append(body)

        async with anyio.create_task_group() as tg:
            for n, s in enumerate(senders):
                tg.start_soon(pump, n, s)
            # let them run, then pull the plug while SENDs are in flight
            while len(acked) < 60:
                await anyio.sleep(0.01)
            await anyio.to_thread.run_sync(srv.stop, sig)
        return queue

    rid, sid, rkey, skey, dh = anyio.run(phase1)
    assert len(acked) >= 60
    srv.start()

    async def phase2():
        c = await _tls_client(port, key_hash)
        return await drain_queue(c, rid, rkey, dh, idle=3.0)

    got = anyio.run(phase2)
    assert srv.stop(signal.SIGTERM) == 0
    assert "Traceback" not in srv.stderr, srv.stderr
    missing = set(acked) - set(got)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    assert len(got) == len(set(got)), "a message was delivered twice"
    assert set(got) <= set(acked) | set(unacked)
    for n in range(3):  # each sender's messages in order
        mine = [b for b in got if b.startswith(b"s%d-" % n)]
        assert mine == sorted(mine, key=lambda b: int(b.split(b"-")[1]))


def test_sigkill_loses_no_acknowledged_message(server_dir):
    _crash_scenario(server_dir, signal.SIGKILL)


def test_sigterm_loses_no_acknowledged_message(server_dir):
    _crash_scenario(server_dir, signal.SIGTERM)


def test_expired_messages_dropped_on_restart(server_dir):
    d, port, key_hash = server_dir
    ini = d / "smp-server.ini"
    ini.write_text(ini.read_text().replace("expire_check_interval", "expire_messages_seconds = 3\nexpire_check_interval"))
    srv = Server(d)
    srv.start()

    async def phase1():
        c = await _tls_client(port, key_hash)
        q = await create_secured_queue(c)
        rid, sid, rkey, skey, dh = q
        for b in (b"old 1", b"old 2"):
            assert (await c.call(b"s", sid, Send(b), skey))[2] == Ok()
        await anyio.sleep(4.5)
        for b in (b"new 1", b"new 2"):
            assert (await c.call(b"s", sid, Send(b), skey))[2] == Ok()
        return q

    rid, sid, rkey, skey, dh = anyio.run(phase1)
    srv.stop(signal.SIGKILL)
    srv.start()  # well within 3 s of the new messages: only the old ones are expired

    async def phase2():
        c = await _tls_client(port, key_hash)
        return await drain_queue(c, rid, rkey, dh)

    assert anyio.run(phase2) == [b"new 1", b"new 2"]
    srv.stop(signal.SIGTERM)
    assert "Traceback" not in srv.stderr
