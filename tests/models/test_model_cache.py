"""Tests for the cache's integrity and faults: content digests of prepared models and int8
files, leftovers of killed preparations, waiting for another process's lock, file modes and a
read-only cache. Tiny models and a temporary CSDRAFT_HOME; no network, no real models."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from model_fixtures import own_home, tiny_dir_fixture  # noqa: F401 - fixtures
from tiny_models import (
    assert_one_line,
    fake_pack,
    overwrite_middle,
    prepared_copy,
    write_tiny_gguf,
)

from csdraft.errors import CsdraftError
from csdraft.models import (
    MANIFEST,
    PACKS,
    CacheDamaged,
    OfflinePack,
    cache_dir,
    load_tokenizer,
    verify_model_cache,
)
from csdraft.models import cache as mcache
from csdraft.models.int8 import int8_cache_digest
from csdraft.models.transformers_backend import load_transformers

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny-qwen2.gguf"
    write_tiny_gguf(path)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _python(code: str) -> subprocess.Popen:
    """A child python with this environment (CSDRAFT_HOME included) running ``code``."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


# ----------------------------------------------------------------------------- content digests


def test_manifest_records_sha256_and_sampled_digests(tiny_gguf):
    lm = load_transformers(str(tiny_gguf), progress=False)
    manifest = json.loads((lm.path / MANIFEST).read_text())
    assert manifest["format"] == 2 and manifest["sampling"] == {"window": 65536, "windows": 64}
    files = sorted(p.name for p in lm.path.iterdir() if p.name != MANIFEST)
    assert sorted(manifest["files"]) == sorted(manifest["sha256"]) == files
    assert sorted(manifest["sampled"]) == files
    for rel, digest in manifest["sha256"].items():
        assert digest == _sha256(lm.path / rel)
    check = verify_model_cache(lm.path, full=True)
    assert check.complete and check.unverified == () and check.files == len(files)
    assert check.bytes == sum(manifest["files"].values())


def test_same_size_corruption_of_a_cached_model_is_an_error(tiny_gguf):
    lm = load_transformers(str(tiny_gguf), progress=False)
    weights = lm.path / "model.safetensors"
    st = weights.stat()
    overwrite_middle(weights, 64)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with its old mtime
    for load in (load_transformers, load_tokenizer):
        with pytest.raises(CsdraftError) as err:
            load(str(tiny_gguf), progress=False)
        msg = assert_one_line(err)
        assert msg == (
            f"cached model at {lm.path} is damaged (model.safetensors differs from when it was "
            f"written); delete {lm.path} and run again to re-prepare it"
        )
    with pytest.raises(CacheDamaged, match="model.safetensors differs"):
        verify_model_cache(lm.path, full=True)
    # the advice works: delete the folder and the next run prepares it again
    shutil.rmtree(lm.path)
    assert load_transformers(str(tiny_gguf), progress=False).path == lm.path


