"""The fault-injection suite (issue catalogue R1-R16, S1-S6): real processes, real databases.

Sizes fit a normal CI run; ``DIMMY_FAULTS_FULL=1`` makes every loop 10x bigger (``scaled`` in
:mod:`tests.support.constants`). Each test prints its seed; ``DIMMY_FAULTS_SEED=N`` replays a run
exactly (same kill schedule, same fault draws). Assertions are made on the database after every
process has exited.

``DIMMY_FAULTS_SEEDS=N`` runs every test that takes a ``seed`` N times, with N seeds drawn from
one base seed (``DIMMY_FAULTS_SEED``, or a random one, printed; the base seed is the first of
them): the test ids end in
``-seed<value>``, and each value replays alone with ``DIMMY_FAULTS_SEED=<value>``. Unset (or 1),
each such test runs once, as before.
"""

from __future__ import annotations

import os
import random

import pytest


def _base_seed() -> int:
    return int(os.environ.get("DIMMY_FAULTS_SEED") or random.randrange(2**32))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    runs = int(os.environ.get("DIMMY_FAULTS_SEEDS") or 1)
    if runs <= 1 or "seed" not in metafunc.fixturenames:
        return
    base = _base_seed()
    print(f"\n{metafunc.definition.nodeid}: {runs} seeds drawn from DIMMY_FAULTS_SEED={base}")
    draw = random.Random(base)
    seeds = [base] + [draw.randrange(2**32) for _ in range(runs - 1)]
    metafunc.parametrize("seed", seeds, indirect=True, ids=[f"seed{s}" for s in seeds])


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The run's random seed, printed so a failure can be replayed."""
    value = int(request.param) if hasattr(request, "param") else _base_seed()
    print(f"\n{request.node.nodeid}: seed={value} (replay: DIMMY_FAULTS_SEED={value})")
    return value


@pytest.fixture
def rng(seed: int) -> random.Random:
    return random.Random(seed)
