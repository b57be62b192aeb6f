"""fmllm-tui: checks, one-key fixes, memory planning, presets, launch and follow of a fine-tune.

The app holds no fine-tuning logic: checks run as a child ``fmllm-check`` whose report stream is
tailed by a thread worker; fixes, presets and memory edits go through ``fixes``; predictions come
from the memory model; runs are launched, followed, stopped and diagnosed by the runner.

Start-up is kept under a second on a small machine: only Textual and the Checks screen are
imported before the first frame; the other screens, the config loader, the fixers, the memory
model and plotext load when first needed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import Worker, WorkerState, get_current_worker

from fmllm_tui.exitcodes import ExitCode
from fmllm_tui.findings import Change, CheckResult
from fmllm_tui.tui.checkstream import CheckRun, CheckRunSpec, result_from_event
from fmllm_tui.tui.messages import ChecksChanged, ChecksEnded, ChecksEvent, ConfigWritten
from fmllm_tui.tui.screens.checks import ChecksScreen
from fmllm_tui.tui.widgets.navbar import SCREENS

TTY_CHECK_S = 3.0  # how often the watchdog looks at the terminal (dolphie uses 5 s)
# Once the terminal is gone, how long the app may take to end before the process ends anyway: a
# worker thread still busy (a prediction or lookup on a loaded machine) keeps Python waiting for it.
TERMINAL_GONE_GRACE_S = 10.0


def exit_when_stuck(grace_s: float, code: int, exit_fn: Any = os._exit) -> threading.Thread:
    """A daemon thread that ends the process with ``code`` after ``grace_s`` seconds, if it is
    still running then. Nothing is left to draw on; training runs are separate processes."""

    def backstop() -> None:
        time.sleep(grace_s)
        exit_fn(code)

    t = threading.Thread(target=backstop, name="fmllm-tui-terminal-gone", daemon=True)
    t.start()
    return t


def _memory_screen() -> Screen:
    from fmllm_tui.tui.screens.memory import MemoryScreen

    return MemoryScreen()


def _presets_screen() -> Screen:
    from fmllm_tui.tui.screens.presets import PresetsScreen

    return PresetsScreen()


def _run_screen() -> Screen:
    from fmllm_tui.tui.screens.run import RunScreen

    return RunScreen()


class ChecksState:
    """What the current (or last) check run reported, in collection order."""

    def __init__(self) -> None:
        self.serial = 0
        self.metas: list[dict[str, Any]] = []
        self.results: dict[str, CheckResult] = {}
        self.started: dict[str, float] = {}  # check id -> time.monotonic() at its start event
        self.running = False
        self.returncode: int | None = None
        self.error: str | None = None  # why the run produced no results

    def result(self, check_id: str) -> CheckResult | None:
        return self.results.get(check_id)

    def by_prefix(self, check_id: str) -> CheckResult | None:
        """The result with this id, or the first parametrised one (``config.fit[...]``)."""
        if check_id in self.results:
            return self.results[check_id]
        for k, v in self.results.items():
            if k.split("[", 1)[0] == check_id:
                return v
        return None


class FmllmApp(App[int]):
    """The fmllm TUI. ``deterministic`` freezes spinners and hides clock-derived text (snapshots)."""

    CSS_PATH = "app.tcss"
    TITLE = "fmllm"
    ENABLE_COMMAND_PALETTE = False  # every action has a key; the palette's footer slot is better spent
    MODES = {
        "checks": ChecksScreen,
        "memory": _memory_screen,
        "presets": _presets_screen,
        "run": _run_screen,
    }
    DEFAULT_MODE = "checks"
    # each screen's digit as the nav bar shows it, then F2-F5 in the same order (F1 is help)
    BINDINGS = [
        *(Binding(key, f"show('{mode}')", label, show=False) for mode, key, label in SCREENS),
        *(Binding(f"f{int(key) + 1}", f"show('{mode}')", label, show=False) for mode, key, label in SCREENS),
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        config: str | os.PathLike[str] = "config.yaml",
        *,
        gpu: str | None = None,
        vram: str | None = None,
        offline: bool = False,
        deterministic: bool = False,
        watch_tty: bool = True,
        start_checks: bool = True,
    ) -> None:
        super().__init__()
        self.spec = CheckRunSpec(config=str(config), gpu=gpu, vram=vram, offline=offline)
        self.config_path = Path(config)
        self.deterministic = deterministic
        self.watch_tty = watch_tty
        self.start_checks = start_checks
        self.checks = ChecksState()
        self.workdir = Path(tempfile.mkdtemp(prefix="fmllm-tui-"))
        self._check_run: CheckRun | None = None
        self._backstop: threading.Thread | None = None  # armed once the terminal is gone
        self._views: list[Any] = []

    # ---- life cycle -------------------------------------------------------------------------

    def on_mount(self) -> None:
        if self.start_checks:
            self.call_after_refresh(self.rerun_checks)  # first frame first, then the child starts
        self._start_tty_watchdog()
        self.call_after_refresh(self._maybe_reattach)

    def _start_tty_watchdog(self) -> None:
        """Exit when the terminal goes away (SSH drop) instead of spinning on a dead tty."""
        if not self.watch_tty or self.is_headless or self.is_web:
            return
        try:
            if not os.isatty(sys.stdin.fileno()):
                return
        except (ValueError, OSError, AttributeError):
            return
        self.set_interval(TTY_CHECK_S, self.check_tty)
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._terminal_gone)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread or no SIGHUP here: the interval check still runs

    def check_tty(self) -> bool:
        """True while stdin is still a terminal; otherwise end the app (training is unaffected)."""
        try:
            alive = os.isatty(sys.stdin.fileno())
        except (ValueError, OSError, AttributeError):
            alive = False
        if not alive:
            self._terminal_gone()
        return alive

    def _terminal_gone(self) -> None:
        if not self.is_headless and self._backstop is None:
            self._backstop = exit_when_stuck(TERMINAL_GONE_GRACE_S, int(ExitCode.INTERRUPTED))
        self.shutdown()
        self.exit(return_code=int(ExitCode.INTERRUPTED), message="fmllm-tui: the terminal went away")

    def shutdown(self) -> None:
        """Stop what this app started (the check run); a training run is left alone."""
        run, self._check_run = self._check_run, None
        if run is not None:
            run.stop(grace_s=1.0)

    async def action_quit(self) -> None:
        self.shutdown()
        live = [v.snap.run_dir for v in self._views if getattr(getattr(v, "snap", None), "running", False)]
        note = (f"fmllm-tui: the run in {live[0]} keeps going; start fmllm-tui again to follow it, "
                f"or: fmllm-run follow --run-dir {live[0]}") if live else None
        self.exit(0, message=note)

    def action_help_quit(self) -> None:
        """Ctrl-C: say which key quits here (Textual's own text names ctrl+q; the README says q)."""
        from fmllm_tui.tui.screens.base import FmllmScreen

        if isinstance(self.screen, FmllmScreen):
            self.notify("Press q to quit (a training run keeps going).", title="Quit?")
        else:
            self.notify("Press esc to close this dialog, then q to quit.", title="Quit?")

    def on_unmount(self) -> None:
        self.shutdown()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- navigation -------------------------------------------------------------------------

    def action_show(self, mode: str) -> None:
        if mode != self.current_mode:
            self.switch_mode(mode)

    def action_help(self) -> None:
        from fmllm_tui.tui.screens.dialogs import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def register_view(self, view: Any) -> None:
        """Screens that follow app state (checks, config writes) register here on mount."""
        if view not in self._views:
            self._views.append(view)

    def broadcast(self, message_factory: Any) -> None:
        for v in self._views:
            v.post_message(message_factory())

    async def _maybe_reattach(self) -> None:
        """Show the Run screen at start-up when this config has a run alive or finished since."""
        try:
            from fmllm_tui.tui import runlink
        except ImportError:
            return
        try:
            found = await asyncio.to_thread(runlink.find_latest, self.config_path)
            show = found is not None and await asyncio.to_thread(runlink.worth_showing, found)
        except Exception as e:  # a damaged run folder must not take the checks down with it
            self.notify(f"could not look for a run to reattach to: {type(e).__name__}: {e}", severity="warning")
            return
        if show:
            self.switch_mode("run")

    # ---- checks -----------------------------------------------------------------------------

    def rerun_checks(self, logs: tuple[str, ...] | None = None) -> None:
        """(Re)start the suite in a child process; rows fill in as results stream.

        ``logs``: training logs the checks also scan from now on (a failed run's train.log);
        None keeps the current ones, () drops them.
        """
        if logs is not None:
            self.spec = replace(self.spec, logs=tuple(logs))
        self.shutdown()
        st = self.checks
        st.serial += 1
        st.running = True
        st.returncode = None
        st.error = None
        st.started.clear()
        st.results.clear()
        self.broadcast(ChecksChanged)
        self._follow_checks(st.serial)

    @work(thread=True, exclusive=True, group="checks", exit_on_error=False)
    def _follow_checks(self, serial: int) -> None:
        worker = get_current_worker()
        run = CheckRun(self.spec, self.workdir, serial)
        self._check_run = run
        run.start()
        try:
            for ev in run.events(should_stop=lambda: worker.is_cancelled):
                self.post_message(ChecksEvent(serial, ev))
            code = run.wait(timeout=5)
        finally:
            if worker.is_cancelled:
                run.stop(grace_s=1.0)
        self.post_message(ChecksEnded(serial, code, run.stderr_tail()))

    def on_checks_event(self, msg: ChecksEvent) -> None:
        st = self.checks
        if msg.serial != st.serial:
            return  # an old run's late message
        ev = msg.event
        kind = ev.get("event")
        if kind == "collected":
            st.metas = [m for m in ev.get("checks", []) if isinstance(m, dict) and "id" in m]
            self.broadcast(ChecksChanged)
        elif kind == "start" and "id" in ev:
            st.started[ev["id"]] = time.monotonic()
            cid = ev["id"]
            self.broadcast(lambda: ChecksChanged(cid))
        elif kind == "result" and isinstance(ev.get("result"), dict):
            try:
                res = result_from_event(ev["result"])
            except (KeyError, TypeError):
                return
            st.results[res.id] = res
            if not any(m["id"] == res.id for m in st.metas):
                st.metas.append({"id": res.id, "title": res.title, "category": res.category,
                                 "severity": res.severity})
            self.broadcast(lambda: ChecksChanged(res.id))

    def on_checks_ended(self, msg: ChecksEnded) -> None:
        st = self.checks
        if msg.serial != st.serial:
            return
        st.running = False
        st.returncode = msg.returncode
        if not st.results:
            why = msg.stderr.strip() or f"fmllm-check exited with code {msg.returncode} and reported nothing"
            st.error = why
        self._check_run = None
        self.broadcast(ChecksChanged)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """One place for worker crashes: say what failed instead of dying with a traceback."""
        if event.state != WorkerState.ERROR:
            return
        err = event.worker.error
        if event.worker.group == "checks":
            self.checks.running = False
            self.checks.error = f"could not run fmllm-check: {type(err).__name__}: {err}"
            self.broadcast(ChecksChanged)
        else:
            self.notify(f"{event.worker.description or event.worker.name} failed: "
                        f"{type(err).__name__}: {err}", severity="error", timeout=10)

    # ---- config edits (always through the fixers) -----------------------------------------

    @work(group="config-edit", exclusive=True, exit_on_error=False)
    async def apply_changes(self, changes: list[Change], label: str, *, rerun: bool = True,
                            then: Any = None, note: str = "") -> bool:
        """Preview ``changes`` as a diff, confirm, write them (with a backup), re-run the checks.
        ``note``: said above the diff (the shell commands a config change cannot do)."""
        from fmllm_tui.redact import mask_text
        from fmllm_tui.tui import configops
        from fmllm_tui.tui.screens.dialogs import ConfirmScreen, MessageScreen

        path = self.spec.config
        try:
            pv = await asyncio.to_thread(configops.preview, path, changes)
        except configops.ConfigOpError as e:
            self.push_screen(MessageScreen(f"Cannot apply {label}", str(e)))
            return False
        if not pv.diff.strip():
            self.notify(f"{label}: the config already says this; nothing to change")
            return False
        ok = await self.push_screen_wait(
            ConfirmScreen(f"Apply {label} to {path}?", mask_text(pv.diff), yes="Apply", diff=True,
                          note=mask_text(note)))
        if not ok:
            self.notify("Nothing was written.")
            return False
        try:
            res = await asyncio.to_thread(configops.apply, path, changes, pv.expected_raw)
        except configops.ConfigOpError as e:
            self.push_screen(MessageScreen(f"Could not apply {label}", str(e)))
            return False
        backup = getattr(res, "backup_path", None)
        self.notify(f"{label}: {path} updated" + (f"; backup {backup} (u undoes)" if backup else ""),
                    timeout=6)
        self.broadcast(ConfigWritten)
        if rerun:
            self.rerun_checks()
        if then is not None:
            then()
        return True

    @work(group="config-edit", exclusive=True, exit_on_error=False)
    async def undo_last_fix(self) -> None:
        """Restore the config from its backup (after a confirm) and re-run the checks."""
        from fmllm_tui.tui import configops
        from fmllm_tui.tui.screens.dialogs import ConfirmScreen, MessageScreen

        path = self.spec.config
        ok = await self.push_screen_wait(ConfirmScreen(
            "Undo the last fix?", f"{path} goes back to its last backup (the state before the last change fmllm wrote).",
            yes="Undo"))
        if not ok:
            return
        try:
            used = await asyncio.to_thread(configops.undo, path)
        except configops.ConfigOpError as e:
            self.push_screen(MessageScreen("Cannot undo", str(e)))
            return
        self.notify(f"restored {path} from {used}")
        self.broadcast(ConfigWritten)
        self.rerun_checks()


def run_app(args: argparse.Namespace) -> int:
    """Entry point used by ``fmllm-tui``: validate the flags, run the app, return its exit code."""
    if getattr(args, "gpu", None) and getattr(args, "vram", None):
        print("fmllm-tui: error: --gpu and --vram: give one (a GPU name, or a memory size)", file=sys.stderr)
        return int(ExitCode.USAGE)
    if getattr(args, "gpu", None):
        from fmllm_tui import gpudb

        try:
            gpudb.lookup(args.gpu)
        except LookupError as e:
            print(f"fmllm-tui: error: --gpu: {e}", file=sys.stderr)
            return int(ExitCode.USAGE)
    if getattr(args, "vram", None):
        from fmllm_tui.config import parse_size

        try:
            parse_size(args.vram)
        except ValueError as e:
            print(f"fmllm-tui: error: --vram: {e}", file=sys.stderr)
            return int(ExitCode.USAGE)
    # config.default_config_path's rule, without importing pydantic before the first frame
    config = args.config or os.environ.get("FMLLM_CONFIG") or "config.yaml"
    app = FmllmApp(config, gpu=args.gpu, vram=args.vram, offline=bool(args.offline))
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        code = app.run()
    except KeyboardInterrupt:
        code = int(ExitCode.INTERRUPTED)
    finally:
        app.shutdown()
    return int(code if code is not None else (app.return_code or 0))