def test_sampled_digest_sees_large_damage_and_full_check_sees_small(tmp_path, monkeypatch):
    """A file larger than its samples: damage wider than the gap between two windows is always
    seen at load; a few bytes between windows only by the full check."""
    monkeypatch.setenv("CSDRAFT_HOME", str(tmp_path))
    entry = tmp_path / "models" / "big"
    entry.mkdir(parents=True)
    size = 9 * 1024 * 1024
    (entry / "weights.bin").write_bytes(os.urandom(size))
    mcache.write_manifest(entry, {"pack": None})
    window, windows = mcache.SAMPLE_WINDOW, mcache.SAMPLE_WINDOWS
    gap = (size - window) // (windows - 1) - window  # bytes no window reads, between two
    original = (entry / "weights.bin").read_bytes()
    for start in range(0, size - gap - 1, size // 7):
        damaged = bytearray(original)
        damaged[start : start + gap + 1] = os.urandom(gap + 1)
        (entry / "weights.bin").write_bytes(damaged)
        with pytest.raises(CacheDamaged, match="weights.bin differs"):
            mcache.check_prepared(entry)
    small = bytearray(original)
    small[window + 10 : window + 20] = b"x" * 10  # just after the first window
    (entry / "weights.bin").write_bytes(small)
    mcache.check_prepared(entry)  # not seen by the samples...
    quick = verify_model_cache(entry, full=False)
    assert quick.complete and not quick.full
    with pytest.raises(CacheDamaged, match="weights.bin differs"):  # ...but by the full check
        verify_model_cache(entry, full=True)
    (entry / "weights.bin").write_bytes(original)
    assert verify_model_cache(entry).complete


def test_damaged_pack_is_rebuilt_from_its_chunks(tmp_path, monkeypatch, tiny_gguf, capfd):
    pack = fake_pack(tmp_path, monkeypatch, tiny_gguf.read_bytes(), filename="tiny.gguf")
    lm = load_transformers(pack.name, progress=False)
    weights = lm.path / "model.safetensors"
    good = _sha256(weights)
    capfd.readouterr()
    overwrite_middle(weights, 256)
    assert _sha256(weights) != good
    again = load_transformers(pack.name, progress=False)
    err = capfd.readouterr().err
    assert err == (
        f"csdraft: warning: cached model at {lm.path} is damaged (model.safetensors differs "
        "from when it was written); rebuilding it\n"
    )
    assert again.path == lm.path and _sha256(weights) == good
    assert verify_model_cache(lm.path).complete
    assert list((cache_dir() / "tmp").iterdir()) == []  # the damaged copy is gone too


def test_old_manifest_gets_sampled_digests_on_first_load(tmp_path, monkeypatch, tiny_dir):
    pack = OfflinePack("fake-old", ("csdraft_no_such_module_xyz",), "f.gguf", 1, "0" * 64, "x")
    monkeypatch.setitem(PACKS, pack.name, pack)
    target = prepared_copy(tiny_dir, pack.name)  # sizes only, as csdraft 0.1.0 wrote
    load_transformers(pack.name, progress=False)
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["format"] == 2 and sorted(manifest["sampled"]) == sorted(manifest["files"])
    assert "sha256" not in manifest  # a full digest would bless whatever is there at length
    check = verify_model_cache(target, full=True)
    assert not check.complete and "model.safetensors" in check.unverified
    overwrite_middle(target / "model.safetensors", 64)
    with pytest.raises(CsdraftError, match="model.safetensors differs from when it was written"):
        load_transformers(pack.name, progress=False)


# ----------------------------------------------------------------------------- the int8 cache


def test_damaged_int8_cache_is_rebuilt(tiny_dir, capfd):
    ids = torch.tensor([[3, 4, 5]])
    first = load_transformers(str(tiny_dir), dtype="int8", progress=False).model(ids).logits
    (cached,) = (cache_dir() / "int8").iterdir()
    recorded, actual = int8_cache_digest(cached)
    assert recorded == actual and len(recorded) == 64
    good = cached.read_bytes()
    overwrite_middle(cached, 64)
    capfd.readouterr()
    again = load_transformers(str(tiny_dir), dtype="int8", progress=False).model(ids).logits
    err = capfd.readouterr().err
    assert err.startswith(f"csdraft: warning: the int8 cache {cached} is damaged")
    assert err.count("\n") == 1 and "computing it again" in err
    assert torch.equal(first, again) and cached.read_bytes() == good


def test_int8_cache_without_digest_is_rewritten(tiny_dir, capfd):
    """int8 files from csdraft 0.1.0 have no digest: computed again, quietly, and rewritten."""
    from safetensors.torch import load_file, save_file

    load_transformers(str(tiny_dir), dtype="int8", progress=False)
    (cached,) = (cache_dir() / "int8").iterdir()
    save_file(load_file(str(cached)), str(cached))  # the same tensors, no metadata
    assert int8_cache_digest(cached)[0] is None
    capfd.readouterr()
    load_transformers(str(tiny_dir), dtype="int8", progress=False)
    assert capfd.readouterr().err == ""
    recorded, actual = int8_cache_digest(cached)
    assert recorded == actual


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_int8_cache_follows_the_umask(tiny_dir, umask):
    old = os.umask(umask)
    try:
        load_transformers(str(tiny_dir), dtype="int8", progress=False)
    finally:
        os.umask(old)
    (cached,) = (cache_dir() / "int8").iterdir()
    assert cached.stat().st_mode & 0o777 == 0o666 & ~umask


# ----------------------------------------------------------------------------- leftovers

_DIE_INSIDE_TEMP = """
    import os
    from csdraft.models.cache import temp_dir
    with temp_dir("killed-prep") as work:
        (work / "half.gguf").write_bytes(b"x" * 1000)
        print(work, flush=True)
        os._exit(9)  # killed: no clean-up runs
"""


def test_leftovers_of_dead_processes_are_removed(tiny_gguf):
    child = _python(_DIE_INSIDE_TEMP)
    dead = Path(child.stdout.readline().strip())
    child.wait(timeout=60)
    assert (dead / "half.gguf").is_file() and str(child.pid) in dead.name
    legacy = cache_dir() / "tmp" / "qwen-abc123"  # csdraft 0.1.0's mkdtemp, no lock
    legacy.mkdir()
    (legacy / "x.gguf").write_bytes(b"y")
    fresh_legacy = cache_dir() / "tmp" / "qwen-def456"
    fresh_legacy.mkdir()
    hour_ago = time.time() - 2 * mcache.LEGACY_TEMP_AGE_S
    for p in (legacy, legacy / "x.gguf"):
        os.utime(p, (hour_ago, hour_ago))
    with mcache.temp_dir("alive") as alive:
        (alive / "busy").write_bytes(b"z")
        load_transformers(str(tiny_gguf), progress=False)  # a preparation starts by cleaning up
        assert not dead.exists() and not legacy.exists()
        assert not Path(f"{dead}.lock").exists()
        assert (alive / "busy").is_file() and fresh_legacy.is_dir()  # owner alive / too young
    assert not alive.exists() and not Path(f"{alive}.lock").exists()


# ----------------------------------------------------------------------------- waiting

_HOLD_LOCK = """
    import sys
    from csdraft.models.cache import file_lock
    with file_lock("tiny-model"):
        print("locked", flush=True)
        sys.stdin.readline()
"""


def test_waiting_for_a_lock_names_the_holder(monkeypatch, capfd):
    monkeypatch.setattr(mcache, "WAIT_REPORT_S", 0.3)
    holder = _python(_HOLD_LOCK)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert (cache_dir() / "locks" / "tiny-model.lock").read_text().strip() == str(holder.pid)
        threading.Timer(1.0, holder.stdin.close).start()  # the holder finishes in a second
        start = time.monotonic()
        with mcache.file_lock("tiny-model", what="qwen-tiny") as locked:
            waited = time.monotonic() - start
            assert locked
            lock_text = (cache_dir() / "locks" / "tiny-model.lock").read_text()
            assert lock_text.strip() == str(os.getpid())
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert waited > 0.5
    lines = capfd.readouterr().err.splitlines()
    want = f"csdraft: waiting for process {holder.pid} to finish preparing qwen-tiny"
    assert len(lines) >= 3 and lines[0] == want and lines[1].startswith(f"{want} ("), lines
    # every 0.3 s with the time waited ('another process' if it was just letting go)
    pattern = r"csdraft: waiting for (process \d+|another process) to finish preparing qwen-tiny"
    assert all(re.fullmatch(rf"{pattern} \(\d+ s\)", line) for line in lines[1:]), lines
    seconds = [int(line.rsplit("(", 1)[1].split()[0]) for line in lines[1:]]
    assert seconds == sorted(seconds) and seconds[-1] >= 1


def test_waiting_is_quiet_without_progress(monkeypatch, capfd):
    monkeypatch.setattr(mcache, "WAIT_REPORT_S", 0.1)
    holder = _python(_HOLD_LOCK)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with mcache.file_lock("tiny-model", wait=False) as locked:
            assert not locked  # held elsewhere: no waiting asked
        threading.Timer(0.5, holder.stdin.close).start()
        with mcache.file_lock("tiny-model", progress=False) as locked:
            assert locked
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert capfd.readouterr().err == ""


# ----------------------------------------------------------------------------- read-only cache


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@contextlib.contextmanager
def _file_permissions_apply():
    """Root ignores file modes: drop CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER from
    this thread's effective set for a while (they stay permitted, so they come back)."""
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        pytest.skip("cannot read this thread's capabilities")
    saved = data[0].effective
    data[0].effective &= ~((1 << 1) | (1 << 2) | (1 << 3))
    if libc.capset(ctypes.byref(header), data) != 0:
        pytest.skip("cannot drop root's file permission override")
    try:
        yield
    finally:
        data[0].effective = saved
        libc.capset(ctypes.byref(header), data)


@contextlib.contextmanager
def _read_only(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    paths = [root, *root.rglob("*")]
    modes = {p: p.stat().st_mode & 0o7777 for p in paths}
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        with _file_permissions_apply():
            probe = root / "probe"
            with contextlib.suppress(OSError):
                probe.write_text("x")
                probe.unlink()
                pytest.skip("file modes are not enforced here")
            yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def test_read_only_cache_is_an_error_in_csdrafts_words(tiny_gguf):
    home = cache_dir()
    with _read_only(home), pytest.raises(CsdraftError) as err:
        load_transformers(str(tiny_gguf), progress=False)
    msg = assert_one_line(err)
    assert msg == (
        f"cannot write to the csdraft cache at {home} (permission denied); set CSDRAFT_HOME to "
        "a writable folder"
    )


def test_read_only_prepared_cache_still_loads(tiny_gguf, tiny_dir, capfd):
    ids = torch.tensor([[3, 4, 5]])
    prepared = load_transformers(str(tiny_gguf), progress=False)
    want = load_transformers(str(tiny_gguf), dtype="int8", progress=False).model(ids).logits
    shutil.rmtree(cache_dir() / "int8")
    old = OfflinePack("fake-ro", ("csdraft_no_such_module_xyz",), "f.gguf", 1, "0" * 64, "x")
    PACKS[old.name] = old
    try:
        old_target = prepared_copy(tiny_dir, old.name)  # a sizes-only manifest: not upgraded
        manifest = (old_target / MANIFEST).read_text()
        capfd.readouterr()
        with _read_only(cache_dir()):
            lm = load_transformers(str(tiny_gguf), dtype="int8", progress=False)
            assert lm.path == prepared.path and lm.int8_layers() > 0
            assert torch.equal(lm.model(ids).logits, want)  # quantized in memory
            assert load_transformers(old.name, progress=False).path == old_target
        assert not (cache_dir() / "int8").exists()
        assert (old_target / MANIFEST).read_text() == manifest
        assert capfd.readouterr().err == ""
    finally:
        del PACKS[old.name]


@pytest.mark.parametrize("keep", [2 / 3, 200 / 85568])
def test_a_truncated_gguf_is_named_with_what_to_do(tiny_gguf, tmp_path, keep):
    """Cut in its tensors or in its header: the file is named and called damaged, not a
    numpy error about reshaping arrays."""
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CsdraftError) as err:
        load_transformers(str(cut), progress=False)
    msg = assert_one_line(err)
    assert f"GGUF file {cut.resolve()} is truncated or damaged" in msg
    assert msg.endswith("download it again") and "reshape" not in msg and "divisor" not in msg
