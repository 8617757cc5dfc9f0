"""Few-shot data: labelled pairs from a folder, a `datasets` dataset, a COCO file or the synthetic world.

With ~50 labelled images every pair matters, and a data mistake found an hour into training is expensive,
so this layer fails early and completely:

* a source *lists* its pairs without decoding pixels (`ids`), so the splits are drawn and their sizes
  checked in moments (`load_splits`), before any model loads;
* pairing problems (images without targets, targets without images, an empty folder) come as ONE
  `DataError` listing every offending file, and `check_all` loads every chosen pair to report all
  unreadable or mis-sized targets at once, not one per attempt;
* targets are parsed by the task's codec with the same rules whatever the source, so a mask loads alike
  from a PNG, a `datasets` column, a COCO polygon or a synthetic scene.
"""

from __future__ import annotations

import difflib
import json
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from adaptkit import synth
from adaptkit.codecs import Codec, CodecError, Instances, Keypoints, TargetNote
from adaptkit.errors import AdaptkitError, FileError
from adaptkit.images import IMAGE_SUFFIXES, to_rgb_array
from adaptkit.prompts import MAX_POINTS
from adaptkit.recipe import DataSection

_SHOWN = 10  # offending files named per problem; the rest are counted


class DataError(AdaptkitError, ValueError):
    """Labelled data that cannot be used as the recipe asks; the message names every offending file."""


@dataclass
class Sample:
    """One labelled pair, as every source returns it."""

    id: str  # stable across runs: file stem, dataset row index, COCO image id or synth index
    image: np.ndarray  # float32 (H, W, 3) in [0, 1]
    target: Any  # the codec's target type
    points: list[tuple[float, float]] | None = None  # (x, y) pixel point prompts


class DataSource(Protocol):
    """One kind of `data.source`: a cheap listing of pair ids and a loader for one pair."""

    codec: Codec

    def ids(self) -> list[str]: ...

    def load(self, id: str) -> Sample: ...


def _listing(what: str, names: Sequence[str]) -> str:
    """'3 images without a target: a.png, b.png, c.png', naming at most `_SHOWN` and counting the rest."""
    more = f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"{len(names)} {what}: {', '.join(names[:_SHOWN])}{more}"


def _read_image(path: Path) -> np.ndarray:
    try:
        return to_rgb_array(path)
    except FileError as error:
        raise DataError(f"image {error}") from error
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read image {path}: {error}") from error


def _checked(codec: Codec, target: Any, where: str) -> Any:
    """`target` after the codec's validation, its CodecError turned into a DataError naming the pair."""
    try:
        codec.validate(target)
    except CodecError as error:
        raise DataError(f"{where}: {error}") from error
    return target


def _as_points(points: Any, where: str, image_size: tuple[int, int]) -> list[tuple[float, float]]:
    """(x, y) pixel point prompts checked against the image (H, W) they prompt: at most `MAX_POINTS`, each on it."""
    try:
        if not isinstance(points, list | tuple):
            raise TypeError("not a list")
        parsed = [(float(x), float(y)) for x, y in points]
    except (TypeError, ValueError) as error:
        raise DataError(f"{where}: point prompts must be [[x, y], ...], got {points!r}") from error
    if len(parsed) > MAX_POINTS:
        raise DataError(f"{where}: {len(parsed)} point prompts, but at most {MAX_POINTS} per image are allowed")
    height, width = image_size
    outside = [(x, y) for x, y in parsed if not (0 <= x < width and 0 <= y < height)]  # NaN is outside too
    if outside:
        raise DataError(f"{where}: point(s) {', '.join(f'({x:g}, {y:g})' for x, y in outside[:3])} lie outside the "
                        f"{width} x {height} image (points are (x, y) pixels, 0 <= x < {width}, 0 <= y < {height})")
    return parsed


