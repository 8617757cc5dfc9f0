"""Many adapters on one base: memory and time for N adapters served by one loaded generalist (peft named
adapters, `load_adapters`) against N separate loads (`AdaptedModel.from_pretrained` each, N bases).

Each way runs in its own process so that its RSS is measured from a clean baseline; both predict the
same images with every adapter, and the predictions are checked to be identical between the two ways.
The adapters are LoRA layers with random non-zero weights (what they compute does not change the cost).

    python benchmarks/adapters.py                    # 8 adapters on the embedded default
    python benchmarks/adapters.py --base tiny --adapters 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import PeakRSS, print_table, write_report

from adaptkit.adapters import AdaptedModel, AdapterMeta, add_lora, load_adapters, save_adapter
from adaptkit.bases import load_generalist
from adaptkit.codecs import build_codec
from adaptkit.recipe import load_recipe


def make_adapters(base: str, count: int, rank: int, folder: Path) -> list[Path]:
    """`count` adapters on `base`, each for its own prompt, with random LoRA weights."""
    generalist = load_generalist(base, device="cpu")
    codec = build_codec("binary_mask")
    paths = []
    for index in range(count):
        recipe = load_recipe("quickstart", {"name": f"task-{index}", "base.generalist": base,
                                            "task.prompt": f"[[image2task{index}]]", "adapter.rank": rank})
        generalist.prompts.encode([recipe.task.prompt, ""])
        denoiser = add_lora(generalist.denoiser, recipe.adapter)
        generator = torch.Generator().manual_seed(index)
        for name, parameter in denoiser.named_parameters():
            if "lora_" in name:
                parameter.data = torch.randn(parameter.shape, generator=generator) * 0.05
        meta = AdapterMeta.from_recipe(recipe, generalist, codec)
        paths.append(save_adapter(folder / f"task-{index}", denoiser, meta, generalist.prompts.cache))
        generalist.denoiser = denoiser.unload()
    return paths


def _tensor_mb(models: list[AdaptedModel]) -> float:
    """Bytes of the distinct parameter and buffer storages all models hold (a shared base counts once)."""
    seen, total = set(), 0
    for model in models:
        for tensor in [*model.generalist.parameters(), *model.generalist.buffers()]:
            key = tensor.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += tensor.untyped_storage().nbytes()
    return total / 2**20


def measure(way: str, paths: list[str], images: int, seed: int = 0) -> dict:
    """One way of serving the adapters, in this process: load, then predict `images` images with each."""
    inputs = list(np.random.default_rng(seed).random((images, 64, 64, 3), dtype=np.float32))
    with PeakRSS() as memory:
        started = time.perf_counter()
        models = (load_adapters(paths) if way == "one base" else [AdaptedModel.from_pretrained(p) for p in paths])
        loaded = time.perf_counter()
        outputs = [np.stack([m[0].image for m in model.predict_encoded(inputs, progress=False)]) for model in models]
        predicted = time.perf_counter()
    return {"way": way, "adapters": len(paths), "load_s": loaded - started, "predict_s": predicted - loaded,
            "tensor_mb": _tensor_mb(models), "peak_rss_mb": memory.delta_mb,
            "checksum": [float(np.abs(o).sum()) for o in outputs], "outputs": [o.tolist() for o in outputs[:1]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="default", help="generalist (default: the embedded one)")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--images", type=int, default=8, help="images predicted by each adapter")
    parser.add_argument("--way", default=None, help=argparse.SUPPRESS)  # internal: measure one way, print JSON
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        print(json.dumps(measure(args.way, args.paths, args.images)))
        return
    with tempfile.TemporaryDirectory() as folder:
        paths = [str(p) for p in make_adapters(args.base, args.adapters, args.rank, Path(folder))]
        rows = []
        for way in ("one base", "separate loads"):
            done = subprocess.run([sys.executable, __file__, "--way", way, "--images", str(args.images), *paths],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    shared, separate = rows
    identical = shared["checksum"] == separate["checksum"] and shared["outputs"] == separate["outputs"]
    for row in rows:
        row.pop("outputs")
    print(f"{args.adapters} adapters (rank {args.rank}) on '{args.base}', {args.images} images each; "
          f"predictions identical both ways: {identical}")
    print_table(rows, [("way", "way", ""), ("adapters", "adapters", "d"), ("load_s", "load s", ".2f"),
                       ("predict_s", "predict s", ".2f"), ("tensor_mb", "tensors MB", ".1f"),
                       ("peak_rss_mb", "peak RSS delta MB", ".0f")])
    ratios = {"load_time": separate["load_s"] / shared["load_s"],
              "tensor_memory": separate["tensor_mb"] / shared["tensor_mb"],
              "peak_rss": separate["peak_rss_mb"] / max(shared["peak_rss_mb"], 1e-9)}
    print("separate / one base: " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items()))
    write_report("adapters", {"base": args.base, "adapters": args.adapters, "rank": args.rank, "images": args.images,
                              "identical": identical, "rows": rows, "separate_over_shared": ratios})


if __name__ == "__main__":
    main()
