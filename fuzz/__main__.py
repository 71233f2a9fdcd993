"""``python -m fuzz TARGET``: a seeded mutation fuzzer over the targets, or atheris."""

from __future__ import annotations

import argparse
import random
import sys
import time

from .targets import TARGETS, InvariantViolation, mutate, seeds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    ap.add_argument("target", choices=sorted(TARGETS), help="what to feed")
    ap.add_argument("--iterations", type=int, default=10_000, help="inputs to try (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (runs are reproducible)")
    ap.add_argument("--atheris", action="store_true", help="hand the target to atheris (pip install atheris)")
    args = ap.parse_args(argv)
    target = TARGETS[args.target]
    if args.atheris:
        import atheris  # type: ignore[import-not-found]

        atheris.Setup([sys.argv[0], *sys.argv[3:]], target)
        atheris.Fuzz()
        return 0
    rng = random.Random(args.seed)
    corpus = seeds()
    start = time.monotonic()
    for i in range(args.iterations):
        data = rng.choice(corpus)
        for _ in range(rng.randrange(1, 4)):
            data = mutate(data, rng)
        try:
            target(data)
        except InvariantViolation as e:
            print(f"iteration {i}: {e}\ninput: {data.hex()}", file=sys.stderr)
            return 1
    print(f"{args.iterations} inputs into {args.target}: invariant held ({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
