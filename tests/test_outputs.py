"""Files a user asked for are checked before the long work and written atomically."""

from __future__ import annotations

import os

import pytest

from csdraft.errors import CsdraftError, UsageError
from csdraft.outputs import check_writable, write_text


def test_unwritable_places_fail_at_once(tmp_path):
    check_writable(None, "--out")
    check_writable(tmp_path / "new" / "deeper" / "r.json", "--out")  # folders are made
    with pytest.raises(UsageError, match="--out: .* is a folder"):
        check_writable(tmp_path, "--out")
    with pytest.raises(UsageError, match="--save-trace: cannot write /proc/nope.jsonl"):
        check_writable("/proc/nope.jsonl", "--save-trace")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot write"):
        check_writable(blocker / "under-a-file.json", "--out")
    assert sorted(os.listdir(tmp_path / "new" / "deeper")) == []  # no probe left behind


def test_write_text_is_atomic_and_errors_are_one_line(tmp_path):
    path = tmp_path / "a" / "b.json"
    write_text(path, "one")
    write_text(path, "two")
    assert path.read_text() == "two" and os.listdir(path.parent) == ["b.json"]
    with pytest.raises(CsdraftError, match="cannot write /proc/x.json"):
        write_text("/proc/x.json", "x")
