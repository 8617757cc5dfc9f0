"""Learning curves: the nested subsets, the bootstrap and the power-law answer on known numbers, then `adaptkit curve`
and `learning_curve` end to end on the tiny generalist (resume, settings that differ, bad input)."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_recipes import shadow_recipe

from adaptkit.adapters import AdaptedModel
from adaptkit.cli import main
from adaptkit.curve import (
    RECORD,
    CurveError,
    PowerLaw,
    answer,
    bootstrap_means,
    draw_subsets,
    fit_power_law,
    learning_curve,
    summarise,
)
from adaptkit.data import check_all, open_source
from adaptkit.inference import evaluate
from adaptkit.recipe import load_recipe

RECIPE = shadow_recipe("curve-test", data={"train_shots": 6, "val_shots": 2, "test_shots": 5},
                       train={"steps": 2, "batch_size": 2, "val_every": 2, "warmup": 1, "lr": 3e-3, "seed": 0})


# ------------------------------------------------------------------------ subsets
def test_subsets_are_nested_within_a_repeat_and_differ_across_repeats() -> None:
    pool = [f"id{i:02d}" for i in range(50)]
    shots = [5, 10, 25, 50]
    subsets = draw_subsets(pool, shots, 3, seed=7)
    for repeat in range(3):
        for small, large in itertools.pairwise(shots):
            assert set(subsets[small, repeat]) < set(subsets[large, repeat])
        assert sorted(subsets[50, repeat]) == pool  # the whole pool at its size
        assert all(len(subsets[k, repeat]) == len(set(subsets[k, repeat])) == k for k in shots)
    assert len({tuple(sorted(subsets[5, r])) for r in range(3)}) == 3
    assert len({tuple(sorted(subsets[10, r])) for r in range(3)}) == 3
    assert draw_subsets(list(reversed(pool)), shots, 3, seed=7) == subsets  # the listing order does not matter
    assert draw_subsets(pool, [10, 5], 3, seed=7)[5, 1] == subsets[5, 1]  # a point does not depend on the others


# ------------------------------------------------------------------------ statistics on known numbers
def test_bootstrap_equals_an_independent_loop() -> None:
    scores = np.random.default_rng(1).random((3, 4, 11))
    scores[1, 2, 5] = np.nan  # left out of its mean
    boot = bootstrap_means(scores, resamples=200, seed=3)
    rng = np.random.default_rng(3)  # the documented draw: all repeat draws, then all image draws
    repeats, images = rng.integers(0, 4, (200, 4)), rng.integers(0, 11, (200, 11))
    for b in range(200):
        for s in range(3):
            values = [scores[s, r, i] for r in repeats[b] for i in images[b]]
            assert boot[b, s] == pytest.approx(np.nanmean(values), abs=1e-12)


def test_interval_covers_like_a_normal_interval_on_many_images() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(0.7, 0.1, (1, 1, 2000))
    rows, _ = summarise(scores, [10], resamples=2000)
    half = 1.96 * scores.std(ddof=1) / math.sqrt(2000)
    assert rows[0].mean == pytest.approx(scores.mean())
    assert (rows[0].high - rows[0].low) / 2 == pytest.approx(half, rel=0.1)
    assert rows[0].low < rows[0].mean < rows[0].high


@pytest.mark.parametrize(("law", "shots"), [(PowerLaw(0.8, 0.5, 0.6, True), [5, 10, 25, 50, 100]),
                                            (PowerLaw(0.1, 0.4, 0.7, False), [4, 8, 16, 32])])
def test_fit_recovers_known_parameters(law: PowerLaw, shots: list[int]) -> None:
    fit = fit_power_law(shots, law(np.array(shots)), law.higher)
    assert fit is not None
    assert (fit.ceiling, fit.scale, fit.exponent) == pytest.approx((law.ceiling, law.scale, law.exponent), abs=1e-4)
    target = law(40.0)
    assert fit.shots_for(float(target)) == pytest.approx(40.0, rel=1e-3)
    assert math.isinf(fit.shots_for(law.ceiling + (0.05 if law.higher else -0.05)))


def _synthetic(law: PowerLaw, shots: list[int], noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(0)
    return law(np.array(shots, float))[:, None, None] + rng.normal(0, noise, (len(shots), 3, 200))


def test_answer_on_a_power_law_and_each_reason_not_to_answer() -> None:
    law, shots = PowerLaw(0.8, 0.6, 0.7, True), [5, 10, 25, 50]
    rows, boot = summarise(_synthetic(law, shots), shots, resamples=300)
    found, refits = answer(rows, boot, "dice", True, 0.72)
    assert found.reason is None and refits
    assert found.low <= law.shots_for(0.72) <= found.high  # the truth, 24 images, is in the interval
    assert found.text.startswith(f"about {math.ceil(found.shots)} labelled images for dice 0.720")
    assert found.fit["ceiling"][1] <= 0.8 <= found.fit["ceiling"][2]

    default, _ = answer(rows, boot, "dice", True, None)  # within 5% of the fitted ceiling
    assert default.target_value == pytest.approx(0.95 * default.fit["ceiling"][0])

    above, _ = answer(rows, boot, "dice", True, 0.9)
    assert above.reason.startswith("target dice 0.900 is above the fitted ceiling 0.799 [0.781, 0.825]")
    far, _ = answer(rows, boot, "dice", True, 0.79)  # reachable only far beyond 4 x 50 images
    assert far.shots is None and ("beyond 4x the largest count" in far.reason or "unbounded" in far.reason)
    three, _ = answer(rows[:3], boot[:, :3], "dice", True, 0.72)
    assert "at least 4 shot counts" in three.reason and three.text.startswith("no reliable answer: ")
    easy, _ = answer(rows, boot, "dice", True, 0.3)
    assert easy.text.startswith("at most 5 labelled images for dice 0.300")

    bent = _synthetic(law, shots, noise=0.01)
    bent[-1] -= 0.15  # falls at 50 shots: no saturating power law passes through every interval
    rows, boot = summarise(bent, shots, resamples=100)
    missed, _ = answer(rows, boot, "dice", True, 0.72)
    assert "misses the 95% interval" in missed.reason


# ------------------------------------------------------------------------ end to end
def test_learning_curve_end_to_end_and_resume(tmp_path: Path, tiny) -> None:
    recipe = load_recipe(RECIPE)
    out = tmp_path / "curve"
    result = learning_curve(recipe, out, shots=[2, 4], repeats=2, generalist=tiny, progress=False, resamples=50)
    assert sorted(result.trained) == ["shots-2-repeat-0", "shots-2-repeat-1", "shots-4-repeat-0", "shots-4-repeat-1"]
    assert (out / "curve.png").stat().st_size > 0
    record = json.loads((out / RECORD).read_text())
    test_ids, metric = record["test_ids"], result.metric
    assert metric == "dice"  # the recipe's monitored metric: its codec's first
    assert len(test_ids) == 5
    for name, point in record["points"].items():
        meta = json.loads((out / "points" / name / "adapter" / "adaptkit.json").read_text())
        assert meta["samples"]["train"] == point["train_ids"]  # the adapter records the subset it learnt from
        assert meta["samples"]["test"] == test_ids
        assert len(point["scores"][metric]) == len(point["scores"]["iou"]) == 5
    points = record["points"]
    assert set(points["shots-2-repeat-0"]["train_ids"]) < set(points["shots-4-repeat-0"]["train_ids"])
    assert "at least 4 shot counts" in result.answer.reason
    rows = record["summary"]["rows"]
    assert rows[0]["mean"] == pytest.approx(np.mean([record["points"][f"shots-2-repeat-{r}"]["scores"][metric]
                                                     for r in range(2)]))

    # a point scored as users score it: `evaluate` on the loaded adapter gives the recorded split-level metrics,
    # and each image's IoU, computed here with numpy from its predicted mask, the recorded per-image score
    folder = out / "points" / "shots-4-repeat-1" / "adapter"
    model = AdaptedModel.from_pretrained(folder, generalist=tiny)
    samples = check_all(open_source(recipe.data, model.codec), test_ids)
    report = evaluate(model, samples, progress=False)
    point = record["points"]["shots-4-repeat-1"]
    assert point["test"] == pytest.approx(report.metrics, abs=1e-6)
    for mask, sample, recorded in zip(model.predict([s.image for s in samples], progress=False), samples,
                                      point["scores"]["iou"], strict=True):
        truth = np.asarray(sample.target, bool)
        union = (mask | truth).sum()
        assert recorded == pytest.approx((mask & truth).sum() / union if union else 1.0, abs=1e-6)
    model.generalist.denoiser = model.generalist.denoiser.unload()  # hand the fixture back as it was

    # resume: a point missing from the record (killed before it was scored) is the only one trained again
    del record["points"]["shots-4-repeat-0"]
    (out / RECORD).write_text(json.dumps(record))
    stamp = (out / "points" / "shots-2-repeat-0" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    again = learning_curve(recipe, out, shots=[2, 4], repeats=2, generalist=tiny, progress=False, resamples=50)
    assert again.trained == ["shots-4-repeat-0"]
    assert (out / "points" / "shots-2-repeat-0" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert [r.mean for r in again.rows] == pytest.approx([r.mean for r in result.rows])  # the same run, retrained
    more = learning_curve(recipe, out, shots=[2, 4, 6], repeats=2, metric="dice", generalist=tiny, progress=False,
                          resamples=50)
    assert sorted(more.trained) == ["shots-6-repeat-0", "shots-6-repeat-1"] and more.metric == "dice"
    assert learning_curve(recipe, out, shots=[2, 6], repeats=1, generalist=tiny, progress=False,
                          resamples=50).trained == []

    with pytest.raises(CurveError, match=r"different recipe \(train\.lr differ"):
        learning_curve(load_recipe(RECIPE, ["train.lr=1e-3"]), out, shots=[2], repeats=1, generalist=tiny)


def _write(folder: Path, **sections) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(shadow_recipe("curve-cli", **{**{k: RECIPE[k] for k in ("data", "train")},
                                                                 **sections})))
    return path


def test_cli_curve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _write(tmp_path)
    out = tmp_path / "out"
    assert main(["curve", str(recipe), "--shots", "1", "3", "--repeats", "1", "--out", str(out), "train.steps=1"]) == 0
    printed = capsys.readouterr().out
    assert "| shots | dice mean | 95% interval | per repeat |" in printed and "| 3 |" in printed
    assert "no reliable answer: the power law has 3 parameters" in printed
    assert sorted(p.name for p in (out / "points").iterdir()) == ["shots-1-repeat-0", "shots-3-repeat-0"]
    shutil.rmtree(out / "points" / "shots-3-repeat-0")  # a deleted point is trained again, and only it
    stamp = (out / "points" / "shots-1-repeat-0" / "adapter" / "adaptkit.json").stat().st_mtime_ns
    assert main(["curve", str(recipe), "--shots", "1", "3", "--repeats", "1", "--out", str(out), "train.steps=1"]) == 0
    assert "1 point(s) to train" in capsys.readouterr().err
    assert (out / "points" / "shots-3-repeat-0" / "adapter" / "adaptkit.json").is_file()
    assert (out / "points" / "shots-1-repeat-0" / "adapter" / "adaptkit.json").stat().st_mtime_ns == stamp
    assert main(["curve", str(recipe), "--shots", "1", "3", "--repeats", "1", "--out", str(out), "train.steps=1"]) == 0
    assert "nothing was trained" in capsys.readouterr().err


@pytest.mark.parametrize(("arguments", "message"), [
    (["--shots", "0", "2"], "--shots: 0 is not a positive number of training images"),
    (["--shots", "2", "2"], "--shots: 2 given more than once"),
    (["--shots", "7"], "--shots 7: the training pool has 6 images"),
    (["--repeats", "0", "--shots", "2"], "--repeats must be >= 1, got 0"),
    (["data.test_shots=0", "--shots", "2"], "data.test_shots is 0"),
    (["--metric", "nope", "--shots", "2"], "--metric 'nope' is not one of the recipe's metrics"),
    (["--target", "nan", "--shots", "2"], "--target must be a finite number"),
])
def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str],
                               message: str) -> None:
    code = main(["curve", str(_write(tmp_path)), "--out", str(tmp_path / "out"), *arguments])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_an_interrupted_curve_says_how_to_continue_and_continues(tmp_path: Path, tiny,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import adaptkit.training as training
    from adaptkit.training import TrainingInterrupted

    real, calls = training.train, []

    def stopped_at_the_third(*args, **kwargs):
        calls.append(Path(args[1]).name)
        if len(calls) == 3:  # what Ctrl-C does inside train: a checkpoint, then TrainingInterrupted
            raise TrainingInterrupted("training interrupted at step 1 of 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train", stopped_at_the_third)
    out = tmp_path / "curve"
    with pytest.raises(TrainingInterrupted, match=r"during shots-1-repeat-1; 2 of 4 points are recorded .* rerun the "
                                                  r"same command to continue \(the interrupted point restarts\)"):
        learning_curve(load_recipe(RECIPE), out, shots=[1, 3], repeats=2, generalist=tiny, progress=False)
    assert sorted(json.loads((out / RECORD).read_text())["points"]) == ["shots-1-repeat-0", "shots-3-repeat-0"]
    result = learning_curve(load_recipe(RECIPE), out, shots=[1, 3], repeats=2, generalist=tiny, progress=False,
                            resamples=50)
    assert result.trained == ["shots-1-repeat-1", "shots-3-repeat-1"]
    assert calls[3:] == ["shots-1-repeat-1", "shots-3-repeat-1"]
