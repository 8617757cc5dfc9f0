"""`adaptkit curve`: how many labelled images does a task need? A learning curve with intervals and an answer.

A curve reads top to bottom like the job it does:
1. check the recipe, the shot counts and the data, and load the fixed test split (no model yet);
2. draw the training subsets: repeat r permutes the recipe's training pool with seed (data.seed, r), and the
   k-shot subset is the first k of that permutation, so within a repeat the 5-shot set lies inside the 10-shot
   set, and repeats draw different sets; the point (k, r) trains with seed train.seed + 1000 r + k;
3. train every point not yet done on one loaded base (`training.lend`, as a sweep's trials), each a normal run
   folder `points/shots-K-repeat-R/` whose adapter a user can load, evaluate and predict with;
4. score every adapter, loaded the way users load it, on the same test images: the recipe's metrics per test
   image (kept in `curve.json`, so every statistic can be recomputed) and over the whole split;
5. summarise: per shot count the mean of the per-image scores over repeats, with a 95% percentile interval from
   a bootstrap that resamples repeats and test images together; fit the saturating power law
   metric(n) = a - b n^-c (mirrored, a + b n^-c, for a lower-is-better metric) to the means, refit it on every
   bootstrap resample for its interval, and invert it for "about N labelled images for <metric> <target>",
   said only when the fit can support it (`answer`); write `curve.json` and `curve.png`.

Why per-image means: they make the bootstrap over test images exact and alike for every codec (a split-level
ratio such as micro IoU is not a mean of image scores); the split-level values are recorded beside them.

A point is recorded in `curve.json` once it is scored, so a killed curve reruns only its missing points (an
interrupted point restarts from scratch: points are short, and a restart is the same run), as it does a point
whose adapter folder was deleted. Points depend on
the recipe and on (k, r) alone, so a rerun with more shot counts or repeats trains only the new points, and a
rerun with another `--metric` or `--target` trains nothing; a rerun with a different recipe is refused.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adaptkit.data import DataError, Sample, Splits, check_all, load_splits
from adaptkit.errors import AdaptkitError
from adaptkit.files import read_json, write_atomic
from adaptkit.generalist import Generalist
from adaptkit.metrics import HIGHER_IS_BETTER, build_codec_metrics, default_metric_names
from adaptkit.recipe import Recipe, load_recipe

RECORD = "curve.json"
DEFAULT_SHOTS = (5, 10, 25, 50)
DEFAULT_REPEATS = 3
#: Bootstrap resamples for the intervals (each also refits the power law).
RESAMPLES = 1000
#: Without `--target`, the answer is for getting within 5% of the fitted ceiling (95% of it, for higher-is-better).
CEILING_FRACTION = 0.95
#: An answer whose interval reaches beyond this many times the largest measured shot count is not given.
EXTRAPOLATION = 4.0
#: The power law has 3 parameters: with fewer shot counts than this, a fit cannot be checked against the data.
MIN_SHOT_COUNTS = 4


class CurveError(AdaptkitError):
    """A learning curve that cannot run as asked (the message says what to change)."""


# ------------------------------------------------------------------------ the points
def point_name(shots: int, repeat: int) -> str:
    return f"shots-{shots}-repeat-{repeat}"


def draw_subsets(pool: Sequence[str], shots: Sequence[int], repeats: int, seed: int,
                 ) -> dict[tuple[int, int], list[str]]:
    """Training ids per (shots, repeat): the first `shots` of a permutation of the sorted pool seeded by
    (seed, repeat), so subsets are nested within a repeat and differ across repeats."""
    order = sorted(pool)
    subsets = {}
    for repeat in range(repeats):
        permuted = [order[i] for i in np.random.default_rng([seed, repeat]).permutation(len(order))]
        subsets.update({(k, repeat): permuted[:k] for k in shots})
    return subsets


def point_seed(recipe: Recipe, shots: int, repeat: int) -> int:
    """Each point's own training seed: a function of the point alone, so adding shot counts changes no other."""
    return recipe.train.seed + 1000 * repeat + shots


