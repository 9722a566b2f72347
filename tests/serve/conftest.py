"""The serve tests' tiny ladder, built and loaded once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ladder(tmp_path_factory):
    from serve_helpers import build_ladder

    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("serve-home")
        mp.setenv("CSDRAFT_HOME", str(home / "home"))
        mp.setenv("CSDRAFT_CONFIG", str(home / "user.yaml"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        return build_ladder(tmp_path_factory.mktemp("serve-ladder"))
