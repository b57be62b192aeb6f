"""A check's details: the whole finding, the measured values, the fix and its diff."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Footer, Static

from fmllm_tui.findings import CheckResult
from fmllm_tui.tui.screens.base import FmllmModal
from fmllm_tui.tui.screens.dialogs import diff_text
from fmllm_tui.tui.widgets.status import STYLES, WORDS, glyph, human_bytes

if TYPE_CHECKING:
    from fmllm_tui.tui.app import FmllmApp


def format_value(key: str, value: Any) -> str:
    """A measured value for reading: byte counts also in GiB, structures as compact JSON."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int) and key.endswith("bytes"):
        return f"{value} ({human_bytes(value)})"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def _fmt(v: Any) -> str:
    return "(unset)" if v is None else (v if isinstance(v, str) else json.dumps(v))


class CheckDetailScreen(FmllmModal):
    """Details of one check; ``f`` applies its fix."""

    BINDINGS = [
        Binding("f", "fix", "Apply fix"),
        Binding("escape,q", "close", "Close"),
    ]

    def __init__(self, meta: dict[str, Any], result: CheckResult | None) -> None:
        super().__init__(classes="dialog-screen")
        self.meta = meta
        self.result = result

    @property
    def fapp(self) -> FmllmApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        res = self.result
        status = res.status if res else "pending"
        head = Text()
        head.append_text(glyph(status))
        head.append(f" {self.meta.get('title', self.meta['id'])}", style="bold")
        head.append(f"  {self.meta['id']} · {self.meta.get('category', '')} · "
                    f"{self.meta.get('severity', '')}", style="dim")
        body = Text()
        body.append(f"{WORDS.get(status, status).capitalize()}\n", style=STYLES.get(status, ""))
        if res is None:
            body.append("No result yet: the check is waiting or running.\n")
        else:
            body.append(res.finding.rstrip() + "\n")
            if res.values:
                body.append("\nMeasured\n", style="bold")
                for k, v in res.values.items():
                    body.append(f"  {k}: ", style="bold")
                    body.append(format_value(k, v) + "\n")
            if res.fix is not None:
                body.append(f"\nFix ({res.fix.id})\n", style="bold")
                if res.fix.summary:
                    body.append(f"  {res.fix.summary}\n")
                for c in res.fix.changes:
                    body.append(f"  {c.key}: {_fmt(c.from_)} → {_fmt(c.to)}\n")
                if res.fix.shell:
                    body.append("  run in a shell: ", style="bold")
                    body.append(f"{res.fix.shell}\n")
                if res.fix.changes and res.status in ("fail", "warn"):
                    body.append("  press f to preview the diff and apply it\n", style="dim")
            if not self.fapp.deterministic and res.duration_s >= 0.5:
                body.append(f"\ntook {res.duration_s:.1f} s\n", style="dim")
        with Vertical(classes="dialog detail"):
            yield Static(head, classes="dialog-title")
            with VerticalScroll(classes="dialog-body"):
                yield Static(body, id="detail-body")
                yield Static("", id="detail-diff")
            yield Footer()

    def _fixable(self) -> bool:
        res = self.result
        return bool(res is not None and res.fix is not None and res.status in ("fail", "warn")
                    and (res.fix.changes or res.fix.shell))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "fix":
            return self._fixable()  # no "Apply fix" in the footer when there is nothing to apply
        return True

    def on_mount(self) -> None:
        res = self.result
        if self._fixable() and res is not None and res.fix is not None and res.fix.changes:
            self._load_diff()

    async def _load_diff_async(self) -> None:
        from fmllm_tui.redact import mask_text
        from fmllm_tui.tui import configops

        assert self.result is not None and self.result.fix is not None
        box = self.query_one("#detail-diff", Static)
        try:
            pv = await asyncio.to_thread(configops.preview, self.fapp.spec.config, list(self.result.fix.changes))
        except configops.ConfigOpError as e:
            box.update(Text(f"\nThe diff cannot be computed:\n{e}", style="red"))
            return
        except ImportError as e:
            box.update(Text(f"\nThe fixers are not available: {e}", style="red"))
            return
        if not pv.diff.strip():
            box.update(Text("\nThe config already has these values.", style="dim"))
            return
        out = Text("\nDiff\n", style="bold")
        out.append_text(diff_text(mask_text(pv.diff)))
        box.update(out)

    def _load_diff(self) -> None:
        self.run_worker(self._load_diff_async(), group="detail-diff", exclusive=True, exit_on_error=False)

    def action_fix(self) -> None:
        from fmllm_tui.tui.screens.checks import apply_fix_of

        self.dismiss(None)
        apply_fix_of(self.fapp, self.result)

    def action_close(self) -> None:
        self.dismiss(None)
