"""Benchmark sntrup761: the pure implementation (agent/sntrup761.py) against the C one in PyPI ``pqcrypto``.

Not a test. Run from the repository root: ``python bench/bench_sntrup761.py [--rounds N]``.
Prints the median time per operation in ms and the pure/C ratio (agent-crypto.md §6).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import sntrup761 as kem  # noqa: E402


def stream(seed: bytes) -> Callable[[int], bytes]:
    """Deterministic random_bytes (SHA-512 counter mode), so runs are repeatable."""
    counter = 0

    def random_bytes(n: int) -> bytes:
        nonlocal counter
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha512(seed + counter.to_bytes(8, "big")).digest()
            counter += 1
        return bytes(out[:n])

    return random_bytes


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    rounds = args.rounds

    rb = stream(b"bench")
    pk, sk = kem.keypair(rb)
    ct, ss = kem.encapsulate(pk, rb)
    assert kem.decapsulate(ct, sk) == ss

    pure = {
        "keypair": median_ms(lambda: kem.keypair(rb), rounds),
        "encapsulate": median_ms(lambda: kem.encapsulate(pk, rb), rounds * 5),
        "decapsulate": median_ms(lambda: kem._decapsulate_pure(ct, sk), rounds * 5),
    }
    try:
        from pqcrypto.kem import sntrup_761 as native
    except ImportError:
        native = None
    c: dict[str, float] = {}
    if native is not None:
        c = {
            "keypair": median_ms(native.keygen, rounds * 5),
            "encapsulate": median_ms(lambda: native.encaps(pk), rounds * 5),
            "decapsulate": median_ms(lambda: native.decaps(sk, ct), rounds * 5),
        }

    print(f"sntrup761, Python {sys.version.split()[0]}, median of {rounds}+ rounds")
    print(f"{'operation':<12} {'pure ms':>10} {'C ms':>10} {'pure/C':>10}")
    for op, t in pure.items():
        if op in c:
            print(f"{op:<12} {t:>10.3f} {c[op]:>10.3f} {t / c[op]:>10.1f}")
        else:
            print(f"{op:<12} {t:>10.3f} {'-':>10} {'-':>10}")
    if native is None:
        print("(pqcrypto not installed: no C timings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
