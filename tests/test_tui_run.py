"""fmllm-tui's Run screen with the real runner on a tiny CPU model: start the minimal test,
metrics and the loss curve appear, the TUI quits and a new one reattaches, stop, kill; a failed
run shows its diagnosis and the fix key."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("textual")

from textual_plotext import PlotextPlot  # noqa: E402
from tui_support import quiet_env, screen_text, wait_until, write_config  # noqa: E402

from fmllm_tui import runner  # noqa: E402
from fmllm_tui.tui import runlink  # noqa: E402
from fmllm_tui.tui.app import FmllmApp  # noqa: E402
from fmllm_tui.tui.screens.dialogs import ConfirmScreen, MessageScreen  # noqa: E402
from fmllm_tui.tui.screens.run import RunScreen  # noqa: E402

pytestmark = pytest.mark.slow


def snap_of(screen: RunScreen) -> runlink.RunSnapshot:
    assert screen.snap is not None
    return screen.snap


def run_screen(app: FmllmApp) -> RunScreen:
    screen = app.get_screen_stack("run")[0]
    assert isinstance(screen, RunScreen)
    return screen


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # No GPU: the launch plans its run for what NVML shows, and this torch is a CPU build, so a
    # fake GPU would plan a CUDA run that cannot start here. The GPU panel with a fake GPU is
    # covered by test_tui_logs_and_text and the Run screen's snapshots.
    quiet_env(monkeypatch, tmp_path, None)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_minimal_test_follow_quit_reattach_stop_kill(env: Path, tiny_model_dir: Path) -> None:
    cfg = write_config(env / "proj", model=str(tiny_model_dir), use_4bit=False, seq=128, steps=2000,
                       save_steps=5000)
    state: dict[str, Path] = {}

    async def first() -> None:
        app = FmllmApp(cfg, start_checks=False)
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("4")
            await wait_until(pilot, lambda: "No run of this config yet" in screen_text(app), 20, "the idle Run screen")
            await pilot.press("t")
            screen = run_screen(app)
            await wait_until(pilot, lambda: screen.snap is not None and len(snap_of(screen).metrics) >= 3, 150,
                             "three metrics rows")
            snap = snap_of(screen)
            state["run"] = snap.run_dir
            assert snap.kind == "test" and snap.running
            # the loss curve holds the logged steps; progress, loss, tokens/s and the log tail show
            await wait_until(pilot, lambda: screen._plotted >= 3, 5, "the loss curve")
            plot = str(screen.query_one("#run-loss", PlotextPlot).render())
            assert "loss" in plot and "no steps yet" not in plot
            # progress, loss, tokens/s, the log tail and the GPU panel (NVML in its own worker;
            # no GPU here) all show
            wanted = [f"/{snap.max_steps}", "loss ", "tok/s", "GPU: none"]
            # the log tail: fmllm's own lines first, the Trainer's step logs once they scroll them away
            log_tail = ("[fmllm]", "{'loss'")

            def shown() -> bool:
                text = screen_text(app)
                return all(w in text for w in wanted) and any(t in text for t in log_tail)

            await wait_until(pilot, shown, 15, f"all of {wanted} and a log line")
            await pilot.press("q")
        # quitting the TUI leaves the run going (its own session)
        assert runner.status(state["run"])["state"] == "running"

    async def second() -> None:
        app = FmllmApp(cfg, start_checks=False)
        async with app.run_test(size=(100, 32)) as pilot:
            # reattach: the Run screen comes up by itself with the live run
            await wait_until(pilot, lambda: app.current_mode == "run", 20, "the reattach")
            screen = run_screen(app)
            await wait_until(pilot, lambda: screen.snap is not None and snap_of(screen).running, 20, "the live run")
            assert snap_of(screen).run_dir == state["run"]
            assert len(snap_of(screen).metrics) >= 3  # the history is read back, not only new rows
            await pilot.press("s")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the stop confirm")
            await pilot.press("y")
            await wait_until(pilot, lambda: snap_of(screen).state == "stopped", 120, "the graceful stop")
            assert json.loads((state["run"] / "exit.json").read_text())["status"] == "stopped"
            # the screen repaints after the state flips: wait for the text, do not race the refresh
            await wait_until(pilot, lambda: "t runs the minimal test again" in screen_text(app), 10, "the stop message")
            # the step shown is the one the stop names (the stopping step is not always logged)
            stopped_at = json.loads((state["run"] / "exit.json").read_text())["message"].split("stopped at step ")[1]
            assert f"step {int(stopped_at.split()[0].rstrip(';'))}/" in screen_text(app)

            # a new minimal test, killed at once
            await pilot.press("t")
            await wait_until(pilot, lambda: snap_of(screen).run_dir != state["run"] and snap_of(screen).running, 30,
                             "the second run")
            await pilot.press("k")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the kill confirm")
            await pilot.press("y")
            await wait_until(pilot, lambda: snap_of(screen).state == "killed", 30, "the kill")
            await pilot.press("q")

    asyncio.run(first())
    asyncio.run(second())
    # shown runs are not reattached to again
    assert not runlink.worth_showing(state["run"])


def test_failed_run_shows_its_diagnosis_and_fix_key(env: Path, tiny_model_dir: Path) -> None:
    broken = env / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    for f in broken.glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    cfg = write_config(env / "proj", model=str(broken), use_4bit=False, seq=128, steps=3)

    async def go() -> None:
        app = FmllmApp(cfg, start_checks=False)
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("4", "t")
            screen = run_screen(app)
            await wait_until(pilot, lambda: screen.snap is not None and snap_of(screen).exit is not None, 150,
                             "the failure")
            assert snap_of(screen).failed, snap_of(screen).state
            diag = str(screen.query_one("#run-diagnosis").render())
            exit_rec = snap_of(screen).exit
            assert exit_rec is not None and exit_rec.get("message") and exit_rec["message"][:40] in diag
            assert "f applies the fix" in diag
            # the failure re-runs the checks with this run's log (logs.scan reads it): a fix is theirs
            assert app.spec.logs == (str(snap_of(screen).run_dir / "train.log"),)
            await wait_until(pilot, lambda: not app.checks.running and "logs.scan" in app.checks.results, 90,
                             "the checks on the log")
            assert str(snap_of(screen).run_dir) in str(app.checks.results["logs.scan"].values.get("files"))
            await pilot.press("f")
            await wait_until(pilot, lambda: isinstance(app.screen, (ConfirmScreen, MessageScreen)), 10,
                             "the fix (or why there is none)")

    asyncio.run(go())


def test_data_problem_stops_the_launch_with_a_message(env: Path, tiny_model_dir: Path) -> None:
    cfg = write_config(env / "proj", model=str(tiny_model_dir), use_4bit=False)
    (env / "proj" / "data" / "sample_instructions.jsonl").write_text('{"instruction": "hi"}\nnot json\n')

    async def go() -> None:
        app = FmllmApp(cfg, start_checks=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("4", "t")
            await wait_until(pilot, lambda: isinstance(app.screen, MessageScreen), 20, "the refusal")
            body = str(app.screen.query_one("#dialog-text").render())
            assert "sample_instructions.jsonl" in body and "Traceback" not in body

    asyncio.run(go())


def test_pick_fix_prefers_the_log_check_then_the_named_fixer() -> None:
    from fmllm_tui.findings import Change, CheckResult, Fix, Status

    def res(cid: str, status: Status, fix_id: str | None, category: str = "config") -> CheckResult:
        fix = Fix(id=fix_id, changes=[Change(key="a.b", to=1)]) if fix_id else None
        return CheckResult(id=cid, title=cid, category=category, severity="error", status=status,
                           finding="x", fix=fix)

    exit_rec = {"diagnosis": [{"fix": {"id": "attn.sdpa", "changes": []}}]}
    plain = {"gpu.flash_attn": res("gpu.flash_attn", "fail", "attn.sdpa"), "x": res("x", "fail", "other")}
    assert runlink.pick_fix(plain, exit_rec).id == "gpu.flash_attn"
    with_log = {**plain, "logs.scan": res("logs.scan", "fail", "memory.fit", category="logs")}
    assert runlink.pick_fix(with_log, exit_rec).id == "logs.scan"
    assert runlink.pick_fix({"p": res("p", "pass", "attn.sdpa")}, exit_rec) is None
    assert runlink.diagnosis_lines({"message": "boom", "diagnosis": [
        {"file": "train.log", "line": 7, "cause": "CUDA out of memory", "fix": {"summary": "halve the batch"}}]}) == [
        "boom", "train.log:7: CUDA out of memory", "  fix: halve the batch"]
