"""The one-line bar at the top of every screen: the four screens with their keys, and the config."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.events import Click
from textual.widgets import Static

SCREENS: tuple[tuple[str, str, str], ...] = (
    ("checks", "1", "Checks"),
    ("memory", "2", "Memory"),
    ("presets", "3", "Presets"),
    ("run", "4", "Run"),
)


class NavTab(Static):
    """One screen's name; clicking it switches there (the mouse is optional: keys 1-4)."""

    def __init__(self, mode: str, key: str, label: str, active: bool) -> None:
        super().__init__(f"{key} {label}", markup=False, classes="nav-tab" + (" -active" if active else ""))
        self.mode = mode

    async def on_click(self, event: Click) -> None:
        await self.app.run_action(f"show('{self.mode}')")


class NavBar(Horizontal):
    """Screens on the left, the config path and the planning target on the right."""

    def __init__(self, active: str) -> None:
        super().__init__(id="navbar")
        self.active = active

    def compose(self) -> ComposeResult:
        yield Static(" fmllm ", id="nav-brand")
        for mode, key, label in SCREENS:
            yield NavTab(mode, key, label, mode == self.active)
        yield Static(self._info(), id="nav-info", markup=False)

    def _info(self) -> str:
        app = self.app
        spec = getattr(app, "spec", None)
        if spec is None:
            return ""
        text = spec.config
        if spec.gpu:
            text += f" · for {spec.gpu}"
        elif spec.vram:
            text += f" · for {spec.vram}"
        if spec.offline:
            text += " · offline"
        return text
