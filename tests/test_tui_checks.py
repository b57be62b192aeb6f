"""fmllm-tui's Checks screen under Textual's Pilot: results stream in from a real child
``fmllm-check``; details, one fix, every safe fix, undo, re-run, filter, help, bad inputs."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("textual")

from textual.widgets import DataTable  # noqa: E402
from tui_support import (  # noqa: E402
    checks_done,
    fake_gpu,
    quiet_env,
    scaled,
    screen_text,
    wait_until,
    write_config,
)

from fmllm_tui.tui.app import FmllmApp  # noqa: E402
from fmllm_tui.tui.screens.checks import ChecksScreen  # noqa: E402
from fmllm_tui.tui.screens.detail import CheckDetailScreen  # noqa: E402
from fmllm_tui.tui.screens.dialogs import ConfirmScreen, HelpScreen  # noqa: E402


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    quiet_env(monkeypatch, tmp_path, fake_gpu(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(coro):  # one event loop per test, without needing pytest-asyncio
    return asyncio.run(coro)


def table_ids(app: FmllmApp) -> list[str]:
    screen = app.get_screen_stack("checks")[0]
    assert isinstance(screen, ChecksScreen)
    return list(screen._shown)


def filter_box_closed(app: FmllmApp) -> bool:
    """The filter box was submitted (hidden, the table has the keys again): keys pressed now reach
    the screen's bindings instead of being typed into the filter."""
    screen = app.get_screen_stack("checks")[0]
    return not screen.query_one("#checks-filter").display


def test_rows_stream_in_and_details_show_everything(env: Path) -> None:
    cfg = write_config(env / "proj")

    async def go() -> None:
        app = FmllmApp(cfg, vram="24GiB", deterministic=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await checks_done(pilot)
            st = app.checks
            assert st.error is None
            ids = [m["id"] for m in st.metas]
            assert {"config.valid", "gpu.flash_attn", "env.alloc_conf"} <= set(ids)
            # every collected check has a row and a result, what needs attention first
            # (fail, warn, crash, pass, skip; collection order within a status)
            rank = ["fail", "warn", "crash", "pass", "skip"]
            want = sorted(ids, key=lambda i: rank.index(st.results[i].status))
            assert table_ids(app) == want
            assert [st.results[i].status for i in want][0] in ("fail", "warn")  # this config has warnings
            assert set(st.results) == set(ids)
            table = app.screen.query_one("#checks-table", DataTable)
            assert table.row_count == len(ids)
            text = screen_text(app)
            # the summary line gives the verdict first, with the counts in words
            summary = text.splitlines()[1].strip()
            n_warn = sum(r.status == "warn" for r in st.results.values())
            assert summary.startswith(f"Ready, with {n_warn} warning{'' if n_warn == 1 else 's'}"), summary
            assert "config.valid" in text  # the id column
            assert "Config file is valid" in text
            # config.fit's details: predictions said to be predictions, in GiB, with the plan
            table.move_cursor(row=table_ids(app).index("config.fit"))
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, CheckDetailScreen) and bool(app.screen.query("#detail-body")),
                             5, "the details")
            body = str(app.screen.query_one("#detail-body").render())
            res = st.results["config.fit"]
            assert res.finding in body
            assert "Measured" not in body and "Predicted (memory model, not measured)" in body
            assert "Planned for" in body and "mode        single, 1 GPU" in body
            assert "length      " in body and "tokens" in body
            assert str(res.values["predicted_peak_bytes"]) not in body  # no raw byte counts
            assert f"{res.values['predicted_peak_bytes'] / 2**30:.1f} GiB" in body
            assert "None" not in body and "null" not in body
            await pilot.press("escape")
            await wait_until(pilot, lambda: isinstance(app.screen, ChecksScreen), 5, "the list again")

    run(go())


