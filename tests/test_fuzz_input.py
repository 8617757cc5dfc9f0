"""Property-based fuzzing of every file a user hands adaptkit: a recipe, an adapter's `adaptkit.json`, a generalist
folder's configs, a pretrained generalist's `pretraining.json` and the data files, each mutated one field or file
at a time (wrong types, empty, huge, negative, NaN, missing, extra keys, truncated or foreign bytes), then run
through the commands that read it, in-process: `check`, `train` (2 steps), `eval`, `predict` (and `info`,
`pretrain` for the generalist's files).

Whatever the mutation, a command either succeeds (and wrote what it promises) or refuses in one line, exit 2,
naming the file or key at fault, having written nothing; never the "this is a bug" crash report. Hypothesis is
derandomised (see conftest.py): each budget draws the same examples on every run. The fast budget keeps
`pytest -m "not slow"` quick; the slow one explores more.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_bad_input import SIZE, run, write_folder, write_recipe

from adaptkit.bases import DEFAULT_GENERALIST_DIR


def budgets(fast: int, slow: int) -> list:
    """The examples a target draws: a few in the fast suite (`pytest -m "not slow"`), many under `slow`."""
    return [pytest.param(fast, id="fast"), pytest.param(slow, id="slow", marks=pytest.mark.slow)]

DELETE, EXTRA = object(), object()
#: What a field may be turned into: wrong types, empty, huge, negative, not a number, missing, an extra key.
VALUES: list[Any] = ["banana", [1, "a"], {"x": 1}, True, None, "", [], {}, 10**12, 1e308, "x" * 5000, -1, -1e9, 0,
                     math.nan, math.inf, DELETE, EXTRA]


def _paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key path in a JSON-like tree (dict keys and list indices), parents before children."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def mutate(document: Any, path: tuple, value: Any) -> tuple[Any, str]:
    """`document` with the field at `path` replaced (or deleted, or given an extra sibling key), and the name an
    error about it must mention: the innermost key (of the list holding it, for a list item)."""
    document = copy.deepcopy(document)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    named = next((key for key in reversed(path) if isinstance(key, str)), "")
    if value is EXTRA:
        if isinstance(parent, dict):
            parent["unexpected_key"] = 1
            return document, "unexpected_key"
        value = {"unexpected_key": 1}
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return document, named


@st.composite
def mutations(draw: st.DrawFn, document: Any) -> tuple[Any, tuple[str, ...], str]:
    """(the mutated document, what a refusal may name: the key, or the value as a message would quote it (at
    least 3 characters, so that it cannot match by chance), a description of the mutation)."""
    path = draw(st.sampled_from(list(_paths(document))))
    value = draw(st.sampled_from(VALUES))
    mutated, named = mutate(document, path, value)
    shown = "missing" if value is DELETE else "an extra key" if value is EXTRA else repr(value)[:40]
    quoted = str(value) if isinstance(value, str | int | float) and len(str(value)) >= 3 else ""
    return mutated, (named, *([quoted] if quoted else [])), f"{'.'.join(map(str, path))} -> {shown}"


def fuzz(budget: int) -> Callable:
    """Hypothesis at `budget` examples, without a deadline (a training run takes a second) or shrinking (it would
    rerun commands hundreds of times; the failing example is reported as drawn, with what was mutated), with
    pytest's module-scoped fixtures and capsys (read afresh for every example)."""
    return settings(max_examples=budget, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def outcome(capsys, argv: list, written: Path | None, names: tuple[str, ...], what: str) -> int:
    """Run one command; it succeeds (having written `written`), or refuses in one line naming one of `names`,
    leaving `written` unwritten. `check` and `info` write nothing (None)."""
    code, _, err = run(capsys, *argv)
    assert "bug in adaptkit" not in err and "Traceback" not in err, f"{what}: {argv[0]} crashed:\n{err}"
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    if code == 0:
        assert not error_lines, f"{what}: {argv[0]} exited 0 but said {error_lines}"
        assert written is None or written.exists(), f"{what}: {argv[0]} exited 0 but wrote no {written}"
        return code
    assert code == 2, f"{what}: {argv[0]} exited {code}:\n{err}"
    assert len(error_lines) == 1, f"{what}: {argv[0]} refused without one error line:\n{err}"
    message = err[err.index("error:"):]
    assert any(name in message for name in names), f"{what}: {argv[0]}'s refusal names none of {names}:\n{err}"
    # a run that started and diverged is not a refusal: it stops, keeping its last good adapter (see training)
    diverged = argv[0] == "train" and "the training loss became" in message
    assert written is None or diverged or not written.exists(), f"{what}: {argv[0]} refused but wrote {written}"
    return code


@contextmanager
def scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="adaptkit-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Good inputs to mutate: a data folder with point prompts, a recipe on it, a generalist folder (the tiny one
    saved: the same weights, so an adapter trained on `tiny` also fits it), that adapter, and a photo."""
    from adaptkit.recipe import load_recipe
    from adaptkit.tiny import build_tiny_generalist
    from adaptkit.training import train

    root = tmp_path_factory.mktemp("fuzz")
    data = write_folder(root / "data")
    (data / "prompts").mkdir()
    for stem, points in {"0": [[3, 4]], "1": [[0, 0], [SIZE - 1, SIZE - 1]]}.items():
        (data / "prompts" / f"{stem}.json").write_text(json.dumps({"points": points}))
    recipe = write_recipe(root / "recipe.yaml", data)
    generalist = build_tiny_generalist().save_pretrained(root / "generalist")
    train(load_recipe(recipe), root / "run", progress=False)
    photo = root / "photo.png"
    Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8)).save(photo)
    return {"data": data, "recipe": recipe, "generalist": generalist, "adapter": root / "run" / "adapter",
            "photo": photo}


def _train_and_check(capsys, recipe: Path, out: Path, names: tuple[str, ...], what: str) -> None:
    if (outcome(capsys, ["check", recipe], None, names, what) == 0
            and outcome(capsys, ["train", recipe, "--out", out], out, names, what) == 0):
        assert (out / "adapter" / "adaptkit.json").is_file(), f"{what}: train exited 0 without an adapter"


def _use_adapter(capsys, adapter: Path, out: Path, inputs: Path, names: tuple[str, ...], what: str,
                 data: Path | None = None) -> None:
    """Evaluate the adapter (on `data`, or its recorded validation split) and predict `inputs` with it."""
    evaluate = ["eval", adapter, "--out", out / "eval", *(["--data", data] if data else ["--split", "val"])]
    if outcome(capsys, evaluate, out / "eval", names, what) == 0:
        assert json.loads((out / "eval" / "metrics.json").read_text()), f"{what}: eval exited 0 without metrics"
    outcome(capsys, ["predict", adapter, inputs, "--out", out / "predictions"], out / "predictions", names, what)


# ------------------------------------------------------------------------------------------ the properties
@pytest.mark.parametrize("budget", budgets(3, 40))
def test_a_mutated_recipe_is_checked_and_trained_or_refused_naming_the_key(capsys, world, budget):
    document = yaml.safe_load(world["recipe"].read_text())

    @fuzz(budget)
    @given(mutations(document))
    def property_(case: tuple[Any, str, str]) -> None:
        mutated, names, what = case
        with scratch() as folder:
            recipe = folder / "recipe.yaml"
            recipe.write_text(yaml.safe_dump(mutated))
            _train_and_check(capsys, recipe, folder / "run", names, what)

    property_()


@pytest.mark.parametrize("budget", budgets(3, 40))
def test_a_mutated_adapter_record_is_used_or_refused_naming_it(capsys, world, budget):
    document = json.loads((world["adapter"] / "adaptkit.json").read_text())

    @fuzz(budget)
    @given(mutations(document))
    def property_(case: tuple[Any, str, str]) -> None:
        mutated, names, what = case
        with scratch() as folder:
            adapter = folder / "run" / "adapter"
            shutil.copytree(world["adapter"], adapter)
            (adapter / "adaptkit.json").write_text(json.dumps(mutated))
            _use_adapter(capsys, adapter, folder, world["photo"], ("adaptkit.json", *names), what)

    property_()


GENERALIST_CONFIGS = ["generalist.json", "transformer/config.json", "vae/config.json", "point_encoder/config.json",
                      "scheduler/scheduler_config.json"]


@pytest.mark.parametrize("budget", budgets(1, 20))
def test_a_mutated_generalist_config_is_loaded_or_refused_naming_it(capsys, world, budget):
    documents = {name: json.loads((world["generalist"] / name).read_text()) for name in GENERALIST_CONFIGS}

    @fuzz(budget)
    @given(st.sampled_from(GENERALIST_CONFIGS).flatmap(lambda name: st.tuples(st.just(name),
                                                                              mutations(documents[name]))))
    def property_(case: tuple[str, tuple[Any, tuple[str, ...], str]]) -> None:
        name, (mutated, keys, what) = case
        what = f"{name}: {what}"
        with scratch() as folder:
            generalist = folder / "generalist"
            shutil.copytree(world["generalist"], generalist)
            (generalist / name).write_text(json.dumps(mutated))
            names = (name, Path(name).parent.name or name, *keys)
            recipe = write_recipe(folder / "recipe.yaml", world["data"], base={"generalist": str(generalist)})
            outcome(capsys, ["info", generalist], None, names, what)
            _train_and_check(capsys, recipe, folder / "run", names, what)
            adapter = folder / "adapter"  # trained on the intact weights, now loaded onto this folder
            shutil.copytree(world["adapter"], adapter)
            record = json.loads((adapter / "adaptkit.json").read_text())
            record["base"]["generalist"] = str(generalist)
            (adapter / "adaptkit.json").write_text(json.dumps(record))
            _use_adapter(capsys, adapter, folder, world["photo"], (*names, "fingerprint"), what)

    property_()


@pytest.mark.parametrize("budget", budgets(1, 10))
def test_a_mutated_pretraining_report_is_continued_or_refused_naming_it(capsys, budget):
    report = DEFAULT_GENERALIST_DIR / "pretraining.json"
    document = json.loads(report.read_text())

    @fuzz(budget)
    @given(mutations(document))
    def property_(case: tuple[Any, str, str]) -> None:
        mutated, names, what = case
        with scratch() as folder:
            start = folder / "start"
            shutil.copytree(DEFAULT_GENERALIST_DIR, start)
            (start / "pretraining.json").write_text(json.dumps(mutated))
            out = folder / "continued"
            outcome(capsys, ["pretrain", "--out", out, "--stages", "generalist", f"init={start}", "steps=1",
                             "scenes=2", "val_scenes=1", "batch=2", "warmup=0"], out / "default",
                    ("pretraining.json", *names), what)

    property_()


def _damage(path: Path, how: str, rng: np.random.Generator) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(rng.integers(0, 256, max(len(data), 64), dtype=np.uint8).tobytes())
    elif how == "text":
        path.write_text("not what it should be\n")
    elif how == "missing":
        path.unlink()
    elif how == "stray":
        (path.parent / f"zz-stray{path.suffix}").write_bytes(data)


DAMAGE = ["truncated", "empty", "random", "text", "missing", "stray"]


@st.composite
def damaged_files(draw: st.DrawFn, data: Path) -> tuple[str, str, Any]:
    """A file of the data folder and what happens to it: damaged bytes, or (a point prompt) a mutated field."""
    files = sorted(str(path.relative_to(data)) for path in data.rglob("*") if path.is_file())
    name = draw(st.sampled_from(files))
    if name.startswith("prompts/") and draw(st.booleans()):
        return name, "field", draw(mutations(json.loads((data / name).read_text())))
    return name, draw(st.sampled_from(DAMAGE)), None


@pytest.mark.parametrize("budget", budgets(2, 30))
def test_damaged_data_is_trained_evaluated_or_refused_naming_the_file(capsys, world, budget):
    @fuzz(budget)
    @given(damaged_files(world["data"]), st.integers(0, 2**16))
    def property_(case: tuple[str, str, Any], seed: int) -> None:
        name, how, field = case
        with scratch() as folder:
            data = folder / "data"
            shutil.copytree(world["data"], data)
            what = f"{name}: {how}"
            names = [Path(name).name, Path(name).stem + "."]
            if field is not None:
                mutated, keys, detail = field
                (data / name).write_text(json.dumps(mutated))
                what += f" {detail}"
                names.extend(keys)
            else:
                _damage(data / name, how, np.random.default_rng(seed))
                if how == "stray":
                    names.append("zz-stray")
            recipe = write_recipe(folder / "recipe.yaml", data)
            _train_and_check(capsys, recipe, folder / "run", tuple(names), what)
            _use_adapter(capsys, world["adapter"], folder, data / "images", tuple(names), what, data=data)

    property_()
