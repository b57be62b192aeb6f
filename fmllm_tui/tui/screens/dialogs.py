"""Modal dialogs: yes/no confirm (with a diff preview), a message, and the key help."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static


def diff_text(diff: str) -> Text:
    """A unified diff coloured line by line (kept plain enough for NO_COLOR and 256 colours)."""
    out = Text()
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            style = "bold"
        elif line.startswith("@@"):
            style = "cyan"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        else:
            style = ""
        out.append(line + "\n", style=style)
    return out


class ConfirmScreen(ModalScreen[bool]):
    """Ask before doing something: y/Enter confirms, n/Esc cancels."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, body: str, *, yes: str = "Yes", no: str = "Cancel",
                 diff: bool = False) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.body = body
        self.yes = yes
        self.no = no
        self.is_diff = diff

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="dialog-title", markup=False)
            with VerticalScroll(classes="dialog-body"):
                yield Static(diff_text(self.body) if self.is_diff else Text(self.body), id="dialog-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="primary")
                yield Button(f"{self.no} (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#yes", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class MessageScreen(ModalScreen[None]):
    """A message a person must read (an error with what, where and what to do)."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, title: str, body: str) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="dialog-title", markup=False)
            with VerticalScroll(classes="dialog-body"):
                yield Static(Text(self.body), id="dialog-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close (esc)", id="close", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)


def key_help() -> list[tuple[str, list[tuple[str, str]]]]:
    """Every key, per screen, read from the bindings themselves so the help cannot drift."""
    from fmllm_tui.tui.app import FmllmApp
    from fmllm_tui.tui.screens.checks import ChecksScreen
    from fmllm_tui.tui.screens.detail import CheckDetailScreen

    sections: list[tuple[str, list[Binding]]] = [
        ("Everywhere", list(FmllmApp.BINDINGS)),  # type: ignore[arg-type]
        ("Checks", list(ChecksScreen.BINDINGS)),  # type: ignore[arg-type]
        ("Check details", list(CheckDetailScreen.BINDINGS)),  # type: ignore[arg-type]
    ]
    for modname, clsname, title in (
        ("fmllm_tui.tui.screens.memory", "MemoryScreen", "Memory"),
        ("fmllm_tui.tui.screens.presets", "PresetsScreen", "Presets"),
        ("fmllm_tui.tui.screens.run", "RunScreen", "Run"),
    ):
        try:
            mod = __import__(modname, fromlist=[clsname])
            sections.append((title, list(getattr(mod, clsname).BINDINGS)))
        except (ImportError, AttributeError):
            continue
    sections.append(("Dialogs", list(ConfirmScreen.BINDINGS)))  # type: ignore[arg-type]
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for title, bindings in sections:
        rows: dict[str, list[str]] = {}
        for b in bindings:
            if not isinstance(b, Binding) or not b.description:
                continue
            keys = " / ".join(_key_name(k) for k in b.key.split(","))
            rows.setdefault(b.description, []).append(keys)
        out.append((title, [(" / ".join(ks), desc) for desc, ks in rows.items()]))
    return out


_KEY_NAMES = {"question_mark": "?", "slash": "/", "escape": "esc", "enter": "⏎", "left": "←",
              "right": "→", "up": "↑", "down": "↓", "minus": "-", "plus": "+", "equals_sign": "="}


def _key_name(key: str) -> str:
    key = key.strip()
    return _KEY_NAMES.get(key, key)


class HelpScreen(ModalScreen[None]):
    """Every key of every screen (``?`` or F1)."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close")]

    def compose(self) -> ComposeResult:
        text = Text()
        for title, rows in key_help():
            text.append(f"{title}\n", style="bold underline")
            for keys, desc in rows:
                text.append(f"  {keys:<14}", style="bold")
                text.append(f" {desc}\n")
            text.append("\n")
        text.append("The mouse works too (click a tab, a row, a button); nothing needs it.\n", style="dim")
        text.append("Training runs in its own session: quitting or losing SSH leaves it running; "
                    "start fmllm-tui again to reattach.", style="dim")
        with Vertical(classes="dialog help"):
            yield Static("Keys", classes="dialog-title")
            with VerticalScroll(classes="dialog-body"):
                yield Static(text, id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)
