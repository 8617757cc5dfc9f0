"""Evaluation and prediction with an adapted model, at any scale: `adaptkit eval` and `adaptkit predict`.

Both run an `AdaptedModel` (an adapter folder, or a built-in task of a generalist with no adapter,
so zero-shot and adapted results can be compared on the same images) over a collection that may be far
larger than memory, on whatever Lightning reaches (one CPU, 8 GPUs, several machines):

* **Streamed.** The collection is cut into fixed batches (`plan_batches`); a `DataLoader` decodes each batch
  when it is needed (in worker processes with `workers`), it is predicted, and written or scored at once, so
  memory stays flat however many inputs there are.
* **Distributed on Lightning.** `Trainer.predict` runs `PredictModule`; each rank takes whole batches
  (`shard`: batch b goes to rank b mod W, padded with empty batches so every rank runs as many steps) and a
  `BasePredictionWriter` writes what that rank made. A batch is the same set of images whichever rank runs
  it and image i draws from seed + i, so one process and many give byte-identical outputs. After every batch
  the ranks exchange one small message (progress and failures): rank 0 draws the bar for the whole run,
  and a rank that fails stops every rank at the same batch with one line instead of leaving them waiting.
* **Resumable.** Each output file is written under a temporary name in `out/.adaptkit-predict/` and renamed
  into place; a line per input is then appended to that rank's journal. A rerun skips every input whose
  recorded files exist, redoes the rest (whole batches again, so bytes match an uninterrupted run), and
  rank 0 merges everything into `predictions.json`, then removes the journals.

Inputs are files, folders (`recursive`), globs, `@list.txt` files of paths and `datasets` datasets (`hf:NAME`
or a `save_to_disk` folder); outputs keep the inputs' sub-folders relative to the common folder of what was
given (`list_inputs`).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from adaptkit.adapters import AdaptedModel, AdapterError
from adaptkit.bases import load_generalist
from adaptkit.codecs import CodecError, TargetNote, build_codec
from adaptkit.data import DataError, DataSource, Sample, _open_dataset, require_known, source_name
from adaptkit.errors import AdaptkitError, FileError
from adaptkit.files import read_json, writable_folder, write_atomic
from adaptkit.generalist import Generalist, Prediction
from adaptkit.images import IMAGE_SUFFIXES, to_pil, to_rgb_array
from adaptkit.metrics import build_codec_metrics
from adaptkit.metrics.uncertainty import ErrorAUROC
from adaptkit.tasks import builtin_task_names, find_builtin_task
from adaptkit.training import _quiet_lightning, placement
from adaptkit.uncertainty import estimate, heat, save_map, wrong_pixels

#: Inside an output folder: the journals and temporary files of a run that has not finished yet.
PROGRESS_FOLDER = ".adaptkit-predict"
#: Pairs whose targets `evaluate` checks as a set (every mask empty, depth that looks like masks) before a run.
SET_CHECK_PAIRS = 16


class PredictionError(AdaptkitError, RuntimeError):
    """A prediction run that had to stop (an output folder that cannot be written, a failing rank, settings
    that differ from the run being continued); the message says what was written and how to continue."""


def builtin_task(generalist: Generalist | str, task: str, class_name: str = "",
                 device: torch.device | str | None = None) -> AdaptedModel:
    """A generalist's built-in task (`adaptkit.tasks`) as an `AdaptedModel` with no adapter (the zero-shot
    baseline).

    `semantic` takes a class name, as DICEPTION's prompt does (`[[image2semantic]] person`).
    """
    if isinstance(generalist, str):
        generalist = load_generalist(generalist, device=device)
    prompts = generalist.config.task_prompts
    found = find_builtin_task(task)
    if found is None or found.prompt_key not in prompts:
        known = [name for name in builtin_task_names() if find_builtin_task(name).prompt_key in prompts]
        raise AdapterError(f"task {task!r} is not a built-in task of {generalist.config.name}; built-in tasks: "
                           f"{', '.join(known)}")
    # no inference settings: the model samples with its objective's defaults (adaptkit.sampling)
    return AdaptedModel(generalist, build_codec(found.codec), found.prompt(prompts, class_name),
                        generalist.config.objective)


@dataclass(frozen=True)
class Placement:
    """Where a run executes, as Lightning takes it: what `train` reads from its recipe's `train.accelerator`,
    `devices` and `strategy` (`training.placement` turns both into Trainer arguments), plus `num_nodes`."""

    accelerator: str = "auto"
    devices: str | int = "auto"
    strategy: str = "auto"
    num_nodes: int = 1

    def trainer_args(self) -> dict[str, Any]:
        return placement(self.accelerator, self.devices, self.strategy, "auto", self.num_nodes)


# ------------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class InputItem:
    """One input of a collection: where its pixels are and the name its outputs take."""

    name: str  # the outputs' path inside the output folder, without suffix: "a/x" for .../a/x.png
    source: str  # how it is named in messages and in predictions.json: the file, or DATASET[split][row]
    path: str = ""  # the image file ("" for a dataset row)
    dataset: str = ""  # the input entry that named the dataset ("" for a file)
    row: int = -1


@dataclass
class InputListing:
    """What a list of input entries names, in the order given; `empty` holds entries that named nothing."""

    items: list[InputItem]
    empty: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)
    image_column: str = "image"


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _glob_base(pattern: str) -> Path:
    """The leading folders of a glob pattern, up to the first part with a wildcard: what its matches are
    named relative to (`data/**/*.png` -> `data`)."""
    parts = Path(pattern).expanduser().parts
    fixed = parts[:next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))]
    return Path(*fixed) if fixed else Path(".")


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    """A folder's images (by suffix), sorted by their path inside it; with `recursive`, its sub-folders' too."""
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    found = []
    for root, folders, files in os.walk(folder):
        folders.sort()
        found.extend(Path(root) / name for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def _listed_paths(list_file: Path) -> list[Path]:
    """The paths in a text file, one a line (blank lines and `#` comments ignored), relative ones taken
    from the list's own folder, so a list travels with the images it names."""
    try:
        lines = list_file.expanduser().read_text().splitlines()
    except FileNotFoundError:
        raise FileError(list_file, "the list of inputs is missing", "give an existing @FILE of paths") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FileError(list_file, f"the list of inputs cannot be read ({error})", "give a text file, one path a "
                                   "line") from None
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return [path if path.is_absolute() else list_file.expanduser().parent / path
            for path in map(Path, entries)]


