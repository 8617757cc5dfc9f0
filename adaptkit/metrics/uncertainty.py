"""How well an uncertainty map ranks a prediction's wrong pixels: ``ErrorAUROC``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


class ErrorAUROC(Metric):
    """The AUROC of uncertainty for wrong pixels: the chance that a wrong pixel, drawn at random, is rated less
    sure than a right one (ties count half). 0.5 is no better than chance, 1 is a perfect ranking.

    ``update(uncertainty, wrong)`` takes one image's map (values in [0, 1]) and its bool mask of wrong pixels,
    or lists of them. Pixels are counted into ``bins`` histograms, one for wrong and one for right pixels, on
    edges dense near 0 where most of a map's values lie: memory stays constant over a whole collection, sync
    across processes is an exact sum, and the AUROC treats values within one bin as tied (torchmetrics'
    binned ``BinaryAUROC`` would do the same, but falls back to an O(pixels x bins) tensor under the
    deterministic algorithms that reproducible runs switch on).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, bins: int = 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_buffer("edges", torch.logspace(-5, 0, bins - 1, dtype=torch.float64), persistent=False)
        self.add_state("wrong", torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("right", torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, uncertainty: Any, wrong: Any) -> None:
        if isinstance(uncertainty, list | tuple):
            for u, w in zip(uncertainty, wrong, strict=True):
                self.update(u, w)
            return
        values = torch.as_tensor(uncertainty, dtype=torch.float64).flatten().to(self.edges.device)
        errors = torch.as_tensor(wrong, dtype=torch.bool).flatten().to(self.edges.device)
        if values.shape != errors.shape:
            raise ValueError(f"an uncertainty map of {values.numel()} pixels with a mask of {errors.numel()}")
        index = torch.bucketize(values.clamp(0.0, 1.0), self.edges)
        self.wrong += torch.bincount(index[errors], minlength=len(self.wrong)).to(self.wrong)
        self.right += torch.bincount(index[~errors], minlength=len(self.right)).to(self.right)

    def compute(self) -> Tensor:
        wrong, right = self.wrong.sum(), self.right.sum()
        if wrong == 0 or right == 0:
            return torch.tensor(float("nan"))  # no ranking to judge: every pixel right (or every one wrong)
        below = torch.cumsum(self.right, 0) - self.right  # right pixels in lower bins than each bin
        return ((self.wrong * (below + 0.5 * self.right)).sum() / (wrong * right)).float()
