"""Fixtures for the bench tests: a temporary environment and a tiny two-model ladder written
to disk."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from bench_helpers import GSM8K_ROWS, byte_tokenizer, tiny_llama, write_jsonl


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    """Own cache, no hub, no data directory from the environment."""
    monkeypatch.setenv("CSDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CSDRAFT_DATA", raising=False)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    """cascades.yaml with ladders over a tiny float32 target and a perturbed copy as drafter."""
    root = tmp_path_factory.mktemp("tiny-ladder")
    tok = byte_tokenizer()
    target = tiny_llama(len(tok), tok.eos_token_id)
    drafter = copy.deepcopy(target)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in drafter.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    for name, model in (("target", target), ("drafter", drafter)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    config = root / "cascades.yaml"
    config.write_text(
        f"""
tiny:
  target: {{model: {root / "target"}, name: tiny-t}}
  drafters:
    - {{model: {root / "drafter"}, name: tiny-d}}
  maxgram: {{max_ngram: 4, min_ngram: 1}}
  k_matrix: [[3, 2], [0, 4]]
  dtype: float32
tiny-lookup:
  target: {{model: {root / "target"}, name: tiny-t}}
  maxgram: true
  k_matrix: [[5]]
  dtype: float32
tiny-slow:
  target: {{model: {root / "target"}, name: tiny-t}}
  drafters:
    - {{model: {root / "drafter"}, name: d}}
  maxgram: {{max_ngram: 4, min_ngram: 1}}
  k_matrix: [[2, 0], [0, 2]]
  min_confidence: 0.3
  dtype: float32
tiny-recycle:
  rungs:
    - {{model: {root / "target"}, name: tiny-t, dtype: float32}}
    - {{model: {root / "drafter"}, name: d, dtype: float32}}
    - {{kind: recycle, copy_ngram: 2}}
  k_matrix: [[2, 0], [0, 3]]
tiny-swapped:
  target: {{model: {root / "drafter"}, name: tiny-d}}
  k_matrix: []
  dtype: float32
"""
    )
    return config


@pytest.fixture
def gsm8k_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS[:2])
