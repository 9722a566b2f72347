"""Fixtures shared across the test suite: tiny models (session-wide) and a one-thread setting
for modules of tiny forward passes. Helpers live in engine_helpers.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from engine_helpers import Zoo, build_model, sampling_zoo


@pytest.fixture(scope="session")
def zoo() -> Zoo:
    """Session-wide cache of tiny models and reference decodings."""
    return Zoo()


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., torch.nn.Module]:
    """Factory: ``tiny_model(arch, vocab, hidden=16, layers=1, seed=0)`` builds a fresh model."""
    return build_model


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one intra-op thread: on a busy 2-core machine the thread
    pool costs far more than it saves for 16-wide layers (about 1 ms against 25-40 ms per
    forward pass here). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sampling_models() -> dict[str, torch.nn.Module]:
    """The sampling tests' models (``engine_helpers.sampling_zoo``), built once."""
    return sampling_zoo()