def test_one_fix_diff_confirm_file_changes_and_check_passes(env: Path) -> None:
    cfg = write_config(env / "proj", attn="eager")
    before = cfg.read_text()

    async def go() -> None:
        app = FmllmApp(cfg, vram="24GiB", deterministic=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await checks_done(pilot)
            assert app.checks.results["gpu.flash_attn"].status == "warn"
            first = app.checks.serial
            # filter down to the attention check, then f: the diff is shown before anything is written
            # press() does not wait for the filter's messages to be handled: wait for the table
            await pilot.press("slash", *"attn", "enter")
            await wait_until(pilot, lambda: table_ids(app) == ["gpu.flash_attn"] and filter_box_closed(app), 5,
                             "the filter to leave only gpu.flash_attn")
            await pilot.press("f")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and bool(app.screen.query("#dialog-text")),
                             10, "the diff preview")
            preview = str(app.screen.query_one("#dialog-text").render())
            assert "-  attn_implementation: eager" in preview and "+  attn_implementation: sdpa" in preview
            # n cancels: nothing written, no backup
            await pilot.press("n")
            await wait_until(pilot, lambda: isinstance(app.screen, ChecksScreen), 5, "the list")
            await pilot.pause(0.2)
            assert cfg.read_text() == before and not (cfg.parent / "config.yaml.bak").exists()
            await pilot.press("f")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10, "the diff preview")
            await pilot.press("y")
            await wait_until(pilot, lambda: app.checks.serial > first, 10, "the re-run")
            await checks_done(pilot)
            assert app.checks.results["gpu.flash_attn"].status == "pass"
            after = cfg.read_text()
            assert "attn_implementation: sdpa" in after
            assert "# sdpa | flash_attention_2 | eager" in after  # comments kept by the fixer
            assert (cfg.parent / "config.yaml.bak").read_text() == before

            # u undoes it (after a confirm), and the check warns again
            second = app.checks.serial
            await pilot.press("escape", "u")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10, "the undo confirm")
            await pilot.press("y")
            await wait_until(pilot, lambda: app.checks.serial > second, 10, "the re-run after undo")
            await checks_done(pilot)
            assert cfg.read_text() == before
            assert app.checks.results["gpu.flash_attn"].status == "warn"

    run(go())


def test_fix_all_safe_fixes_then_nothing_fails(env: Path) -> None:
    cfg = write_config(env / "proj", attn="eager", training_extra="    fp16: true\n    bf16: true\n")

    async def go() -> None:
        app = FmllmApp(cfg, vram="24GiB", deterministic=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await checks_done(pilot)
            st = app.checks
            assert st.results["config.precision"].status == "fail"
            assert st.results["gpu.flash_attn"].status == "warn"
            first = st.serial
            await pilot.press("a")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and bool(app.screen.query("#dialog-text")),
                             10, "the diff preview")
            preview = str(app.screen.query_one("#dialog-text").render())
            assert "attn_implementation: sdpa" in preview and "fp16: false" in preview
            await pilot.press("y")
            await wait_until(pilot, lambda: st.serial > first, 10, "the re-run")
            await checks_done(pilot)
            assert st.results["config.precision"].status == "pass"
            assert st.results["gpu.flash_attn"].status == "pass"
            assert not [r.id for r in st.results.values() if r.status in ("fail", "crash")]

    run(go())


def test_rerun_filter_and_help(env: Path) -> None:
    cfg = write_config(env / "proj")

    async def go() -> None:
        app = FmllmApp(cfg, vram="24GiB", deterministic=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await checks_done(pilot)
            n = len(app.checks.metas)
            first = app.checks.serial
            await pilot.press("r")
            await wait_until(pilot, lambda: app.checks.serial == first + 1, 5, "r to start a re-run")
            await checks_done(pilot)
            assert len(app.checks.results) == n
            # / filters by words or status; esc clears
            await pilot.press("slash", *"skip", "enter")

            def only_skips() -> bool:
                shown = table_ids(app)
                return bool(shown) and all(app.checks.results[c].status == "skip" for c in shown)

            await wait_until(pilot, lambda: only_skips() and filter_box_closed(app), 5, "the skip filter")
            await wait_until(pilot, lambda: "filter" in screen_text(app), 5, "the filter bar")
            await pilot.press("escape")
            await wait_until(pilot, lambda: len(table_ids(app)) == n, 5, "esc to clear the filter")
            # ? lists every key of every screen
            await pilot.press("question_mark")
            await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen) and bool(app.screen.query("#help-text")),
                             5, "the help")
            text = str(app.screen.query_one("#help-text").render())
            for key, what in (("f", "Fix"), ("a", "Fix all safe"), ("/", "Filter"), ("r", "Re-run"),
                              ("t", "Test"), ("l", "Full run"), ("s", "Stop"), ("k", "Kill"),
                              ("b", "Micro-batch"), ("c", "Checkpointing"), ("w", "4-bit weights"),
                              ("o", "optimizer"), ("?", "Help"), ("q", "Quit")):
                assert f"  {key}" in text and what in text, (key, what)
            await pilot.press("escape")

    run(go())


