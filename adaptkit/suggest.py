"""Which images to label next: a collection of unlabelled images ranked by how much labelling each is
expected to help the adapter.

An image is worth labelling where the adapter is unsure of it: its score is the mean of its uncertainty map
(`adaptkit.uncertainty`), so the adapter's own doubt, not a proxy, decides. Uncertainty alone would pick K
near-duplicates of one hard image (the same scene a frame apart, the same slide twice), and the second copy
teaches little the first did not. So the picks are greedy: each next one maximises its score times its
distance to the nearest image already picked (a small picture of the image as its description), relative to
the largest such distance; a near-duplicate of a pick scores about zero, and the first pick is simply the
most uncertain image. Prediction streams over the collection (`adaptkit.inference`): only a score, a
192-number description and a small uncertainty tile are kept per image.

Outputs: ``suggested.txt`` (the chosen inputs, best first, one per line: ready for ``@suggested.txt``),
``suggested.json`` (with every scored input's uncertainty) and ``suggested.png``, a contact sheet of the
picks with their uncertainty maps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from adaptkit.adapters import AdaptedModel
from adaptkit.errors import AdaptkitError
from adaptkit.files import writable_folder, write_atomic
from adaptkit.images import to_pil
from adaptkit.inference import (
    BatchWriter,
    InputListing,
    Placement,
    Predicted,
    PredictModule,
    ReadImage,
    list_inputs,
    plan_batches,
    run_prediction,
    thumbnail,
)
from adaptkit.uncertainty import DEFAULT_ESTIMATOR, heat

#: The side of the small picture that describes an image for diversity (x 3 channels: 192 numbers): enough
#: to tell scenes apart, too coarse to separate a near-duplicate from its original.
DESCRIPTION_SIDE = 8
#: The side of each image's uncertainty tile kept for the contact sheet.
TILE_SIDE = 48


class SuggestError(AdaptkitError, ValueError):
    """A suggestion that cannot be made as asked (no image to score, a count below one)."""


@dataclass
class Suggestion:
    """One pick: its place in the order (1 is best), the input and its mean uncertainty."""

    rank: int
    source: str
    uncertainty: float


@dataclass
class SuggestReport:
    """What `suggest` chose, out of how many scored inputs, and the inputs it could not read."""

    suggested: list[Suggestion]
    scored: int
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    is_global_zero: bool = True

    def summary(self, out: Path) -> str:
        return (f"{len(self.suggested)} of {self.scored} image(s) suggested for labelling, best first, in "
                f"{out / 'suggested.txt'} (contact sheet: {out / 'suggested.png'}); "
                f"{len(self.skipped)} input(s) unreadable (skipped)")


def describe(image: np.ndarray) -> np.ndarray:
    """A small picture of the image (box-averaged, float in [0, 1]) as a vector: what makes two images near
    duplicates for the diversity term."""
    small = to_pil(image).resize((DESCRIPTION_SIDE, DESCRIPTION_SIDE), Image.Resampling.BOX)
    return np.asarray(small, np.float32).reshape(-1) / 255.0


def choose(scores: np.ndarray, descriptions: np.ndarray, count: int) -> list[int]:
    """`count` indices, greedily: the most uncertain first, then each maximising score x distance to the
    nearest pick so far (as a fraction of the largest such distance). Ties go to the earlier input."""
    if not len(scores):
        return []
    top = scores.max()
    weight = scores / top if top > 0 else np.ones_like(scores)
    picks = [int(np.argmax(weight))]
    nearest = np.linalg.norm(descriptions - descriptions[picks[0]], axis=1)
    while len(picks) < min(count, len(scores)):
        far = nearest.max()
        gain = weight * (nearest / far if far > 0 else 1.0)
        gain[picks] = -np.inf
        picks.append(int(np.argmax(gain)))
        nearest = np.minimum(nearest, np.linalg.norm(descriptions - descriptions[picks[-1]], axis=1))
    return picks


class _ScoreWriter(BatchWriter):
    """Keeps, per readable input, its mean uncertainty, its description and a small uncertainty tile."""

    def __init__(self, total: int, progress: bool) -> None:
        super().__init__(total, progress, "suggest")
        self.scores: dict[int, tuple[float, np.ndarray, np.ndarray]] = {}
        self.skipped: dict[int, str] = {}

    def consume(self, prediction: Predicted) -> None:
        for item in prediction.batch:
            if item.problem:
                self.skipped[item.index] = item.problem
                continue
            uncertainty = prediction.uncertainty[0][item.index]
            tile = np.rint(thumbnail(np.repeat(uncertainty[..., None], 3, -1), TILE_SIDE)[..., 0] * 255)
            self.scores[item.index] = (float(uncertainty.mean()), describe(item.image), tile.astype(np.uint8))

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        gathered = self.exchange((self.scores, self.skipped))
        self.scores = {i: value for scores, _ in gathered for i, value in scores.items()}
        self.skipped = {i: reason for _, skipped in gathered for i, reason in skipped.items()}


def suggest_labels(model: AdaptedModel, inputs: Sequence[str], count: int, out: str | Path, *,
            uncertainty: str = DEFAULT_ESTIMATOR, recursive: bool = False, split: str = "train",
            image_column: str = "image", workers: int = 0, where: Placement | None = None, progress: bool = True,
            **settings: Any) -> SuggestReport:
    """Rank the unlabelled `inputs` (files, folders, globs, @lists, datasets: as `predict_files` reads them) and
    write the best `count` to `out` (see the module docstring). `settings` are sampling settings."""
    if count < 1:
        raise SuggestError(f"--n must be at least 1 (the number of images to suggest), got {count}")
    chosen = model.sampling(uncertainty=uncertainty, **settings)
    listing = list_inputs(inputs, recursive, split, image_column)
    out = writable_folder(out)
    batches = plan_batches(len(listing.items), chosen["batch_size"])
    writer = _ScoreWriter(len(listing.items), progress)
    if batches:
        module = PredictModule([model], [chosen], ReadImage(listing), batches, list(range(len(batches))), workers)
        run_prediction(module, writer, where or Placement(devices=1))
    skipped = {**listing.empty, **{listing.items[i].source: r for i, r in sorted(writer.skipped.items())}}
    if writer.rank:
        return SuggestReport([], len(writer.scores), skipped, writer.seconds, is_global_zero=False)
    if not writer.scores:
        first = next(iter(skipped.items()), None)
        why = f"; {first[0]}: {first[1]}" if first else ""
        raise SuggestError(f"nothing to suggest: none of {' '.join(inputs)} gave a readable image "
                           f"({len(skipped)} input(s) skipped{why})")
    indices = sorted(writer.scores)
    scores = np.array([writer.scores[i][0] for i in indices])
    picks = [indices[p] for p in choose(scores, np.stack([writer.scores[i][1] for i in indices]), count)]
    suggested = [Suggestion(rank, listing.items[i].source, writer.scores[i][0]) for rank, i in enumerate(picks, 1)]
    _write(out, model, uncertainty, listing, writer, picks, suggested, skipped)
    return SuggestReport(suggested, len(indices), skipped, writer.seconds)


def _write(out: Path, model: AdaptedModel, estimator: str, listing: InputListing, writer: _ScoreWriter,
           picks: list[int], suggested: list[Suggestion], skipped: dict[str, str]) -> None:
    write_atomic(out / "suggested.txt", "".join(f"{s.source}\n" for s in suggested))
    record = {"adapter": model.meta.name if model.meta else None, "prompt": model.prompt, "uncertainty": estimator,
              "suggested": [vars(s) for s in suggested],
              "scores": {listing.items[i].source: value[0] for i, value in sorted(writer.scores.items())},
              "skipped": skipped}
    write_atomic(out / "suggested.json", json.dumps(record, indent=2) + "\n")
    read = ReadImage(listing)
    sheet = [(s, read(i).image, writer.scores[i][2]) for s, i in zip(suggested, picks, strict=True)]
    save_contact_sheet(out / "suggested.png", sheet)


def save_contact_sheet(path: Path, picks: list[tuple[Suggestion, np.ndarray | None, np.ndarray]],
                       cell: int = 112, columns: int = 5) -> None:
    """The picks in order, each its image beside its uncertainty map (black: sure, yellow: unsure), under a
    caption with its rank, mean uncertainty and name; written atomically."""
    caption, gap = 28, 6
    width = 2 * cell + 2
    rows = -(-len(picks) // columns)
    canvas = Image.new("RGB", (columns * (width + gap) - gap, rows * (cell + caption + gap) - gap), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (suggestion, image, tile) in enumerate(picks):
        x, y = (k % columns) * (width + gap), (k // columns) * (cell + caption + gap)
        draw.text((x + 2, y + 1), f"#{suggestion.rank}  uncertainty {suggestion.uncertainty:.3f}", fill="black")
        draw.text((x + 2, y + 14), Path(suggestion.source).name[:36], fill="dimgray")
        if image is not None:  # read again for the sheet: unreadable now only if the file changed since
            canvas.paste(to_pil(thumbnail(image, cell)), (x, y + caption))
        canvas.paste(to_pil(thumbnail(heat(tile.astype(np.float32) / 255), cell)), (x + cell + 2, y + caption))
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    canvas.save(temporary)
    os.replace(temporary, path)
