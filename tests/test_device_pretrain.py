"""benchmarks/device_pretrain.sh, the prepared GPU pretraining run, end to end on the CPU: it pretrains, packs the
whole run folder into parts the device tool brings back (at most 8 files of 16 MiB), and the parts unpack here
into a run folder that resumes with its settings and holds a generalist that loads."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from adaptkit.generalist import Generalist
from adaptkit.pretrain import pretrain_config

ROOT = Path(__file__).resolve().parents[1]
#: test_pretrain.py's seconds-long generalist, as the script's key=value settings.
SETTINGS = ["scenes=6", "val_scenes=3", "vae_steps=2", "vae_batch=4", "steps=2", "batch=4", "warmup=1",
            "spec.resolution=32", "spec.layers=1", "spec.heads=2", "spec.head_dim=16", "spec.vae_channels=[8, 16]",
            "spec.vae_norm_groups=4", "spec.clip_dim=16", "spec.t5_dim=32", "spec.num_frequencies=8"]


@pytest.mark.slow
def test_the_device_run_comes_back_in_parts_that_resume_and_load(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "WORKERS": "1", "PRECISION": "fp32",
           "WHEELS": str(tmp_path / "no-wheels"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "benchmarks/device_pretrain.sh", "tiny-run", *SETTINGS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    files = sorted(out.iterdir())
    assert len(files) <= 8 and all(f.stat().st_size <= 16 * 2**20 for f in files)
    assert "generalist written to" in (out / "tiny-run.log").read_text()
    parts = [f for f in files if ".tar.part-" in f.name]
    packed = tmp_path / "packed.tar"
    packed.write_bytes(b"".join(part.read_bytes() for part in parts))
    with tarfile.open(packed) as archive:
        archive.extractall(tmp_path / "runs", filter="data")

    run = tmp_path / "runs" / "tiny-run"
    config = pretrain_config(run, {})  # what `adaptkit pretrain --out` resumes it with
    assert (config.steps, config.spec["layers"], config.precision) == (2, 1, "fp32")
    generalist = Generalist.from_pretrained(run / "default")
    assert generalist.config.resolution == 32
