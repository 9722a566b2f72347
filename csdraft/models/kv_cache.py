"""A KV cache that grows in place: transformers' DynamicCache appends by concatenation, which
copies every cached key and value at every pass (a cost growing with the context); here the
full-attention layers write new entries into spare room and hand out views."""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of buffers with room to spare (doubled
    when full), so a pass costs its new tokens only. ``crop`` and writes through ``keys`` and
    ``values`` (a token tree's kept path moved into place) work as before: both stay views of
    the buffers; anything that replaces them with other tensors is copied into new room."""

    room: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.room = None
        n, new = self.get_seq_length(), key_states.shape[-2]
        if not self._fits(n + new):
            self._make_room(key_states, value_states, n, max(2 * (n + new), 256))
        keys, values = self.room
        keys[..., n : n + new, :] = key_states
        values[..., n : n + new, :] = value_states
        self.keys, self.values = keys[..., : n + new, :], values[..., : n + new, :]
        return self.keys, self.values

    def _fits(self, length: int) -> bool:
        """Whether ``keys``/``values`` are still views of the room and it holds ``length``."""
        return (
            self.room is not None
            and length <= self.room[0].shape[-2]
            and self.keys.data_ptr() == self.room[0].data_ptr()
            and self.values.data_ptr() == self.room[1].data_ptr()
        )

    def _make_room(self, keys: torch.Tensor, values: torch.Tensor, n: int, size: int) -> None:
        room = (
            keys.new_empty(*keys.shape[:-2], size, keys.shape[-1]),
            values.new_empty(*values.shape[:-2], size, values.shape[-1]),
        )
        if n:
            room[0][..., :n, :] = self.keys
            room[1][..., :n, :] = self.values
        self.room = room


def growing_cache(config: Any) -> DynamicCache:
    """transformers' DynamicCache for ``config`` with its full-attention layers growing in
    place (sliding-window layers are left as transformers builds them)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(x) is DynamicLayer else x for x in cache.layers]
    return cache
