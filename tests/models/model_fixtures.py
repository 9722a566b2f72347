"""Fixtures the csdraft.models test modules share: import them into a module to use them there
(``from model_fixtures import own_home, tiny_dir_fixture  # noqa: F401``). Not a conftest.py:
a nested conftest.py would break ``from conftest import``."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import write_tiny_dir


@pytest.fixture(autouse=True, name="_home")
def own_home(tmp_path, monkeypatch):
    """Every test gets its own cache and no hub access."""
    monkeypatch.setenv("CSDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", name="tiny_dir")
def tiny_dir_fixture(tmp_path_factory) -> Path:
    """A tiny Llama directory (``write_tiny_dir``), once per module."""
    return write_tiny_dir(tmp_path_factory.mktemp("tiny-llama"))
