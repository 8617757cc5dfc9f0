"""Sharing on the Hub with the real huggingface_hub client, end to end, against a local stand-in (no network).

huggingface_hub reads `HF_ENDPOINT`, `HF_HOME` and `HF_HUB_OFFLINE` when it is imported, so every
client step runs `adaptkit` in a fresh process pointed at `tests/hub_server.py`: what a user runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hub_server import HubServer
from huggingface_hub import ModelCard
from PIL import Image
from tiny_recipes import shadow_recipe

from adaptkit.adapters import AdaptedModel
from adaptkit.data import check_all, open_source
from adaptkit.hub import HubError, push, refuse_unsafe
from adaptkit.inference import evaluate
from adaptkit.recipe import load_recipe, recorded_recipe
from adaptkit.training import train

RECIPE = shadow_recipe("shadow", data={"train_shots": 4, "val_shots": 2, "test_shots": 3},
                       train={"steps": 6, "batch_size": 2, "val_every": 6, "warmup": 1, "lr": 1e-2})
# the Python API in a client process: argv is ADAPTER INPUTS OUT.npy
PREDICT_ENCODED = ("import sys, numpy as np; from pathlib import Path; from adaptkit import AdaptedModel; "
                   "model = AdaptedModel.from_pretrained(sys.argv[1]); "
                   "images = sorted(Path(sys.argv[2]).glob('*.png')); "
                   "np.save(sys.argv[3], np.stack([m[0].image for m in "
                   "model.predict_encoded(images, progress=False)]))")
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "adaptkit.json", "prompt_embeds.safetensors",
                 "README.md"}


@pytest.fixture(scope="module")
def hub():
    with HubServer({"tok-alice": "alice"}) as server:
        server.create("mallory/pickled", "mallory", files={"adaptkit.json": b"{}", "adapter_config.json": b"{}",
                                                           "adapter_model.bin": b"\x80\x04K\x01."})
        yield server


@pytest.fixture(scope="module")
def run(hub, tmp_path_factory) -> Path:
    """A tiny trained adapter, evaluated on its test split, and reference predictions made from the folder.

    The references come from a client process like the pulls they are compared with: the same thread count
    gives the same float sums, so the comparison can be exact.
    """
    out = tmp_path_factory.mktemp("hub") / "run"
    result = train(load_recipe(RECIPE), out, progress=False)
    model = AdaptedModel.from_pretrained(result.adapter)
    test = check_all(open_source(recorded_recipe(model.meta.recipe).data, model.codec), model.meta.samples["test"])
    evaluate(model, test, out / "eval-test", progress=False, split="test")
    (out / "inputs").mkdir()
    for sample in test:
        Image.fromarray((sample.image * 255).astype(np.uint8)).save(out / "inputs" / f"{sample.id}.png")
    home = out / "local-home"
    made = client(hub, home, "predict", str(result.adapter), str(out / "inputs"), "--raw", "--out",
                  str(out / "reference"), token=None, offline=True)
    assert made.returncode == 0, made.stderr
    made = client(hub, home, str(result.adapter), str(out / "inputs"), str(out / "reference.npy"), token=None,
                  offline=True, python=PREDICT_ENCODED)
    assert made.returncode == 0, made.stderr
    return out


def client(hub: HubServer, home: Path, *args: str, token: str | None = "tok-alice", offline: bool = False,
           python: str | None = None) -> subprocess.CompletedProcess:
    """`adaptkit ARGS` (or a Python snippet) in a fresh process whose huggingface_hub talks to the stand-in."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1"}
    if token:
        env["HF_TOKEN"] = token
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, "-c", python, *args] if python else [sys.executable, "-m", "adaptkit.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _files(folder: Path) -> dict[str, bytes]:
    """The prediction files (not predictions.json, which names the folder it was written to)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "predictions.json"}


@pytest.mark.slow
def test_push_pull_offline_round_trip(hub, run, tmp_path):
    adapter = run / "adapter"
    pushed = client(hub, tmp_path / "pusher", "push", str(adapter), "alice/shadow")
    assert pushed.returncode == 0, pushed.stderr
    repo = hub.repos["alice/shadow"]
    tree = repo.commits[repo.branches["main"]]
    # the adapter, its card, the evaluation grid and the curve; never checkpoints, caches or logs
    assert set(tree) == ADAPTER_FILES | {".gitattributes", "curve.png", "eval-test/grid.png"}
    assert tree["adapter_model.safetensors"] == (adapter / "adapter_model.safetensors").read_bytes()

    card = ModelCard(tree["README.md"].decode())
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "image-segmentation"
    test_metrics = json.loads((run / "eval-test" / "metrics.json").read_text())["metrics"]
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("test", "iou")] == pytest.approx(test_metrics["iou"], abs=1e-6)
    assert "![predictions](eval-test/grid.png)" in card.text and "adaptkit predict alice/shadow" in card.text

    # pull into a fresh cache: the same predictions, file for file
    home = tmp_path / "puller"
    pulled = client(hub, home, "predict", "alice/shadow", str(run / "inputs"), "--raw", "--out", str(tmp_path / "p"),
                    token=None)
    assert pulled.returncode == 0, pulled.stderr
    assert _files(tmp_path / "p") == _files(run / "reference")
    assert list((home / "hub").glob("models--alice--shadow/snapshots/*/adapter_model.safetensors"))

    # offline afterwards: the Python API from the cache, with no request reaching the Hub
    seen = len(hub.requests)
    offline = client(hub, home, "alice/shadow", str(run / "inputs"), str(tmp_path / "offline.npy"), token=None,
                     offline=True, python=PREDICT_ENCODED)
    assert offline.returncode == 0, offline.stderr
    assert len(hub.requests) == seen
    np.testing.assert_array_equal(np.load(tmp_path / "offline.npy"), np.load(run / "reference.npy"))


@pytest.mark.slow
def test_push_to_a_branch_and_pull_that_revision(hub, run, tmp_path):
    pushed = client(hub, tmp_path / "home", "push", str(run / "adapter"), "alice/branched", "--revision", "try-1",
                    "--message", "first try", "--private")
    assert pushed.returncode == 0, pushed.stderr
    repo = hub.repos["alice/branched"]
    assert repo.private and set(repo.branches) == {"main", "try-1"}
    assert "adapter_model.safetensors" in repo.commits[repo.branches["try-1"]]
    assert "adapter_model.safetensors" not in repo.commits[repo.branches["main"]]
    pulled = client(hub, tmp_path / "home", "predict", "alice/branched@try-1", str(run / "inputs"),
                    "--out", str(tmp_path / "p"))
    assert pulled.returncode == 0, pulled.stderr
    assert _files(tmp_path / "p") == {k: v for k, v in _files(run / "reference").items() if "encoded" not in k}


@pytest.mark.slow
def test_push_without_permission_is_one_clear_line(hub, run, tmp_path):
    refused = client(hub, tmp_path / "home", "push", str(run / "adapter"), "bob/shadow")
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "no permission" in refused.stderr


@pytest.mark.slow
def test_a_repo_holding_pickles_is_refused_before_anything_loads(hub, run, tmp_path):
    refused = client(hub, tmp_path / "home", "predict", "mallory/pickled", str(run / "inputs"), "--out",
                     str(tmp_path / "p"), token=None)
    assert refused.returncode == 2
    assert "adapter_model.bin" in refused.stderr and "never pickles or code" in refused.stderr
    assert not any("/mallory/pickled/resolve/" in request for request in hub.requests)  # nothing was downloaded
    assert not (tmp_path / "p").exists()


def test_push_checks_its_input_before_the_network(run, tmp_path, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(HubError, match=r"not an adapter folder: adaptkit\.json is missing"):
        push(tmp_path, "alice/x")
    with pytest.raises(HubError, match="names a dataset repo"):
        push(run / "adapter", "datasets/alice/x")
    with pytest.raises(HubError, match="not a Hub repo id"):
        push(run / "adapter", "just-a-name")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(HubError, match="no Hugging Face token: set HF_TOKEN or run `hf auth login`"):
        push(run / "adapter", "alice/x")


def test_code_and_pickles_are_named():
    refuse_unsafe("a/b", ["adapter_model.safetensors", "README.md", "adaptkit.json"])
    for name in ("handler.py", "optimizer.pt", "model.ckpt", "weights.pkl", "sub/pytorch_model.bin"):
        with pytest.raises(HubError, match=name):
            refuse_unsafe("a/b", ["adapter_model.safetensors", name])


@pytest.mark.skipif(not (os.environ.get("HF_TOKEN") and os.environ.get("ADAPTKIT_LIVE_HUB_REPO")),
                    reason="live Hub test: set HF_TOKEN and ADAPTKIT_LIVE_HUB_REPO=owner/name (needs network)")
def test_live_push_and_pull(run, tmp_path):
    """The same round trip on the real Hub, into a repo you own (it is overwritten)."""
    repo_id = os.environ["ADAPTKIT_LIVE_HUB_REPO"]
    push(run / "adapter", repo_id, private=True, message="adaptkit live test")
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    pulled = subprocess.run([sys.executable, "-m", "adaptkit.cli", "predict", repo_id, str(run / "inputs"), "--raw",
                             "--out", str(tmp_path / "p")], env=env, capture_output=True, text=True, timeout=600)
    assert pulled.returncode == 0, pulled.stderr
    assert _files(tmp_path / "p") == _files(run / "reference")