def list_inputs(inputs: Sequence[str], recursive: bool = False, split: str = "train",
                image_column: str = "image") -> InputListing:
    """The images that input entries name, in the order given, each with its output name.

    Entries: image files; folders (their images sorted; with `recursive`, their sub-folders' too); glob
    patterns (`**` descends); `@list.txt` (a path a line); `hf:NAME` (a Hub dataset) or a folder written by
    `datasets`' `save_to_disk`, read from `split` and `image_column`.

    Output names keep sub-folders: every file is named by its path relative to the common folder of the
    entries' folders (a folder given, a glob's leading folders, a listed or given file's folder), minus its
    suffix. So `predict A slides/` writes `slides/a/x.png` as `a/x`, and `predict A a/ b/` keeps `a/x` and
    `b/x` apart. Dataset rows are named `SPLIT/ROW` (zero-padded). Two inputs that would still share a name
    (`x.png` and `x.jpg` side by side) get `_1`, `_2`... in the order given.
    """
    found: list[tuple[Path, Path] | InputItem] = []  # (file, folder it is named from) or a dataset row
    empty: dict[str, str] = {}
    datasets: dict[str, Any] = {}
    for entry in inputs:
        path = Path(entry).expanduser()
        if entry.startswith("hf:") or (path.is_dir() and _is_saved_dataset(path)):
            name = entry.removeprefix("hf:")
            dataset = _open_dataset(name, split)
            if image_column not in dataset.column_names:
                raise DataError(f"{name} has no column {image_column!r}; its columns are "
                                f"{', '.join(dataset.column_names)} (pass --image-column)")
            datasets[entry] = dataset
            width = len(str(max(len(dataset) - 1, 0)))
            found.extend(InputItem(f"{split}/{row:0{width}d}", f"{name}[{split}][{row}]", dataset=entry, row=row)
                         for row in range(len(dataset)))
            if not len(dataset):
                empty[entry] = f"the {split!r} split holds no rows"
            continue
        if entry.startswith("@"):
            files = _listed_paths(Path(entry[1:]))
            found.extend((file, file.parent) for file in files)
            if not files:
                empty[entry] = "the list names no file"
            continue
        if path.is_dir():
            files = _folder_images(path, recursive)
            base = path
            if not files:
                empty[entry] = (f"the folder holds no images ({', '.join(IMAGE_SUFFIXES)})"
                                + ("" if recursive else "; pass --recursive to look in its sub-folders"))
        elif glob.has_magic(entry) and not path.exists():
            files = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            base = _glob_base(entry)
            if not files:
                empty[entry] = "the pattern matches no file"
        else:
            files, base = [path], path.parent
        found.extend((file, base) for file in files)
    bases = [os.path.abspath(entry[1]) for entry in found if isinstance(entry, tuple)]
    root = os.path.commonpath(bases) if bases else ""
    items = []
    for entry in found:
        if isinstance(entry, InputItem):
            items.append(entry)
            continue
        file = entry[0]
        relative = Path(os.path.relpath(os.path.abspath(file), root))
        items.append(InputItem(relative.with_suffix("").as_posix() if relative.suffix else relative.as_posix(),
                               str(file), path=str(file)))
    names = _unique_names([item.name for item in items])
    items = [InputItem(name, item.source, item.path, item.dataset, item.row) for item, name in zip(items, names,
                                                                                                  strict=True)]
    return InputListing(items, empty, datasets, image_column)


