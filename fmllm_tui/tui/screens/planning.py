"""What the Memory and Presets screens share: both plan the config against a memory budget, so
both read the config off the UI thread, take the budget the checks found (else the --gpu/--vram
card or this machine's), reload when the config is written and redraw when the checks' budget
changes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from textual import on
from textual.widgets import DataTable

from fmllm_tui.tui import memplan
from fmllm_tui.tui.messages import ChecksChanged, ConfigWritten
from fmllm_tui.tui.screens.base import FmllmScreen

if TYPE_CHECKING:
    from fmllm_tui.config import LoadedConfig


class PlanningScreen(FmllmScreen):
    """A screen whose content is planned for ``budget``. Subclasses give ``TABLE`` and ``COLUMNS``,
    ``_load`` (the worker that plans), ``has_plan``, ``redraw`` and ``config_unreadable``."""

    #: The worker group of this screen's load (a new load cancels the one still running).
    LOAD_GROUP = "planning-load"
    #: The screen's table (a selector) and its columns: (heading, key, width; None fits the content).
    TABLE = ""
    COLUMNS: tuple[tuple[str, str, int | None], ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.budget: memplan.Budget | None = None

    def on_mount(self) -> None:
        # Textual runs a subclass's on_mount first, then this one
        self.fapp.register_view(self)
        table = self.query_one(self.TABLE, DataTable)
        for heading, key, width in self.COLUMNS:
            table.add_column(heading, key=key, width=width)
        table.focus()
        self.load()

    def load(self) -> None:
        """(Re)plan in a worker: the config, the model and the data are read off the UI thread."""
        self.run_worker(self._load(), group=self.LOAD_GROUP, exclusive=True, exit_on_error=False)

    async def _load(self) -> None:
        raise NotImplementedError

    def has_plan(self) -> bool:
        """True once there is something planned to redraw for a new budget."""
        raise NotImplementedError

    def redraw(self) -> None:
        raise NotImplementedError

    def config_unreadable(self, error: str) -> None:
        """Say on the screen that the config cannot be read (``error`` says where and why)."""
        raise NotImplementedError

    async def read_config(self) -> LoadedConfig | None:
        """The config as fixers and the memory model read it, or None after saying why not."""
        from fmllm_tui.tui import configops

        try:
            return await asyncio.to_thread(configops.load, self.fapp.spec.config)
        except configops.ConfigOpError as e:
            self.config_unreadable(str(e))
            return None

    async def find_budget(self, loaded: LoadedConfig) -> memplan.Budget | None:
        """The checks' budget when they have one, else the named card's or this machine's."""
        spec = self.fapp.spec
        return memplan.budget_from_checks(self.fapp.checks.results) or await asyncio.to_thread(
            memplan.budget_elsewhere, loaded.view, spec.gpu, spec.vram)

    @on(ConfigWritten)
    def _config_written(self) -> None:
        self.load()

    @on(ChecksChanged)
    def _checks_changed(self, msg: ChecksChanged) -> None:
        b = memplan.budget_from_checks(self.fapp.checks.results)
        if b is not None and self.has_plan() and (self.budget is None or b.bytes != self.budget.bytes):
            self.budget = b
            self.redraw()
