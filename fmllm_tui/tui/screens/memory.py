"""The Memory screen: the predicted breakdown as a stacked bar against the budget; keys vary the
settings and the prediction follows; ``a`` writes them through the fixers (diff, backup)."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Static

from fmllm_tui.tui import memplan
from fmllm_tui.tui.screens.planning import PlanningScreen
from fmllm_tui.tui.widgets.navbar import NavBar
from fmllm_tui.tui.widgets.stackbar import StackedBar
from fmllm_tui.tui.widgets.status import human_bytes, human_range

WIDE = 120  # columns from which the breakdown sits beside the settings
#: The letter keys: (key, setting, raise it?, what it does), lower before raise. The table's Keys
#: column reads them ("b/B").
KNOB_KEYS: tuple[tuple[str, str, bool, str], ...] = (
    ("b", "micro_batch", False, "Micro-batch ÷2"), ("B", "micro_batch", True, "Micro-batch ×2"),
    ("s", "seq_len", False, "Sequence length ÷2"), ("S", "seq_len", True, "Sequence length ×2"),
    ("r", "lora_r", False, "LoRA rank ÷2"), ("R", "lora_r", True, "LoRA rank ×2"),
    ("c", "gradient_checkpointing", True, "Checkpointing on/off"), ("w", "use_4bit", True, "4-bit weights on/off"),
    ("o", "optim", True, "Next optimizer"), ("O", "optim", False, "Previous optimizer"),
)
KEYS = {knob: "/".join(k for k, kn, _up, _what in KNOB_KEYS if kn == knob) for _k, knob, _up, _what in KNOB_KEYS}


class MemoryScreen(PlanningScreen):
    """Predicted peak memory, live as settings change."""

    LOAD_GROUP = "memory-load"
    TABLE = "#mem-knobs"
    COLUMNS = (("Setting", "label", 24), ("Planned", "value", 20), ("In the file", "file", 18), ("Keys", "keys", 5))

    BINDINGS = [
        Binding("left,minus", "nudge(False)", "Lower", key_display="←", priority=True),
        Binding("right,plus,equals_sign", "nudge(True)", "Raise", key_display="→", priority=True),
        *(Binding(key, f"knob('{knob}', {up})", what, show=False) for key, knob, up, what in KNOB_KEYS),
        Binding("a", "apply", "Apply"),
        Binding("x", "reset", "Reset"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.plan: memplan.MemoryPlan | None = None
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield NavBar("memory")
        yield Static("Loading the config and the model's architecture…", id="mem-title", classes="summary",
                     markup=False)
        yield StackedBar(id="mem-bar")
        yield Static(id="mem-status", markup=False)
        # side by side from WIDE columns on (the breakdown beside the settings), else stacked
        with Horizontal(id="mem-body"):
            yield DataTable(id="mem-knobs", cursor_type="row")
            yield Static(id="mem-legend", markup=False)
        yield Footer()

    def on_resize(self) -> None:
        self.query_one("#mem-body").set_class(self.app.size.width >= WIDE, "-wide")

    def on_mount(self) -> None:
        self.on_resize()  # then PlanningScreen.on_mount: the table's columns and the load

    # ---- loading -----------------------------------------------------------------------------

    def has_plan(self) -> bool:
        return self.plan is not None

    def config_unreadable(self, error: str) -> None:
        self._fail(f"Nothing to plan: the config cannot be read.\n{error}")

    async def _load(self) -> None:
        loaded = await self.read_config()
        if loaded is None:
            return
        arch, source = await asyncio.to_thread(memplan.architecture, loaded.view, self.fapp.spec.offline)
        if arch is None:
            self._fail(f"No architecture for {loaded.view.base_model_name}: not a local folder, not on the "
                       "Hub or in its cache, and not in fmllm's catalogue (see the Checks screen).")
            return
        budget = await self.find_budget(loaded)
        spec = self.fapp.spec
        planned = memplan.planned_budget(loaded.view, spec.gpu, spec.vram)
        n_local = 0 if planned else await asyncio.to_thread(memplan.local_gpu_count)
        try:
            plan = await asyncio.to_thread(memplan.MemoryPlan.build, loaded, arch, source, budget,
                                           planned=planned, n_local=n_local)  # reads the data
            plan.predict()
        except ValueError as e:  # memory.ArchitectureError is a ValueError
            self._fail(f"The memory model cannot use {loaded.view.base_model_name}: {e}")
            return
        # plan and budget change together, with the screen: nothing sees the plan without its budget
        self.plan, self.error, self.budget = plan, None, budget
        self.redraw()

    def _fail(self, why: str) -> None:
        # The title is one line high: its first line there, the rest (where and why) below it.
        self.plan = None
        self.error = why
        head, _, detail = why.partition("\n")
        self.query_one("#mem-title", Static).update(Text(head, style="red"))
        self.query_one("#mem-bar", StackedBar).set_data([], None)
        self.query_one("#mem-status", Static).update(Text(detail, style="red") if detail else "")

    # ---- drawing -----------------------------------------------------------------------------

    def redraw(self) -> None:
        plan = self.plan
        if plan is None:
            return
        try:
            pred = plan.predict()
        except ValueError as e:
            self.query_one("#mem-status", Static).update(Text(f"cannot predict these settings: {e}", style="red"))
            return
        b = self.budget
        model = plan.loaded.view.base_model_name
        where = memplan.describe_budget(b, with_source=True)
        self.query_one("#mem-title", Static).update(f"{model} on {where}")
        self.query_one("#mem-bar", StackedBar).set_data(memplan.grouped(pred.breakdown), b.bytes if b else None,
                                                        pred.low_bytes, pred.high_bytes)
        self.query_one("#mem-status", Static).update(self._status_text(plan, pred))
        self._fill_knobs(plan)
        self.query_one("#mem-legend", Static).update(self._legend(plan, pred))

    def _status_text(self, plan: memplan.MemoryPlan, pred: Any) -> Text:
        """The peak against the budget, the speed, and what the varied settings change."""
        b = self.budget
        status = Text()
        status.append(f"predicted peak {human_bytes(pred.peak_process_bytes)} ", style="bold")
        status.append(f"({human_range(pred.low_bytes, pred.high_bytes)}, during the {pred.peak_phase})")
        planned = plan.planned(plan.current).seq_len
        if planned != plan.current.seq_len:
            status.append(f" at {planned} tokens (the data's longest example)")
        if b and b.bytes:
            spare = b.bytes - pred.peak_process_bytes
            if spare >= 0:
                status.append(f" · fits, {human_bytes(spare)} spare", style="green")
            else:
                status.append(f" · does not fit: {human_bytes(-spare)} over", style="bold red")
        status.append(self._speed_text())
        changed = plan.changed()
        if changed:
            base = plan.predict_base().peak_process_bytes
            delta = pred.peak_process_bytes - base
            what = "1 change" if len(changed) == 1 else f"{len(changed)} changes"
            moved = (f"{'+' if delta >= 0 else '−'}{human_bytes(abs(delta))}" if abs(delta) >= 1 << 20
                     else "the same peak")  # "+0 KiB" said nothing
            status.append(f"\n{what} from the file, {moved}; a applies, x resets", style="yellow")
            was_eff, now_eff = plan.effective_batch()
            if was_eff != now_eff:
                status.append(f"\neffective batch {was_eff} -> {now_eff}: it cannot be kept at this micro-batch",
                              style="bold yellow")
        return status

    def _fill_knobs(self, plan: memplan.MemoryPlan) -> None:
        """The settings table: planned (yellow where varied), in the file, keys; the cursor stays."""
        table = self.query_one("#mem-knobs", DataTable)
        row = table.cursor_row
        table.clear()
        for knob, label in memplan.KNOBS:
            now, was = getattr(plan.current, knob), getattr(plan.base, knob)
            value = Text(memplan.show(now), style="bold yellow" if now != was else "")
            table.add_row(label, value, memplan.show(was), KEYS[knob], key=knob)
        table.move_cursor(row=max(0, row))

    def _legend(self, plan: memplan.MemoryPlan, pred: Any) -> Text:
        """The breakdown's parts, largest first, with the bar's fills; where the architecture
        came from; the model's notes."""
        legend = Text()
        wide = self.app.size.width >= WIDE
        parts = sorted(((k, v) for k, v in pred.breakdown.items() if v > 0), key=lambda kv: -kv[1])
        for i, (comp, v) in enumerate(parts):
            _g, fill, colour = memplan.group_of(comp)
            legend.append(fill, style=colour)
            legend.append(f" {comp.replace('_', ' '):<20}{human_bytes(v):>10}")
            # one column beside the settings, two below them
            legend.append("\n" if wide or i % 2 else "    ")
        legend.append(f"\narchitecture from {memplan.SOURCES.get(plan.arch_source, plan.arch_source)}", style="dim")
        for note in pred.notes:
            legend.append(f"\n{note}", style="dim")
        return legend

    def _speed_text(self) -> str:
        """"\n~1,234 tokens/s on RTX 3090 · about 12m for 9 steps (estimates)", or nothing when the
        memory model gives no time estimate."""
        assert self.plan is not None
        try:
            tps, card, eta = memplan.eta_line(self.plan, self.budget)
        except (ImportError, ValueError):  # a memory model without time estimates
            return ""
        text = f"\n~{tps:,.0f} tokens/s on {card}"
        if eta:
            text += f" · about {eta}"
        return text + " (estimates)"

    # ---- actions -----------------------------------------------------------------------------

    def _selected_knob(self) -> str:
        table = self.query_one("#mem-knobs", DataTable)
        i = min(max(table.cursor_row, 0), len(memplan.KNOBS) - 1)
        return memplan.KNOBS[i][0]

    def action_nudge(self, up: bool) -> None:
        self.action_knob(self._selected_knob(), up)

    def action_knob(self, knob: str, up: bool) -> None:
        if self.plan is None:
            return
        self.plan.move(knob, up)
        table = self.query_one("#mem-knobs", DataTable)
        table.move_cursor(row=[k for k, _ in memplan.KNOBS].index(knob))
        self.redraw()

    def action_reset(self) -> None:
        if self.plan is not None:
            self.plan.reset()
            self.redraw()

    def action_apply(self) -> None:
        if self.plan is None or not self.plan.changed():
            self.notify("Nothing to apply: change a setting first (←/→ or the letter keys).")
            return
        from fmllm_tui.fixes import FixError

        try:
            changes = self.plan.changes(self.budget)
        except FixError as e:
            self.notify(e.render(), severity="error", timeout=10)
            return
        self.fapp.apply_changes(changes, "the memory plan")
