"""What every fmllm screen shares: worker failures are reported, never lost."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.screen import Screen
from textual.worker import Worker, WorkerState

if TYPE_CHECKING:
    from fmllm_tui.tui.app import FmllmApp


def report_worker_error(node: Screen, event: Worker.StateChanged) -> None:
    """Show a failed worker as a notification (worker state messages do not bubble to the app)."""
    if event.state != WorkerState.ERROR:
        return
    err = event.worker.error
    what = event.worker.description or event.worker.group or event.worker.name
    node.app.notify(f"{what} failed: {type(err).__name__}: {err}", severity="error", timeout=12)


class FmllmScreen(Screen):
    """Base of the four main screens."""

    @property
    def fapp(self) -> FmllmApp:
        """The app, typed as fmllm's (its spec, check results, config edits)."""
        return self.app  # type: ignore[return-value]

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        report_worker_error(self, event)

