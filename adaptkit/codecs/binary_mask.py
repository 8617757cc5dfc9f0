"""The ``binary_mask`` codec: a foreground mask in one colour on black."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adaptkit.codecs.base import Codec, TargetNote, _write_png, as_image, register_codec
from adaptkit.codecs.helpers import _list_values, _rgb_arg, _soft_dice


@register_codec
class BinaryMaskCodec(Codec):
    """Binary mask: the foreground in one colour (default white) on black, as DICEPTION's segmentation output.

    Two colours as far apart as possible make the read-back robust: a pixel is foreground when it is nearer to
    the foreground colour than to black (the midpoint of the segment between them), which blur, JPEG and
    colour drift move only at the mask's edge. ``probability`` is the soft version: the pixel's position along
    the segment from black to the foreground colour, clipped to [0, 1], which averages linearly across an
    ensemble just as colours do. Target: bool (H, W).
    """

    name = "binary_mask"
    metric_table = "binary_mask"
    resample = "nearest"
    _SHARPNESS = 10.0  # loss logit at exactly the foreground colour: BCE there is log(1 + e^-10) ~ 5e-5

    def __init__(self, color: Sequence[int] = (255, 255, 255)) -> None:
        self.color = _rgb_arg(color, "color", self.name)
        if self.color == (0, 0, 0):
            raise self._fail("argument 'color' must differ from the black background")
        self._fg = np.asarray(self.color, np.float32) / 255

    def probability(self, image: Any) -> np.ndarray:
        """Soft foreground probability float32 (H, W) of any RGB image (see the class docstring)."""
        return self._probability(as_image(image, self.name))

    def _probability(self, image: np.ndarray) -> np.ndarray:
        return np.clip(image @ self._fg / (self._fg @ self._fg), 0.0, 1.0).astype(np.float32)

    def validate(self, target: Any) -> None:
        mask = self._array(target, 2, "a bool mask (H, W)")
        if mask.dtype != np.bool_:
            raise self._fail(
                f"target has dtype {mask.dtype}; expected bool (convert with mask > 0, or load it "
                "with load_target)"
            )

    def _encode(self, target: np.ndarray) -> np.ndarray:
        return target[..., None] * self._fg

    def _decode(self, image: np.ndarray) -> np.ndarray:
        return self._probability(image) > 0.5

    def save(self, target: np.ndarray, stem: str | Path) -> list[Path]:
        """``stem.png``: 0/255 grey."""
        return [_write_png(target.astype(np.uint8) * 255, Path(f"{stem}.png"))]

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BCE + soft Dice on the foreground probability sigmoid(k (2 t - 1)), t the position along black ->
        colour: the logit form keeps a useful gradient however wrong (or outside [0, 1]) the prediction is."""
        fg = torch.as_tensor(self._fg, dtype=pred.dtype, device=pred.device)

        def position(x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bchw,c->bhw", x, fg) / fg.dot(fg)

        logits = self._SHARPNESS * (2 * position(pred) - 1)
        truth = (position(target) > 0.5).to(pred.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, truth)
        return bce + _soft_dice(torch.sigmoid(logits), truth)

    def check_set(self, targets: Sequence[Any]) -> str | None:
        if len(targets) > 1 and not any(mask.any() for mask in targets):
            return (f"every one of the {len(targets)} masks is empty (no foreground pixel): nothing to learn; check "
                    "that the masks folder holds the masks and that task.codec_args.color is their foreground")
        if len(targets) > 1 and all(mask.all() for mask in targets):
            return f"every one of the {len(targets)} masks is all foreground: nothing to learn; check the masks folder"
        return None

    def _from_value(self, value: Any, source: str) -> Any:
        if isinstance(value, Image.Image):
            value = self._shown(value, source)
        return super()._from_value(value, source)

    def _shown(self, image: Image.Image, source: str) -> Image.Image | np.ndarray:
        """The mask a picture shows: a palette by its colours (not its index order), alpha when only alpha varies.

        A palette whose index 0 is white shows its foreground where the indices are 0, and a mask stored as
        the alpha channel of a constant colour shows nothing in RGB; both are read as they look, with a note.
        A picture whose colours and alpha both vary and disagree is ambiguous and refused.
        """
        if image.mode in ("P", "PA"):
            indices = np.asarray(image) if image.mode == "P" else None
            image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
            if indices is not None and image.mode == "RGB":
                shown = self._from_array(np.asarray(image), Path(source))
                if len(np.unique(indices)) <= 2 and ((indices != 0) != (shown != 0)).any():
                    warnings.warn("palette mask whose index order differs from its colours: read by the colours "
                                  "it shows (foreground = not black)", TargetNote, stacklevel=2)
                return shown.astype(np.uint8) * 255
        if image.mode not in ("RGBA", "LA"):
            return image
        array = np.asarray(image)
        colour, alpha = array[..., :-1].max(2), array[..., -1]
        if alpha.min() == alpha.max():
            return colour
        if colour.min() == colour.max():
            warnings.warn("mask read from the alpha channel (its colour is constant): opaque = foreground",
                          TargetNote, stacklevel=2)
            return alpha
        if np.array_equal(colour > colour.min(), alpha > alpha.min()):
            return colour
        raise self._fail(f"{source}: both its colours and its alpha channel vary, and they disagree on the "
                         "foreground; save the mask without alpha (0 background, 255 foreground)")

    def _from_array(self, array: np.ndarray, path: Path) -> np.ndarray:
        """Masks as users store them: bool, 0/1, 0/255 (any two values 0 and v), grey RGB; an 8-bit mask saved
        lossily (JPEG: many distinct values, nearly all within 64 of 0 or 255) is cut at 128, with a note.

        A few distinct values (a label map 0/1/2, a mask with some 128s) are refused with their pixel counts:
        no rule can tell which of them is foreground.
        """
        if array.ndim == 3 and array.shape[2] in (3, 4):
            colours = np.unique(array[..., :3].reshape(-1, 3), axis=0)
            if 2 < len(colours) <= 8:  # a few flat colours: a colour-coded label map, not one mask
                shown = ", ".join(str(tuple(c)) for c in colours.tolist())
                raise self._fail(f"{path} shows {len(colours)} colours ({shown}); a mask shows black and one "
                                 "foreground colour: use the semantic codec for a label map")
            array = array[..., :3].max(2)
        if array.ndim != 2 or array.dtype == np.bool_:
            return array
        values, counts = np.unique(array, return_counts=True)
        if len(values) == 1 or (len(values) == 2 and values[0] == 0):
            return array != 0
        near_extremes = np.minimum(array, 255 - array) < 64
        if (array.dtype == np.uint8 and len(values) > 8 and values[0] < 64 and values[-1] > 191
                and near_extremes.mean() > 0.95):
            warnings.warn("mask with values between 0 and 255 (lossy compression): cut at 128", TargetNote,
                          stacklevel=2)
            return array > 127
        listed = ", ".join(f"{v} ({c} px)" for v, c in zip(values[:6].tolist(), counts[:6].tolist(), strict=True))
        more = f" and {len(values) - 6} more values" if len(values) > 6 else ""
        hint = ("it looks like a label map: use the semantic or instances codec, or save the foreground as 255"
                if values[-1] < 32 else "set every pixel to 0 (background) or one foreground value")
        raise self._fail(
            f"{path} holds values {_list_values(values)} ({listed}{more}); a mask must be 0 and one foreground "
            f"value (0/1, 0/255 or bool): {hint}"
        )
