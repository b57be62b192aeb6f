"""Snapshots of fmllm-tui's main screens at 80x24 and 120x40 (pytest-textual-snapshot).

Deterministic by construction: a fixed config in a fixed folder (paths show in findings), a fake
GPU, planning for a named budget (so this machine's torch and driver do not show), no Hub, and the
app's ``deterministic`` mode (no spinner frames, durations or ETAs). Review changes with
``pytest tests/test_tui_snapshots.py --snapshot-update`` only after reading the HTML report.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pytest_textual_snapshot")

from tui_support import (  # noqa: E402
    checks_done,
    fake_gpu,
    open_memory_screen,
    quiet_env,
    screen_text,
    stopped_run,
    wait_until,
    write_config,
)

from fmllm_tui.tui.app import FmllmApp  # noqa: E402
from fmllm_tui.tui.screens.detail import CheckDetailScreen  # noqa: E402
from fmllm_tui.tui.screens.dialogs import ConfirmScreen  # noqa: E402

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


def shown_ids(app: FmllmApp) -> list[str]:
    """The check ids the Checks screen's table shows now (after its filter)."""
    return list(app.get_screen_stack("checks")[0]._shown)


def filter_box_closed(app: FmllmApp) -> bool:
    """The filter was submitted: the box is hidden and keys reach the table again."""
    return not app.get_screen_stack("checks")[0].query_one("#checks-filter").display


@pytest.fixture
def snap_dir(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder whose path is the same on every run (it appears in findings)."""
    name = request.node.name.replace("[", "_").replace("]", "")
    folder = Path(tempfile.gettempdir()) / "fmllm-tui-snapshots" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    quiet_env(monkeypatch, folder, fake_gpu(folder))
    monkeypatch.chdir(folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def app_for(folder: Path, *, start_checks: bool = True, **config: Any) -> FmllmApp:
    write_config(folder, **config)
    return FmllmApp("config.yaml", vram="24GiB", deterministic=True, start_checks=start_checks)


@pytest.mark.parametrize("size", SIZES)
def test_checks_screen(snap_compare: Any, snap_dir: Path, size: tuple[int, int]) -> None:
    async def ready(pilot: Any) -> None:
        await checks_done(pilot)
        # machine-state checks (free disk, free RAM) change between runs: show the config ones,
        # through the screen's own filter
        await pilot.press("slash", *"config", "enter")
        # press() does not wait for the filter's messages to be handled: wait for them to show
        await wait_until(pilot, lambda: filter_box_closed(pilot.app) and "filter “config”" in screen_text(pilot.app),
                         10, "the config filter")

    assert snap_compare(app_for(snap_dir, attn="eager"), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES)
def test_check_details_with_diff(snap_compare: Any, snap_dir: Path, size: tuple[int, int]) -> None:
    async def ready(pilot: Any) -> None:
        await checks_done(pilot)
        app = pilot.app
        # each key waits for the one before it to be handled: the first enter closes the filter
        # box, the second opens the details of the row left
        await pilot.press("slash", *"attn")
        await wait_until(pilot, lambda: shown_ids(app) == ["gpu.flash_attn"], 10, "the attn filter")
        await pilot.press("enter")
        await wait_until(pilot, lambda: filter_box_closed(app), 10, "the filter box to close")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, CheckDetailScreen) and bool(app.screen.query("#detail-diff"))
                         and "Diff" in str(app.screen.query_one("#detail-diff").render()), 20, "the diff")

    assert snap_compare(app_for(snap_dir, attn="eager"), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES)
def test_memory_screen(snap_compare: Any, snap_dir: Path, size: tuple[int, int]) -> None:
    async def ready(pilot: Any) -> None:
        await open_memory_screen(pilot)
        await pilot.press("B")  # one change from the file, so the "changed" styling shows

    assert snap_compare(app_for(snap_dir, start_checks=False), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES)
def test_presets_screen(snap_compare: Any, snap_dir: Path, size: tuple[int, int]) -> None:
    async def ready(pilot: Any) -> None:
        await pilot.press("3")
        # the rows come before the budget the marks are drawn against: wait for both
        await wait_until(pilot, lambda: bool(getattr(pilot.app.screen, "rows", None))
                         and getattr(pilot.app.screen, "budget", None) is not None, 20, "the presets and their budget")

    assert snap_compare(app_for(snap_dir, start_checks=False), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES)
def test_confirm_dialog_with_a_long_diff(snap_compare: Any, snap_dir: Path, size: tuple[int, int]) -> None:
    """Apply-all: the diff scrolls inside, its buttons and the dialog's keys stay in view."""
    async def ready(pilot: Any) -> None:
        await checks_done(pilot)
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen)
                         and "y Apply" in screen_text(pilot.app), 20, "the apply-all dialog")

    assert snap_compare(app_for(snap_dir, attn="eager"), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES)
def test_run_screen_after_a_stop(snap_compare: Any, snap_dir: Path, size: tuple[int, int]) -> None:
    """A stopped run: its step as the stop says, library noise folded, errors highlighted."""
    run = stopped_run(snap_dir)

    async def ready(pilot: Any) -> None:
        await pilot.press("4")
        await wait_until(pilot, lambda: "No run" in str(pilot.app.screen.query_one("#run-state").render()), 20,
                         "the Run screen")
        await wait_until(pilot, lambda: "RTX 3090" in str(pilot.app.screen.query_one("#run-gpu-text").render()),
                         10, "the GPU panel")
        pilot.app.screen.follow(run)
        await wait_until(pilot, lambda: "stopped at step 2" in screen_text(pilot.app), 20, "the stopped run")

    assert snap_compare(app_for(snap_dir, start_checks=False), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES)
def test_help_screen(snap_compare: Any, snap_dir: Path, size: tuple[int, int]) -> None:
    assert snap_compare(app_for(snap_dir, start_checks=False), terminal_size=size, press=["question_mark"])
