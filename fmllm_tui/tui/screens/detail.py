"""A check's details: the whole finding, what it was planned for, the predicted and measured values,
the fix and its diff (the body scrolls; the footer shows this dialog's keys)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Footer, Static
from textual.worker import Worker

from fmllm_tui.findings import CheckResult
from fmllm_tui.tui import detailtext
from fmllm_tui.tui.screens.base import report_worker_error
from fmllm_tui.tui.screens.dialogs import SCROLL_BINDINGS, DialogBody, ScrollDialog, diff_text
from fmllm_tui.tui.widgets.status import STYLES, WORDS, glyph

if TYPE_CHECKING:
    from fmllm_tui.tui.app import FmllmApp


class CheckDetailScreen(ScrollDialog[None]):
    """Details of one check; ``f`` applies its fix."""

    BINDINGS = [
        Binding("f", "fix", "Apply fix"),
        Binding("escape,q", "close", "Close"),
        *SCROLL_BINDINGS,
    ]

    def __init__(self, meta: dict[str, Any], result: CheckResult | None) -> None:
        super().__init__(classes="dialog-screen")
        self.meta = meta
        self.result = result

    @property
    def fapp(self) -> FmllmApp:
        return self.app  # type: ignore[return-value]

    def _head(self, status: str) -> Text:
        head = Text()
        head.append_text(glyph(status))
        head.append(f" {self.meta.get('title', self.meta['id'])}", style="bold")
        sev = {"error": "fails as an error", "warning": "fails as a warning"}.get(self.meta.get("severity", ""), "")
        head.append(f"\n  {self.meta['id']} · {self.meta.get('category', '')}" + (f" · {sev}" if sev else ""),
                    style="dim")
        return head

    def _body(self, res: CheckResult | None, status: str) -> Text:
        body = Text()
        body.append(f"{WORDS.get(status, status).capitalize()}\n", style=STYLES.get(status, ""))
        if res is None:
            body.append("No result yet: the check is waiting or running.\n")
            return body
        body.append(res.finding.rstrip() + "\n")
        values = res.values or {}
        context = {k: (r.values or {}) for k, r in self.fapp.checks.results.items()}
        sections = (
            ("Planned for", detailtext.plan_lines(values, context)),
            ("Predicted (memory model, not measured)",
             detailtext.prediction_lines(values, with_changes=res.fix is None)),
            ("Values", detailtext.other_lines(values)),
        )
        for title, lines in sections:
            if lines:
                body.append(f"\n{title}\n", style="bold")
                body.append("\n".join("  " + ln for ln in lines) + "\n")
        if res.fix is not None:
            body.append(f"\nFix ({res.fix.id})\n", style="bold")
            lines = detailtext.fix_lines(res.fix, values)
            if lines:
                body.append("\n".join(lines) + "\n")
            if res.fix.shell:
                body.append("  run in a shell: ", style="bold")
                body.append(f"{res.fix.shell}\n")
            if res.fix.changes and res.status in ("fail", "warn"):
                body.append("  f previews the diff below and applies it\n", style="dim")
        if not self.fapp.deterministic and res.duration_s >= 0.5:
            body.append(f"\ntook {res.duration_s:.1f} s\n", style="dim")
        return body

    def compose(self) -> ComposeResult:
        res = self.result
        status = res.status if res else "pending"
        with Vertical(classes="dialog detail"):
            yield Static(self._head(status), classes="dialog-title")
            with DialogBody(classes="dialog-body"):
                yield Static(self._body(res, status), id="detail-body")
                yield Static("", id="detail-diff", classes="-nowrap")
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

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        report_worker_error(self, event)
