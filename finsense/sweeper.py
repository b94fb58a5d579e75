"""A resumable Optuna search: hydra-optuna-sweeper with its study kept in a SQLite file.

``conf/hydra/sweeper/search.yaml`` selects :class:`ResumableOptunaSweeper` (``_target_``) and puts
the study in ``${hydra.sweep.dir}/optuna.db``. Re-running an interrupted search continues the same
study: finished trials are not run again, the sampler sees every earlier trial, and ``n_trials``
is the number of finished trials the whole study should hold, not the number this process adds.

What the plugin (1.3.0) does by itself, and why each part is changed here:

* It always runs ``n_trials`` *new* trials on a loaded study, so a search killed after 15 of 20
  trials would run 20 more. Here it is given only the trials still missing.
* A trial running when the search was killed stays ``RUNNING`` in the storage forever (optuna 2.10
  has no heartbeat unless asked for one). Here it is marked ``FAIL`` and its parameters are queued
  again, so the next trial asked for is that one: its run directory resumes from its checkpoint.
  The search holds the sweep directory's lock while it runs, so a ``RUNNING`` trial found at the
  start can only be one whose process is gone.
* A seeded sampler restarts its random numbers in every process, so a resumed search would draw
  the first search's start-up trials again. Here a resumed search reseeds the sampler from the
  seed and the number of trials already in the study: different, still reproducible.
* optuna 2.10 with SQLAlchemy 2 never commits its alembic stamp, so a new SQLite file fails its
  own schema check (``AssertionError`` in ``get_current_version``). :func:`open_storage` stamps
  it in a committed transaction first.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, OmegaConf

from finsense.errors import FinSenseError
from finsense.lockfile import RunLock

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_STUDY_NAME", "ResumableOptunaSweeper", "open_storage"]

#: The study's name when the config gives a storage but no ``study_name``: a fixed name, because
#: optuna's default is a random one, which a re-run could never find again.
DEFAULT_STUDY_NAME = "finsense"

_SQLITE_PREFIX = "sqlite:///"


def open_storage(url: str) -> Any:
    """An ``optuna.storages.RDBStorage`` for ``url``, creating a SQLite file's directory first.

    SQLite opens a file in a missing directory as an error, and Hydra creates the sweep directory
    only when it launches the first job, after the study is opened.
    """
    import alembic.migration
    import alembic.script
    import optuna.storages._rdb as rdb
    import sqlalchemy
    from optuna.storages import RDBStorage

    if url.startswith(_SQLITE_PREFIX) and url != _SQLITE_PREFIX + ":memory:":
        Path(url[len(_SQLITE_PREFIX) :]).parent.mkdir(parents=True, exist_ok=True)
    # optuna 2.10 stamps a new database's schema revision on a connection it never commits, which
    # SQLAlchemy 2 rolls back; a database stamped here (committed) passes optuna's check.
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            context = alembic.migration.MigrationContext.configure(conn)
            if context.get_current_revision() is None:
                script = alembic.script.ScriptDirectory(
                    os.path.join(os.path.dirname(rdb.__file__), "alembic")
                )
                head = script.get_current_head()
                assert head is not None  # optuna ships one linear history of revisions
                context.stamp(script, head)
    finally:
        engine.dispose()
    return RDBStorage(url)


class ResumableOptunaSweeper(OptunaSweeper):
    """:class:`OptunaSweeper` whose study, when it has a ``storage``, resumes where it stopped.

    Without a ``storage`` it is the plugin's sweeper unchanged (an in-memory study).
    """

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        # The sampler arrives built, and optuna's samplers do not keep their seed.
        seed = OmegaConf.select(config, "hydra.sweeper.sampler.seed", default=None)
        self._sampler_seed: int | None = None if seed is None else int(seed)

    def sweep(self, arguments: list[str]) -> None:
        impl = self.sweeper
        if impl.storage is None:
            return super().sweep(arguments)
        sweep_dir = Path(str(impl.sweep_dir))
        lock = RunLock(sweep_dir)
        try:
            lock.acquire()
        except FinSenseError as err:
            # Hydra would print this as a traceback; a user mistake is one line (errors.py).
            print(f"ERROR: {err}", file=sys.stderr)
            raise SystemExit(err.exit_code) from None
        try:
            lock.record_pid()
            self._prepare_study()
            return super().sweep(arguments)
        finally:
            lock.release()

    def _prepare_study(self) -> None:
        """Open the study, requeue trials a killed search left running, and cut ``n_trials`` to
        the trials still missing."""
        import optuna
        from optuna.trial import TrialState

        impl = self.sweeper
        storage: Any = impl.storage
        if isinstance(storage, str):
            storage = open_storage(storage)
        impl.storage = storage  # the plugin accepts a storage object as well as a URL
        impl.study_name = impl.study_name or DEFAULT_STUDY_NAME
        try:
            study = optuna.load_study(study_name=impl.study_name, storage=storage)
        except KeyError:
            log.info("New study %r in %s", impl.study_name, storage.url)
            return  # a new study: the plugin creates it and runs n_trials
        trials = study.get_trials(deepcopy=False)
        for trial in trials:
            if trial.state != TrialState.RUNNING:
                continue
            # Not counted as done, and run again with the same parameters (its run directory
            # resumes) rather than replaced by a new draw, which would waste its episodes.
            storage.set_trial_state(trial._trial_id, TrialState.FAIL)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.enqueue_trial(dict(trial.params))
            log.info("Trial %d was interrupted; running it again: %s", trial.number, trial.params)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        total = impl.n_trials
        impl.n_trials = max(0, total - finished)
        log.info(
            "Resuming study %r: %d of %d trials finished, %d to run",
            impl.study_name,
            finished,
            total,
            impl.n_trials,
        )
        self._reseed_sampler(len(trials))
        impl.job_idx = len(trials)  # job numbers go on from the earlier runs' (#N in the log)

    def _reseed_sampler(self, n_existing: int) -> None:
        """Give a seeded sampler new random numbers, so that a resumed search does not draw the
        first search's trials again; derived from the seed, so a resumed search stays
        reproducible."""
        import numpy as np

        sampler = self.sweeper.sampler
        seed = self._sampler_seed
        if seed is None or not hasattr(sampler, "_rng"):
            sampler.reseed_rng()  # unseeded, or a sampler without one RNG: fresh entropy
            return
        rng = np.random.RandomState((seed + n_existing) % 2**32)
        sampler._rng = rng
        inner = getattr(sampler, "_random_sampler", None)  # TPE's start-up sampler
        if inner is not None:
            inner._rng = np.random.RandomState(rng.randint(2**31))
