"""What every method of one bench run shares."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """What every method of one bench run shares."""

    sd_block: int = 4
    pld_block: int = 10
    temperature: float = 0.0
    seed: int = 0
    until_answer: bool = False
    """End each generation at its first finished '#### <number>' line (GSM8K)."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
