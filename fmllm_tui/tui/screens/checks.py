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

#: Where each status sorts: what needs attention first.
ATTENTION = {"fail": 0, "warn": 1, "crash": 2, "running": 3, "pending": 4, "pass": 5, "skip": 6}
#: From this width the list has a title column; below it a preview line shows the title.
WIDE_COLUMNS = 100


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
        self._col_widths: tuple[int, int, int] = (0, 0, 0)

    def compose(self) -> ComposeResult:
        yield NavBar("checks")
        yield Static(id="checks-summary", markup=False)
        yield Static(id="checks-error", markup=False)
        yield ChecksTable(id="checks-table", cursor_type="row", zebra_stripes=False)
        yield Static(id="checks-preview")
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

    def _widths(self) -> tuple[int, int, int]:
        """(id, title, finding) column widths; title 0 below WIDE_COLUMNS (the preview line under
        the table shows the highlighted check's whole title and finding instead)."""
        width = max(self.app.size.width, 40)
        ids = [len(m["id"]) for m in self.fapp.checks.metas] or [16]
        iw = min(max(ids), 24)
        avail = width - 2 - 1 - 6 - iw  # scrollbar, glyph, cell padding of three columns, id
        if width < WIDE_COLUMNS:
            return iw, 0, max(avail, 10)
        avail -= 2  # the title column's padding
        titles = [len(m.get("title", "")) for m in self.fapp.checks.metas] or [20]
        tw = min(max(titles), max(16, int(avail * 0.42)))
        return iw, tw, max(avail - tw, 10)

    def _add_columns(self, table: DataTable[Any]) -> None:
        iw, tw, fw = self._widths()
        table.add_column(" ", width=1, key="glyph")
        table.add_column("Id", width=iw, key="id")
        if tw:
            table.add_column("Check", width=tw, key="title")
        table.add_column("Finding", width=fw, key="finding")
        self._col_widths = (iw, tw, fw)

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

    def _cells(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The row's cells by column key (the title only when its column is shown)."""
        cid = meta["id"]
        st = self.fapp.checks
        iw, tw, fw = self._col_widths
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
        cells: dict[str, Any] = {"glyph": glyph(status, frame), "id": clip(cid, iw)}
        if tw:
            cells["title"] = meta.get("title", cid)  # wraps in its column (the row grows)
        cells["finding"] = finding
        return cells

    def _ordered(self) -> list[dict[str, Any]]:
        """The checks by what needs attention (fail, warn, crash, running, waiting, pass, skip),
        in collection order within each status."""
        metas = self.fapp.checks.metas
        return sorted(metas, key=lambda m: ATTENTION.get(self._status(m["id"]), len(ATTENTION)))

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
        # a cursor left on the first row stays on the first row: what needs attention comes first
        keep = self._cursor_id() if table.cursor_row > 0 else None
        table.clear()
        self._shown = []
        for meta in self._ordered():
            if self._matches(meta):
                # a title longer than its column wraps: the row takes the lines it needs
                table.add_row(*self._cells(meta).values(), key=meta["id"], height=None if self._col_widths[1] else 1)
                self._shown.append(meta["id"])
        if keep in self._shown:
            table.move_cursor(row=self._shown.index(keep))
        self._update_summary()
        self._update_preview()

    def _update_preview(self) -> None:
        """Below the table at narrow widths: the highlighted check's title and whole finding."""
        box = self.query_one("#checks-preview", Static)
        box.display = not self._col_widths[1]
        if not box.display:
            return
        meta, res = self.selected()
        if meta is None:
            box.update("")
            return
        text = Text(meta.get("title", meta["id"]), style="bold")
        text.append(" · " + (res.finding if res else WORDS.get(self._status(meta["id"]), "")))
        box.update(text)

    @on(DataTable.RowHighlighted, "#checks-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._update_preview()

    def _update_row(self, cid: str) -> None:
        meta = next((m for m in self.fapp.checks.metas if m["id"] == cid), None)
        if meta is None or (cid in self._shown) != self._matches(meta) or self._out_of_order():
            self._rebuild()  # a new status moves the row to its place
            return
        if cid in self._shown:
            table = self.query_one("#checks-table", DataTable)
            for col, cell in self._cells(meta).items():
                table.update_cell(cid, col, cell)
        self._update_summary()
        self._update_preview()

    def _out_of_order(self) -> bool:
        shown = [m["id"] for m in self._ordered() if m["id"] in set(self._shown)]
        return shown != self._shown

    def _update_summary(self) -> None:
        st = self.fapp.checks
        text = summary_line(st.results, len(st.metas), st.running, st.error)
        if self._filter:  # first: the line is cut at the right on a narrow terminal
            text = f"filter “{self._filter}”: {len(self._shown)} shown (esc clears) · {text}"
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
        # commands are said inside the dialog: toasts would cover its buttons at 80x24
        note = "".join(f"Not a config change; run in a shell:\n    {cmd}\n" for cmd in shells)
        if not changes:
            if note:
                from fmllm_tui.tui.screens.dialogs import MessageScreen

                self.app.push_screen(MessageScreen("No safe config fix to apply", note))
            else:
                self.notify("No safe config fix to apply.")
            return
        label = f"{len(ids)} safe fix{'es' if len(ids) != 1 else ''} ({', '.join(ids)})"
        self.fapp.apply_changes(changes, label, note=note)

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
    from fmllm_tui.findings import plural

    return plural(count, word)


def summary_line(results: dict[str, CheckResult], total: int, running: bool, error: str | None) -> str:
    """The verdict first, then the counts that are not zero (what needs attention first), then
    the safe fixes ``a`` would apply: one line, read before any row."""
    done = len(results)
    total = max(total, done)
    counts = summarize(list(results.values()))
    if error and not running:
        return "The checks could not run (below)"
    if not running and not done:
        return "Not checked yet: r runs the checks"
    words = {"fail": f"{counts['fail']} failed", "warn": _n(counts["warn"], "warning"),
             "crash": f"{counts['crash']} crashed", "pass": f"{counts['pass']} passed",
             "skip": f"{counts['skip']} skipped"}
    if running:
        head, said = (f"Checking… {done}/{total}" if total else "Starting the checks…"), ""
    elif counts["fail"]:
        head, said = f"Not ready: {_n(counts['fail'], 'check')} failed", "fail"
    elif counts["crash"]:
        head, said = f"Not sure: {_n(counts['crash'], 'check')} crashed", "crash"
    elif counts["warn"]:
        head, said = f"Ready, with {_n(counts['warn'], 'warning')}", "warn"
    else:
        head, said = "Ready", ""
    parts = [words[k] for k in ("fail", "warn", "crash", "pass", "skip") if counts[k] and k != said]
    text = " · ".join([head, *parts])
    if not running and done:
        from fmllm_tui.tui import configops

        _changes, ids, _shells = configops.safe_fix_changes(list(results.values()))
        if ids:
            text += f" · a applies {len(ids)} safe fix{'' if len(ids) == 1 else 'es'}"
    return text


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
        note = f"Also run in a shell:\n    {fix.shell}\n" if fix.shell else ""
        app.apply_changes(list(fix.changes), f"fix {fix.id}", note=note)
        return
    if fix.shell:
        from fmllm_tui.tui.screens.dialogs import MessageScreen

        app.push_screen(MessageScreen(
            f"{res.id}: not a config change",
            f"Run this in a shell, then re-run the checks (r):\n\n    {fix.shell}\n\n{fix.summary}".rstrip()))
