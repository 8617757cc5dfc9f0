"""Prediction and evaluation at scale: streamed batches, shards, resumable outputs, the inputs users have, bad
output folders, and (slow) two CPU processes against one and a kill -9 in the middle of a run."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from adaptkit.cli import main
from adaptkit.data import FolderSource
from adaptkit.inference import PROGRESS_FOLDER, builtin_task, evaluate, list_inputs, plan_batches, shard

TINY = ["segmentation", "--base", "tiny", "--steps", "2", "--batch-size", "2"]


def _image(path: Path, seed: int, size: tuple[int, int] = (20, 28)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@given(count=st.integers(0, 40), batch_size=st.integers(1, 7), world=st.integers(1, 5))
def test_shards_cover_every_batch_once_and_take_equal_steps(count, batch_size, world):
    batches = plan_batches(count, batch_size)
    assert [i for batch in batches for i in batch] == list(range(count))
    pending = list(range(len(batches)))[::2] + list(range(len(batches)))[1::2]  # any subset, any order
    shards = [shard(pending, rank, world) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1  # the same number of steps on every rank: nobody waits alone
    taken = [number for s in shards for number in s if number is not None]
    assert sorted(taken) == sorted(pending)  # each batch once: none twice, none left out, padding is no batch


def test_outputs_are_named_relative_to_the_common_folder_of_the_inputs(tmp_path, monkeypatch):
    for name in ("slides/a/x.png", "slides/b/x.png", "slides/b/deep/y.png", "slides/top.jpg", "slides/top.png"):
        _image(tmp_path / name, 0)
    monkeypatch.chdir(tmp_path)
    names = lambda *inputs, **kw: [item.name for item in list_inputs(list(inputs), **kw).items]  # noqa: E731
    assert names("slides") == ["top", "top_1"]  # x.jpg and x.png side by side: the second gets _1
    assert names("slides", recursive=True) == ["a/x", "b/deep/y", "b/x", "top", "top_1"]
    assert names("slides/a", "slides/b") == ["a/x", "b/x"]  # the a/x.png and b/x.png stay apart
    assert names("slides/**/x.png") == ["a/x", "b/x"]  # relative to the glob's leading folder
    assert names("slides/b/deep/y.png") == ["y"]  # a file alone: its name
    (tmp_path / "lists").mkdir()
    absolute = tmp_path / "slides" / "b" / "x.png"
    (tmp_path / "lists" / "paths.txt").write_text(f"# a comment\n../slides/a/x.png\n\n{absolute}\n")
    listing = list_inputs(["@lists/paths.txt"])  # relative lines are read from the list's own folder
    assert [item.name for item in listing.items] == ["a/x", "b/x"]
    assert Path(listing.items[0].path).resolve() == tmp_path / "slides" / "a" / "x.png"
    (tmp_path / "nested" / "inner").mkdir(parents=True)
    _image(tmp_path / "nested" / "inner" / "z.png", 0)
    assert "pass --recursive" in list_inputs(["nested"]).empty["nested"]  # only sub-folders: say how to reach them
    assert names("nested", recursive=True) == ["inner/z"]


def test_predict_keeps_sub_folders_reads_lists_and_skips_a_bad_file_in_the_middle(tmp_path, capsys):
    for index, name in enumerate(("in/a/x.png", "in/a/y.png", "in/b/x.png", "in/b/z.png")):
        _image(tmp_path / name, index)
    (tmp_path / "in" / "a" / "broken.png").write_bytes(b"not a png")
    code, out, err = _cli(capsys, "predict", *TINY, tmp_path / "in", "--recursive", "--out", tmp_path / "o")
    assert code == 0, err
    assert f"skipped {tmp_path / 'in/a/broken.png'}: not a readable image" in err
    assert "4 prediction(s) written" in out and "1 input(s) unreadable" in out
    assert set(_files(tmp_path / "o")) == {"a/x.png", "a/y.png", "b/x.png", "b/z.png", "predictions.json"}
    record = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert record["written"] == {"a/x": ["a/x.png"], "a/y": ["a/y.png"], "b/x": ["b/x.png"], "b/z": ["b/z.png"]}
    assert list(record["skipped"]) == [str(tmp_path / "in/a/broken.png")]
    # the same images through @paths.txt give the same bytes (same names, same order, so the same seeds)
    (tmp_path / "paths.txt").write_text("\n".join(f"in/{n}" for n in ("a/broken.png", "a/x.png", "a/y.png",
                                                                       "b/x.png", "b/z.png")))
    code, _, err = _cli(capsys, "predict", *TINY, f"@{tmp_path / 'paths.txt'}", "--out", tmp_path / "l")
    assert code == 0, err
    assert _files(tmp_path / "l") == _files(tmp_path / "o")


def test_a_dataset_saved_to_disk_predicts_like_the_same_images_as_files(tmp_path, capsys):
    import datasets

    paths = [_image(tmp_path / "files" / f"{index}.png", index) for index in range(3)]
    rows = {"picture": [Image.open(p) for p in paths], "label": [0, 1, 2]}
    features = datasets.Features({"picture": datasets.Image(), "label": datasets.Value("int32")})
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(tmp_path / "ds")
    code, _, err = _cli(capsys, "predict", *TINY, tmp_path / "ds", "--split", "test", "--image-column", "picture",
                        "--out", tmp_path / "from-dataset")
    assert code == 0, err
    code, _, err = _cli(capsys, "predict", *TINY, tmp_path / "files", "--out", tmp_path / "from-files")
    assert code == 0, err
    made = _files(tmp_path / "from-dataset")
    assert sorted(made) == ["predictions.json", "test/0.png", "test/1.png", "test/2.png"]
    code, _, err = _cli(capsys, "predict", *TINY, f"hf:{tmp_path / 'ds'}", "--split", "test", "--image-column",
                        "picture", "--out", tmp_path / "from-hf")  # hf:NAME as datasets resolves it (here offline)
    assert code == 0, err
    assert _files(tmp_path / "from-hf").keys() == made.keys()
    assert all(_files(tmp_path / "from-hf")[f"test/{i}.png"] == made[f"test/{i}.png"] for i in range(3))
    files = _files(tmp_path / "from-files")
    for index in range(3):  # row i is image i: the same pixels, seed and batch, so the same bytes
        assert made[f"test/{index}.png"] == files[f"{index}.png"]
    assert _cli(capsys, "predict", *TINY, tmp_path / "ds", "--split", "banana", "--out", tmp_path / "x")[0] == 2
    code, _, err = _cli(capsys, "predict", *TINY, tmp_path / "ds", "--split", "test", "--out", tmp_path / "x")
    assert code == 2 and "no column 'image'" in err and "--image-column" in err and "Traceback" not in err


def test_a_rerun_skips_complete_outputs_says_so_and_overwrite_redoes_all(tmp_path, capsys):
    for index in range(5):
        _image(tmp_path / "in" / f"{index}.png", index)
    argv = ["predict", *TINY, tmp_path / "in", "--out", tmp_path / "o"]
    assert _cli(capsys, *argv)[0] == 0
    first = _files(tmp_path / "o")
    assert not (tmp_path / "o" / PROGRESS_FOLDER).exists()  # a finished run leaves only its outputs
    (tmp_path / "o" / "3.png").unlink()  # one output lost
    code, out, _ = _cli(capsys, *argv)
    assert code == 0 and "2 prediction(s) written" in out and "3 already complete" in out  # 3's batch: 2 and 3
    assert _files(tmp_path / "o") == first
    code, out, _ = _cli(capsys, *argv)
    assert code == 0 and "0 prediction(s) written" in out and "5 already complete" in out
    code, out, _ = _cli(capsys, *argv, "--overwrite")
    assert code == 0 and "5 prediction(s) written" in out and "0 already complete" in out
    assert _files(tmp_path / "o") == first
    code, _, err = _cli(capsys, *argv[:-2], "--seed", "7", "--out", tmp_path / "o")
    assert code == 2 and "other settings (seed differ)" in err and "--overwrite" in err


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "No space left on device"),
                                              (errno.EROFS, "Read-only file system")])
def test_an_output_folder_that_fills_up_or_turns_read_only_ends_in_one_line_and_a_rerun_finishes_the_job(
        tmp_path, capsys, monkeypatch, code, reason):
    import adaptkit.inference as inference

    for index in range(6):
        _image(tmp_path / "in" / f"{index}.png", index)
    assert _cli(capsys, "predict", *TINY, tmp_path / "in", "--out", tmp_path / "whole")[0] == 0
    real_replace, calls = os.replace, {"n": 0}

    def filling(source, target):
        if str(target).endswith(".png") and PROGRESS_FOLDER not in str(target):
            calls["n"] += 1
            if calls["n"] > 3:
                raise OSError(code, reason)
        return real_replace(source, target)

    monkeypatch.setattr(inference.os, "replace", filling)
    status, _, err = _cli(capsys, "predict", *TINY, tmp_path / "in", "--out", tmp_path / "o")
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert reason in lines[0] and "wrote 3 prediction(s)" in lines[0] and "rerun" in lines[0]
    monkeypatch.setattr(inference.os, "replace", real_replace)
    status, out, _ = _cli(capsys, "predict", *TINY, tmp_path / "in", "--out", tmp_path / "o")
    # 0-2 were written; 2's batch (2, 3) is predicted again whole, so its bytes are those of the whole run
    assert status == 0 and "2 already complete" in out and "4 prediction(s) written" in out
    assert _files(tmp_path / "o") == _files(tmp_path / "whole")


def test_an_output_path_blocked_by_a_file_ends_in_one_line(tmp_path, capsys):
    _image(tmp_path / "in" / "a" / "x.png", 0)
    _image(tmp_path / "in" / "b" / "x.png", 1)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "b").write_text("a file where the sub-folder b must go")
    code, _, err = _cli(capsys, "predict", *TINY, tmp_path / "in", "--recursive", "--out", tmp_path / "o")
    assert code == 2 and "cannot write into" in err and "Traceback" not in err and "bug" not in err
    assert (tmp_path / "o" / "a" / "x.png").is_file()


def _labelled(folder: Path, count: int) -> Path:
    """A folder of images/ and masks/ (a different rectangle of foreground each)."""
    (folder / "masks").mkdir(parents=True)
    for index in range(count):
        _image(folder / "images" / f"{index}.png", index, (16, 16))
        mask = np.zeros((16, 16), np.uint8)
        mask[index % 8:, : 4 + index] = 255
        Image.fromarray(mask).save(folder / "masks" / f"{index}.png")
    return folder


def test_eval_streams_skips_a_broken_pair_and_scores_the_rest_as_in_memory(tmp_path, tiny, capsys):
    data = _labelled(tmp_path / "data", 5)
    (data / "images" / "2.png").write_bytes(b"broken")
    code, out, err = _cli(capsys, "eval", "--task", "segmentation", "--base", "tiny", "--data", data, "--steps", "2",
                          "--batch-size", "2", "--workers", "2", "--out", tmp_path / "eval")
    assert code == 0, err
    assert "skipped 2:" in err and "1 skipped" in out
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["images"] == 4 and record["ids"] == ["0", "1", "3", "4"] and list(record["skipped"]) == ["2"]
    # the same pairs held in memory, scored with the Python API: the same metrics (pairs keep their place, so
    # their seeds; the broken pair leaves a gap in its batch, as here)
    model = builtin_task(tiny, "segmentation")
    source = FolderSource(data, model.codec)
    report = evaluate(model, source, ids=source.ids(), steps=2, batch_size=2, progress=False)
    assert report.metrics == record["metrics"] and report.skipped.keys() == {"2"}


def _subprocess(*argv, env=None, **kwargs) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent), **(env or {})}
    return subprocess.run([sys.executable, "-m", "adaptkit.cli", *map(str, argv)], capture_output=True, text=True,
                          env=environment, timeout=600, **kwargs)


@pytest.mark.slow
def test_two_cpu_processes_give_the_bytes_and_metrics_of_one(tmp_path):
    for index in range(9):  # 9 inputs in batches of 2: 5 batches, so one rank gets a padding step
        _image(tmp_path / "in" / ("a" if index % 2 else "b") / f"{index}.png", index)
    (tmp_path / "in" / "a" / "bad.png").write_bytes(b"x")
    data = _labelled(tmp_path / "data", 7)
    results = {}
    for processes in (1, 2):
        ddp = ["--accelerator", "cpu", "--devices", processes, "--strategy", "ddp"]
        made = _subprocess("predict", *TINY, tmp_path / "in", "--recursive", "--out", tmp_path / f"p{processes}",
                           "--uncertainty", "flips", *ddp)
        assert made.returncode == 0, made.stderr[-3000:]
        assert f"on {processes} process(es)" in made.stdout
        scored = _subprocess("eval", "--task", "segmentation", "--base", "tiny", "--data", data, "--steps", "2",
                             "--batch-size", "2", "--out", tmp_path / f"e{processes}", "--uncertainty", *ddp)
        assert scored.returncode == 0, scored.stderr[-3000:]
        results[processes] = json.loads((tmp_path / f"e{processes}" / "metrics.json").read_text())
    one, two = _files(tmp_path / "p1"), _files(tmp_path / "p2")
    assert len(one) == 19 and one == two  # 9 predictions, their 9 uncertainty maps and predictions.json, byte for byte
    record = json.loads(one["predictions.json"])
    assert len(record["written"]) == 9 and list(record["skipped"]) == [str(tmp_path / "in/a/bad.png")]
    assert results[1]["metrics"] == results[2]["metrics"] and results[2]["images"] == 7
    assert "error_auroc" in results[2]["metrics"]  # its histograms summed across the processes
    assert results[1]["ids"] == results[2]["ids"]
    assert (tmp_path / "e1" / "grid.png").read_bytes() == (tmp_path / "e2" / "grid.png").read_bytes()


@pytest.mark.slow
def test_kill_9_mid_run_then_a_rerun_gives_exactly_the_uninterrupted_outputs(tmp_path):
    for index in range(40):
        _image(tmp_path / "in" / f"{index:02d}.png", index, (24, 24))
    argv = ["predict", "segmentation", "--base", "tiny", "--batch-size", "2", tmp_path / "in"]
    assert _subprocess(*argv, "--out", tmp_path / "whole").returncode == 0
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    process = subprocess.Popen([sys.executable, "-m", "adaptkit.cli", *map(str, argv), "--out", tmp_path / "o"],
                               env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = tmp_path / "o" / PROGRESS_FOLDER
    deadline = time.time() + 300
    while time.time() < deadline and sum(len(p.read_text().splitlines()) for p in journal.glob("*.jsonl")) < 5:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = sum(len(p.read_text().splitlines()) for p in journal.glob("*.jsonl"))
    assert 5 <= done < 40, "the run was not killed in its middle"
    assert not (tmp_path / "o" / "predictions.json").exists()
    rerun = _subprocess(*argv, "--out", tmp_path / "o")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{done - done % 2} already complete" in rerun.stdout or f"{done} already complete" in rerun.stdout
    assert _files(tmp_path / "o") == _files(tmp_path / "whole")  # no temporary file left, every byte the same


@pytest.mark.slow
def test_a_failing_rank_ends_every_rank_with_one_line(tmp_path):
    for index in range(6):
        _image(tmp_path / "in" / ("a" if index < 3 else "b") / f"{index}.png", index)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "b").write_text("a file where the sub-folder b must go")  # whichever rank writes b/ fails
    started = time.time()
    made = _subprocess("predict", *TINY, tmp_path / "in", "--recursive", "--out", tmp_path / "o",
                       "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp")
    assert made.returncode == 2, made.stderr[-3000:]
    errors = [line for line in made.stderr.splitlines() if line.startswith("error:")]
    assert errors and all("cannot write into" in line and "rank" in line for line in errors), made.stderr[-3000:]
    assert "Traceback" not in made.stderr and time.time() - started < 300


def test_several_models_share_one_pass_and_write_what_each_alone_writes(tmp_path, tiny):
    from adaptkit.inference import predict_files

    for index in range(3):
        _image(tmp_path / "in" / f"{index}.png", index)
    models = [builtin_task(tiny, "segmentation"), builtin_task(tiny, "depth")]
    reports = predict_files(models, [str(tmp_path / "in")], [tmp_path / "seg", tmp_path / "depth"], progress=False,
                            steps=2, batch_size=2)
    assert [sorted(r.written) for r in reports] == [["0", "1", "2"]] * 2
    for model, name in zip(models, ("seg", "depth"), strict=True):
        alone = predict_files(model, [str(tmp_path / "in")], tmp_path / f"{name}-alone", progress=False, steps=2,
                              batch_size=2)
        assert sorted(alone.written) == ["0", "1", "2"]
        assert _files(tmp_path / f"{name}-alone") == _files(tmp_path / name)


@pytest.mark.parametrize(("options", "message"), [
    (["--devices", "banana"], "--devices 'banana'"),
    (["--strategy", "ddp_banana"], "--strategy 'ddp_banana'"),
    (["--accelerator", "tpu"], "--accelerator 'tpu'"),
    (["--num-nodes", "0"], "--num-nodes 0"),
    (["--workers", "-1"], "--workers -1"),
    (["--batch-size", "0"], "batch size"),
])
@pytest.mark.parametrize("command", ["predict", "eval"])
def test_placement_options_are_checked_like_trains_recipe_keys(tmp_path, capsys, options, message, command):
    _image(tmp_path / "in" / "0.png", 0)
    if command == "predict":
        argv = ["predict", "segmentation", "--base", "tiny", tmp_path / "in", "--out", tmp_path / "o"]
    else:
        argv = ["eval", "--task", "segmentation", "--base", "tiny", "--data", _labelled(tmp_path / "data", 2)]
    code, _, err = _cli(capsys, *argv, *options)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_an_unreadable_input_stays_listed_on_a_rerun_and_is_predicted_once_fixed(tmp_path, capsys):
    for index in range(4):
        _image(tmp_path / "in" / f"{index}.png", index)
    broken = tmp_path / "in" / "1.png"
    broken.write_bytes(b"broken")
    argv = ["predict", *TINY, tmp_path / "in", "--out", tmp_path / "o"]
    assert _cli(capsys, *argv)[0] == 0
    code, out, err = _cli(capsys, *argv)  # nothing to do: the broken input is still broken, and still said so
    assert code == 0 and "0 prediction(s) written" in out and "1 input(s) unreadable" in out
    assert f"skipped {broken}" in err
    assert list(json.loads((tmp_path / "o" / "predictions.json").read_text())["skipped"]) == [str(broken)]
    _image(broken, 1)
    code, out, _ = _cli(capsys, *argv)  # fixed: predicted now (with its batch, 0 and 1)
    assert code == 0 and "2 prediction(s) written" in out and "0 input(s) unreadable" in out
    record = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert list(record["written"]) == ["0", "1", "2", "3"] and record["skipped"] == {}
