"""The Presets screen: the fixers' presets, each with its predicted peak on this GPU; Enter
applies one (diff preview, confirm, backup)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Static

from fmllm_tui.tui import memplan
from fmllm_tui.tui.screens.planning import PlanningScreen
from fmllm_tui.tui.widgets.navbar import NavBar
from fmllm_tui.tui.widgets.status import human_bytes, human_range


class PresetsTable(DataTable[Any]):
    """The preset list; Enter applies the highlighted preset."""

    BINDINGS = [Binding("enter", "select_cursor", "Apply", key_display="⏎")]


class PresetsScreen(PlanningScreen):
    """Named profiles from ``fixes.PRESETS`` with their predicted peak."""

    LOAD_GROUP = "presets-load"
    TABLE = "#presets-table"
    COLUMNS = ((" ", "fit", 1), ("Preset", "name", 14), ("Predicted peak", "peak", 16), ("Written for", "target", 11),
               ("Model", "model", None))

    BINDINGS = [
        Binding("enter", "apply", "Apply preset", key_display="⏎", show=False),
        Binding("a", "apply", "Apply preset", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[memplan.PresetRow] = []

    def compose(self) -> ComposeResult:
        yield NavBar("presets")
        yield Static("Predicting each preset's peak…", id="presets-summary", classes="summary", markup=False)
        yield PresetsTable(id="presets-table", cursor_type="row")
        yield Static(id="presets-desc", markup=False)
        yield Footer()

    def has_plan(self) -> bool:
        return bool(self.rows)

    def config_unreadable(self, error: str) -> None:
        self.query_one("#presets-summary", Static).update(
            Text(f"The config cannot be read, so presets cannot be planned: {error}", style="red"))

    async def _load(self) -> None:
        loaded = await self.read_config()
        if loaded is None:
            return
        rows = await asyncio.to_thread(memplan.preset_rows, loaded, self.fapp.spec.offline)
        budget = await self.find_budget(loaded)
        # rows and budget change together, with the table: nothing sees the rows without their budget
        self.rows, self.budget = rows, budget
        self.redraw()

    def redraw(self) -> None:
        b = self.budget
        where = memplan.describe_budget(b)
        self.query_one("#presets-summary", Static).update(f"{len(self.rows)} presets · peak predicted for {where}")
        table = self.query_one("#presets-table", DataTable)
        row = table.cursor_row
        table.clear()
        for r in self.rows:
            if r.peak_bytes is None:
                mark, peak = Text("?", style="dim"), Text("cannot predict", style="dim")
            else:
                fits = b is None or b.bytes is None or (r.high_bytes or r.peak_bytes) <= b.bytes
                tight = b is not None and b.bytes is not None and r.peak_bytes <= b.bytes < (r.high_bytes or 0)
                mark = Text("✓", style="bold green") if fits else (
                    Text("!", style="bold yellow") if tight else Text("✗", style="bold red"))
                if b is None or b.bytes is None:
                    mark = Text("·", style="dim")
                peak = Text(human_bytes(r.peak_bytes))
            target = re.sub(r"(\d)([KMGT]i?B)\b", r"\1 \2", r.target)  # "10GiB" -> "10 GiB"
            table.add_row(mark, r.name, peak, target, r.model, key=r.name)
        if self.rows:
            table.move_cursor(row=min(max(row, 0), len(self.rows) - 1))
        self._describe()

    def _selected(self) -> memplan.PresetRow | None:
        table = self.query_one("#presets-table", DataTable)
        if not self.rows or not 0 <= table.cursor_row < len(self.rows):
            return None
        return self.rows[table.cursor_row]

    def _describe(self) -> None:
        r = self._selected()
        box = self.query_one("#presets-desc", Static)
        if r is None:
            box.update("")
            return
        text = Text()
        text.append(f"{r.name}: ", style="bold")
        text.append(r.description + "\n")
        if r.peak_bytes is not None:
            text.append(f"predicted peak {human_bytes(r.peak_bytes)} (range {human_range(r.low_bytes, r.high_bytes)})\n")
        if r.error:
            text.append(r.error + "\n", style="red")
        if r.notes:
            text.append(r.notes, style="dim")
        box.update(text)

    @on(DataTable.RowHighlighted, "#presets-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._describe()

    @on(DataTable.RowSelected, "#presets-table")
    def _selected_row(self, event: DataTable.RowSelected) -> None:
        self.action_apply()

    def action_apply(self) -> None:
        r = self._selected()
        if r is None:
            return
        self.run_worker(self._apply(r.name), group="presets-apply", exclusive=True, exit_on_error=False)

    async def _apply(self, name: str) -> None:
        from fmllm_tui.fixes import FixError, preset_changes
        from fmllm_tui.tui import configops

        try:
            loaded = await asyncio.to_thread(configops.load, self.fapp.spec.config)
            changes = await asyncio.to_thread(preset_changes, loaded, name)
        except (configops.ConfigOpError, FixError) as e:
            self.notify(e.render() if isinstance(e, FixError) else str(e), severity="error", timeout=10)
            return
        if not changes:
            self.notify(f"preset {name}: the config already matches it")
            return
        self.fapp.apply_changes(changes, f"preset {name}")
