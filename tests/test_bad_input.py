"""A corpus of bad input, as a hostile but realistic user supplies it: recipes, overrides, data folders, adapter
folders, checkpoints, predict and eval inputs. For every case: a non-zero exit, no traceback, and a message
naming the file, key or value at fault; for bad data, nothing trained (no adapter folder written).

Almost every case stops before any model loads; the few that need one use the tiny generalist.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from adaptkit import cli
from adaptkit.cli import main
from adaptkit.recipe import load_recipe
from adaptkit.training import TrainingInterrupted, train

SIZE = 16
PAIRS = 8


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(capsys, *argv: str, message: str) -> str:
    """Run the CLI and check it refused as a user deserves; return stderr."""
    code, _, err = run(capsys, *argv)
    assert code not in (0, None), err
    assert "Traceback" not in err and "bug in adaptkit" not in err, err
    assert message.lower() in err.lower(), err
    return err


def masks(count: int = PAIRS, seed: int = 0) -> list[np.ndarray]:
    """Bool masks, each with a different square of foreground."""
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        mask = np.zeros((SIZE, SIZE), bool)
        r, c = rng.integers(0, SIZE // 2, 2)
        mask[r:r + 6, c:c + 6] = True
        result.append(mask)
    return result


def write_folder(root: Path, targets: list | None = None, suffix: str = ".png") -> Path:
    """images/{i}.png and masks/{i}.png; `targets` are PIL images or arrays (default: 0/255 masks)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    targets = targets if targets is not None else [m.astype(np.uint8) * 255 for m in masks()]
    for index, target in enumerate(targets):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "images" / f"{index}.png")
        image = target if isinstance(target, Image.Image) else Image.fromarray(target)
        image.save(root / "masks" / f"{index}{suffix}")
    return root


