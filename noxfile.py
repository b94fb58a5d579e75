"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``.

Quick loop: ``nox -s tests -- -m "not slow"``. CI (``.ci/run``) runs the whole suite.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Install the project with its dev extra and run pytest (extra arguments go to pytest)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the package."""
    session.install("-e", ".[dev]")
    session.run("mypy", "finsense")
