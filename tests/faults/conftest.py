"""The fault-injection suite (issue catalogue R1-R16, S1-S6): real processes, real databases.

Sizes fit a normal CI run; ``DIMMY_FAULTS_FULL=1`` makes every loop 10x bigger (``scaled`` in
:mod:`tests.support.constants`). Each test prints its seed; ``DIMMY_FAULTS_SEED=N`` replays a run
exactly (same kill schedule, same fault draws). Assertions are made on the database after every
process has exited.
"""

from __future__ import annotations

import os
import random

import pytest


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The run's random seed, printed so a failure can be replayed."""
    value = int(os.environ.get("DIMMY_FAULTS_SEED") or random.randrange(2**32))
    print(f"\n{request.node.nodeid}: seed={value} (replay: DIMMY_FAULTS_SEED={value})")
    return value


@pytest.fixture
def rng(seed: int) -> random.Random:
    return random.Random(seed)
