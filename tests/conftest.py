"""Shared fixtures: one tiny generalist per session (building it is cheap, importing diffusers is not), and the
derandomised hypothesis profile."""

from __future__ import annotations

from collections.abc import Iterator

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
def _session_tiny() -> Generalist:
    return build_tiny_generalist().to_runtime("cpu")


@pytest.fixture
def tiny(_session_tiny: Generalist) -> Iterator[Generalist]:
    """The session's tiny generalist, handed to each test as the previous one found it.

    Predicting or encoding a prompt fills the prompt cache (and `save_pretrained` writes that cache), so each
    test gets its own copy of the cache and the session's is put back afterwards; a test that changes the
    weights fails here, since every later test would see them.
    """
    def weights() -> tuple[str, str]:
        return _session_tiny.fingerprint(), _session_tiny.fingerprint("vae")

    cache, before = _session_tiny.prompts.cache, weights()
    _session_tiny.prompts.cache = cache.subset(cache.prompts)
    try:
        yield _session_tiny
    finally:
        _session_tiny.prompts.cache = cache
    assert weights() == before, "the test changed the shared tiny generalist's weights"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
