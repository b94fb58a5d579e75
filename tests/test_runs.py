"""Finding a run by the train command's overrides, and the shared evaluate/report command line.

That the directory is the one ``python -m finsense.train`` really makes is checked end to end in
``tests/e2e/test_run_lookup.py``; these tests pin the rules quickly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from finsense import runs
from finsense.errors import ConfigError
from finsense.train import run_dirname

OPTIONS = {"checkpoint": runs.Option("best", "best|latest|PATH", "which checkpoint")}


def parse(*argv: str) -> runs.RunArgs:
    parser = runs.make_parser("finsense.test", "A test command.", OPTIONS)
    return runs.parse_run_args(parser, list(argv), OPTIONS)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], "outputs/default"),
        (["seed=1", "env=googl"], "outputs/env=googl,seed=1"),
        (["env=googl", "seed=1"], "outputs/env=googl,seed=1"),  # sorted, as Hydra does
        # Keys that do not change the experiment never change its directory.
        (["seed=1", "episodes=5", "device=cpu", "checkpoints.max_keep=2"], "outputs/seed=1"),
        (["episodes=5"], "outputs/default"),
        (["name=momentum"], "outputs/momentum"),
        (["name=momentum", "seed=1"], "outputs/momentum,seed=1"),
        (["hydra.run.dir=elsewhere/run"], "elsewhere/run"),
    ],
)
def test_run_dir_is_the_train_commands(overrides: list[str], expected: str) -> None:
    assert runs.run_dir_for(overrides) == Path(expected)


def test_a_data_path_and_a_long_name_are_named_by_the_train_naming_function() -> None:
    overrides = ["env=csv", "env.data.path=data/prices.csv", f"name={'x' * 250}"]
    found = runs.run_dir_for(overrides)
    assert found == Path("outputs") / run_dirname(
        "x" * 250, "env.data.path=data/prices.csv,env=csv"
    )
    assert found.parent == Path("outputs") and "~" in found.name  # one directory, hashed


def test_the_lookup_works_inside_an_initialised_hydra_and_leaves_it_so() -> None:
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module("finsense.conf", version_base="1.3"):
        assert runs.run_dir_for(["seed=2"]) == Path("outputs/seed=2")
        assert GlobalHydra.instance().is_initialized()
    assert not GlobalHydra.instance().is_initialized()
    runs.run_dir_for([])
    assert not GlobalHydra.instance().is_initialized()


@pytest.mark.parametrize("override", ["nokey=1", "seed=abc", "env=nope", "seed=0,1", "seed=[1"])
def test_overrides_that_do_not_compose_are_one_line(override: str) -> None:
    with pytest.raises(ConfigError) as info:
        runs.run_dir_for([override])
    message = str(info.value)
    assert "\n" not in message and override in message


def test_a_missing_run_names_the_directory_and_the_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(runs.RunNotFoundError) as info:
        runs.find_run(None, ["seed=7", "episodes=5"])
    assert str(info.value) == (
        "no run at outputs/seed=7 (overrides: seed=7 episodes=5); train it with: "
        "python -m finsense.train seed=7 episodes=5"
    )
    with pytest.raises(runs.RunNotFoundError, match=r"^no run at outputs/default \(no overrides"):
        runs.find_run(None, [])
    (tmp_path / "outputs" / "seed=7").mkdir(parents=True)
    assert runs.find_run(None, ["seed=7"]) == Path("outputs/seed=7")
    assert runs.find_run(Path("anywhere"), []) == Path("anywhere")  # a RUN_DIR is taken as given


@pytest.mark.parametrize(
    "argv",
    [
        ["checkpoint=latest"],
        ["--checkpoint", "latest"],
        ["--checkpoint=latest"],
        ["--checkpoint", "best", "checkpoint=latest"],  # the last one wins
    ],
)
def test_own_options_take_key_value_and_the_guide_flag(argv: list[str]) -> None:
    args = parse(*argv)
    assert args.options == {"checkpoint": "latest"}
    assert args.run_dir is None and args.overrides == []


def test_defaults_and_the_train_commands_guide_flags() -> None:
    assert parse().options == {"checkpoint": "best"}
    args = parse("seed=1", "--episodes", "5", "--auto-resume", "--checkpoint", "latest")
    assert args.overrides == ["seed=1", "episodes=5", "resume=auto"]
    assert args.options == {"checkpoint": "latest"}


@pytest.mark.parametrize(
    ("arg", "is_path"),
    [
        ("outputs/seed=1", True),  # a run directory's name has "=" in it
        ("/abs/outputs/env=googl,seed=1", True),
        ("outputs/default", True),
        ("seed=1", False),
        ("env.data.path=data/prices.csv", False),  # a "/" in the value only
        ("hydra/launcher=parallel", False),
        ("+agent.extra=1", False),
    ],
)
def test_a_run_directory_is_told_from_an_override(arg: str, is_path: bool) -> None:
    args = parse(arg)
    assert (args.run_dir == Path(arg)) is is_path
    assert (args.overrides == [arg]) is not is_path


def test_an_existing_directory_with_an_equals_sign_is_a_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seed=1").mkdir()
    assert parse("seed=1").run_dir == Path("seed=1")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["a", "b"], "one RUN_DIR at most, got a b"),
        (["outputs/x", "seed=1"], "seed=1: not an option of this command (checkpoint=)"),
        (["--checkpoint"], "--checkpoint needs a value"),
        (["checkpoint"], "'checkpoint' needs a value: checkpoint=best|latest|PATH"),
        (["checkpoint="], "'checkpoint=' needs a value"),
        (["--epochs", "3"], "unrecognized arguments: --epochs"),
        (["--check", "latest"], "unrecognized arguments: --check"),
        (["--multirun", "seed=0,1"], "--multirun: pass the sweep's directory"),
    ],
)
def test_command_line_mistakes_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(runs.UsageError) as info:
        parse(*argv)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_the_usage_line_shows_the_run_as_optional() -> None:
    parser = runs.make_parser("finsense.test", "A test command.", OPTIONS)
    assert parser.format_usage() == (
        "usage: python -m finsense.test [RUN_DIR | OVERRIDE ...] [checkpoint=best|latest|PATH]\n"
    )


def test_this_module_does_not_import_torch() -> None:
    code = "import sys, finsense.runs; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