# ---------------------------------------------------------------------------------------------- folder
def _by_stem(folder: Path, suffixes: Sequence[str] | None = None) -> tuple[dict[str, Path], list[str]]:
    """The files of `folder` by stem (hidden files skipped), and the stems held by several files."""
    files: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and (suffixes is None or path.suffix.lower() in suffixes):
            files.setdefault(path.stem, []).append(path)
    clashes = [f"{stem} ({', '.join(p.name for p in paths)})" for stem, paths in files.items() if len(paths) > 1]
    return {stem: paths[0] for stem, paths in files.items()}, clashes


class FolderSource:
    """`root/images/` paired by file stem with `root/masks/` (any suffix the codec reads: .png, .tif, .npy,
    .json...), plus optional `root/prompts/{stem}.json` point prompts: the layout `synth.write_dataset` writes.
    """

    def __init__(self, root: str | Path, codec: Codec, images: str = "images", targets: str = "masks") -> None:
        self.root, self.codec = Path(root).expanduser(), codec
        image_dir, target_dir = self.root / images, self.root / targets
        absent = [f"{name}/" for name, folder in ((images, image_dir), (targets, target_dir)) if not folder.is_dir()]
        if absent:
            raise DataError(f"{self.root} has no {' or '.join(absent)}: a folder source holds {images}/ and "
                            f"{targets}/ with matching file stems (e.g. {images}/a.png and {targets}/a.png)")
        self._images, image_clashes = _by_stem(image_dir, IMAGE_SUFFIXES)
        self._targets, target_clashes = _by_stem(target_dir)
        if not self._images and not self._targets:
            raise DataError(f"{self.root} holds no pairs: {image_dir} and {target_dir} are empty")
        unpaired = sorted(self._images.keys() - self._targets.keys())
        orphans = sorted(self._targets.keys() - self._images.keys())
        problems = [
            _listing(what, names)
            for what, names in (
                (f"images without a target in {target_dir}", [self._images[s].name for s in unpaired]),
                (f"targets without an image ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}",
                 [self._targets[s].name for s in orphans]),
                (f"stems with several images in {image_dir}", image_clashes),
                (f"stems with several targets in {target_dir}", target_clashes),
            )
            if names
        ]
        if problems:
            raise DataError(f"{self.root}: images and targets do not pair up by file stem:\n  " + "\n  ".join(problems))
        self._prompts = self.root / "prompts"

    def ids(self) -> list[str]:
        return sorted(self._images)

    def load(self, id: str) -> Sample:
        image_path = self._images[id]
        image = _read_image(image_path)
        try:
            target = self.codec.load_target(self._targets[id], image_size=image.shape[:2])
        except CodecError as error:  # its size message names the target and both sizes; add the image
            raise DataError(f"pair {id!r} (image {image_path}): {error}") from error
        return Sample(id, image, target, self._read_prompt(self._prompts / f"{id}.json", image.shape[:2]))

    @staticmethod
    def _read_prompt(path: Path, image_size: tuple[int, int]) -> list[tuple[float, float]] | None:
        if not path.is_file():
            return None
        try:
            points = json.loads(path.read_text())["points"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"{path}: expected {{\"points\": [[x, y], ...]}} ({error!r})") from error
        return _as_points(points, str(path), image_size)


# -------------------------------------------------------------------------------------- hf (datasets)
def _open_dataset(path: str, split: str) -> Any:
    """A `datasets.Dataset` from a `save_to_disk` folder, an `imagefolder` folder or a Hub id."""
    import datasets  # imported here: it takes seconds and only this source needs it

    folder = Path(path).expanduser()
    try:
        if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(folder))
        else:  # a local folder of images is detected as `imagefolder`
            return datasets.load_dataset(str(folder) if folder.is_dir() else path, split=split)
    except Exception as error:  # datasets raises many types (not found, no network, bad split...)
        raise DataError(f"cannot open {path!r} (split {split!r}) as a datasets dataset: {error}") from error
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{path} has no split {split!r}; its splits are {', '.join(loaded)} (set data.split)")
        loaded = loaded[split]
    return loaded


