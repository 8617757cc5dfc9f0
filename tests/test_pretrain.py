"""Pretraining the embedded default: resumable to the bit, settings kept across resumes, bf16, parallel rendering,
and a written generalist folder that loads like any other (sharded weights included)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from adaptkit import pretrain as pretraining
from adaptkit.generalist import Generalist
from adaptkit.pretrain import PretrainConfig, build_pool, pretrain, pretrain_config
from adaptkit.recipe import RecipeError

#: A generalist small enough for seconds of pretraining; every other size comes from DEFAULT_SPEC.
SPEC = {"resolution": 32, "layers": 1, "heads": 2, "head_dim": 16, "vae_channels": [8, 16], "vae_norm_groups": 4,
        "clip_dim": 16, "t5_dim": 32, "num_frequencies": 8}
SETTINGS = {"scenes": 6, "val_scenes": 3, "vae_steps": 4, "vae_batch": 4, "steps": 6, "batch": 4, "warmup": 2,
            "checkpoint_every": 2, "spec": SPEC}


def config(**changes) -> PretrainConfig:
    return PretrainConfig(**{**SETTINGS, **changes})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {**load_file(folder / "vae" / "model.safetensors"),
            **load_file(folder / "generalist" / "model.safetensors")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    pretrain(out, config())
    return out


def test_an_interrupted_run_resumes_to_the_same_weights_and_record(uninterrupted, tmp_path, monkeypatch):
    original = pretraining.PretrainData.batch
    calls = {"n": 0}

    def interrupted(self, rows):
        calls["n"] += 1
        if calls["n"] == 4:  # the generalist's third step, after its first checkpoint (step 2)
            raise KeyboardInterrupt
        return original(self, rows)

    monkeypatch.setattr(pretraining.PretrainData, "batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "run", config())
    assert json.loads((tmp_path / "run" / "generalist" / "state.json").read_text())["step"] == 2
    monkeypatch.setattr(pretraining.PretrainData, "batch", original)
    pretrain(tmp_path / "run", pretrain_config(tmp_path / "run", {}))  # what `adaptkit pretrain --out` resumes with

    resumed, straight = weights(tmp_path / "run"), weights(uninterrupted)
    assert resumed.keys() == straight.keys()
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)
    log = (tmp_path / "run" / "generalist" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log] == ["step", "2", "4", "6"]  # every checkpoint once, none lost
    report = json.loads((tmp_path / "run" / "default" / "pretraining.json").read_text())
    assert report["training_seconds"]["generalist"] > 0 and report["zero_shot"]


def test_the_written_default_loads_and_reports_its_pretraining(uninterrupted, tmp_path):
    generalist = Generalist.from_pretrained(uninterrupted / "default", device="cpu")
    trained = load_file(uninterrupted / "generalist" / "model.safetensors")
    for name, tensor in generalist.denoiser.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], rtol=0, atol=0, msg=name)
    report = json.loads((uninterrupted / "default" / "pretraining.json").read_text())
    assert report["config"] == asdict(config()) and report["device"] == "cpu"
    assert set(report["zero_shot"]) >= {"vae_psnr_db", "depth/absrel", "point_segmentation/dice"}
    assert all(np.isfinite(value) for value in report["zero_shot"].values())

    # sharded weights (what a GPU run sends back in files of at most 16 MiB) reload to the same model
    generalist.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = list((tmp_path / "sharded" / "transformer").glob("*.safetensors"))
    assert len(shards) > 1 and all(shard.stat().st_size <= 40_000 for shard in shards)
    reloaded = Generalist.from_pretrained(tmp_path / "sharded", device="cpu")
    for name, tensor in generalist.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_a_resumed_run_keeps_its_settings(uninterrupted):
    assert pretrain_config(uninterrupted, {}) == config()
    assert pretrain_config(uninterrupted, {"steps": 12}).steps == 12  # a longer run may continue a shorter one
    with pytest.raises(RecipeError, match=r"lr was 0\.0005 in .*config\.json, not 0\.1; a resumed run keeps"):
        pretrain_config(uninterrupted, {"lr": 0.1})
    with pytest.raises(RecipeError, match="spec was"):
        pretrain_config(uninterrupted, {"spec": {"patch_size": 2}})


def test_a_run_continues_from_a_pretrained_generalist(uninterrupted, tmp_path):
    init = str(uninterrupted / "default")
    settings = {"init": init, "scenes": 6, "val_scenes": 3, "steps": 2, "batch": 4, "warmup": 1, "lr": 0.0}
    continued = pretrain_config(tmp_path / "run", settings)
    assert continued.spec == config().spec  # the sizes come from the generalist it continues
    pretrain(tmp_path / "run", continued, stages=("generalist",))

    start = Generalist.from_pretrained(init, device="cpu").state_dict()
    written = Generalist.from_pretrained(tmp_path / "run" / "default", device="cpu").state_dict()
    for name, tensor in start.items():  # lr 0: the continued weights are the ones it started from, VAE included
        torch.testing.assert_close(written[name], tensor, rtol=0, atol=0, msg=name)
    report = json.loads((tmp_path / "run" / "default" / "pretraining.json").read_text())
    assert report["init"] == json.loads((uninterrupted / "default" / "pretraining.json").read_text())
    assert report["zero_shot"]["vae_psnr_db"] == report["init"]["zero_shot"]["vae_psnr_db"]  # the same VAE
    for part in ("transformer", "point_encoder", "vae"):  # a loaded model's configs name no path of this machine
        assert "_name_or_path" not in json.loads((tmp_path / "run" / "default" / part / "config.json").read_text())
    assert report["config"]["init"] == init and "(6 scenes, 2 steps after 6 on 6)" in json.loads(
        (tmp_path / "run" / "default" / "generalist.json").read_text())["description"]


def test_a_continued_run_refuses_other_sizes_or_an_unreported_start(uninterrupted, tmp_path):
    with pytest.raises(RecipeError, match=r"init .*: spec\.layers is 2 here but 1 in .*pretraining\.json; a "
                                          r"continued run keeps the sizes"):
        pretrain(tmp_path / "run", config(init=str(uninterrupted / "default"), spec={**SPEC, "layers": 2}))
    assert not (tmp_path / "run").exists()  # refused before the run folder exists, so a corrected rerun starts
    Generalist.from_pretrained(uninterrupted / "default", device="cpu").save_pretrained(tmp_path / "bare")
    with pytest.raises(RecipeError, match=r"bare/pretraining\.json is missing; only a generalist written by"):
        pretrain_config(tmp_path / "run", {"init": str(tmp_path / "bare")})


def test_a_continued_run_resumes_only_from_the_start_it_began_with(uninterrupted, tmp_path):
    start = tmp_path / "start"
    Generalist.from_pretrained(uninterrupted / "default", device="cpu").save_pretrained(start)
    (start / "pretraining.json").write_text((uninterrupted / "default" / "pretraining.json").read_text())
    settings = {"init": str(start), "scenes": 6, "val_scenes": 3, "steps": 2, "batch": 4, "warmup": 1}
    pretrain(tmp_path / "run", pretrain_config(tmp_path / "run", settings), stages=("generalist",))
    pretrain(tmp_path / "run", pretrain_config(tmp_path / "run", {"steps": 3}), stages=("generalist",))  # same start

    changed = Generalist.from_pretrained(start, device="cpu")  # e.g. `init=default` after a new default shipped
    with torch.no_grad():
        next(changed.vae.parameters()).add_(1.0)
    changed.save_pretrained(start)
    written = weights_of(tmp_path / "run" / "default")
    with pytest.raises(RecipeError, match=r"init .*start': its vae weights have fingerprint \w+, but this run "
                                          r"started from \w+ .*init\.json\); resume with the generalist it started"):
        pretrain(tmp_path / "run", pretrain_config(tmp_path / "run", {"steps": 4}), stages=("generalist",))
    assert json.loads((tmp_path / "run" / "generalist" / "state.json").read_text())["step"] == 3  # nothing lost
    for name, tensor in weights_of(tmp_path / "run" / "default").items():
        torch.testing.assert_close(tensor, written[name], rtol=0, atol=0, msg=name)


def weights_of(generalist_folder: Path) -> dict[str, torch.Tensor]:
    return Generalist.from_pretrained(generalist_folder, device="cpu").state_dict()


def test_bf16_pretraining_trains_fp32_weights(tmp_path):
    pretrain(tmp_path / "run", config(precision="bf16", vae_steps=2, steps=2), stages=("vae", "generalist"))
    trained = weights(tmp_path / "run")
    assert all(tensor.dtype == torch.float32 and torch.isfinite(tensor).all() for tensor in trained.values())
    report = json.loads((tmp_path / "run" / "default" / "pretraining.json").read_text())
    assert all(np.isfinite(value) for value in report["zero_shot"].values())


@pytest.mark.slow
def test_rendering_processes_give_the_same_pool():
    one_images, one_items = build_pool(0, 6, config(), 32, workers=1)
    two_images, two_items = build_pool(0, 6, config(), 32, workers=2)
    assert len(one_items) == len(two_items)
    for a, b in zip(one_images, two_images, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(one_items, two_items, strict=True):
        assert (a.scene, a.task, a.prompt, a.points) == (b.scene, b.task, b.prompt, b.points)
        np.testing.assert_array_equal(a.target, b.target)
