"""Run the checks in ``checks/`` through pytest and collect their results (no Textual, no torch).

Used by ``fmllm-check`` (in-process) and by the TUI (which runs ``fmllm-check --report FILE`` as a
child process and streams the JSON lines).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmllm_tui.findings import CheckResult


def checks_dir() -> Path:
    """Where the checks package lives: ``checks/`` of a checkout, ``fmllm_tui/checks`` installed."""
    import fmllm_tui.checks as checks

    return Path(checks.__file__).resolve().parent


def finding_flags(*, gpu: str | None, vram: str | None, offline: bool, logs: Any = (), only: Any = ()) -> list[str]:
    """fmllm-check's flags that shape the findings (not the config path), as argv words: one
    spelling for the TUI's child run and the commands fmllm-check prints."""
    words: list[str] = []
    if gpu:
        words += ["--gpu", gpu]
    if vram:
        words += ["--vram", vram]
    if offline:
        words.append("--offline")
    if logs:
        words += ["--log", *logs]
    if only:
        words += ["--only", *only]
    return words


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
    """What one run of the suite left: the results of the checks that completed, and whether a
    Ctrl-C ended it early (``interrupted``; then ``collected`` lists the checks it meant to run)."""

    results: list[CheckResult]
    pytest_exit: int
    duration_s: float
    collected: list[dict[str, Any]]
    interrupted: bool = False


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
        self.all_ids: list[str] = []
        self.interrupted = False

    def pytest_configure(self, config: Any) -> None:
        self.config = config

    def pytest_itemcollected(self, item: Any) -> None:
        # Every check id, before --only selects: what an --only that matches nothing is told.
        from fmllm_tui.checks._plugin import check_id

        cid = check_id(item)
        if cid is not None:
            self.all_ids.append(cid)

    def pytest_collection_finish(self, session: Any) -> None:
        from fmllm_tui.checks._plugin import ITEM_KEY

        self.collected = session.config.stash.get(ITEM_KEY, {}).get("checks", [])

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        # pytest also ends a session through this hook for its own reasons (Session.Interrupted
        # after collection errors, pytest.exit()): only a real Ctrl-C counts.
        import pytest

        value = excinfo.value
        self.interrupted = isinstance(value, KeyboardInterrupt) and not isinstance(value, pytest.Session.Interrupted)


class ChecksNotRun(RuntimeError):
    """pytest could not collect or run the checks at all (no result to report)."""


class OnlyMatchesNothing(ValueError):
    """An ``--only`` entry selects no check: a usage error (a green run of zero checks would hide
    the typo). ``problems`` holds one message per entry, with a did-you-mean."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def _check_only(opts: RunOptions, collector: _Collector) -> None:
    if not opts.only or not collector.all_ids:
        return
    from fmllm_tui.checks._plugin import unmatched_only

    bad = unmatched_only(collector.all_ids, opts.only)
    if bad:
        raise OnlyMatchesNothing(bad)


def run_checks(opts: RunOptions) -> RunOutcome:
    """Run the suite once in this process and return every check's result.

    A Ctrl-C during the run ends it early: the outcome is ``interrupted`` with the results of
    the checks that completed, and a training run the minimal test started is killed first (it
    runs in a session of its own, so the terminal's SIGINT never reaches it).
    Raises :class:`OnlyMatchesNothing` and :class:`ChecksNotRun`.
    """
    import pytest

    from fmllm_tui.checks._plugin import results

    collector = _Collector()
    t0 = time.perf_counter()
    sink = io.StringIO()
    old_cwd = os.getcwd()
    before = _own_supervisors()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), _no_plugin_autoload():
            code = pytest.main(pytest_args(opts), plugins=[collector])
    except KeyboardInterrupt:  # outside pytest's own handling (start-up, teardown)
        end_runs_started_since(before)
        raise
    finally:
        os.chdir(old_cwd)
    if collector.interrupted:
        end_runs_started_since(before)
    res = results(collector.config) if collector.config is not None else []
    if int(code) == 4:
        _check_only(opts, collector)
    if int(code) in (3, 4) and not res:
        raise ChecksNotRun("pytest could not run the checks:\n" + sink.getvalue()[-3000:])
    return RunOutcome(results=list(res), pytest_exit=int(code), duration_s=time.perf_counter() - t0,
                      collected=collector.collected, interrupted=collector.interrupted)


SUPERVISOR_MODULE = "fmllm_tui.runner.supervise"


def _own_supervisors() -> dict[int, str]:
    """This process's child run supervisors (``python -m fmllm_tui.runner.supervise RUN_DIR``):
    pid -> run folder."""
    try:
        import psutil

        kids = psutil.Process().children()
    except Exception:  # psutil missing or /proc unreadable: nothing to find
        return {}
    found: dict[int, str] = {}
    for kid in kids:
        try:
            argv = kid.cmdline()
        except Exception:  # gone meanwhile, or not ours to read
            continue
        if SUPERVISOR_MODULE in argv and argv.index(SUPERVISOR_MODULE) + 1 < len(argv):
            found[kid.pid] = argv[argv.index(SUPERVISOR_MODULE) + 1]
    return found


def end_runs_started_since(before: dict[int, str]) -> list[str]:
    """Kill the runs this process started after ``before`` (a :func:`_own_supervisors` snapshot)
    and are still running; returns their folders. Runs started earlier (a person's own training
    run, when this runs inside a longer-lived process) are left alone."""
    new = {pid: rdir for pid, rdir in _own_supervisors().items() if pid not in before}
    if not new:
        return []
    from fmllm_tui.runner.launch import kill

    with sigint_ignored():  # a second Ctrl-C must not leave the training half-killed
        for pid, rdir in new.items():
            try:
                import psutil

                procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
            except Exception:
                procs = []
            try:
                kill(rdir)  # records the run as killed (exit.json), as the minimal test's timeout does
            except Exception:  # the run folder is unreadable: the processes still go
                pass
            for proc in procs:  # also one that had not written its pid file yet
                with contextlib.suppress(Exception):
                    proc.kill()
    return list(new.values())


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ctrl-C waits until the block ends (main thread only; elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def list_checks(opts: RunOptions) -> list[dict[str, Any]]:
    """Every check's id, title, category and severity, without running any (only those that
    ``opts.only`` selects, if given). Raises :class:`OnlyMatchesNothing` and :class:`ChecksNotRun`."""
    import pytest

    collector = _Collector()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), _no_plugin_autoload():
        code = pytest.main(pytest_args(opts, collect_only=True), plugins=[collector])
    if int(code) == 4:
        _check_only(opts, collector)
    if int(code) not in (0, 5) and not collector.collected:
        raise ChecksNotRun("pytest could not collect the checks:\n" + sink.getvalue()[-3000:])
    return collector.collected
