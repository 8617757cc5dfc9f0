"""Suggested labels: the picks follow the adapter's uncertainty (checked against the maps `predict` writes), a
near-duplicate of a pick is not picked again, the outputs are usable as they are (`@suggested.txt`), and bad
requests end in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import adaptkit
from adaptkit.cli import main
from adaptkit.inference import builtin_task
from adaptkit.suggest import choose
from adaptkit.uncertainty import load_map

TINY = ["--base", "tiny", "--steps", "2", "--batch-size", "3"]


def _pool(folder: Path, count: int) -> Path:
    """`count` different images, a pixel-for-pixel copy of image 3 (`3-copy.png`) and an unreadable file."""
    folder.mkdir(parents=True)
    for index in range(count):
        rng = np.random.default_rng(index)
        Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(folder / f"{index}.png")
    (folder / "3-copy.png").write_bytes((folder / "3.png").read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_choose_takes_the_most_uncertain_first_and_never_a_near_duplicate_of_a_pick():
    scores = np.array([0.9, 0.89, 0.5, 0.2])
    descriptions = np.array([[0.0, 0.0], [0.0, 0.01], [1.0, 0.0], [0.0, 1.0]])
    assert choose(scores, descriptions, 2) == [0, 2]  # not 1, the near copy of 0, though it is more uncertain
    assert choose(scores, descriptions, 10) == [0, 2, 3, 1]  # every image, the copy last
    far_apart = np.eye(4)
    assert choose(scores, far_apart, 4) == [0, 1, 2, 3]  # nothing alike: uncertainty alone decides
    assert choose(np.array([]), np.zeros((0, 2)), 3) == []


def test_suggest_ranks_a_folder_by_the_maps_predict_writes_and_writes_what_a_user_needs(tmp_path, capsys):
    pool = _pool(tmp_path / "pool", 8)
    code, out, err = _cli(capsys, "suggest", "segmentation", pool, "--n", "4", "--out", tmp_path / "s", *TINY)
    assert code == 0, err
    assert f"skipped {pool / 'broken.png'}: " in err
    assert "4 of 9 image(s) suggested" in out
    chosen = (tmp_path / "s" / "suggested.txt").read_text().splitlines()
    assert len(chosen) == len(set(chosen)) == 4 and all(Path(p).is_file() for p in chosen)
    assert not {str(pool / "3.png"), str(pool / "3-copy.png")} <= set(chosen)  # one copy at most
    record = json.loads((tmp_path / "s" / "suggested.json").read_text())
    assert record["uncertainty"] == "flips" and [s["source"] for s in record["suggested"]] == chosen
    # independently: each image's mean uncertainty from the maps `predict --uncertainty` writes
    assert _cli(capsys, "predict", "segmentation", pool, "--out", tmp_path / "maps", "--uncertainty", *TINY)[0] == 0
    means = {str(pool / f"{p.name.split('.')[0]}.png"): float(load_map(p).mean())
             for p in (tmp_path / "maps").glob("*.uncertainty.png")}
    assert record["scores"].keys() == means.keys() and len(means) == 9
    assert all(abs(record["scores"][k] - means[k]) < 1e-4 for k in means)
    assert chosen[0] == max(means, key=means.get)  # the first pick is the most uncertain image
    sheet = Image.open(tmp_path / "s" / "suggested.png")
    assert sheet.size[1] > 112 and sheet.size[0] > 4 * 224
    # the list is ready to hand on: `@suggested.txt` names exactly the suggested images
    assert _cli(capsys, "predict", "segmentation", f"@{tmp_path / 's' / 'suggested.txt'}", "--out",
                tmp_path / "next", *TINY)[0] == 0
    assert len(list((tmp_path / "next").rglob("*.png"))) == 4


def test_the_python_api_suggests_with_each_estimator(tmp_path, tiny):
    pool = _pool(tmp_path / "pool", 5)
    model = builtin_task(tiny, "segmentation")
    for estimator, settings in (("flips", {}), ("samples", {"ensemble": 2})):
        report = adaptkit.suggest_labels(model, [str(pool)], 2, tmp_path / estimator, uncertainty=estimator, steps=2,
                                  progress=False, **settings)
        assert [s.rank for s in report.suggested] == [1, 2] and report.scored == 6
        assert report.suggested[0].uncertainty == max(json.loads(
            (tmp_path / estimator / "suggested.json").read_text())["scores"].values())
        assert list(report.skipped) == [str(pool / "broken.png")]


@pytest.mark.parametrize(("extra", "message"), [
    (["--n", "0"], "error: --n must be at least 1 (the number of images to suggest), got 0"),
    (["--n", "3", "--uncertainty", "samples"], "error: uncertainty 'samples' is the spread of several flow samples"),
])
def test_a_bad_request_ends_in_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    pool = _pool(tmp_path / "pool", 4)
    code, _, err = _cli(capsys, "suggest", "segmentation", pool, "--out", tmp_path / "s", *TINY, *extra)
    assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_a_collection_without_one_readable_image_is_refused_naming_a_file(tmp_path, capsys):
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "a.png").write_bytes(b"nothing")
    code, _, err = _cli(capsys, "suggest", "segmentation", tmp_path / "pool", "--n", "2", "--out", tmp_path / "s",
                        *TINY)
    assert code == 2 and f"error: nothing to suggest: none of {tmp_path / 'pool'} gave a readable image" in err
    assert f"{tmp_path / 'pool' / 'a.png'}: not a readable image" in err
