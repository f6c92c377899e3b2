"""The process-wide settings that actors copy from the trainer's process so their numbers are the in-process ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cascade.models.fast_decode import enable_fast_decode, fast_decode_enabled


@dataclass(frozen=True)
class Numerics:
    """The process-wide settings a forward pass's floating-point results depend on. An actor applies the trainer
    process's, so its log-probs (and the tokens sampled from them) are bit for bit the in-process ones."""

    threads: int
    """torch threads: reductions split over them add up in another order with another count."""
    fast_decode: bool
    """cascade's Mamba scan is installed (rollout engines install it; it also runs in full-sequence forwards)."""

    @classmethod
    def of_this_process(cls) -> "Numerics":
        return cls(torch.get_num_threads(), fast_decode_enabled())

    def apply(self) -> None:
        torch.set_num_threads(self.threads)
        if self.fast_decode:
            enable_fast_decode()
