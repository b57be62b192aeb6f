"""What every fmllm screen shares: worker failures are reported, never lost."""

from __future__ import annotations

from textual.screen import Screen
from textual.worker import Worker, WorkerState


def report_worker_error(node: Screen, event: Worker.StateChanged) -> None:
    """Show a failed worker as a notification (worker state messages do not bubble to the app)."""
    if event.state != WorkerState.ERROR:
        return
    err = event.worker.error
    what = event.worker.description or event.worker.group or event.worker.name
    node.app.notify(f"{what} failed: {type(err).__name__}: {err}", severity="error", timeout=12)


class FmllmScreen(Screen):
    """Base of the four main screens."""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        report_worker_error(self, event)

