"""The pytest side of fmllm's checks: a check is a test, its outcome is a finding.

A check is a test function marked with :func:`check` that takes the ``report`` fixture. It
records measured values, then ends in one of four ways:

* ``report.ok("...")`` (or returning normally) → ``pass``;
* ``report.warn("...", fix=...)`` → ``warn`` (pytest shows it as passed, so CI stays green);
* ``report.fail("...", fix=...)`` → ``fail`` (pytest failure; the finding is the JUnit message);
* ``report.skip("why")`` or a fixture that skips → ``skip`` with the reason.

Anything else that raises — in the test or in a fixture it uses — is ``crash``: the check did
not complete, and that is never shown as pass or fail.

Results are collected on the pytest config (``results(config)``) and, with
``--fmllm-report FILE``, streamed as JSON lines (``collected``, ``start``, ``result`` events) so
the TUI can show them as they come.
"""

from __future__ import annotations

import json
import time
from typing import Any, NoReturn

import pytest

from fmllm_tui.findings import CheckResult, Fix
from fmllm_tui.redact import mask_data, mask_text

RESULTS_KEY = pytest.StashKey[list[CheckResult]]()
STREAM_KEY = pytest.StashKey[Any]()
ITEM_KEY = pytest.StashKey[dict[str, Any]]()


def check(id: str, title: str, category: str, severity: str = "error") -> pytest.MarkDecorator:
    """Mark a test as an fmllm check with its stable id, title, category and severity."""
    return pytest.mark.fmllm_check(id=id, title=title, category=category, severity=severity)


class CheckOutcome(Exception):
    """Raised by Report.fail/warn to end a check with a finding."""

    status = "fail"

    def __init__(self, finding: str, fix: Fix | None = None):
        super().__init__(finding)
        self.finding = finding
        self.fix = fix


class CheckPassed(CheckOutcome):
    status = "pass"


class CheckFailed(CheckOutcome):
    status = "fail"


class CheckWarned(CheckOutcome):
    status = "warn"


class Report:
    """What a check hands back: measured values, a finding and maybe a fix."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.finding: str = ""
        self.fix: Fix | None = None

    def set(self, **values: Any) -> None:
        """Record measured values (shown in --json under "values")."""
        self.values.update(values)

    def ok(self, finding: str) -> NoReturn:
        """End the check as passed with this finding."""
        __tracebackhide__ = True
        raise CheckPassed(finding)

    def fail(self, finding: str, fix: Fix | None = None) -> NoReturn:
        __tracebackhide__ = True
        raise CheckFailed(finding, fix)

    def warn(self, finding: str, fix: Fix | None = None) -> NoReturn:
        __tracebackhide__ = True
        raise CheckWarned(finding, fix)

    def skip(self, reason: str) -> NoReturn:
        __tracebackhide__ = True
        pytest.skip(reason)


def results(config: pytest.Config) -> list[CheckResult]:
    return config.stash.setdefault(RESULTS_KEY, [])


def planned_fix(loaded: Any, fix_id: str, values: dict[str, Any] | None = None, summary: str = "") -> Fix | None:
    """The fixer's exact changes for a finding (None when the fixer has nothing to change): the one
    way a check attaches a config fix, so every check's fix is what --fix will write."""
    from fmllm_tui.fixes import plan_fix

    changes = plan_fix(loaded, fix_id, values or {})
    if not changes:
        return None
    return Fix(id=fix_id, changes=changes, summary=summary)


