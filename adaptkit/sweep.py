"""`adaptkit sweep`: an Optuna study whose trials train adapters on one loaded base, then the best is tested once.

A sweep reads top to bottom like the job it does:
1. check the recipe's `sweep:` section and every value its space can sample (no model yet),
2. open the study on Optuna's own storage: a journal file in the output folder (several processes on one
   machine), or any RDB URL (`postgresql://...`: several machines); re-running resumes it,
3. fail and re-queue the trials of workers that are gone (`kill -9`, a lost node), then run trials, each a
   `train` call on the one loaded base sharing one latent cache, reporting the monitored validation metric
   at every validation keyed on the global step so the pruner can stop it at once,
4. copy the best trial's adapter (selected on validation only) to `best/adapter` and evaluate it once on
   the test split; write `sweep.json`, `trials.csv` and Optuna's plots.

`--workers N` runs step 3 in N processes on the same study (one GPU or one CPU thread each) while this
process shows the progress bar and does step 4.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import lightning as L
import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from adaptkit.codecs import build_codec
from adaptkit.generalist import Generalist
from adaptkit.metrics import DEFAULT_METRICS, HIGHER_IS_BETTER, build_codec_metrics
from adaptkit.recipe import Recipe, RecipeError, load_recipe
from adaptkit.training import TrainingError, load_base, train

JOURNAL_FILE = "journal.log"
#: RDB storages: a worker silent for GRACE_PERIOD s is gone; its trial is failed and re-queued (MAX_RETRY times).
HEARTBEAT_INTERVAL, GRACE_PERIOD, MAX_RETRY = 20, 60, 3
#: Trials that count towards `sweep.trials`; running ones count so that parallel workers do not overshoot.
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class SweepError(TrainingError):
    """A sweep that cannot run as asked (the message says what to change)."""


# ------------------------------------------------------------------------ the search
def sweep_metric(recipe: Recipe) -> tuple[str, str]:
    """The metric trials are selected on and its direction: `sweep.metric`, else the recipe's monitored metric."""
    codec = build_codec(recipe.task.codec, recipe.task.codec_args)
    names = list(build_codec_metrics(codec, recipe.eval.metrics or None).keys())
    metric = recipe.sweep.metric or recipe.train.monitor or (recipe.eval.metrics or DEFAULT_METRICS[codec.name])[0]
    if metric not in names:
        raise RecipeError(f"{recipe.source}: sweep.metric {metric!r} is not computed on validation; the recipe's "
                          f"metrics are {', '.join(names)} (set eval.metrics to add one)")
    if recipe.data.val_shots < 1:
        raise RecipeError(f"{recipe.source}: a sweep selects on validation, so data.val_shots must be >= 1")
    return metric, "maximize" if HIGHER_IS_BETTER.get(metric, True) else "minimize"


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    """Sample one value per space key: a choice from a list, or a (log-)uniform or stepped float or int range."""
    params = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            params[key] = trial.suggest_categorical(key, spec)
            continue
        low, high, step, log = spec["low"], spec["high"], spec.get("step"), bool(spec.get("log", False))
        if all(isinstance(v, int) for v in (low, high, step or 1)):
            params[key] = trial.suggest_int(key, low, high, step=step or 1, log=log)
        else:
            params[key] = trial.suggest_float(key, low, high, step=step, log=log)
    return params


def build_sampler(recipe: Recipe, worker: int) -> optuna.samplers.BaseSampler:
    """The recipe's seeded sampler; each worker of a parallel sweep gets its own seed, or all would draw alike."""
    sweep = recipe.sweep
    seed = sweep.seed + worker
    if sweep.sampler == "grid":
        return optuna.samplers.GridSampler(dict(sweep.space), seed=seed)
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sweep.startup_trials)


