"""A stacked bar of predicted memory per component group, against the budget."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from fmllm_tui.tui.widgets.status import human_bytes


class StackedBar(Widget):
    """Three lines: the bar, the budget marker, the legend of the groups.

    Each group has its own fill character as well as its colour, so the bar still reads under
    NO_COLOR or on a monochrome terminal.
    """

    DEFAULT_CSS = "StackedBar { height: 3; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.groups: list[tuple[str, str, str, int]] = []
        self.budget: int | None = None
        self.low: int | None = None
        self.high: int | None = None

    def set_data(self, groups: list[tuple[str, str, str, int]], budget: int | None,
                 low: int | None = None, high: int | None = None) -> None:
        self.groups, self.budget, self.low, self.high = groups, budget, low, high
        self.refresh()

    def render(self) -> Text:
        width = max(self.size.width, 20)
        total = sum(g[3] for g in self.groups)
        if not self.groups or total <= 0:
            return Text("no prediction yet", style="dim")
        scale_max = max(total, self.high or 0, self.budget or 0) * 1.04
        per_cell = scale_max / width
        cells: list[tuple[str, str]] = []
        acc = 0
        for _label, fill, colour, b in self.groups:
            acc += b
            end = min(width, round(acc / per_cell))
            n = max(end - len(cells), 1 if len(cells) < width else 0)
            cells.extend([(fill, colour)] * n)
        cells.extend([("·", "dim")] * (width - len(cells)))
        cut = width if self.budget is None else int(self.budget / per_cell)
        bar = Text()
        for i, (ch, style) in enumerate(cells[:width]):
            # memory past the budget is drawn reversed: visible with or without colour
            bar.append(ch, style=style + (" reverse" if i >= cut and ch != "·" else ""))
        marker = Text(" " * width)
        if self.budget is not None:
            pos = min(width - 1, int(self.budget / per_cell))
            right = f"▲ budget {human_bytes(self.budget)}"
            left = f"budget {human_bytes(self.budget)} ▲"
            if pos + len(right) <= width:
                marker = Text(" " * pos + right, style="bold")
            else:  # no room on the right of the marker: write the label to its left
                marker = Text(" " * max(0, pos - len(left) + 1) + left, style="bold")
        legend = Text()
        for label, fill, colour, b in self.groups:
            legend.append(fill, style=colour)
            legend.append(f" {label} {b / 2**30:.1f}G  ")
        legend.truncate(width, overflow="ellipsis")
        out = Text()
        out.append_text(bar)
        out.append("\n")
        out.append_text(marker)
        out.append("\n")
        out.append_text(legend)
        return out
