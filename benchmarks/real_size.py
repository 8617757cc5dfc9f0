"""The released DICEPTION's path end to end on a CPU: a release-shaped folder, check, train, eval, predict, sweep,
push and pull, each stage a fresh `adaptkit` process whose peak RSS and wall time are recorded.

    python benchmarks/real_size.py --folder /work/realsize            # 24 blocks: SD3-medium's 2 B parameters
    python benchmarks/real_size.py --folder /tmp/rs2 --layers 2       # the CI-sized cut, in minutes

The folder is what a user downloads (`Generalist.save_release`): SD3-medium's transformer config at its real
dimensions, SD3's VAE, text encoders of the real output widths (one layer each, a small vocabulary) and
`DICEPTION_v1.pth` in bf16, seeded random weights. Training is the bundled recipes' setting (rank-32 LoRA on
attention, bf16-mixed, gradient checkpointing) at a reduced resolution and a few steps. Every stage's figures
are written to `benchmarks/results/real_size-L{layers}.json` as soon as it ends, and a rerun skips the stages
already recorded (`--fresh` starts over), so a long run keeps what it measured. Each stage's peak is set beside
`adaptkit.memory.estimate_memory`'s prediction for it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS, machine, print_table
from PIL import Image

from adaptkit.memory import GPU_HEADROOM

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
WRITE = ("import sys, torch; from adaptkit.tiny import build_tiny_generalist, real_size_spec; "
         "build_tiny_generalist(real_size_spec(int(sys.argv[2]), int(sys.argv[3])), torch.bfloat16)"
         ".save_release(sys.argv[1])")


def recipe_text(folder: Path, resolution: int, steps: int) -> str:
    """The bundled recipes' training setting on the release folder, at `resolution` px for `steps` steps."""
    return f"""name: real-size
task: {{prompt: "[[image2shadow]]", codec: binary_mask}}
base: {{generalist: diception, sd3: {folder}, weights: {folder}, resolution: {resolution}}}
data: {{source: synth, synth_task: shadow, synth_resolution: {resolution}, train_shots: 2, val_shots: 1,
       test_shots: 2, hflip: false}}
adapter: {{rank: 32, alpha: 32, targets: attention}}
train: {{objective: single_step, steps: {steps}, batch_size: 1, lr: 1.0e-4, warmup: 0, precision: bf16-mixed,
        gradient_checkpointing: true, val_every: {steps}, accelerator: cpu}}
inference: {{steps: 1, guidance: 1.0, batch_size: 1}}
sweep: {{trials: 2, startup_trials: 2, space: {{train.lr: [1.0e-4, 3.0e-4]}}}}
"""


