"""Adapters that travel and share a base: the portable record, named adapters on one base, plain peft, the card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from huggingface_hub import ModelCard
from peft import PeftModel
from PIL import Image
from tiny_recipes import shadow_recipe

from adaptkit.adapters import AdaptedModel, AdapterMeta, load_adapters
from adaptkit.card import PIPELINE_TAGS, Evaluation, build_card, card_data
from adaptkit.cli import main
from adaptkit.inference import builtin_task
from adaptkit.recipe import load_recipe
from adaptkit.tiny import build_tiny_generalist
from adaptkit.training import train

BASE_RECIPE = shadow_recipe("shadow", data={"train_shots": 4, "val_shots": 2},
                            train={"steps": 6, "batch_size": 2, "val_every": 6, "warmup": 1, "lr": 1e-2, "seed": 0})


def _write_folder(root: Path, count: int, seed: int) -> Path:
    """A labelled folder (images/ and masks/ with matching stems) of random 32 px pairs."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for index in range(count):
        image = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{index:02d}.png")
        Image.fromarray(((image[..., 0] > 127) * 255).astype(np.uint8)).save(root / "masks" / f"{index:02d}.png")
    return root


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    """Two adapters on the tiny base for different tasks: one on a folder that is then deleted."""
    root = tmp_path_factory.mktemp("sharing")
    data = _write_folder(root / "lungs", 8, seed=1)
    folder_recipe = load_recipe({**BASE_RECIPE, "name": "red-mask", "task": {"prompt": "[[image2red]]"},
                                 "data": {"source": "folder", "path": str(data), "train_shots": 4, "val_shots": 2}})
    shadow = train(load_recipe({**BASE_RECIPE, "name": "shadow"}), root / "shadow", progress=False)
    red = train(folder_recipe, root / "red", progress=False)
    shutil.rmtree(data)  # the data it was trained on exists on no machine that pulls it
    return {"shadow": shadow.adapter, "red": red.adapter, "root": root}


@pytest.fixture
def images(rng) -> list[np.ndarray]:
    return [rng.random((32, 32, 3), dtype=np.float32) for _ in range(3)]


def _encoded(model: AdaptedModel, images: list[np.ndarray]) -> np.ndarray:
    return np.stack([members[0].image for members in model.predict_encoded(images, progress=False)])


def test_adapters_sharing_a_base_stay_independent(adapters, images):
    alone_a = _encoded(AdaptedModel.from_pretrained(adapters["shadow"]), images)
    alone_b = _encoded(AdaptedModel.from_pretrained(adapters["red"]), images)
    shared = build_tiny_generalist().to_runtime("cpu")
    zero_shot = builtin_task(shared, "depth")  # no adapter on the same base: all adapters off for it
    base_before = _encoded(zero_shot, images)
    a = AdaptedModel.from_pretrained(adapters["shadow"], generalist=shared)
    before_b = _encoded(a, images)
    b = AdaptedModel.from_pretrained(adapters["red"], generalist=shared)
    assert shared.denoiser is a.generalist.denoiser is b.generalist.denoiser  # one wrapped denoiser, two adapters
    assert sorted(shared.denoiser.peft_config) == ["red-mask", "shadow"]
    assert not np.array_equal(alone_a, alone_b)  # the two adapters do predict differently
    np.testing.assert_array_equal(before_b, alone_a)
    np.testing.assert_array_equal(_encoded(a, images), alone_a)  # loading B changed nothing A predicts
    np.testing.assert_array_equal(_encoded(b, images), alone_b)
    np.testing.assert_array_equal(_encoded(a, images), alone_a)  # and switching back and forth is exact
    # adapters switched off: the base's own prediction (peft's disabled path rounds differently, ~1e-7)
    np.testing.assert_allclose(_encoded(zero_shot, images), base_before, atol=1e-5)