def build_pruner(recipe: Recipe) -> optuna.pruners.BasePruner:
    """Pruners see steps, as validations report them: hyperband's rungs run from one validation to the longest run."""
    sweep = recipe.sweep
    if sweep.pruner == "none":
        return optuna.pruners.NopPruner()
    if sweep.pruner == "hyperband":
        steps = sweep.space.get("train.steps")
        longest = max(steps) if isinstance(steps, list) else steps["high"] if steps else recipe.train.steps
        return optuna.pruners.HyperbandPruner(min_resource=recipe.train.val_every, max_resource=int(longest))
    return optuna.pruners.MedianPruner(n_startup_trials=sweep.startup_trials)


class ReportToTrial(L.Callback):
    """Report the sweep's validation metric to the Optuna trial at every validation, keyed on the global step.

    optuna-integration's Lightning callback keys on epochs, and a run here is one epoch. Raising
    `TrialPruned` inside `fit` stops the run at once; the final validation after `fit` only reports.
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(f"val/{self.metric}")
        if trainer.sanity_checking or trainer.global_step == 0 or value is None:
            return  # step 0 is the zero-shot point: the same for every trial
        step = trainer.global_step
        self.trial.report(float(value), step)
        if trainer.state.fn == "fit" and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (val/{self.metric} {float(value):.4f})")


# ------------------------------------------------------------------------ storage, study and owners
def open_storage(url: str | None, out: Path, workers: int) -> BaseStorage:
    """A journal file in `out` by default (several processes, one machine); else an Optuna RDB URL."""
    if url is None:
        out.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(out / JOURNAL_FILE)))
    if url.startswith("sqlite") and workers > 1:
        raise SweepError(f"--storage {url}: SQLite locks under parallel writers; with --workers {workers} leave "
                         "--storage out (a journal file in --out) or use a server, e.g. postgresql://...")
    try:
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                          heartbeat_stale_trial_callback=_retry())
    except Exception as error:  # sqlalchemy raises many kinds for a bad URL, a missing driver or a down server
        raise SweepError(f"--storage {_shown(url)}: cannot open it ({type(error).__name__}: {error})") from None


def _retry() -> RetryHeartbeatStaleTrialCallback:
    """Optuna's re-queueing of a lost trial's parameters (what its RDB heartbeat uses), for every storage."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def _shown(url: str | None) -> str:
    """A storage URL fit to print and record: without its password."""
    if url is None:
        return JOURNAL_FILE
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def _study_key(recipe: Recipe) -> str:
    """What makes two runs the same study: the recipe less the trial count and the (machine-local) data path."""
    data = recipe.to_dict()
    data["sweep"].pop("trials")
    data["data"].pop("path")
    return json.dumps(data, sort_keys=True)


def open_study(recipe: Recipe, storage: BaseStorage, name: str, worker: int = 0) -> optuna.Study:
    """Create the study or load it to resume; a study started from a different recipe is refused."""
    _, direction = sweep_metric(recipe)
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True,
                                sampler=build_sampler(recipe, worker), pruner=build_pruner(recipe))
    recorded = study.user_attrs.get("recipe")
    if recorded is None:
        study.set_user_attr("recipe", _study_key(recipe))
    elif recorded != _study_key(recipe):
        raise SweepError(f"study {name!r} was started from a different recipe or search space; resume it with the "
                         "same recipe, or pass a new --study (or --out)")
    return study


