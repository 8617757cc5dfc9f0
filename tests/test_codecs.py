"""What users of the colour codecs rely on: exact round trips, robust decoding, clear errors, file formats."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageFilter

from adaptkit.codecs import (
    CODECS,
    BinaryMaskCodec,
    CodecError,
    Instances,
    Keypoints,
    build_codec,
    distinct_colors,
    list_codecs,
)
from adaptkit.metrics import build_codec_metrics

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SIDES = st.integers(4, 48)

# One configured instance of every registered codec (semantic needs its class count).
CODEC_ARGS = {
    "binary_mask": {},
    "semantic": {"num_classes": 6},
    "instances": {},
    "depth": {},
    "normals": {},
    "keypoints": {},
    "heatmap": {"colormap": "viridis"},
    "rgb": {},
}


def test_every_registered_codec_is_exercised() -> None:
    assert set(CODECS) == set(CODEC_ARGS)


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------


def degrade(image: np.ndarray, seed: int, blur: float = 1.0, quality: int = 75, noise: float = 0.02):
    """What a generated, saved prediction goes through: Gaussian blur, JPEG and colour noise."""
    pil = Image.fromarray(np.rint(image * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur))
    buffer = io.BytesIO()
    pil.save(buffer, "JPEG", quality=quality)
    out = np.asarray(Image.open(buffer).convert("RGB"), np.float32) / 255
    return np.clip(out + np.random.default_rng(seed).normal(0, noise, out.shape), 0, 1)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def shapes_scene(seed: int, size: int = 128, count: int = 8, touching: bool = False) -> np.ndarray:
    """An int label map of ``count`` discs and rectangles (radius / half side >= 8 px), apart or touching."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    label_map = np.zeros((size, size), np.int64)
    for _ in range(2000):
        if label_map.max() == count:
            break
        if rng.random() < 0.5:
            radius = rng.integers(8, 18)
            cy, cx = rng.integers(radius, size - radius, 2)
            shape = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
        else:
            height, width = rng.integers(14, 30, 2)
            top, left = rng.integers(0, size - height), rng.integers(0, size - width)
            shape = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
        grown = shape if touching else np.pad(shape, 2)[:-4, :-4] | np.pad(shape, 2)[4:, 4:] | shape
        if not (grown & (label_map > 0)).any():
            label_map[shape] = label_map.max() + 1
    return label_map


def matched(truth: Instances, found: Instances, threshold: float) -> bool:
    """Every true instance overlaps some found one with IoU >= threshold, and nothing extra was found.
    (IoUs of all pairs at once from the two label maps; the instances here never overlap.)"""
    if len(found) != len(truth):
        return False
    size = len(truth) + 1
    pairs = truth.to_label_map().ravel().astype(np.int64) * size + found.to_label_map().ravel()
    overlap = np.bincount(pairs, minlength=size * size).reshape(size, size)[1:, 1:]
    union = overlap.sum(1)[:, None] + overlap.sum(0)[None] - overlap
    return bool((overlap / np.maximum(union, 1)).max(1).min(initial=1.0) >= threshold)


def as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()


def unit_vectors(values: np.ndarray) -> np.ndarray:
    return (values / np.linalg.norm(values, axis=-1, keepdims=True)).astype(np.float32)