def test_load_adapters_loads_each_base_once(adapters, images):
    models = load_adapters([adapters["shadow"], adapters["red"], adapters["shadow"]])
    assert models[0].generalist is models[1].generalist is models[2].generalist
    assert [m.adapter_name for m in models] == ["shadow", "red-mask", "shadow_2"]
    np.testing.assert_array_equal(_encoded(models[2], images), _encoded(models[0], images))


def test_an_adapter_folder_loads_with_plain_peft(adapters, images):
    """The README's plain-peft snippet: PeftModel.from_pretrained on the denoiser, then the prompt."""
    generalist = build_tiny_generalist().to_runtime("cpu")  # with its text encoders: it encodes the prompt
    generalist.denoiser = PeftModel.from_pretrained(generalist.denoiser, str(adapters["shadow"]))
    plain = generalist.predict(images, "[[image2shadow]]", steps=1, guidance=1.0, deterministic=True, progress=False)
    ours = _encoded(AdaptedModel.from_pretrained(adapters["shadow"]), images)
    np.testing.assert_allclose(np.stack([p.image for p in plain]), ours, atol=1e-5)


def test_the_record_is_portable(adapters):
    meta = AdapterMeta.load(adapters["red"])
    assert meta.base == {"generalist": "tiny"}  # what identifies it anywhere; no SD3/DICEPTION ids for tiny
    assert not Path(meta.recipe["data"]["path"]).exists()


def test_eval_on_your_own_data_never_rechecks_the_recorded_recipe(adapters, tmp_path, capsys):
    mine = _write_folder(tmp_path / "mine", 5, seed=7)
    code = main(["eval", str(adapters["red"]), "--data", str(mine), "--out", str(tmp_path / "eval")])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["images"] == 5 and record["split"] == "mine"
    grid = np.asarray(Image.open(tmp_path / "eval" / "grid.png").convert("L"))
    assert grid.shape == (18 + 5 * 130 - 2, 3 * 130 - 2)  # a title band over 5 rows of 3 pictures
    for column in range(3):  # input / prediction / target: dark title text over each column, white around it
        band = grid[:18, column * 130:column * 130 + 128]
        assert band.min() < 100 and np.median(band) == 255
    capsys.readouterr()
    assert main(["eval", str(adapters["red"]), "--out", str(tmp_path / "eval2")]) == 2  # the recorded data is gone
    assert "not on this machine; pass --data FOLDER" in capsys.readouterr().err


