"""SMP router benchmark (issue 2, item 11). Not a test.

    python bench/bench_router.py [--quick] [--json PATH] [--full] [--pairs N] [--window W] [--seconds S]

Measures in one run and prints a table (and writes it as JSON with ``--json``):

1. **Throughput** SEND→MSG→ACK over TLS on 127.0.0.1: ``smp-server start`` runs as a
   subprocess (its CPU read from ``/proc/<pid>/stat``), N sender/recipient session pairs run in
   this process (each sender keeps ``W`` messages in flight; each recipient is subscribed and
   ACKs every MSG). Messages/s, end-to-end latency p50/p99 (send → MSG received), router and
   client CPU per message. Twice: with the store log on (the ``init`` default: every SEND and ACK
   is fsync'd before the reply) and off (``init --disable-store-log``).
2. **Memory per idle queue**: in a child process, a :class:`~sansio_smp.router.Router` gets
   Q queues through the real command path (signed ``NEW`` blocks from a
   :class:`~sansio_smp.connection.ClientConnection` through a
   :class:`~sansio_smp.connection.RouterConnection` and ``Router.handle_events``); tracemalloc
   and RSS deltas per queue, then the extra cost of subscribing them all (``SUB``).
3. **Memory per idle TLS connection**: C TLS connections to a fresh router subprocess, each
   with the SMP handshake done and one PING/PONG, then the router's VmRSS delta / C.
4. **Store-log restore**: a store log of R ``CREATE`` lines (``store_log.encode_record``; every
   queue secured, 30% with notifier credentials), restored with the path ``smp-server start``
   uses (``StoreFiles.open``: read, parse, apply, compact with fsync); extrapolated to 1M
   (``--full`` also measures 1M when the extrapolation is under 60 s).
5. **Crypto floor per message** (this run, this machine): what a router cannot avoid per
   delivered message — SEND: block decryption + Ed25519 verification over the ~16 KB signed
   bytes; MSG: ``cb_encrypt`` of the body padded to 16106 + block encryption; OK to SEND: block
   encryption; ACK: block decryption + Ed25519 verification + OK block encryption; plus TLS
   record encryption (3 blocks) and decryption (2 blocks) measured on ``ssl.MemoryBIO`` pairs
   with the router's TLS context (TLS 1.3 ChaCha20-Poly1305). Reported with the ratio
   router CPU per message / floor.

Targets (issue 2): ≤ 2× the crypto floor, ≤ 1 KB per idle queue, ≤ 64 KB per idle TLS
connection, 1M queues restored in ≤ 30 s. ``--quick`` uses small counts (about 1–2 minutes).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import anyio

from sansio_smp import client as c
from sansio_smp.addresses import ProtocolServer, QueueMode
from sansio_smp.connection import ClientConnection, HandshakeComplete, RouterConnection, TransmissionReceived
from sansio_smp.crypto import KeyAlgorithm, PrivateKey, PublicKey, cb_encrypt, cb_nonce
from sansio_smp.messages import RcvMsgBody, encode_rcv_msg_body
from sansio_smp.protocol import (
    RCV_MSG_PADDED_LENGTH,
    Ack,
    New,
    Ping,
    QueueReqData,
    Send,
    Sub,
    SubscriptionMode,
    encode_command,
    parse_response,
)
from sansio_smp.router import Router, RouterConfig
from sansio_smp.store_log import CreateQueue, NtfCreds, QueueRec, encode_record, restore_queue_store
from sansio_smp.transmission import SMP_BLOCK_SIZE, BlockCipher, authorized_bytes
from sansio_smp.x509 import generate_router_identity, verify_session_key
from transports.client_runtime import connect_session
from transports.store_files import QUEUE_LOG_NAME, StoreFiles
from transports.tls import client_ssl_context, connect_tls, server_ssl_context

CLK_TCK = os.sysconf("SC_CLK_TCK")
DAY = 86400


# ---------------------------------------------------------------- process helpers


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all threads), seconds (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def proc_rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RouterProcess:
    """``smp-server init`` + ``smp-server start`` in a temporary directory (a subprocess)."""

    def __init__(self, store_log: bool = True) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-smp-router-")
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cli = [sys.executable, "-m", "sansio_smp.server_cli"]
        init = cli + ["init", "--no-password", "--dir", self.dir, "--host", "127.0.0.1", "--port", str(self.port)]
        if not store_log:
            init.append("--disable-store-log")
        out = subprocess.run(init, check=True, capture_output=True, text=True, env=env, cwd=str(ROOT))
        self.address = out.stdout.strip().splitlines()[-1]
        self.log_path = os.path.join(self.dir, "router-stderr.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - held until stop()
        self.proc = subprocess.Popen(
            cli + ["start", "--dir", self.dir, "--log-level", "warn"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=str(ROOT),
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        line = b""
        while b"listening" not in line:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                with open(self.log_path, "rb") as f:
                    err = f.read().decode(errors="replace")
                raise RuntimeError(f"router did not start: {err}")
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                line = self.proc.stdout.readline()
        self.pid = self.proc.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def rss_kb(self) -> int:
        return proc_rss_kb(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


# ---------------------------------------------------------------- 5. crypto floor


def _per_call(fn: Callable[[int], object], n: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` seconds per call of ``fn(i)`` over ``n`` calls."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter() - t) / n)
    return best


def _tls_pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext):  # type: ignore[no-untyped-def]
    """A completed TLS handshake between two in-memory SSLObjects."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    cli = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    done_s = done_c = False
    for _ in range(20):
        if not done_c:
            try:
                cli.do_handshake()
                done_c = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not done_s:
            try:
                srv.do_handshake()
                done_s = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if done_s and done_c:
            break
    assert done_s and done_c, "in-memory TLS handshake did not finish"
    return srv, s_in, s_out, cli, c_in, c_out


