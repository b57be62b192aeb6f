"""Run the checks in ``checks/`` through pytest and collect their results (no Textual, no torch).

Used by ``fmllm-check`` (in-process) and by the TUI (which runs ``fmllm-check --report FILE`` as a
child process and streams the JSON lines).
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmllm_tui.findings import CheckResult


def checks_dir() -> Path:
    """Where the checks package lives: ``checks/`` of a checkout, ``fmllm_tui/checks`` installed."""
    import fmllm_tui.checks as checks

    return Path(checks.__file__).resolve().parent


@dataclass
class RunOptions:
    config: str
    gpu: str | None = None
    vram: str | None = None
    logs: list[str] = field(default_factory=list)
    offline: bool = False
    run_test: bool = False
    only: list[str] = field(default_factory=list)
    junitxml: str | None = None
    report_stream: str | None = None


@contextlib.contextmanager
def _no_plugin_autoload():
    """Installed pytest plugins (snapshot tools, etc.) have no business in a health check run:
    they cost start-up time and some import Textual."""
    old = os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
        else:
            os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = old


@dataclass
class RunOutcome:
    results: list[CheckResult]
    pytest_exit: int
    duration_s: float
    collected: list[dict[str, Any]]


def pytest_args(opts: RunOptions, *, collect_only: bool = False) -> list[str]:
    d = checks_dir()
    args = [
        str(d),
        "-p", "fmllm_tui.checks._plugin",  # plugin autoload is off here, so the entry point is named
        "-p", "no:cacheprovider",  # never write .pytest_cache into site-packages or the checkout
        "-p", "no:terminal",
        "-p", "no:randomly",
        # Plugins a health-check run does not use: each costs start-up time.
        "-p", "no:doctest", "-p", "no:unittest", "-p", "no:legacypath", "-p", "no:debugging",
        "-p", "no:pastebin", "-p", "no:nose", "-p", "no:stepwise", "-p", "no:setupplan",
        "-p", "no:setuponly", "-p", "no:unraisableexception", "-p", "no:threadexception",  # each gc.collect()s
        "--assert=plain",  # checks report through report.fail(), not bare asserts: skip rewriting
        "--capture=sys",  # Python-level capture is enough (children's output is captured by them)
        "-o", "addopts=",
        "-o", "python_files=test_*.py",
        "--rootdir", str(d.parent),
        "--fmllm-config", str(opts.config),
    ]
    if opts.gpu:
        args += ["--fmllm-gpu", opts.gpu]
    if opts.vram:
        args += ["--fmllm-vram", opts.vram]
    for log in opts.logs:
        args += ["--fmllm-log", log]
    if opts.offline:
        args.append("--fmllm-offline")
    if opts.run_test:
        args.append("--fmllm-test")
    for o in opts.only:
        args += ["--fmllm-only", o]
    if opts.junitxml:
        args += [f"--junitxml={opts.junitxml}", "-o", "junit_family=xunit1"]
    else:
        args += ["-p", "no:junitxml"]
    if opts.report_stream:
        args += ["--fmllm-report", opts.report_stream]
    if collect_only:
        args.append("--collect-only")
    return args


class _Collector:
    """A pytest plugin object that keeps the session's config so results can be read back."""

    def __init__(self) -> None:
        self.config: Any = None
        self.collected: list[dict[str, Any]] = []

    def pytest_configure(self, config: Any) -> None:
        self.config = config

    def pytest_collection_finish(self, session: Any) -> None:
        from fmllm_tui.checks._plugin import ITEM_KEY

        self.collected = session.config.stash.get(ITEM_KEY, {}).get("checks", [])


class ChecksNotRun(RuntimeError):
    """pytest could not collect or run the checks at all (no result to report)."""


def run_checks(opts: RunOptions) -> RunOutcome:
    """Run the suite once in this process and return every check's result."""
    import pytest

    from fmllm_tui.checks._plugin import results

    collector = _Collector()
    t0 = time.perf_counter()
    sink = io.StringIO()
    old_cwd = os.getcwd()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), _no_plugin_autoload():
        code = pytest.main(pytest_args(opts), plugins=[collector])
    os.chdir(old_cwd)
    res = results(collector.config) if collector.config is not None else []
    if int(code) in (3, 4) and not res:
        raise ChecksNotRun("pytest could not run the checks:\n" + sink.getvalue()[-3000:])
    return RunOutcome(results=list(res), pytest_exit=int(code), duration_s=time.perf_counter() - t0,
                      collected=collector.collected)


def list_checks(opts: RunOptions) -> list[dict[str, Any]]:
    """Every check's id, title, category and severity, without running any."""
    import pytest

    collector = _Collector()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), _no_plugin_autoload():
        code = pytest.main(pytest_args(opts, collect_only=True), plugins=[collector])
    if int(code) not in (0, 5) and not collector.collected:
        raise ChecksNotRun("pytest could not collect the checks:\n" + sink.getvalue()[-3000:])
    return collector.collected