def check_request(recipe: Recipe, shots: Sequence[int], repeats: int, metric: str | None,
                  target: float | None) -> tuple[str, bool]:
    """Refuse what cannot give a curve, in one line each, before anything loads; the metric and its direction."""
    pool = recipe.data.train_shots
    if not shots:
        raise CurveError("--shots: give at least one shot count, e.g. --shots 5 10 25 50")
    if bad := [k for k in shots if k < 1]:
        raise CurveError(f"--shots: {bad[0]} is not a positive number of training images")
    if len(set(shots)) != len(shots):
        twice = sorted({k for k in shots if list(shots).count(k) > 1})
        raise CurveError(f"--shots: {', '.join(map(str, twice))} given more than once; give each shot count once")
    if too_many := [k for k in shots if k > pool]:
        raise CurveError(f"--shots {too_many[0]}: the training pool has {pool} images ({recipe.source}: "
                         f"data.train_shots); ask for at most {pool}, or raise data.train_shots=N")
    if repeats < 1:
        raise CurveError(f"--repeats must be >= 1, got {repeats}")
    if recipe.data.test_shots == 0:
        raise CurveError(f"{recipe.source}: data.test_shots is 0, but every point of a curve is scored on the test "
                         "split; set data.test_shots=N (e.g. 100) or -1 (all pairs left over)")
    if target is not None and not math.isfinite(target):
        raise CurveError(f"--target must be a finite number, got {target}")
    from adaptkit.codecs import build_codec

    codec = build_codec(recipe.task.codec, recipe.task.codec_args)
    names = list(build_codec_metrics(codec, recipe.eval.metrics or None).keys())
    chosen = metric or recipe.train.monitor or (recipe.eval.metrics or default_metric_names(codec))[0]  # training's
    if chosen not in names:
        raise CurveError(f"--metric {chosen!r} is not one of the recipe's metrics ({', '.join(names)}); set "
                         "eval.metrics to add one")
    return chosen, HIGHER_IS_BETTER.get(chosen, True)


