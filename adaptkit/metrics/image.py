"""Image metrics for ``rgb`` and ``heatmap`` outputs: PSNR, SSIM and MAE (torchmetrics' own)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchmetrics.regression import MeanAbsoluteError

from adaptkit.metrics.base import _TensorInput


class _ImageInput(_TensorInput):
    """(H, W) or channels-last (H, W, C) image -> (1, C, H, W) float; uint8 is scaled to [0, 1]."""

    def _prepare(self, x: Any) -> Tensor:
        image = torch.as_tensor(x, device=self.device)
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        return image[None, None] if image.ndim == 2 else image.permute(2, 0, 1)[None].contiguous()


class PSNR(_ImageInput, PeakSignalNoiseRatio):
    """Mean over images of per-image PSNR (dB); inf for a perfect image."""

    def __init__(self, data_range: float = 1.0, **kwargs: Any) -> None:
        super().__init__(data_range=data_range, dim=(1, 2, 3), **kwargs)


class SSIM(_ImageInput, StructuralSimilarityIndexMeasure):
    """Mean over images of SSIM (torchmetrics' Gaussian 11x11 window)."""

    def __init__(self, data_range: float = 1.0, **kwargs: Any) -> None:
        super().__init__(data_range=data_range, **kwargs)


class MAE(_ImageInput, MeanAbsoluteError):
    """Mean absolute error over all pixels and channels of the dataset."""