def crypto_floor(n: int) -> dict[str, Any]:
    """µs per delivered message of the crypto no router can avoid (see the module docstring)."""
    rb = os.urandom
    session_id, dh = rb(32), rb(32)
    r_snd, r_rcv = BlockCipher.pair(session_id, dh, True)
    c_snd, c_rcv = BlockCipher.pair(session_id, dh, False)
    snd_key = PrivateKey.generate(KeyAlgorithm.ED25519, rb)
    rcv_key = PrivateKey.generate(KeyAlgorithm.ED25519, rb)
    body = rb(16043)  # the size of an agent message envelope (ClientMsgEnvelope, §5.4)
    corr, sid = rb(24), rb(24)
    send_cmd = encode_command(Send(body), 18)
    send_auth = authorized_bytes(session_id, corr, sid, send_cmd)
    send_sig = snd_key.sign(send_auth)
    ack_auth = authorized_bytes(session_id, corr, sid, encode_command(Ack(rb(24)), 18))
    ack_sig = rcv_key.sign(ack_auth)
    snd_pub, rcv_pub = snd_key.public(), rcv_key.public()
    snd_pub_r = PublicKey(snd_pub.alg, snd_pub.raw)  # router's key objects, parsed from the store
    rcv_pub_r = PublicKey(rcv_pub.alg, rcv_pub.raw)
    payload = b"x" * (SMP_BLOCK_SIZE - 16 - 2)  # a full block payload (SEND/MSG ~ 16.1 KB)
    ok_payload = b"y" * 60  # an OK transmission batch
    rcv_body = encode_rcv_msg_body(RcvMsgBody(int(time.time()), body, False))
    msg_secret = rb(32)

    k = max(n, 1) * 3 + 10
    in_blocks = [c_snd.encrypt(payload) for _ in range(k)]  # client → router, in chain order
    it = iter(in_blocks)
    block_dec = _per_call(lambda i: r_rcv.decrypt(next(it)), n)
    block_enc = _per_call(lambda i: r_snd.encrypt(payload), n)
    block_enc_ok = _per_call(lambda i: r_snd.encrypt(ok_payload), n)
    verify_send = _per_call(lambda i: snd_pub_r.verify(send_sig, send_auth), n)
    verify_ack = _per_call(lambda i: rcv_pub_r.verify(ack_sig, ack_auth), n)
    msg_enc = _per_call(lambda i: cb_encrypt(msg_secret, cb_nonce(corr), rcv_body, RCV_MSG_PADDED_LENGTH), n)
    del c_rcv

    identity = generate_router_identity("127.0.0.1", rb, time.time() - 3600)
    sctx = server_ssl_context(identity.chain_pem(), identity.server_key_pem())
    srv, s_in, s_out, cli, _c_in, c_out = _tls_pair(sctx, client_ssl_context())
    block = rb(SMP_BLOCK_SIZE)

    def tls_enc(_i: int) -> None:
        srv.write(block)
        s_out.read()

    records = []
    for _ in range(k):
        cli.write(block)
        records.append(c_out.read())
    rit = iter(records)

    def tls_dec(_i: int) -> None:
        s_in.write(next(rit))
        got = 0
        while got < SMP_BLOCK_SIZE:
            got += len(srv.read(SMP_BLOCK_SIZE))

    t_tls_enc = _per_call(tls_enc, n)
    t_tls_dec = _per_call(tls_dec, n)
    # cross-check: raw ChaCha20-Poly1305 on 16 KB (what the TLS record layer does)
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    aead, nonce = ChaCha20Poly1305(rb(32)), rb(12)
    chacha = _per_call(lambda i: aead.encrypt(nonce, block, None), n)

    us = 1e6
    parts = {
        "send_block_decrypt": block_dec * us,
        "send_verify_ed25519_16k": verify_send * us,
        "msg_body_cb_encrypt_16106": msg_enc * us,
        "msg_block_encrypt": block_enc * us,
        "ok_block_encrypt_x2": 2 * block_enc_ok * us,
        "ack_block_decrypt": block_dec * us,
        "ack_verify_ed25519": verify_ack * us,
        "tls_record_encrypt_x3": 3 * t_tls_enc * us,
        "tls_record_decrypt_x2": 2 * t_tls_dec * us,
    }
    return {
        "parts_us": parts,
        "floor_us": sum(parts.values()),
        "tls_sealing_16k_us": t_tls_enc * us,
        "tls_opening_16k_us": t_tls_dec * us,
        "chacha20poly1305_16k_us": chacha * us,
        "tls_cipher": srv.cipher()[0] if srv.cipher() else None,
    }


