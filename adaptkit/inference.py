"""Evaluation and prediction with an adapted model: `adaptkit eval` and `adaptkit predict`.

Both run an `AdaptedModel` (an adapter folder, or a built-in task of a generalist with no adapter,
so zero-shot and adapted results can be compared on the same images) over images. `evaluate`
scores decoded predictions with the codec's torchmetrics and writes `metrics.json`, `report.md` and
a picture grid; `predict_files` writes each prediction in its task's native format.
"""

from __future__ import annotations

import glob
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adaptkit.adapters import AdaptedModel, AdapterError, combine_ensemble
from adaptkit.bases import load_generalist
from adaptkit.codecs import build_codec
from adaptkit.data import Sample
from adaptkit.errors import FileError
from adaptkit.files import writable_folder
from adaptkit.generalist import Generalist
from adaptkit.images import IMAGE_SUFFIXES, to_pil, to_rgb_array
from adaptkit.metrics import build_codec_metrics
from adaptkit.tasks import builtin_task_names, find_builtin_task


def builtin_task(generalist: Generalist | str, task: str, class_name: str = "") -> AdaptedModel:
    """A generalist's built-in task (`adaptkit.tasks`) as an `AdaptedModel` with no adapter (the zero-shot
    baseline).

    `semantic` takes a class name, as DICEPTION's prompt does (`[[image2semantic]] person`).
    """
    if isinstance(generalist, str):
        generalist = load_generalist(generalist)
    prompts = generalist.config.task_prompts
    found = find_builtin_task(task)
    if found is None or found.prompt_key not in prompts:
        known = [name for name in builtin_task_names() if find_builtin_task(name).prompt_key in prompts]
        raise AdapterError(f"task {task!r} is not a built-in task of {generalist.config.name}; built-in tasks: "
                           f"{', '.join(known)}")
    # no inference settings: the model samples with its objective's defaults (adaptkit.sampling)
    return AdaptedModel(generalist, build_codec(found.codec), found.prompt(prompts, class_name),
                        generalist.config.objective)


@dataclass
class EvalReport:
    metrics: dict[str, float]
    images: int
    steps: int
    guidance: float
    ensemble: int
    seconds_per_image: float

    def table(self) -> str:
        rows = [f"| {name} | {value:.4f} |" for name, value in self.metrics.items()]
        settings = (f"{self.images} images, {self.steps} step(s), guidance {self.guidance}, ensemble {self.ensemble}, "
                    f"{self.seconds_per_image:.3f} s per image")
        return "\n".join(["| metric | value |", "| --- | --- |", *rows, "", settings])


def evaluate(model: AdaptedModel, samples: Sequence[Sample], out: str | Path | None = None,
             metrics: list[str] | None = None, steps: int | None = None, guidance: float | None = None,
             ensemble: int | None = None, seed: int | None = None, grid: int = 8,
             progress: bool = True, split: str = "") -> EvalReport:
    """Predict every sample, decode, score with torchmetrics; write metrics.json, report.md, grid.png to `out`.

    `split` names what was evaluated (`test`, or a folder's name): it is recorded, and `adaptkit push` puts
    recorded evaluations into the model card.
    """
    settings = model.inference
    steps = settings["steps"] if steps is None else steps
    guidance = settings["guidance"] if guidance is None else guidance
    ensemble = settings["ensemble"] if ensemble is None else ensemble
    collection = build_codec_metrics(model.codec, metrics)
    started = time.perf_counter()
    encoded = model.predict_encoded([s.image for s in samples], steps=steps, guidance=guidance, seed=seed,
                                    ensemble=ensemble, progress=progress, points=[s.points for s in samples])
    combined = [combine_ensemble(model.codec, members) for members in encoded]
    for sample, image in zip(samples, combined, strict=True):
        collection.update(model.codec.decode(image), sample.target)
    elapsed = time.perf_counter() - started
    values = {name: float(value) for name, value in collection.compute().items()}
    report = EvalReport(values, len(samples), steps, guidance, ensemble, elapsed / max(len(samples), 1))
    if out is not None:
        out = writable_folder(out)
        (out / "metrics.json").write_text(json.dumps({"metrics": values, "split": split, "images": len(samples),
                                                      "steps": steps,
                                                      "guidance": guidance, "ensemble": ensemble,
                                                      "seconds_per_image": report.seconds_per_image,
                                                      "ids": [s.id for s in samples]}, indent=2) + "\n")
        (out / "report.md").write_text(f"# Evaluation: {model.prompt}\n\n{report.table()}\n")
        save_grid(out / "grid.png", [(s.image, c, model.codec.encode(s.target))
                                     for s, c in list(zip(samples, combined, strict=True))[:grid]])
    return report


