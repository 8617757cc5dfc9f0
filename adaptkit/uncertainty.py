"""Uncertainty per pixel: where a prediction is likely wrong, read off the model without any label.

Every estimator gives, per image, a map float32 (H, W) in [0, 1] at the input's size: 0 where the model is
sure, 1 where its colours are as far apart as colours can be. Three are built and measured side by side
(`benchmarks/uncertainty.py`: how well each ranks wrong pixels, as an AUROC, and what it costs):

- ``margin``: how far the predicted colour is from the clean colour it decodes to (a mask pixel predicted
  grey is unsure, one predicted white is not). Free: it reads the prediction alone. Discrete encodings only
  (masks, classes): a continuous one decodes every colour cleanly.
- ``flips``: the prediction of the mirrored image, mirrored back, against the prediction itself. Training
  mirrors its images (``data.hflip``), so a sure adapter agrees with itself; one more pass per image.
- ``samples``: the spread of an ensemble's flow samples (``--ensemble K``, a flow-trained adapter): K passes,
  and none for a single-step adapter, whose one deterministic pass has nothing to spread.

The prediction itself never changes with the estimator: the map is written beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adaptkit.errors import AdaptkitError

if TYPE_CHECKING:  # imported where used: the CLI reads ESTIMATORS to build its parser, and starts fast
    from adaptkit.codecs import Codec
    from adaptkit.generalist import Prediction

ESTIMATORS: tuple[str, ...] = ("margin", "flips", "samples")
#: The estimator `--uncertainty` uses when none is named: the best ranker of wrong pixels for the default
#: objective on the held-out synthetic tasks (error AUROC 0.891 against margin's 0.860, at 1.8x the cost of a
#: plain prediction; the README's table from benchmarks/uncertainty.py), and the one every codec can use.
DEFAULT_ESTIMATOR = "flips"
#: A predicted pixel is wrong where its decoded colour is off the target's by more than this (mean over the
#: channels, colours in [0, 1]): for masks and classes, exactly a wrong label.
ERROR_TOLERANCE = 0.1


class UncertaintyError(AdaptkitError, ValueError):
    """An estimator this model or codec cannot use: names it and what to use instead."""


def check_estimator(codec: Codec, estimator: str, deterministic: bool, members: int, mirrored: bool = True) -> None:
    """Refuse, in one line, an estimator that would give a meaningless map for this codec and sampling.
    `mirrored`: whether the adapter was trained on mirrored images too (`data.hflip`), which `flips` relies on."""
    if estimator not in ESTIMATORS:
        raise UncertaintyError(f"unknown uncertainty estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if not codec.deterministic_ok:
        raise UncertaintyError(f"codec {codec.name} draws its colours at random per sample, so no two predictions' "
                               "colours can be compared pixel by pixel: uncertainty is not available for it")
    if estimator == "margin" and codec.resample != "nearest":
        raise UncertaintyError(f"uncertainty 'margin' measures the distance to the nearest clean colour, which the "
                               f"continuous codec {codec.name} does not have: use --uncertainty flips (or samples "
                               "for a flow-trained adapter)")
    if estimator == "flips" and not mirrored:
        raise UncertaintyError("uncertainty 'flips' compares a prediction with that of the mirrored image, but this "
                               "adapter was trained without mirrored images (data.hflip false), so they need not "
                               "agree: use --uncertainty " + ("margin" if codec.resample == "nearest" else
                                                              "samples with a flow-trained adapter"))
    if estimator == "samples" and (deterministic or members < 2):
        why = ("this adapter predicts in one deterministic pass (train.objective single_step)" if deterministic
               else f"the ensemble draws {members} sample")
        raise UncertaintyError(f"uncertainty 'samples' is the spread of several flow samples, but {why}: use "
                               "--uncertainty flips or margin" + ("" if deterministic else ", or --ensemble 4"))


def margin(codec: Codec, image: np.ndarray) -> np.ndarray:
    """How far each pixel's colour is from the clean colour it decodes to, scaled so that a colour halfway
    between two clean ones (a mask's grey) is 1."""
    clean = codec.encode(codec.decode(image))
    return np.clip(2.0 * np.abs(image - clean).mean(axis=-1), 0.0, 1.0).astype(np.float32)


def spread(images: Sequence[np.ndarray]) -> np.ndarray:
    """The mean absolute deviation of colour images from their mean, per pixel, scaled so that two images at
    opposite ends of every channel give 1."""
    stack = np.stack(images)
    return np.clip(2.0 * np.abs(stack - stack.mean(axis=0)).mean(axis=(0, -1)), 0.0, 1.0).astype(np.float32)


def mirrored(codec: Codec, image: np.ndarray) -> np.ndarray:
    """The colour image of the mirrored target: the picture mirrored, and through the codec wherever a value
    depends on direction (a normal's x, a keypoint's left and right)."""
    from adaptkit.codecs import Codec

    flipped = np.ascontiguousarray(image[:, ::-1])
    if type(codec).hflip is Codec.hflip:
        return flipped
    return codec.encode(codec.hflip(codec.decode(flipped)))


def _mirrored_points(points: Sequence[Sequence[float]] | None, width: int) -> list[list[float]] | None:
    return None if points is None else [[width - 1 - x, y] for x, y in points]


#: Predicts a batch again (the same images' places and seeds): float RGB arrays and their point prompts ->
#: per image, its ensemble members.
Repredict = Callable[[list[np.ndarray], list[list[list[float]] | None]], Sequence[list["Prediction"]]]


def estimate(codec: Codec, estimator: str, predict: Repredict, arrays: Sequence[np.ndarray],
             points: Sequence[Sequence[Sequence[float]] | None], members: Sequence[list[Prediction]],
             ) -> list[np.ndarray]:
    """One batch's maps (see the module docstring), given the batch's own predictions `members`; `flips`
    predicts the mirrored images with `predict`."""
    if estimator == "samples":
        return [spread([m.image for m in drawn]) for drawn in members]
    combined = [codec.combine([m.image for m in drawn]) for drawn in members]
    if estimator == "margin":
        return [margin(codec, image) for image in combined]
    flipped = predict([np.ascontiguousarray(a[:, ::-1]) for a in arrays],
                      [_mirrored_points(p, a.shape[1]) for p, a in zip(points, arrays, strict=True)])
    return [spread([image, mirrored(codec, codec.combine([m.image for m in drawn]))])
            for image, drawn in zip(combined, flipped, strict=True)]


def wrong_pixels(codec: Codec, image: np.ndarray, target: Any) -> np.ndarray:
    """bool (H, W): where the prediction `image` decodes to a colour off the target's (ERROR_TOLERANCE)."""
    return np.abs(codec.encode(codec.decode(image)) - codec.encode(target)).mean(axis=-1) > ERROR_TOLERANCE


def save_map(uncertainty: np.ndarray, path: Path) -> Path:
    """A map as a 16-bit grey PNG (0..65535 for 0..1): exact to 1e-5, and viewable."""
    from PIL import Image

    Image.fromarray(np.rint(uncertainty * 65535).astype(np.uint16)).save(path)
    return path


def load_map(path: str | Path) -> np.ndarray:
    """A map `save_map` wrote, float32 in [0, 1]."""
    from PIL import Image

    return np.asarray(Image.open(path), np.float32) / 65535


def heat(uncertainty: np.ndarray) -> np.ndarray:
    """A map as a colour picture (matplotlib's inferno: black when sure, through red, to yellow when unsure),
    for grids and contact sheets."""
    from matplotlib import colormaps

    return colormaps["inferno"](np.clip(uncertainty, 0.0, 1.0))[..., :3].astype(np.float32)