# ---------------------------------------------------------------- 1. throughput


async def _throughput(router: RouterProcess, pairs: int, window: int, warmup: float, seconds: float) -> dict[str, Any]:
    rb = os.urandom
    # a realistic SEND body: the size of an agent message in the per-queue e2e envelope (§5.4)
    probe = c.SenderQueue(
        None, rb(24), PrivateKey.generate(KeyAlgorithm.X25519, rb).public(),
        PrivateKey.generate(KeyAlgorithm.ED25519, rb), PrivateKey.generate(KeyAlgorithm.X25519, rb),
        QueueMode.MESSAGING, secured=True, confirmed=True,
    )
    body_len = len(c.encrypt_envelope(probe, b"", rb(24), False))
    filler = rb(body_len - 8)
    address = ProtocolServer.from_str(router.address)
    state = {"measuring": False, "stop": False, "count": 0, "errors": 0}
    latencies: list[float] = []

    async with AsyncExitStack() as stack:
        links = []
        for _ in range(pairs):
            rcv = await stack.enter_async_context(connect_session(address))
            q = await rcv.create_queue(subscribe=True, with_e2e_key=False)
            snd = await stack.enter_async_context(connect_session(address))
            sq = c.SenderQueue(
                None, q.snd_id, PrivateKey.generate(KeyAlgorithm.X25519, rb).public(),
                PrivateKey.generate(KeyAlgorithm.ED25519, rb), PrivateKey.generate(KeyAlgorithm.X25519, rb),
                QueueMode.MESSAGING,
            )
            await snd.secure_sender(sq)
            links.append((rcv, q, snd, sq, anyio.Semaphore(window)))

        async def sender(snd: Any, sq: c.SenderQueue, sem: anyio.Semaphore) -> None:
            while not state["stop"]:
                await sem.acquire()
                if state["stop"]:
                    return
                try:
                    await snd.send(sq.snd_id, struct.pack(">d", time.perf_counter()) + filler, sq.snd_auth_key)
                except c.ClientError:
                    state["errors"] += 1
                    sem.release()

        async def recipient(rcv: Any, q: c.RecipientQueue, sem: anyio.Semaphore) -> None:
            async for msg in rcv.messages():
                now = time.perf_counter()
                if msg.error is None and state["measuring"]:
                    latencies.append(now - struct.unpack(">d", msg.body[:8])[0])
                    state["count"] += 1
                sem.release()
                await rcv.ack(q, msg.msg_id)

        async with anyio.create_task_group() as tg:
            for rcv, q, snd, sq, sem in links:
                tg.start_soon(recipient, rcv, q, sem)
                for _ in range(window):
                    tg.start_soon(sender, snd, sq, sem)
            await anyio.sleep(warmup)
            r0, c0, t0 = router.cpu(), self_cpu(), time.perf_counter()
            state["measuring"] = True
            await anyio.sleep(seconds)
            state["measuring"] = False
            r1, c1, t1 = router.cpu(), self_cpu(), time.perf_counter()
            n = state["count"]
            state["stop"] = True
            for *_, sem in links:
                for _ in range(window):
                    sem.release()
            await anyio.sleep(0.5)
            tg.cancel_scope.cancel()
    latencies.sort()
    elapsed = t1 - t0
    return {
        "pairs": pairs,
        "window": window,
        "body_bytes": body_len,
        "seconds": elapsed,
        "messages": n,
        "msgs_per_s": n / elapsed,
        "latency_p50_ms": percentile(latencies, 0.50) * 1e3,
        "latency_p99_ms": percentile(latencies, 0.99) * 1e3,
        "router_cpu_s": r1 - r0,
        "router_cpu_util": (r1 - r0) / elapsed,
        "router_cpu_us_per_msg": (r1 - r0) / max(n, 1) * 1e6,
        "client_cpu_s": c1 - c0,
        "client_cpu_util": (c1 - c0) / elapsed,
        "client_cpu_us_per_msg": (c1 - c0) / max(n, 1) * 1e6,
        "send_errors": state["errors"],
    }


