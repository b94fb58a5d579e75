"""Find a run directory the way ``python -m finsense.train`` names it, and the shared command line
of the tools that read a run (``finsense.evaluate``, ``finsense.report``).

A run directory's name is derived from the overrides that define the experiment (sorted by key,
percent-encoded, see :func:`finsense.train.run_dirname`), so it is long and easy to mistype.
These tools therefore also take the train command's own overrides::

    python -m finsense.train seed=1 env=googl episodes=500
    python -m finsense.evaluate seed=1 env=googl               # outputs/env=googl,seed=1
    python -m finsense.evaluate name=momentum                  # outputs/momentum
    python -m finsense.evaluate                                # outputs/default

:func:`run_dir_for` composes the same Hydra config as the train command with those overrides and
resolves its ``hydra.run.dir``: the same ``override_dirname`` (with the same excluded keys), the
same naming function, so the two can never disagree. Composing registers the config schema, which
imports torch, so it is imported only when a run is looked up: this module itself stays light.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from finsense.errors import ConfigError, FinSenseError

if TYPE_CHECKING:
    from omegaconf import DictConfig

#: The Hydra config package and primary config the train command composes.
CONFIG_MODULE = "finsense.conf"
CONFIG_NAME = "config"


class UsageError(FinSenseError):
    """A command line that cannot be read (an unknown flag, two run directories, ...)."""


class RunNotFoundError(FinSenseError):
    """No run directory where the given overrides (or none: the default run) put it."""


def relative_to_run(path: str | Path, run_dir: str | Path) -> str:
    """``path`` as shown to users: relative to the run directory when it lies inside it
    (``models/model_ep10.pt``), else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(path)


def compose_config(overrides: Sequence[str], *, with_hydra: bool = False) -> DictConfig:
    """The config ``python -m finsense.train *overrides`` composes (with its ``hydra`` node when
    ``with_hydra``), values not yet resolved.

    Raises:
        ConfigError: the overrides do not compose (an unknown key, a bad value or config group).
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from omegaconf.errors import OmegaConfBaseException

    # Importing the train module registers what its config needs, exactly as a training run
    # does: the finsense_run_dir / finsense_sweep_dir resolvers and the finsense_schema configs.
    import finsense.train  # noqa: F401

    # Hydra refuses to initialise twice: a caller that runs inside Hydra (an app, a test) gets
    # its own Hydra back afterwards.
    outer = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, job_name="train", version_base="1.3"):
            # return_hydra_config: the hydra node, with hydra.job.override_dirname computed from
            # these overrides and the config's exclude_keys, is what hydra.run.dir refers to.
            return compose(CONFIG_NAME, overrides=list(overrides), return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"overrides {_shown(overrides)}: {_one_line(exc)}") from None
    finally:
        restore_gh_from_backup(outer)


def run_dir_for(overrides: Sequence[str]) -> Path:
    """The run directory ``python -m finsense.train *overrides`` uses (relative to the current
    directory, as the train command's is); the directory need not exist.

    Raises:
        ConfigError: the overrides do not compose (an unknown key, a bad value or config group).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose_config(overrides, with_hydra=True)
        run_dir = OmegaConf.select(cfg, "hydra.run.dir", throw_on_missing=True)
    except ConfigError as exc:
        raise ConfigError(f"cannot find the run of {exc}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(
            f"cannot find the run of overrides {_shown(overrides)}: {_one_line(exc)}"
        ) from None
    return Path(str(run_dir))


def find_run(run_dir: Path | None, overrides: Sequence[str]) -> Path:
    """The run a command means: ``run_dir`` when given, else the directory of ``overrides``
    (no overrides: the default run, ``outputs/default``), which must exist.

    Raises:
        RunNotFoundError: no directory where the overrides put the run.
        ConfigError: the overrides do not compose.
    """
    if run_dir is not None:
        return run_dir  # as given: the command reports a missing or damaged one itself
    found = run_dir_for(overrides)
    if not found.is_dir():
        if overrides:
            raise RunNotFoundError(
                f"no run at {found} (overrides: {_shown(overrides)}); train it with: "
                f"python -m finsense.train {shlex.join(overrides)}"
            )
        raise RunNotFoundError(
            f"no run at {found} (no overrides: the default run); pass a RUN_DIR or the train "
            "command's overrides (seed=1 env=googl ...)"
        )
    return found


# -- the shared command line -------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One of a command's own options: ``key=value``, or the guide's ``--key value``."""

    default: str
    metavar: str
    help: str


@dataclass
class RunArgs:
    """A parsed command line: which run (a path, or overrides) and the command's own options."""

    run_dir: Path | None = None
    overrides: list[str] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)
    #: With a RUN_DIR, the ``env=NAME`` and ``env.KEY=VALUE`` overrides of a command that takes
    #: them (``finsense.evaluate``'s backtest on other data); empty otherwise.
    env_overrides: list[str] = field(default_factory=list)

    def find(self) -> Path:
        """The run directory these arguments name (see :func:`find_run`)."""
        return find_run(self.run_dir, self.overrides)


