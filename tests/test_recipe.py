"""Recipes: what users type, and the errors they get when they type it wrong."""

from __future__ import annotations

import pytest
import yaml

from adaptkit.recipe import RecipeError, list_recipes, load_recipe, parse_overrides

MINIMAL = {"name": "t", "task": {"prompt": "[[image2x]]"}, "data": {"source": "synth", "synth_task": "shadow"}}


def test_bundled_recipes_all_parse_and_are_listed(tmp_path, monkeypatch):
    names = [name for name, _ in list_recipes()]
    assert {"lung-xray", "crack-concrete", "custom-depth", "image-highlight", "tumour-ultrasound"} <= set(names)
    for name in names:
        # the data folders are the user's; point them at an existing folder to check the rest
        recipe = load_recipe(name, [f"data.path={tmp_path}"])
        assert recipe.task.prompt.startswith("[[")


def test_yaml_file_round_trips_through_to_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    recipe = load_recipe(path)
    again = tmp_path / "again.yaml"
    again.write_text(recipe.to_yaml())
    assert load_recipe(again).to_dict() == recipe.to_dict()


@pytest.mark.parametrize(("override", "message"), [
    ("trian.steps=3", "unknown key 'trian'; did you mean 'train'"),
    ("adapter.rnak=2", "adapter: unknown key 'rnak'; did you mean 'rank'"),
    ("train.objective=flwo", "did you mean 'flow'"),
    ("adapter.rank=0", "adapter.rank must be >= 1, got 0"),
    ("train.lr=fast", "train.lr: expected float, got 'fast'"),
    ("train.steps=2.5", "train.steps: expected int"),
    ("data.train_shots=0", "data.train_shots must be >= 1"),
    ("base.resolution=100", "base.resolution must be a multiple of 16"),
    ("inference.steps=8", "single_step predicts in one deterministic pass"),
])
def test_bad_values_are_named_with_a_fix(override, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_recipe(MINIMAL, [override])


def test_overrides_parse_yaml_scalars_and_nest():
    assert parse_overrides(["train.lr=0.001", "adapter.rank=8", "data.hflip=false", "adapter.targets=[to_q, to_v]"]) \
        == {"train": {"lr": 1e-3}, "adapter": {"rank": 8, "targets": ["to_q", "to_v"]}, "data": {"hflip": False}}
    assert load_recipe(MINIMAL, ["train.lr=3e-4"]).train.lr == pytest.approx(3e-4)
    recipe = load_recipe(MINIMAL, {"train.lr": 1e-3, "train.objective": "flow", "inference.steps": 4})
    assert (recipe.train.lr, recipe.train.objective, recipe.inference.steps) == (1e-3, "flow", 4)
    with pytest.raises(RecipeError, match=r"expected key\.path=value"):
        parse_overrides(["train.lr"])


def test_scientific_notation_without_a_dot_is_a_float(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(MINIMAL) + "train: {lr: 1e-4}\n")  # YAML 1.1 reads 1e-4 as a string
    assert load_recipe(path).train.lr == pytest.approx(1e-4)


def test_missing_data_folder_fails_before_any_model(tmp_path):
    with pytest.raises(RecipeError, match=r"data\.path .*nowhere.* does not exist"):
        load_recipe({**MINIMAL, "data": {"source": "folder", "path": str(tmp_path / "nowhere")}})


def test_relative_data_paths_follow_the_recipe_file(tmp_path):
    (tmp_path / "data").mkdir()
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "data": {"source": "folder", "path": "data"}}))
    assert load_recipe(path).data.path == str(tmp_path / "data")


def test_unknown_recipe_name_suggests_a_bundled_one():
    with pytest.raises(RecipeError, match="did you mean 'lung-xray'"):
        load_recipe("lung-xry")


def test_a_recipe_of_only_the_required_keys_gets_the_documented_defaults(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"task": {"prompt": "[[image2lung]]"}, "data": {"path": "."}}))
    recipe = load_recipe(path)
    assert (recipe.name, recipe.task.prompt, recipe.data.path) == ("adapter", "[[image2lung]]", str(tmp_path))
    # what the README's recipe documents: a mask task on the embedded default, DICEPTION's ~1% LoRA, 50 shots
    # trained single_step for 1500 steps and predicted in one deterministic pass
    assert (recipe.task.codec, recipe.base.generalist, recipe.data.source) == ("binary_mask", "default", "folder")
    assert (recipe.data.train_shots, recipe.data.val_shots, recipe.data.seed) == (50, 20, 0)
    assert (recipe.adapter.rank, recipe.adapter.alpha, recipe.adapter.dropout, recipe.adapter.targets) \
        == (32, 32.0, 0.0, "attention")
    assert (recipe.train.objective, recipe.train.steps, recipe.train.batch_size, recipe.train.lr,
            recipe.train.warmup, recipe.train.val_every, recipe.train.seed) \
        == ("single_step", 1500, 4, 1e-4, 50, 100, 0)
    assert (recipe.inference.steps, recipe.inference.guidance) == (1, 1.0)
    for missing, message in (({"data": {"path": "."}}, "task.prompt is empty"),
                             ({"task": {"prompt": "[[image2lung]]"}}, "data.path is empty")):
        path.write_text(yaml.safe_dump(missing))
        with pytest.raises(RecipeError, match=message):
            load_recipe(path)
