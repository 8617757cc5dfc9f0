"""The `adaptkit` command line: one sub-command per job, each a thin shell over the Python API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from adaptkit import __version__

if TYPE_CHECKING:
    from adaptkit.adapters import AdaptedModel


def _format_count(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return str(count)


def cmd_info(args: argparse.Namespace) -> int:
    """Print a generalist's parts, sizes, dtype, resolution and known task prompts."""
    from adaptkit.bases import load_generalist

    generalist = load_generalist(args.base, device=None if args.device is None else _device(args.device))
    config = generalist.config
    print(f"generalist: {config.name}  ({args.base})")
    if config.description:
        print(f"  {config.description}")
    print(f"resolution: {config.resolution} px -> latent {generalist.latent_size} x {generalist.latent_size}")
    print(f"device: {generalist.device}")
    print(f"{'part':<26}{'parameters':>14}  dtype")
    for name, count, dtype in generalist.parts():
        print(f"{name:<26}{_format_count(count):>14}  {dtype}")
    print("task prompts:")
    for task, prompt in config.task_prompts.items():
        print(f"  {task:<16}{prompt}")
    if len(generalist.prompts.cache):
        print(f"cached prompt embeddings: {len(generalist.prompts.cache)}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    """List the bundled recipes."""
    from adaptkit.recipe import list_recipes

    for name, summary in list_recipes():
        print(f"{name:<18}{summary}")
    return 0


def cmd_codecs(args: argparse.Namespace) -> int:
    """List the colour codecs a recipe can name."""
    from adaptkit.codecs import list_codecs

    for name, summary in list_codecs():
        print(f"{name:<14}{summary}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a recipe and every pair of its data without loading any model; print the resolved recipe."""
    from adaptkit.preflight import preflight
    from adaptkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    checked = preflight(recipe, decode=("train", "val", "test"))  # what train checks, and the test split too
    for warning in checked.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    splits = checked.splits
    print(recipe.to_yaml(), end="")
    print(f"# ok: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images selected "
          "and decoded")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train the recipe's LoRA adapter."""
    from adaptkit.recipe import load_recipe
    from adaptkit.training import train

    recipe = load_recipe(args.recipe, args.overrides)
    out = args.out or f"runs/{recipe.name}"
    result = train(recipe, out, resume=args.resume)
    print(f"adapter: {result.adapter}")
    for name, value in result.metrics.items():
        print(f"  {name}: {value:.4f}" if isinstance(value, float) else f"  {name}: {value}")
    print(f"metrics, log and curve: {result.out}/metrics.json, {result.out}/logs/metrics.csv, {result.out}/curve.png")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Tune the recipe's sweep: space with Optuna; test the best adapter once on the test split."""
    from adaptkit.sweep import run_sweep

    return run_sweep(args.recipe, args.overrides, out=args.out, trials=args.trials, storage=args.storage,
                     study_name=args.study, workers=args.workers, worker=args.worker)


def cmd_curve(args: argparse.Namespace) -> int:
    """How many labelled images the task needs: a learning curve over shot counts, with intervals and a fit."""
    from adaptkit.curve import run_curve

    return run_curve(args.recipe, args.overrides, out=args.out, shots=args.shots, repeats=args.repeats,
                     metric=args.metric, target=args.target)


def _load_model(target: str | None, task: str | None, base: str, class_name: str = "",
                device: str | None = None) -> AdaptedModel:
    """An adapter folder / Hub id, or a built-in task of `base` (no adapter: the zero-shot baseline)."""
    from adaptkit.adapters import AdaptedModel, AdapterError
    from adaptkit.inference import builtin_task
    from adaptkit.tasks import find_builtin_task

    if task or (target and find_builtin_task(target) and not Path(target).exists()):
        return builtin_task(base, task or target, class_name, device=device)
    if not target:
        raise AdapterError("give an adapter folder (or Hub id), or --task TASK for a built-in task")
    return AdaptedModel.from_pretrained(target, device=device)


def _inference_settings(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("steps", "guidance", "ensemble", "seed", "uncertainty")
            if getattr(args, k, None) is not None}


def _placement(args: argparse.Namespace):  # -> adaptkit.inference.Placement (imported lazily)
    """--accelerator, --devices, --strategy and --num-nodes checked as `train` checks its recipe's (by name
    against Lightning's registries, then against this machine), and --workers."""
    from adaptkit.inference import Placement
    from adaptkit.preflight import check_devices
    from adaptkit.recipe import RecipeError, check_placement

    where = f"adaptkit {args.command}"
    devices = int(args.devices) if args.devices.strip().isdigit() else args.devices.strip()
    check_placement(args.accelerator, args.strategy, devices, where, prefix="--")
    check_devices(args.accelerator, devices, where, prefix="--")
    if args.num_nodes < 1:
        raise RecipeError(f"{where}: --num-nodes {args.num_nodes}: expected at least 1 machine")
    if args.workers < 0:
        raise RecipeError(f"{where}: --workers {args.workers}: expected 0 (decode in the main process) or more")
    return Placement(args.accelerator, devices, args.strategy, args.num_nodes)


def _load_device(args: argparse.Namespace) -> str | None:
    """Where models load before Lightning places them: on the CPU for CPU runs (each process its own copy),
    else the default device, from which each rank's model moves to its own device."""
    return "cpu" if args.accelerator == "cpu" else None


def cmd_eval(args: argparse.Namespace) -> int:
    """Score an adapter (or a built-in task) on labelled images; write metrics.json, report.md, grid.png."""
    from dataclasses import replace

    from adaptkit.data import DataError, open_source
    from adaptkit.inference import evaluate
    from adaptkit.recipe import DataSection, metric_names, recorded_recipe

    where = _placement(args)
    model = _load_model(args.adapter, args.task, args.base, args.class_name, _load_device(args))
    # the recorded recipe says how the adapter was made, not what this machine holds: never re-validated
    recipe_data = recorded_recipe(model.meta.recipe).data if model.meta else DataSection(source="folder")
    if args.data:
        data = replace(recipe_data, source="folder", path=args.data)
        source = open_source(data, model.codec)
        ids = source.ids()
    elif model.meta:
        if recipe_data.source in ("folder", "coco") and not Path(recipe_data.path).exists():
            raise DataError(f"the adapter's training data {recipe_data.path!r} is not on this machine; "
                            "pass --data FOLDER (images/ and masks/ with matching stems) to evaluate on yours")
        source = open_source(recipe_data, model.codec)
        ids = model.meta.samples.get(args.split) or []
        if not ids:
            raise DataError(f"the adapter records no {args.split!r} images (recorded: "
                             f"{', '.join(k for k, v in model.meta.samples.items() if v)}); pass --split or --data")
    else:
        raise DataError("a built-in task needs --data FOLDER (images/ and masks/ with matching stems)")
    if not ids:
        raise DataError(f"{args.data or recipe_data.path}: no labelled pair to evaluate")
    beside = args.adapter and Path(args.adapter).is_dir()  # a Hub id's folder is the read-only cache: not there
    out = Path(args.out or (Path(args.adapter).parent / f"eval-{args.split}" if beside else f"eval-{args.split}"))
    metrics = args.metrics.split(",") if args.metrics else (model.meta.recipe["eval"]["metrics"] or None
                                                            if model.meta else None)
    metric_names(model.codec, metrics, "--metrics")
    split = Path(args.data).name if args.data else args.split
    report = evaluate(model, source, out, metrics=metrics, split=split if model.meta else "", ids=ids,
                      workers=args.workers, batch_size=args.batch_size, where=where, **_inference_settings(args))
    if not report.is_global_zero:
        return 0
    for pair, reason in report.skipped.items():
        print(f"skipped {pair}: {reason}", file=sys.stderr)
    if not report.images:
        print(f"error: nothing was evaluated: none of the {len(ids)} pair(s) could be used", file=sys.stderr)
        return 2
    print(report.table())
    print(f"written: {out}/metrics.json, {out}/report.md, {out}/grid.png ({report.images} pair(s) scored on "
          f"{report.processes} process(es), {len(report.skipped)} skipped)")
    return 0


def _is_adapter(argument: str) -> bool:
    """How `predict` tells adapters from inputs: a folder holding adaptkit.json, or a Hub id (owner/name[@rev])
    that is not a local path and has no image suffix."""
    from adaptkit.adapters import ADAPTER_META_FILE
    from adaptkit.hub import is_hub_ref
    from adaptkit.images import IMAGE_SUFFIXES

    path = Path(argument).expanduser()
    return (path / ADAPTER_META_FILE).is_file() or (is_hub_ref(argument) and path.suffix.lower() not in IMAGE_SUFFIXES)


def _output_names(adapters: list[str]) -> list[str]:
    """One sub-folder name per adapter: a Hub id's owner--name, a run's name for runs/NAME/adapter."""
    names, seen = [], set()
    for adapter in adapters:
        path = Path(adapter)
        if path.is_dir():
            name = path.resolve().parent.name if path.resolve().name in ("adapter", "best") else path.resolve().name
        else:
            name = adapter.replace("/", "--").replace("@", "-")
        unique, count = name, 1
        while unique in seen:
            count += 1
            unique = f"{name}-{count}"
        seen.add(unique)
        names.append(unique)
    return names


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict images, files, folders or globs with one or several adapters on one loaded base."""
    from adaptkit.adapters import AdapterError, load_adapters
    from adaptkit.inference import predict_files

    items = list(args.items)
    if args.adapter:
        adapters, inputs = list(args.adapter), items
    else:
        count = 1 + next((i for i, item in enumerate(items[1:]) if not _is_adapter(item)), len(items) - 1)
        adapters, inputs = items[:count], items[count:]
    if not inputs:
        raise AdapterError("no inputs: give image files, folders or globs after the adapter(s)")
    tasks = [a for a in adapters if not _is_adapter(a) and not Path(a).exists()]
    if tasks and len(adapters) > 1:
        raise AdapterError(f"{tasks[0]!r} is neither an adapter folder (holding adaptkit.json) nor a Hub id; "
                           "several adapters must each be one")
    where = _placement(args)
    device = _load_device(args)
    models = ([_load_model(adapters[0], None, args.base, args.class_name, device)] if tasks or len(adapters) == 1
              else load_adapters(adapters, device))
    outs = [Path(args.out)] if len(models) == 1 else [Path(args.out) / name for name in _output_names(adapters)]
    reports = predict_files(models, inputs, outs, raw=args.raw, recursive=args.recursive, split=args.split,
                            image_column=args.image_column, workers=args.workers, overwrite=args.overwrite,
                            where=where, batch_size=args.batch_size, **_inference_settings(args))
    if not reports[0].is_global_zero:
        return 0  # rank 0 speaks for the run
    for path, reason in reports[0].skipped.items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    for report, out in zip(reports, outs, strict=True):
        if not report.written and not report.already:
            print(f"error: nothing was predicted: none of {' '.join(inputs)} gave a readable image "
                  f"({len(report.skipped)} input(s) skipped)", file=sys.stderr)
            return 2
        print(report.summary(out))
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    """Rank unlabelled images by how much labelling each would help the adapter; write the best --n."""
    from adaptkit.suggest import suggest_labels

    settings = _inference_settings(args)
    beside = Path(args.adapter).is_dir()  # a Hub id's folder is the read-only cache: not there
    out = Path(args.out or (Path(args.adapter).parent / "suggested" if beside else "suggested"))
    model = _load_model(args.adapter, None, args.base, args.class_name, _load_device(args))
    report = suggest_labels(model, args.inputs, args.n, out, recursive=args.recursive, workers=args.workers,
                     where=_placement(args), batch_size=args.batch_size, **settings)
    if not report.is_global_zero:
        return 0
    for path, reason in report.skipped.items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    for suggestion in report.suggested[:10]:
        print(f"{suggestion.rank:4d}. {suggestion.source}  (uncertainty {suggestion.uncertainty:.3f})")
    if len(report.suggested) > 10:
        print(f"      ... {len(report.suggested) - 10} more")
    print(report.summary(out))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Upload an adapter folder (with its card, evaluation grid and curve) to a Hub model repo."""
    from adaptkit.hub import push

    where = push(args.adapter, args.repo_id, private=args.private, revision=args.revision, message=args.message)
    print(f"pushed {args.adapter} to {where}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Adapt the embedded default to a task it never saw, then evaluate and predict: the 5-minute tour."""
    from adaptkit.adapters import AdaptedModel
    from adaptkit.data import check_all, open_source
    from adaptkit.images import to_pil
    from adaptkit.inference import evaluate, predict_files
    from adaptkit.recipe import load_recipe
    from adaptkit.training import train

    recipe = load_recipe("quickstart", args.overrides)
    out = Path(args.out)
    for index in range(2, 1000):  # never overwrite an earlier run
        if not out.exists():
            break
        out = Path(f"{args.out}-{index}")
    print(f"1/3 train: {recipe.name} ({recipe.task.prompt}, {recipe.data.train_shots} images) -> {out}")
    result = train(recipe, out)
    model = AdaptedModel.from_pretrained(result.adapter)
    test = check_all(open_source(recipe.data, model.codec), model.meta.samples["test"])
    print(f"2/3 evaluate on {len(test)} held-out test images, before and after adaptation")
    with model.generalist.denoiser.disable_adapter():
        before = evaluate(model, test, out / "eval-before", progress=False)
    after = evaluate(model, test, out / "eval", split="test")
    print("3/3 predict a few images")
    (out / "inputs").mkdir()
    for sample in test[:4]:
        to_pil(sample.image).save(out / "inputs" / f"{sample.id}.png")
    predict_files(model, [str(out / "inputs")], out / "predictions", raw=True, progress=False)
    print(f"\n{'metric':<12}{'before':>10}{'after':>10}")
    for name, value in after.metrics.items():
        print(f"{name:<12}{before.metrics[name]:>10.3f}{value:>10.3f}")
    print(f"\ntrainable parameters: {result.trainable_parameters:,} "
          f"({100 * result.trainable_parameters / result.base_parameters:.2f}% of the transformer)")
    print(f"adapter:        {result.adapter}")
    print(f"training curve: {out / 'curve.png'}")
    print(f"evaluation:     {out / 'eval' / 'report.md'}, {out / 'eval' / 'grid.png'} "
          f"(before adaptation: {out / 'eval-before'})")
    print(f"predictions:    {out / 'predictions'}")
    return 0


def _device(name: str) -> str:
    """`--device NAME` checked before anything loads: a torch device name this machine has."""
    import torch

    from adaptkit.recipe import RecipeError

    try:
        device = torch.device(name)
    except RuntimeError:
        raise RecipeError(f"--device {name!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"--device {name}: this machine has no CUDA device; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise RecipeError(f"--device {name!r}: expected cpu, cuda or cuda:N")
    return str(device)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain (or resume pretraining) the embedded default generalist on the synthetic world."""
    from adaptkit.pretrain import STAGES, pretrain, pretrain_config, refuse_finished
    from adaptkit.recipe import RecipeError, parse_overrides

    stages = tuple(stage.strip() for stage in args.stages.split(","))
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown or not stages:
        raise RecipeError(f"--stages {args.stages!r}: unknown stage(s) {', '.join(unknown)}; stages: "
                          f"{', '.join(STAGES)}")
    if args.workers < 1:
        raise RecipeError(f"--workers {args.workers}: expected at least 1 rendering process")
    device = _device(args.device)
    config = pretrain_config(args.out, parse_overrides(args.settings))
    refuse_finished(args.out, config, stages)
    generalist = pretrain(args.out, config, stages, device=device, workers=args.workers)
    print(f"generalist written to {args.out}/default ({generalist.config.description})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptkit",
        description="Adapt a frozen generalist perception diffusion model (DICEPTION) to new tasks "
                    "from ~50 labelled images with LoRA.")
    parser.add_argument("--version", action="version", version=f"adaptkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    parser.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                        help="refuse images with more pixels (default 100,000,000; env ADAPTKIT_MAX_IMAGE_PIXELS)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    info = add("info", cmd_info, "describe a generalist: parts, parameter counts, dtype, task prompts")
    info.add_argument("base", help="'tiny', 'diception', an adaptkit generalist folder or a Hub repo id")
    info.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")

    add("recipes", cmd_recipes, "list the bundled recipes")
    add("codecs", cmd_codecs, "list the colour codecs (how a task's target becomes an RGB image)")
    overrides_help = "recipe overrides as key.path=value, e.g. train.lr=3e-4 adapter.rank=8"
    check = add("check", cmd_check, "validate a recipe and list its data, without loading a model")
    check.add_argument("recipe", help="a recipe YAML file or the name of a bundled recipe")
    check.add_argument("overrides", nargs="*", help=overrides_help)

    train = add("train", cmd_train, "train a LoRA adapter from a recipe")
    train.add_argument("recipe", help="a recipe YAML file or the name of a bundled recipe")
    train.add_argument("overrides", nargs="*", help=overrides_help)
    train.add_argument("--out", default=None, help="output folder (default: runs/RECIPE_NAME)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")

    sweep = add("sweep", cmd_sweep, "tune a recipe's sweep: space with Optuna, then test the best adapter once")
    sweep.add_argument("recipe", help="a recipe YAML file (with a sweep: section) or a bundled recipe's name")
    sweep.add_argument("overrides", nargs="*", help=overrides_help)
    sweep.add_argument("--trials", type=int, default=None, help="number of trials (default: the recipe's sweep.trials)")
    sweep.add_argument("--out", default=None, help="output folder (default: runs/RECIPE_NAME-sweep); re-run to resume")
    sweep.add_argument("--storage", default=None,
                       help="an Optuna RDB URL, e.g. postgresql://user@host/db for several machines "
                            "(default: a journal file in --out)")
    sweep.add_argument("--study", default=None, help="study name (default: the recipe's name)")
    sweep.add_argument("--workers", type=int, default=1, help="worker processes on this machine (one GPU each)")
    sweep.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # set on the processes it starts

    curve = add("curve", cmd_curve, "how many labelled images does the task need? train and test adapters on "
                                    "nested subsets of growing size, with bootstrap intervals and a fitted power law")
    curve.add_argument("recipe", help="a recipe YAML file or the name of a bundled recipe")
    curve.add_argument("overrides", nargs="*", help=overrides_help)
    curve.add_argument("--shots", type=int, nargs="+", default=None, metavar="K",
                       help="training images per point, each at most data.train_shots (default: 5 10 25 50)")
    curve.add_argument("--repeats", type=int, default=None,
                       help="subsets (and training seeds) per shot count (default: 3)")
    curve.add_argument("--metric", default=None, help="the test metric (default: the recipe's monitored one)")
    curve.add_argument("--target", type=float, default=None,
                       help="the metric value to find the number of images for (default: within 5%% of the fitted "
                            "ceiling)")
    curve.add_argument("--out", default=None, help="output folder (default: runs/RECIPE_NAME-curve); re-run to resume")

    from adaptkit.uncertainty import DEFAULT_ESTIMATOR, ESTIMATORS

    def add_inference_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--base", default="default", help="generalist for a built-in task (default: the embedded one)")
        sub.add_argument("--class-name", default="", help="class name for the built-in semantic task")
        sub.add_argument("--steps", type=int, default=None, help="sampling steps (default: the adapter's)")
        sub.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: adapter's)")
        sub.add_argument("--ensemble", type=int, default=None, help="average K samples (continuous) or vote (masks)")
        sub.add_argument("--seed", type=int, default=None, help="sampling seed (default: the adapter's)")
        sub.add_argument("--uncertainty", nargs="?", const=DEFAULT_ESTIMATOR, default=None, choices=ESTIMATORS,
                         help=f"also a per-pixel uncertainty map, by {', '.join(ESTIMATORS)} (default "
                              f"{DEFAULT_ESTIMATOR}; see the README)")
        sub.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the adapter's)")
        sub.add_argument("--workers", type=int, default=0,
                         help="processes that decode inputs ahead of the model (default 0: the main process)")
        sub.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu, cuda, ...")
        sub.add_argument("--devices", default="1",
                         help="devices (or CPU processes) per machine: N, -1 (all), 'auto' or indices '0,1' "
                              "(default 1)")
        sub.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp (default: auto)")
        sub.add_argument("--num-nodes", type=int, default=1, help="machines (torchrun / SLURM launch them; default 1)")

    evaluate = add("eval", cmd_eval, "evaluate an adapter or a built-in task with torchmetrics")
    evaluate.add_argument("adapter", nargs="?", default=None, help="adapter folder or Hub id")
    evaluate.add_argument("--task", default=None, help="a built-in task of --base instead of an adapter")
    evaluate.add_argument("--data", default=None, help="a folder of images/ and masks/ (default: the adapter's data)")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"],
                          help="which recorded split of the adapter's data (default: test)")
    evaluate.add_argument("--metrics", default=None, help="comma-separated metric names (default: the recipe's)")
    evaluate.add_argument("--out", default=None, help="output folder (default: beside the adapter)")
    add_inference_options(evaluate)

    predict = add("predict", cmd_predict, "predict images with one or several adapters, or a built-in task")
    predict.add_argument("items", nargs="+", metavar="ADAPTER... INPUT...",
                         help="one or more adapters (folders holding adaptkit.json, or Hub ids owner/name[@rev]; "
                              "the first may be a built-in task name: depth, normal, ...), then image files, "
                              "folders, glob patterns, @FILE (a path a line), hf:DATASET or a save_to_disk folder")
    predict.add_argument("--adapter", action="append", default=None,
                         help="an adapter, repeatable; then every positional argument is an input")
    predict.add_argument("--out", required=True, help="output folder (several adapters: one sub-folder each)")
    predict.add_argument("--raw", action="store_true", help="also write the raw colour-encoded image")
    predict.add_argument("--recursive", action="store_true", help="take images in the folders' sub-folders too")
    predict.add_argument("--overwrite", action="store_true",
                         help="predict every input again (default: a rerun skips inputs whose outputs are complete)")
    predict.add_argument("--split", default="train", help="the split of a dataset input (hf:NAME or a "
                                                          "save_to_disk folder; default train)")
    predict.add_argument("--image-column", default="image", help="the image column of a dataset input "
                                                                 "(default image)")
    add_inference_options(predict)

    suggest = add("suggest", cmd_suggest, "which images to label next: rank unlabelled images by the adapter's "
                                          "uncertainty, with diversity, and write the best --n")
    suggest.add_argument("adapter", help="adapter folder or Hub id")
    suggest.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="the unlabelled images: files, folders, glob patterns, @FILE, hf:DATASET")
    suggest.add_argument("--n", type=int, required=True, help="how many images to suggest")
    suggest.add_argument("--out", default=None,
                         help="output folder for suggested.txt/.json/.png (default: beside the adapter)")
    suggest.add_argument("--recursive", action="store_true", help="take images in the folders' sub-folders too")
    add_inference_options(suggest)

    push = add("push", cmd_push, "upload an adapter to a Hugging Face Hub model repo (created if needed)")
    push.add_argument("adapter", help="an adapter folder (runs/NAME/adapter, or a sweep's best/)")
    push.add_argument("repo_id", help="the model repo, owner/name")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", default=None, help="a branch to push to (created if needed; default: main)")
    push.add_argument("--message", default=None, help="the commit message")

    quick = add("quickstart", cmd_quickstart, "adapt the embedded default to a new task: train, evaluate, predict")
    quick.add_argument("overrides", nargs="*", help=overrides_help)
    quick.add_argument("--out", default="runs/quickstart", help="output folder (a new one if it exists)")

    pre = add("pretrain", cmd_pretrain, "pretrain the embedded default on the synthetic world (hours; resumable)")
    pre.add_argument("--out", required=True, help="run folder; an existing one is resumed")
    pre.add_argument("--stages", default="vae,generalist", help="comma-separated: vae, generalist (default: both)")
    pre.add_argument("--device", default="cpu", help="where to train: cpu (default), cuda or cuda:N")
    pre.add_argument("--workers", type=int, default=1, help="processes that render the synthetic world (default 1)")
    pre.add_argument("settings", nargs="*", help="PretrainConfig overrides as key=value, e.g. steps=5000, "
                                                 "precision=bf16, spec.patch_size=1; a resumed run starts from "
                                                 "its recorded settings")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # a variable-length positional (`key.path=value` overrides, predict's adapters and inputs) may also follow
    # options (`train R --out D train.lr=1e-3`, `predict A --base tiny x.png`), which argparse alone cannot mix
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra and hasattr(args, "items") and not any(e.startswith("-") for e in extra):
        args.items = [*args.items, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    from adaptkit.errors import AdaptkitError

    previous_limit = os.environ.get("ADAPTKIT_MAX_IMAGE_PIXELS")
    if args.max_image_pixels is not None:  # for this command only (main also runs in-process, e.g. in tests)
        os.environ["ADAPTKIT_MAX_IMAGE_PIXELS"] = str(args.max_image_pixels)

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # no banner chatter
    try:
        return args.handler(args)
    except AdaptkitError as error:
        # the user's input is at fault and the message says what to fix: no traceback
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # anything else is adaptkit's fault: say so, keep the traceback for the report
        if args.debug:
            raise
        report = _write_traceback()
        first_line = (str(error).splitlines() or [""])[0]
        print(f"error: {type(error).__name__}: {first_line} -- this is a bug in adaptkit, not in your input; the full "
              f"traceback is in {report} (rerun with --debug to show it here; please report it)", file=sys.stderr)
        return 1
    finally:
        if previous_limit is None:
            os.environ.pop("ADAPTKIT_MAX_IMAGE_PIXELS", None)
        else:
            os.environ["ADAPTKIT_MAX_IMAGE_PIXELS"] = previous_limit


def _write_traceback() -> Path:
    """Write the current exception's traceback to a new file in the temp folder and return its path."""
    handle, name = tempfile.mkstemp(prefix=f"adaptkit-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
    with os.fdopen(handle, "w") as file:
        file.write(f"adaptkit {__version__}\nargv: {sys.argv}\n\n{traceback.format_exc()}")
    return Path(name)


if __name__ == "__main__":
    sys.exit(main())