class HFSource:
    """Rows of a `datasets` dataset (Hub id, `save_to_disk` folder or `imagefolder` folder); ids are row indices.

    Images and targets may be PIL images or arrays; an optional `points` column gives point prompts.
    """

    def __init__(self, path: str, codec: Codec, split: str = "train", image_column: str = "image",
                 target_column: str = "mask") -> None:
        self.path, self.codec = path, codec
        self.image_column, self.target_column = image_column, target_column
        self.dataset = _open_dataset(path, split)
        columns = self.dataset.column_names
        missing = [name for name in (image_column, target_column) if name not in columns]
        if missing:
            raise DataError(f"{path} has no column {' or '.join(map(repr, missing))}; its columns are "
                            f"{', '.join(columns)} (set data.image_column / data.target_column)")

    def ids(self) -> list[str]:
        return [str(i) for i in range(len(self.dataset))]

    def load(self, id: str) -> Sample:
        row = self.dataset[int(id)]
        where = f"{self.path}[{id}]"
        image = row[self.image_column]
        image = to_rgb_array(image if isinstance(image, Image.Image) else np.asarray(image))
        try:  # the codec's own rules for file contents: palettes, alpha, 16-bit ids, keypoint dicts
            target = self.codec.parse_target(row[self.target_column], image.shape[:2], f"column {self.target_column!r}")
        except CodecError as error:
            raise DataError(f"{self.path} row {id}: {error}") from error
        points = row.get("points")
        return Sample(id, image, target,
                      None if points is None else _as_points(points, f"{where}.points", image.shape[:2]))


