"""FinSense's resumable Optuna sweeper, where Hydra looks for plugins.

Hydra instantiates a sweeper only from a class defined under the ``hydra_plugins`` namespace; the
code lives in :mod:`finsense.sweeper` and this name is what ``conf/hydra/sweeper/search.yaml``'s
``_target_`` points at.
"""

from finsense.sweeper import ResumableOptunaSweeper


class FinSenseOptunaSweeper(ResumableOptunaSweeper):
    """:class:`finsense.sweeper.ResumableOptunaSweeper` under the name Hydra accepts."""


__all__ = ["FinSenseOptunaSweeper"]