def write_recipe(path: Path, data: Path | None = None, **sections) -> Path:
    recipe = {"name": "bad-input", "task": {"prompt": "[[image2thing]]", "codec": "binary_mask"},
              "base": {"generalist": "tiny"},
              "data": {"source": "folder", "path": str(data), "train_shots": 5, "val_shots": 3}
              if data else {"source": "synth", "synth_task": "shadow", "synth_resolution": 32, "train_shots": 4,
                            "val_shots": 2},
              "adapter": {"rank": 2, "alpha": 2},
              "train": {"steps": 2, "batch_size": 2, "val_every": 2, "warmup": 0, "lr": 1e-3},
              "inference": {"batch_size": 4}}
    for section, values in sections.items():
        if isinstance(values, dict):
            recipe.setdefault(section, {}).update(values)
        else:
            recipe[section] = values
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def good_data(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def good_recipe(tmp_path_factory, good_data) -> Path:
    return write_recipe(tmp_path_factory.mktemp("recipe") / "recipe.yaml", good_data)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A finished tiny run (2 steps): its adapter folder and checkpoint are copied and damaged below."""
    out = tmp_path_factory.mktemp("trained") / "run"
    recipe = load_recipe(yaml.safe_load(write_recipe(out.parent / "r.yaml").read_text()))
    train(recipe, out, progress=False)
    return out


@pytest.fixture
def adapter(run_folder, tmp_path) -> Path:
    copy = tmp_path / "adapter"
    shutil.copytree(run_folder / "adapter", copy)
    return copy


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------------ recipe values
VALUE_CASES = [
    (["train.monitor=nope"], "train.monitor: unknown metric 'nope'"),
    (["train.monitor=boundary_f", "eval.metrics=[dice]"], "not among the validation metrics"),
    (["eval.metrics=[dicee]"], "did you mean 'dice'"),
    (["eval.metrics=[miou]"], "unknown metric 'miou'"),
    (["train.devices=banana"], "train.devices 'banana'"),
    (["train.devices=0"], "train.devices"),
    (["train.devices=-3"], "train.devices"),
    (["train.devices=1,a"], "train.devices"),
    (["train.accelerator=banana"], "train.accelerator 'banana'"),
    (["train.accelerator=tpu"], "train.accelerator 'tpu'"),
    (["train.accelerator=mps"], "train.accelerator 'mps'"),
    (["train.strategy=ddp_banana"], "train.strategy 'ddp_banana'"),
    (["train.strategy=5"], "train.strategy '5'"),
    (["train.seed=-1"], "train.seed must be >= 0"),
    (["data.seed=-1"], "data.seed must be >= 0"),
    (["inference.seed=-1"], "inference.seed must be >= 0"),
    (["train.weight_decay=-1"], "train.weight_decay must be >= 0"),
    (["train.grad_clip=-1"], "train.grad_clip must be >= 0"),
    (["train.early_stop=-1"], "train.early_stop must be >= 0"),
    (["inference.batch_size=0"], "inference.batch_size must be >= 1"),
    (["inference.batch_size=-4"], "inference.batch_size must be >= 1"),
    (["adapter.targets=[]"], "adapter.targets [] must name at least one layer"),
    (["adapter.targets=5"], "adapter.targets '5' is not a preset"),
    (["adapter.targets=atention"], "did you mean 'attention'"),
    (["adapter.targets=['']"], "adapter.targets"),
    (["adapter.targets={a: 1}"], "adapter.targets"),
    (["base.resolution=65536"], "base.resolution must be a multiple of 16"),
    (["base.resolution=4112"], "from 16 to 4096"),
    (["base.resolution=24"], "base.resolution"),
    (["base.resolution=8"], "base.resolution"),
    (["base.resolution=-16"], "base.resolution"),
    (["base.resolution=big"], "base.resolution"),
    (["name=../../x"], "name '../../x' must be a plain name"),
    (["name=.hidden"], "name '.hidden'"),
    (["name=a/b"], "name 'a/b'"),
    (["name="], "name ''"),
    (["train.steps=0"], "train.steps must be >= 1"),
    (["train.steps=abc"], "train.steps: expected int"),
    (["train.steps=2.5"], "train.steps"),
    (["train.lr=0"], "train.lr must be > 0"),
    (["train.lr=-1e-4"], "train.lr must be > 0"),
    (["train.lr=fast"], "train.lr"),
    (["train.lr=[1,"], "line 1, column"),
    (["train.lr={"], "not valid YAML"),
    (["train.batch_size=0"], "train.batch_size must be >= 1"),
    (["train.grad_accum=0"], "train.grad_accum must be >= 1"),
    (["train.warmup=-1"], "train.warmup must be >= 0"),
    (["train.val_every=0"], "train.val_every must be >= 1"),
    (["train.objective=banana"], "train.objective: 'banana' is not one of"),
    (["train.precision=64"], "train.precision"),
    (["train.pixel_loss=maybe"], "train.pixel_loss"),
    (["train.stepz=3"], "did you mean 'steps'"),
    (["trian.steps=3"], "did you mean 'train'"),
    (["train=5"], "train"),
    (["adapter.rank=0"], "adapter.rank must be >= 1"),
    (["adapter.alpha=0"], "adapter.alpha must be > 0"),
    (["adapter.dropout=1"], "adapter.dropout must be in [0, 1)"),
    (["adapter.dropout=-0.1"], "adapter.dropout"),
    (["data.train_shots=0"], "data.train_shots must be >= 1"),
    (["data.val_shots=-1"], "data.val_shots must be >= 0"),
    (["data.test_shots=-2"], "data.test_shots"),
    (["data.train_shots=1000"], "were asked"),
    (["data.source=banana"], "data.source"),
    (["data.path=/nonexistent/folder"], "/nonexistent/folder"),
    (["data.synth_resolution=2"], "data.synth_resolution must be >= 8"),
    (["inference.steps=0"], "inference.steps must be >= 1"),
    (["inference.steps=4"], "inference.steps must be 1"),
    (["inference.ensemble=0"], "inference.ensemble must be >= 1"),
    (["inference.guidance=-1"], "inference.guidance must be >= 0"),
    (["task.codec=banana"], "unknown codec 'banana'"),
    (["task.codec=binary_mask_"], "binary_mask"),
    (["task.codec_args={colour: [1, 2, 3]}"], "did you mean 'color'"),
    (["task.codec_args={color: [0, 0, 0]}"], "color"),
    (["task.codec_args={color: red}"], "color"),
    (["task.prompt= "], "task.prompt is empty"),
    (["no-equals-sign"], "no-equals-sign"),
]


@pytest.mark.parametrize(("overrides", "message"), VALUE_CASES, ids=[" ".join(c[0]) for c in VALUE_CASES])
def test_bad_recipe_values_are_refused_at_check(capsys, good_recipe, overrides, message):
    refused(capsys, "check", good_recipe, *overrides, message=message)


def test_a_dice_style_prompt_on_the_command_line_stays_a_string(capsys, good_recipe):
    code, out, err = run(capsys, "check", good_recipe, "task.prompt=[[image2x]]")
    assert code == 0, err
    assert yaml.safe_load(out.split("# ok")[0])["task"]["prompt"] == "[[image2x]]"


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.batch_size=64"], "train.batch_size 64 is larger than the 5 training images"),
    (["train.warmup=5"], "train.warmup 5 >= train.steps 2"),
    (["adapter.rank=64"], "adapter.rank 64 is above the layer width 32"),
])
def test_suspicious_but_legal_values_warn(capsys, good_recipe, overrides, message):
    code, _, err = run(capsys, "check", good_recipe, *overrides)
    assert code == 0 and f"warning: {message}" in err, err


# ------------------------------------------------------------------------------------------ recipe files
RECIPE_FILES = {
    "utf16": (lambda text: text.encode("utf-16"), "not UTF-8 text (it looks like UTF-16)"),
    "latin1": (lambda text: (text + "# café\n").encode("latin-1"), "not UTF-8 text"),
    "binary": (lambda text: bytes(range(256)) * 4, "not UTF-8"),
    "nul": (lambda text: b"\x00" * 20, "not valid YAML (unacceptable character #x0000"),
    "unclosed": (lambda text: (text + "extra: [1, 2\n").encode(), "not valid YAML (line"),
    "tab": (lambda text: (b"name: x\n\tbad: 1\n"), "not valid YAML (line 2"),
    "list": (lambda text: b"- a\n- b\n", "expected a mapping"),
    "scalar": (lambda text: b"just words\n", "expected a mapping"),
    "empty": (lambda text: b"", "empty (0 bytes)"),
    "unknown-key": (lambda text: (text + "trainer: {steps: 3}\n").encode(), "did you mean 'train'"),
    "section-scalar": (lambda text: b"name: x\ntrain: 5\n", "train: expected a mapping"),
    "bom": (lambda text: b"\xef\xbb\xbf" + text.encode() + b"nope: 1\n", "unknown key 'nope'"),
}


@pytest.mark.parametrize("kind", list(RECIPE_FILES))
def test_broken_recipe_files_are_refused_naming_the_file(capsys, tmp_path, good_recipe, kind):
    make, message = RECIPE_FILES[kind]
    path = tmp_path / f"{kind}.yaml"
    path.write_bytes(make(good_recipe.read_text()))
    err = refused(capsys, "check", path, message=message)
    assert path.name in err


@pytest.mark.parametrize(("argv", "message"), [
    (["check", "no-such-recipe"], "neither a file nor a bundled recipe"),
    (["check", "lung-xry"], "did you mean 'lung-xray'"),
])
def test_unknown_recipes_are_refused(capsys, argv, message):
    refused(capsys, *argv, message=message)


def test_a_recipe_that_is_a_folder_is_refused(capsys, tmp_path):
    refused(capsys, "check", tmp_path, message=str(tmp_path))


# ------------------------------------------------------------------------------------------ data folders
def _palette(mask: np.ndarray, palette: list[int]) -> Image.Image:
    image = Image.fromarray(mask.astype(np.uint8), "L").convert("P")
    image.putpalette(palette)
    return image


def _rgba(mask: np.ndarray, colour_varies: bool) -> Image.Image:
    array = np.zeros((SIZE, SIZE, 4), np.uint8)
    array[..., 3] = mask * 255
    if colour_varies:
        array[..., 0] = (~mask) * 255  # colour says the opposite of alpha
    return Image.fromarray(array, "RGBA")


def _with(index: int, value, base=None) -> list:
    targets = list(base if base is not None else [m.astype(np.uint8) * 255 for m in masks()])
    targets[index] = value
    return targets


def _minority() -> np.ndarray:
    mask = masks()[0].astype(np.uint8) * 255
    mask[0, :5] = 128
    return mask


DATA_CASES = {
    "all-empty": (lambda: [np.zeros((SIZE, SIZE), np.uint8)] * PAIRS, "masks is empty (no foreground pixel)"),
    "all-full": (lambda: [np.full((SIZE, SIZE), 255, np.uint8)] * PAIRS, "all foreground"),
    "label-map-012": (lambda: _with(3, (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 3).astype(np.uint8)),
                      "3.png holds values 0, 1, 2"),
    "palette-3-index": (lambda: _with(2, _palette(np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 3,
                                                  [0, 0, 0, 255, 0, 0, 0, 255, 0])), "2.png shows 3 colours"),
    "minority-128": (lambda: _with(1, _minority()), "128 (5 px)"),
    "alpha-disagrees": (lambda: _with(4, _rgba(masks()[4], colour_varies=True)), "4.png: both its colours"),
    "mask-size": (lambda: _with(5, np.zeros((SIZE, SIZE + 2), np.uint8)), "but its image is"),
    "grey-ramp": (lambda: _with(6, np.tile(np.arange(SIZE, dtype=np.uint8) * 16, (SIZE, 1))), "6.png holds values"),
    "uint16-labels": (lambda: _with(0, (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 4).astype(np.uint16)),
                      "0.png holds values"),
}


def _data_case(root: Path, kind: str) -> Path:
    if kind in DATA_CASES:
        return write_folder(root, DATA_CASES[kind][0]())
    data = write_folder(root)
    if kind == "truncated-image":
        path = data / "images" / "2.png"
        path.write_bytes(path.read_bytes()[:40])
    elif kind == "zero-byte-image":
        (data / "images" / "3.png").write_bytes(b"")
    elif kind == "text-as-mask":
        (data / "masks" / "1.png").write_text("not a png")
    elif kind == "image-without-mask":
        (data / "masks" / "7.png").unlink()
    elif kind == "mask-without-image":
        (data / "images" / "7.png").unlink()
    elif kind == "no-masks-folder":
        shutil.rmtree(data / "masks")
    elif kind == "empty-folders":
        for path in [*data.glob("images/*"), *data.glob("masks/*")]:
            path.unlink()
    elif kind == "oversized":
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(data / "images" / "0.png")
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(data / "masks" / "0.png")
    return data


DATA_KINDS = {**{k: v[1] for k, v in DATA_CASES.items()},
              "truncated-image": "2.png", "zero-byte-image": "3.png: image is empty", "text-as-mask": "1.png",
              "image-without-mask": "7.png", "mask-without-image": "7.png", "no-masks-folder": "masks/",
              "empty-folders": "holds no pairs", "oversized": "above the limit of 1,000 pixels"}


@pytest.mark.parametrize("command", ["check", "train"])
@pytest.mark.parametrize("kind", list(DATA_KINDS))
def test_bad_data_is_refused_listing_the_file_and_nothing_trains(capsys, tmp_path, kind, command):
    data = _data_case(tmp_path / "data", kind)
    recipe = write_recipe(tmp_path / "recipe.yaml", data)
    out = tmp_path / "run"
    extra = ["--out", out] if command == "train" else []
    refused(capsys, "--max-image-pixels", 1000, command, recipe, *extra, message=DATA_KINDS[kind])
    assert not (out / "adapter").exists()


def test_every_offending_file_is_listed_in_one_pass(capsys, tmp_path):
    labels = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 3).astype(np.uint8)
    data = write_folder(tmp_path / "data", _with(1, labels, _with(5, labels)))
    err = refused(capsys, "check", write_recipe(tmp_path / "r.yaml", data), message="2 of 8 chosen pairs")
    assert "1.png" in err and "5.png" in err


@pytest.mark.parametrize("command", ["check", "train"])
def test_point_prompts_off_the_image_or_too_many_are_refused_naming_every_file(capsys, tmp_path, command):
    data = write_folder(tmp_path / "data")
    (data / "prompts").mkdir()
    prompts = {"0": [[1000, 1000]], "3": [[1, 1]] * 50, "5": [[2, 3], [SIZE, 0]], "6": [[float("nan"), 1]],
               "7": [[SIZE - 1, SIZE - 1], [0, 0]]}  # 7 is legal: the last pixel and the first
    for stem, points in prompts.items():
        (data / "prompts" / f"{stem}.json").write_text(json.dumps({"points": points}))
    recipe = write_recipe(tmp_path / "r.yaml", data)
    extra = ["--out", tmp_path / "run"] if command == "train" else []
    err = refused(capsys, command, recipe, "data.train_shots=6", "data.val_shots=2", *extra,
                  message="4 of 8 chosen pairs cannot be used")
    assert "0.json: point(s) (1000, 1000) lie outside the 16 x 16 image" in err
    assert "3.json: 50 point prompts, but at most 5 per image" in err
    assert "5.json: point(s) (16, 0) lie outside" in err and "6.json: point(s) (nan, 1)" in err
    assert "7.json" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("target", "note"), [
    (lambda m: _palette(m, [255, 255, 255, 0, 0, 0]), "read by the colours it shows"),  # index 0 shown white
    (lambda m: _rgba(m, colour_varies=False), "read from the alpha channel"),
])
def test_unambiguous_masks_are_read_as_they_look_and_said_so(capsys, tmp_path, target, note):
    from adaptkit.codecs import build_codec

    truth = masks()
    shown = [~m if "colours" in note else m for m in truth]  # a white index 0 shows the inverse of the indices
    data = write_folder(tmp_path / "data", [target(m) for m in truth])
    code, _, err = run(capsys, "check", write_recipe(tmp_path / "r.yaml", data))
    assert code == 0 and note in err, err
    codec = build_codec("binary_mask")
    for index, mask in enumerate(shown):
        assert np.array_equal(codec.load_target(data / "masks" / f"{index}.png"), mask)


def test_a_depth_model_is_not_scored_on_masks(capsys, good_data):
    refused(capsys, "eval", "--task", "depth", "--base", "tiny", "--data", good_data, message="look like masks")


def test_the_run_folder_stays_inside_runs_whatever_the_name(capsys, tmp_path, good_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", good_data, name="../../escape")
    refused(capsys, "train", recipe, message="must be a plain name")
    assert not (tmp_path.parent.parent / "escape").exists()


# ------------------------------------------------------------------------------------------ adapter folders
def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a weight, not the header
    path.write_bytes(bytes(data))


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


ADAPTER_DAMAGE = {
    "no-config": (lambda a: (a / "adapter_config.json").unlink(), "adapter_config.json: adapter config (PEFT) is "
                                                                  "missing"),
    "config-not-json": (lambda a: (a / "adapter_config.json").write_text("{r: 4"), "not valid JSON (line 1"),
    "config-not-lora": (lambda a: _edit_json(a / "adapter_config.json", lambda d: d.update(peft_type="IA3")),
                        "not a PEFT LoRA config"),
    "no-meta": (lambda a: (a / "adaptkit.json").unlink(), "adaptkit.json is missing"),
    "meta-not-json": (lambda a: (a / "adaptkit.json").write_text("{"), "adaptkit.json: adapter record is not valid"),
    "meta-extra-key": (lambda a: _edit_json(a / "adaptkit.json", lambda d: d.update(colour=1)),
                       "unknown key(s) colour"),
    "meta-missing-key": (lambda a: _edit_json(a / "adaptkit.json", lambda d: d.pop("codec")),
                         "missing key(s) codec"),
    "meta-objective": (lambda a: _edit_json(a / "adaptkit.json", lambda d: d.update(objective="banana")),
                       "objective 'banana'"),
    "meta-wrong-type": (lambda a: _edit_json(a / "adaptkit.json", lambda d: d.update(prompt=5)),
                        "prompt must be a str"),
    "meta-list": (lambda a: (a / "adaptkit.json").write_text("[1, 2]"), "expected a JSON object"),
    "no-weights": (lambda a: (a / "adapter_model.safetensors").unlink(), "adapter_model.safetensors: adapter "
                                                                         "weights is missing"),
    "zero-byte-weights": (lambda a: (a / "adapter_model.safetensors").write_bytes(b""), "empty (0 bytes)"),
    "truncated-weights": (lambda a: (a / "adapter_model.safetensors").write_bytes(
        (a / "adapter_model.safetensors").read_bytes()[:100]), "not a readable safetensors file"),
    "random-weights": (lambda a: (a / "adapter_model.safetensors").write_bytes(os.urandom(4096)),
                       "not a readable safetensors file"),
    "flipped-byte": (lambda a: _flip_byte(a / "adapter_model.safetensors"), "differs from the"),
    "no-prompts": (lambda a: (a / "prompt_embeds.safetensors").unlink(), "prompt embeddings is missing"),
    "random-prompts": (lambda a: (a / "prompt_embeds.safetensors").write_bytes(os.urandom(512)),
                       "prompt_embeds.safetensors"),
    "codec-unknown": (lambda a: _edit_json(a / "adaptkit.json", lambda d: d.update(codec="banana")),
                      "unknown codec 'banana'"),
}


@pytest.mark.parametrize("damage", list(ADAPTER_DAMAGE))
@pytest.mark.parametrize("command", ["predict", "eval"])
def test_damaged_adapter_folders_are_refused_and_never_sent_to_the_hub(capsys, tmp_path, adapter, photo, damage,
                                                                       command, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("tried the Hub for a local adapter folder")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    make, message = ADAPTER_DAMAGE[damage]
    make(adapter)
    argv = [adapter, photo, "--out", tmp_path / "p"] if command == "predict" else [adapter]
    refused(capsys, command, *argv, message=message)


def _record(adapter: Path, change) -> Path:
    _edit_json(adapter / "adaptkit.json", change)
    return adapter


@pytest.mark.parametrize(("key", "value"), [("steps", 0), ("steps", -2), ("ensemble", 0), ("ensemble", -1),
                                            ("batch_size", 0), ("guidance", -1.0), ("seed", -5)])
@pytest.mark.parametrize("command", ["predict", "eval"])
def test_recorded_inference_settings_out_of_range_are_refused_at_load(capsys, tmp_path, adapter, photo, key, value,
                                                                      command):
    _record(adapter, lambda d: d["inference"].update({key: value}))
    argv = [adapter, photo, "--out", tmp_path / "p"] if command == "predict" else [adapter, "--split", "val"]
    err = refused(capsys, command, *argv, message=f"inference.{key} must be")
    assert f"{adapter / 'adaptkit.json'}: not a valid adapter record" in err
    assert not (tmp_path / "p").exists() and not (adapter.parent / "eval-val").exists()


def test_an_adapter_for_another_base_names_the_adapter_the_base_and_the_first_key(capsys, tmp_path, adapter, photo):
    from safetensors.torch import load_file, save_file

    from adaptkit.files import sha256

    weights = adapter / "adapter_model.safetensors"
    wider = {name: torch.zeros(t.shape[0], 2 * t.shape[1]) if ".lora_A." in name else torch.zeros(2 * t.shape[0],
                                                                                                    t.shape[1])
             for name, t in load_file(weights).items()}  # the shapes of a base twice as wide
    save_file(wider, weights)
    _record(adapter, lambda d: d.update(weights_sha256=sha256(weights)))  # an intact file, just not for this base
    first = sorted(wider)[0]
    err = refused(capsys, "predict", adapter, photo, "--out", tmp_path / "p",
                  message=f"{adapter} does not fit base 'tiny': its weight {first} has shape "
                          f"{tuple(wider[first].shape)}")
    assert "load it onto the base it was trained on" in err and not (tmp_path / "p").exists()


def test_an_adapter_recording_samples_its_data_lacks_names_them(capsys, adapter):
    _record(adapter, lambda d: d["samples"]["val"].extend(["banana", "gone"]))
    refused(capsys, "eval", adapter, "--split", "val", message="2 pair id(s) asked for are not in")
    err = refused(capsys, "eval", adapter, "--split", "val", message="banana, gone")
    assert not (adapter.parent / "eval-val").exists(), err


def test_an_adapter_recording_a_metric_its_codec_lacks_lists_the_known_ones(capsys, adapter):
    _record(adapter, lambda d: d["recipe"]["eval"].update(metrics=["dice", "banana"]))
    err = refused(capsys, "eval", adapter, "--split", "val",
                  message=f"{adapter / 'adaptkit.json'}: recipe.eval.metrics: unknown metric 'banana'")
    assert "valid: dice, iou, precision, recall, boundary_f" in err
    assert not (adapter.parent / "eval-val").exists()


# ------------------------------------------------------------------------------------------ predict and eval inputs
def test_predict_skips_a_fifo_without_opening_it(capsys, tmp_path, photo):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    code, _, err = run(capsys, "predict", "segmentation", "--base", "tiny", fifo, photo, "--out", tmp_path / "p")
    assert code == 0 and f"skipped {fifo}: is not a regular file" in err, err


PREDICT_CASES = {
    "glob-matches-nothing": (lambda t: [str(t / "nothing-*.png")], "the pattern matches no file"),
    "empty-folder": (lambda t: [str((t / "empty").mkdir() or t / "empty")], "the folder holds no images"),
    "folder-of-text": (lambda t: [str(_folder_of_text(t))], "the folder holds no images"),
    "text-named-png": (lambda t: [str(_write(t / "a.png", b"not an image"))], "not a readable image"),
    "zero-byte-png": (lambda t: [str(_write(t / "z.png", b""))], "image is empty"),
    "missing-file": (lambda t: [str(t / "missing.png")], "image is missing"),
    "fifo-only": (lambda t: [str(_fifo(t / "f.png"))], "is not a regular file"),
    "oversized": (lambda t: [str(_big(t / "big.png"))], "above the limit of 1,000 pixels"),
    "a-folder-of-folders": (lambda t: [str(_nested(t))], "inner.png: is a folder"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _folder_of_text(root: Path) -> Path:
    (root / "texts").mkdir()
    (root / "texts" / "notes.txt").write_text("hello")
    return root / "texts"


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _big(path: Path) -> Path:
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    return path


def _nested(root: Path) -> Path:
    (root / "outer" / "inner.png").mkdir(parents=True)
    return root / "outer"


@pytest.mark.parametrize("kind", list(PREDICT_CASES))
def test_predict_with_nothing_to_predict_fails(capsys, tmp_path, kind):
    make, message = PREDICT_CASES[kind]
    err = refused(capsys, "--max-image-pixels", 1000, "predict", "segmentation", "--base", "tiny", *make(tmp_path),
                  "--out", tmp_path / "p", message=message)
    assert "nothing was predicted" in err


@pytest.mark.parametrize(("out", "message"), [
    (lambda t: _write(t / "file", b"x"), "is a file, not a folder"),
    (lambda t: _write(t / "file", b"x") / "sub", "cannot be created"),
])
@pytest.mark.parametrize("command", ["predict", "eval", "train"])
def test_an_output_folder_that_cannot_be_written_is_refused(capsys, tmp_path, photo, good_data, good_recipe, out,
                                                             message, command):
    target = out(tmp_path)
    argv = {"predict": ["predict", "segmentation", "--base", "tiny", photo, "--out", target],
            "eval": ["eval", "--task", "segmentation", "--base", "tiny", "--data", good_data, "--out", target],
            "train": ["train", good_recipe, "--out", target]}[command]
    refused(capsys, *argv, message=message)


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "--task", "banana", "--base", "tiny", "--data", "{data}"], "'banana' is not a built-in task"),
    (["eval", "--task", "segmentation", "--base", "tiny"], "needs --data"),
    (["eval", "--task", "segmentation", "--base", "tiny", "--data", "{data}", "--metrics", "dicee"],
     "--metrics: unknown metric 'dicee'"),
    (["eval", "--task", "segmentation", "--base", "tiny", "--data", "{empty}"], "has no images/ or masks/"),
    (["eval"], "give an adapter folder"),
    (["eval", "--task", "segmentation", "--base", "tiny", "--data", "{data}", "--steps", "0"], "steps"),
])
def test_bad_eval_requests_are_refused(capsys, tmp_path, good_data, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [a.format(data=good_data, empty=tmp_path / "empty") for a in argv]
    refused(capsys, *argv, message=message)


# ------------------------------------------------------------------------------------------ bases and plugins
@pytest.fixture
def pickled_base(tmp_path, tiny) -> Path:
    """A generalist folder whose transformer weights are a pickled diffusion_pytorch_model.bin (tensors only)."""
    from safetensors.torch import load_file

    folder = tiny.save_pretrained(tmp_path / "gen")
    safe = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(safe), folder / "transformer" / "diffusion_pytorch_model.bin")
    safe.unlink()
    return folder


def test_a_generalist_with_pickled_weights_is_refused_with_how_to_convert(capsys, tmp_path, pickled_base):
    pickle = pickled_base / "transformer" / "diffusion_pytorch_model.bin"
    err = refused(capsys, "info", pickled_base, message=f"{pickle}: the transformer weights are a pickle")
    assert "never loads pickled weights" in err and "from safetensors.torch import save_file" in err
    recipe = write_recipe(tmp_path / "r.yaml", base={"generalist": str(pickled_base)})
    refused(capsys, "train", recipe, "--out", tmp_path / "run", message=f"{pickle}: the transformer weights")
    assert not (tmp_path / "run").exists()
    command = err.split('python -c "')[1].rsplit('"', 1)[0]  # the conversion it suggests works as written
    exec(command, {})  # the test runs the one line it tells users to run
    code, out, err = run(capsys, "info", pickled_base)
    assert code == 0 and "transformer" in out, err


GENERALIST_DAMAGE = {  # found by tests/test_fuzz_input.py: each once ended in a crash report
    "config-key-missing": ("point_encoder/config.json", lambda d: d.pop("num_frequencies"),
                           "point_encoder: the point_encoder cannot be built from config.json"),
    "huge-size": ("transformer/config.json", lambda d: d.update(num_layers=10**12),
                  "config.json: num_layers 1000000000000 is beyond any model's size"),
    "dynamic-shift": ("scheduler/scheduler_config.json", lambda d: d.update(use_dynamic_shifting=True),
                      "scheduler_config.json: this schedule cannot sample"),
    "nan-shift": ("scheduler/scheduler_config.json", lambda d: d.update(shift=math.nan),
                  "scheduler_config.json: this schedule cannot sample"),
    "no-timesteps": ("scheduler/scheduler_config.json", lambda d: d.update(num_train_timesteps=0),
                     "scheduler: the scheduler cannot be built from scheduler_config.json"),
    "config-extra-key": ("generalist.json", lambda d: d.update(colour=1), "generalist.json: not a valid generalist "
                                                                          "config: unknown key 'colour'"),
    "config-resolution": ("generalist.json", lambda d: d.update(resolution=30), "resolution must be a multiple of 16"),
    "config-prompts": ("generalist.json", lambda d: d.update(task_prompts={"depth": 5}), "task_prompts must map"),
}


@pytest.mark.parametrize("damage", list(GENERALIST_DAMAGE))
def test_a_damaged_generalist_folder_is_refused_naming_the_file(capsys, tmp_path, tiny, damage):
    name, change, message = GENERALIST_DAMAGE[damage]
    folder = tiny.save_pretrained(tmp_path / "gen")
    _edit_json(folder / name, change)
    refused(capsys, "info", folder, message=message)
    recipe = write_recipe(tmp_path / "r.yaml", base={"generalist": str(folder)})
    err = refused(capsys, "train", recipe, "--out", tmp_path / "run", message=message)
    assert f"{recipe}: base.generalist '{folder}'" in err and not (tmp_path / "run").exists()


def test_a_base_that_is_nowhere_names_the_recipe_key(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = write_recipe(tmp_path / "r.yaml", base={"generalist": str(tmp_path / "nowhere")})
    refused(capsys, "train", recipe, "--out", tmp_path / "run",
            message=f"{recipe}: base.generalist '{tmp_path / 'nowhere'}': '{tmp_path / 'nowhere'}' is neither a local "
                    "folder nor a Hub repo")
    assert not (tmp_path / "run").exists()


PLUGIN = """
from adaptkit.codecs import BinaryMaskCodec


class Exploding(BinaryMaskCodec):
    name = "exploding"

    def __init__(self):
        raise RuntimeError("no licence file")
"""


@pytest.mark.parametrize(("source", "codec", "message"), [
    (PLUGIN, "{module}:Exploding", "codec plugin '{module}:Exploding' raised RuntimeError while it was built: "
                                   "no licence file"),
    ("import json\n1 / 0\n", "{module}:Codec", "codec plugin '{module}:Codec': importing '{module}' raised "
                                                "ZeroDivisionError: division by zero"),
])
@pytest.mark.parametrize("command", ["check", "train"])
def test_a_codec_plugin_that_raises_is_named_with_its_error(capsys, tmp_path, monkeypatch, source, codec, message,
                                                            command):
    module = f"plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = write_recipe(tmp_path / "r.yaml", task={"codec": codec.format(module=module)})
    extra = ["--out", tmp_path / "run"] if command == "train" else []
    refused(capsys, command, recipe, *extra, message=message.format(module=module))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ pretrain settings
NEEDS_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(),
                                   reason="runs where CUDA is absent (as in CI): there `--device cuda` must be refused")


@pytest.mark.parametrize(("argv", "message"), [
    (["--stages", "banana"], "--stages 'banana': unknown stage(s) banana; stages: vae, generalist"),
    (["--stages", "vae,banana"], "unknown stage(s) banana"),
    (["steps=abc"], "steps: expected int, got 'abc'"),
    (["stepz=3"], "did you mean 'steps'"),
    (["lr=fast"], "lr"),
    (["steps"], "expected key.path=value"),
    pytest.param(["--device", "cuda"], "this machine has no CUDA device; use --device cpu", marks=NEEDS_NO_CUDA),
    (["--device", "banana"], "--device 'banana': expected cpu, cuda or cuda:N"),
    (["--workers", "0"], "--workers 0: expected at least 1"),
    (["families.scans=1"], "families.scans is held out of pretraining"),
    (["families.scene=1"], "families.scene is not a family of the synthetic world"),
    (["families.scenes=-1"], "families.scenes must be a positive weight"),
    (["spec.patchsize=1"], "did you mean 'spec.patch_size'"),
    (["precision=fp8"], "precision 'fp8': expected one of fp32, bf16"),
    (["spec.layers=abc"], "spec.layers must be a positive integer, got 'abc'"),
    (["spec.vae_channels=[16, -2]"], "spec.vae_channels must be a list of positive integers"),
    (["steps=0"], "steps must be an integer >= 1, got 0"),
    (["lr=-1"], "lr must be a finite number >= 0, got -1.0"),
    (["objective=banana"], "objective 'banana': expected one of"),
    (["init=default", "spec.layers=2"], "init 'default': spec.layers is 2 here but 4 in"),
    (["init=./no-such-generalist"], "init './no-such-generalist': './no-such-generalist' is neither a local folder"),
])
def test_bad_pretraining_settings_are_refused(capsys, tmp_path, argv, message):
    refused(capsys, "pretrain", "--out", tmp_path / "p", *argv, message=message)
    assert not (tmp_path / "p" / "default").exists()


@pytest.mark.parametrize(("change", "message"), [  # found by tests/test_fuzz_input.py: each once a crash report
    (lambda d: d.update(config="banana"), "expected a JSON object with a 'config' object"),
    (lambda d: d["config"]["spec"].update(layers="abc"), "config: spec.layers must be a positive integer, got 'abc'"),
    (lambda d: d["config"].update(steps=-1), "config: steps must be an integer >= 1, got -1"),
    (lambda d: d.update(zero_shot={"depth/absrel": "low"}), "zero_shot must map score names to numbers"),
])
def test_continuing_from_a_damaged_pretraining_report_is_refused_naming_it(capsys, tmp_path, change, message):
    from adaptkit.bases import DEFAULT_GENERALIST_DIR

    start = tmp_path / "start"
    shutil.copytree(DEFAULT_GENERALIST_DIR, start)
    _edit_json(start / "pretraining.json", change)
    err = refused(capsys, "pretrain", "--out", tmp_path / "p", "--stages", "generalist", f"init={start}",
                  message=f"{start / 'pretraining.json'} is not a valid pretraining report")
    assert message in err and not (tmp_path / "p").exists()


@pytest.mark.slow
def test_pretraining_a_finished_run_again_trains_nothing_and_says_so(capsys, tmp_path):
    out = tmp_path / "p"
    argv = ["pretrain", "--out", out, "--stages", "generalist", "init=default", "steps=1", "scenes=2", "val_scenes=1",
            "batch=2", "warmup=0"]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    refused(capsys, *argv, message=f"--out {out}: this run is finished (generalist at step 1); nothing to train")
    assert before == {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}


@pytest.mark.parametrize(("device", "message"), [
    pytest.param("cuda", "this machine has no CUDA device; use --device cpu", marks=NEEDS_NO_CUDA),
    ("tpu", "--device 'tpu': expected cpu, cuda or cuda:N"),
])
def test_info_checks_its_device_like_pretrain(capsys, device, message):
    refused(capsys, "info", "tiny", "--device", device, message=message)


# ------------------------------------------------------------------------------------------ resuming
def _ckpt(kind: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(os.urandom(2048))
    elif kind == "foreign":
        torch.save({"model": torch.zeros(3)}, path)
    elif kind == "pickled-code":
        torch.save({"state_dict": Path("x")}, path)  # an object, not tensors: weights_only refuses to unpickle it


@pytest.mark.parametrize(("kind", "message"), [
    ("zero-byte", "last.ckpt: checkpoint is empty"),
    ("random", "last.ckpt: checkpoint is not a readable torch file"),
    ("foreign", "not a checkpoint written by adaptkit"),
    ("pickled-code", "refusing to load"),
    ("truncated", "last.ckpt: checkpoint is not a readable torch file"),
    ("missing", "nothing to resume"),
])
def test_resume_refuses_a_checkpoint_it_cannot_use(capsys, tmp_path, run_folder, kind, message):
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml")
    last = out / "checkpoints" / "last.ckpt"
    if kind == "truncated":
        last.parent.mkdir(parents=True)
        last.write_bytes((run_folder / "checkpoints" / "last.ckpt").read_bytes()[:500])
    elif kind != "missing":
        _ckpt(kind, last)
    refused(capsys, "train", recipe, "--out", out, "--resume", message=message)
    assert not (out / "adapter").exists()


def test_resume_on_a_finished_run_says_so_and_changes_nothing(capsys, tmp_path, run_folder):
    out = tmp_path / "run"
    shutil.copytree(run_folder, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    refused(capsys, "train", write_recipe(tmp_path / "r.yaml"), "--out", out, "--resume", message="is finished")
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_an_interrupted_training_exits_non_zero_with_a_resume_line(capsys, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise TrainingInterrupted("training interrupted at step 3 of 8; ... --resume")

    monkeypatch.setattr("adaptkit.training.train", interrupted)
    code, _, err = run(capsys, "train", write_recipe(tmp_path / "r.yaml"), "--out", tmp_path / "run")
    assert code == 130 and "--resume" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ bugs
def test_an_unexpected_error_is_one_line_naming_the_traceback_file(capsys, monkeypatch):
    def crash(args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli, "cmd_recipes", crash)
    code, _, err = run(capsys, "recipes")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "bug in adaptkit" in err and "--debug" in err
    report = Path(err.split("traceback is in ")[1].split(" ")[0])
    assert "ZeroDivisionError: boom" in report.read_text()
    report.unlink()
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "recipes"])


@pytest.mark.slow
def test_sigterm_to_the_command_line_saves_exits_non_zero_and_says_how_to_resume(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    recipe = write_recipe(tmp_path / "r.yaml", train={"steps": 5000, "val_every": 2})
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "adaptkit.cli", "train", str(recipe), "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "last.ckpt").is_file():  # written at the first validation: inside fit
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "Traceback" not in err and f"--out {out} --resume" in err
    step = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 2 <= step < 5000
    assert json.loads((out / "metrics.json").read_text())["history"]  # the record so far is written