def check_id(item: pytest.Item) -> str | None:
    mark = item.get_closest_marker("fmllm_check")
    if mark is None:
        return None
    base = mark.kwargs["id"]
    callspec = getattr(item, "callspec", None)
    return f"{base}[{callspec.id}]" if callspec is not None else base


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options of the checks (also settable through FMLLM_CONFIG, FMLLM_GPU, FMLLM_VRAM)."""
    g = parser.getgroup("fmllm", "fmllm checks")
    g.addoption("--fmllm-config", dest="fmllm_config", default=None, help="config.yaml to check")
    g.addoption("--fmllm-gpu", dest="fmllm_gpu", default=None, help="plan for this GPU (e.g. 'RTX 3080')")
    g.addoption("--fmllm-vram", dest="fmllm_vram", default=None, help="plan for this memory budget (e.g. 10GiB)")
    g.addoption("--fmllm-log", dest="fmllm_log", action="append", default=[], help="training log to scan")
    g.addoption("--fmllm-offline", dest="fmllm_offline", action="store_true", default=False)
    g.addoption("--fmllm-test", dest="fmllm_test", action="store_true", default=False, help="run the minimal fine-tune")
    g.addoption("--fmllm-only", dest="fmllm_only", action="append", default=[], help="only these check ids")
    g.addoption("--fmllm-report", dest="fmllm_report", default=None, help="stream results as JSON lines")


def _emit(config: pytest.Config, event: dict[str, Any]) -> None:
    stream = config.stash.get(STREAM_KEY, None)
    if stream is not None:
        stream.write(json.dumps(event, default=str) + "\n")
        stream.flush()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fmllm_check(id, title, category, severity): an fmllm health check")
    _check_planning_options(config)
    path = config.getoption("fmllm_report", None)
    if path:
        config.stash[STREAM_KEY] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in unconfigure


def _check_planning_options(config: pytest.Config) -> None:
    """A GPU name or memory size that means nothing stops the session at once (pytest's usage
    error, exit 4), instead of every check that plans with it crashing on its own."""
    import os

    gpu = config.getoption("fmllm_gpu", None) or os.environ.get("FMLLM_GPU")
    vram = config.getoption("fmllm_vram", None) or os.environ.get("FMLLM_VRAM")
    where_gpu = "--fmllm-gpu" if config.getoption("fmllm_gpu", None) else "FMLLM_GPU"
    where_vram = "--fmllm-vram" if config.getoption("fmllm_vram", None) else "FMLLM_VRAM"
    if gpu:
        from fmllm_tui import gpudb

        try:
            gpudb.lookup(gpu)
        except LookupError as e:
            raise pytest.UsageError(f"{where_gpu}: {e}") from None
    if vram:
        from fmllm_tui.config import parse_size

        try:
            parse_size(vram)
        except ValueError as e:
            raise pytest.UsageError(f"{where_vram}: {e}") from None


def pytest_unconfigure(config: pytest.Config) -> None:
    stream = config.stash.get(STREAM_KEY, None)
    if stream is not None:
        stream.close()


def only_matches(cid: str, wanted: str) -> bool:
    """``--fmllm-only`` / ``--only`` semantics: the id itself, its base id, or a dotted prefix."""
    base = cid.split("[", 1)[0]
    return cid == wanted or base == wanted or base.startswith(wanted.rstrip(".") + ".")


def unmatched_only(ids: list[str], only: list[str]) -> list[str]:
    """One message per ``only`` entry that selects none of ``ids``, with a did-you-mean."""
    import difflib

    bases = sorted({i.split("[", 1)[0] for i in ids})
    prefixes = sorted({b.split(".", 1)[0] for b in bases})
    out = []
    for o in only:
        if any(only_matches(i, o) for i in ids):
            continue
        close = difflib.get_close_matches(o, bases + prefixes, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else f" (the categories are {', '.join(prefixes)})"
        out.append(f"{o!r} matches no check{hint}")
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    only = config.getoption("fmllm_only", None) or []
    if only:
        ids = [cid for cid in (check_id(it) for it in items) if cid is not None]
        bad = unmatched_only(ids, only)
        if bad:
            # A green run of zero checks would hide the typo: stop with pytest's usage error.
            raise pytest.UsageError("--fmllm-only: " + "; ".join(bad) + ". `fmllm-check --list` lists the ids.")
        keep, drop = [], []
        for it in items:
            cid = check_id(it) or ""
            (keep if any(only_matches(cid, o) for o in only) else drop).append(it)
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_collection_finish(session: pytest.Session) -> None:
    metas = []
    for it in session.items:
        mark = it.get_closest_marker("fmllm_check")
        if mark is not None:
            metas.append({**mark.kwargs, "id": check_id(it), "nodeid": it.nodeid})
    session.config.stash[ITEM_KEY] = {"checks": metas}
    _emit(session.config, {"event": "collected", "checks": metas})




@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    cid = check_id(item)
    if cid is not None:
        item.stash[ITEM_KEY] = {"t0": time.perf_counter(), "status": None}
        _emit(item.config, {"event": "start", "id": cid, "ts": time.time()})


@pytest.fixture
def report() -> Report:
    """The check's report: values, finding and fix."""
    return Report()