def example_target(name: str, size: tuple[int, int] = (40, 48)) -> object:
    """A valid target of each codec's type, used where the content does not matter."""
    height, width = size
    rows, cols = np.mgrid[:height, :width]
    if name == "binary_mask":
        return (rows - height / 2) ** 2 + (cols - width / 2) ** 2 < (min(size) / 3) ** 2
    if name == "semantic":
        return (cols * 6 // width).astype(np.int64)
    if name == "instances":
        return (1 + cols // 12 + 4 * (rows // 10)).astype(np.int64) * ((rows + cols) % 11 > 1)
    if name == "depth":
        return (1.0 + rows + cols).astype(np.float32)
    if name == "normals":
        return unit_vectors(np.stack([cols - width / 2, rows - height / 2, np.full_like(rows, 30.0)], -1))
    if name == "keypoints":
        grid = np.stack(np.meshgrid(np.linspace(6, width - 7, 6), np.linspace(6, height - 7, 3)), -1)
        return Keypoints(grid.reshape(-1, 2)[:17], np.ones(17, bool), None, size)
    if name == "heatmap":
        return (cols / (width - 1)).astype(np.float32)
    return (np.stack([rows / height, cols / width, (rows + cols) % 2], -1)).astype(np.float32)


# ------------------------------------------------------------------------------------------------------
# registry, building, configuration
# ------------------------------------------------------------------------------------------------------


def test_list_codecs_gives_every_name_with_a_one_line_summary() -> None:
    listed = dict(list_codecs())
    assert set(listed) == set(CODECS)
    assert all(summary and "\n" not in summary for summary in listed.values())
    assert len(set(listed.values())) == len(listed)  # each codec says what it is, none inherits another's line


def test_unknown_codec_name_suggests_the_closest() -> None:
    with pytest.raises(CodecError, match="did you mean 'binary_mask'"):
        build_codec("binary-mask")
    with pytest.raises(CodecError, match="did you mean 'semantic'"):
        build_codec("semantc")


def test_bad_arguments_name_the_argument_and_the_codec() -> None:
    with pytest.raises(CodecError, match=r"semantic codec: unknown argument 'num_class'.*'num_classes'"):
        build_codec("semantic", {"num_class": 3})
    with pytest.raises(CodecError, match="semantic codec: missing required argument 'num_classes'"):
        build_codec("semantic")
    with pytest.raises(CodecError, match="depth codec: argument 'mode'"):
        build_codec("depth", {"mode": "cubic"})
    with pytest.raises(CodecError, match="binary_mask codec: argument 'color'"):
        build_codec("binary_mask", {"color": [300, 0, 0]})


@pytest.mark.parametrize("name", sorted(CODEC_ARGS))
def test_config_is_json_and_rebuilds_an_equal_codec(name: str) -> None:
    codec = build_codec(name, CODEC_ARGS[name])
    config = json.loads(json.dumps(codec.to_config()))
    rebuilt = build_codec(codec.reference, config)
    assert type(rebuilt) is type(codec) and rebuilt.to_config() == config


def test_user_codec_loads_from_module_path(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_codecs.py").write_text(
        "from adaptkit.codecs import BinaryMaskCodec\n\n"
        "class RedMask(BinaryMaskCodec):\n"
        '    """A mask drawn in red."""\n\n'
        '    name = "red_mask"\n\n'
        "    def __init__(self, color=(255, 0, 0)):\n"
        "        super().__init__(color)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    codec = build_codec("my_codecs:RedMask")
    assert codec.name == "red_mask" and codec.reference == "my_codecs:RedMask"
    assert np.allclose(codec.encode(np.ones((2, 2), bool))[0, 0], [1, 0, 0])
    assert build_codec(codec.reference, codec.to_config()).to_config() == {"color": [255, 0, 0]}
    assert set(build_codec_metrics(codec).keys()) == {"dice", "iou", "precision", "recall"}  # inherited
    with pytest.raises(CodecError, match="cannot import"):
        build_codec("no_such_module_here:Thing")
    with pytest.raises(CodecError, match="not a Codec"):
        build_codec("json:dumps")


def test_resample_rule_matches_the_encoding() -> None:
    discrete = {"binary_mask", "semantic", "instances", "keypoints"}
    assert {n for n, c in CODECS.items() if c.resample == "nearest"} == discrete
    assert all(c.resample == "bilinear" for n, c in CODECS.items() if n not in discrete)


def test_default_palettes_are_distinct_and_far_apart() -> None:
    colours = distinct_colors(21).astype(float)
    assert len(np.unique(colours, axis=0)) == 21 and np.linalg.norm(colours, axis=1).min() > 100
    gaps = np.linalg.norm(colours[:, None] - colours[None], axis=-1) + np.eye(21) * 999
    assert gaps.min() > 60
    semantic = build_codec("semantic", {"num_classes": 21})
    assert np.array_equal(semantic.palette[0], [0, 0, 0]) and np.array_equal(distinct_colors(21), colours)


# ------------------------------------------------------------------------------------------------------
# round trips on clean encodings
# ------------------------------------------------------------------------------------------------------


@FAST
@given(hnp.arrays(bool, st.tuples(SIDES, SIDES)), st.sampled_from([(255, 255, 255), (9, 200, 90)]))
def test_mask_round_trip_is_exact(mask: np.ndarray, color: tuple[int, int, int]) -> None:
    codec = BinaryMaskCodec(color)
    encoded = codec.encode(mask)
    assert encoded.dtype == np.float32 and encoded.shape == (*mask.shape, 3)
    assert np.array_equal(codec.decode(encoded), mask)
    assert np.array_equal(codec.decode(np.rint(encoded * 255).astype(np.uint8)), mask)
    assert np.array_equal(codec.probability(encoded), mask.astype(np.float32))


@FAST
@given(st.data(), st.integers(2, 40))
def test_semantic_round_trip_is_exact_and_ignore_encodes_black(data: st.DataObject, classes: int) -> None:
    codec = build_codec("semantic", {"num_classes": classes})
    labels = data.draw(hnp.arrays(np.int64, st.tuples(SIDES, SIDES), elements=st.integers(0, classes - 1)))
    labels[0, 0] = 255
    encoded = codec.encode(labels)
    assert np.array_equal(encoded[0, 0], [0, 0, 0])
    expected = np.where(labels == 255, 0, labels)  # ignore shares class 0's black
    assert np.array_equal(codec.decode(encoded), expected)
    assert np.array_equal(codec.decode(np.rint(encoded * 255).astype(np.uint8)), expected)


@st.composite
def rectangle_maps(draw: st.DrawFn) -> np.ndarray:
    """Label maps of non-overlapping (possibly touching) rectangles at least 3 px on a side."""
    height, width = draw(st.integers(8, 48)), draw(st.integers(8, 48))
    label_map = np.zeros((height, width), np.int64)
    for _ in range(draw(st.integers(0, 8))):
        top, left = draw(st.integers(0, height - 3)), draw(st.integers(0, width - 3))
        bottom, right = top + draw(st.integers(3, 16)), left + draw(st.integers(3, 16))
        if not label_map[top:bottom, left:right].any():
            label_map[top:bottom, left:right] = label_map.max() + 1
    return label_map


@FAST
@given(rectangle_maps(), st.integers(0, 2**16))
def test_instance_round_trip_is_exact(label_map: np.ndarray, seed: int) -> None:
    codec = build_codec("instances", {"seed": seed})
    truth = Instances.from_label_map(label_map)
    found = codec.decode(codec.encode(truth))
    assert len(found) == len(truth)
    assert all(any(np.array_equal(t, f) for f in found.masks) for t in truth.masks)
    assert found.scores.dtype == np.float32 and np.allclose(found.scores, 1.0)


def test_instance_colours_are_random_per_encoding_but_seeded() -> None:
    label_map = np.repeat(np.arange(1, 9), 4)[None].repeat(6, 0)
    first, again = build_codec("instances", {"seed": 3}), build_codec("instances", {"seed": 3})
    a, b = first.encode(label_map), first.encode(label_map)
    assert not np.array_equal(a, b) and np.array_equal(a, again.encode(label_map))
    colours = np.unique(a.reshape(-1, 3), axis=0)
    assert len(colours) == 8 and np.linalg.norm(colours, axis=1).min() > 0.9


@FAST
@given(
    hnp.arrays(np.float32, st.tuples(SIDES, SIDES), elements=st.floats(0.125, 100, width=32)),
    st.sampled_from(["inverse", "log", "linear"]),
)
def test_depth_round_trip_is_the_normalised_relative_value(depth: np.ndarray, mode: str) -> None:
    depth = depth.copy()
    depth[0, 0] = np.nan  # invalid pixels are allowed and encode black
    codec = build_codec("depth", {"mode": mode})
    decoded = codec.decode(codec.encode(depth))
    assert decoded.dtype == np.float32 and decoded[0, 0] == 0
    assert np.allclose(decoded, codec.relative(depth), atol=1e-6)
    valid = np.isfinite(depth)
    low, high = np.quantile(depth[valid], [0.02, 0.98])
    clipped = np.clip(depth[valid], low, high)
    order = np.argsort(clipped, kind="stable")
    assert np.all(np.diff(decoded[valid][order]) <= 1e-6)  # nearer is brighter in every mode
    if mode == "inverse" and high > low:  # affine in 1 / d: what metrics align against
        fit = np.polyfit(1 / clipped, decoded[valid], 1)
        assert np.allclose(np.polyval(fit, 1 / clipped), decoded[valid], atol=1e-5)


@FAST
@given(hnp.arrays(np.float32, st.tuples(SIDES, SIDES, st.just(3)), elements=st.floats(-1, 1, width=32)))
def test_normals_round_trip(values: np.ndarray) -> None:
    assume((np.linalg.norm(values, axis=-1) > 0.1).all())
    normals = unit_vectors(values)
    codec = build_codec("normals")
    assert np.allclose(codec.decode(codec.encode(normals)), normals, atol=1e-5)
    quantised = codec.decode(np.rint(codec.encode(normals) * 255).astype(np.uint8))
    angle = np.degrees(np.arccos(np.clip((quantised * normals).sum(-1), -1, 1)))
    assert angle.max() < 1.0


def test_zero_normals_are_invalid_and_decode_facing_the_camera() -> None:
    codec = build_codec("normals")
    encoded = codec.encode(np.zeros((2, 2, 3), np.float32))
    assert np.allclose(encoded, 0.5) and np.allclose(codec.decode(encoded), [0, 0, 1])


@FAST
@given(st.lists(st.tuples(st.integers(6, 89), st.integers(6, 73)), min_size=4, max_size=4), st.booleans())
def test_keypoints_round_trip_within_a_pixel(points: list[tuple[int, int]], hide: bool) -> None:
    xy = np.asarray(points, np.float32)
    gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(4) * 99
    assume(gaps.min() > 8)
    codec = build_codec("keypoints", {"names": ["a", "b", "left_c", "right_c"], "skeleton": [[0, 1], [1, 2]]})
    visible = np.array([True, True, True, not hide])
    found = codec.decode(codec.encode(Keypoints(xy, visible, None, (80, 96))))
    assert np.array_equal(found.visible, visible)
    assert np.abs(found.xy[visible] - xy[visible]).max() <= 1.0
    assert found.image_size == (80, 96) and np.isfinite(found.confidence).all()


@FAST
@given(
    hnp.arrays(np.float32, st.tuples(SIDES, SIDES), elements=st.floats(0, 1, width=32)),
    st.sampled_from(["grey", "viridis", "magma"]),
)
@example(np.array([[0.49988836]], np.float32), "viridis")  # next to an anchor: once decoded 1.1e-4 off
def test_heatmap_round_trip(values: np.ndarray, colormap: str) -> None:
    codec = build_codec("heatmap", {"colormap": colormap})
    assert np.allclose(codec.decode(codec.encode(values)), values, atol=1e-4)
    assert np.abs(codec.decode(np.rint(codec.encode(values) * 255).astype(np.uint8)) - values).max() < 0.02


def test_rgb_is_the_identity_and_accepts_uint8() -> None:
    codec = build_codec("rgb")
    image = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    assert np.array_equal(codec.decode(codec.encode(image)), image)
    assert np.allclose(codec.encode(np.full((2, 2, 3), 255, np.uint8)), 1.0)


# ------------------------------------------------------------------------------------------------------
# robustness to what generation and saving do to an image
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_masks_survive_blur_jpeg_and_noise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:128, :128]
    mask = np.zeros((128, 128), bool)
    for cy, cx, radius in zip(*rng.integers(20, 108, (2, 4)), rng.integers(6, 20, 4), strict=True):
        mask |= (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
    for color in [(255, 255, 255), (0, 180, 255)]:
        codec = BinaryMaskCodec(color)
        assert iou(codec.decode(degrade(codec.encode(mask), seed)), mask) >= 0.95


@pytest.mark.parametrize("seed", range(8))
def test_instances_survive_blur_jpeg_and_noise(seed: int) -> None:
    label_map = shapes_scene(seed, count=5 + seed % 6, touching=seed % 2 == 1)
    codec = build_codec("instances", {"seed": seed})
    found = codec.decode(degrade(codec.encode(label_map), seed))
    assert matched(Instances.from_label_map(label_map), found, 0.9)
    assert ((found.scores > 0) & (found.scores <= 1)).all()


def test_semantic_survives_blur_jpeg_and_noise() -> None:
    codec = build_codec("semantic", {"num_classes": 8})
    labels = (shapes_scene(0, count=7, touching=True) % 8).astype(np.int64)
    decoded = codec.decode(degrade(codec.encode(labels), 0))
    assert (decoded == labels).mean() >= 0.95


def test_instances_decode_50_instances_at_768() -> None:
    label_map = np.kron(np.arange(1, 51).reshape(5, 10), np.ones((150, 76), np.int64))[:, :760]
    label_map = np.pad(label_map, ((9, 9), (4, 4)))
    label_map[::150] = label_map[:, ::76] = 0  # a one-pixel gap between neighbours
    codec = build_codec("instances")
    assert matched(Instances.from_label_map(label_map), codec.decode(codec.encode(label_map)), 0.99)


# ------------------------------------------------------------------------------------------------------
# any RGB image decodes
# ------------------------------------------------------------------------------------------------------


def awkward_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    corners = np.stack(np.meshgrid([0.0, 1.0], [0.0, 1.0], [0.0, 1.0], indexing="ij"), -1).reshape(8, 3)
    return {
        "noise": rng.random((33, 47, 3)),
        "uint8 noise": rng.integers(0, 256, (20, 20, 3), dtype=np.uint8),
        "black": np.zeros((16, 16, 3)),
        "white": np.ones((16, 16, 3)),
        "mid grey": np.full((9, 9, 3), 0.5),
        "cube corners": np.tile(corners, (16, 4))[:, :, None].reshape(16, 32, 3)[:16],
        "nan and inf": np.where(rng.random((12, 12, 3)) < 0.3, np.nan, np.inf),
        "out of range": rng.normal(0.5, 3, (10, 10, 3)),
        "one pixel": np.array([[[0.2, 0.9, 0.4]]]),
        "grey 2d": rng.random((8, 8)),
        "rgba": rng.random((8, 8, 4)),
    }


def finite(result: object) -> bool:
    if isinstance(result, Instances):
        return result.masks.dtype == np.bool_ and bool(np.isfinite(result.scores).all())
    if isinstance(result, Keypoints):
        return bool(np.isfinite(result.xy).all() and np.isfinite(result.confidence).all())
    return bool(np.isfinite(np.asarray(result, np.float64)).all())


@pytest.mark.parametrize("name", sorted(CODEC_ARGS))
def test_any_rgb_image_decodes_without_error_or_nan(name: str) -> None:
    codec = build_codec(name, CODEC_ARGS[name])
    for label, image in awkward_images().items():
        assert finite(codec.decode(image)), label
    if name == "binary_mask":
        assert np.isfinite(codec.probability(awkward_images()["nan and inf"])).all()


def test_decode_rejects_what_is_not_an_image() -> None:
    with pytest.raises(CodecError, match="depth codec: expected an RGB image"):
        build_codec("depth").decode(np.zeros((4, 4, 5)))


# ------------------------------------------------------------------------------------------------------
# validation errors
# ------------------------------------------------------------------------------------------------------

BAD_TARGETS = [
    ("binary_mask", np.zeros((4, 4), np.float32), "dtype float32"),
    ("binary_mask", np.zeros((4, 4, 3), bool), "shape"),
    ("semantic", np.array([[0, 1], [7, 9]]), "label values 7, 9 are out of range"),
    ("semantic", np.zeros((3, 3)), "dtype float64"),
    ("instances", np.zeros((3, 3), np.float32), "dtype float32"),
    ("instances", Instances(np.zeros((2, 3, 3), np.uint8)), "bool"),
    ("depth", np.full((3, 3), np.nan, np.float32), "no valid pixel"),
    ("depth", -np.ones((3, 3), np.float32), "negative"),
    ("depth", np.ones((3, 3), bool), "dtype bool"),
    ("normals", np.zeros((3, 3, 2), np.float32), "3 channels"),
    ("normals", np.full((3, 3, 3), np.nan, np.float32), "NaN"),
    ("normals", np.full((3, 3, 3), 0.3, np.float32), "not unit vectors"),
    ("keypoints", Keypoints(np.zeros((5, 2)), np.ones(5, bool), None, (9, 9)), "expected 17 keypoints"),
    ("keypoints", Keypoints(np.zeros((17, 2)), np.ones(17, bool)), "image_size"),
    ("heatmap", np.full((3, 3), 1.5, np.float32), "[0, 1]"),
    ("heatmap", np.zeros((3, 3), np.uint8), "dtype uint8"),
    ("rgb", np.zeros((3, 3, 4), np.float32), "3 channels"),
    ("rgb", [[0.0]], "numpy array"),
]


@pytest.mark.parametrize(("name", "target", "problem"), BAD_TARGETS, ids=[n for n, _, _ in BAD_TARGETS])
def test_bad_targets_name_the_codec_and_the_problem(name: str, target: object, problem: str) -> None:
    codec = build_codec(name, CODEC_ARGS[name])
    with pytest.raises(CodecError) as error:
        codec.encode(target)
    assert str(error.value).startswith(f"{name} codec: ") and problem in str(error.value)
    assert isinstance(error.value, ValueError)


def test_too_many_instances_is_an_error() -> None:
    with pytest.raises(CodecError, match="exceed max_instances=3"):
        build_codec("instances", {"max_instances": 3}).encode(np.arange(5).reshape(1, 5))


# ------------------------------------------------------------------------------------------------------
# target files
# ------------------------------------------------------------------------------------------------------


def test_masks_load_from_the_formats_users_have(tmp_path) -> None:
    codec = build_codec("binary_mask")
    mask = example_target("binary_mask")
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "ones.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "full.png")
    Image.fromarray(mask).save(tmp_path / "bits.png")
    palette = Image.fromarray(mask.astype(np.uint8))
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.save(tmp_path / "palette.png")
    Image.fromarray(mask.astype(np.uint8) * 255).convert("RGB").save(tmp_path / "rgb.tif")
    np.save(tmp_path / "array.npy", mask)
    for name in ["ones.png", "full.png", "bits.png", "palette.png", "rgb.tif", "array.npy"]:
        assert np.array_equal(codec.load_target(tmp_path / name, image_size=mask.shape), mask), name
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "lossy.jpg", quality=75)
    assert iou(codec.load_target(tmp_path / "lossy.jpg"), mask) > 0.98
    Image.fromarray((mask * 2).astype(np.uint8) + 1).save(tmp_path / "labels.png")
    with pytest.raises(CodecError, match=r"binary_mask codec: .*labels.png holds values 1, 3"):
        codec.load_target(tmp_path / "labels.png")
    with pytest.raises(CodecError, match="but its image is 10x10"):
        codec.load_target(tmp_path / "full.png", image_size=(10, 10))
    with pytest.raises(CodecError, match="no target file"):
        codec.load_target(tmp_path / "missing.png")


def test_labels_load_from_grey_palette_16_bit_and_colour_images(tmp_path) -> None:
    codec = build_codec("semantic", {"num_classes": 300, "ignore_index": 1000})
    labels = (np.arange(48 * 40).reshape(40, 48) % 300).astype(np.int64)
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "wide.png")
    assert np.array_equal(codec.load_target(tmp_path / "wide.png"), labels)
    small = build_codec("semantic", {"num_classes": 6})
    ids = example_target("semantic")
    Image.fromarray(ids.astype(np.uint8)).save(tmp_path / "grey.png")
    indexed = Image.fromarray(ids.astype(np.uint8), mode="L").convert("P")
    indexed.save(tmp_path / "indexed.png")
    Image.fromarray(np.rint(small.encode(ids) * 255).astype(np.uint8)).save(tmp_path / "colour.png")
    for name in ["grey.png", "indexed.png", "colour.png"]:
        assert np.array_equal(small.load_target(tmp_path / name), ids), name
    Image.fromarray(np.full((4, 4, 3), 77, np.uint8)).save(tmp_path / "foreign.png")
    with pytest.raises(CodecError, match="colours outside the palette"):
        small.load_target(tmp_path / "foreign.png")


def test_instances_load_from_id_pngs_masks_and_colour_maps(tmp_path) -> None:
    codec = build_codec("instances")
    label_map = example_target("instances")
    truth = Instances.from_label_map(label_map)
    Image.fromarray(label_map.astype(np.uint16)).save(tmp_path / "ids.png")
    np.save(tmp_path / "masks.npy", truth.masks)
    Image.fromarray(np.rint(codec.encode(label_map) * 255).astype(np.uint8)).save(tmp_path / "colours.png")
    for name in ["ids.png", "masks.npy", "colours.png"]:
        loaded = codec.load_target(tmp_path / name)
        loaded = loaded if isinstance(loaded, Instances) else Instances.from_label_map(loaded)
        assert matched(truth, loaded, 1.0), name


def test_depth_loads_16_bit_png_and_keypoints_load_json(tmp_path) -> None:
    depth = (np.arange(12).reshape(3, 4) * 1000).astype(np.uint16)
    Image.fromarray(depth).save(tmp_path / "depth.png")
    loaded = build_codec("depth").load_target(tmp_path / "depth.png")
    assert loaded.dtype == np.float32 and np.array_equal(loaded, depth)
    codec = build_codec("keypoints", {"names": ["nose", "left_eye", "right_eye"], "skeleton": [[0, 1]]})
    (tmp_path / "pose.json").write_text(json.dumps({"keypoints": [[4, 5, 2], [6, 7, 1], [0, 0, 0]]}))
    with pytest.raises(CodecError, match="image_size"):
        codec.load_target(tmp_path / "pose.json")
    pose = codec.load_target(tmp_path / "pose.json", image_size=(20, 30))
    assert pose.image_size == (20, 30) and pose.visible.tolist() == [True, True, False]
    flat = {"keypoints": [4, 5, 2, 6, 7, 2, 1, 1, 2], "width": 30, "height": 20}  # COCO's flat list
    (tmp_path / "flat.json").write_text(json.dumps(flat))
    assert codec.load_target(tmp_path / "flat.json").xy.tolist() == [[4, 5], [6, 7], [1, 1]]
    assert codec.parse_target({"keypoints": [[1, 2, 2]] * 3}, image_size=(5, 5)).image_size == (5, 5)


@pytest.mark.parametrize("name", ["binary_mask", "semantic", "instances", "normals", "keypoints"])
def test_saved_results_load_back(name: str, tmp_path) -> None:
    codec = build_codec(name, CODEC_ARGS[name])
    decoded = codec.decode(codec.encode(example_target(name)))
    files = codec.save(decoded, tmp_path / "out" / "result")
    assert all(path.is_file() for path in files)
    loaded = codec.load_target(files[0], image_size=(40, 48))
    if isinstance(decoded, Instances):
        assert matched(decoded, Instances.from_label_map(loaded), 1.0)
    elif isinstance(decoded, Keypoints):
        assert np.allclose(loaded.xy, decoded.xy) and np.array_equal(loaded.visible, decoded.visible)
    else:
        assert np.allclose(loaded, decoded, atol=1e-2)


# ------------------------------------------------------------------------------------------------------
# flips
# ------------------------------------------------------------------------------------------------------


def test_hflip_negates_normal_x_and_mirrors() -> None:
    normals = example_target("normals")
    flipped = build_codec("normals").hflip(normals)
    assert np.allclose(flipped[:, ::-1, 0], -normals[..., 0])
    assert np.allclose(flipped[:, ::-1, 1:], normals[..., 1:])


def test_hflip_swaps_left_and_right_keypoints() -> None:
    codec = build_codec("keypoints")
    xy = np.stack([np.arange(17.0) * 2, np.arange(17.0)], 1)
    visible = np.arange(17) % 3 > 0
    flipped = codec.hflip(Keypoints(xy, visible, None, (20, 40)))
    left, right = codec.names.index("left_wrist"), codec.names.index("right_wrist")
    assert flipped.xy[left].tolist() == [39 - xy[right, 0], xy[right, 1]]
    assert flipped.visible[left] == visible[right] and flipped.xy[0, 0] == 39  # the nose stays the nose
    twice = codec.hflip(flipped)
    assert np.array_equal(twice.xy, xy) and np.array_equal(twice.visible, visible)


@pytest.mark.parametrize("name", ["binary_mask", "semantic", "depth", "heatmap", "rgb", "instances"])
def test_hflip_mirrors_direction_free_targets(name: str) -> None:
    codec = build_codec(name, CODEC_ARGS[name] if name != "instances" else {"seed": 1})
    target = example_target(name)
    twin = build_codec(name, CODEC_ARGS[name] if name != "instances" else {"seed": 1})
    assert np.array_equal(codec.encode(codec.hflip(target)), twin.encode(target)[:, ::-1])


# ------------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CODEC_ARGS))
def test_loss_is_near_zero_when_perfect_and_differentiable(name: str) -> None:
    codec = build_codec(name, CODEC_ARGS[name])
    target = as_batch(codec.encode(example_target(name)))
    assert float(codec.loss(target.clone(), target)) < 1e-3
    pred = (target + 0.3 * torch.rand_like(target)).requires_grad_()
    loss = codec.loss(pred * 1.1 - 0.1, target)  # predictions may stray outside [0, 1]
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_losses_punish_what_is_wrong() -> None:
    mask = build_codec("binary_mask")
    target = as_batch(mask.encode(example_target("binary_mask")))
    assert float(mask.loss(1 - target, target)) > 2

    normals = build_codec("normals")
    field = example_target("normals")
    assert float(normals.loss(as_batch(normals.encode(-field)), as_batch(normals.encode(field)))) > 1.9

    semantic = build_codec("semantic", {"num_classes": 6})
    labels = example_target("semantic")
    encoded = as_batch(semantic.encode(labels))
    assert float(semantic.loss(as_batch(semantic.encode((labels + 1) % 6)), encoded)) > 5
    ignored = torch.from_numpy(np.where(labels == 2, 255, labels))[None]
    wrong_where_ignored = as_batch(semantic.encode(np.where(labels == 2, 3, labels)))
    assert float(semantic.loss(wrong_where_ignored, ignored)) < 1e-3

    keypoints = build_codec("keypoints")
    drawn = as_batch(keypoints.encode(example_target("keypoints")))
    black = torch.zeros_like(drawn)  # misses every joint, background perfect
    grey_background = drawn + 0.1 * (drawn.amax(1, keepdim=True) == 0)  # every joint right, background off

    def weighting(pred: torch.Tensor) -> float:
        return float(keypoints.loss(pred, drawn) / torch.nn.functional.l1_loss(pred, drawn))

    assert weighting(black) > 3 > 1 > weighting(grey_background)


def test_depth_loss_ignores_scale_and_shift_but_not_inversion() -> None:
    codec = build_codec("depth")
    target = as_batch(codec.encode(example_target("depth")))
    assert float(codec.loss(0.4 * target + 0.3, target)) < 1e-4
    assert float(codec.loss(1 - target, target)) > 0.9
    inverted = (1 - target).requires_grad_()
    codec.loss(inverted, target).backward()
    assert inverted.grad.abs().sum() > 0  # an inverted map is pushed back, not stuck
