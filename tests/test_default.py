"""The embedded default: it loads like any generalist, does its pretraining tasks, and adapts to a new one."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from adaptkit.bases import DEFAULT_GENERALIST_DIR, load_generalist
from adaptkit.codecs import build_codec
from adaptkit.data import check_all, open_source
from adaptkit.inference import builtin_task, evaluate
from adaptkit.pretrain import PretrainConfig
from adaptkit.recipe import load_recipe
from adaptkit.training import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default():
    return load_generalist("default", device="cpu")


def test_the_default_is_recorded_and_small(default):
    report = json.loads((DEFAULT_GENERALIST_DIR / "pretraining.json").read_text())
    assert report["config"]["objective"] == default.config.objective == "single_step"
    size = sum(f.stat().st_size for f in DEFAULT_GENERALIST_DIR.rglob("*") if f.is_file())
    assert size < 25 * 2**20  # a few MB inside the package


#: The README's rebuild commands after the first (`adaptkit pretrain`, no settings), each continuing the one before.
CONTINUATIONS = (
    {"scenes": 8000, "steps": 7500, "lr": 3e-4, "warmup": 200},
    {"scenes": 8000, "steps": 5000, "lr": 3e-4, "warmup": 200, "families": {"scenes": 0.4, "layers": 0.6}},
)


def _as_json(config: PretrainConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))


def test_the_readme_commands_rebuild_the_shipped_default():
    """A plain `adaptkit pretrain`, then the README's continuations of it, must mean the default that ships."""
    chain = [json.loads((DEFAULT_GENERALIST_DIR / "pretraining.json").read_text())]
    while "init" in chain[-1]:
        chain.append(chain[-1]["init"])
    first, *continued = reversed(chain)
    assert first["config"] == _as_json(PretrainConfig())
    assert len(continued) == len(CONTINUATIONS)
    for report, settings in zip(continued, CONTINUATIONS, strict=True):
        # init: where that run started on the machine that ran it
        assert report["config"] == _as_json(PretrainConfig(**settings, init=report["config"]["init"]))
        assert report["training_seconds"]["vae"] == 0  # `--stages generalist`: the first run's VAE, untouched


def _synth_samples(task: str, codec: str, count: int = 24):
    """Rendered scenes the default never saw in pretraining (another seed)."""
    recipe = load_recipe({"name": "z", "task": {"prompt": "x", "codec": codec},
                          "data": {"source": "synth", "synth_task": task, "train_shots": count, "val_shots": 0,
                                   "seed": 123}})
    source = open_source(recipe.data, build_codec(codec))
    return check_all(source, source.ids())


def test_zero_shot_depth_is_far_better_than_a_constant(default):
    model = builtin_task(default, "depth")
    samples = _synth_samples("depth", "depth")
    report = evaluate(model, samples, progress=False)
    assert report.metrics["delta1"] > 0.7


@pytest.mark.slow
def test_a_short_adaptation_raises_the_validation_metric(default, tmp_path):
    recipe = load_recipe("quickstart", ["train.steps=60", "train.val_every=30", "data.train_shots=20",
                                        "data.val_shots=16", "data.test_shots=0"])
    result = train(recipe, tmp_path / "run", generalist=default, progress=False)
    history = json.loads((result.out / "metrics.json").read_text())["history"]
    assert history[0]["step"] == 0
    assert max(row["iou"] for row in history[1:]) > history[0]["iou"] + 0.1


@pytest.mark.slow
def test_the_quickstart_notebook_runs(tmp_path, monkeypatch):
    notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    monkeypatch.setenv("ADAPTKIT_NOTEBOOK_STEPS", "40")  # the kernel inherits it; later tests do not
    NotebookClient(notebook, timeout=900, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "IoU on 100 test images" in outputs