def test_running_check_shows_a_spinner_and_its_elapsed_time(env: Path) -> None:
    from fmllm_tui.tui.messages import ChecksEvent
    from fmllm_tui.tui.widgets.status import SPINNER

    cfg = write_config(env / "proj")

    async def go() -> None:
        app = FmllmApp(cfg, start_checks=False)  # the stream below is what fmllm-check --report writes
        async with app.run_test(size=(80, 24)) as pilot:
            st = app.checks
            st.serial, st.running = 7, True
            meta = {"id": "slow.one", "title": "A slow check", "category": "x", "severity": "error"}
            app.post_message(ChecksEvent(7, {"event": "collected", "checks": [meta]}))
            app.post_message(ChecksEvent(7, {"event": "start", "id": "slow.one", "ts": 0}))
            # the elapsed time counts up: a whole second or more (the exact number depends on load)
            await wait_until(pilot, lambda: re.search(r"running… [1-9]\d* s", screen_text(app)) is not None, 10,
                             "the elapsed time")
            table = app.screen.query_one("#checks-table", DataTable)
            first = str(table.get_cell("slow.one", "glyph"))
            assert first in SPINNER
            await wait_until(pilot, lambda: str(table.get_cell("slow.one", "glyph")) != first, 5,
                             "the spinner to move")
            second = str(table.get_cell("slow.one", "glyph"))
            assert second in SPINNER  # it spins
            result: dict[str, object] = {"id": "slow.one", "title": "A slow check", "category": "x", "severity": "error",
                      "status": "pass", "finding": "done in the end", "values": {}, "fix": None, "duration_s": 1.5}
            app.post_message(ChecksEvent(7, {"event": "result", "result": result}))
            await wait_until(pilot, lambda: "done in the end" in screen_text(app), 5, "the result")
            assert str(table.get_cell("slow.one", "glyph")) == "✓"
            # a late message from an earlier run is ignored
            app.post_message(ChecksEvent(6, {"event": "result", "result": {**result, "status": "fail"}}))
            await pilot.pause(0.2)
            assert st.results["slow.one"].status == "pass"

    run(go())


def test_unreadable_config_is_a_finding_not_a_crash(env: Path) -> None:
    cfg = env / "bad.yaml"
    cfg.write_text("fine_tuning:\n  base_model_name: x\n  training:\n    per_device_train_batch_size: lots\n")

    async def go() -> None:
        app = FmllmApp(cfg, deterministic=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await checks_done(pilot)
            res = app.checks.results["config.valid"]
            assert res.status == "fail"
            assert "per_device_train_batch_size" in res.finding and "bad.yaml:4" in res.finding
            # the fix keys say why nothing applies instead of failing
            await pilot.press("a")
            await pilot.pause(0.3)
            assert isinstance(app.screen, ChecksScreen)

    run(go())


def test_bad_flag_value_shows_why_the_checks_could_not_run(env: Path) -> None:
    cfg = write_config(env / "proj")

    async def go() -> None:
        app = FmllmApp(cfg, gpu="Voodoo 9000 Ultra", deterministic=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await checks_done(pilot)
            assert not app.checks.results
            assert "--gpu" in (app.checks.error or "")
            text = screen_text(app)
            assert "The checks could not run" in text and "Voodoo" in text

    run(go())


def test_missing_config_file(env: Path) -> None:
    async def go() -> None:
        app = FmllmApp(env / "nowhere.yaml", deterministic=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await checks_done(pilot)
            res = app.checks.results.get("config.valid")
            assert res is not None and res.status == "fail"
            assert "nowhere.yaml" in res.finding

    run(go())


def test_tty_watchdog_ends_the_app_when_the_terminal_goes(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config(env / "proj")

    async def go() -> None:
        app = FmllmApp(cfg, start_checks=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.1)
            monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no fileno: like a closed terminal
            assert app.check_tty() is False
            await pilot.pause(0.2)
        assert app.return_code == 130
        assert app._backstop is None  # headless (a test): no process-ending backstop

    run(go())


def test_terminal_gone_backstop_ends_the_process_after_its_grace() -> None:
    from fmllm_tui.tui.app import exit_when_stuck

    calls: list[int] = []
    t0 = time.monotonic()
    # a grace long enough that a loaded machine cannot pass it before the first check below
    t = exit_when_stuck(2.0, 130, exit_fn=calls.append)
    assert t.daemon and calls == []  # nothing before the grace; a daemon never holds the process up
    t.join(scaled(10))
    assert calls == [130] and time.monotonic() - t0 >= 2.0


def test_cli_rejects_bad_flags_before_the_screen_starts(env: Path) -> None:
    for args, needle in ((["--gpu", "RTX 3090", "--vram", "10GiB"], "give one"),
                         (["--vram", "lots"], "--vram"), (["--gpu", "RTX 9999"], "unknown GPU 'RTX 9999'")):
        proc = subprocess.run([sys.executable, "-m", "fmllm_tui.cli_tui", *args], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode == 2, proc.stderr
        assert needle in proc.stderr and "Traceback" not in proc.stderr
