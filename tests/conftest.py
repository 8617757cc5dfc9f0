"""Shared fixtures: one tiny generalist per session (building it is cheap, importing diffusers is not), and the
derandomised hypothesis profile."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings

from adaptkit.generalist import Generalist
from adaptkit.tiny import build_tiny_generalist

# Every run draws the same examples (a fresh clone's `make test` passes or fails alike every time) and keeps no
# example database between runs. Loaded before test modules import, so their own `settings(...)` inherit it.
settings.register_profile("adaptkit", derandomize=True, database=None, print_blob=True)
settings.load_profile("adaptkit")


@pytest.fixture(scope="session")
def tiny() -> Generalist:
    return build_tiny_generalist().to_runtime("cpu")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
