"""The Checks screen: one row per check, filled in as the background run streams results."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Input, Static

from fmllm_tui.findings import CheckResult, summarize
from fmllm_tui.tui.messages import ChecksChanged
from fmllm_tui.tui.screens.base import FmllmScreen
from fmllm_tui.tui.widgets.navbar import NavBar
from fmllm_tui.tui.widgets.status import WORDS, clip, glyph

if TYPE_CHECKING:
    from fmllm_tui.tui.app import FmllmApp


class ChecksTable(DataTable[Any]):
    """The check list; Enter opens the highlighted check's details."""

    BINDINGS = [Binding("enter", "select_cursor", "Details", key_display="⏎")]


class ChecksScreen(FmllmScreen):
    """Every check as a row (glyph, title, one-line finding); Enter opens its details."""

    BINDINGS = [
        Binding("enter", "details", "Details", key_display="⏎", show=False),
        Binding("f", "fix", "Fix"),
        Binding("a", "fix_all", "Fix all safe"),
        Binding("r", "rerun", "Re-run"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("u", "undo", "Undo fix", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._filter = ""
        self._frame = 0
        self._shown: list[str] = []
        self._col_widths: tuple[int, int] = (0, 0)

    @property
    def fapp(self) -> FmllmApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield NavBar("checks")
        yield Static(id="checks-summary", markup=False)
        yield Static(id="checks-error", markup=False)
        yield ChecksTable(id="checks-table", cursor_type="row", zebra_stripes=False)
        yield Input(placeholder="filter: words of a title or finding, or pass/warn/fail/skip/crash",
                    id="checks-filter")
        yield Footer()

    def on_mount(self) -> None:
        self.fapp.register_view(self)
        table = self.query_one("#checks-table", DataTable)
        self._add_columns(table)
        self._rebuild()
        table.focus()
        self.set_interval(0.125, self._tick)

    # ---- rendering ---------------------------------------------------------------------------

    def _widths(self) -> tuple[int, int]:
        width = max(self.app.size.width, 40)
        avail = width - 2 - 3 - 4  # scrollbar, glyph column, cell padding of the two text columns
        titles = [len(m.get("title", "")) for m in self.fapp.checks.metas] or [20]
        tw = min(max(titles), max(16, int(avail * 0.38)))
        return tw, max(avail - tw, 10)

    def _add_columns(self, table: DataTable[Any]) -> None:
        tw, fw = self._widths()
        table.add_column(" ", width=1, key="glyph")
        table.add_column("Check", width=tw, key="title")
        table.add_column("Finding", width=fw, key="finding")
        self._col_widths = (tw, fw)

    def on_resize(self) -> None:
        if self.is_mounted and self._widths() != self._col_widths:
            self._rebuild()

    def _status(self, cid: str) -> str:
        st = self.fapp.checks
        res = st.results.get(cid)
        if res is not None:
            return res.status
        if cid in st.started:
            return "running"
        return "pending"

    def _cells(self, meta: dict[str, Any]) -> tuple[Text, str, Text]:
        cid = meta["id"]
        st = self.fapp.checks
        tw, fw = self._col_widths
        status = self._status(cid)
        det = self.fapp.deterministic
        res = st.results.get(cid)
        if res is not None:
            finding = Text(clip(res.finding, fw))
            if res.status == "skip":
                finding.stylize("dim")
        elif status == "running":
            since = st.started.get(cid, time.monotonic())
            finding = Text("running…" if det else f"running… {time.monotonic() - since:.0f} s", style="cyan")
        else:
            finding = Text("waiting" if st.running else "not run", style="dim")
        frame = None if det else self._frame
        return glyph(status, frame), clip(meta.get("title", cid), tw), finding

    def _matches(self, meta: dict[str, Any]) -> bool:
        if not self._filter:
            return True
        res = self.fapp.checks.results.get(meta["id"])
        status = self._status(meta["id"])
        hay = " ".join([meta["id"], meta.get("title", ""), meta.get("category", ""), status,
                        WORDS.get(status, ""), res.finding if res else ""]).lower()
        return all(word in hay for word in self._filter.lower().split())

    def _rebuild(self) -> None:
        table = self.query_one("#checks-table", DataTable)
        if self._widths() != self._col_widths:  # titles arrived or the terminal changed size
            table.clear(columns=True)
            self._add_columns(table)
        keep = self._cursor_id()
        table.clear()
        self._shown = []
        for meta in self.fapp.checks.metas:
            if self._matches(meta):
                table.add_row(*self._cells(meta), key=meta["id"])
                self._shown.append(meta["id"])
        if keep in self._shown:
            table.move_cursor(row=self._shown.index(keep))
        self._update_summary()

    def _update_row(self, cid: str) -> None:
        meta = next((m for m in self.fapp.checks.metas if m["id"] == cid), None)
        if meta is None or (cid in self._shown) != self._matches(meta):
            self._rebuild()
            return
        if cid in self._shown:
            table = self.query_one("#checks-table", DataTable)
            g, t, f = self._cells(meta)
            table.update_cell(cid, "glyph", g)
            table.update_cell(cid, "title", t)
            table.update_cell(cid, "finding", f)
        self._update_summary()

    def _update_summary(self) -> None:
        st = self.fapp.checks
        done = len(st.results)
        total = max(len(st.metas), done)
        counts = summarize(list(st.results.values()))
        parts = [f"{counts['pass']} passed", _n(counts["warn"], "warning"), f"{counts['fail']} failed"]
        if counts["skip"]:
            parts.append(f"{counts['skip']} skipped")
        if counts["crash"]:
            parts.append(f"{counts['crash']} crashed")
        if st.running:
            head = f"Checking… {done}/{total}" if total else "Starting the checks…"
        elif st.error:
            head = "The checks could not run"
        else:
            head = f"{total} checks"
        text = head + (" · " + " · ".join(parts) if done else "")
        if self._filter:
            text += f" · filter “{self._filter}”: {len(self._shown)} shown (esc clears)"
        self.query_one("#checks-summary", Static).update(text)
        err = self.query_one("#checks-error", Static)
        err.update(st.error or "")
        err.display = bool(st.error)

    def _tick(self) -> None:
        st = self.fapp.checks
        if not st.running or self.fapp.deterministic:
            return
        self._frame += 1
        for cid in st.started:
            if cid not in st.results and cid in self._shown:
                self._update_row(cid)

    @on(ChecksChanged)
    def _checks_changed(self, msg: ChecksChanged) -> None:
        if msg.check_id is None:
            self._rebuild()
        else:
            self._update_row(msg.check_id)

    # ---- selection and actions ---------------------------------------------------------------

    def _cursor_id(self) -> str | None:
        table = self.query_one("#checks-table", DataTable)
        if not self._shown or table.cursor_row < 0 or table.cursor_row >= len(self._shown):
            return None
        return self._shown[table.cursor_row]

    def selected(self) -> tuple[dict[str, Any] | None, CheckResult | None]:
        """The highlighted check's collected metadata and its result (None while it runs)."""
        cid = self._cursor_id()
        if cid is None:
            return None, None
        meta = next((m for m in self.fapp.checks.metas if m["id"] == cid), None)
        return meta, self.fapp.checks.results.get(cid)

    @on(DataTable.RowSelected, "#checks-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_details()

    def action_details(self) -> None:
        meta, res = self.selected()
        if meta is None:
            return
        from fmllm_tui.tui.screens.detail import CheckDetailScreen

        self.app.push_screen(CheckDetailScreen(meta, res))

    def action_fix(self) -> None:
        _meta, res = self.selected()
        apply_fix_of(self.fapp, res)

    def action_fix_all(self) -> None:
        from fmllm_tui.tui import configops

        st = self.fapp.checks
        if st.running:
            self.notify("The checks are still running; fix once they are done.", severity="warning")
            return
        changes, ids, shells = configops.safe_fix_changes(list(st.results.values()))
        for cmd in shells:
            self.notify(f"not a config change; run in a shell: {cmd}", timeout=10)
        if not changes:
            self.notify("No safe config fix to apply.")
            return
        label = f"{len(ids)} safe fix{'es' if len(ids) != 1 else ''} ({', '.join(ids)})"
        self.fapp.apply_changes(changes, label)

    def action_rerun(self) -> None:
        self.fapp.rerun_checks()

    def action_undo(self) -> None:
        self.fapp.undo_last_fix()

    def action_filter(self) -> None:
        box = self.query_one("#checks-filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#checks-filter", Input)
        if self._filter or box.display:  # esc with no filter does nothing
            box.value = ""
            box.display = False
            self._filter = ""
            self._rebuild()
            self.query_one("#checks-table", DataTable).focus()

    @on(Input.Changed, "#checks-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self._filter = event.value.strip()
        self._rebuild()

    @on(Input.Submitted, "#checks-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        event.input.display = False  # the summary line keeps showing the filter; / edits it again
        self.query_one("#checks-table", DataTable).focus()


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def apply_fix_of(app: FmllmApp, res: CheckResult | None) -> None:
    """Apply one check's fix: its exact config changes (diff, confirm), or show its command."""
    if res is None:
        app.notify("This check has no result yet.", severity="warning")
        return
    if res.status not in ("fail", "warn") or res.fix is None:
        app.notify(f"{res.id}: nothing to fix ({WORDS.get(res.status, res.status)}).")
        return
    fix = res.fix
    if fix.changes:
        app.apply_changes(list(fix.changes), f"fix {fix.id}")
    if fix.shell:
        from fmllm_tui.tui.screens.dialogs import MessageScreen

        if not fix.changes:
            app.push_screen(MessageScreen(
                f"{res.id}: not a config change",
                f"Run this in a shell, then re-run the checks (r):\n\n    {fix.shell}\n\n{fix.summary}".rstrip()))
        else:
            app.notify(f"also run in a shell: {fix.shell}", timeout=10)
