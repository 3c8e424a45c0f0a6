"""The quantization of discrete data (core layer): levels, bins and the bits/dim offset (docs/math.md section 4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InvalidArgument


@dataclass(frozen=True)
class Quantization:
    """How discrete data sit in model space: ``levels`` integer levels y in {0, ..., levels - 1}, level y
    owning the bin ``[low + y w, low + (y + 1) w)`` of width ``w = (high - low) / levels`` in every dimension.

    The one home of the bits/dim offset (docs/math.md 4): the probability of a bin is the model density integrated
    over it, ``P(y) = int_bin p(x) dx >= w^D exp(E_u log p(x(y + u)))`` (Jensen, u uniform on [0, 1)^D), so

        bits/dim of y = -log p(x) / (D ln 2) + offset_bits,   offset_bits = -log2 w = log2(levels / (high - low)),

    7 bits for 8-bit data on [-1, 1) (score_sde's hard-coded offset), log2(8.5) for the 17-level digits.
    """

    levels: int = 256
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.levels, (int, np.integer)) and not isinstance(self.levels, bool) and self.levels >= 2):
            raise InvalidArgument(f"levels: must be an integer >= 2; got {self.levels!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.high > self.low):
            raise InvalidArgument(f"low, high: must be finite with high > low; got {self.low!r}, {self.high!r}")

    @property
    def bin_width(self) -> float:
        """w = (high - low) / levels, the side of one bin in model space."""
        return (self.high - self.low) / self.levels

    @property
    def offset_bits(self) -> float:
        """-log2 w: bits/dim of y = -log p(x) / (D ln 2) + offset_bits."""
        return math.log2(self.levels / (self.high - self.low))

    def log_bin_volume(self, dim: int) -> float:
        """D log w (nats): log P(y) = log p(x) + D log w for a density flat over the bin."""
        return dim * math.log(self.bin_width)

    def to_model(self, y, u):
        """Model-space x = low + (y + u) w of levels y and offsets u in [0, 1) (numpy or jax arrays)."""
        return self.low + (y + u) * self.bin_width