# ------------------------------------------------------------------------------------------------ coco
def rasterise_polygon(coords: Sequence[float], height: int, width: int) -> np.ndarray:
    """bool (H, W): the pixels whose centre lies inside the polygon [x1, y1, x2, y2, ...] (even-odd rule).

    This is COCO's convention: pixel (row i, column j) covers [j, j + 1) x [i, i + 1), so a box from x = 2 to
    x = 10 covers 8 columns, as its area says. PIL's `ImageDraw.polygon` fills both edges (9 columns) and would
    grow every mask by a ring of pixels, a real error on the small masks few-shot tasks have.
    """
    vertices = np.asarray(coords, np.float64).reshape(-1, 2)
    row_centres, column_centres = np.arange(height) + 0.5, np.arange(width) + 0.5
    inside = np.zeros((height, width), bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        rows = (y0 <= row_centres) != (y1 <= row_centres)  # half-open, so a shared vertex counts once
        if rows.any():  # horizontal edges cross no row centre
            crossing = x0 + (row_centres[rows] - y0) * (x1 - x0) / (y1 - y0)
            inside[rows] ^= column_centres < crossing[:, None]
    return inside


def annotation_mask(segmentation: list[list[float]] | dict[str, Any], height: int, width: int) -> np.ndarray:
    """bool (H, W) of a COCO segmentation: polygons (their union) or RLE (`counts` a list or a compressed string)."""
    if isinstance(segmentation, list):
        mask = np.zeros((height, width), bool)
        for polygon in segmentation:
            mask |= rasterise_polygon(polygon, height, width)
        return mask
    if list(segmentation["size"]) != [height, width]:
        raise ValueError(f"an RLE of size {segmentation['size']} on a {height}x{width} image")
    counts = segmentation["counts"]
    if isinstance(counts, str | bytes):  # compressed: pycocotools' own string format
        rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        if sum(counts) != height * width:
            raise ValueError(f"RLE counts cover {sum(counts)} pixels of a {height}x{width} image")
        rle = mask_utils.frPyObjects(segmentation, height, width)
    mask = mask_utils.decode(rle).astype(bool)  # a ValueError for counts beyond the image
    # decode leaves the pixels after counts that stop short undefined: a string that does not encode back is such
    compressed = isinstance(counts, str | bytes)
    if compressed and mask_utils.encode(np.asfortranarray(mask, np.uint8))["counts"] != rle["counts"]:
        raise ValueError(f"RLE counts do not cover the {height}x{width} image")
    return mask


class CocoSource:
    """Images of a COCO json with targets drawn from its annotations; ids are COCO image ids.

    The target follows the codec: `binary_mask` the union of the chosen categories' masks, `semantic` a label
    map (0 background, then the chosen categories in increasing category id: see `classes`), `instances` one
    mask per non-crowd annotation (labels are those class indices), `keypoints` the first annotated person.
    `categories` (names or ids) chooses categories; by default all of them.
    """

    CODECS = ("binary_mask", "semantic", "instances", "keypoints")

    def __init__(self, json_path: str | Path, codec: Codec, images: str = "images",
                 categories: Sequence[str | int] | None = None) -> None:
        if codec.name not in self.CODECS:
            raise DataError(f"a COCO file gives {', '.join(self.CODECS)} targets, not {codec.name}")
        self.json_path, self.codec = Path(json_path).expanduser(), codec
        try:
            coco = json.loads(self.json_path.read_text())
            self._images = {str(info["id"]): info for info in coco["images"]}
            chosen = sorted(coco.get("categories", []), key=lambda category: category["id"])
            annotations = [(str(a["image_id"]), a) for a in coco.get("annotations", [])]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"{self.json_path} is not a readable COCO json ({error!r})") from error
        if not self._images:
            raise DataError(f"{self.json_path} lists no images")
        if categories:
            known = {key: c for c in chosen for key in (c["id"], c["name"])}
            unknown = [str(c) for c in categories if c not in known]
            if unknown:
                raise DataError(f"{self.json_path} has no categories {', '.join(unknown)}; it has "
                                f"{', '.join(c['name'] for c in chosen)}")
            chosen = sorted({known[c]["id"]: known[c] for c in categories}.values(), key=lambda c: c["id"])
        self.class_of = {category["id"]: index for index, category in enumerate(chosen, start=1)}
        self.classes = ["background", *(category["name"] for category in chosen)]
        if codec.name == "semantic" and codec.num_classes < len(self.classes):
            raise DataError(f"{self.json_path} gives {len(self.classes)} classes (background + {len(chosen)} "
                            f"categories) but the semantic codec has num_classes {codec.num_classes}; set "
                            f"task.codec_args.num_classes: {len(self.classes)}")
        self._annotations: dict[str, list[dict[str, Any]]] = {key: [] for key in self._images}
        keypoints = codec.name == "keypoints"  # people, whatever categories were chosen
        for key, annotation in annotations:
            if key in self._annotations and (keypoints or annotation.get("category_id") in self.class_of):
                self._annotations[key].append(annotation)
        beside = self.json_path.parent / images
        self.folder = beside if beside.is_dir() else self.json_path.parent
        missing = [info["file_name"] for info in self._images.values()
                   if not (self.folder / info["file_name"]).is_file()]
        if missing:
            raise DataError(_listing(f"images listed in {self.json_path} are missing from {self.folder}", missing))

    def ids(self) -> list[str]:
        return sorted(self._images)

    def load(self, id: str) -> Sample:
        info = self._images[id]
        path, size = self.folder / info["file_name"], (int(info["height"]), int(info["width"]))
        image = _read_image(path)
        if image.shape[:2] != size:
            raise DataError(f"image {path} is {image.shape[0]}x{image.shape[1]} (HxW) but {self.json_path} says "
                            f"{size[0]}x{size[1]}")
        where = f"{self.json_path} image {id} ({info['file_name']})"
        try:
            target = self._target(self._annotations[id], size)
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"{where}: bad annotation ({error!r})") from error
        return Sample(id, image, _checked(self.codec, target, where))

    def _target(self, annotations: list[dict[str, Any]], size: tuple[int, int]) -> Any:
        if self.codec.name == "keypoints":
            person = next((a for a in annotations if a.get("num_keypoints", 0) > 0), None)
            if person is None:  # nobody annotated: every joint absent
                count = len(self.codec.names)
                return Keypoints(np.zeros((count, 2)), np.zeros(count, bool), None, size)
            rows = np.asarray(person["keypoints"], np.float32).reshape(-1, 3)
            return Keypoints(rows[:, :2], rows[:, 2] >= 1, None, size)
        if self.codec.name == "instances":
            annotations = [a for a in annotations if not a.get("iscrowd")]  # a crowd region is no single instance
        masks = np.array([annotation_mask(a["segmentation"], *size) for a in annotations], bool).reshape(-1, *size)
        labels = np.array([self.class_of[a["category_id"]] for a in annotations], np.int64)
        if self.codec.name == "binary_mask":
            return masks.any(0)
        if self.codec.name == "instances":
            return Instances(masks, labels=labels)
        label_map = np.zeros(size, np.int64)
        for index in np.argsort(-masks.sum((1, 2)), kind="stable"):  # largest first: small objects stay visible
            label_map[masks[index]] = labels[index]
        return label_map


