"""The exactness helpers every comparison uses: first divergence, top-2 margin, near-ties."""

from __future__ import annotations

import torch

from csdraft import exactness


class FixedLogits:
    """A stand-in loaded model whose next-token logits are given."""

    def __init__(self, logits: list[float]) -> None:
        self.logits = torch.tensor(logits)
        self.seen: list[list[int]] = []

    def next_logits(self, context: list[int], prompt_tokens: int | None = None) -> torch.Tensor:
        self.seen.append(context)
        return self.logits


def test_first_divergence():
    assert exactness.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert exactness.first_divergence([1, 9, 3], [1, 2, 3]) == 1
    assert exactness.first_divergence([1, 2], [1, 2, 3]) == 2  # a prefix parts at its end
    assert exactness.first_divergence([], [5]) == 0


def test_near_tie_thresholds():
    assert exactness.near_tie("bfloat16") == 0.25
    assert exactness.near_tie(torch.bfloat16) == 0.25
    assert exactness.near_tie(torch.float32) == 1e-3
    assert exactness.near_tie("int8") == 1e-3  # anything unknown is held to float32's bar


def test_top2_margin_asks_the_model_once():
    model = FixedLogits([0.0, 3.0, 2.875, -1.0])
    assert exactness.top2_margin(model, [4, 5]) == 0.125
    assert model.seen == [[4, 5]]


def test_compare_reports_position_tokens_and_margin():
    model = FixedLogits([1.0, 1.1])
    found = exactness.compare(
        [1, 2, 9, 4], [1, 2, 3, 4], lambda i: exactness.top2_margin(model, [0, 1, 2][:i]), 0.25
    )
    assert found is not None
    assert (found.position, found.got, found.want) == (2, 9, 3)
    assert abs(found.margin - 0.1) < 1e-6 and found.near_tie
    assert "near-tie" in found.describe() and "token 2" in found.describe()
    wide = exactness.compare([7], [8], lambda i: 3.0, 0.25)
    assert wide is not None and not wide.near_tie and "a bug" in wide.describe()
    assert exactness.compare([1, 2], [1, 2], lambda i: 1 / 0, 0.25) is None  # never asks
    short = exactness.compare([1, 2], [1, 2, 3], lambda i: None, 0.25)
    assert short is not None and (short.got, short.want, short.near_tie) == (None, 3, False)
