"""Calibration data: prompt texts drawn (seeded) from gsm8k, mmlu or a file."""

from __future__ import annotations

import random
from pathlib import Path

from csdraft.errors import UsageError


def load_calibration_prompts(data: str, limit: int, seed: int = 0) -> tuple[list[str], str]:
    """``limit`` prompt texts drawn (seeded) from gsm8k, mmlu or a file, and where they came
    from. Uses ``csdraft.bench.data.load_dataset``; a file that is not JSON lines is read as
    one prompt per line."""
    from csdraft.bench.data import load_dataset

    path = Path(data).expanduser()
    try:
        dataset = load_dataset(data)
        texts, source = [e.prompt for e in dataset.examples], dataset.source
    except UsageError:
        if not path.is_file():
            raise
        texts = [ln for ln in path.read_text().splitlines() if ln.strip()]
        source = str(path)
    if not texts:
        raise UsageError(f"--data {data}: holds no prompts")
    if limit < len(texts):
        texts = random.Random(seed).sample(texts, limit)
    return texts, source