def score_adapter(base: Generalist, adapter: Path, samples: Sequence[Sample], names: list[str] | None,
                  ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """The recipe's metrics of one adapter on `samples`: per image (each image scored alone) and over the split.

    The adapter is loaded as users load it (`AdaptedModel.from_pretrained`, fingerprint checked) onto the lent
    base, and is off it again afterwards.
    """
    from adaptkit.adapters import AdaptedModel
    from adaptkit.training import lend

    with lend(base):
        model = AdaptedModel.from_pretrained(adapter, generalist=base)
        points = [s.points for s in samples] if any(s.points for s in samples) else None
        predictions = model.predict([s.image for s in samples], points=points, progress=False)
    whole = build_codec_metrics(model.codec, names)
    per_image: dict[str, list[float]] = {}
    for prediction, sample in zip(predictions, samples, strict=True):
        one = build_codec_metrics(model.codec, names)
        one.update(prediction, sample.target)
        whole.update(prediction, sample.target)
        for name, value in one.compute().items():
            per_image.setdefault(name, []).append(float(value))
    return per_image, {name: float(value) for name, value in whole.compute().items()}


# ------------------------------------------------------------------------ statistics
def bootstrap_means(scores: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(shots, repeats, images) per-image scores -> (resamples, shots) bootstrap means.

    Each resample draws repeats with replacement, then test images with replacement (first all repeat draws,
    then all image draws, from one `default_rng(seed)`), the same draw for every shot count: the test images are
    shared by all points, so a resample moves the whole curve together, as refitting it needs. NaN scores (a
    metric undefined on an image) are left out of a mean.
    """
    _, repeats, images = scores.shape
    rng = np.random.default_rng(seed)
    chosen_repeats = rng.integers(0, repeats, (resamples, repeats))
    chosen_images = rng.integers(0, images, (resamples, images))
    drawn = scores[:, chosen_repeats[:, :, None], chosen_images[:, None, :]]  # (shots, resamples, repeats, images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN resample gives NaN
        return np.nanmean(drawn, axis=(2, 3)).T


@dataclass
class PowerLaw:
    """metric(n) = ceiling - sign b n^-c, sign +1 for a higher-is-better metric (rises to its ceiling) and -1 for
    a lower-is-better one (falls to its floor, still called `ceiling`: the limit more images approach)."""

    ceiling: float
    scale: float
    exponent: float
    higher: bool

    def __call__(self, shots: np.ndarray | float) -> np.ndarray:
        sign = 1.0 if self.higher else -1.0
        return self.ceiling - sign * self.scale * np.power(np.asarray(shots, float), -self.exponent)

    def shots_for(self, target: float) -> float:
        """The n where the curve reaches `target`; inf when the target lies beyond the ceiling."""
        gap = (self.ceiling - target) * (1.0 if self.higher else -1.0)
        if gap <= 0 or self.scale <= 0:
            return math.inf if gap <= 0 else 0.0
        return float((self.scale / gap) ** (1.0 / self.exponent))


def fit_power_law(shots: Sequence[float], values: Sequence[float], higher: bool) -> PowerLaw | None:
    """Least-squares fit of the saturating power law to (shots, values); None when it does not converge.

    b >= 0 and 0.05 <= c <= 3 keep it saturating in the measured direction (c above 3 is a step, below 0.05 a
    line that never bends)."""
    from scipy.optimize import OptimizeWarning, curve_fit

    n, y = np.asarray(shots, float), np.asarray(values, float)
    if len(n) < 3 or not np.all(np.isfinite(y)):
        return None
    sign = 1.0 if higher else -1.0

    def model(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
        return a - sign * b * np.power(x, -c)

    best = y[np.argmax(sign * y)]
    span = float(np.ptp(y)) or 1e-3
    start = (best + sign * 0.1 * span, span * float(n.min()) ** 0.5, 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            (a, b, c), _ = curve_fit(model, n, y, p0=start, bounds=([-np.inf, 0.0, 0.05], [np.inf, np.inf, 3.0]),
                                     maxfev=5000)
    except (RuntimeError, ValueError, OptimizeWarning):
        return None
    return PowerLaw(float(a), float(b), float(c), higher)


@dataclass
class Row:
    """One shot count of the table: the mean of per-image scores over repeats and its 95% bootstrap interval."""

    shots: int
    mean: float
    low: float
    high: float
    repeats: list[float]  # each repeat's mean over the test images


@dataclass
class Answer:
    """"About N labelled images for <metric> <target>", or why the curve cannot say (`reason`)."""

    metric: str
    target: float | None  # None: CEILING_FRACTION of the fitted ceiling
    target_value: float | None = None
    shots: float | None = None
    low: float | None = None
    high: float | None = None
    fit: dict[str, Any] | None = None  # the power law's parameters, each with its interval
    reason: str | None = None
    smallest: int | None = None  # the smallest count measured, when the answer lies below it

    @property
    def text(self) -> str:
        if self.reason:
            return f"no reliable answer: {self.reason}"
        what = f"{self.metric} {self.target_value:.3f}" + (
            "" if self.target is not None else f" (within {100 - 100 * CEILING_FRACTION:g}% of the fitted ceiling)")
        if self.smallest is not None:
            return f"at most {self.smallest} labelled images for {what}: the smallest count measured reaches it"
        return f"about {math.ceil(self.shots)} labelled images for {what} (95% interval {math.ceil(self.low)}-" \
               f"{math.ceil(self.high)})"


def summarise(scores: np.ndarray, shots: Sequence[int], resamples: int = RESAMPLES, seed: int = 0,
              ) -> tuple[list[Row], np.ndarray]:
    """The table's rows from (shots, repeats, images) scores, and the bootstrap means behind their intervals."""
    boot = bootstrap_means(scores, resamples, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = [Row(k, float(np.nanmean(scores[i])), float(np.nanpercentile(boot[:, i], 2.5)),
                    float(np.nanpercentile(boot[:, i], 97.5)), [float(v) for v in np.nanmean(scores[i], axis=1)])
                for i, k in enumerate(shots)]
    return rows, boot


def answer(rows: Sequence[Row], boot: np.ndarray, metric: str, higher: bool, target: float | None,
           ) -> tuple[Answer, list[PowerLaw]]:
    """The fit's answer, given only when the curve supports it (each refusal says which test failed): at least
    `MIN_SHOT_COUNTS` shot counts, the fitted curve inside every shot count's interval, the target reachable by
    at least 97.5% of the bootstrap refits (so N's interval is finite), and that interval within
    `EXTRAPOLATION` times the largest measured count; for the default target (relative to the ceiling), also a
    ceiling interval no wider than the measured range. Also the bootstrap refits, for the picture's band."""
    result = Answer(metric, target)
    shots = np.array([row.shots for row in rows], float)
    if len(rows) < MIN_SHOT_COUNTS:
        result.reason = (f"the power law has 3 parameters, so a fit needs at least {MIN_SHOT_COUNTS} shot counts to "
                         f"be checked (got {len(rows)}); pass more --shots")
        return result, []
    fit = fit_power_law(shots, [row.mean for row in rows], higher)
    if fit is None:
        result.reason = "the saturating power law did not converge on these means"
        return result, []
    refits = [fit_power_law(shots, means, higher) for means in boot]
    good = [f for f in refits if f is not None]
    ceilings = np.array([f.ceiling for f in good])
    ceiling_low, ceiling_high = (np.percentile(ceilings, [2.5, 97.5]) if len(good) else (math.nan, math.nan))
    result.fit = {"ceiling": [fit.ceiling, float(ceiling_low), float(ceiling_high)],
                  "scale": fit.scale, "exponent": fit.exponent, "refits": len(good), "resamples": len(boot)}
    missed = [(row, float(fit(row.shots))) for row in rows if not row.low <= float(fit(row.shots)) <= row.high]
    if missed:
        row, value = missed[0]
        result.reason = (f"the fitted power law misses the 95% interval at {row.shots} shots (fit {value:.3f}, "
                         f"interval [{row.low:.3f}, {row.high:.3f}]): the curve does not saturate like a power law")
        return result, good

    def target_of(f: PowerLaw) -> float:
        return target if target is not None else f.ceiling - (1 if higher else -1) * (1 - CEILING_FRACTION) * abs(
            f.ceiling)

    result.target_value = target_of(fit)
    ceiling = f"{fit.ceiling:.3f} [{ceiling_low:.3f}, {ceiling_high:.3f}]"
    measured = max(row.high for row in rows) - min(row.low for row in rows)
    if target is None and not ceiling_high - ceiling_low <= measured:  # NaN (no refit) is undetermined too
        result.reason = (f"the curve has not levelled off enough to place its ceiling: fitted ceiling {ceiling}, an "
                         f"interval wider than everything measured ({measured:.3f}); measure larger shot counts or "
                         "more repeats, or ask for a --target inside the measured range")
        return result, good
    side = "above" if higher else "below"
    point = fit.shots_for(result.target_value)
    if math.isinf(point):
        result.reason = (f"target {metric} {result.target_value:.3f} is {side} the fitted ceiling {ceiling}: more "
                         "labelled images like these are not expected to reach it with this recipe")
        return result, good
    needed = np.array([f.shots_for(target_of(f)) for f in refits if f is not None]
                      + [math.inf] * (len(refits) - len(good)))  # a refit that fails counts as no answer
    with np.errstate(invalid="ignore"):  # inf - inf between two unreachable refits: NaN, i.e. unbounded
        low, high = np.percentile(needed, [2.5, 97.5])
    if not math.isfinite(high):
        result.reason = (f"target {metric} {result.target_value:.3f} is within the fitted ceiling's 95% interval "
                         f"{ceiling}: N's interval is unbounded (about {math.ceil(point)} on the point fit)")
        return result, good
    limit = EXTRAPOLATION * shots.max()
    if high > limit:
        result.reason = (f"about {math.ceil(point):,} labelled images for {metric} {result.target_value:.3f} on the "
                         f"point fit, but its 95% interval (from {math.ceil(low):,}) reaches beyond {limit:g}, "
                         f"{EXTRAPOLATION:g}x the largest count measured; measure larger shot counts to say")
        return result, good
    result.shots, result.low, result.high = point, float(low), float(high)
    result.smallest = int(shots.min()) if point < shots.min() else None  # below the data: say only "at most"
    return result, good


# ------------------------------------------------------------------------ the record and the picture
@dataclass
class CurveResult:
    """What `learning_curve` found; `curve.json` in `out` holds the same and every point's per-image scores."""

    out: Path
    metric: str
    higher_is_better: bool
    rows: list[Row]
    answer: Answer
    points: list[dict[str, Any]] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)  # the points this call trained (the rest were on record)

    def table(self) -> str:
        lines = [f"| shots | {self.metric} mean | 95% interval | per repeat |", "| --- | --- | --- | --- |"]
        for r in self.rows:
            lines.append(f"| {r.shots} | {r.mean:.3f} | {r.low:.3f}-{r.high:.3f} | "
                         f"{', '.join(f'{v:.3f}' for v in r.repeats)} |")
        return "\n".join(lines)


def _differences(recorded: Any, current: Any, prefix: str = "") -> list[str]:
    """Recipe key paths whose values differ between two recipe dicts."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return [d for key in sorted(set(recorded) | set(current))
                for d in _differences(recorded.get(key), current.get(key), f"{prefix}{key}.")]
    return [] if recorded == current else [prefix.rstrip(".")]


def open_record(out: Path, recipe: Recipe) -> dict[str, Any]:
    """The curve's record in `out` (new, or a finished part to continue), refusing one of another recipe."""
    path = out / RECORD
    current = json.loads(json.dumps(recipe.to_dict()))
    if not path.exists():
        return {"recipe": current, "points": {}}
    record = read_json(path, "learning-curve record")
    if not isinstance(record, dict) or not isinstance(record.get("points"), dict) or "recipe" not in record:
        raise CurveError(f"{path}: not a learning-curve record; choose another --out")
    if differ := _differences(record["recipe"], current):
        raise CurveError(f"{out} holds a curve of a different recipe ({', '.join(differ[:3])} differ"
                         f"{' ...' if len(differ) > 3 else ''}); rerun with the recipe it was made with, or choose "
                         "another --out")
    return record


def plot_curve(path: Path, result: CurveResult, refits: Sequence[PowerLaw], title: str) -> None:
    """Means with their 95% bands and every repeat, the fitted power law with its band, the target if answered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows
    shots = np.array([r.shots for r in rows], float)
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        axes.scatter([r.shots] * len(r.repeats), r.repeats, s=10, color="tab:blue", alpha=0.35, lw=0)
    axes.fill_between(shots, [r.low for r in rows], [r.high for r in rows], color="tab:blue", alpha=0.2,
                      label="95% interval (bootstrap)")
    axes.plot(shots, [r.mean for r in rows], "o-", color="tab:blue", label=f"mean test {result.metric}")
    fit = result.answer.fit
    if fit is not None and refits:
        grid = np.geomspace(shots.min(), shots.max() * 2, 100)
        law = PowerLaw(fit["ceiling"][0], fit["scale"], fit["exponent"], result.higher_is_better)
        band = np.percentile([f(grid) for f in refits], [2.5, 97.5], axis=0)
        axes.fill_between(grid, band[0], band[1], color="tab:orange", alpha=0.15)
        axes.plot(grid, law(grid), "--", color="tab:orange",
                  label=f"power law: ceiling {law.ceiling:.3f} [{fit['ceiling'][1]:.3f}, {fit['ceiling'][2]:.3f}]")
    if result.answer.reason is None and result.answer.target_value is not None:
        axes.axhline(result.answer.target_value, color="grey", lw=0.8, ls=":")
        axes.axvline(result.answer.shots, color="grey", lw=0.8, ls=":", label=result.answer.text.replace(
            " (95% interval", "\n(95% interval"))
    axes.set(xscale="log", xlabel="labelled training images", ylabel=f"test {result.metric} (mean per image)",
             title=title)
    axes.set_xticks(shots, [str(int(k)) for k in shots])
    axes.minorticks_off()
    axes.legend(fontsize=7, loc="lower right" if result.higher_is_better else "upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ------------------------------------------------------------------------ the program
def learning_curve(recipe: Recipe | str, out: str | Path, shots: Sequence[int] = DEFAULT_SHOTS,
                   repeats: int = DEFAULT_REPEATS, metric: str | None = None, target: float | None = None,
                   overrides: Sequence[str] = (), generalist: Generalist | None = None, progress: bool = True,
                   resamples: int = RESAMPLES) -> CurveResult:
    """Train and score `repeats` adapters per shot count into `out` and summarise them (see the module docstring).

    `recipe` is a Recipe, or a recipe file or bundled name read with `overrides`. `metric` defaults to the
    recipe's monitored metric; `target` is the metric value the answer is for (default: within 5% of the
    fitted ceiling). `generalist` lends an already loaded base (it is handed back as it was found). Rerunning
    continues: only points missing from `out/curve.json` are trained.
    """
    from tqdm.auto import tqdm

    from adaptkit.codecs import build_codec
    from adaptkit.training import TrainingInterrupted, train

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, list(overrides))
    shots = [int(k) for k in shots]
    metric, higher = check_request(recipe, shots, repeats, metric, target)
    codec = build_codec(recipe.task.codec, recipe.task.codec_args)
    source, splits = load_splits(recipe.data, codec)
    try:
        test = check_all(source, splits.test)
    except DataError as error:
        raise CurveError(f"the test split cannot be scored: {error}") from None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CurveError(f"{out} is a file, not a folder; choose another --out")
    record = open_record(out, recipe)
    subsets = draw_subsets(splits.train, shots, repeats, recipe.data.seed)
    todo = [(k, r) for r in range(repeats) for k in shots  # a point whose adapter was deleted is trained again
            if point_name(k, r) not in record["points"]
            or not (out / "points" / point_name(k, r) / "adapter" / "adaptkit.json").is_file()]
    trained = []
    if todo:
        out.mkdir(parents=True, exist_ok=True)
        print(f"curve {recipe.name}: {len(shots)} shot counts x {repeats} repeats, scored on {len(test)} test images "
              f"by {metric}; {len(todo)} point(s) to train into {out / 'points'}"
              + (f", {len(shots) * repeats - len(todo)} on record" if len(todo) < len(shots) * repeats else ""),
              file=sys.stderr)
        if generalist is None:
            from adaptkit.sweep import prepare_base

            generalist = prepare_base(recipe)
        bar = tqdm(todo, desc="points", unit="point", disable=not progress, dynamic_ncols=True)
        for k, r in bar:
            name = point_name(k, r)
            folder = out / "points" / name
            if folder.exists():  # a point killed before it was recorded: it restarts
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            point_recipe = load_recipe(recipe.to_dict(), {"train.seed": point_seed(recipe, k, r)})
            point_recipe.source = recipe.source
            started = time.perf_counter()
            try:
                with (folder / "train.log").open("a") as log, redirect_stdout(log), redirect_stderr(log):
                    train(point_recipe, folder, generalist=generalist, progress=False, cache_dir=out / "cache",
                          splits=Splits(subsets[k, r], splits.val, splits.test))
            except TrainingInterrupted:
                bar.close()
                done = len(record["points"])
                raise TrainingInterrupted(
                    f"curve interrupted during {name}; {done} of {len(shots) * repeats} points are recorded in "
                    f"{out / RECORD}; rerun the same command to continue (the interrupted point restarts)") from None
            per_image, whole = score_adapter(generalist, folder / "adapter", test, recipe.eval.metrics or None)
            record["points"][name] = {"shots": k, "repeat": r, "seed": point_seed(recipe, k, r),
                                      "folder": str(Path("points") / name), "train_ids": subsets[k, r],
                                      "seconds": round(time.perf_counter() - started, 2), "test": whole,
                                      "scores": per_image}
            record["test_ids"] = [s.id for s in test]
            write_atomic(out / RECORD, json.dumps(record, indent=1) + "\n")
            trained.append(name)
            bar.set_postfix_str(f"{metric} {np.nanmean(per_image[metric]):.3f} at {k} shots")
        bar.close()
    result, refits = _summary(record, out, shots, repeats, metric, higher, target, resamples)
    result.trained = trained
    record["summary"] = {"metric": metric, "higher_is_better": higher, "shots": shots, "repeats": repeats,
                         "statistic": "mean over repeats of the mean per-image score on the test split",
                         "resamples": resamples, "rows": [asdict(row) for row in result.rows],
                         "answer": {**asdict(result.answer), "text": result.answer.text}}
    write_atomic(out / RECORD, json.dumps(record, indent=1) + "\n")
    plot_curve(out / "curve.png", result, refits, f"{recipe.name}: test {metric} vs labelled images "
                                                  f"({repeats} repeat{'s' if repeats > 1 else ''})")
    return result


def _summary(record: dict[str, Any], out: Path, shots: list[int], repeats: int, metric: str, higher: bool,
             target: float | None, resamples: int) -> tuple[CurveResult, list[PowerLaw]]:
    points = [record["points"][point_name(k, r)] for k in shots for r in range(repeats)]
    scores = np.array([[record["points"][point_name(k, r)]["scores"][metric] for r in range(repeats)] for k in shots],
                      float)
    rows, boot = summarise(scores, shots, resamples)
    found, refits = answer(rows, boot, metric, higher, target)
    return CurveResult(out, metric, higher, rows, found, points), refits


def run_curve(recipe_path: str, overrides: list[str], out: str | None, shots: Sequence[int] | None,
              repeats: int | None, metric: str | None, target: float | None) -> int:
    """`adaptkit curve`: the curve, then its table, its answer and where its files are (None: the defaults)."""
    recipe = load_recipe(recipe_path, overrides)
    folder = Path(out or f"runs/{recipe.name}-curve")
    result = learning_curve(recipe, folder, DEFAULT_SHOTS if shots is None else shots,
                            DEFAULT_REPEATS if repeats is None else repeats, metric, target)
    print(result.table())
    print(result.answer.text)
    print(f"record: {folder / RECORD}; picture: {folder / 'curve.png'}; adapters: {folder / 'points'}/*/adapter")
    if not result.trained:
        print("(every point was on record: nothing was trained)", file=sys.stderr)
    return 0