def run_stage(command: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run one process; its exit code, wall seconds and peak RSS (`wait4`: this child's own high-water mark)."""
    start = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    return {"rc": os.waitstatus_to_exitcode(status), "seconds": time.perf_counter() - start,
            "peak_rss_gib": usage.ru_maxrss * 1024 / GIB, "log": str(log)}


def predictions(folder: Path, resolution: int) -> dict[str, float]:
    """`estimate_memory`'s peak for each stage that loads the model, from the folder's configs alone: training
    (3 cached pairs, the text encoders while the prompts are encoded) and one-image inference (no text encoders)."""
    from adaptkit.memory import estimate_memory, folder_shapes

    shapes = folder_shapes(folder, "attention")
    train = estimate_memory(shapes, resolution, 1, 32, "bf16-mixed", True, images=3, device="cpu").peak / GIB
    infer = estimate_memory(shapes, resolution, 1, 32, "bf16-mixed", training=False, device="cpu").peak / GIB
    return {"train": train, "sweep": train, "eval": infer, "predict": infer, "pull+predict": infer}


def gpu_plan() -> list[dict[str, Any]]:
    """Which settings fit a 24, 40 and 80 GB GPU at 768 px: SD3-medium with its real text encoders."""
    from adaptkit.generalist import SD3_MEDIUM_TRANSFORMER_CONFIG
    from adaptkit.memory import (
        SD3_TEXT_PARAMETERS,
        SD3_TEXT_STORED_BYTES,
        SD3_VAE_CONFIG,
        fit_table,
        shapes_from_configs,
    )

    shapes = shapes_from_configs(SD3_MEDIUM_TRANSFORMER_CONFIG, SD3_VAE_CONFIG, "attention", SD3_TEXT_PARAMETERS,
                                 text_stored_bytes=SD3_TEXT_STORED_BYTES)
    return fit_table(shapes, 768)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="where the release folder is (written once)")
    parser.add_argument("--work", type=Path, default=None, help="runs, inputs, logs (default: FOLDER-work)")
    parser.add_argument("--layers", type=int, default=24, help="transformer blocks (24: SD3-medium)")
    parser.add_argument("--resolution", type=int, default=128, help="model resolution in px (DICEPTION: 768)")
    parser.add_argument("--steps", type=int, default=3, help="training steps (and sweep trials' steps)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every stage")
    parser.add_argument("--fresh", action="store_true", help="forget recorded stages and run them all again")
    args = parser.parse_args()
    work = args.work or args.folder.with_name(args.folder.name + "-work")
    work.mkdir(parents=True, exist_ok=True)
    report_path = RESULTS / f"real_size-L{args.layers}.json"
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.is_file() else {}
    if args.fresh:  # the folder itself is not rewritten, so its figures stay
        report = {"stages": {"write": report["stages"]["write"]}} if "write" in report.get("stages", {}) else {}
    report |= {"machine": machine(), "layers": args.layers, "resolution": args.resolution, "steps": args.steps,
               "threads": args.threads}
    stages = report.setdefault("stages", {})

    recipe = work / "recipe.yaml"
    recipe.write_text(recipe_text(args.folder.resolve(), args.resolution, args.steps))
    inputs = work / "inputs"
    inputs.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for index, size in enumerate([(160, 120), (96, 144)]):  # not square, not the model's size: resized both ways
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(inputs / f"input{index}.png")

    sys.path.insert(0, str(ROOT / "tests"))
    from hub_server import HubServer  # the local Hub stand-in the test suite pushes to and pulls from

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env |= {"OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HOME": str(work / "hf-home"), "TQDM_MININTERVAL": "30"}
    adaptkit = [sys.executable, "-m", "adaptkit.cli"]
    train_out, sweep_out = work / "train", work / "sweep"
    with HubServer({"tok-alice": "alice"}) as hub:
        hub_env = {**env, "HF_ENDPOINT": hub.url, "HF_TOKEN": "tok-alice"}
        plan = [
            ("write", [sys.executable, "-c", WRITE, str(args.folder), str(args.layers), str(args.resolution)], env),
            ("check", [*adaptkit, "check", str(recipe)], env),
            ("train", [*adaptkit, "train", str(recipe), "--out", str(train_out)], env),
            ("eval", [*adaptkit, "eval", str(train_out / "adapter"), "--split", "test"], env),
            ("predict", [*adaptkit, "predict", str(train_out / "adapter"), str(inputs), "--out", str(work / "pred")],
             env),
            ("sweep", [*adaptkit, "sweep", str(recipe), "--trials", "2", "--out", str(sweep_out)], env),
            ("push", [*adaptkit, "push", str(train_out / "adapter"), "alice/real-size"], hub_env),
            ("pull+predict", [*adaptkit, "predict", "alice/real-size", str(inputs), "--out", str(work / "pulled")],
             {**hub_env, "HF_HOME": str(work / "hf-home-puller")}),
        ]
        for name, command, stage_env in plan:
            if stages.get(name, {}).get("rc") == 0 and not (name == "push" and "pull+predict" not in stages):
                print(f"{name}: recorded ({stages[name]['seconds']:.0f} s), skipped", flush=True)
                continue
            if name == "write" and (args.folder / "DICEPTION_v1.pth").is_file():
                stages[name] = {"rc": 0, "seconds": 0.0, "peak_rss_gib": 0.0, "note": "folder already written"}
                continue
            for stale in {"train": [train_out], "sweep": [sweep_out], "predict": [work / "pred"],
                          "pull+predict": [work / "pulled", work / "hf-home-puller"]}.get(name, []):
                shutil.rmtree(stale, ignore_errors=True)
            print(f"{name}: running ...", flush=True)
            stages[name] = run_stage(command, stage_env, work / f"{name}.log")
            if name == "train" and (train_out / "resources.json").is_file():
                resources = json.loads((train_out / "resources.json").read_text())
                stages[name] |= {"seconds_per_step": resources["seconds_per_step"], "record": resources}
            if name == "pull+predict" and stages[name]["rc"] == 0:
                files = [p.relative_to(work / "pred") for p in sorted((work / "pred").rglob("*.png"))]
                stages[name]["same_as_local"] = bool(files) and all(
                    (work / "pred" / f).read_bytes() == (work / "pulled" / f).read_bytes() for f in files)
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(json.dumps(report, indent=2) + "\n")
            print(f"{name}: rc {stages[name]['rc']}, {stages[name]['seconds']:.0f} s, peak RSS "
                  f"{stages[name]['peak_rss_gib']:.2f} GiB", flush=True)
            if stages[name]["rc"] != 0:
                print((work / f"{name}.log").read_text()[-3000:])
                break
    if (args.folder / "DICEPTION_v1.pth").is_file():
        report["release_gib"] = sum(p.stat().st_size for p in args.folder.rglob("*") if p.is_file()) / GIB
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    predicted = predictions(args.folder, args.resolution) if (args.folder / "DICEPTION_v1.pth").is_file() else {}
    rows = [{"stage": name, **{k: v for k, v in values.items() if k != "record"}} for name, values in stages.items()]
    for row in rows:
        if row["stage"] in predicted and row.get("rc") == 0:
            row["predicted_gib"] = stages[row["stage"]]["predicted_gib"] = predicted[row["stage"]]
            row["error"] = f"{100 * (row['predicted_gib'] / row['peak_rss_gib'] - 1):+.1f}%"
    print_table(rows, [("stage", "stage", ""), ("rc", "rc", "d"), ("seconds", "wall s", ".0f"),
                       ("seconds_per_step", "s/step", ".1f"), ("peak_rss_gib", "peak RSS GiB", ".2f"),
                       ("predicted_gib", "predicted GiB", ".2f"), ("error", "prediction error", "")])
    plan = report["gpu_plan_768px"] = gpu_plan()
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print("\nSD3-medium (real text encoders) at 768 px on a GPU, rank-32 attention LoRA: predicted peak and fit "
          f"(leaving {GPU_HEADROOM:.0%} for the allocator)")
    print_table(plan, [("run", "run", ""), ("precision", "precision", ""), ("checkpointing", "grad ckpt", ""),
                       ("batch", "batch", "d"), ("peak_gib", "peak GiB", ".1f"), ("fits_24", "24 GB", ""),
                       ("fits_40", "40 GB", ""), ("fits_80", "80 GB", "")])
    print(f"wrote {report_path}")


if __name__ == "__main__":
    main()