def test_predict_runs_several_adapters_on_one_base(adapters, images, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index, image in enumerate(images):
        Image.fromarray((image * 255).astype(np.uint8)).save(inputs / f"{index}.png")
    code = main(["predict", str(adapters["shadow"]), str(adapters["red"]), str(inputs), "--out", str(tmp_path / "o"),
                 "--raw"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["red", "shadow"]  # runs/NAME/adapter -> NAME
    code = main(["predict", str(adapters["red"]), str(inputs), "--out", str(tmp_path / "single"), "--raw"])
    assert code == 0
    for index in range(3):  # the same files as a single-adapter run, which writes straight into --out
        single = np.asarray(Image.open(tmp_path / "single" / f"{index}.encoded.png"))
        several = np.asarray(Image.open(tmp_path / "o" / "red" / f"{index}.encoded.png"))
        np.testing.assert_array_equal(single, several)
    code = main(["predict", "--adapter", str(adapters["red"]), "--adapter", str(adapters["shadow"]),
                 str(inputs / "0.png"), "--out", str(tmp_path / "opt")])
    assert code == 0 and sorted(p.name for p in (tmp_path / "opt").iterdir()) == ["red", "shadow"]
    capsys.readouterr()
    code = main(["predict", str(adapters["red"]), str(inputs), "--out", str(tmp_path / "o" / "red"), "--raw"])
    assert code == 0 and "3 already complete" in capsys.readouterr().out  # with or without the other adapter


def test_the_card_parses_and_its_metadata_round_trips(adapters, tmp_path):
    meta = AdapterMeta.load(adapters["shadow"])
    card = build_card(meta, [Evaluation("test", {"dice": 0.5, "iou": 0.25}, 10)], {"grid": "eval-test/grid.png"},
                      "alice/shadow", sweep={"best_params": {"train.lr": 0.003}, "trials": 8})
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.to_dict() == card.data.to_dict()
    data = loaded.data
    assert data.library_name == "peft" and data.pipeline_tag == "image-segmentation"
    assert data.license == "apache-2.0" and "adaptkit" in data.tags
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert results[("test", "dice")] == 0.5 and results[("test", "iou")] == 0.25
    assert results[("validation", "dice")] == pytest.approx(meta.metrics["dice"], abs=1e-6)
    body = loaded.text
    for expected in ("[[image2shadow]]", "binary_mask", "train images | 4", "![predictions](eval-test/grid.png)",
                     "input / prediction / target", "train.lr | 0.003", "adaptkit predict alice/shadow",
                     'AdaptedModel.from_pretrained("alice/shadow")', "PeftModel.from_pretrained"):
        assert expected in body, expected
    written = ModelCard.load(adapters["shadow"] / "README.md")  # the card written at train time parses too
    assert written.data.to_dict() == card_data(meta, [Evaluation("validation", {
        k: v for k, v in meta.metrics.items() if k != "step"}, 2)]).to_dict()


def test_the_released_base_is_named_by_its_hub_ids():
    meta = AdapterMeta(name="lung", prompt="[[image2lung]]", codec="depth", codec_args={}, objective="single_step",
                       inference={}, base={"generalist": "diception", "sd3": "stabilityai/stable-diffusion-3-medium-"
                                           "diffusers", "weights": "Canyu/DICEPTION"}, base_fingerprint="0" * 16,
                       recipe={}, versions={})
    data = yaml.safe_load(f"{card_data(meta).to_yaml()}")
    assert data["base_model"] == ["stabilityai/stable-diffusion-3-medium-diffusers", "Canyu/DICEPTION"]
    assert data["pipeline_tag"] == "depth-estimation" and data["license_name"] == "stabilityai-ai-community"
    local = AdapterMeta(**{**meta.__dict__, "base": {"generalist": "diception", "sd3": "/models/sd3",
                                                     "weights": "/models/DICEPTION_v1.pth"}})
    assert "base_model" not in yaml.safe_load(card_data(local).to_yaml())  # local paths are not Hub ids
    assert {PIPELINE_TAGS.get(c, "image-to-image") for c in ("semantic", "instances", "keypoints", "normals")} == {
        "image-segmentation", "keypoint-detection", "image-to-image"}


def test_a_hub_base_is_recorded_with_the_commit_that_was_loaded(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from adaptkit.record import base_record

    def cache(repo_id: str, filename: str, commit: str) -> None:
        folder = tmp_path / f"models--{repo_id.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(commit)
        (folder / "snapshots" / commit / filename).parent.mkdir(parents=True, exist_ok=True)
        (folder / "snapshots" / commit / filename).write_text("{}")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    cache("someone/generalist", "generalist.json", "a" * 40)
    cache("stabilityai/stable-diffusion-3-medium-diffusers", "transformer/config.json", "b" * 40)
    cache("Canyu/DICEPTION", "DICEPTION_v1.pth", "c" * 40)
    assert base_record({"generalist": "someone/generalist", "resolution": None}) == {
        "generalist": "someone/generalist", "revision": "a" * 40}
    assert base_record({"generalist": "diception", "sd3": "stabilityai/stable-diffusion-3-medium-diffusers",
                        "weights": "Canyu/DICEPTION", "resolution": 768}) == {
        "generalist": "diception", "resolution": 768, "sd3": "stabilityai/stable-diffusion-3-medium-diffusers",
        "sd3_revision": "b" * 40, "weights": "Canyu/DICEPTION", "weights_revision": "c" * 40}
    local = tmp_path / "my-weights.pth"
    local.write_bytes(b"")
    assert base_record({"generalist": "diception", "sd3": "/models/sd3", "weights": str(local)}) == {
        "generalist": "diception", "sd3": "/models/sd3", "weights": str(local)}  # local paths as given
