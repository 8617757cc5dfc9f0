"""Uncertainty per pixel: each estimator's map is what it says (checked against the predictions it is read from),
predict writes it beside the prediction, eval scores it with an AUROC checked against an independent rank
statistic, and an estimator a model or codec cannot use is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import mannwhitneyu
from tiny_recipes import shadow_recipe

from adaptkit import ErrorAUROC, UncertaintyError
from adaptkit.cli import main
from adaptkit.codecs import build_codec
from adaptkit.data import Sample
from adaptkit.inference import builtin_task, evaluate
from adaptkit.recipe import load_recipe
from adaptkit.training import train
from adaptkit.uncertainty import check_estimator, load_map, margin, mirrored, spread, wrong_pixels

TINY = ["segmentation", "--base", "tiny", "--steps", "2", "--batch-size", "2"]
QUANTUM = 2.5 / 255  # 8-bit colour files round each channel: a map recomputed from them differs this much


def _image(path: Path, seed: int, size: tuple[int, int] = (20, 28)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _encoded(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_error_auroc_is_the_rank_statistic_over_every_pixel_and_sums_across_processes():
    rng = np.random.default_rng(0)
    maps = [rng.random((30, 40)) ** 3 for _ in range(3)]
    wrong = [rng.random(m.shape) < 0.8 * m for m in maps]
    torch.use_deterministic_algorithms(True)  # as reproducible training leaves it: must not blow up memory
    try:
        whole, first, second = ErrorAUROC(), ErrorAUROC(), ErrorAUROC()
        whole.update(maps, wrong)
        first.update(maps[0], wrong[0])
        second.update(maps[1:], wrong[1:])
        first.merge_state(second)  # what a distributed sync does: the histograms add
    finally:
        torch.use_deterministic_algorithms(False)
    u, w = np.concatenate([m.ravel() for m in maps]), np.concatenate([x.ravel() for x in wrong])
    expected = mannwhitneyu(u[w], u[~w]).statistic / (w.sum() * (~w).sum())
    assert float(whole.compute()) == pytest.approx(expected, abs=2e-3)
    assert float(first.compute()) == pytest.approx(float(whole.compute()), abs=1e-6)
    nothing_wrong = ErrorAUROC()
    nothing_wrong.update(maps[0], np.zeros_like(wrong[0]))
    assert np.isnan(float(nothing_wrong.compute()))


def test_margin_spread_and_mirroring_measure_what_they_say():
    masks = build_codec("binary_mask")
    image = np.zeros((2, 3, 3), np.float32)
    image[0] = [[1, 1, 1], [0.5, 0.5, 0.5], [0.75, 0.75, 0.75]]  # sure foreground, undecided, leaning foreground
    assert margin(masks, image)[0] == pytest.approx([0.0, 1.0, 0.5]) and not margin(masks, image)[1].any()
    black, white = np.zeros((2, 2, 3), np.float32), np.ones((2, 2, 3), np.float32)
    assert spread([black, white]).tolist() == [[1.0, 1.0], [1.0, 1.0]] and not spread([white, white]).any()
    picture = np.random.default_rng(1).random((4, 5, 3)).astype(np.float32)
    assert np.array_equal(mirrored(masks, picture), picture[:, ::-1])
    normals = build_codec("normals")
    facing_right = normals.encode(np.tile(np.array([0.6, 0.0, 0.8], np.float32), (4, 5, 1)))
    facing_left = mirrored(normals, facing_right)  # a mirrored picture's normals point the other way
    assert normals.decode(facing_left)[..., 0] == pytest.approx(-0.6, abs=0.01)
    target = np.zeros((2, 3), bool)  # grey exactly halfway decodes to background: right here
    assert wrong_pixels(masks, image, target).tolist() == [[True, False, True], [False, False, False]]


@pytest.mark.parametrize(("codec", "estimator", "deterministic", "members", "message"), [
    ("depth", "margin", False, 1, "continuous codec depth does not have"),
    ("binary_mask", "samples", True, 1, "one deterministic pass (train.objective single_step)"),
    ("binary_mask", "samples", False, 1, "or --ensemble 4"),
    ("instances", "flips", False, 4, "codec instances draws its colours at random"),
    ("binary_mask", "entropy", False, 1, "unknown uncertainty estimator 'entropy'"),
])
def test_an_estimator_the_model_cannot_use_is_refused_naming_what_to_use(codec, estimator, deterministic, members,
                                                                         message):
    with pytest.raises(UncertaintyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_estimator(build_codec(codec), estimator, deterministic, members)



def test_flips_is_refused_for_an_adapter_trained_without_mirrored_images(tmp_path, capsys):
    """A left/right-sensitive task trains with data.hflip false: its mirrored prediction need not agree."""
    recipe = load_recipe(shadow_recipe("unmirrored", data={"train_shots": 2, "val_shots": 0, "hflip": False},
                                       train={"steps": 1, "batch_size": 2, "val_every": 1, "warmup": 0}))
    adapter = train(recipe, tmp_path / "run", progress=False).adapter
    picture = _image(tmp_path / "in" / "a.png", 0)
    code, _, err = _cli(capsys, "predict", adapter, picture, "--out", tmp_path / "out", "--uncertainty")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "trained without mirrored images (data.hflip false)" in err and "use --uncertainty margin" in err
    assert not (tmp_path / "out").exists()
    code, _, err = _cli(capsys, "predict", adapter, picture, "--out", tmp_path / "out", "--uncertainty", "margin")
    assert code == 0 and (tmp_path / "out" / "a.uncertainty.png").is_file(), err

def test_predict_writes_each_estimators_map_beside_the_prediction_as_computed_from_the_predictions(
        tmp_path, capsys):
    picture = _image(tmp_path / "in" / "a.png", 0)
    Image.open(picture).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(_image(tmp_path / "mirror" / "a.png", 0))
    assert _cli(capsys, "predict", *TINY, picture, "--out", tmp_path / "plain", "--raw")[0] == 0
    assert _cli(capsys, "predict", *TINY, tmp_path / "mirror" / "a.png", "--out", tmp_path / "m", "--raw")[0] == 0
    plain, of_mirror = _encoded(tmp_path / "plain" / "a.encoded.png"), _encoded(tmp_path / "m" / "a.encoded.png")
    masks = build_codec("binary_mask")
    expected = {"margin": margin(masks, plain), "flips": spread([plain, mirrored(masks, of_mirror)])}
    for estimator, wanted in expected.items():
        code, _, err = _cli(capsys, "predict", *TINY, picture, "--out", tmp_path / estimator, "--raw",
                            "--uncertainty", estimator)
        assert code == 0, err
        assert sorted(p.name for p in (tmp_path / estimator).glob("a.*")) == ["a.encoded.png", "a.png",
                                                                               "a.uncertainty.png"]
        # the prediction itself does not change with the estimator
        assert (tmp_path / estimator / "a.png").read_bytes() == (tmp_path / "plain" / "a.png").read_bytes()
        found = load_map(tmp_path / estimator / "a.uncertainty.png")
        assert found.shape == (20, 28) and np.abs(found - wanted).max() < 2 * QUANTUM
        assert found.std() > 0  # a map, not a constant
    record = json.loads((tmp_path / "flips" / "predictions.json").read_text())
    assert record["settings"]["uncertainty"] == "flips"
    code, _, err = _cli(capsys, "predict", *TINY, picture, "--out", tmp_path / "flips", "--uncertainty", "margin")
    assert code != 0 and "flips" in err and len(err.strip().splitlines()) == 1  # other settings: not mixed


def test_samples_is_the_spread_of_the_ensembles_members(tmp_path, tiny, capsys):
    picture = _image(tmp_path / "in" / "a.png", 3)
    code, _, err = _cli(capsys, "predict", *TINY, picture, "--out", tmp_path / "s", "--ensemble", "3",
                        "--uncertainty", "samples")
    assert code == 0, err
    model = builtin_task(tiny, "segmentation")
    members = model.predict_encoded([np.asarray(Image.open(picture), np.float32) / 255], steps=2, ensemble=3,
                                    progress=False)[0]
    assert np.abs(load_map(tmp_path / "s" / "a.uncertainty.png") - spread([m.image for m in members])).max() < 1e-4
    code, _, err = _cli(capsys, "predict", *TINY, picture, "--out", tmp_path / "one", "--uncertainty", "samples")
    assert code == 2 and err.strip() == ("error: uncertainty 'samples' is the spread of several flow samples, but "
                                         "the ensemble draws 1 sample: use --uncertainty flips or margin, or "
                                         "--ensemble 4")
    assert not (tmp_path / "one").exists()


def test_eval_scores_the_maps_against_the_wrong_pixels_and_shows_them_in_the_grid(tmp_path, tiny):
    rng = np.random.default_rng(2)
    samples = []
    for index in range(5):
        mask = np.zeros((16, 16), bool)
        mask[index:, : 5 + index] = True
        samples.append(Sample(str(index), rng.random((16, 16, 3)).astype(np.float32), mask))
    model = builtin_task(tiny, "segmentation")
    report = evaluate(model, samples, tmp_path / "eval", steps=2, progress=False, uncertainty="margin")
    # independently: the same predictions, their margins and wrong pixels, and the rank statistic over them
    encoded = model.predict_encoded([s.image for s in samples], steps=2, progress=False)
    maps = np.concatenate([margin(model.codec, e[0].image).ravel() for e in encoded])
    wrong = np.concatenate([(model.codec.decode(e[0].image) != s.target).ravel()
                            for e, s in zip(encoded, samples, strict=True)])
    expected = mannwhitneyu(maps[wrong], maps[~wrong]).statistic / (wrong.sum() * (~wrong).sum())
    assert report.metrics["error_auroc"] == pytest.approx(expected, abs=5e-3)
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["uncertainty"] == "margin" and record["metrics"]["error_auroc"] == report.metrics["error_auroc"]
    plain = evaluate(model, samples, steps=2, progress=False)
    assert {k: v for k, v in report.metrics.items() if k != "error_auroc"} == plain.metrics
    grid = Image.open(tmp_path / "eval" / "grid.png")
    assert grid.size == (4 * 128 + 3 * 2, 18 + 5 * 130 - 2)  # input, prediction, target, uncertainty


def test_eval_on_the_command_line_reports_the_auroc_of_the_chosen_estimator(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "masks").mkdir(parents=True)
    for index in range(3):
        _image(data / "images" / f"{index}.png", index, (16, 16))
        mask = np.zeros((16, 16), np.uint8)
        mask[index * 4:, :8] = 255
        Image.fromarray(mask).save(data / "masks" / f"{index}.png")
    code, out, err = _cli(capsys, "eval", "--task", *TINY, "--data", data, "--out", tmp_path / "eval",
                          "--uncertainty", "flips")
    assert code == 0, err
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["uncertainty"] == "flips" and 0.0 <= record["metrics"]["error_auroc"] <= 1.0
    assert "| error_auroc |" in out and "| error_auroc |" in (tmp_path / "eval" / "report.md").read_text()
