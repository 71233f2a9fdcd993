"""Fuzzing in the suite (issue 2 item 10): arbitrary and mutated inputs into the router and
client machines and every parser — a value or a typed protocol error, never another exception,
and the router keeps serving its other connections."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.__main__ import main as fuzz_main
from fuzz.targets import TARGETS, InvariantViolation, mutate, seeds

SEEDS = seeds()


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes(name: str, data: bytes) -> None:
    TARGETS[name](data)


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), rnd=st.randoms(use_true_random=False), rounds=st.integers(1, 4))
def test_mutated_valid_inputs(name: str, seed: bytes, rnd: random.Random, rounds: int) -> None:
    data = seed
    for _ in range(rounds):
        data = mutate(data, rnd)
    TARGETS[name](data)


def test_unmutated_seeds_are_accepted_by_parsers() -> None:
    # the seeds are real commands and transmissions: the fuzzer starts from valid inputs
    from sansio_smp.protocol import parse_command

    assert sum(1 for s in SEEDS if _parses(parse_command, s)) >= 13


def _parses(parse, data: bytes) -> bool:  # type: ignore[no-untyped-def]
    try:
        parse(data, 18)
        return True
    except Exception:
        return False


def test_invariant_violation_is_detected() -> None:
    from fuzz.targets import _total

    def broken(data: bytes) -> None:
        raise IndexError("boom")

    with pytest.raises(InvariantViolation):
        _total(broken)(b"x")


def test_command_line_fuzzer_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz_main(["router-transmission", "--iterations", "200", "--seed", "1"]) == 0
    assert "invariant held" in capsys.readouterr().out