def save_grid(path: Path, rows: list[tuple[np.ndarray, ...]], cell: int = 128,
              titles: Sequence[str] = ("input", "prediction", "target")) -> None:
    """Rows of pictures side by side under titled columns, each resized to `cell` px high."""
    from PIL import ImageDraw

    if not rows:
        return
    columns, header = len(rows[0]), 18
    canvas = Image.new("RGB", (columns * cell + (columns - 1) * 2, header + len(rows) * (cell + 2) - 2), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles[:columns]):
        width = draw.textlength(title)
        draw.text((c * (cell + 2) + (cell - width) / 2, 3), title, fill="black")
    for r, pictures in enumerate(rows):
        for c, picture in enumerate(pictures):
            tile = to_pil(picture).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (c * (cell + 2), header + r * (cell + 2)))
    canvas.save(path)


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], dict[str, str]]:
    """Files, folders (their images, sorted) and glob patterns -> image paths, in the order given, and the
    entries that named nothing (a glob matching no file, a folder without images) with the reason."""
    paths: list[Path] = []
    empty: dict[str, str] = {}
    for entry in inputs:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                empty[entry] = f"the folder holds no images ({', '.join(IMAGE_SUFFIXES)})"
        elif any(ch in entry for ch in "*?[") and not path.exists():
            found = sorted(Path(p) for p in glob.glob(entry, recursive=True))
            if not found:
                empty[entry] = "the pattern matches no file"
        else:
            found = [path]
        paths.extend(found)
    return paths, empty


@dataclass
class PredictReport:
    written: dict[str, list[Path]]
    skipped: dict[str, str]


def predict_files(model: AdaptedModel, inputs: Sequence[str], out: str | Path, raw: bool = False,
                  progress: bool = True, **settings: Any) -> PredictReport:
    """Predict every readable input and write native outputs (and, with `raw`, the colour image).

    Unreadable inputs are reported in the result and skipped: one bad file never costs the rest.
    """
    out = writable_folder(out)
    paths, skipped = expand_inputs(inputs)
    readable = []
    for path in paths:
        try:
            readable.append((path, to_rgb_array(path)))  # FIFOs, oversized and corrupt files: a FileError
        except FileError as error:
            skipped[str(path)] = error.problem
        except (OSError, ValueError) as error:  # pixels no image reader expects (e.g. 2-channel TIFF)
            skipped[str(path)] = f"not a usable image ({error})"
    written: dict[str, list[Path]] = {}
    if readable:
        encoded = model.predict_encoded([array for _, array in readable], progress=progress, **settings)
        stems = _unique_stems([path for path, _ in readable])
        for stem, members in zip(stems, encoded, strict=True):
            image = combine_ensemble(model.codec, members)
            files = model.codec.save(model.codec.decode(image), out / stem)
            if raw:
                raw_path = out / f"{stem}.encoded.png"
                to_pil(image).save(raw_path)
                files.append(raw_path)
            written[stem] = files
    (out / "predictions.json").write_text(json.dumps(
        {"written": {k: [str(p) for p in v] for k, v in written.items()}, "skipped": skipped}, indent=2) + "\n")
    return PredictReport(written, skipped)


def _unique_stems(paths: list[Path]) -> list[str]:
    """Output stems: file stems, made unique when two inputs share one (a/x.png and b/x.jpg)."""
    counts: dict[str, int] = {}
    stems = []
    for path in paths:
        seen = counts.get(path.stem, 0)
        counts[path.stem] = seen + 1
        stems.append(path.stem if not seen else f"{path.stem}_{seen}")
    return stems
