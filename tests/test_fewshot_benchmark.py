"""benchmarks/fewshot.py, the evidence behind issue 16's goal, end to end on the tiny base (--quick): every variant
runs on every task, trained variants report their IoU on their own training images, `--lora-set` reaches the LoRA
variants alone, and a bad `--lora-set` ends in one line before any training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaptkit import load_generalist
from adaptkit.adapters import add_lora, count_parameters
from adaptkit.recipe import AdapterSection

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TRAINED = {"lora", "lora-random", "unet-scratch", "full-random", "full-pretrained"}


def fewshot(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "fewshot.py", "--base", "tiny", "--quick", *argv], cwd=BENCHMARKS,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_every_variant_runs_and_lora_set_reaches_lora_alone():
    name = f"test_fewshot_{os.getpid()}"
    done = fewshot("--tasks", "nearest", "cells", "--lora-set", "adapter.rank=2", "--name", name)
    report_path = BENCHMARKS / "results" / f"{name}_quick.json"
    try:
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(report_path.read_text())
    finally:
        for suffix in (".json", ".png"):
            report_path.with_suffix(suffix).unlink(missing_ok=True)

    rows = report["rows"]
    for task in ("nearest", "cells"):
        assert {r["variant"] for r in rows if r["task"] == task} == TRAINED | {"zero-shot", "vae-round-trip"}
    for row in rows:
        assert (row.get("train_iou") is not None) == (row["variant"] in TRAINED), row
        assert 0.0 <= row["iou"] <= 1.0 and 0.0 <= row.get("train_iou", 0.0) <= 1.0
    denoiser = load_generalist("tiny", device="cpu", load_text_encoders=False).denoiser
    rank_two = count_parameters(add_lora(denoiser, AdapterSection(rank=2, alpha=2.0)), denoiser.transformer)[0]
    assert {r["trainable"] for r in rows if r["variant"].startswith("lora")} == {rank_two}
    assert report["settings"]["lora_set"] == ["adapter.rank=2"]


@pytest.mark.slow
def test_a_bad_lora_set_ends_in_one_line_naming_the_key():
    done = fewshot("--tasks", "nearest", "--lora-set", "train.lrr=0.1")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("--lora-set train.lrr=0.1:") and "'lr'" in done.stderr