def throughput(store_log: bool, pairs: int, window: int, warmup: float, seconds: float) -> dict[str, Any]:
    router = RouterProcess(store_log=store_log)
    try:
        res = anyio.run(_throughput, router, pairs, window, warmup, seconds)
    finally:
        router.stop()
    res["store_log"] = store_log
    return res


# ---------------------------------------------------------------- 3. idle TLS connections


async def _idle_connection(port: int, key_hash: bytes, ctx: ssl.SSLContext) -> Any:
    """A TLS connection with the SMP handshake done and one PING answered; left open."""
    stream = await connect_tls("127.0.0.1", port, key_hash, ssl_context=ctx, timeout=60)
    cc = ClientConnection(
        key_hash=key_hash,
        session_id=stream.tls_unique,
        random_bytes=os.urandom,
        peer_chain=stream.peer_chain_der,
        verify_session_key=verify_session_key,
    )
    events = cc.receive_data(await stream.receive_block())
    assert any(isinstance(e, HandshakeComplete) for e in events), events
    await stream.send(cc.data_to_send())
    assert cc.version is not None
    cc.send_transmissions([cc.authorize(os.urandom(24), b"", encode_command(Ping(), cc.version), None)])
    await stream.send(cc.data_to_send())
    events = cc.receive_data(await stream.receive_block())
    assert any(isinstance(e, TransmissionReceived) and e.transmission.command == b"PONG" for e in events), events
    return stream


async def _idle_connections(router: RouterProcess, n: int, warm: int, concurrency: int = 32) -> dict[str, Any]:
    address = ProtocolServer.from_str(router.address)
    ctx = client_ssl_context()
    streams: list[Any] = []
    limiter = anyio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            streams.append(await _idle_connection(router.port, address.key_hash, ctx))

    async def open_many(k: int) -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(k):
                tg.start_soon(one)

    await open_many(warm)  # warm-up: lazy imports, first allocations
    await anyio.sleep(1.0)
    rss0, cpu0 = router.rss_kb(), router.cpu()
    t = time.perf_counter()
    await open_many(n)
    setup = time.perf_counter() - t
    cpu1 = router.cpu()
    await anyio.sleep(2.0)  # idle
    rss1 = router.rss_kb()
    assert len(streams) == n + warm
    for s in streams:
        await anyio.aclose_forcefully(s)
    return {
        "connections": n,
        "router_rss_before_kb": rss0,
        "router_rss_after_kb": rss1,
        "kb_per_connection": (rss1 - rss0) / n,
        "setup_s": setup,
        "router_cpu_ms_per_connection": (cpu1 - cpu0) / n * 1e3,
    }


def idle_connections(n: int) -> dict[str, Any]:
    router = RouterProcess(store_log=True)
    try:
        return anyio.run(_idle_connections, router, n, 10)
    finally:
        router.stop()


# ---------------------------------------------------------------- 2. memory per idle queue (child process)


