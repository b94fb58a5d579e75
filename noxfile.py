"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``.

Quick loop: ``nox -s tests -- -m "not slow"``. CI (``.ci/run``) runs the whole suite.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Install the tested set (constraints.txt) and run pytest (extra arguments go to pytest)."""
    session.install("-e", ".[dev]", "-c", "constraints.txt")
    session.run("pytest", *session.posargs)


@nox.session
def floor(session: nox.Session) -> None:
    """The quick tests against the oldest versions pyproject.toml allows (constraints-floor.txt).

    The runtime dependencies are held at their floors; the extras and test tools resolve freely.
    """
    session.install("-e", ".[dev]", "-c", "constraints-floor.txt")
    session.run("pytest", "-m", "not slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the package."""
    session.install("-e", ".[dev]", "-c", "constraints.txt")
    session.run("mypy", "finsense")