def _unique_names(names: list[str]) -> list[str]:
    """Output names made unique in order: the second `x` becomes `x_1` (x.png and x.jpg side by side)."""
    taken = set(names)
    counts: dict[str, int] = {}
    unique = []
    for name in names:
        seen = counts.get(name, 0)
        counts[name] = seen + 1
        if seen:
            while f"{name}_{seen}" in taken:
                seen += 1
            name = f"{name}_{seen}"
            taken.add(name)
        unique.append(name)
    return unique


# ------------------------------------------------------------------------------------------ batches, shards
@dataclass
class Decoded:
    """One input as a DataLoader worker hands it over: its pixels (and, to evaluate, its target), or why not."""

    index: int  # its place in the collection: its seed and its batch follow from it
    image: np.ndarray | None
    target: Any = None
    points: list[tuple[float, float]] | None = None
    problem: str = ""


def plan_batches(count: int, batch_size: int) -> list[list[int]]:
    """The collection 0..count-1 cut into consecutive batches: fixed by the collection alone (not by ranks or
    by what an earlier run finished), so every image is always predicted in the same company."""
    return [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]


def shard(batches: Sequence[int], rank: int, world: int) -> list[int | None]:
    """The batches rank `rank` of `world` predicts: every world-th one from its rank on, padded with `None`
    (an empty batch) so that every rank takes the same number of steps. Each batch goes to exactly one rank,
    and padding is never a batch, so nothing is predicted twice or left out."""
    steps = -(-len(batches) // world)
    mine: list[int | None] = list(batches[rank::world])
    return mine + [None] * (steps - len(mine))


class ReadImage:
    """Decodes input i of a listing (in a worker): an unreadable one comes back with the reason, never raises."""

    def __init__(self, listing: InputListing) -> None:
        self.listing = listing

    def __call__(self, index: int) -> Decoded:
        item = self.listing.items[index]
        try:
            if item.dataset:
                value = self.listing.datasets[item.dataset][item.row][self.listing.image_column]
                value = value if isinstance(value, Image.Image) else np.asarray(value)
            else:
                value = Path(item.path)
            return Decoded(index, to_rgb_array(value))
        except FileError as error:  # FIFOs, folders, oversized and corrupt files
            return Decoded(index, None, problem=error.problem)
        except Exception as error:  # pixels no reader expects (a 2-channel TIFF), a damaged dataset row: skip it
            return Decoded(index, None, problem=f"not a usable image ({type(error).__name__}: {error})")


class _ReadSample:
    """Loads labelled pair i (in a worker): a pair that cannot be used comes back with the reason."""

    def __init__(self, source: DataSource | Sequence[Sample], ids: Sequence[str]) -> None:
        self.source, self.ids = source, list(ids)

    def __call__(self, index: int) -> Decoded:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TargetNote)  # how targets are read is said once, by _check_set
            try:
                sample = self.source.load(self.ids[index]) if hasattr(self.source, "load") else self.source[index]
            except (DataError, CodecError, FileError) as error:
                return Decoded(index, None, problem=str(error))
        return Decoded(index, sample.image, sample.target, sample.points)


class _Batches(Dataset):
    """A rank's shard: item j is batch `shard[j]` decoded (an empty list for padding)."""

    def __init__(self, read: Callable[[int], Decoded], batches: list[list[int]], mine: list[int | None]) -> None:
        self.read, self.batches, self.mine = read, batches, mine

    def __len__(self) -> int:
        return len(self.mine)

    def __getitem__(self, step: int) -> list[Decoded]:
        number = self.mine[step]
        return [] if number is None else [self.read(index) for index in self.batches[number]]


def _as_is(batch: list[Decoded]) -> list[Decoded]:
    return batch


@dataclass
class Predicted:
    """What one step hands its writer: the batch, per model per usable input its ensemble members, or why the
    step failed (a failure travels to the writer so that every rank still meets at the per-batch exchange)."""

    batch: list[Decoded]
    members: list[dict[int, list[Prediction]]]
    failure: str = ""
    uncertainty: list[dict[int, np.ndarray]] = field(default_factory=list)  # per model (those asked for one)


def _one_line(error: BaseException) -> str:
    text = (str(error).splitlines() or [""])[0]
    return text if isinstance(error, AdaptkitError) else f"{type(error).__name__}: {text}"


def _predict_again(model: AdaptedModel, indices: list[int], chosen: dict[str, Any], arrays: list[np.ndarray],
                   points: list[Any]) -> list[list[Prediction]]:
    return model.predict_members(arrays, indices, points, chosen)


