"""Modal dialogs: yes/no confirm (with a diff preview), a message, and the key help."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, ScrollableContainer, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Static

_T = TypeVar("_T")


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


#: Keys that scroll a dialog's body whichever widget has focus (a button does by default): a
#: long diff must be readable at 80x24 without the mouse. Priority: the focused body's own
#: (hidden) scroll keys would otherwise take the footer's place.
SCROLL_BINDINGS = [
    Binding("down", "scroll_body('down')", "Scroll", key_display="↓↑", show=True, priority=True),
    Binding("up", "scroll_body('up')", "Scroll up", show=False, priority=True),
    Binding("pagedown", "scroll_body('page_down')", "Page", key_display="PgDn", show=True, priority=True),
    Binding("pageup", "scroll_body('page_up')", "Page up", key_display="PgUp", show=False, priority=True),
    Binding("end", "scroll_body('end')", "Bottom", show=False, priority=True),
    Binding("home", "scroll_body('home')", "Top", show=False, priority=True),
    Binding("right", "scroll_body('right')", "Scroll right", show=False, priority=True),
    Binding("left", "scroll_body('left')", "Scroll left", show=False, priority=True),
]

_SCROLLS = {"down": "scroll_down", "up": "scroll_up", "page_down": "scroll_page_down",
            "page_up": "scroll_page_up", "end": "scroll_end", "home": "scroll_home",
            "right": "scroll_right", "left": "scroll_left"}


class DialogBody(ScrollableContainer):
    """A dialog's scrolling body: its text never pushes the buttons out of the dialog (they are
    docked at the bottom); Tab reaches it, and the wheel scrolls it."""


class ScrollDialog(ModalScreen[_T]):
    """A dialog with a scrolling body, buttons docked below it and the screen's footer showing
    the dialog's own keys (not the keys of the screen underneath)."""

    # Ctrl-C in a dialog says how to quit too (Textual's copy binding skips to nothing here)
    BINDINGS = [Binding("ctrl+c", "app.help_quit", show=False)]

    def on_mount(self) -> None:
        self.call_after_refresh(self._fit_body)

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit_body)

    def _fit_body(self) -> None:
        """Cap the body at the room the title and buttons leave (a CSS percentage is of the whole
        dialog, so a title of several lines pushed the diff's last lines under the buttons)."""
        bodies = self.query(DialogBody)
        if not bodies:
            return
        body = bodies.first()
        dialog = body.parent
        if dialog is None:
            return
        others = sum(w.outer_size.height for w in dialog.children if w is not body and w.display)
        footer = sum(f.outer_size.height for f in self.query(Footer))
        room = self.size.height - footer - 2 - others  # 2: the dialog's border
        body.styles.max_height = max(3, room)

    def action_scroll_body(self, how: str) -> None:
        """Scroll the body whichever widget has focus (PgDn on the Apply button scrolls the diff)."""
        body = self.query_one(DialogBody)
        getattr(body, _SCROLLS[how])(animate=False)


class ConfirmScreen(ScrollDialog[bool]):
    """Ask before doing something: y/Enter confirms, n/Esc cancels; the body scrolls."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
        *SCROLL_BINDINGS,
    ]

    def __init__(self, title: str, body: str, *, yes: str = "Yes", no: str = "Cancel",
                 diff: bool = False, note: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.body = body
        self.note = note
        self.yes = yes
        self.no = no
        self.is_diff = diff
        # the footer names the keys as the buttons do ("y Apply", not "y Yes")
        keys = self._bindings.key_to_bindings
        for key, label in (("y", yes), ("n", no), ("escape", no)):
            keys[key] = [dataclasses.replace(b, description=label) for b in keys.get(key, [])]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="dialog-title", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="primary", compact=True)
                yield Button(f"{self.no} (n)", id="no", compact=True)
            with DialogBody(classes="dialog-body" + (" -diff" if self.is_diff else "")):
                if self.note:
                    yield Static(Text(self.note.rstrip() + "\n", style="yellow"), id="dialog-note")
                # a diff is not wrapped (a wrapped line loses its +/- column): it scrolls sideways
                text = diff_text(self.body) if self.is_diff else Text(self.body)
                yield Static(text, id="dialog-text", classes="-nowrap" if self.is_diff else "")
        yield Footer()

    def on_mount(self) -> None:  # Textual then runs ScrollDialog.on_mount (a base's handler runs too)
        self.query_one("#yes", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class MessageScreen(ScrollDialog[None]):
    """A message a person must read (an error with what, where and what to do)."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close"), *SCROLL_BINDINGS]

    def __init__(self, title: str, body: str) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="dialog-title", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close (esc)", id="close", variant="primary", compact=True)
            with DialogBody(classes="dialog-body"):
                yield Static(Text(self.body), id="dialog-text")
        yield Footer()

    def on_mount(self) -> None:  # then ScrollDialog.on_mount
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
            if not isinstance(b, Binding) or not b.description or b.action.startswith("scroll_body"):
                continue
            keys = " / ".join(_key_name(k) for k in b.key.split(","))
            rows.setdefault(b.description, []).append(keys)
        if title == "Dialogs":  # the scroll keys, once, in one row
            rows["Scroll a long diff or message"] = ["↓ ↑ PgDn PgUp Home End ← →"]
        out.append((title, [(" / ".join(ks), desc) for desc, ks in rows.items()]))
    return out


_KEY_NAMES = {"question_mark": "?", "slash": "/", "escape": "esc", "enter": "⏎", "left": "←",
              "right": "→", "up": "↑", "down": "↓", "minus": "-", "plus": "+", "equals_sign": "="}


def _key_name(key: str) -> str:
    key = key.strip()
    return _KEY_NAMES.get(key, key)


class HelpScreen(ScrollDialog[None]):
    """Every key of every screen (``?`` or F1)."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close"), *SCROLL_BINDINGS]

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
            with DialogBody(classes="dialog-body"):
                yield Static(text, id="help-text")
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)