# ----------------------------------------------------------------------------------------------- synth
class SynthSource:
    """`count` scenes of the synthetic world for one task; pair `i` is the one `synth.write_dataset` writes as
    stem `i` with the same seed and resolution, so a rendered and a written dataset agree."""

    def __init__(self, task: str, codec: Codec, count: int, seed: int = 0, resolution: int = 64) -> None:
        if task not in synth.TASKS:
            close = difflib.get_close_matches(task, synth.TASKS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise DataError(f"unknown synth task {task!r}; {hint}tasks: {', '.join(synth.TASKS)}")
        self.task = synth.TASKS[task]
        if self.task.codec != codec.name:
            raise DataError(f"synth task {task!r} needs the {self.task.codec} codec, but task.codec is {codec.name}")
        self.codec, self.count, self.seed, self.resolution = codec, count, seed, resolution

    def ids(self) -> list[str]:
        return [str(i) for i in range(self.count)]

    def load(self, id: str) -> Sample:
        rng = np.random.default_rng([self.seed, int(id)])  # write_dataset's derivation of item i
        scene = self.task.render(int(rng.integers(2**62)), self.resolution)
        target, points = self.task.target(scene, rng)
        where = f"synth task {self.task.name} item {id}"
        return Sample(id, scene.image, _checked(self.codec, target, where),
                      None if points is None else _as_points(points, where, scene.image.shape[:2]))


# ------------------------------------------------------------------------------------ opening, splits
def open_source(data: DataSection, codec: Codec) -> DataSource:
    """The source a recipe's `data` section names; listing it checks the pairing, not the pixels."""
    if data.source == "folder":
        return FolderSource(data.path, codec, data.images, data.targets)
    if data.source == "hf":
        return HFSource(data.path, codec, data.split, data.image_column, data.target_column)
    if data.source == "coco":
        # `data.categories` is not a recipe key yet; codec_args cannot carry it (codecs reject unknown args).
        return CocoSource(data.path, codec, data.images, getattr(data, "categories", None))
    if data.source == "synth":
        count = data.train_shots + data.val_shots + max(data.test_shots, 0)  # the world is infinite
        return SynthSource(data.synth_task, codec, count, data.seed, data.synth_resolution)
    raise DataError(f"unknown data.source {data.source!r}: expected folder, hf, coco or synth")


@dataclass
class Splits:
    """Pair ids per split, in selection order; `dataclasses.asdict(splits)` is what an adapter records."""

    train: list[str]
    val: list[str]
    test: list[str]


def select_shots(ids: Sequence[str], data: DataSection) -> Splits:
    """Draw the splits: a permutation of the sorted ids seeded by `data.seed`, cut into train, then val, then
    test (`test_shots: -1` takes all the rest).

    The same ids and seed always give the same splits, whatever order the listing came in; and since train is
    a prefix of a permutation that does not depend on the shot counts, the 5-, 10- and 50-shot training sets
    of one dataset and seed are nested. (Val and test follow train, so they move when train_shots changes.)
    """
    order = sorted(ids)
    shuffled = [order[i] for i in np.random.default_rng(data.seed).permutation(len(order))]
    needed = data.train_shots + data.val_shots + max(data.test_shots, 0)
    if len(order) < needed:
        asked = [f"train_shots {data.train_shots}", f"val_shots {data.val_shots}"]
        asked += [f"test_shots {data.test_shots}"] if data.test_shots > 0 else []
        where = data.path or f"synth task {data.synth_task!r}"
        raise DataError(f"{where} has {len(order)} pairs but {' + '.join(asked)} = {needed} were asked")
    val_start = data.train_shots
    test_start = val_start + data.val_shots
    test_end = len(order) if data.test_shots < 0 else test_start + data.test_shots
    return Splits(shuffled[:val_start], shuffled[val_start:test_start], shuffled[test_start:test_end])


def source_name(source: DataSource) -> str:
    """A source as a message names it: its folder, dataset or file."""
    return str(getattr(source, "root", None) or getattr(source, "path", None) or "the data")


def require_known(source: DataSource, ids: Iterable[str]) -> None:
    """Refuse ids the source does not list (an adapter's recorded samples, gone from its data) in one
    DataError naming them, before any is loaded: a missing pair is the user's to fix, not a pair to skip."""
    known = set(source.ids())
    if absent := [id for id in ids if id not in known]:
        raise DataError(_listing(f"pair id(s) asked for are not in {source_name(source)}", absent))


def check_all(source: DataSource, ids: Iterable[str]) -> list[Sample]:
    """Load every pair of `ids`: the samples, or ONE DataError reporting every unusable pair (unreadable,
    invalid, mis-sized) and what is wrong with the set as a whole (every mask empty, say), so a single run
    shows all the broken files instead of one per attempt. Training calls it on its splits before it loads
    any model, and keeps the samples it returns; `adaptkit check` calls it on every listed pair.

    How ambiguous-looking targets were read (a mask in an alpha channel, a lossy mask cut at 128) is printed
    once per kind, naming the files, so that nothing is read in a way the user did not see.
    """
    ids = list(ids)
    require_known(source, ids)
    samples, problems, notes = [], [], {}
    for id in ids:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TargetNote)
            try:
                samples.append(source.load(id))
            except (DataError, CodecError, FileError) as error:
                problems.append(str(error))
        for warning in caught:
            if issubclass(warning.category, TargetNote):
                notes.setdefault(str(warning.message), []).append(id)
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if problems:
        more = [f"... and {len(problems) - _SHOWN} more"] if len(problems) > _SHOWN else []
        raise DataError(f"{len(problems)} of {len(ids)} chosen pairs cannot be used:\n  "
                        + "\n  ".join(problems[:_SHOWN] + more))
    whole = source.codec.check_set([sample.target for sample in samples])
    if whole:
        raise DataError(f"{source_name(source)}: {whole}")
    for note, noted in notes.items():
        print(f"note: {_listing(f'of {len(ids)} targets: {note}', noted)}", file=sys.stderr)
    return samples


def load_splits(data: DataSection, codec: Codec) -> tuple[DataSource, Splits]:
    """Open the source and draw the splits, checking the pairing and the split sizes without decoding a pixel,
    so these mistakes surface before anything slow; `check_all` then loads the chosen pairs."""
    source = open_source(data, codec)
    return source, select_shots(source.ids(), data)


def hflip_sample(sample: Sample, codec: Codec) -> Sample:
    """The horizontally mirrored pair (joint augmentation): the image flipped, the target through `codec.hflip`
    (which negates normals' x and swaps left/right keypoints), point prompts mirrored to x -> W - 1 - x (pixel
    indices, as the codecs' keypoints)."""
    width = sample.image.shape[1]
    points = None if sample.points is None else [(width - 1 - x, y) for x, y in sample.points]
    return Sample(sample.id, sample.image[:, ::-1].copy(), codec.hflip(sample.target), points)
