"""Calibration data: prompt texts drawn (seeded) from gsm8k, mmlu, spec-bench or a file, or
evenly from several of them."""

from __future__ import annotations

import random
from pathlib import Path

from csdraft.errors import UsageError


def _texts(data: str) -> tuple[list[str], str]:
    """Every prompt text of one set and where it came from. Uses
    ``csdraft.bench.data.load_dataset``; a file that is not JSON lines is read as one prompt
    per line."""
    from csdraft.bench.data import load_dataset, read_lines

    path = Path(data).expanduser()
    try:
        dataset = load_dataset(data)
        texts, source = [e.prompt for e in dataset.examples], dataset.source
    except UsageError:
        if not path.is_file():
            raise
        texts = [ln for ln in read_lines(path) if ln.strip()]
        source = str(path)
    if not texts:
        raise UsageError(f"--data {data}: holds no prompts")
    return texts, source


def split_sets(data: str) -> list[str]:
    """'gsm8k,spec-bench' -> ['gsm8k', 'spec-bench']; an existing file is one set whatever
    its name holds."""
    if Path(data).expanduser().is_file():
        return [data]
    names = [n.strip() for n in data.split(",") if n.strip()]
    if not names:
        raise UsageError("--data: empty")
    return list(dict.fromkeys(names))


def load_calibration_prompts(data: str, limit: int, seed: int = 0) -> tuple[list[str], str]:
    """``limit`` prompt texts drawn (seeded) from the set or sets ``data`` names (comma
    separated), an even share from each (the first sets get one more when it does not divide;
    a set smaller than its share gives all it has), and where they came from."""
    sets = split_sets(data)
    rng = random.Random(seed)
    texts: list[str] = []
    sources = []
    for i, name in enumerate(sets):
        share = limit // len(sets) + (i < limit % len(sets))
        found, source = _texts(name)
        texts += rng.sample(found, share) if share < len(found) else found
        sources.append(source)
    return texts, "; ".join(sources)