def _child_queue_memory(n: int) -> dict[str, Any]:
    import tracemalloc

    rb = os.urandom
    now = time.time()
    identity = generate_router_identity("127.0.0.1", rb, now - 3600)
    pool = [(PrivateKey.generate(KeyAlgorithm.ED25519, rb), PrivateKey.generate(KeyAlgorithm.X25519, rb)) for _ in range(256)]
    for k, d in pool:
        k.public(), d.public()
    gc.collect()
    rss0 = proc_rss_kb()
    tracemalloc.start()
    tm0 = tracemalloc.get_traced_memory()[0]
    tmo0 = tracemalloc.get_tracemalloc_memory()

    router = Router(RouterConfig(), rb)
    router.start(now)
    session_id = rb(32)
    rc = RouterConnection(session_id=session_id, key_hash=identity.key_hash, identity=identity, random_bytes=rb)
    cc = ClientConnection(
        key_hash=identity.key_hash, session_id=session_id, random_bytes=rb,
        peer_chain=identity.chain_der, verify_session_key=verify_session_key,
    )
    router.connect(1, rc)
    cc.receive_data(rc.data_to_send())
    router.handle_events(1, rc.receive_data(cc.data_to_send()), now)
    rc.data_to_send()
    v = cc.version
    assert v is not None

    def feed(transmissions: list[bytes]) -> bytes:
        cc.send_transmissions(transmissions)
        data = cc.data_to_send()
        for i in range(0, len(data), SMP_BLOCK_SIZE):
            router.handle_events(1, rc.receive_data(data[i : i + SMP_BLOCK_SIZE]), now)
        router.dirty_connections()
        return rc.data_to_send()

    # a first block decrypted on the client side to check that NEW really succeeds (IDS)
    rkey, dkey = pool[0]
    cmd = encode_command(New(rkey.public(), dkey.public(), None, SubscriptionMode.ONLY_CREATE, QueueReqData(QueueMode.MESSAGING)), v)
    out = feed([cc.authorize(rb(24), b"", cmd, rkey)])
    evs = cc.receive_data(out)
    resp = parse_response(evs[0].transmission.command, v)  # type: ignore[union-attr]
    assert type(resp).__name__ == "Ids", resp

    batch = 500
    t = time.perf_counter()
    made = 1
    while made < n:
        k = min(batch, n - made)
        ts = []
        for j in range(k):
            rkey, dkey = pool[(made + j) % len(pool)]
            cmd = encode_command(
                New(rkey.public(), dkey.public(), None, SubscriptionMode.ONLY_CREATE, QueueReqData(QueueMode.MESSAGING)), v
            )
            ts.append(cc.authorize(rb(24), b"", cmd, rkey))
        feed(ts)
        made += k
    create_s = time.perf_counter() - t
    assert len(router.store.queues) == n, len(router.store.queues)
    gc.collect()
    tm1 = tracemalloc.get_traced_memory()[0]
    tmo1 = tracemalloc.get_tracemalloc_memory()
    rss1 = proc_rss_kb()

    # subscribe every queue (SUB from the same connection): the cost of a subscription
    key_of = {k.public().raw: k for k, _ in pool}
    subs = [(rid, key_of[q.recipient_keys[0].raw]) for rid, q in router.store.queues.items()]
    for i in range(0, len(subs), batch):
        chunk = subs[i : i + batch]
        feed([cc.authorize(rb(24), rid, encode_command(Sub(), v), key) for rid, key in chunk])
    del subs, chunk
    subscribed = len(router.clients[1].subs)
    gc.collect()
    tm2 = tracemalloc.get_traced_memory()[0]
    tmo2 = tracemalloc.get_tracemalloc_memory()
    rss2 = proc_rss_kb()
    tracemalloc.stop()
    return {
        "queues": n,
        "subscribed": subscribed,
        "create_s": create_s,
        "new_per_s": n / create_s,
        "tracemalloc_bytes_per_queue": (tm1 - tm0) / n,
        "rss_bytes_per_queue": ((rss1 - rss0) * 1024 - (tmo1 - tmo0)) / n,
        "tracemalloc_bytes_per_subscription": (tm2 - tm1) / n,
        "rss_bytes_per_subscription": ((rss2 - rss1) * 1024 - (tmo2 - tmo1)) / n,
    }


# ---------------------------------------------------------------- 4. store-log restore (child process)


