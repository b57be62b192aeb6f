"""The log scan's line pre-filter, derived from every pattern of :data:`fmllm_tui.logpatterns.PATTERNS`.

A 1 GB training log is mostly progress bars and loss dicts; only the lines a pattern can match
are worth decoding and matching in Python. Which lines those are is decided here, from the
patterns themselves, so no pattern can be starved by a hand-written trigger list (issue 21: a
compiler failure ending in ``raised:``, a compute-capability warning pasted without its
``UserWarning:`` prefix were invisible to the old list).

Engine: Hyperscan (Intel's multi-regex matcher) compiles every pattern's regex, in prefilter
mode (it may report a line that the exact regex then rejects, never miss one), into one
database that scans a block of the log in a single pass at GB/s. Measured against google-re2's
``re2.Set`` on the same log (bench/RESULTS.md, issue 21 section): ~5x faster, and it reports
*where* each match ends, which ``re2.Set`` does not (a second pass per matching pattern would be
needed). Where the hyperscan wheel is missing (no wheel for the platform) the same expressions
run as one Python ``re`` alternation: identical lines, slower.

Expressions are translated for raw bytes: the Python regexes run on one cleaned line (rank
prefix, ANSI colours and CR-overwritten bar segments removed), so ``^``/``$`` anchors are dropped
(a rank prefix or a colour code may stand before the text: dropping an anchor only widens the
match) and whitespace / negated classes are kept from crossing a newline (the engine finds the
line from where a match ends).

No torch, transformers or textual imports: this runs in the headless doctor.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from fmllm_tui.logpatterns import PATTERNS, PHASE_MARKERS, Pattern

__all__ = ["ENGINE", "STRUCTURAL", "Prefilter", "hs_expression", "prefilter"]

#: Lines the engine itself needs, beside the patterns' own: traceback headers (the walk to the
#: exception line starts there) and frames, exception lines outside a walk (rank-prefixed ones name the
#: first failed rank; an exception with no specific pattern is still reported) and non-finite
#: values in loss dicts (the NaN analysis). Phase banners (logpatterns.PHASE_MARKERS) are added too.
STRUCTURAL: tuple[tuple[str, str], ...] = (
    ("traceback", r"Traceback \(most recent call last\)"),
    # a frame: a traceback pasted without its header is still walked (its phase, where it was cut)
    ("frame", r"File \"[^\"]+\", line \d+"),
    # rich's boxed frame ('│ path.py:12 in f'), or its path line when the box wrapped it
    ("rich_frame", r"\.py:\d+(?: in [\w<>]|\s*│)"),
    ("exception", r"rror|Exception\b"),
    ("nan_loss", r"['\"](?:loss|grad_norm|train_loss)['\"]\s*:\s*'?(?:nan|NaN|-?inf|-?Infinity)"),
)

_WS = r"\t\x0b\x0c\r "  # \s without the newline


def hs_expression(rx: str) -> str:
    """A Python line regex as a raw-bytes expression that matches at least the same lines.

    Drops ``^``/``$`` and ``\\n`` (outside classes), turns ``\\s``/``\\S`` and negated classes into ones that
    never match a newline, and spells ``(?P<name>`` groups as plain groups.
    """
    out: list[str] = []
    i, n = 0, len(rx)
    in_class = False
    while i < n:
        c = rx[i]
        if c == "\\" and i + 1 < n:
            nxt = rx[i + 1]
            if nxt == "s":
                out.append(_WS if in_class else f"[{_WS}]")
            elif nxt == "S" and not in_class:
                out.append(f"[^\\n{_WS}]")
            elif nxt == "n" and not in_class:
                pass  # the end of the line, like $: the engine finds the line from the match's end
            else:
                out.append(rx[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            if rx.startswith("[^", i):
                out.append("[^\\n")
                i += 2
            else:
                out.append("[")
                i += 1
            if i < n and rx[i] == "]":  # a literal ']' first in a class
                out.append("]")
                i += 1
            continue
        if c in "^$":
            i += 1
            continue
        if rx.startswith("(?P<", i):
            out.append("(?:")
            i = rx.index(">", i) + 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _expressions(patterns: list[Pattern]) -> list[tuple[str, str, bool]]:
    """(name, expression, caseless) for every pattern with a regex, then the structural ones."""
    exprs = [(p.id, hs_expression(p.rx.pattern), bool(p.rx.flags & re.IGNORECASE))
             for p in patterns if p.rx is not None]
    exprs += [(name, rx, False) for name, rx in STRUCTURAL]
    exprs += [(f"phase_{ph}", hs_expression(rx), False) for rx, ph in PHASE_MARKERS]
    return exprs


class Prefilter:
    """One compiled multi-pattern matcher over :data:`PATTERNS` and :data:`STRUCTURAL`."""

    def __init__(self, patterns: list[Pattern] | None = None, *, engine: str | None = None):
        self.exprs = _expressions(PATTERNS if patterns is None else patterns)
        self.names = [name for name, _rx, _ci in self.exprs]
        self.engine = engine or _default_engine()
        self._local = threading.local()
        if self.engine == "hyperscan":
            import hyperscan

            db = hyperscan.Database()
            flags = [hyperscan.HS_FLAG_MULTILINE | hyperscan.HS_FLAG_PREFILTER
                     | (hyperscan.HS_FLAG_CASELESS if ci else 0) for _n, _rx, ci in self.exprs]
            db.compile(expressions=[rx.encode() for _n, rx, _ci in self.exprs], ids=list(range(len(self.exprs))),
                       elements=len(self.exprs), flags=flags)
            self._db = db
        else:
            self._each = [re.compile(rx.encode(), re.IGNORECASE if ci else 0) for _n, rx, ci in self.exprs]
            self._lits = _literal_index([(rx, ci) for _n, rx, ci in self.exprs])

    def _scan(self, data: bytes, on_match: Callable[[int, int], Any]) -> None:
        """Call ``on_match(expression index, end offset)`` for the matches in ``data``."""
        if self.engine == "hyperscan":
            import hyperscan

            scratch = getattr(self._local, "scratch", None)
            if scratch is None:  # one scratch space per thread (the TUI scans from a worker thread)
                scratch = self._local.scratch = hyperscan.Scratch(self._db)
            self._db.scan(data, match_event_handler=lambda i, _a, b, _f, _c: on_match(i, b), scratch=scratch)
            return
        # every match contains one of its expression's required literals: find those (C-speed
        # bytes.find), then run the expressions that own the literal on that line only
        lower = data.lower() if any(ci for _l, _e, ci in self._lits) else data
        found: list[tuple[int, int]] = []
        for lit, owners, ci in self._lits:
            hay = lower if ci else data
            pos = hay.find(lit)
            while pos != -1:
                a = data.rfind(b"\n", 0, pos) + 1
                b = data.find(b"\n", pos)
                b = len(data) if b == -1 else b
                line = data[a:b]
                for i in owners:
                    m = self._each[i].search(line)
                    if m:
                        found.append((a + m.end(), i))
                        break
                pos = hay.find(lit, b + 1) if b < len(data) else -1
        for end, i in sorted(found):
            on_match(i, end)

    def line_ends(self, data: bytes, s: int, e: int) -> list[int]:
        """Offsets (absolute, in ``data``) of one match end on each line of data[s:e] a pattern can match."""
        chunk = data[s:e] if (s, e) != (0, len(data)) else data
        ends: list[int] = []
        last_nl = [-1]

        def on_match(_i: int, end: int) -> None:
            if end <= last_nl[0]:
                return  # this line is already reported
            nl = chunk.find(b"\n", end)
            last_nl[0] = nl if nl != -1 else len(chunk)
            ends.append(s + max(end - 1, 0))

        self._scan(chunk, on_match)
        ends.sort()
        return ends

    def names_in(self, text: str) -> set[str]:
        """The pattern ids (and structural names) whose expression matches somewhere in ``text``."""
        data = text.encode("utf-8", "replace")
        if self.engine != "hyperscan":
            return {self.names[i] for i, rx in enumerate(self._each) if rx.search(data)}
        found: set[str] = set()
        self._scan(data, lambda i, _b: found.add(self.names[i]))
        return found


def _required_literals(items: Any) -> list[str] | None:
    """Literals one of which every match of a parsed regex contains (the longest such set), or None."""
    from re import _constants as sc  # type: ignore[attr-defined]

    best: list[str] | None = None
    run: list[str] = []

    def consider(cands: list[str] | None) -> None:
        nonlocal best
        if cands and all(cands) and (best is None or min(map(len, cands)) > min(map(len, best))):
            best = cands

    for op, av in items:
        if op is sc.LITERAL:
            run.append(chr(av))
            continue
        consider(["".join(run)] if run else None)
        run = []
        if op is sc.SUBPATTERN:
            consider(_required_literals(av[3]))
        elif op is sc.BRANCH:
            alts = [_required_literals(b) for b in av[1]]
            if all(alts):
                consider([x for a in alts if a for x in a])
        elif op in (sc.MAX_REPEAT, sc.MIN_REPEAT) and av[0] >= 1:
            consider(_required_literals(av[2]))
    consider(["".join(run)] if run else None)
    return best


def _literal_index(exprs: list[tuple[str, bool]]) -> list[tuple[bytes, list[int], bool]]:
    """(literal, indices of the expressions it stands for, caseless) for the pure-Python engine.

    A literal that contains another one is dropped and its expressions are checked wherever the
    shorter one occurs: fewer passes over the block. An expression with no required literal is
    looked for on every line (none of fmllm's has one; tests check it)."""
    from re import _parser as sp  # type: ignore[attr-defined]

    owners: dict[tuple[bytes, bool], set[int]] = {}
    for i, (rx, ci) in enumerate(exprs):
        lits = _required_literals(sp.parse(rx)) or [""]
        for lit in lits:
            key = ((lit.lower() if ci else lit).encode("utf-8", "replace"), ci)
            owners.setdefault(key, set()).add(i)
    keys = sorted(owners, key=lambda k: len(k[0]))
    kept: list[tuple[bytes, bool]] = []
    for k in keys:
        sub = next((o for o in kept if o[1] == k[1] and o[0] in k[0]), None)
        if sub is not None:
            owners[sub] |= owners[k]
        else:
            kept.append(k)
    return [(lit, sorted(owners[(lit, ci)]), ci) for lit, ci in kept]


def _default_engine() -> str:
    try:
        import hyperscan  # noqa: F401
    except ImportError:  # no wheel for this platform: the same expressions through Python's re
        return "re"
    return "hyperscan"


ENGINE = _default_engine()
_lock = threading.Lock()
_shared: Prefilter | None = None


def prefilter() -> Prefilter:
    """The process-wide pre-filter over PATTERNS (compiled once, ~0.2 s; inherited by forked workers)."""
    global _shared
    if _shared is None:
        with _lock:
            if _shared is None:
                _shared = Prefilter()
    return _shared
