"""The command line as a user types it: help, version, listings, validation errors without tracebacks."""

from __future__ import annotations

import pytest
import yaml

from adaptkit import __version__
from adaptkit.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse exits for --help, --version and usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_every_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("info", "recipes", "codecs", "check", "train", "eval", "predict", "quickstart", "pretrain"):
        assert command in out


def test_version(capsys):
    assert run(capsys, "--version")[1].strip() == f"adaptkit {__version__}"


def test_recipes_and_codecs_are_listed(capsys):
    out = run(capsys, "recipes")[1]
    assert "quickstart" in out and "lung-xray" in out
    out = run(capsys, "codecs")[1]
    assert "binary_mask" in out and "instances" in out and "depth" in out


def test_info_describes_a_generalist(capsys):
    code, out, _ = run(capsys, "info", "tiny", "--device", "cpu")
    assert code == 0
    assert "transformer" in out and "[[image2depth]]" in out and "32 px" in out


def test_check_prints_the_resolved_recipe_and_split_sizes(capsys, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "task": {"prompt": "[[image2shadow]]"},
                                    "data": {"source": "synth", "synth_task": "shadow", "train_shots": 5,
                                             "val_shots": 2}}))
    code, out, _ = run(capsys, "check", str(path), "train.steps=7")
    assert code == 0
    assert yaml.safe_load(out)["train"]["steps"] == 7
    assert "5 train / 2 val / 0 test" in out


@pytest.mark.parametrize(("argv", "message"), [
    (("check", "quickstart", "trian.steps=3"), "did you mean 'train'"),
    (("check", "lung-xry"), "did you mean 'lung-xray'"),
    (("check", "quickstart", "task.codec=binary_mask_"), "binary_mask"),
])
def test_bad_input_is_one_clear_line_not_a_traceback(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
