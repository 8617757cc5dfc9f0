"""The few-shot data layer: pairing checks, target parsing per source, seeded splits, joint flips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptkit import synth
from adaptkit.codecs import Codec, Instances, Keypoints, build_codec
from adaptkit.data import (
    CocoSource,
    DataError,
    FolderSource,
    HFSource,
    Sample,
    SynthSource,
    annotation_mask,
    check_all,
    hflip_sample,
    load_splits,
    open_source,
    rasterise_polygon,
    select_shots,
)
from adaptkit.recipe import DataSection

H, W = 16, 20
MASK = np.zeros((H, W), bool)
MASK[4:10, 3:12] = True


@pytest.fixture
def mask_codec() -> Codec:
    return build_codec("binary_mask")


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _palette(mask: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    """A 'P' image of `mask`: index 0 black, index 1 `colour`."""
    image = Image.frombytes("P", mask.shape[::-1], mask.astype(np.uint8).tobytes())
    image.putpalette([0, 0, 0, *colour])
    return image


def _rgb(seed: int = 0, size: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _folder(root: Path, stems: list[str], size: tuple[int, int] = (H, W)) -> Path:
    """A folder source of RGB images and 0/255 masks with the given stems."""
    for i, stem in enumerate(stems):
        _save(root / "images" / f"{stem}.png", _rgb(i, size))
        _save(root / "masks" / f"{stem}.png", (np.resize(MASK, size) * 255).astype(np.uint8))
    return root


# ---------------------------------------------------------------------------------------------- folder
def test_folder_pairing_error_lists_missing_and_orphan_targets(tmp_path: Path, mask_codec: Codec) -> None:
    _folder(tmp_path, ["a", "b", "c"])
    (tmp_path / "masks" / "b.png").unlink()
    _save(tmp_path / "masks" / "zz.png", MASK.astype(np.uint8) * 255)
    with pytest.raises(DataError) as error:
        FolderSource(tmp_path, mask_codec)
    message = str(error.value)
    assert "1 images without a target" in message and "b.png" in message
    assert "1 targets without an image" in message and "zz.png" in message
    assert "a.png" not in message


def test_folder_pairing_error_truncates_long_lists(tmp_path: Path, mask_codec: Codec) -> None:
    _folder(tmp_path, ["a"])
    for i in range(13):
        (tmp_path / "masks" / f"orphan{i:02d}.npy").write_bytes(b"")
    listed = r"13 targets without an image .*: orphan00\.npy, .*orphan09\.npy \.\.\. and 3 more"
    with pytest.raises(DataError, match=listed):
        FolderSource(tmp_path, mask_codec)


def test_folder_empty_or_missing_subfolders(tmp_path: Path, mask_codec: Codec) -> None:
    with pytest.raises(DataError, match="has no images/ or masks/"):
        FolderSource(tmp_path, mask_codec)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / ".DS_Store").write_bytes(b"")
    with pytest.raises(DataError, match="holds no pairs"):
        FolderSource(tmp_path, mask_codec)


def test_folder_ambiguous_stems_are_reported(tmp_path: Path, mask_codec: Codec) -> None:
    _folder(tmp_path, ["a"])
    _save(tmp_path / "images" / "a.jpg", _rgb())
    with pytest.raises(DataError, match=r"stems with several images.*a \(a.jpg, a.png\)"):
        FolderSource(tmp_path, mask_codec)


def test_folder_size_mismatch_names_both_files_and_sizes(tmp_path: Path, mask_codec: Codec) -> None:
    _folder(tmp_path, ["a"])
    _save(tmp_path / "masks" / "a.png", np.zeros((H, W - 2), np.uint8))
    with pytest.raises(DataError) as error:
        FolderSource(tmp_path, mask_codec).load("a")
    message = str(error.value)
    assert str(tmp_path / "images" / "a.png") in message and str(tmp_path / "masks" / "a.png") in message
    assert f"{H}x{W - 2}" in message and f"{H}x{W}" in message


def test_check_all_returns_samples_or_reports_every_bad_pair(tmp_path: Path, mask_codec: Codec) -> None:
    source = FolderSource(_folder(tmp_path, ["a", "b", "c", "d"]), mask_codec)
    _save(tmp_path / "masks" / "b.png", np.zeros((H - 1, W), np.uint8))
    _save(tmp_path / "masks" / "d.png", np.full((H, W), 7, np.uint8) * np.arange(W, dtype=np.uint8))  # a label map
    with pytest.raises(DataError) as error:
        check_all(source, source.ids())
    message = str(error.value)
    assert message.startswith("2 of 4 chosen pairs cannot be used")
    assert "masks/b.png" in message and "masks/d.png" in message and "masks/a.png" not in message
    assert [sample.id for sample in check_all(source, ["c", "a"])] == ["c", "a"]


def test_folder_reads_16bit_grey_images_and_every_mask_convention(tmp_path: Path, mask_codec: Codec) -> None:
    grey16 = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 200).astype(np.uint16)
    _save(tmp_path / "images" / "deep.png", grey16)
    _save(tmp_path / "images" / "grey.png", np.full((H, W), 51, np.uint8))
    _save(tmp_path / "images" / "pal.tif", _rgb())
    _save(tmp_path / "masks" / "deep.png", MASK.astype(np.uint8))  # 0/1
    _save(tmp_path / "masks" / "grey.png", MASK.astype(np.uint8) * 255)  # 0/255
    _palette(MASK, (255, 0, 0)).save(tmp_path / "masks" / "pal.png")
    np.save(tmp_path / "masks" / "npy_only.npy", MASK)
    _save(tmp_path / "images" / "npy_only.bmp", _rgb())
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "grey.json").write_text(json.dumps({"points": [[3, 4], [5.5, 6]], "labels": [1, 1]}))

    source = FolderSource(tmp_path, mask_codec)
    assert source.ids() == ["deep", "grey", "npy_only", "pal"]
    samples = {stem: source.load(stem) for stem in source.ids()}
    for sample in samples.values():
        assert sample.image.dtype == np.float32 and sample.image.shape == (H, W, 3)
        np.testing.assert_array_equal(sample.target, MASK)
    deep = samples["deep"].image
    np.testing.assert_allclose(deep[..., 0], grey16 / 65535, atol=1e-6)  # 16-bit precision kept
    assert (deep[..., 0] == deep[..., 2]).all()
    np.testing.assert_allclose(samples["grey"].image, 0.2, atol=1e-6)
    assert samples["grey"].points == [(3.0, 4.0), (5.5, 6.0)] and samples["deep"].points is None


def test_folder_reads_written_synth_dataset_with_prompts(tmp_path: Path, mask_codec: Codec) -> None:
    stems = synth.write_dataset(tmp_path, 3, seed=4, task="point_segmentation", resolution=24)
    source = FolderSource(tmp_path, mask_codec)
    assert source.ids() == stems
    for stem in stems:
        image, target = synth.read_pair(tmp_path, stem, "point_segmentation")
        sample = source.load(stem)
        np.testing.assert_array_equal(sample.target, target)
        np.testing.assert_allclose(sample.image, image)
        assert sample.points and all(target[int(y), int(x)] for x, y in sample.points)


# -------------------------------------------------------------------------------------------------- hf
def _hf_dataset(path: Path, targets: list[Image.Image]) -> Path:
    import datasets

    rows = {
        "photo": [Image.fromarray(_rgb(i)) for i in range(len(targets))],
        "label": targets,
        "points": [[[1.0, 2.0]]] * len(targets),
    }
    features = datasets.Features({
        "photo": datasets.Image(),
        "label": datasets.Image(),
        "points": datasets.List(datasets.List(datasets.Value("float32"))),
    })
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(path))
    return path


def test_hf_source_from_save_to_disk_with_custom_columns(tmp_path: Path, mask_codec: Codec) -> None:
    targets = [Image.fromarray(MASK.astype(np.uint8)), Image.fromarray(MASK.astype(np.uint8) * 255),
               _palette(MASK, (0, 200, 0))]
    path = _hf_dataset(tmp_path / "ds", targets)
    data = DataSection(source="hf", path=str(path), image_column="photo", target_column="label")
    source = open_source(data, mask_codec)
    assert isinstance(source, HFSource) and source.ids() == ["0", "1", "2"]
    for i in source.ids():
        sample = source.load(i)
        np.testing.assert_allclose(sample.image, _rgb(int(i)) / 255.0, atol=1e-6)
        np.testing.assert_array_equal(sample.target, MASK)
        assert sample.points == [(1.0, 2.0)]


def test_hf_source_errors_name_columns_and_sizes(tmp_path: Path, mask_codec: Codec) -> None:
    path = _hf_dataset(tmp_path / "ds", [Image.fromarray(np.zeros((H, W - 4), np.uint8))])
    with pytest.raises(DataError, match=r"no column 'mask'; its columns are photo, label, points"):
        HFSource(str(path), mask_codec, image_column="photo")
    source = HFSource(str(path), mask_codec, image_column="photo", target_column="label")
    with pytest.raises(DataError, match=rf"ds row 0: .*column 'label' is {H}x{W - 4} \(HxW\) but its image is {H}x{W}"):
        source.load("0")


# ------------------------------------------------------------------------------------------------ coco
def _coco(root: Path) -> Path:
    """Two images: img1 with a cat rectangle, a dog triangle and a person; img2 with a dog RLE mask."""
    (root / "images").mkdir(parents=True)
    _save(root / "images" / "one.png", _rgb(1))
    _save(root / "images" / "two.jpg", _rgb(2, (12, 10)))
    keypoints = [5, 6, 2, 0, 0, 0, 9, 3, 1]
    coco = {
        "images": [{"id": 7, "file_name": "one.png", "height": H, "width": W},
                   {"id": 9, "file_name": "two.jpg", "height": 12, "width": 10}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 17, "name": "cat"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 17, "segmentation": [[2, 3, 10, 3, 10, 8, 2, 8]], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 18, "segmentation": [[12, 2, 18, 2, 12, 14]], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 1, "segmentation": [[14, 10, 16, 10, 16, 12]], "iscrowd": 0,
             "keypoints": keypoints, "num_keypoints": 2},
            # column-major runs on a 12x10 image: 25 zeros, then 5 ones (rows 1..5 of column 2)
            {"id": 4, "image_id": 9, "category_id": 18, "segmentation": {"size": [12, 10], "counts": [25, 5, 90]},
             "iscrowd": 1},
        ],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(coco))
    return path


RECT = np.zeros((H, W), bool)
RECT[3:8, 2:10] = True  # x from 2 to 10, y from 3 to 8: 8 columns, 5 rows, area 40 like the polygon's


def test_polygon_rasterises_to_pixel_centres() -> None:
    np.testing.assert_array_equal(rasterise_polygon([2, 3, 10, 3, 10, 8, 2, 8], H, W), RECT)
    triangle = rasterise_polygon([0, 0, 8, 0, 0, 8], 8, 8)
    np.testing.assert_array_equal(triangle, np.add.outer(np.arange(8), np.arange(8)) < 7)  # centre x + y < 8
    both = annotation_mask([[2, 3, 10, 3, 10, 8, 2, 8], [12, 0, 14, 0, 14, 2, 12, 2]], H, W)  # a union
    assert both.sum() == 40 + 4 and both[:8, :12].sum() == 40
    # Self-intersecting: both lobes of a bow tie (diagonals y = x + 0.2 and y = 8.2 - x miss every centre).
    bow_tie = rasterise_polygon([0, 0.2, 8, 8.2, 8, 0.2, 0, 8.2], 8, 8)
    y, x = np.mgrid[:8, :8] + 0.5
    above, below = y > x + 0.2, y < 8.2 - x
    np.testing.assert_array_equal(bow_tie, (above & below) | (~above & ~below))


def test_rle_decoding_matches_pycocotools() -> None:
    from pycocotools import mask as mask_utils  # a dependency: this test must run, never skip
    truth = np.random.default_rng(0).random((13, 11)) > 0.6
    rle = mask_utils.encode(np.asfortranarray(truth.astype(np.uint8)))
    compressed = {"size": rle["size"], "counts": rle["counts"].decode()}
    np.testing.assert_array_equal(annotation_mask(compressed, 13, 11), truth)
    polygon = [1.5, 2.2, 14.1, 3.4, 11.8, 12.6, 3.2, 9.9]
    reference = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], H, W))).astype(bool)
    assert (rasterise_polygon(polygon, H, W) != reference).sum() <= 3  # edge pixels only


def test_coco_binary_semantic_and_instances(tmp_path: Path) -> None:
    path = _coco(tmp_path)
    source = CocoSource(path, build_codec("semantic", {"num_classes": 4}))
    assert source.ids() == ["7", "9"] and source.classes == ["background", "person", "cat", "dog"]
    label_map = source.load("7").target
    np.testing.assert_array_equal(label_map == 2, RECT)
    dog = rasterise_polygon([12, 2, 18, 2, 12, 14], H, W)
    assert ((label_map == 3) == (dog & ~rasterise_polygon([14, 10, 16, 10, 16, 12], H, W))).all()
    assert set(np.unique(label_map)) == {0, 1, 2, 3}
    rle = source.load("9").target
    assert np.argwhere(rle == 3).tolist() == [[r, 2] for r in range(1, 6)] and (rle != 3).sum() == 115

    binary = CocoSource(path, build_codec("binary_mask"), categories=["cat"]).load("7").target
    np.testing.assert_array_equal(binary, RECT)
    union = CocoSource(path, build_codec("binary_mask")).load("7").target
    assert union.sum() == (RECT | dog | rasterise_polygon([14, 10, 16, 10, 16, 12], H, W)).sum()

    instances = CocoSource(path, build_codec("instances"), categories=["dog", 17])
    first = instances.load("7").target
    assert isinstance(first, Instances) and first.labels.tolist() == [1, 2]  # cat = 1, dog = 2 (ids 17 < 18)
    np.testing.assert_array_equal(first.masks[0], RECT)
    assert len(instances.load("9").target) == 0  # the crowd region is no instance


def test_coco_keypoints_take_the_first_person(tmp_path: Path) -> None:
    codec = build_codec("keypoints", {"names": ["nose", "left_eye", "right_eye"], "skeleton": [[0, 1]]})
    source = CocoSource(_coco(tmp_path), codec)
    target = source.load("7").target
    assert isinstance(target, Keypoints) and target.image_size == (H, W)
    assert target.visible.tolist() == [True, False, True] and target.xy[2].tolist() == [9, 3]
    assert not source.load("9").target.visible.any()


def test_coco_errors(tmp_path: Path) -> None:
    path = _coco(tmp_path)
    with pytest.raises(DataError, match=r"num_classes 3; set task\.codec_args\.num_classes: 4"):
        CocoSource(path, build_codec("semantic", {"num_classes": 3}))
    with pytest.raises(DataError, match="no categories horse; it has person, cat, dog"):
        CocoSource(path, build_codec("binary_mask"), categories=["horse"])
    with pytest.raises(DataError, match="not depth"):
        CocoSource(path, build_codec("depth"))
    (tmp_path / "images" / "two.jpg").unlink()
    with pytest.raises(DataError, match=r"1 images listed in .*instances.json are missing from .*: two.jpg"):
        CocoSource(path, build_codec("binary_mask"))


# ----------------------------------------------------------------------------------------------- synth
@pytest.mark.parametrize("task", ["shadow", "cells", "lungs"])  # one per family a binary task is drawn from
def test_synth_source_is_deterministic_and_matches_write_dataset(tmp_path: Path, task: str) -> None:
    data = DataSection(source="synth", synth_task=task, synth_resolution=24, train_shots=2, val_shots=1, seed=3)
    codec = build_codec("binary_mask")
    source = open_source(data, codec)
    assert isinstance(source, SynthSource) and source.ids() == ["0", "1", "2"]
    again = open_source(data, codec)
    synth.write_dataset(tmp_path, 3, seed=3, task=task, resolution=24)
    for i in source.ids():
        sample = source.load(i)
        np.testing.assert_array_equal(sample.image, again.load(i).image)
        image, target = synth.read_pair(tmp_path, f"{int(i):05d}", task)
        np.testing.assert_array_equal(sample.target, target)
        np.testing.assert_allclose(sample.image, image, atol=1 / 255)
    with pytest.raises(DataError, match=r"needs the depth codec, but task\.codec is binary_mask"):
        SynthSource("depth", codec, 1)
    with pytest.raises(DataError, match="did you mean 'shadow'"):
        SynthSource("shadows", codec, 1)


# ------------------------------------------------------------------------------------------- selection
IDS = [f"{i:03d}" for i in range(40)]


def test_selection_is_seeded_disjoint_and_order_free() -> None:
    data = DataSection(path="data/x", train_shots=10, val_shots=5, test_shots=8, seed=1)
    splits = select_shots(IDS, data)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 5, 8)
    assert len({*splits.train, *splits.val, *splits.test}) == 23
    assert select_shots(list(reversed(IDS)), data) == splits
    assert select_shots(IDS, DataSection(path="data/x", train_shots=10, val_shots=5, seed=2)).train != splits.train
    everything = select_shots(IDS, DataSection(path="data/x", train_shots=10, val_shots=5, test_shots=-1, seed=1))
    assert everything.train == splits.train and len(everything.test) == 25
    assert sorted(everything.train + everything.val + everything.test) == IDS


def test_training_sets_are_nested_as_shots_grow() -> None:
    trains = [select_shots(IDS, DataSection(path="p", train_shots=k, val_shots=5, seed=7)).train for k in (5, 10, 25)]
    assert trains[1][:5] == trains[0] and trains[2][:10] == trains[1]


def test_too_few_pairs_names_the_numbers() -> None:
    data = DataSection(path="data/lungs", train_shots=50, val_shots=20)
    with pytest.raises(DataError, match=r"data/lungs has 30 pairs but train_shots 50 \+ val_shots 20 = 70 were asked"):
        select_shots([str(i) for i in range(30)], data)
    data = DataSection(path="data/lungs", train_shots=20, val_shots=5, test_shots=10)
    with pytest.raises(DataError, match=r"test_shots 10 = 35 were asked"):
        select_shots([str(i) for i in range(30)], data)


def test_load_splits_checks_pairing_and_counts_then_check_all_loads(tmp_path: Path, mask_codec: Codec) -> None:
    _folder(tmp_path, [f"p{i}" for i in range(6)])
    data = DataSection(path=str(tmp_path), train_shots=3, val_shots=2, seed=0)
    source, splits = load_splits(data, mask_codec)
    assert isinstance(source, FolderSource) and len(splits.train) == 3 and len(splits.val) == 2
    bad = splits.val[0]
    _save(tmp_path / "masks" / f"{bad}.png", np.zeros((4, 4), np.uint8))
    source, splits = load_splits(data, mask_codec)  # listing only: no pixel is decoded
    assert len(check_all(source, splits.train)) == 3
    with pytest.raises(DataError, match=rf"1 of 2 chosen pairs cannot be used:\n  pair '{bad}'"):
        check_all(source, splits.val)
    with pytest.raises(DataError, match="has 6 pairs but train_shots 5"):
        load_splits(DataSection(path=str(tmp_path), train_shots=5, val_shots=2), mask_codec)


# ----------------------------------------------------------------------------------------- augmentation
def test_hflip_sample_flips_image_target_and_points_together(mask_codec: Codec) -> None:
    image = np.random.default_rng(0).random((H, W, 3)).astype(np.float32)
    points = [(3.0, 4.0), (11.0, 9.0)]
    sample = Sample("a", image, MASK.copy(), points)
    flipped = hflip_sample(sample, mask_codec)
    np.testing.assert_array_equal(flipped.image, image[:, ::-1])
    np.testing.assert_array_equal(flipped.target, MASK[:, ::-1])
    assert flipped.points == [(W - 1 - 3.0, 4.0), (W - 1 - 11.0, 9.0)]
    for (x, y), (fx, fy) in zip(points, flipped.points, strict=True):  # a point keeps its pixel and label
        assert (image[int(y), int(x)] == flipped.image[int(fy), int(fx)]).all()
        assert MASK[int(y), int(x)] == flipped.target[int(fy), int(fx)]
    assert hflip_sample(flipped, mask_codec).points == points
    normals = np.zeros((H, W, 3), np.float32)
    normals[..., 0] = 1.0
    assert (hflip_sample(Sample("n", image, normals), build_codec("normals")).target[..., 0] == -1).all()