class PredictModule(L.LightningModule):
    """The models of a run on one generalist: each step predicts one batch with every model."""

    def __init__(self, models: list[AdaptedModel], sampling: list[dict[str, Any]], read: Callable[[int], Decoded],
                 batches: list[list[int]], pending: list[int], workers: int) -> None:
        super().__init__()
        self.generalist = models[0].generalist  # a child module: Lightning moves it to this rank's device
        self.models, self.sampling, self.read = models, sampling, read
        self.batches, self.pending, self.workers = batches, pending, workers

    def predict_dataloader(self) -> DataLoader:
        # rank 0's plan wins: ranks that listed a changing folder at slightly different times still agree
        self.pending = self.trainer.strategy.broadcast(self.pending, src=0)
        mine = shard(self.pending, self.global_rank, self.trainer.world_size)
        return DataLoader(_Batches(self.read, self.batches, mine), batch_size=None, collate_fn=_as_is,
                          num_workers=self.workers)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # numpy pixels; the generalist moves its own tensors

    def predict_step(self, batch: list[Decoded], batch_idx: int) -> Predicted:
        try:
            usable = [item for item in batch if item.image is not None]
            members: list[dict[int, list[Prediction]]] = [{} for _ in self.models]
            maps: list[dict[int, np.ndarray]] = [{} for _ in self.models]
            if usable:
                arrays = [item.image for item in usable]
                indices = [item.index for item in usable]
                points = [item.points for item in usable]
                for found, mapped, model, chosen in zip(members, maps, self.models, self.sampling, strict=True):
                    drawn = model.predict_members(arrays, indices, points, chosen)
                    found.update(zip(indices, drawn, strict=True))
                    if chosen["uncertainty"]:  # `flips` predicts the mirrored batch in the same places
                        again = partial(_predict_again, model, indices, chosen)
                        mapped.update(zip(indices, estimate(model.codec, chosen["uncertainty"], again, arrays, points,
                                                            drawn), strict=True))
            return Predicted(batch, members, uncertainty=maps)
        except Exception as error:  # reported at the exchange, so the other ranks stop too (see BatchWriter)
            return Predicted(batch, [], f"predicting {', '.join(str(i.index) for i in batch)}: {_one_line(error)}")


class BatchWriter(BasePredictionWriter):
    """Consumes each batch on its rank, then meets the other ranks (one small message each: images done and
    failure, if any), so rank 0's bar counts the whole run and a failure anywhere stops every rank at the
    same batch with the same line. Subclasses say what consuming a batch is (`consume`) and what ends a run
    (`on_predict_end`)."""

    def __init__(self, total: int, progress: bool, description: str) -> None:
        super().__init__(write_interval="batch")
        self.total, self.progress, self.description = total, progress, description
        self.group: Any = None
        self.bar: tqdm | None = None
        self.rank, self.world = 0, 1
        self.started = self.seconds = 0.0
        self.pids: list[int] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.rank, self.world = trainer.global_rank, trainer.world_size
        self.started = time.perf_counter()  # every rank is up and loaded: what follows is prediction alone
        if self.world > 1:  # a CPU group for these small exchanges, whatever backend the model uses (nccl)
            self.group = torch.distributed.new_group(backend="gloo")
        self.pids = self.exchange(os.getpid())
        if self.rank == 0:
            self.bar = tqdm(total=self.total, desc=self.description, unit="img", disable=not self.progress,
                            dynamic_ncols=True, smoothing=0.1)

    def exchange(self, message: Any) -> list[Any]:
        """Every rank's `message`, in rank order (one process: just this one)."""
        if self.world == 1:
            return [message]
        gathered: list[Any] = [None] * self.world
        try:
            torch.distributed.all_gather_object(gathered, message, group=self.group)
        except RuntimeError as error:  # a peer died (killed, out of memory): gloo reports the broken link
            raise PredictionError(f"another process of this run stopped ({_one_line(error)}); what was written "
                                  "so far is kept: rerun the same command to continue") from None
        return gathered

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Predicted,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        failure = prediction.failure
        if not failure:
            try:
                self.consume(prediction)
            except AdaptkitError as error:
                failure = str(error)
            except Exception as error:  # reported at the exchange below, so that no rank waits for this one
                failure = _one_line(error)
        reports = self.exchange((len(prediction.batch), failure))
        self.seconds = time.perf_counter() - self.started
        if self.bar is not None:
            self.bar.update(sum(done for done, _ in reports))
        failures = [f"rank {rank}: {text}" if self.world > 1 else text
                    for rank, (_, text) in enumerate(reports) if text]
        if failures:
            self.close_bar()
            if self.rank and os.getppid() == self.pids[0]:
                _outlive(self.pids[0])
            raise PredictionError(f"the run stopped: {'; '.join(failures)}")

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def consume(self, prediction: Predicted) -> None:
        raise NotImplementedError


def _outlive(parent: int, limit_s: float = 10.0) -> None:
    """Wait (at most `limit_s`) for the process that launched this rank to exit. Lightning's launcher (rank 0,
    the parent of the ranks it starts) kills every rank when one of its children exits with an error first, so
    a child rank of a run that stops lets rank 0 print its line and exit before it does."""
    deadline = time.monotonic() + limit_s
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.05)


