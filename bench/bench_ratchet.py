"""Throughput of the PQ double ratchet (agent/ratchet.py).

    python bench/bench_ratchet.py [--seconds 1.0]

Reports, with and without PQ (sntrup761 accepted at X3DH, agent message sizes 15840 / 13618):
* encrypt+decrypt of messages in one chain (no DH step), messages per second;
* ping-pong, where every receipt is a DH ratchet step (and a KEM turn with PQ);
* the cost of one ratchet turn on the receiving side, and of its parts (sntrup761 key pair,
  encapsulation, decapsulation).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import ratchet as R  # noqa: E402
from agent import sntrup761  # noqa: E402
from agent.e2e_params import (  # noqa: E402
    CURRENT_E2E_VERSION,
    AcceptKEM,
    generate_rcv_e2e_params,
    generate_snd_e2e_params,
)
from sansio_smp.crypto import KeyAlgorithm, PrivateKey  # noqa: E402

V = CURRENT_E2E_VERSION
MSG_LEN = {False: 15840, True: 13618}  # e2eEncAgentMsgLength without / with PQ support (§3.1)


def pair(pq: bool) -> tuple[R.RatchetState, R.RatchetState]:
    rb = os.urandom
    a1, a2, a_kem, e2e_a = generate_rcv_e2e_params(rb, V, pq)
    use = AcceptKEM(e2e_a.kem.public_key) if pq and e2e_a.kem else None
    b1, b2, b_kem, e2e_b = generate_snd_e2e_params(rb, V, use)
    bob = R.init_snd_ratchet(R.RatchetVersions(V, V), a2.public(), PrivateKey.generate(KeyAlgorithm.X448, rb),
                             *R.pq_x3dh_snd(b1, b2, b_kem, e2e_a))
    alice = R.init_rcv_ratchet(R.RatchetVersions(V, V), a2, *R.pq_x3dh_rcv(a1, a2, a_kem, e2e_b), pq)
    return R.RatchetState(alice), R.RatchetState(bob)


def rate(fn: Callable[[], None], seconds: float) -> tuple[float, int]:
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed, n


def bench_same_chain(pq: bool, seconds: float) -> float:
    alice, bob = pair(pq)
    body = b"x" * 200
    state = {"a": alice, "b": bob}
    plen = MSG_LEN[pq]

    def one() -> None:
        wire, state["b"] = state["b"].encrypt(body, plen)
        _, state["a"] = state["a"].decrypt(wire, os.urandom)

    one()  # the first receipt is a DH step; measure the chain after it
    return rate(one, seconds)[0]


def bench_ping_pong(pq: bool, seconds: float) -> tuple[float, int]:
    alice, bob = pair(pq)
    body = b"x" * 200
    state = {"a": alice, "b": bob, "turn": "b"}
    plen = MSG_LEN[pq]

    def one() -> None:
        s, r = ("b", "a") if state["turn"] == "b" else ("a", "b")
        wire, state[s] = state[s].encrypt(body, plen)
        _, state[r] = state[r].decrypt(wire, os.urandom)
        state["turn"] = r

    rate_, n = rate(one, seconds)
    assert state["a"].ratchet.rcv_kem is pq or n < 3
    return rate_, n


def bench_turn(pq: bool, rounds: int) -> float:
    """Seconds per receiving-side ratchet turn (decrypt of the first message of a new chain)."""
    alice, bob = pair(pq)
    wire, bob = bob.encrypt(b"hello", MSG_LEN[pq])
    total = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        _, alice2 = alice.decrypt(wire, os.urandom)
        total += time.perf_counter() - t
    assert alice2.ratchet.snd_kem is pq
    return total / rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per throughput measurement")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, sntrup761 backend: {sntrup761.backend()}")
    for pq in (False, True):
        label = "PQ (sntrup761)" if pq else "no PQ"
        print(f"[{label}] same chain, encrypt+decrypt: {bench_same_chain(pq, args.seconds):8.0f} msg/s")
        r, n = bench_ping_pong(pq, args.seconds)
        print(f"[{label}] ping-pong (DH step per message): {r:8.1f} msg/s ({n} messages)")
        print(f"[{label}] one receiving ratchet turn: {bench_turn(pq, 20) * 1000:8.2f} ms")
    rb = os.urandom
    t = time.perf_counter()
    pk, sk = sntrup761.keypair(rb)
    t_kp = time.perf_counter() - t
    t = time.perf_counter()
    ct, ss = sntrup761.encapsulate(pk, rb)
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    sntrup761.decapsulate(ct, sk)
    t_dec = time.perf_counter() - t
    print(
        f"sntrup761: keypair {t_kp * 1000:.2f} ms, encapsulate {t_enc * 1000:.2f} ms, "
        f"decapsulate {t_dec * 1000:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
