"""The Run screen's numbers and log tail, and the TUI's words (issue 23): tokens/s at an epoch's
end, the step after a stop, library noise folded (fmllm_tui.lognoise, shared with
``fmllm-run follow``), the details' units and words, the check list's summary line."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from tui_support import NOISY_LOG, stopped_run

from fmllm_tui import lognoise
from fmllm_tui.findings import CheckResult, Fix
from fmllm_tui.lognoise import Folded, classify_lines, fold
from fmllm_tui.tui import detailtext


def test_noise_is_folded_and_what_matters_is_kept() -> None:
    lines = list(classify_lines(NOISY_LOG.splitlines()))
    kinds = {ln.text.split(":")[0][-40:]: ln.kind for ln in lines}
    by_start = [(ln.kind, ln.text[:30]) for ln in lines]
    assert by_start[0] == ("fmllm", "[fmllm] starting: python -m fm")
    # bitsandbytes' kernels-hub message names a missing module, yet nothing failed: noise
    assert lines[1].kind == "noise"
    # deprecation and library UserWarnings, with the source line Python prints after each: noise
    assert [ln.kind for ln in lines[2:7]] == ["noise"] * 5
    # a warning a diagnosis pattern knows (checkpointing with no input needing grad) matters
    assert lines[7].kind == "warning"
    assert lines[8].kind == "plain"  # the loss dict
    assert lines[9].kind == "error" and lines[11].kind == "error"
    folded = fold(lines)
    assert isinstance(folded[1], Folded) and folded[1].count == 6 and "gemm_4bit" in folded[1].first
    assert sum(isinstance(f, Folded) for f in folded) == 1
    assert kinds  # every line got a kind


def test_log_tail_reads_only_complete_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("[fmllm] one\npartial")
    tail = lognoise.LogTail(str(log))
    assert [ln.text for ln in tail.read_new()] == ["[fmllm] one"]
    with log.open("a") as f:
        f.write(" line\n/x.py:1: FutureWarning: old is deprecated\n  warnings.warn(\n")
    got = tail.read_new()
    assert [(ln.text, ln.kind) for ln in got] == [
        ("partial line", "plain"), ("/x.py:1: FutureWarning: old is deprecated", "noise"),
        ("  warnings.warn(", "noise")]
    assert tail.read_new() == []


def test_follow_prints_the_lines_that_matter_not_the_noise(tmp_path: Path) -> None:
    """``fmllm-run follow`` prints the log lines that matter between events (same rule)."""
    from fmllm_tui import cli_run

    log = tmp_path / "train.log"
    log.write_text(NOISY_LOG)
    out = io.StringIO()
    tail = lognoise.LogTail(str(log))
    cli_run._print_log_lines(tail, out)
    text = out.getvalue()
    assert "CUDA out of memory" in text and "None of the inputs have requires_grad" in text
    assert "gemm_4bit" not in text and "FutureWarning" not in text and "Loading checkpoint shards" not in text
    assert "[log] [fmllm] starting" in text


# ---- the Run screen ----------------------------------------------------------------------------

def test_snapshot_step_and_speed_after_a_stop(tmp_path: Path) -> None:
    from fmllm_tui.tui import runlink

    snap = runlink.RunFollower(stopped_run(tmp_path)).poll()
    assert snap.state == "stopped"
    assert snap.step == 2  # as "stopped at step 2" says, not the last logged row's 1
    assert snap.tokens_per_s == 812.0  # the epoch-end row's 0 is not a speed
    assert any(ln.kind == "noise" for ln in snap.log_tail)


def test_run_screen_agrees_with_its_stop_and_folds_noise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("textual")
    from tui_support import fake_gpu, quiet_env, screen_text, wait_until, write_config

    from fmllm_tui.tui.app import FmllmApp
    from fmllm_tui.tui.screens.run import RunScreen

    quiet_env(monkeypatch, tmp_path, fake_gpu(tmp_path))
    cfg = write_config(tmp_path / "proj")
    run = stopped_run(tmp_path)

    async def go() -> None:
        app = FmllmApp(cfg, start_checks=False)
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.press("4")
            await wait_until(pilot, lambda: "No run of this config yet" in screen_text(app), 20, "the Run screen")
            screen = app.screen
            assert isinstance(screen, RunScreen)
            screen.follow(run)
            await wait_until(pilot, lambda: "stopped at step 2" in screen_text(app), 20, "the stopped run")
            stats = str(screen.query_one("#run-stats").render())
            assert "step 2/5" in stats and "812 tok/s" in stats and "0 tok/s" not in stats
            log = str(screen.query_one("#run-log").render())
            # six library lines folded into one dim line that names the first of them
            assert [ln for ln in log.splitlines() if "gemm_4bit" in ln or "FutureWarning" in ln] == [
                "… 6 library lines (n shows them): " + NOISY_LOG.splitlines()[1]]
            assert "CUDA out of memory" in log
            await pilot.press("n")
            await wait_until(pilot, lambda: "Loading checkpoint shards" in str(screen.query_one("#run-log").render()), 5,
                             "the library lines shown")

    asyncio.run(go())


# ---- words ------------------------------------------------------------------------------------

def test_detail_text_is_in_human_units_and_words() -> None:
    values = {"predicted_peak_bytes": 5911864229, "predicted_range_bytes": [5170479635, 6653248823],
              "budget_bytes": 25436943810, "margin_bytes": 1271847190, "gpu": "GeForce RTX 3090",
              "budget_source": "--gpu", "mode": "single", "n_gpus": 1, "planned_tokens_per_example": 54,
              "recipe": "fmllm", "loss": "liger", "architecture_source": "catalogue",
              "breakdown": {"weights_4bit": 3262644224, "cuda_context": 805306368, "optimizer_paged": 0},
              "eval_data_file": None, "use_reentrant": None}
    plan = "\n".join(detailtext.plan_lines(values, {"data.lengths": {"max_seq_length": 1024}}))
    assert "GeForce RTX 3090: 23.7 GiB usable (from --gpu)" in plan
    assert "single, 1 GPU" in plan
    assert "54 tokens: the data's longest example (max_seq_length 1024)" in plan
    pred = "\n".join(detailtext.prediction_lines(values))
    assert "5.5 GiB (range 4.8–6.2 GiB)" in pred and "18.2 GiB spare of 23.7 GiB" in pred
    assert "5911864229" not in pred and "optimizer paged" not in pred  # no raw counts, no zero parts
    other = "\n".join(detailtext.other_lines(values))
    assert "None" not in other and "eval data file: not set" in other
    env = detailtext.other_lines({"PYTORCH_CUDA_ALLOC_CONF": None, "free_bytes": 3 * 2**30})
    assert env == ["PYTORCH_CUDA_ALLOC_CONF: not set", "free: 3.0 GiB"]  # a variable keeps its spelling
    fix = Fix("memory.fit", changes=())
    assert detailtext.fix_lines(fix, values) == []
    assert detailtext.plural(1, "GPU") == "1 GPU" and detailtext.plural(2, "GPU") == "2 GPUs"


def _res(cid: str, status: str) -> CheckResult:
    return CheckResult(id=cid, title=cid, category="config", severity="error", status=status, finding="x")


def test_summary_line_gives_the_verdict_and_plural_forms() -> None:
    pytest.importorskip("textual")
    from fmllm_tui.tui.screens.checks import summary_line

    one = {"a": _res("a", "warn"), "b": _res("b", "pass")}
    assert summary_line(one, 2, False, None) == "Ready, with 1 warning · 1 passed"
    two = {**one, "c": _res("c", "fail"), "d": _res("d", "fail"), "e": _res("e", "skip")}
    assert summary_line(two, 5, False, None) == "Not ready: 2 checks failed · 1 warning · 1 passed · 1 skipped"
    assert summary_line({}, 5, True, None) == "Checking… 0/5"
    assert summary_line({"a": _res("a", "crash")}, 1, False, None) == "Not sure: 1 check crashed"


def test_ctrl_c_says_q_as_the_readme_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("textual")
    from tui_support import fake_gpu, quiet_env, wait_until, write_config

    from fmllm_tui.tui.app import FmllmApp

    quiet_env(monkeypatch, tmp_path, fake_gpu(tmp_path))
    cfg = write_config(tmp_path / "proj")

    async def go() -> None:
        app = FmllmApp(cfg, start_checks=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("ctrl+c")
            await pilot.pause(0.2)
            said = [n.message for n in app._notifications]
            assert said == ["Press q to quit (a training run keeps going)."], said
            readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
            assert "Ctrl-C inside the app only says to press `q`" in readme
            await pilot.press("question_mark")
            await wait_until(pilot, lambda: type(app.screen).__name__ == "HelpScreen", 10, "the help")
            await pilot.press("ctrl+c")
            await pilot.pause(0.2)
            said = [n.message for n in app._notifications]
            assert said[-1] == "Press esc to close this dialog, then q to quit.", said

    asyncio.run(go())


def test_ranges_say_their_unit_once() -> None:
    pytest.importorskip("textual")
    from fmllm_tui.tui.widgets.status import human_range

    GiB = 2**30
    assert human_range(4.9 * GiB, 6.2 * GiB) == "4.9–6.2 GiB"
    assert human_range(900 * 2**20, 1.2 * GiB) == "900 MiB–1.2 GiB"
    assert detailtext.value_text("predicted_range_bytes", [int(4.9 * GiB), int(6.2 * GiB)]) == "4.9–6.2 GiB"


# ---- dialogs ----------------------------------------------------------------------------------

def test_confirm_dialog_scrolls_its_diff_with_keys_and_wheel_buttons_stay(tmp_path: Path) -> None:
    """A 60-line diff under a three-line title at 80x24: Apply/Cancel stay on screen, PgDn, End,
    Down and Home scroll the diff while the Apply button has focus, the wheel scrolls it, Tab
    reaches it, and the footer names the dialog's keys (not the screen's underneath)."""
    pytest.importorskip("textual")
    from textual import events
    from textual.app import App
    from tui_support import screen_text

    from fmllm_tui.tui.screens.dialogs import ConfirmScreen, DialogBody

    diff = "--- a/c\n+++ b/c\n@@ -1,60 +1,60 @@\n" + "".join(f"-line {i} {'x' * 90}\n" for i in range(60)) + "+last\n"
    title = "Apply 3 safe fixes (memory.fit, attn.sdpa, dtype.compute) to " + "/very/long" * 8 + "/config.yaml?"

    class Host(App[None]):
        CSS_PATH = str(Path(__file__).resolve().parents[1] / "fmllm_tui" / "tui" / "app.tcss")

        def on_mount(self) -> None:
            self.push_screen(ConfirmScreen(title, diff, yes="Apply", diff=True, note="Not a config change: x"))

    async def go() -> None:
        app = Host()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.3)
            body = app.screen.query_one(DialogBody)
            text = screen_text(app)
            assert "Apply (y)" in text and "Cancel (n)" in text
            assert text.splitlines()[-1].split()[:4] == ["y", "Apply", "n", "Cancel"]
            assert app.focused is not None and app.focused.id == "yes"
            assert body.scroll_y == 0
            await pilot.press("pagedown")
            await pilot.pause(0.1)
            assert body.scroll_y > 0
            await pilot.press("end")
            await pilot.pause(0.1)
            text = screen_text(app)
            assert "+last" in text and "-line 59" in text and "Apply (y)" in text  # all of it reachable
            await pilot.press("home")
            await pilot.pause(0.1)
            assert body.scroll_y == 0
            await pilot.press("down")
            await pilot.pause(0.1)
            assert body.scroll_y == 1
            before = body.scroll_y
            body.post_message(events.MouseScrollDown(body, 2, 2, 0, 1, 0, False, False, False))  # the wheel
            await pilot.pause(0.2)
            assert body.scroll_y > before
            await pilot.press("tab", "tab")  # Apply -> Cancel -> the diff
            assert app.focused is body

    asyncio.run(go())


def test_reattach_to_a_long_log_keeps_the_classified_tail(tmp_path: Path) -> None:
    from fmllm_tui.tui import runlink

    run = stopped_run(tmp_path)
    bars = "".join(f" {i % 100}%|███       | {i}/5000 [00:01<00:09,  9.1it/s]\n" for i in range(5000))
    (run / "train.log").write_text(bars + "/x.py:9: FutureWarning: y is deprecated\n  warnings.warn(\n"
                                   "RuntimeError: CUDA error: an illegal memory access was encountered\n")
    tail = runlink.RunFollower(run).poll().log_tail
    assert len(tail) == runlink.LOG_TAIL_LINES
    assert [ln.kind for ln in tail[-3:]] == ["noise", "noise", "error"]
    assert all(ln.kind == "noise" for ln in tail[:-1])
