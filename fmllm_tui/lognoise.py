"""Which lines of a training log matter and which are library noise (no torch, no Textual).

A fine-tune's log is mostly libraries talking: bitsandbytes saying it could not load a CPU
kernel from the kernels hub, deprecation warnings (each followed by the ``warnings.warn(`` source
line Python prints), progress bars. The lines a person needs (a traceback, an error, a warning a
diagnosis pattern knows, fmllm's own ``[fmllm]`` lines) drown in them. This module sorts lines
into kinds once, for every face that shows a log: the TUI's Run screen folds the noise (hidden
with a key to show it dimmed) and highlights the rest; ``fmllm-run follow`` prints the lines that
matter and leaves the noise out.

The rule, in order:

0. A few known harmless library lines are ``noise`` whatever else they say (bitsandbytes'
   "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'").
1. A line a log-diagnosis pattern (:data:`fmllm_tui.logpatterns.PATTERNS`) matches is what the
   pattern's severity says: ``error``, ``warning``, or ``noise`` for a harmless one (``info``,
   such as a deprecation notice). Noise never hides a known failure.
2. Tracebacks and exception lines are ``error``; ``[fmllm]`` lines are ``fmllm``.
3. Known library chatter is ``noise``: Python's FutureWarning / DeprecationWarning /
   UserWarning lines and their source line, bitsandbytes' kernels-hub message, progress bars.
4. Other lines naming a warning are ``warning``; the rest are ``plain``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

Kind = Literal["error", "warning", "fmllm", "noise", "plain"]

#: Kinds a person should see even when noise is hidden, in the order of how loud they are.
MATTERS: tuple[Kind, ...] = ("error", "warning", "fmllm")

# Python's warnings module prints "path.py:LINE: SomeWarning: text" and then the source line of
# the warn() call, indented. Deprecations are the libraries' business, not the run's.
_PY_WARNING = re.compile(r"^\S.*?:\d+: (?:FutureWarning|DeprecationWarning|PendingDeprecationWarning|"
                         r"UserWarning|RuntimeWarning|SyntaxWarning|ResourceWarning)\b")
_WARN_SOURCE = re.compile(r"^\s+(?:warnings\.warn|warn|logger\.warning(?:_once)?|_warn)\(")
# Known harmless library lines, judged before the diagnosis patterns: bitsandbytes' message names
# a missing module ("No module named 'kernels'") that a missing-module pattern would take for a
# failure, yet only its optional CPU kernel is missing; the run goes on (CUDA has its own).
_BENIGN = re.compile(
    "|".join((
        r"Failed to load CPU gemm_4bit_forward from kernels-community",
        r"`use_cache=True` is incompatible with gradient checkpointing",
        r"torch_dtype is deprecated|`torch_dtype` is deprecated",
    ))
)
_NOISE = re.compile(
    "|".join((
        r"^\s*(?:\S+\s+)?(?:FutureWarning|DeprecationWarning|UserWarning): .*\bdeprecat",
        # tqdm bars and Hugging Face download / shard bars: "42%|████  | 5/12 [00:01<00:02, 3.1it/s]"
        r"\d+%\|[^|]*\|\s*\d+/\d+",
        r"\[\d+:\d+(?::\d+)?<[\d:?]+,\s*[\d.?]+\s*(?:it|s|B|kB|MB|GB)/(?:s|it)\]",
        r"^(?:Loading checkpoint shards|Fetching \d+ files|Downloading shards|Generating train split|Map):?\s",
        r"\[DEBUG\]|^DEBUG:",  # a library's debug logger left on
    ))
)
_ERROR = re.compile(r"^Traceback \(most recent call last\)|^\s*(?:[\w.]+\.)?\w*(?:Error|Exception)(?::|$)|"
                    r"\bCUDA out of memory\b|^Killed\b|\bSegmentation fault\b|\berror:")
_WARNING = re.compile(r"\bwarning\b|^\s*WARNING|\bwarn\b", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_RANK = re.compile(r"^\[(?:rank|default)\d+\]:\s*")


@dataclass(frozen=True)
class LogLine:
    """One log line and what it is."""

    text: str
    kind: Kind

    @property
    def matters(self) -> bool:
        return self.kind in MATTERS


def _pattern_kind(text: str) -> Kind | None:
    """``error``/``warning`` when a log-diagnosis pattern matches this one line (``noise`` for a
    pattern whose severity says it is harmless, such as ``info``), else None."""
    from fmllm_tui.logpatterns import PATTERNS

    for p in PATTERNS:
        if p.rx is None or (p.needles and not any(n in text for n in p.needles)):
            continue
        if p.rx.search(text):
            if p.severity in ("error", "warning"):
                return "error" if p.severity == "error" else "warning"
            return "noise"
    return None


def classify(text: str, after_noise: bool = False) -> Kind:
    """The kind of one line. ``after_noise``: the line before was a Python warning folded as
    noise (its indented source line is noise too)."""
    line = _RANK.sub("", _ANSI.sub("", text))
    if not line.strip():
        return "plain"
    if _BENIGN.search(line):
        return "noise"
    known = _pattern_kind(line)
    if known is not None:
        return known
    if line.startswith("[fmllm]"):
        return "fmllm"
    if after_noise and _WARN_SOURCE.match(line):
        return "noise"
    if _PY_WARNING.match(line) or _NOISE.search(line):
        return "noise"
    if _ERROR.search(line):
        return "error"
    if _WARNING.search(line):
        return "warning"
    return "plain"


def classify_lines(lines: Iterable[str]) -> Iterator[LogLine]:
    """Every line with its kind, in order (a warning's source line follows its warning)."""
    prev_noise = False
    for text in lines:
        kind = classify(text, after_noise=prev_noise)
        prev_noise = kind == "noise"
        yield LogLine(text, kind)


@dataclass(frozen=True)
class Folded:
    """A run of noise lines folded into one: how many, and the first for a hint of what."""

    count: int
    first: str


def fold(lines: Iterable[LogLine]) -> list[LogLine | Folded]:
    """The lines with every run of consecutive noise replaced by one :class:`Folded`."""
    out: list[LogLine | Folded] = []
    for ln in lines:
        if ln.kind != "noise":
            out.append(ln)
        elif out and isinstance(out[-1], Folded):
            out[-1] = Folded(out[-1].count + 1, out[-1].first)
        else:
            out.append(Folded(1, ln.text))
    return out


class LogTail:
    """New complete lines of a growing log file, read incrementally (``fmllm-run follow``)."""

    def __init__(self, path: str, start_at_end: bool = False) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self._after_noise = False
        if start_at_end:
            try:
                with open(path, "rb") as f:
                    self.offset = f.seek(0, 2)
            except OSError:
                pass

    def read_new(self) -> list[LogLine]:
        """The lines completed since the last call, classified (a bar's last frame per line)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        parts = (self.partial + data).split(b"\n")
        self.partial = parts.pop()
        out = []
        for raw in parts:
            text = raw.decode("utf-8", "replace").rsplit("\r", 1)[-1]
            kind = classify(text, after_noise=self._after_noise)
            self._after_noise = kind == "noise"
            out.append(LogLine(text, kind))
        return out
