"""One rule each for what the codecs, the data sources and synth share: image scaling, COCO RLE, target files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from adaptkit.codecs import CODECS, CodecError, Instances, as_image, build_codec
from adaptkit.data import annotation_mask
from adaptkit.images import to_rgb_array

SCALED = {
    "uint8": (np.array([[0, 51, 255]], np.uint8), [0.0, 0.2, 1.0]),
    "uint16": (np.array([[0, 13107, 65535]], np.uint16), [0.0, 0.2, 1.0]),
    "int64 of 8-bit values": (np.array([[0, 51, 255]], np.int64), [0.0, 0.2, 1.0]),
    "int32 of 16-bit values (PIL 'I')": (np.array([[0, 13107, 65535]], np.int32), [0.0, 0.2, 1.0]),
    "float overshoot is clipped, not rescaled": (np.array([[0.2, 0.5, 1.02]]), [0.2, 0.5, 1.0]),
    "nan and inf": (np.array([[np.nan, -np.inf, np.inf]]), [0.0, 0.0, 1.0]),
    "bool": (np.array([[False, True, True]]), [0.0, 1.0, 1.0]),
}


@pytest.mark.parametrize("case", sorted(SCALED))
def test_model_inputs_and_codec_decoding_scale_images_alike(case: str) -> None:
    grey, expected = SCALED[case]
    for image in (grey, np.repeat(grey[..., None], 3, -1)):
        model_view, codec_view = to_rgb_array(image), as_image(image, "depth")
        np.testing.assert_allclose(model_view[0, :, 0], expected, atol=1e-6)
        np.testing.assert_array_equal(model_view, codec_view)
        assert codec_view.dtype == np.float32 and codec_view.shape == (1, 3, 3)


def test_sixteen_bit_pil_images_keep_their_precision_in_codecs() -> None:
    image = Image.fromarray(np.array([[0, 1, 65535]], np.uint16))
    np.testing.assert_allclose(as_image(image)[0, :, 0], [0.0, 1 / 65535, 1.0], rtol=1e-6)


def test_what_is_not_an_image_is_a_codec_error_naming_the_codec() -> None:
    for bad in (np.zeros((4, 4, 5)), np.zeros((0, 4, 3)), np.array([["a"]])):
        with pytest.raises(CodecError, match=r"^depth codec: expected"):
            as_image(bad, "depth")


def test_coco_rle_decodes_like_pycocotools_and_refuses_counts_that_do_not_fit() -> None:
    truth = np.random.default_rng(1).random((9, 7)) > 0.5
    rle = mask_utils.encode(np.asfortranarray(truth.astype(np.uint8)))
    np.testing.assert_array_equal(annotation_mask({"size": [9, 7], "counts": rle["counts"].decode()}, 9, 7), truth)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, truth.T.ravel().astype(int), -1])))
    counts = ([0] if truth.T.ravel()[0] else []) + runs.tolist()
    np.testing.assert_array_equal(annotation_mask({"size": [9, 7], "counts": counts}, 9, 7), truth)
    for bad in ("12", "4", [3, 4], [100, 100]):  # short and long, compressed and not
        with pytest.raises(ValueError, match=r"RLE|Invalid"):
            annotation_mask({"size": [3, 4], "counts": bad}, 3, 4)


def test_save_target_writes_one_lossless_file_that_load_target_reads_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    targets = {
        "binary_mask": rng.random((6, 5)) > 0.5,
        "semantic": rng.integers(0, 4, (6, 5)),
        "instances": rng.integers(0, 300, (6, 5)),
        "depth": rng.random((6, 5)).astype(np.float32) + 0.1,
        "normals": (lambda v: (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32))(
            rng.normal(size=(6, 5, 3))),
        "heatmap": rng.random((6, 5)).astype(np.float32),
        "rgb": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
    }
    assert set(targets) | {"keypoints"} == set(CODECS)
    for name, target in targets.items():
        codec = build_codec(name, {"num_classes": 4} if name == "semantic" else {})
        folder = tmp_path / name
        path = codec.save_target(target, folder / "00000")
        assert [p.name for p in folder.iterdir()] == [path.name], name
        loaded = codec.load_target(path, target.shape[:2])
        expected = as_image(target) if name == "rgb" else target
        np.testing.assert_array_equal(loaded, expected, err_msg=name)
    record = Instances.from_label_map(targets["instances"])
    path = build_codec("instances").save_target(record, tmp_path / "record")
    np.testing.assert_array_equal(build_codec("instances").load_target(path), record.to_label_map())
