"""The `adaptkit` command line: one sub-command per job, each a thin shell over the Python API."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from adaptkit import __version__


def _format_count(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return str(count)


def cmd_info(args: argparse.Namespace) -> int:
    """Print a generalist's parts, sizes, dtype, resolution and known task prompts."""
    from adaptkit.generalist import load_generalist

    generalist = load_generalist(args.base, device=args.device)
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
    """Validate a recipe and its data listing without loading any model; print the resolved recipe."""
    from adaptkit.codecs import build_codec
    from adaptkit.data import load_splits
    from adaptkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    codec = build_codec(recipe.task.codec, recipe.task.codec_args)
    _, splits = load_splits(recipe.data, codec)
    print(recipe.to_yaml(), end="")
    print(f"# ok: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images selected")
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


def _load_model(target: str | None, task: str | None, base: str, class_name: str = ""):
    """An adapter folder / Hub id, or a built-in task of `base` (no adapter: the zero-shot baseline)."""
    from adaptkit.adapters import AdaptedModel
    from adaptkit.inference import BUILTIN_CODECS, builtin_task

    if task or (target in BUILTIN_CODECS and not Path(target).exists()):
        return builtin_task(base, task or target, class_name)
    if not target:
        raise SystemExit("error: give an adapter folder (or Hub id), or --task TASK for a built-in task")
    return AdaptedModel.from_pretrained(target)


def _inference_settings(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("steps", "guidance", "ensemble", "seed") if getattr(args, k) is not None}


def cmd_eval(args: argparse.Namespace) -> int:
    """Score an adapter (or a built-in task) on labelled images; write metrics.json, report.md, grid.png."""
    from dataclasses import replace

    from adaptkit.data import check_all, open_source
    from adaptkit.inference import evaluate
    from adaptkit.recipe import DataSection, load_recipe

    model = _load_model(args.adapter, args.task, args.base, args.class_name)
    recipe_data = load_recipe(model.meta.recipe).data if model.meta else DataSection(source="folder")
    if args.data:
        data = replace(recipe_data, source="folder", path=args.data)
        source = open_source(data, model.codec)
        ids = source.ids()
    elif model.meta:
        source = open_source(recipe_data, model.codec)
        ids = model.meta.samples.get(args.split) or []
        if not ids:
            raise SystemExit(f"error: the adapter records no {args.split!r} images (recorded: "
                             f"{', '.join(k for k, v in model.meta.samples.items() if v)}); pass --split or --data")
    else:
        raise SystemExit("error: a built-in task needs --data FOLDER (images/ and masks/ with matching stems)")
    samples = check_all(source, ids)
    out = Path(args.out or (Path(args.adapter).parent / f"eval-{args.split}" if args.adapter else "eval"))
    metrics = args.metrics.split(",") if args.metrics else (model.meta.recipe["eval"]["metrics"] or None
                                                            if model.meta else None)
    report = evaluate(model, samples, out, metrics=metrics, **_inference_settings(args))
    print(report.table())
    print(f"written: {out}/metrics.json, {out}/report.md, {out}/grid.png")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict images, files, folders or globs; write masks, depth maps, instances... in native formats."""
    from adaptkit.inference import predict_files

    model = _load_model(args.adapter, None, args.base, args.class_name)
    report = predict_files(model, args.inputs, args.out, raw=args.raw, **_inference_settings(args))
    for path, reason in report.skipped.items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"{len(report.written)} prediction(s) written to {args.out} ({len(report.skipped)} input(s) skipped)")
    return 0 if report.written or not report.skipped else 1


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
    after = evaluate(model, test, out / "eval")
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


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain (or resume pretraining) the embedded default generalist on the synthetic world."""
    import yaml

    from adaptkit.pretrain import PretrainConfig, pretrain

    values = {}
    for text in args.settings:
        key, _, raw = text.partition("=")
        if key not in PretrainConfig.__dataclass_fields__:
            raise SystemExit(f"error: unknown pretraining setting {key!r}; settings: "
                             f"{', '.join(PretrainConfig.__dataclass_fields__)}")
        values[key] = yaml.safe_load(raw)
    generalist = pretrain(args.out, PretrainConfig(**values), tuple(args.stages.split(",")))
    print(f"generalist written to {args.out}/default ({generalist.config.description})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptkit",
        description="Adapt a frozen generalist perception diffusion model (DICEPTION) to new tasks "
                    "from ~50 labelled images with LoRA.")
    parser.add_argument("--version", action="version", version=f"adaptkit {__version__}")
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

    def add_inference_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--base", default="default", help="generalist for a built-in task (default: the embedded one)")
        sub.add_argument("--class-name", default="", help="class name for the built-in semantic task")
        sub.add_argument("--steps", type=int, default=None, help="sampling steps (default: the adapter's)")
        sub.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: adapter's)")
        sub.add_argument("--ensemble", type=int, default=None, help="average K samples (continuous) or vote (masks)")
        sub.add_argument("--seed", type=int, default=None, help="sampling seed (default: the adapter's)")

    evaluate = add("eval", cmd_eval, "evaluate an adapter or a built-in task with torchmetrics")
    evaluate.add_argument("adapter", nargs="?", default=None, help="adapter folder or Hub id")
    evaluate.add_argument("--task", default=None, help="a built-in task of --base instead of an adapter")
    evaluate.add_argument("--data", default=None, help="a folder of images/ and masks/ (default: the adapter's data)")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"],
                          help="which recorded split of the adapter's data (default: test)")
    evaluate.add_argument("--metrics", default=None, help="comma-separated metric names (default: the recipe's)")
    evaluate.add_argument("--out", default=None, help="output folder (default: beside the adapter)")
    add_inference_options(evaluate)

    predict = add("predict", cmd_predict, "predict images with an adapter or a built-in task")
    predict.add_argument("adapter", help="adapter folder, Hub id, or a built-in task name (depth, normal, ...)")
    predict.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--raw", action="store_true", help="also write the raw colour-encoded image")
    add_inference_options(predict)

    quick = add("quickstart", cmd_quickstart, "adapt the embedded default to a new task: train, evaluate, predict")
    quick.add_argument("overrides", nargs="*", help=overrides_help)
    quick.add_argument("--out", default="runs/quickstart", help="output folder (a new one if it exists)")

    pre = add("pretrain", cmd_pretrain, "pretrain the embedded default on the synthetic world (hours; resumable)")
    pre.add_argument("--out", required=True, help="run folder; an existing one is resumed")
    pre.add_argument("--stages", default="vae,generalist", help="comma-separated: vae, generalist")
    pre.add_argument("settings", nargs="*", help="PretrainConfig overrides as key=value, e.g. steps=5000")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key.path=value` overrides may also follow options (`train R --out D train.lr=1e-3`), which argparse
    # alone cannot mix with a variable-length positional
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    from adaptkit.adapters import AdapterError
    from adaptkit.codecs import CodecError
    from adaptkit.data import DataError
    from adaptkit.generalist import CheckpointError
    from adaptkit.recipe import RecipeError
    from adaptkit.training import TrainingError

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # no banner chatter
    try:
        return args.handler(args)
    except (RecipeError, CodecError, DataError, AdapterError, CheckpointError, TrainingError) as error:
        # the user's input is at fault and the message says what to fix: no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