@pytest.hookimpl(tryfirst=True, specname="pytest_runtest_makereport")
def pytest_runtest_makereport_finding(item: pytest.Item, call: pytest.CallInfo[Any]) -> pytest.TestReport | None:
    """A check that ended with a finding gets a report whose failure text is that finding.

    Built here so pytest never formats a traceback for it (about 15 ms a failing check, which
    added up to a third of a default fmllm-check run). Crashes keep pytest's full traceback.
    """
    exc = call.excinfo
    if exc is None or not exc.errisinstance(CheckOutcome) or item.get_closest_marker("fmllm_check") is None:
        return None
    value: CheckOutcome = exc.value  # type: ignore[assignment]
    passed = value.status in ("pass", "warn")
    if value.status == "warn":
        # CI readers see warnings in the JUnit report (a property per warning) and the summary.
        item.user_properties.append(("fmllm_warning", mask_text(f"[{check_id(item)}] {value.finding}")))
    return pytest.TestReport(
        item.nodeid,
        item.location,
        {k: 1 for k in item.keywords},
        "passed" if passed else "failed",
        None if passed else mask_text(f"[{check_id(item)}] {value.finding}"),
        call.when,
        sections=list(getattr(item, "_report_sections", [])),
        duration=call.duration,
        start=call.start,
        stop=call.stop,
        user_properties=list(item.user_properties),
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    mark = item.get_closest_marker("fmllm_check")
    if mark is None:
        return
    state = item.stash.setdefault(ITEM_KEY, {"t0": time.perf_counter(), "status": None})
    rpt: Report | None = getattr(item, "funcargs", {}).get("report")  # type: ignore[attr-defined]

    if call.when in ("setup", "call") and state["status"] is None:
        exc = call.excinfo
        if exc is None:
            if call.when == "call":
                state["status"] = "pass"
                state["finding"] = (rpt.finding if rpt else "") or "ok"
        elif exc.errisinstance(pytest.skip.Exception):
            state["status"] = "skip"
            reason = str(exc.value.msg if hasattr(exc.value, "msg") else exc.value)
            state["finding"] = f"skipped: {reason}"
        elif exc.errisinstance(CheckOutcome):
            value: CheckOutcome = exc.value  # type: ignore[assignment]
            state["status"] = value.status
            state["finding"] = value.finding
            state["fix"] = value.fix
            if value.status in ("warn", "pass"):
                rep.outcome = "passed"
                rep.longrepr = None
                rep.sections.append(("fmllm warning", value.finding))
            else:
                rep.longrepr = mask_text(f"[{check_id(item)}] {value.finding}")
        else:
            state["status"] = "crash"
            where = "while preparing" if call.when == "setup" else "while running"
            state["finding"] = f"crashed {where}: {type(exc.value).__name__}: {exc.value}"

    if call.when == "teardown":
        status = state.get("status") or "crash"
        finding = state.get("finding") or "the check did not complete"
        dur = time.perf_counter() - state.get("t0", time.perf_counter())
        kw = mark.kwargs
        result = CheckResult(
            id=check_id(item) or kw["id"],
            title=kw["title"],
            category=kw["category"],
            severity=kw.get("severity", "error"),
            status=status,
            finding=mask_text(finding),
            values=mask_data(rpt.values if rpt else {}),
            fix=state.get("fix"),
            duration_s=dur,
            nodeid=item.nodeid,
        )
        results(item.config).append(result)
        _emit(item.config, {"event": "result", "result": result.to_json()})


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Warnings pass (CI stays green) but are listed, so a CI log shows them."""
    warned = [r for r in config.stash.get(RESULTS_KEY, []) if r.status == "warn"]
    if warned:
        terminalreporter.section("fmllm warnings", sep="=", yellow=True)
        for r in warned:
            terminalreporter.line(f"! {r.id}: {r.finding}")