def run_prediction(module: PredictModule, writer: BatchWriter, where: Placement) -> None:
    """`Trainer.predict` of `module` with `writer` on `where`."""
    chatter = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # "GPU available: ...", tips
    level = chatter.level
    chatter.setLevel(max(level, logging.WARNING))
    try:
        trainer = L.Trainer(**where.trainer_args(), logger=False, callbacks=[writer], enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, use_distributed_sampler=False,
                            inference_mode=True)
        with _quiet_lightning(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*infer the batch indices")  # batches carry their indices
            trainer.predict(module, return_predictions=False)
    finally:
        writer.close_bar()
        chatter.setLevel(level)


# ---------------------------------------------------------------------------------------------- predict
@dataclass
class PredictReport:
    """What a prediction run did, per output folder: inputs written now, complete from an earlier run
    (`already`), unreadable ones with the reason (`skipped`), and how fast."""

    written: dict[str, list[Path]]
    skipped: dict[str, str]
    already: int = 0
    seconds: float = 0.0
    processes: int = 1
    is_global_zero: bool = True

    def summary(self, out: Path) -> str:
        """The line a run ends with: what was written where, how fast, and what was left out and why."""
        speed = (f" in {self.seconds:.1f} s ({len(self.written) / self.seconds:.2f} img/s on {self.processes} "
                 f"process(es))" if self.written and self.seconds else "")
        return (f"{len(self.written)} prediction(s) written to {out}{speed}; {self.already} already complete "
                f"(skipped); {len(self.skipped)} input(s) unreadable (skipped)")


@dataclass
class _Job:
    """One model's part of a run: where it writes, and what earlier runs left there."""

    model: AdaptedModel
    out: Path
    raw: bool
    settings: dict[str, Any]
    earlier: dict[str, list[str]]  # output name -> files (relative to out) of inputs already complete
    unreadable: dict[str, str]  # input -> reason, for inputs an earlier run found unreadable
    journal: Any = None
    written: dict[int, list[str]] = field(default_factory=dict)

    @property
    def scratch(self) -> Path:
        return self.out / PROGRESS_FOLDER


def _record_settings(model: AdaptedModel, chosen: dict[str, Any], raw: bool) -> dict[str, Any]:
    """What makes two runs' outputs the same: the adapter, its base, how it was sampled and what was written."""
    meta = model.meta
    return {"adapter": meta.name if meta else None, "adapter_sha256": meta.weights_sha256 if meta else None,
            "prompt": model.prompt,  # an adapter's recorded base: the live one also carries the other adapters
            "base_fingerprint": meta.base_fingerprint if meta else model.generalist.fingerprint(),
            **{key: chosen[key] for key in ("steps", "guidance", "ensemble", "seed", "batch_size", "uncertainty")},
            "raw": raw}


def _open_job(model: AdaptedModel, out: Path, raw: bool, settings: dict[str, Any], overwrite: bool) -> _Job:
    """A model's job with what earlier runs into `out` completed (its predictions.json, and the journals of a
    run that stopped), keeping only inputs whose files are all there. A run with other settings is refused:
    mixing its outputs with these would be silently wrong."""
    out = writable_folder(out)
    if overwrite:
        shutil.rmtree(out / PROGRESS_FOLDER, ignore_errors=True)
        return _Job(model, out, raw, settings, {}, {})
    done: dict[str, list[str]] = {}
    unreadable: dict[str, str] = {}
    previous = []
    recorded = out / "predictions.json"
    if recorded.is_file():
        record = read_json(recorded, "prediction record")
        if isinstance(record, dict) and isinstance(record.get("written"), dict):
            previous.append(record.get("settings"))
            done.update(record["written"])
            unreadable.update(record.get("skipped") or {})
    settings_file = out / PROGRESS_FOLDER / "settings.json"
    if settings_file.is_file():
        previous.append(read_json(settings_file, "prediction settings"))
    for journal in sorted((out / PROGRESS_FOLDER).glob("*.jsonl")):
        for line in journal.read_text().splitlines():
            try:  # a run killed mid-line leaves one partial line: that input is simply redone
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "files" in entry:
                done[entry["name"]] = entry["files"]
            elif isinstance(entry, dict) and "skipped" in entry:
                unreadable[entry["source"]] = entry["skipped"]
    for earlier in previous:
        if earlier != settings:
            changed = [key for key in settings if not isinstance(earlier, dict) or earlier.get(key) != settings[key]]
            raise PredictionError(
                f"{out} holds predictions made with other settings ({', '.join(changed) or 'the record'} differ); "
                "rerun with the same settings to continue, pass --overwrite to predict every input again, or "
                "choose another --out")
    complete = {name: files for name, files in done.items() if all((out / file).is_file() for file in files)}
    return _Job(model, out, raw, settings, complete, unreadable)


class _FileWriter(BatchWriter):
    """Writes each model's native outputs into its folder (atomically), journals them, and on rank 0 merges
    every rank's record into predictions.json at the end."""

    def __init__(self, jobs: list[_Job], listing: InputListing, total: int, progress: bool) -> None:
        super().__init__(total, progress, "predict")
        self.jobs, self.listing = jobs, listing
        self.skipped: dict[int, str] = {}
        self.count = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        for job in self.jobs:
            job.scratch.mkdir(parents=True, exist_ok=True)
            if self.rank == 0:
                write_atomic(job.scratch / "settings.json", json.dumps(job.settings, indent=2) + "\n")
            job.journal = (job.scratch / f"rank{self.rank}-{uuid.uuid4().hex[:8]}.jsonl").open("a")

    def consume(self, prediction: Predicted) -> None:
        for item in prediction.batch:
            if item.problem:
                self.skipped[item.index] = item.problem
                source = self.listing.items[item.index].source
                for job in self.jobs:
                    self.journal(job, {"source": source, "skipped": item.problem})
        for job, members, maps in zip(self.jobs, prediction.members, prediction.uncertainty, strict=True):
            for index, drawn in members.items():
                name = self.listing.items[index].name
                try:
                    files = self.write(job, name, drawn, maps.get(index))
                except OSError as error:
                    raise PredictionError(self.unwritable(job, error)) from None
                job.written[index] = files
                self.journal(job, {"name": name, "files": files})

    def journal(self, job: _Job, entry: dict[str, Any]) -> None:
        """One line per input, after its files are in place: a kill -9 keeps every line that reached the OS."""
        try:
            job.journal.write(json.dumps(entry) + "\n")
            job.journal.flush()
        except OSError as error:
            raise PredictionError(self.unwritable(job, error)) from None

    def write(self, job: _Job, name: str, members: list[Prediction], uncertainty: np.ndarray | None) -> list[str]:
        """One input's outputs (the prediction, its colour image with `raw`, its uncertainty map) under
        temporary names in the scratch folder, then renamed into place; the files' paths relative to the
        job's folder."""
        codec = job.model.codec
        image = codec.combine([m.image for m in members])
        self.count += 1
        temporary = job.scratch / f"{self.rank}-{os.getpid()}-{self.count}"
        made = codec.save(codec.decode(image), temporary)
        if job.raw:
            to_pil(image).save(f"{temporary}.encoded.png")
            made.append(Path(f"{temporary}.encoded.png"))
        if uncertainty is not None:
            made.append(save_map(uncertainty, Path(f"{temporary}.uncertainty.png")))
        files = []
        for path in made:
            target = job.out / f"{name}{path.name[len(temporary.name):]}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            files.append(target.relative_to(job.out).as_posix())
        return files

    def unwritable(self, job: _Job, error: OSError) -> str:
        complete = len(set(job.earlier) | {self.listing.items[i].name for i in job.written})
        return (f"cannot write into {job.out} ({error.filename or job.out}: {error.strerror or error}); this process "
                f"wrote {len(job.written)} prediction(s) there before it, {complete} input(s) are complete in all "
                f"(recorded in {job.scratch}); make room (free space, fix permissions, move what is in the way), then "
                "rerun the same command to continue")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for job in self.jobs:
            job.journal.close()
        gathered = self.exchange(([job.written for job in self.jobs], self.skipped))
        for number, job in enumerate(self.jobs):
            job.written = {index: files for written, _ in gathered for index, files in written[number].items()}
        self.skipped = {index: reason for _, part in gathered for index, reason in part.items()}
        if self.rank == 0:
            self.merge()

    def unreadable(self) -> dict[str, str]:
        """Every input left out as unreadable, in input order, with the reason: found so by this run, or by an
        earlier one and not tried again (it still was, see `_pending`)."""
        items = self.listing.items
        now = {items[index].source: reason for index, reason in self.skipped.items()}
        earlier = {source: reason for job in self.jobs for source, reason in job.unreadable.items()}
        made = {items[index].name for job in self.jobs for index in job.written} | {
            name for job in self.jobs for name in job.earlier}
        return {item.source: now.get(item.source) or earlier[item.source] for item in items
                if item.source in now or (item.source in earlier and item.name not in made)}

    def merge(self) -> None:
        """predictions.json of every folder, in input order (whatever rank made what), then no journals."""
        items, skipped = self.listing.items, self.unreadable()
        for job in self.jobs:
            names = {items[index].name: files for index, files in job.written.items()}
            written = {item.name: names.get(item.name) or job.earlier[item.name] for item in items
                       if item.name in names or item.name in job.earlier}
            record = {"settings": job.settings, "written": written, "skipped": skipped}
            write_atomic(job.out / "predictions.json", json.dumps(record, indent=2) + "\n")
            shutil.rmtree(job.scratch, ignore_errors=True)


def _pending(listing: InputListing, batches: list[list[int]], jobs: list[_Job]) -> list[int]:
    """The batches a run must predict: those with an input some folder lacks. An input an earlier run found
    unreadable counts as done only while it still is (it is tried again here, alone: a fixed file is redone)."""
    read, pending = ReadImage(listing), []
    for number, batch in enumerate(batches):
        for index in batch:
            item = listing.items[index]
            missing = [job for job in jobs if item.name not in job.earlier]
            if missing and (any(item.source not in job.unreadable for job in missing) or read(index).problem == ""):
                pending.append(number)
                break
    return pending


def predict_files(model: AdaptedModel | Sequence[AdaptedModel], inputs: Sequence[str],
                  out: str | Path | Sequence[str | Path], raw: bool = False, progress: bool = True, *,
                  recursive: bool = False, split: str = "train", image_column: str = "image", workers: int = 0,
                  overwrite: bool = False, where: Placement | None = None,
                  **settings: Any) -> PredictReport | list[PredictReport]:
    """Predict every readable input and write native outputs (and, with `raw`, the colour image), streamed and
    resumable (see the module docstring); `where` says on which devices and machines (default: one process).

    Several models on one generalist (`load_adapters`) take one folder each (`out` a list) and share one pass
    over the inputs: each batch is decoded once and predicted with every model. Unreadable inputs are reported
    in the result and skipped: one bad file never costs the rest. `settings` are sampling settings (steps,
    guidance, ensemble, seed, batch_size) for every model.
    """
    models = [model] if isinstance(model, AdaptedModel) else list(model)
    outs = [Path(out)] if isinstance(out, str | Path) else [Path(o) for o in out]
    if len(outs) != len(models):
        raise ValueError(f"got {len(outs)} output folders for {len(models)} models")
    if len({id(m.generalist) for m in models}) != 1:
        raise AdapterError("the models of one prediction run must share one generalist (load them with "
                           "load_adapters, or one at a time)")
    listing = list_inputs(inputs, recursive, split, image_column)
    sampling = [m.sampling(**settings) for m in models]
    jobs = [_open_job(m, folder, raw, _record_settings(m, chosen, raw), overwrite)
            for m, chosen, folder in zip(models, sampling, outs, strict=True)]
    batches = plan_batches(len(listing.items), sampling[0]["batch_size"])
    pending = _pending(listing, batches, jobs)
    writer = _FileWriter(jobs, listing, sum(len(batches[number]) for number in pending), progress)
    if pending:
        run_prediction(PredictModule(models, sampling, ReadImage(listing), batches, pending, workers), writer,
             where or Placement(devices=1))
    else:  # nothing left to predict (a finished run, or one killed before its record): the record still
        writer.merge()
    skipped = {**listing.empty, **writer.unreadable()}
    reports = []
    for job in jobs:
        written = {listing.items[i].name: [job.out / f for f in files] for i, files in sorted(job.written.items())}
        already = sum(1 for i, item in enumerate(listing.items) if item.name in job.earlier and i not in job.written)
        reports.append(PredictReport(written, skipped, already, writer.seconds, writer.world, writer.rank == 0))
    return reports[0] if isinstance(model, AdaptedModel) else reports


# ---------------------------------------------------------------------------------------------- evaluate
@dataclass
class EvalReport:
    metrics: dict[str, float]
    images: int
    steps: int
    guidance: float
    ensemble: int
    seconds_per_image: float
    skipped: dict[str, str] = field(default_factory=dict)
    processes: int = 1
    is_global_zero: bool = True

    def table(self) -> str:
        rows = [f"| {name} | {value:.4f} |" for name, value in self.metrics.items()]
        settings = (f"{self.images} images, {self.steps} step(s), guidance {self.guidance}, ensemble {self.ensemble}, "
                    f"{self.seconds_per_image:.3f} s per image")
        return "\n".join(["| metric | value |", "| --- | --- |", *rows, "", settings])


def thumbnail(picture: np.ndarray, cell: int) -> np.ndarray:
    """A picture as a `cell` x `cell` grid tile (nearest resampling, so masks stay crisp), float in [0, 1]."""
    return np.asarray(to_pil(picture).resize((cell, cell), Image.Resampling.NEAREST), np.float32) / 255.0


class _MetricWriter(BatchWriter):
    """Scores each batch with the codec's torchmetrics (synced across ranks at the end) and keeps the grid's
    first rows as small tiles; never holds the samples themselves."""

    def __init__(self, model: AdaptedModel, metrics: list[str] | None, ids: list[str], grid: int, total: int,
                 progress: bool, uncertain: bool = False) -> None:
        super().__init__(total, progress, "evaluate")
        self.model, self.ids, self.grid = model, ids, grid
        self.collection = build_codec_metrics(model.codec, metrics)  # not a module child: it stays on the CPU
        self.error_auroc = ErrorAUROC() if uncertain else None
        self.rows: dict[int, tuple[np.ndarray, ...]] = {}
        self.skipped: dict[int, str] = {}
        self.scored: list[int] = []
        self.values: dict[str, float] = {}

    def consume(self, prediction: Predicted) -> None:
        codec = self.model.codec
        for item in prediction.batch:
            if item.problem:
                self.skipped[item.index] = item.problem
                continue
            image = codec.combine([m.image for m in prediction.members[0][item.index]])
            self.collection.update(codec.decode(image), item.target)
            self.scored.append(item.index)
            pictures = [item.image, image, codec.encode(item.target)]
            if self.error_auroc is not None:
                uncertainty = prediction.uncertainty[0][item.index]
                self.error_auroc.update(uncertainty, wrong_pixels(codec, image, item.target))
                pictures.append(heat(uncertainty))
            if item.index < self.grid:
                self.rows[item.index] = tuple(thumbnail(p, 128) for p in pictures)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for metric in self.collection.values():
            metric.process_group = self.group  # the CPU group; None (one process) syncs nothing
        self.values = {name: float(value) for name, value in self.collection.compute().items()}
        if self.error_auroc is not None:
            self.error_auroc.process_group = self.group
            self.values["error_auroc"] = float(self.error_auroc.compute())
        gathered = self.exchange((self.rows, self.skipped, self.scored))
        self.rows = {index: row for rows, _, _ in gathered for index, row in rows.items()}
        self.skipped = {index: reason for _, part, _ in gathered for index, reason in part.items()}
        self.scored = sorted(index for _, _, scored in gathered for index in scored)


def _check_set(source: DataSource, ids: list[str]) -> None:
    """The codec's whole-set check (every mask empty, depth that looks like masks) on the first pairs that
    load: a wrong codec is refused before the run rather than scored for hours."""
    targets: list[Any] = []
    notes: dict[str, list[str]] = {}
    for id in ids:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TargetNote)
            try:
                targets.append(source.load(id).target)
            except (DataError, CodecError, FileError):
                continue  # the run skips and lists it
        for warning in caught:
            if issubclass(warning.category, TargetNote):
                notes.setdefault(str(warning.message), []).append(id)
        if len(targets) == SET_CHECK_PAIRS:
            break
    for note, noted in notes.items():  # how ambiguous-looking targets are read, said once
        print(f"note: {note} (pairs {', '.join(noted)} of the first {len(targets)})", file=sys.stderr)
    whole = source.codec.check_set(targets)
    if whole:
        raise DataError(f"{source_name(source)}: {whole} (checked on its first {len(targets)} pairs)")


