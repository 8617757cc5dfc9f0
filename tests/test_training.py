"""Training LoRA adapters on the tiny generalist: the artifact, reloading, resuming, failures, DDP."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_recipes import shadow_recipe

from adaptkit.adapters import AdaptedModel, AdapterError, resolve_targets
from adaptkit.data import check_all, open_source
from adaptkit.inference import evaluate, predict_files
from adaptkit.recipe import load_recipe
from adaptkit.tiny import TinySpec, build_tiny_generalist
from adaptkit.training import SingleStep, TrainingError, TrainingInterrupted, train

RECIPE = shadow_recipe("shadow-test", data={"train_shots": 6, "val_shots": 4},
                       train={"steps": 8, "batch_size": 4, "val_every": 4, "warmup": 2, "lr": 3e-3, "seed": 0})


def recipe(**overrides):
    return load_recipe(RECIPE, overrides)


def _losses(out: Path) -> list[float]:
    with (out / "logs" / "metrics.csv").open() as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(recipe(), out, progress=False)
    return out


def test_training_writes_a_complete_shareable_adapter(trained):
    adapter = trained / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "adaptkit.json", "prompt_embeds.safetensors",
                 "README.md"):
        assert (adapter / name).is_file(), name
    meta = json.loads((adapter / "adaptkit.json").read_text())
    assert meta["prompt"] == "[[image2shadow]]" and meta["codec"] == "binary_mask"
    assert meta["objective"] == "single_step"
    assert len(meta["samples"]["train"]) == 6 and len(meta["samples"]["val"]) == 4
    assert meta["base_fingerprint"] == build_tiny_generalist().fingerprint()
    assert 0 < meta["trainable_parameters"] < meta["base_parameters"]
    assert set(meta["metrics"]) >= {"dice", "iou"}
    history = json.loads((trained / "metrics.json").read_text())["history"]
    assert [row["step"] for row in history] == [0, 4, 8]  # the zero-shot point, then every val_every steps
    assert (trained / "curve.png").stat().st_size > 0
    assert yaml.safe_load((trained / "recipe.yaml").read_text())["name"] == "shadow-test"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4


def test_reloaded_adapter_reproduces_the_validation_metrics(trained):
    model = AdaptedModel.from_pretrained(trained / "adapter")  # loads its base, 'tiny', by itself
    assert not model.generalist.prompts.has_text_encoders  # prompts come from the adapter folder
    meta = model.meta
    source = open_source(load_recipe(meta.recipe).data, model.codec)
    report = evaluate(model, check_all(source, meta.samples["val"]), progress=False)
    for name in ("dice", "iou", "precision", "recall"):
        assert report.metrics[name] == pytest.approx(meta.metrics[name], abs=1e-6), name


def test_single_step_adapter_predictions_ignore_the_seed(trained, rng):
    model = AdaptedModel.from_pretrained(trained / "adapter")
    image = rng.random((32, 32, 3), dtype=np.float32)
    first = model.predict_encoded([image], seed=1, progress=False)[0][0].image
    second = model.predict_encoded([image], seed=2, progress=False)[0][0].image
    np.testing.assert_array_equal(first, second)


def test_single_step_adapter_refuses_multi_step_sampling(trained):
    model = AdaptedModel.from_pretrained(trained / "adapter")
    with pytest.raises(AdapterError, match=r"single_step objective.*steps=8"):
        model.predict_encoded([np.zeros((8, 8, 3), np.float32)], steps=8, progress=False)


def test_adapter_on_another_base_fails_clearly(trained):
    other = build_tiny_generalist(TinySpec(seed=1)).to_runtime("cpu")
    with pytest.raises(AdapterError, match="fingerprint"):
        AdaptedModel.from_pretrained(trained / "adapter", generalist=other)


def test_eval_writes_metrics_report_and_grid(trained, tmp_path):
    model = AdaptedModel.from_pretrained(trained / "adapter")
    source = open_source(load_recipe(model.meta.recipe).data, model.codec)
    report = evaluate(model, check_all(source, model.meta.samples["val"]), tmp_path / "eval", progress=False)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["metrics"] == pytest.approx(report.metrics) and saved["images"] == 4
    assert "| dice |" in (tmp_path / "eval" / "report.md").read_text()
    assert (tmp_path / "eval" / "grid.png").stat().st_size > 0


def test_predict_writes_native_outputs_and_skips_unreadable_files(trained, tmp_path, rng):
    from PIL import Image

    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8)).save(inputs / "a.png")
    Image.fromarray((rng.random((25, 25)) * 255).astype(np.uint8)).save(inputs / "b.jpg")
    (inputs / "broken.png").write_bytes(b"not a png")
    model = AdaptedModel.from_pretrained(trained / "adapter")
    report = predict_files(model, [str(inputs)], tmp_path / "out", raw=True, progress=False)
    assert set(report.written) == {"a", "b"} and list(report.skipped) == [str(inputs / "broken.png")]
    mask = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert mask.shape == (20, 30) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "out" / "b.encoded.png").is_file()


def test_training_lowers_the_loss(tmp_path):
    out = tmp_path / "run"
    train(recipe(**{"train.steps": 40, "train.val_every": 40, "data.val_shots": 1, "train.lr": 1e-2}), out,
          progress=False)
    losses = _losses(out)
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])


def test_adapter_targets_resolve_to_the_denoisers_projections(tiny):
    # which weights train is `test_pixel_loss_trains_only_lora_weights`'s question; this one is which layers
    names = resolve_targets(tiny.denoiser, "attention")
    assert len(names) == 2 * 8 - 1  # two blocks of 8 projections; the last block has no to_add_out
    assert all(".transformer_blocks." in name and ".attn." in name for name in names)  # embedders stay frozen
    assert len(resolve_targets(tiny.denoiser, "attention+mlp")) > len(names)
    with pytest.raises(AdapterError, match="to_qq"):
        resolve_targets(tiny.denoiser, ["to_qq"])


class _Interrupt(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 5:
            raise KeyboardInterrupt


def _checkpoint_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_an_interrupted_run_resumes_to_the_same_adapter(tmp_path):
    settings = {"train.steps": 8, "train.val_every": 4}
    train(recipe(**settings), tmp_path / "whole", progress=False)
    with pytest.raises(TrainingInterrupted, match=r"interrupted at step 5 of 8.*--resume"):
        train(recipe(**settings), tmp_path / "split", progress=False, callbacks=[_Interrupt()])
    assert torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    with pytest.raises(TrainingError, match="--resume"):
        train(recipe(**settings), tmp_path / "split", progress=False)
    with pytest.raises(TrainingError, match="recipe differs"):
        train(recipe(**{**settings, "train.lr": 1e-2}), tmp_path / "split", progress=False, resume=True)
    train(recipe(**settings), tmp_path / "split", progress=False, resume=True)
    records = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("whole", "split")]
    assert records[0] == records[1] and records[0]["best"]  # best and history survive the resume
    with pytest.raises(TrainingError, match="is finished"):
        train(recipe(**settings), tmp_path / "split", progress=False, resume=True)
    assert json.loads((tmp_path / "split" / "metrics.json").read_text()) == records[0]  # nothing changed
    whole, split = _checkpoint_weights(tmp_path / "whole"), _checkpoint_weights(tmp_path / "split")
    assert whole.keys() == split.keys() and whole
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=0, atol=0)


def test_a_non_finite_loss_stops_and_keeps_the_last_good_adapter(tmp_path, monkeypatch):
    original = SingleStep.loss
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        losses = original(self, *args, **kwargs)
        return {"loss": losses["loss"] * float("nan")} if calls["n"] == 3 else losses

    monkeypatch.setattr(SingleStep, "loss", failing)
    with pytest.raises(TrainingError, match="became nan at step 2"):
        train(recipe(), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    AdaptedModel.from_pretrained(tmp_path / "run" / "adapter")  # and it loads


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    command = [sys.executable, "-m", "adaptkit.cli", "train", str(path), "--out", str(tmp_path / "ddp"),
               "train.strategy=ddp", "train.devices=2", "train.accelerator=cpu", "train.steps=4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ddp" / "adapter" / "adapter_model.safetensors").is_file()
    assert "dice" in json.loads((tmp_path / "ddp" / "metrics.json").read_text())["best"]


def test_pixel_loss_trains_only_lora_weights(tmp_path):
    generalist = build_tiny_generalist().to_runtime("cpu")
    before = {name: tensor.clone() for name, tensor in generalist.state_dict().items()}
    train(recipe(**{"train.pixel_loss": True, "train.steps": 4, "data.val_shots": 1}), tmp_path / "run",
          generalist=generalist, progress=False)
    after = generalist.state_dict()  # train() hands the denoiser back without its LoRA layers
    assert set(after) <= set(before)
    for name, tensor in after.items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0, msg=name)
    lora = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert lora and all("lora_" in name for name in lora)
    trained = _checkpoint_weights(tmp_path / "run")
    assert all("lora_" in name for name in trained)
    assert any(tensor.abs().max() > 0 for name, tensor in trained.items() if "lora_B" in name)  # B starts at 0


class _Signal(L.Callback):
    """Sends this process SIGTERM (what a cluster scheduler sends) before the batch at `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_stops_with_a_checkpoint_and_any_number_of_resumes_keep_the_whole_record(tmp_path):
    settings = {"train.steps": 10, "train.val_every": 4}
    train(recipe(**settings), tmp_path / "whole", progress=False)
    for step in (2, 3, 6):  # mid-interval, just before a validation, after one
        with pytest.raises(TrainingInterrupted, match=r"interrupted at step \d+ of 10.*--resume"):
            train(recipe(**settings), tmp_path / "split", progress=False, callbacks=[_Signal(step)], resume=step != 2)
    train(recipe(**settings), tmp_path / "split", progress=False, resume=True)
    for name in ("metrics.json", "logs/metrics.csv"):
        assert (tmp_path / "split" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    whole, split = _checkpoint_weights(tmp_path / "whole"), _checkpoint_weights(tmp_path / "split")
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=0, atol=0)
