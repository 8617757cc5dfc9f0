"""Sweeps on the tiny generalist: the shared base, the search space, pruning, the record, kill -9, parallel workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from tiny_recipes import shadow_recipe

import adaptkit.generalist as generalist_module
from adaptkit.cli import main
from adaptkit.recipe import RecipeError, load_recipe
from adaptkit.sweep import JOURNAL_FILE, open_storage
from adaptkit.tiny import build_tiny_generalist
from adaptkit.training import train

RECIPE = shadow_recipe(
    "sweep-test", data={"train_shots": 6, "val_shots": 4, "test_shots": 4},
    train={"steps": 6, "batch_size": 4, "val_every": 2, "warmup": 1, "lr": 3e-3, "seed": 0},
    sweep={"trials": 4, "startup_trials": 1, "metric": "iou",
           "space": {"train.lr": {"low": 1e-4, "high": 3e-2, "log": True}, "adapter.rank": [2, 4]}},
)


def write_recipe(folder: Path, **sections) -> Path:
    data = json.loads(json.dumps(RECIPE))
    for section, values in sections.items():
        data[section].update(values)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def load(out: Path) -> optuna.Study:
    storage = open_storage(None, out, 1)
    return optuna.load_study(study_name=RECIPE["name"], storage=storage)


def _state(generalist) -> dict:
    prompts = generalist.prompts
    return {"weights": {k: v.clone() for k, v in generalist.state_dict().items()},
            "config": asdict(generalist.config), "denoiser": generalist.denoiser,
            "encoders": (prompts.text_encoder, prompts.text_encoder_2, prompts.text_encoder_3),
            "cache": {p: [t.clone() for t in prompts.cache.get(p)] for p in prompts.cache.prompts},
            "modes": [m.training for m in generalist.modules()],
            "checkpointing": generalist.denoiser.gradient_checkpointing}


def test_a_trial_leaves_the_shared_base_as_it_found_it_and_hashes_it_once(tmp_path, monkeypatch):
    base = build_tiny_generalist().to_runtime("cpu")
    base.prompts.encode(["[[image2depth]]"])
    hashed = []
    real = generalist_module.weights_fingerprint
    monkeypatch.setattr(generalist_module, "weights_fingerprint", lambda m: hashed.append(m) or real(m))
    before = _state(base)
    recipe = load_recipe(RECIPE, ["base.resolution=48", "train.gradient_checkpointing=true"])
    train(recipe, tmp_path / "run0", generalist=base, progress=False, cache_dir=tmp_path / "cache")
    encoded = []
    encode = base.encode_posterior
    base.encode_posterior = lambda pixels: encoded.append(len(pixels)) or encode(pixels)
    train(recipe, tmp_path / "run1", generalist=base, progress=False, cache_dir=tmp_path / "cache")
    del base.encode_posterior
    assert encoded == []  # the second run read every latent from the shared cache
    after = _state(base)
    assert after["config"] == before["config"]  # base.resolution=48 stayed the run's own
    assert after["denoiser"] is before["denoiser"] and not hasattr(base.denoiser, "peft_config")
    assert all(a is b for a, b in zip(after["encoders"], before["encoders"], strict=True))
    assert all(encoder is not None for encoder in after["encoders"])
    assert after["cache"].keys() == before["cache"].keys() == {"[[image2depth]]"}
    assert all(torch.equal(a, b) for p in before["cache"] for a, b in zip(after["cache"][p], before["cache"][p],
                                                                        strict=True))
    assert after["modes"] == before["modes"] and after["checkpointing"] == before["checkpointing"]
    assert after["weights"].keys() == before["weights"].keys()
    assert all(torch.equal(after["weights"][k], before["weights"][k]) for k in before["weights"])  # bit-exact
    # one hash of the denoiser and one of the VAE for both runs; a changed weight is noticed
    assert len(hashed) == 2 and sum(m is base.vae for m in hashed) == 1
    first = base.fingerprint()
    with torch.no_grad():
        next(base.denoiser.parameters()).add_(1.0)
    assert base.fingerprint() != first


@pytest.mark.parametrize(("space", "message"), [
    ({"train.lrr": [1e-3]}, "sweep.space.train.lrr: not a recipe key; did you mean 'train.lr'"),
    ({"adapter.rank": [4, 0]}, "sweep.space.adapter.rank: value 0 is rejected: adapter.rank must be >= 1"),
    ({"train.lr": ["fast"]}, "sweep.space.train.lr: value 'fast' is rejected: train.lr: expected float"),
    ({"train.steps": {"low": 10, "high": 5}}, "sweep.space.train.steps: low must be < high"),
    ({"train.lr": {"low": 0, "high": 1, "log": True}}, "sweep.space.train.lr: a log range needs low > 0"),
    ({"base.generalist": ["tiny"]}, "sweep.space.base.generalist: cannot be swept"),
    ({"base.resolution": {"low": 32, "high": 64, "step": 8}},
     "sweep.space.base.resolution: value 40 is rejected: base.resolution must be a multiple of 16"),
    ({"train.warmup": {"lo": 1, "high": 5}}, "sweep.space.train.warmup: expected a list of choices or a range"),
])
def test_search_space_errors_name_the_key(space, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe({**RECIPE, "sweep": {"space": space}})


@pytest.mark.slow
def test_sweep_with_pruning_writes_every_file_and_keeps_the_best_adapter(tmp_path):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "sweep"
    assert main(["sweep", str(recipe), "--out", str(out)]) == 0
    record = json.loads((out / "sweep.json").read_text())
    for name in ("sweep.json", "trials.csv", JOURNAL_FILE, "history.png", "intermediate.png", "importances.png",
                 "parallel.png", "best/adapter/adapter_model.safetensors", "best/adapter/adaptkit.json",
                 "best/adapter/README.md", "best/eval/metrics.json", "best/eval/report.md", "best/eval/grid.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    states = [t["state"] for t in record["trials"]]
    assert len(states) == 4 and "pruned" in states and "complete" in states
    for trial in record["trials"]:  # reported at every validation, keyed on the global step; pruned ones stop
        steps = [int(s) for s in trial["intermediate_values"]]
        assert steps == [2, 4, 6] if trial["state"] == "complete" else steps == [2, 4, 6][:len(steps)] and \
            0 < len(steps) < 3
    completed = [t for t in record["trials"] if t["state"] == "complete"]
    best = max(completed, key=lambda t: t["value"])
    assert record["best"]["number"] == best["number"] and record["best"]["params"] == best["params"]
    meta = json.loads((out / "best" / "adapter" / "adaptkit.json").read_text())
    assert meta["recipe"]["train"]["lr"] == best["params"]["train.lr"]
    assert meta["recipe"]["adapter"]["rank"] == best["params"]["adapter.rank"]
    assert meta["metrics"]["iou"] == pytest.approx(best["value"])  # selected on validation ...
    assert meta["sweep"]["trial"] == best["number"] and meta["sweep"]["best_params"] == best["params"]
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "best" / "adapter" / "README.md")
    assert "## Sweep" in card.text and "train.lr" in card.text  # the card says which trial it is
    tested = json.loads((out / "best" / "eval" / "metrics.json").read_text())
    assert tested["ids"] == meta["samples"]["test"] and tested["metrics"] == record["test"]  # ... tested once
    trial_adapter = Path(record["trials"][best["number"]]["adapter"])
    assert (trial_adapter / "adapter_model.safetensors").read_bytes() == \
        (out / "best" / "adapter" / "adapter_model.safetensors").read_bytes()
    # re-running a finished sweep resumes it: nothing more to run, the record is the same
    assert main(["sweep", str(recipe), "--out", str(out)]) == 0
    assert len(json.loads((out / "sweep.json").read_text())["trials"]) == 4


@pytest.mark.slow
def test_kill_9_mid_trial_then_rerun_loses_nothing(tmp_path):
    recipe = write_recipe(tmp_path, train={"steps": 40, "val_every": 20}, sweep={"trials": 3, "pruner": "none"})
    out = tmp_path / "sweep"
    worker = subprocess.Popen([sys.executable, "-m", "adaptkit.cli", "sweep", str(recipe), "--out", str(out)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / "trials" / "0001" / "recipe.yaml").is_file():  # the second trial is training
                break
            time.sleep(0.05)
        else:
            pytest.fail("the sweep never started its second trial")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    first = load(out).trials[0]
    assert first.state == TrialState.COMPLETE
    assert main(["sweep", str(recipe), "--out", str(out)]) == 0
    trials = load(out).trials
    assert trials[0].datetime_start == first.datetime_start and trials[0].value == first.value  # kept, not re-run
    assert trials[1].state == TrialState.FAIL and "is gone" in trials[1].user_attrs["fail_reason"]
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].params == trials[1].params and retried[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3  # total = trials


@pytest.mark.slow
def test_a_failing_trial_is_recorded_with_its_reason_and_the_sweep_goes_on(tmp_path):
    recipe = write_recipe(tmp_path, sweep={"trials": 2, "sampler": "grid", "space": {"train.lr": [3e-3, 1e30]}})
    assert main(["sweep", str(recipe), "--out", str(tmp_path / "sweep")]) == 0
    record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    by_lr = {t["params"]["train.lr"]: t for t in record["trials"]}
    assert by_lr[1e30]["state"] == "fail" and "the training loss became" in by_lr[1e30]["fail_reason"]
    assert by_lr[3e-3]["state"] == "complete" and record["best"]["params"] == {"train.lr": 3e-3}


@pytest.mark.slow
def test_ctrl_c_records_the_running_trial_as_failed_and_the_rerun_completes_it(tmp_path, capsys):
    recipe = write_recipe(tmp_path, sweep={"trials": 3, "pruner": "none"})
    out = tmp_path / "sweep"

    def press_ctrl_c_in_the_second_trial() -> None:
        while not (out / "trials" / "0001" / "recipe.yaml").is_file():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c_in_the_second_trial, daemon=True).start()
    assert main(["sweep", str(recipe), "--out", str(out)]) == 130
    assert "re-run the same command to resume" in capsys.readouterr().err
    trials = load(out).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs["fail_reason"].startswith("interrupted") and trials[2].params == trials[1].params
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again afterwards
    assert main(["sweep", str(recipe), "--out", str(out)]) == 0
    trials = load(out).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.COMPLETE]


def _two_workers(tmp_path: Path, storage: list[str]) -> list[optuna.trial.FrozenTrial]:
    recipe = write_recipe(tmp_path, train={"steps": 30, "val_every": 10}, sweep={"trials": 4, "pruner": "none"})
    out = tmp_path / "sweep"
    assert main(["sweep", str(recipe), "--out", str(out), "--workers", "2", *storage]) == 0
    record = json.loads((out / "sweep.json").read_text())
    assert [t["state"] for t in record["trials"]] == ["complete"] * 4 and (out / "best/eval/metrics.json").is_file()
    assert all(Path(t["adapter"]).is_dir() for t in record["trials"])
    return load(out).trials if not storage else optuna.load_study(study_name=RECIPE["name"],
                                                                  storage=storage[1]).trials


@pytest.mark.slow
def test_two_workers_share_one_study_on_the_journal_file(tmp_path):
    trials = _two_workers(tmp_path, [])
    assert len({t.user_attrs["owner"] for t in trials}) == 2  # both processes ran trials
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4  # and did not draw alike


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL server on a unix socket (no TCP), run as the postgres user when we are root."""
    missing = [tool for tool in ("initdb", "pg_ctl") if not shutil.which(tool)]
    if os.geteuid() == 0 and not shutil.which("runuser"):
        missing.append("runuser")
    if missing:
        pytest.skip(f"PostgreSQL server binaries not on PATH: {', '.join(missing)}")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is missing (pip install 'psycopg[binary]')")
    folder = Path(tempfile.mkdtemp(prefix="pg"))  # short: a unix socket path is limited to ~100 characters
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(folder, "postgres")
    data, log = folder / "data", folder / "server.log"
    subprocess.run([*as_postgres, "initdb", "-D", str(data), "-U", "postgres", "--auth=trust"], check=True,
                   capture_output=True)
    subprocess.run([*as_postgres, "pg_ctl", "-D", str(data), "-l", str(log), "-w", "-o",
                    f"-c listen_addresses='' -k {folder}", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={folder}"
    finally:
        subprocess.run([*as_postgres, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_study_on_a_postgresql_server(tmp_path, postgres):
    trials = _two_workers(tmp_path, ["--storage", postgres])
    assert len({t.user_attrs["owner"] for t in trials}) == 2
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4


def test_sqlite_is_refused_with_several_workers(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    assert main(["sweep", str(recipe), "--out", str(tmp_path / "s"), "--workers", "2", "--storage",
                 f"sqlite:///{tmp_path}/s.db"]) == 2
    assert "SQLite locks under parallel writers" in capsys.readouterr().err
