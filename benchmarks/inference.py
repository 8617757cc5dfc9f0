"""Which inference setting should a user choose? Seconds per image and metric vs sampling steps and guidance.

Trains two adapters for one held-out task on the embedded default with the same budget (a `flow` adapter,
which can be sampled with any number of steps and guidance, and a `single_step` adapter, which predicts in
one pass), then evaluates the flow adapter at 1, 2, 4 and 28 steps with guidance 1.0 and 2.0 and the
single-step adapter once, all on the same test images; plus each codec's decoding time per image.

    python benchmarks/inference.py                  # the embedded default, task 'shadow'
    python benchmarks/inference.py --base tiny --quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from adaptkit.adapters import AdaptedModel
from adaptkit.codecs import CODECS, build_codec
from adaptkit.data import check_all, open_source
from adaptkit.inference import evaluate
from adaptkit.recipe import load_recipe
from adaptkit.training import train

RESULTS = Path(__file__).parent / "results"


def train_adapter(base: str, task: str, objective: str, steps: int, shots: int, tests: int, resolution: int,
                  out: Path) -> AdaptedModel:
    overrides = {"base.generalist": base, "data.synth_task": task, "data.synth_resolution": resolution,
                 "train.objective": objective, "train.steps": steps, "train.val_every": steps,
                 "data.train_shots": shots, "data.val_shots": 8, "data.test_shots": tests,
                 "task.prompt": f"[[image2{task}]]"}
    if objective == "flow":
        overrides |= {"inference.steps": 4, "inference.guidance": 1.0}
    result = train(load_recipe("quickstart", overrides), out / objective, progress=False)
    return AdaptedModel.from_pretrained(result.adapter)


def decode_seconds(size: int, repeats: int) -> dict[str, float]:
    """Mean seconds to decode one size x size colour image, per codec (on a random image: the worst case)."""
    image = np.random.default_rng(0).random((size, size, 3), dtype=np.float32)
    args = {"semantic": {"num_classes": 8}}
    timings = {}
    for name in CODECS:
        codec = build_codec(name, args.get(name))
        started = time.perf_counter()
        for _ in range(repeats):
            codec.decode(image)
        timings[name] = (time.perf_counter() - started) / repeats
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="default")
    parser.add_argument("--task", default="shadow")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--tests", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps and images")
    parser.add_argument("--out", type=Path, default=RESULTS / "inference-runs")
    args = parser.parse_args()
    resolution = 32 if args.base == "tiny" else 64
    steps, tests = (6, 8) if args.quick else (args.train_steps, args.tests)
    shots = 8 if args.quick else 50
    rows = []
    models = {objective: train_adapter(args.base, args.task, objective, steps, shots, tests, resolution,
                                       args.out / f"{time.strftime('%Y%m%d-%H%M%S')}")
              for objective in ("flow", "single_step")}
    model = models["flow"]
    test = check_all(open_source(load_recipe(model.meta.recipe).data, model.codec), model.meta.samples["test"])
    settings = [("flow", s, g) for g in (1.0, 2.0) for s in (1, 2, 4, 28)] + [("single_step", 1, 1.0)]
    for objective, sampling_steps, guidance in settings:
        report = evaluate(models[objective], test, steps=sampling_steps, guidance=guidance, progress=False)
        rows.append({"objective": objective, "steps": sampling_steps, "guidance": guidance,
                     "iou": report.metrics["iou"], "dice": report.metrics["dice"],
                     "seconds_per_image": report.seconds_per_image})
    fastest = min(r["seconds_per_image"] for r in rows)
    print(f"{args.task} on {args.base}: {len(test)} test images, adapters trained {steps} steps on {shots} images")
    print(f"{'objective':<12}{'steps':>6}{'guidance':>9}{'IoU':>8}{'Dice':>8}{'s/image':>10}{'x fastest':>10}")
    for r in rows:
        print(f"{r['objective']:<12}{r['steps']:>6}{r['guidance']:>9.1f}{r['iou']:>8.3f}{r['dice']:>8.3f}"
              f"{r['seconds_per_image']:>10.4f}{r['seconds_per_image'] / fastest:>10.1f}")
    decoding = decode_seconds(768, 1 if args.quick else 3)
    print("\ndecode one 768 x 768 image (s): " + ", ".join(f"{k} {v:.3f}" for k, v in decoding.items()))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inference.json").write_text(json.dumps(
        {"base": args.base, "task": args.task, "train_steps": steps, "shots": shots, "test_images": len(test),
         "rows": rows, "decode_seconds_768": decoding}, indent=2) + "\n")


if __name__ == "__main__":
    main()
