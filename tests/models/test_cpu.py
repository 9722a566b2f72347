"""CPU facts: which models pay about one pass per token of a block here, and the warning."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml
from tiny_ladder import make_tiny_ladder, own_env  # noqa: F401 - own_env: a fixture

import csdraft
from csdraft.models import cpu


@pytest.fixture(params=[False, True], ids=["no-fast-half", "fast-half"])
def fast(request, monkeypatch) -> bool:
    monkeypatch.setattr(cpu, "fast_half", lambda dtype: request.param)
    return request.param


def model(dtype: str, device: str) -> SimpleNamespace:
    """What ``slow_blocks`` reads of a loaded model."""
    return SimpleNamespace(compute_dtype=dtype, device=device)


def test_slow_blocks_only_for_half_precision_on_a_cpu_without_kernels(fast):
    for dtype in cpu.HALF:
        assert cpu.slow_blocks(model(dtype, "cpu")) is not fast
        assert not cpu.slow_blocks(model(dtype, "cuda:0"))
    assert not cpu.slow_blocks(model("float32", "cpu"))  # int8 models compute the rest in fp32


def test_warning_names_the_slow_models(fast):
    line = cpu.slow_blocks_warning(
        {
            "big": model("bfloat16", "cpu"),
            "small": model("float32", "cpu"),
            "gpu": model("bfloat16", "cuda"),
        }
    )
    if fast:
        assert line is None
    else:
        assert line.startswith("big (bfloat16): this CPU (")
        assert "small" not in line and "gpu" not in line and "\n" not in line


def test_facts_are_strings():
    assert cpu.cpu_model() and cpu.vector_isa() and not cpu.has_flag("no-such-flag")
    assert isinstance(cpu.fast_half("bfloat16"), bool) and cpu.fast_half("float32")


@pytest.mark.parametrize("drafting", [True, False], ids=["ladder", "target-alone"])
def test_loading_a_bfloat16_ladder_warns_once(tmp_path, capsys, fast, drafting):
    config = make_tiny_ladder(tmp_path, drafters=1 if drafting else 0, maxgram=drafting)
    spec = yaml.safe_load(config.read_text())
    spec["tiny"]["dtype"] = "bfloat16"
    if not drafting:
        spec["tiny"]["k_matrix"] = []
    config.write_text(yaml.safe_dump(spec))
    csdraft.load("tiny", config=str(config))
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "no fast half-precision" in line]
    if fast or not drafting:
        assert warned == []
    else:
        assert len(warned) == 1
        assert "tiny-target (bfloat16), tiny-d1 (bfloat16)" in warned[0]
