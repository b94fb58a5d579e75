"""Per-episode metric loggers beyond ``metrics.csv`` (which the trainer always writes).

``logger=tensorboard`` adds :class:`TensorBoardLogger`: one scalar per metric per episode, tagged
with the metric's own name (``total_profit``, ``epsilon``, ``test_sharpe_ratio``, ...) and
stepped by the episode number, in ``RUN_DIR/tb/``. ``tensorboard --logdir outputs`` shows every
run; ``tensorboard --logdir multirun/<sweep>`` compares a sweep's jobs.

Resumed runs continue the same curves: a run resumed from the checkpoint of episode ``N`` opens
the writer with ``purge_step=N + 1``, which tells TensorBoard to drop the points of episodes
``> N`` written before the interruption (they belong to a future the resumed run relives), so
no episode has two points and none is orphaned. Each episode is flushed to disk as it is logged,
so the points up to a checkpoint are never lost with the process.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any

from finsense.errors import ConfigError, FinSenseError

log = logging.getLogger(__name__)

#: Where ``logger=tensorboard`` writes event files, relative to the run directory.
TENSORBOARD_DIR = "tb"
#: Row keys that are not metrics of the episode.
NOT_LOGGED: frozenset[str] = frozenset({"episode"})
#: The ``logger=`` values :func:`open_logger` knows.
LOGGER_KINDS: tuple[str, ...] = ("csv", "tensorboard")
MISSING_TENSORBOARD = (
    "logger=tensorboard needs the tensorboard extra: pip install 'finsense[tensorboard]' "
    "(or use logger=csv)"
)


def check_logger_available(kind: str) -> None:
    """Refuse ``logger=<kind>`` before any work when what it needs is not installed.

    Cheap: the package is looked up (``importlib.util.find_spec``), not imported, so a run pays
    nothing for the check; without it a missing extra surfaced only when the first episode was
    logged, after the run directory had been started.

    Raises:
        ConfigError: one line saying how to install what is missing, or an unknown ``kind``.
    """
    if kind not in LOGGER_KINDS:
        raise ConfigError(f"logger must be {' or '.join(LOGGER_KINDS)}, got {kind!r}")
    if kind == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(MISSING_TENSORBOARD)


class TensorBoardLogger:
    """Writes each episode's row as TensorBoard scalars via ``torch.utils.tensorboard``.

    Args:
        log_dir: the event file directory (``RUN_DIR/tb``); created if missing.
        purge_step: on resume, the first episode the resumed run will log (``start_episode + 1``):
            points at or after it from earlier sessions are dropped by TensorBoard. None for a
            fresh run.

    Raises:
        FinSenseError: tensorboard is not installed (one line saying how to install it).
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FinSenseError(MISSING_TENSORBOARD) from None
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        if purge_step is not None:
            log.debug("tensorboard: dropping points from episode %d on", purge_step)

    def log(self, episode: int, row: Mapping[str, Any]) -> None:
        """Write every numeric, finite value of ``row`` (except ``episode``) at step ``episode``."""
        for key, value in row.items():
            if key in NOT_LOGGED or isinstance(value, bool) or not isinstance(value, Real):
                continue
            if math.isfinite(value):
                self._writer.add_scalar(key, float(value), global_step=episode)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_logger(kind: str, run_dir: Path, start_episode: int = 0) -> TensorBoardLogger | None:
    """The logger ``logger=<kind>`` asks for, resuming after ``start_episode`` (0 = fresh).

    ``csv`` needs none beyond ``metrics.csv`` (None is returned); ``tensorboard`` writes to
    ``run_dir/tb`` with ``purge_step=start_episode + 1``, also on a fresh start, so that the
    points of a history set aside by ``resume=never`` disappear as well.
    """
    if kind == "csv":
        return None
    if kind == "tensorboard":
        return TensorBoardLogger(Path(run_dir) / TENSORBOARD_DIR, purge_step=start_episode + 1)
    raise FinSenseError(f"logger must be csv or tensorboard, got {kind!r}")
