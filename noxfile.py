"""Developer tasks: `nox -s tests lint typing docs demo bench micro fault`.

Sessions use the running interpreter (this project targets 3.11+; no interpreter list, so a
CI machine with a single Python never fails on a missing one).
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, on asyncio and trio, in-process and through real servers."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "examples", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "examples", "benchmarks", "noxfile.py")


@nox.session
def typing(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("mypy", "src")


@nox.session
def docs(session: nox.Session) -> None:
    """Run every example and the code in the docs."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/test_examples.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The demo gateway on 127.0.0.1:8000."""
    session.install("-e", ".[server]")
    session.run("pygateway", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: a 1 GiB body streamed through (peak RSS), proxies side by side with the
    baselines of ../shared/bench (summary.json/.md, plot.png, the budget), router scaling,
    `fault`. Arguments go to benchmarks/run.py (`-- --quick`, `-- --group servers`)."""
    session.install("-e", ".[test]")
    # First, so that run.py's budget lines include its figures; a miss is reported there.
    session.run("python", "benchmarks/stream_rss.py", success_codes=[0, 1])
    session.run("python", "benchmarks/run.py", *session.posargs)
    session.run("python", "benchmarks/fault_under_load.py")


@nox.session
def micro(session: nox.Session) -> None:
    """Micro-benchmarks without a server: router match (1/100/10,000 routes; prefix, host,
    regex), plugin dispatch (0/1/5 no-op plugins), header building. `-- --quick` for a
    smoke run."""
    session.install("-e", ".")
    session.run("python", "benchmarks/micro.py", *session.posargs)


@nox.session
def fault(session: nox.Session) -> None:
    """One Target of three stops and restarts under load: errors, and whether it returns."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/fault_under_load.py", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """Long-running tests (minutes): a 10-minute SSE stream of heartbeats only is not cut."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "soak", "tests/test_streaming_soak.py", *session.posargs)
