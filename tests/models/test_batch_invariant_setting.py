"""The per-rung ``batch_invariant`` setting: the target loads batch-invariant unless its rung
says ``false``; a drafter loads so only when its rung says ``true``."""

from __future__ import annotations

import pytest
import yaml
from model_fixtures import own_home, tiny_dir_fixture  # noqa: F401 - fixtures

from csdraft.api import Ladder
from csdraft.errors import UsageError
from csdraft.ladder import ladder_to_yaml, parse_ladder


def ladder(tiny_dir, target: dict, drafter: dict) -> dict:
    return {
        "rungs": [
            {"name": "t", "model": str(tiny_dir), "dtype": "int8", **target},
            {"name": "d", "model": str(tiny_dir), "dtype": "int8", **drafter},
        ],
        "k_matrix": [[3]],
    }


@pytest.mark.parametrize(
    ("target", "drafter", "want"),
    [
        ({}, {}, (True, False)),
        ({"batch_invariant": False}, {"batch_invariant": True}, (False, True)),
    ],
)
def test_batch_invariant_is_a_rung_setting(tiny_dir, target, drafter, want):
    spec = parse_ladder("tiny", ladder(tiny_dir, target, drafter))
    assert parse_ladder("tiny", yaml.safe_load(yaml.safe_dump(ladder_to_yaml(spec)))) == spec
    loaded = Ladder.load(spec, progress=False)
    assert (loaded.models["t"].batch_invariant, loaded.models["d"].batch_invariant) == want
    result = loaded.generate([1, 2, 3, 4], max_new_tokens=6)
    assert len(result.token_ids) == 6 or result.finish == "eos"


def test_batch_invariant_must_be_true_or_false(tiny_dir):
    with pytest.raises(UsageError, match=r"rungs\[0\] \(t\): batch_invariant: expected true or"):
        parse_ladder("tiny", ladder(tiny_dir, {"batch_invariant": "yes"}, {}))