class _Parser(argparse.ArgumentParser):
    """argparse for ``--help`` and the usage line; its errors are one line, like every other
    FinSense error (argparse would print the usage line too)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def make_parser(prog: str, description: str, options: Mapping[str, Option]) -> _Parser:
    """The argparse parser of a command that reads a run: ``[RUN_DIR | OVERRIDE ...]`` and its
    own ``options`` (read by :func:`parse_run_args`, which this parser only documents)."""
    own = "".join(f" [{key}={opt.metavar}]" for key, opt in options.items())
    parser = _Parser(
        prog=f"python -m {prog}",
        usage=f"%(prog)s [RUN_DIR | OVERRIDE ...]{own}",
        description=description,
        allow_abbrev=False,  # "--check" would reach argparse's --checkpoint, which is never read
        epilog=(
            "The run: RUN_DIR, or the overrides of the train command that made it "
            "(seed=1 env=googl name=NAME ...; its --episodes N, --resume X, --auto-resume are "
            "accepted and change nothing), or neither for the default run, outputs/default."
        ),
    )
    parser.add_argument(
        "args",
        nargs="*",
        metavar="RUN_DIR | OVERRIDE",
        help="a run directory, or the train command's key=value overrides",
    )
    for key, opt in options.items():
        # Documented here; parse_run_args reads them (as --key value, --key=value or key=value).
        parser.add_argument(
            f"--{key}",
            metavar=opt.metavar,
            help=f"{opt.help} (also {key}={opt.metavar}; default {opt.default})",
        )
    return parser


def _is_path(arg: str) -> bool:
    """Whether a positional argument is a run directory rather than a Hydra override.

    Run directory names hold ``=`` (``outputs/seed=1``), so ``=`` alone does not decide: an
    existing directory is a path, and so is anything with a ``/`` before its ``=`` (an override's
    key has none, except Hydra's own groups such as ``hydra/launcher=parallel``).
    """
    key, eq, _ = arg.partition("=")
    if not eq or Path(arg).is_dir():
        return True
    key = key.lstrip("+~")
    return "/" in key and not key.startswith("hydra/")


def _own_flags(argv: Sequence[str], options: Mapping[str, Option]) -> list[str]:
    """The guide's ``--key value`` and ``--key=value`` forms of the own options as ``key=value``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        key = flag.removeprefix("--")
        if flag.startswith("--") and key in options:
            if not eq:
                if i + 1 == len(argv):
                    raise UsageError(f"{flag} needs a value: {flag} {options[key].metavar}")
                i += 1
                value = argv[i]
            out.append(f"{key}={value}")
        else:
            out.append(arg)
        i += 1
    return out


def is_env_override(arg: str) -> bool:
    """Whether ``arg`` is a plain ``env=NAME`` or ``env.KEY=VALUE`` override."""
    key, eq, _ = arg.partition("=")
    return bool(eq) and (key == "env" or key.startswith("env."))


def parse_run_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    options: Mapping[str, Option],
    *,
    env_overrides: bool = False,
) -> RunArgs:
    """Read ``[RUN_DIR | OVERRIDE ...]`` and the own ``options`` from ``argv``.

    An argument ``key=value`` whose key is an own option sets it (so does ``--key value``); a
    path is the run directory; anything else is an override of the train command (its guide
    flags included). With ``env_overrides`` and a run directory, the overrides must all be
    ``env=NAME`` or ``env.KEY=VALUE`` (:func:`is_env_override`) and go to
    ``RunArgs.env_overrides``: they change the run's env for this command, not which run.
    ``-h`` prints the parser's help and exits.

    Raises:
        UsageError: an unknown flag, an option without a value, two run directories, or a run
            directory together with overrides (other than env ones, with ``env_overrides``).
    """
    args = _own_flags(argv, options)
    if "-m" in args or "--multirun" in args:
        # A sweep's jobs share one directory: name it (the sweep, or one job of it).
        raise UsageError(
            "--multirun: pass the sweep's directory (multirun/sweep, multirun/NAME with "
            "name=NAME) or one job's directory instead"
        )
    if any(a.startswith("--") and a != "--help" for a in args):
        from finsense.train import translate_guide_flags  # --episodes N, --resume X, ...

        args = translate_guide_flags(args)
    # What is left for argparse: -h, positionals, and unknown flags (which it refuses).
    positionals: list[str] = parser.parse_args(args).args
    parsed = RunArgs(options={key: opt.default for key, opt in options.items()})
    run_dirs: list[str] = []
    for arg in positionals:
        key, eq, value = arg.partition("=")
        if key in options:
            if not value:  # "checkpoint" or "checkpoint=": a forgotten value, not a directory
                raise UsageError(f"{arg!r} needs a value: {key}={options[key].metavar}")
            parsed.options[key] = value
        elif _is_path(arg):
            run_dirs.append(arg)
        else:
            parsed.overrides.append(arg)
    if len(run_dirs) > 1:
        raise UsageError(f"one RUN_DIR at most, got {_shown(run_dirs)}")
    if run_dirs:
        parsed.run_dir = Path(run_dirs[0])
        if env_overrides and parsed.overrides:
            others = [arg for arg in parsed.overrides if not is_env_override(arg)]
            if others:
                own = " ".join(f"{key}=" for key in options)
                raise UsageError(
                    f"{_shown(others)}: with a RUN_DIR only env overrides apply (env=NAME, "
                    f"env.data.path=FILE, env.fee=X, ...: a backtest), besides this command's "
                    f"options ({own}); to name a run by its overrides, leave out RUN_DIR"
                )
            parsed.env_overrides, parsed.overrides = parsed.overrides, []
        if parsed.overrides:
            own = ", ".join(f"{key}=" for key in options) or "none"
            raise UsageError(
                f"{_shown(parsed.overrides)}: not an option of this command ({own}); overrides "
                f"find a run instead of RUN_DIR {run_dirs[0]}, so give one or the other"
            )
    return parsed


def _shown(args: Sequence[str]) -> str:
    return shlex.join(args) if args else "none"


def _one_line(exc: BaseException) -> str:
    """Hydra's message (and its cause's, where it says what was wrong) on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        text += f" ({str(cause).strip().splitlines()[0]})"
    return text