def evaluate(model: AdaptedModel, samples: Sequence[Sample] | DataSource, out: str | Path | None = None,
             metrics: list[str] | None = None, steps: int | None = None, guidance: float | None = None,
             ensemble: int | None = None, seed: int | None = None, grid: int = 8,
             progress: bool = True, split: str = "", *, ids: Sequence[str] | None = None, workers: int = 0,
             batch_size: int | None = None, where: Placement | None = None,
             uncertainty: str | None = None) -> EvalReport:
    """Predict, decode and score with torchmetrics every pair of `samples` (a list of samples, or a data source
    with the `ids` to evaluate, default all, loaded as they are needed); write metrics.json, report.md,
    grid.png to `out` (rank 0). Pairs that cannot be loaded are skipped and listed; `where` says on which
    devices and machines (metrics are synced across ranks).

    `split` names what was evaluated (`test`, or a folder's name): it is recorded, and `adaptkit push` puts
    recorded evaluations into the model card. With an `uncertainty` estimator (`adaptkit.uncertainty`), the
    grid shows each map and `error_auroc` says how well the maps rank the wrong pixels.
    """
    chosen = model.sampling(steps=steps, guidance=guidance, ensemble=ensemble, seed=seed, batch_size=batch_size,
                            uncertainty=uncertainty)
    in_memory = not hasattr(samples, "load")
    ids = [s.id for s in samples] if in_memory else list(samples.ids() if ids is None else ids)
    build_codec_metrics(model.codec, metrics)  # an unknown metric name fails here, before any prediction
    if not in_memory:
        require_known(samples, ids)
        _check_set(samples, ids)
    if out is not None:
        out = writable_folder(out)
    batches = plan_batches(len(ids), chosen["batch_size"])
    writer = _MetricWriter(model, metrics, ids, grid, len(ids), progress, uncertain=uncertainty is not None)
    if ids:
        read = _ReadSample(samples, ids)
        module = PredictModule([model], [chosen], read, batches, list(range(len(batches))), workers)
        run_prediction(module, writer, where or Placement(devices=1))
    else:
        writer.values = {name: float(value) for name, value in writer.collection.compute().items()}
    skipped = {ids[i]: reason for i, reason in sorted(writer.skipped.items())}
    scored = [ids[i] for i in writer.scored]
    report = EvalReport(writer.values, len(scored), chosen["steps"], chosen["guidance"], chosen["ensemble"],
                        writer.seconds / max(len(scored), 1), skipped, writer.world, writer.rank == 0)
    if out is not None and writer.rank == 0:
        record = {"metrics": report.metrics, "split": split, "images": report.images, "steps": report.steps,
                  "guidance": report.guidance, "ensemble": report.ensemble, "uncertainty": uncertainty,
                  "seconds_per_image": report.seconds_per_image, "ids": scored, "skipped": skipped}
        write_atomic(out / "metrics.json", json.dumps(record, indent=2) + "\n")
        write_atomic(out / "report.md", f"# Evaluation: {model.prompt}\n\n{report.table()}\n")
        save_grid(out / "grid.png", [writer.rows[i] for i in sorted(writer.rows)],
                  titles=("input", "prediction", "target", f"uncertainty ({uncertainty})"))
    return report


def save_grid(path: Path, rows: list[tuple[np.ndarray, ...]], cell: int = 128,
              titles: Sequence[str] = ("input", "prediction", "target")) -> None:
    """Rows of pictures side by side under titled columns, each resized to `cell` px high (written atomically)."""
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
            canvas.paste(to_pil(thumbnail(picture, cell)), (c * (cell + 2), header + r * (cell + 2)))
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    canvas.save(temporary)
    os.replace(temporary, path)