def write_store_log(path: str, n: int, notifier_share: float = 0.3) -> int:
    """``n`` CREATE lines like a compacted log of a busy router; returns the file size."""
    rb = os.urandom
    day = int(time.time()) // DAY * DAY
    with open(path, "w", encoding="ascii") as f:
        lines = []
        for i in range(n):
            notifier = None
            if i % 10 < round(10 * notifier_share):
                notifier = NtfCreds(rb(24), PublicKey(KeyAlgorithm.ED25519, rb(32)), rb(32))
            rec = QueueRec(
                (PublicKey(KeyAlgorithm.ED25519, rb(32)),), rb(32), rb(24), PublicKey(KeyAlgorithm.ED25519, rb(32)),
                QueueMode.MESSAGING, None, notifier, updated_at=day - DAY * (i % 30),
            )
            lines.append(encode_record(CreateQueue(rb(24), rec)))
            if len(lines) >= 10000:
                f.write("\n".join(lines) + "\n")
                lines = []
        if lines:
            f.write("\n".join(lines) + "\n")
    return os.path.getsize(path)


def _child_restore(n: int) -> dict[str, Any]:
    d = tempfile.mkdtemp(prefix="bench-smp-restore-")
    try:
        path = os.path.join(d, QUEUE_LOG_NAME)
        size = write_store_log(path, n)
        gc.collect()
        rss0 = proc_rss_kb()
        t0 = time.perf_counter()
        files = StoreFiles(d)
        restored = files.open(time.time(), 21 * DAY)  # read, parse, apply, compact (+fsync), reopen
        t1 = time.perf_counter()
        files.close()
        assert len(restored.store.queues) == n and not restored.warnings, (len(restored.store.queues), restored.warnings[:3])
        rss1 = proc_rss_kb()
        del restored
        # the parts, as open() runs them (cyclic GC paused): parse+apply, then compaction
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")[:-1]
        gc.collect()
        gc.disable()
        try:
            t2 = time.perf_counter()
            store, _ = restore_queue_store(lines)
            t3 = time.perf_counter()
            del lines
            files2 = StoreFiles(d)
            t4 = time.perf_counter()
            files2.compact(store, {})
            t5 = time.perf_counter()
        finally:
            gc.enable()
        files2.close()
        return {
            "queues": n,
            "log_mb": size / 1e6,
            "open_s": t1 - t0,
            "parse_apply_s": t3 - t2,
            "compact_s": t5 - t4,
            "rss_bytes_per_restored_queue": (rss1 - rss0) * 1024 / n,
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_child(kind: str, n: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_child", kind, "--_n", str(n)],
        check=True, capture_output=True, text=True, cwd=str(ROOT),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report


TARGETS = {"floor_ratio": 2.0, "bytes_per_queue": 1024, "kb_per_connection": 64, "restore_1m_s": 30}


def report(r: dict[str, Any]) -> str:
    L: list[str] = []
    f = r["crypto_floor"]
    L.append(f"crypto floor per message: {f['floor_us']:.0f} µs  (TLS {f['tls_cipher']}; 16 KB record seal "
             f"{f['tls_sealing_16k_us']:.1f} µs, open {f['tls_opening_16k_us']:.1f} µs; raw ChaCha20-Poly1305 16 KB "
             f"{f['chacha20poly1305_16k_us']:.1f} µs)")
    L.append("  " + ", ".join(f"{k} {v:.1f}" for k, v in f["parts_us"].items()))
    for t in r["throughput"]:
        ratio = t["router_cpu_us_per_msg"] / f["floor_us"]
        t["floor_ratio"] = ratio
        L.append(
            f"throughput store_log={'on ' if t['store_log'] else 'off'}: {t['msgs_per_s']:7.0f} msg/s  "
            f"p50 {t['latency_p50_ms']:.1f} ms  p99 {t['latency_p99_ms']:.1f} ms  "
            f"router {t['router_cpu_us_per_msg']:.0f} µs/msg (CPU {100 * t['router_cpu_util']:.0f}%)  "
            f"client {t['client_cpu_us_per_msg']:.0f} µs/msg (CPU {100 * t['client_cpu_util']:.0f}%)  "
            f"router/floor {ratio:.1f}× [target ≤ {TARGETS['floor_ratio']:.0f}×: {'met' if ratio <= 2 else 'MISSED'}]"
        )
    q = r["queue_memory"]
    bpq = q["tracemalloc_bytes_per_queue"]
    L.append(
        f"memory per idle queue ({q['queues']} queues): {bpq:.0f} B tracemalloc, {q['rss_bytes_per_queue']:.0f} B RSS "
        f"[target ≤ 1024 B: {'met' if max(bpq, q['rss_bytes_per_queue']) <= 1024 else 'MISSED'}]; "
        f"+{q['tracemalloc_bytes_per_subscription']:.0f} B tracemalloc / +{q['rss_bytes_per_subscription']:.0f} B RSS "
        f"when subscribed; NEW {q['new_per_s']:.0f}/s"
    )
    cn = r["connections"]
    L.append(
        f"memory per idle TLS connection ({cn['connections']} conns): {cn['kb_per_connection']:.1f} KB router RSS "
        f"[target ≤ 64 KB: {'met' if cn['kb_per_connection'] <= 64 else 'MISSED'}]; setup {cn['setup_s']:.1f} s, "
        f"router CPU {cn['router_cpu_ms_per_connection']:.1f} ms/connection"
    )
    for s in r["restore"]:
        per_m = s["open_s"] / s["queues"] * 1e6
        s["extrapolated_1m_s"] = per_m
        L.append(
            f"store-log restore {s['queues']} queues ({s['log_mb']:.0f} MB): {s['open_s']:.2f} s "
            f"(parse+apply {s['parse_apply_s']:.2f} s, compaction {s['compact_s']:.2f} s) → 1M ≈ {per_m:.0f} s "
            f"[target ≤ 30 s: {'met' if per_m <= 30 else 'MISSED'}]; {s['rss_bytes_per_restored_queue']:.0f} B RSS/queue"
        )
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts (about 1-2 minutes)")
    ap.add_argument("--full", action="store_true", help="also restore 1M queues if the extrapolation is < 60 s")
    ap.add_argument("--json", help="write the figures to this JSON file")
    ap.add_argument("--pairs", type=int, default=8, help="sender/recipient pairs (default 8)")
    ap.add_argument("--window", type=int, default=4, help="messages in flight per pair (default 4)")
    ap.add_argument("--seconds", type=float, help="measured seconds per throughput run")
    ap.add_argument("--queues", type=int, help="idle queues (default 100000, quick 10000)")
    ap.add_argument("--connections", type=int, help="idle TLS connections (default 1000, quick 200)")
    ap.add_argument("--restore-queues", type=int, help="store-log CREATE lines (default 100000, quick 20000)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._child:
        fn = {"queues": _child_queue_memory, "restore": _child_restore}[args._child]
        print(json.dumps(fn(args._n)))
        return 0

    quick = args.quick
    seconds = args.seconds or (5.0 if quick else 20.0)
    warmup = 1.5 if quick else 3.0
    n_queues = args.queues or (10_000 if quick else 100_000)
    n_conns = args.connections or (200 if quick else 1000)
    n_restore = args.restore_queues or (20_000 if quick else 100_000)
    raise_nofile(max(4096, 2 * n_conns + 256))

    started = time.perf_counter()
    r: dict[str, Any] = {"mode": "quick" if quick else "full", "python": sys.version.split()[0], "cpus": os.cpu_count()}

    def step(name: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {name}", file=sys.stderr, flush=True)

    step("crypto floor")
    r["crypto_floor"] = crypto_floor(200 if quick else 1000)
    step(f"memory per idle queue ({n_queues} NEW)")
    r["queue_memory"] = run_child("queues", n_queues)
    step(f"store-log restore ({n_restore} queues)")
    r["restore"] = [run_child("restore", n_restore)]
    if args.full:
        est = r["restore"][0]["open_s"] / n_restore * 1_000_000
        if est < 60:
            step("store-log restore (1M queues)")
            r["restore"].append(run_child("restore", 1_000_000))
    for store_log in (True, False):
        step(f"throughput, store log {'on' if store_log else 'off'} ({args.pairs} pairs × {args.window} in flight, {seconds:.0f} s)")
        r.setdefault("throughput", []).append(throughput(store_log, args.pairs, args.window, warmup, seconds))
    step(f"idle TLS connections ({n_conns})")
    r["connections"] = idle_connections(n_conns)
    step("done")
    r["elapsed_s"] = time.perf_counter() - started

    text = report(r)
    print(text)
    r["targets"] = TARGETS
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