def _owner() -> str:
    """This process as the owner of a running trial: host, pid and start time (a pid can be reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_started(os.getpid())}"


def _started(pid: int) -> str:
    try:  # field 22 of /proc/PID/stat: start time in clock ticks since boot (after the command, which has spaces)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(owner: str) -> bool:
    _, pid, started = owner.rsplit(":", 2)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _started(int(pid)) == started


def recover_orphans(study: optuna.Study) -> list[int]:
    """Fail and re-queue the running trials whose owner process on this host is gone (`kill -9`, a crash).

    The journal file has no heartbeat, so each trial records its owner; an RDB storage's heartbeat
    does the same after its grace period, this just does it at once for this host's own trials.
    """
    host, recovered, retry = socket.gethostname(), [], _retry()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("owner", "")
        if owner.split(":")[0] != host or _alive(owner):
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"its worker {owner} is gone")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker starting at the same moment got there first
        retry(study, study._storage.get_trial(trial._trial_id))
        recovered.append(trial.number)
    return recovered


def counted(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))


# ------------------------------------------------------------------------ running trials
def run_trials(recipe: Recipe, study: optuna.Study, out: Path, base: Generalist, metric: str,
               progress: bool = True) -> None:
    """Run trials on `study` until `sweep.trials` are finished or running (across all workers).

    Each trial trains into `out/trials/NNNN` on `base`, sharing `out/cache`. A failing trial is
    recorded with its reason and the sweep goes on; Ctrl-C records the running trial as failed,
    re-queues its parameters for the next run and stops.
    """
    trials = recipe.sweep.trials
    if counted(study) >= trials:
        return
    retry = _retry()

    def objective(trial: optuna.Trial) -> float:
        folder = out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("owner", _owner())
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("adapter", str((folder / "adapter").resolve()))
        earlier = [t for t in study.get_trials(deepcopy=False, states=COUNTED) if t.number < trial.number]
        if len(earlier) >= trials:  # two workers asked at the same moment for the last trial: the later one yields
            trial.set_user_attr("fail_reason", f"surplus: the study already has its {trials} trials")
            study.stop()
            raise SweepError(f"trial {trial.number} is surplus")
        try:
            params = suggest(trial, recipe.sweep.space)
            trial_recipe = load_recipe(recipe.to_dict(), {**params, "train.monitor": metric})
            trial_recipe.source = recipe.source
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / "train.log").open("a") as log, redirect_stdout(log):
                result = train(trial_recipe, folder, generalist=base, progress=False, cache_dir=out / "cache",
                               callbacks=[ReportToTrial(trial, metric)])
        except optuna.TrialPruned:
            raise
        except (KeyboardInterrupt, SystemExit) as error:  # Lightning turns Ctrl-C into SystemExit(1)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # ... and ignores the next one
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C); re-queued for the next run")
            retry(study, study._storage.get_trial(trial._trial_id))
            raise KeyboardInterrupt from error
        except Exception as error:
            trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}")
            raise
        value = result.metrics.get(metric)
        if value is None or not math.isfinite(value):
            trial.set_user_attr("fail_reason", f"no finite val/{metric} was recorded ({value})")
            raise SweepError(f"trial {trial.number}: no finite val/{metric}")
        return float(value)

    def stop_when_all_fail(study: optuna.Study, _: FrozenTrial) -> None:
        if len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) >= trials:
            print(f"stopping: {trials} trials failed; see fail_reason in {out / 'sweep.json'}", file=sys.stderr)
            study.stop()

    bar = tqdm(total=trials, initial=_finished(study), desc="trials", unit="trial", disable=not progress,
               dynamic_ncols=True)

    def show(study: optuna.Study, _: FrozenTrial) -> None:
        bar.n = _finished(study)
        bar.set_postfix_str(_best_text(study, metric))
        bar.refresh()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-trial checkpoint chatter
    try:
        study.optimize(objective, catch=(Exception,), gc_after_trial=True,
                       callbacks=[MaxTrialsCallback(trials, states=COUNTED), stop_when_all_fail, show])
    finally:
        bar.close()


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _best_text(study: optuna.Study, metric: str) -> str:
    try:
        return f"best {metric} {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:  # no completed trial yet
        return ""


def prepare_base(recipe: Recipe) -> Generalist:
    """Load the base once and cache every prompt a trial can use, then free the text encoders."""
    base = load_base(recipe)
    choices = recipe.sweep.space.get("task.prompt")
    base.prompts.encode(sorted({recipe.task.prompt, "", *(choices if isinstance(choices, list) else [])}))
    base.prompts.drop_text_encoders()
    return base


def _spawn_workers(args: list[str], workers: int, out: Path) -> list[subprocess.Popen]:
    """N worker processes on one study: one GPU each (round robin) when there are GPUs, else one CPU thread."""
    import torch

    gpus = torch.cuda.device_count()
    logs = out / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    for index in range(workers):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
        command = [sys.executable, "-m", "adaptkit.cli", "sweep", *args, "--worker", str(index)]
        with (logs / f"worker-{index}.log").open("w") as log:
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes


def _watch(study: optuna.Study, processes: list[subprocess.Popen], trials: int, metric: str) -> None:
    """The parent's bar over the workers' trials, read from the study every second."""
    with tqdm(total=trials, initial=_finished(study), desc="trials", unit="trial", dynamic_ncols=True) as bar:
        try:
            while any(p.poll() is None for p in processes):
                time.sleep(1.0)
                bar.n = _finished(study)
                bar.set_postfix_str(_best_text(study, metric))
                bar.refresh()
        except KeyboardInterrupt:
            for process in processes:
                process.send_signal(signal.SIGINT)
            for process in processes:
                process.wait()
            raise
        bar.n = _finished(study)
        bar.refresh()
    for index, process in enumerate(processes):
        if process.returncode:
            print(f"worker {index} exited with code {process.returncode}; see its log in workers/worker-{index}.log",
                  file=sys.stderr)


# ------------------------------------------------------------------------ the end: best adapter, tested once
def finish(recipe: Recipe, study: optuna.Study, out: Path, metric: str, storage: str | None,
           base: Generalist | None = None) -> dict[str, Any]:
    """Copy the best trial's adapter to `out/best/adapter`, test it once, write sweep.json, trials.csv, plots."""
    from adaptkit.adapters import AdaptedModel
    from adaptkit.data import check_all, open_source
    from adaptkit.inference import evaluate

    trials = study.get_trials(deepcopy=False)
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    summary: dict[str, Any] = {"study": study.study_name, "storage": _shown(storage), "metric": metric,
                               "direction": study.direction.name.lower(), "trials_target": recipe.sweep.trials,
                               "space": recipe.sweep.space, "best": None, "test": None,
                               "trials": [_trial_record(t) for t in trials]}
    if completed:
        best = study.best_trial
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           "host": best.user_attrs.get("host"), "trial_adapter": best.user_attrs.get("adapter")}
        source, target = Path(best.user_attrs.get("adapter", "")), out / "best" / "adapter"
        if source.is_dir():
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target)
            record_sweep(target, {"study": study.study_name, "metric": metric, "trial": best.number,
                                  "value": best.value, "best_params": best.params, "trials": len(trials)})
            summary["best"]["adapter"] = str(target)
            model = AdaptedModel.from_pretrained(target, generalist=base)
            ids = model.meta.samples.get("test") or []
            if ids:
                samples = check_all(open_source(recipe.data, model.codec), ids)
                report = evaluate(model, samples, out / "best" / "eval", metrics=recipe.eval.metrics or None,
                                  progress=False)
                summary["test"] = report.metrics
        else:
            print(f"the best adapter lives on {best.user_attrs.get('host')}:{source}; copy it here to evaluate it",
                  file=sys.stderr)
    (out / "sweep.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    study.trials_dataframe().to_csv(out / "trials.csv", index=False)
    plot_study(study, out, len(recipe.sweep.space))
    return summary


def record_sweep(adapter: Path, record: dict[str, Any]) -> None:
    """Write where a sweep's best adapter came from into its `adaptkit.json`, and refresh its model card."""
    from adaptkit.adapters import AdapterMeta
    from adaptkit.card import build_card

    meta = AdapterMeta.load(adapter)
    meta.sweep = record
    meta.save(adapter)
    build_card(meta, sweep=record).save(adapter / "README.md")


def _trial_record(trial: FrozenTrial) -> dict[str, Any]:
    duration = trial.duration.total_seconds() if trial.duration else None
    return {"number": trial.number, "state": trial.state.name.lower(), "params": trial.params, "value": trial.value,
            "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
            "duration_s": duration, "fail_reason": trial.user_attrs.get("fail_reason"),
            "host": trial.user_attrs.get("host"), "adapter": trial.user_attrs.get("adapter"),
            "retry_of": trial.system_attrs.get("failed_trial")}


def plot_study(study: optuna.Study, out: Path, parameters: int) -> list[Path]:
    """Optuna's own matplotlib plots, each where it has something to show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    wanted = {"history": (plots.plot_optimization_history, completed >= 1),
              "intermediate": (plots.plot_intermediate_values, any(t.intermediate_values for t in study.trials)),
              "importances": (plots.plot_param_importances, completed > 1 and parameters > 1),
              "parallel": (plots.plot_parallel_coordinate, completed >= 1 and parameters > 1),
              "slice": (plots.plot_slice, completed >= 1 and parameters == 1)}
    written = []
    for name, (plot, wanted_here) in wanted.items():
        if not wanted_here:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message="Attempting to set identical")  # one value on an axis
            axes = plot(study)
        figure = getattr(axes, "figure", None) or axes.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figure.savefig(out / f"{name}.png", dpi=100)
        plt.close(figure)
        written.append(out / f"{name}.png")
    return written


# ------------------------------------------------------------------------ the command
def run_sweep(recipe_path: str, overrides: list[str], out: str | None = None, trials: int | None = None,
              storage: str | None = None, study_name: str | None = None, workers: int = 1,
              worker: int | None = None) -> int:
    """`adaptkit sweep`: see the module docstring. `worker` marks a process started by `--workers`."""
    recipe = load_recipe(recipe_path, [*overrides, *([f"sweep.trials={trials}"] if trials is not None else [])])
    if not recipe.sweep.space:
        raise RecipeError(f"{recipe.source}: the recipe has no sweep.space; add one, e.g. "
                          "sweep: {space: {train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}}}")
    if workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")
    metric, _ = sweep_metric(recipe)
    folder = Path(out or f"runs/{recipe.name}-sweep")
    name = study_name or recipe.name
    study = open_study(recipe, open_storage(storage, folder, workers), name, worker or 0)
    if worker is not None:  # one of the --workers processes: trials only, the parent does the rest
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(1)
        run_trials(recipe, study, folder, prepare_base(recipe), metric, progress=False)
        return 0
    recovered = recover_orphans(study)
    if recovered:
        print(f"re-queued trial(s) {', '.join(map(str, recovered))}: their worker is gone")
    print(f"sweep {name}: {recipe.sweep.trials} trials of {recipe.name} on {', '.join(recipe.sweep.space)}, "
          f"selecting on val/{metric}; storage {_shown(storage) if storage else folder / JOURNAL_FILE}")
    base = None
    try:
        if workers > 1:
            args = [recipe_path, *overrides, "--out", str(folder), "--study", name, "--trials",
                    str(recipe.sweep.trials), *(["--storage", storage] if storage else [])]
            _watch(study, _spawn_workers(args, workers, folder), recipe.sweep.trials, metric)
        else:
            base = prepare_base(recipe)
            run_trials(recipe, study, folder, base, metric)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {_finished(study)} trial(s) finished, the running one recorded as failed and "
              "re-queued; re-run the same command to resume", file=sys.stderr)
        return 130
    summary = finish(recipe, study, folder, metric, storage, base)
    states = [t["state"] for t in summary["trials"]]
    print(f"{states.count('complete')} complete, {states.count('pruned')} pruned, {states.count('fail')} failed")
    if summary["best"]:
        best = summary["best"]
        print(f"best: trial {best['number']}, val/{metric} {best['value']:.4f}, params {best['params']}")
        if summary["test"]:
            print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))
            print(f"best adapter: {folder / 'best' / 'adapter'}; evaluation: {folder / 'best' / 'eval'}")
    print(f"record: {folder / 'sweep.json'}, {folder / 'trials.csv'}, plots: {folder}/*.png")
    return 0 if summary["best"] else 1
