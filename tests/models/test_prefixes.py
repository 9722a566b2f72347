"""``PrefixStore``: the longest stored prefix is found (never past ``most``), stored rows are
copies, a prompt that extends a stored one replaces it, one already held is not stored twice,
and the least recently used go first when the store is full."""

from __future__ import annotations

import numpy as np
import torch

from csdraft.models.prefixes import PrefixStore


def layers(tokens: list[int], n_layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fake cache rows: row i of every layer holds token i (keys) and -token i (values)."""
    t = torch.tensor(tokens, dtype=torch.float32)[None, None, :, None].expand(1, 2, -1, 3)
    return [(t.clone() + k, -t.clone()) for k in range(n_layers)]


def seq(*tokens: int) -> np.ndarray:
    return np.asarray(tokens, dtype=np.int64)


def test_the_longest_stored_prefix_is_found_up_to_most():
    store = PrefixStore()
    store.add(seq(1, 2, 3), layers([1, 2, 3]))
    store.add(seq(1, 2, 9, 9, 9), layers([1, 2, 9, 9, 9]))
    n, rows = store.find(seq(1, 2, 9, 9, 5, 6), most=10)
    assert n == 4 and rows[0][0][0, 0, :, 0].tolist() == [1, 2, 9, 9]
    assert rows[1][1][0, 0, :, 0].tolist() == [-1, -2, -9, -9]
    assert store.find(seq(1, 2, 9, 9, 5, 6), most=3)[0] == 3
    assert store.find(seq(7, 1, 2), most=10) == (0, [])
    assert (store.counts.hits, store.counts.rows) == (2, 7)


def test_stored_rows_are_copies():
    rows = layers([4, 5, 6])
    store = PrefixStore()
    store.add(seq(4, 5, 6), rows)
    rows[0][0].zero_()  # the session's cache moves on
    assert store.find(seq(4, 5, 6, 7), most=4)[1][0][0][0, 0, :, 0].tolist() == [4, 5, 6]


def test_an_extension_replaces_and_a_covered_prompt_is_not_stored_twice():
    store = PrefixStore()
    store.add(seq(1, 2), layers([1, 2]))
    store.add(seq(1, 2, 3, 4), layers([1, 2, 3, 4]))
    store.add(seq(1, 2, 3), layers([1, 2, 3]))
    assert [e[0].tolist() for e in store._entries] == [[1, 2, 3, 4]]
    assert store.counts.stored == 2


def test_the_least_recently_used_go_first_when_full():
    one = sum(k.nbytes + v.nbytes for k, v in layers([0] * 4))
    store = PrefixStore(max_bytes=2 * one)
    for first in (10, 20, 30):
        if first == 30:
            store.find(seq(10, 11), most=2)  # 10... used again: 20... is the oldest now
        store.add(seq(*range(first, first + 4)), layers(list(range(first, first + 4))))
    assert [int(e[0][0]) for e in store._entries] == [10, 30]
    small = PrefixStore(max_bytes=one - 1)
    small.add(seq(1, 2, 3, 4), layers([1, 2, 3, 4]))  # bigger than the whole store: kept out
    assert not small._entries
    store.clear()
    assert store.find(seq(10, 11), most=2) == (0, [])
