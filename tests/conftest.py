"""Shared fixtures: one tiny generalist per session (building it is cheap, importing diffusers is not)."""

from __future__ import annotations

import numpy as np
import pytest

from adaptkit.generalist import Generalist
from adaptkit.tiny import build_tiny_generalist


@pytest.fixture(scope="session")
def tiny() -> Generalist:
    return build_tiny_generalist().to_runtime("cpu")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
