"""The Run screen: launch the minimal test or the full fine-tune, follow it (progress, loss curve,
GPU memory and utilisation, tokens/s, log tail), stop or kill it, and on failure show the
diagnosis with its one-key fix and relaunch. Runs live in their own session: this screen only
watches them, so quitting the TUI or losing SSH never ends one."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, ProgressBar, Static
from textual.worker import get_current_worker
from textual_plotext import PlotextPlot

from fmllm_tui.tui import runlink
from fmllm_tui.tui.messages import ChecksChanged, GpuSample, RunUpdate
from fmllm_tui.tui.screens.base import FmllmScreen
from fmllm_tui.tui.widgets.history import PercentHistory
from fmllm_tui.tui.widgets.navbar import NavBar
from fmllm_tui.tui.widgets.status import human_bytes
from fmllm_tui.units import format_duration

GPU_POLL_S = 1.0
RUN_POLL_S = 0.25
KIND_LABEL = {"test": "Minimal test", "train": "Full fine-tune"}
LOG_STYLE = {"error": "bold red", "warning": "yellow", "fmllm": "bold", "noise": "dim", "plain": ""}
STATE_STYLE = {"running": "bold cyan", "ok": "bold green", "stopped": "bold yellow", "failed": "bold red",
               "oom": "bold red", "killed": "bold magenta", "lost": "bold red"}


class RunScreen(FmllmScreen):
    """Launch and follow a run of this config."""

    BINDINGS = [
        Binding("t", "launch('test')", "Test"),
        Binding("l", "launch('train')", "Full run"),
        Binding("s", "stop", "Stop"),
        Binding("k", "kill", "Kill"),
        Binding("f", "fix", "Fix + relaunch"),
        Binding("c", "resume", "Resume", show=False),
        Binding("n", "toggle_noise", "Show or fold library lines", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.snap: runlink.RunSnapshot | None = None
        self.gpu_mem: deque[float] = deque(maxlen=120)
        self.gpu_util: deque[float] = deque(maxlen=120)
        self.gpu_line = "GPU: waiting for NVML…"
        self._diagnosed: set[str] = set()
        self._plotted = -1
        self.show_noise = False  # library noise in the log tail: folded into one dim line until n

    def compose(self) -> ComposeResult:
        yield NavBar("run")
        yield Static("Looking for a run of this config…", id="run-state", markup=False)
        with Horizontal(id="run-progress"):
            bar = ProgressBar(total=None, show_eta=False, id="run-bar")
            bar.display = False
            yield bar
            yield Static(id="run-stats", markup=False)
        with Horizontal(id="run-charts"):
            yield PlotextPlot(id="run-loss")
            with Vertical(id="run-gpu"):
                yield Static(id="run-gpu-text", markup=False)
                yield PercentHistory("memory used", id="run-gpu-mem", classes="gpu-spark")
                yield PercentHistory("utilisation", id="run-gpu-util", classes="gpu-spark")
                yield Static(id="run-torch-mem", markup=False)
        yield Static(id="run-diagnosis", markup=False)
        yield Static(id="run-log", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.fapp.register_view(self)
        plt = self.query_one("#run-loss", PlotextPlot).plt
        plt.title("loss")
        self._draw_gpu()
        self._poll_gpu()
        self.run_worker(self._find_run(), group="run-find", exclusive=True, exit_on_error=False)

    async def _find_run(self) -> None:
        found = await asyncio.to_thread(runlink.find_latest, self.fapp.spec.config)
        if found is None:
            self._show_idle()
            return
        self.follow(found)

    def _show_idle(self) -> None:
        self.query_one("#run-state", Static).update(
            "No run of this config yet. t starts the minimal test (a few steps, then sample generations); "
            "l starts the full fine-tune.")

    # ---- background workers ------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="run-follow", exit_on_error=False, description="following the run")
    def follow(self, run_dir: Path) -> None:
        """Tail the run folder until the run has an exit record; post snapshots (newest wins)."""
        worker = get_current_worker()
        self.app.call_from_thread(self._reset_view)
        follower = runlink.RunFollower(run_dir)
        while not worker.is_cancelled:
            snap = follower.poll()
            self.post_message(RunUpdate(snap))
            if snap.exit is not None:
                return
            time.sleep(RUN_POLL_S)

    @work(thread=True, exclusive=True, group="run-gpu", exit_on_error=False, description="reading NVML")
    def _poll_gpu(self) -> None:
        """NVML about once a second, off the UI thread; stops when there is no GPU to read."""
        from fmllm_tui import gpu

        worker = get_current_worker()
        while not worker.is_cancelled:
            inv = gpu.probe()
            if not inv.ok or not inv.devices:
                self.post_message(GpuSample({"ok": False, "error": inv.error or "NVML sees no GPU"}))
                return
            d = inv.devices[0]
            self.post_message(GpuSample({"ok": True, "name": d.name, "used": d.used_bytes, "total": d.total_bytes,
                                         "util": d.utilization_pct, "index": d.index,
                                         "others": [{"index": o.index, "used": o.used_bytes, "total": o.total_bytes,
                                                     "util": o.utilization_pct} for o in inv.devices[1:]]}))
            if self.fapp.deterministic:  # snapshots: one sample, so the history is always the same
                return
            end = time.monotonic() + GPU_POLL_S
            while time.monotonic() < end and not worker.is_cancelled:
                time.sleep(0.1)

    # ---- drawing -----------------------------------------------------------------------------

    def _reset_view(self) -> None:
        """Forget the previous run's numbers before following another one."""
        self._plotted = -1
        self.query_one("#run-torch-mem", Static).update("")
        self.query_one("#run-stats", Static).update("")
        self.query_one("#run-diagnosis", Static).display = False
        self.query_one("#run-bar", ProgressBar).display = False

    @on(GpuSample)
    def _gpu_sample(self, msg: GpuSample) -> None:
        s = msg.sample
        if not s.get("ok"):
            self.gpu_line = f"GPU: none ({s.get('error')})"
            for w in self.query(".gpu-spark"):
                w.display = False
        else:
            self.gpu_mem.append(s["used"] / max(s["total"], 1) * 100)
            self.gpu_util.append(float(s.get("util") or 0))
            util = f"{s['util']}%" if s.get("util") is not None else "?"
            self.gpu_line = (f"GPU {s['index']} {s['name']}\n{human_bytes(s['used'])} of "
                             f"{human_bytes(s['total'])} · util {util}")
            for o in s.get("others") or []:  # multi-GPU runs: one line per further GPU
                ou = f"{o['util']}%" if o.get("util") is not None else "?"
                self.gpu_line += f"\nGPU {o['index']}: {human_bytes(o['used'])} of {human_bytes(o['total'])} · util {ou}"
        self._draw_gpu()

    def _draw_gpu(self) -> None:
        self.query_one("#run-gpu-text", Static).update(self.gpu_line)
        self.query_one("#run-gpu-mem", PercentHistory).set_values(self.gpu_mem)
        self.query_one("#run-gpu-util", PercentHistory).set_values(self.gpu_util)

    @on(RunUpdate)
    def _run_update(self, msg: RunUpdate) -> None:
        snap: runlink.RunSnapshot = msg.snapshot
        self.snap = snap
        self._draw(snap)
        if snap.exit is not None:
            runlink.mark_seen(snap.run_dir)
            if snap.failed and str(snap.run_dir) not in self._diagnosed:
                # the checks scan this run's log too (logs.scan), so the fix is the checks' exact one
                self._diagnosed.add(str(snap.run_dir))
                self.fapp.rerun_checks(logs=(str(snap.run_dir / "train.log"),))
        self.refresh_bindings()

    def _draw(self, snap: runlink.RunSnapshot) -> None:
        self._draw_head(snap)
        self._draw_progress(snap)
        self._draw_charts(snap)
        self._draw_diagnosis(snap)
        self._draw_log(snap)

    def _draw_head(self, snap: runlink.RunSnapshot) -> None:
        """What ran, its state and phase, its pid while alive, its folder."""
        head = Text()
        head.append(KIND_LABEL.get(snap.kind or "", snap.kind or "run"), style="bold")
        head.append(" · ")
        head.append(snap.state, style=STATE_STYLE.get(snap.state, ""))
        if snap.phase and snap.running:
            head.append(f" ({snap.phase})")
        if snap.pid and snap.running:
            head.append(f" · pid {snap.pid}")
        head.append(f" · {snap.run_dir}", style="dim")
        self.query_one("#run-state", Static).update(head)

    def _draw_progress(self, snap: runlink.RunSnapshot) -> None:
        """The step bar and the step, loss, speed and time line (clock-derived parts hidden when
        deterministic)."""
        det = self.fapp.deterministic
        last = snap.last or {}
        bar = self.query_one("#run-bar", ProgressBar)
        bar.display = bool(snap.max_steps)  # no bouncing "indeterminate" bar: it says nothing here
        step = snap.step  # after a stop: the step it stopped at, as the exit message says
        if snap.max_steps:
            bar.update(total=snap.max_steps, progress=int(step or 0))
        stats = []
        if step is not None:
            stats.append(f"step {step}" + (f"/{snap.max_steps}" if snap.max_steps else ""))
        if isinstance(last.get("loss"), (int, float)):
            stats.append(f"loss {last['loss']:.4f}")
        tps = snap.tokens_per_s  # an epoch's end logs a row with no tokens: not a speed of 0
        if tps is not None and not det:
            stats.append(f"{tps:,.0f} tok/s")
        if snap.running and isinstance(last.get("eta_s"), (int, float)) and not det:
            stats.append(f"ETA {format_duration(last['eta_s'])}")
        if snap.exit and isinstance(snap.exit.get("wall_s"), (int, float)) and not det:
            stats.append(f"took {format_duration(snap.exit['wall_s'])}")
        self.query_one("#run-stats", Static).update(" · ".join(stats))

    def _draw_charts(self, snap: runlink.RunSnapshot) -> None:
        """The loss plot (redrawn only when rows came) and torch's own memory numbers."""
        if len(snap.metrics) != self._plotted:
            self._plotted = len(snap.metrics)
            pts = [(r["step"], r["loss"]) for r in snap.metrics
                   if isinstance(r.get("step"), int) and isinstance(r.get("loss"), (int, float))]
            plot = self.query_one("#run-loss", PlotextPlot)
            plt = plot.plt
            plt.clear_data()
            plt.title("loss" if pts else "loss (no steps yet)")
            if pts:
                plt.plot([p[0] for p in pts], [p[1] for p in pts], marker="braille")
            plot.refresh()
        last = snap.last or {}
        if isinstance(last.get("peak_bytes"), (int, float)):
            alloc = last.get("allocated_bytes")
            self.query_one("#run-torch-mem", Static).update(
                f"torch: {human_bytes(alloc) if alloc is not None else '?'} allocated, "
                f"peak {human_bytes(last['peak_bytes'])}")

    def _draw_diagnosis(self, snap: runlink.RunSnapshot) -> None:
        """Why a run failed or stopped, with the keys that go on from there; hidden otherwise."""
        diag = self.query_one("#run-diagnosis", Static)
        if snap.failed or (snap.exit and snap.state == "stopped"):
            lines = runlink.diagnosis_lines(snap.exit)
            if snap.failed:
                lines.append("f applies the fix (when a check has one) and relaunches; t / l relaunch as is")
            else:
                lines.append("stopped after a checkpoint: c resumes it, t / l start again" if snap.kind == "train"
                             else "t runs the minimal test again, l starts the full run")  # a test has no checkpoint
            diag.update("\n".join(lines))
            diag.display = True
            diag.set_class(not snap.failed, "-calm")
        else:
            diag.display = False

    def _draw_log(self, snap: runlink.RunSnapshot) -> None:
        """The log's tail: errors red, warnings yellow, fmllm's lines bold; library noise folded
        into one dim line (n shows it, dimmed)."""
        from fmllm_tui.lognoise import Folded, fold

        log = self.query_one("#run-log", Static)
        height = max(log.size.height, 6)
        rows: list[Text] = []
        items = list(snap.log_tail) if self.show_noise else fold(snap.log_tail)
        for item in items[-height:]:
            if isinstance(item, Folded):
                what = "library line" if item.count == 1 else "library lines"
                rows.append(Text(f"… {item.count} {what} (n shows them): {item.first}", style="dim italic"))
            else:
                rows.append(Text(item.text, style=LOG_STYLE.get(item.kind, "")))
        log.update(Text("\n").join(rows))
        log.border_subtitle = "n hides library lines" if self.show_noise else ""

    def action_toggle_noise(self) -> None:
        self.show_noise = not self.show_noise
        if self.snap is not None:
            self._draw_log(self.snap)
        self.notify("library lines shown (dimmed)" if self.show_noise else "library lines folded")

    @on(ChecksChanged)
    def _checks_changed(self, msg: ChecksChanged) -> None:
        self.refresh_bindings()

    # ---- actions -----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        snap = self.snap
        running = bool(snap and snap.running)
        if action in ("stop", "kill"):
            return running
        if action == "launch":
            return not running
        if action == "fix":
            return bool(snap and snap.failed)
        if action == "resume":
            return bool(snap and not running and snap.exit is not None and snap.kind == "train"
                        and snap.state != "ok")
        return True

    def action_launch(self, kind: str) -> None:
        self.run_worker(self._launch(kind), group="run-launch", exclusive=True, exit_on_error=False)

    async def _launch(self, kind: str) -> None:
        from fmllm_tui import runner
        from fmllm_tui.tui import configops
        from fmllm_tui.tui.screens.dialogs import ConfirmScreen, MessageScreen

        if self.snap is not None and self.snap.running:
            self.notify("A run of this config is running: stop it (s) or kill it (k) first.", severity="warning")
            return
        try:
            loaded = await asyncio.to_thread(configops.load, self.fapp.spec.config)
        except configops.ConfigOpError as e:
            self.app.push_screen(MessageScreen("Cannot start: the config has problems", str(e)))
            return
        if kind == "train":
            v = loaded.view
            t = v.training
            epochs = f"{t.num_train_epochs:g} epoch{'' if t.num_train_epochs == 1 else 's'}"
            length = f"{t.max_steps} step{'' if t.max_steps == 1 else 's'}" if t.max_steps > 0 else epochs
            ok = await self.app.push_screen_wait(ConfirmScreen(
                "Start the full fine-tune?",
                f"{v.base_model_name}, {length}, micro-batch {t.per_device_train_batch_size} x "
                f"{t.gradient_accumulation_steps}, {t.max_seq_length} tokens.\nOutput: {v.output_dir}\n\n"
                "It runs in its own session: quitting fmllm-tui or losing SSH leaves it running, and "
                "fmllm-tui reattaches when started again.", yes="Start"))
            if not ok:
                return
        try:
            run_dir = await asyncio.to_thread(runner.start, loaded, kind)
        except runner.RunError as e:
            self.app.push_screen(MessageScreen(f"Cannot start the {KIND_LABEL[kind].lower()}", str(e)))
            return
        if self.fapp.spec.logs:
            self.fapp.rerun_checks(logs=())  # the failed run's log no longer describes this config
        self.notify(f"{KIND_LABEL[kind]} started in {run_dir}")
        self.follow(run_dir)

    def action_stop(self) -> None:
        self.run_worker(self._end("stop"), group="run-end", exclusive=True, exit_on_error=False)

    def action_kill(self) -> None:
        self.run_worker(self._end("kill"), group="run-end", exclusive=True, exit_on_error=False)

    async def _end(self, how: str) -> None:
        from fmllm_tui import runner
        from fmllm_tui.tui.screens.dialogs import ConfirmScreen

        snap = self.snap
        if snap is None or not snap.running:
            self.notify("No run is running.")
            return
        if how == "stop":
            q, body = "Stop the run?", ("It finishes the current step, saves a checkpoint and exits; "
                                        "a full run can be resumed (c).")
        else:
            q, body = "Kill the run now?", ("SIGKILL to the run's processes: nothing is saved after the last "
                                            "checkpoint. Use s to stop gracefully instead.")
        if not await self.app.push_screen_wait(ConfirmScreen(q, body, yes=how.capitalize())):
            return
        done = await asyncio.to_thread(runner.stop if how == "stop" else runner.kill, snap.run_dir)
        self.notify("stop requested: saving a checkpoint, then exiting" if how == "stop" and done else
                    "killed" if done else "the run was no longer running")

    def action_resume(self) -> None:
        self.run_worker(self._resume(), group="run-launch", exclusive=True, exit_on_error=False)

    async def _resume(self) -> None:
        from fmllm_tui import runner
        from fmllm_tui.tui.screens.dialogs import MessageScreen

        if self.snap is None:
            return
        try:
            run_dir = await asyncio.to_thread(runner.resume, self.snap.run_dir)
        except runner.RunError as e:
            self.app.push_screen(MessageScreen("Cannot resume", str(e)))
            return
        self.notify(f"resumed {run_dir}")
        self.follow(run_dir)

    def action_fix(self) -> None:
        from fmllm_tui.tui.screens.dialogs import MessageScreen

        snap = self.snap
        if snap is None or not snap.failed:
            return
        st = self.fapp.checks
        if st.running:
            self.notify("The checks are still reading the log; press f again in a moment.")
            return
        res = runlink.pick_fix(st.results, snap.exit)
        kind = snap.kind or "test"
        if res is None:
            lines = runlink.diagnosis_lines(snap.exit) or ["The run failed; its log is below."]
            self.app.push_screen(MessageScreen(
                "No config fix for this failure",
                "\n".join(lines) + "\n\nNo check has a config change for it; the lines above say what to "
                "do. Relaunch with t (test) or l (full run) when done."))
            return
        self.fapp.apply_changes(list(res.fix.changes), f"fix {res.fix.id} (from {res.id})",
                                then=lambda: self.action_launch(kind))
