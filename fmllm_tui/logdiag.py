"""Training-log diagnosis: why did the run die, in plain words, with the fix.

``scan_file(path)`` / ``scan_lines(lines)`` read a log of any size in one streaming pass and
return :class:`Hit` objects: the failure (pattern id from :data:`PATTERNS`), file:line, the
matched excerpt (secrets masked), its cause with the numbers the log gave, and the fix.

How it stays fast and flat on a 1 GB log: the input is read in large binary blocks; one
multi-pattern pass (:mod:`fmllm_tui.logprefilter`: every pattern's regex compiled together,
Hyperscan where installed) finds the lines any pattern can match; only those lines (plus a short
window after them, and the whole traceback after a traceback header) are decoded and matched
against the detailed regexes. Loss dicts and progress bars are sampled per block (first/last
entries and the ones just before each hit), which is enough for the multi-line analyses (NaN
after N finite steps, loss flat at ln(vocab), OOM at a late step, eval vs train phase). Big files
are split across a few worker processes (MAX_WORKERS); results are merged in file order, and
they are the same as a single streaming pass.

No torch, transformers or textual imports: this runs in the headless doctor.
"""

from __future__ import annotations

import bisect
import math
import os
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from fmllm_tui.findings import Fix
from fmllm_tui.logadvice import CONSEQUENCES, RunSettings, oom_fix, rank_key
from fmllm_tui.logpatterns import (
    BY_ID,
    FIX_ALLOC_CONF,
    FIX_DTYPE_FP16_OFF,
    FIX_LR,
    FIX_OTHER_PROCESS,
    FIX_READ_FIRST_RANK,
    PATTERNS,
    SIZE,
    Pattern,
    fix,
    hub_401_is_gated,
    human,
    marker_phase,
    pip_name,
    released_model_types,
    size_bytes,
)
from fmllm_tui.logprefilter import prefilter
from fmllm_tui.redact import mask_data, mask_text

__all__ = ["Hit", "PATTERNS", "Pattern", "RunSettings", "scan_file", "scan_lines"]

# --------------------------------------------------------------------------------------------
# Public result type
# --------------------------------------------------------------------------------------------


@dataclass
class Hit:
    """One diagnosed failure in a log, de-duplicated over its repeats."""

    pattern: str
    file: str
    line: int  # first line (1-based)
    last_line: int
    count: int
    excerpt: str
    cause: str
    severity: str
    fix: Fix | None
    values: dict[str, Any] = field(default_factory=dict)
    phase: str = "load"  # logadvice.PHASES: load, first_step, training, eval, predict, generation, save, merge

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (the shape fmllm-check --json and the TUI use)."""
        return {
            "pattern": self.pattern,
            "file": self.file,
            "line": self.line,
            "last_line": self.last_line,
            "excerpt": self.excerpt,
            "count": self.count,
            "cause": self.cause,
            "fix": self.fix.to_json() if self.fix else None,
            "severity": self.severity,
            "phase": self.phase,
            "values": self.values,
        }


# --------------------------------------------------------------------------------------------
# Block scanning (pure bytes work; runs in worker processes for big files)
# --------------------------------------------------------------------------------------------

#: The line that opens a traceback: the walk to its exception line starts there. Which other lines
#: are decoded is decided by :mod:`fmllm_tui.logprefilter`, derived from every pattern.
_TB_HEADER = b"Traceback (most recent call last)"

BLOCK = 8 << 20  # bytes per block
LOOKAHEAD = 256 << 10  # bytes past a block's end available for windows after a hit
CTX_LINES = 16  # lines kept after an ordinary hit (multi-line messages)
CTX_LINES_LONG = 120  # after a ChildFailedError report header
CTX_WARN_LINES = 3  # after a warning or other non-error hit
TB_MAX_LINES = 600  # longest traceback window walked
LOSS_SAMPLES = 64  # loss dicts kept from each end of a block
BACK_WINDOW = 64 << 10  # how far back to look for the progress bar / loss before an error
MAX_LINE = 8192  # bytes of one line decoded at most
WRAP_MIN = 60  # a line this long may be a message a terminal wrapped: matched joined with the next one too
WRAP_HEAD = 64 << 10  # the long lines starting this close to the input's start are also pre-filtered joined with the next
LOSS_TAIL = 512  # loss samples kept (the most recent) for the loss analyses
PARALLEL_MIN = 64 << 20  # files at least this big are split over worker processes
MAX_WORKERS = 4  # worker processes for big files (bounded: each holds ~2 blocks in flight)

# record kinds
CTX, HIT, BAR, LOSS = 0, 1, 2, 3

_EXC_LINE_B = re.compile(
    rb"^\s*(?:\[(?:rank|default)\d+\]:\s?)?(?:[A-Za-z_]\w*\.)*(?:[A-Z]\w*)?(?:Error|Exception|Exit|Interrupt|Failure|Failed|Invalid|Iteration)\b(?::|\s*$)"
)
_LOSS_KEYS = (b"'loss': ", b'"loss": ')


def _segment(data: bytes, pos: int, lo: int, hi: int) -> tuple[int, int]:
    """Bounds of the CR/LF-delimited segment around ``pos`` inside [lo, hi).

    Looks for the newline first, then for a CR only inside that line, so the cost is the
    line's length, not the distance to the next CR somewhere in the block.
    """
    nl = data.rfind(b"\n", lo, pos)
    start = nl + 1 if nl != -1 else lo
    cr = data.rfind(b"\r", start, pos)
    a = cr + 1 if cr != -1 else start
    n = data.find(b"\n", pos, hi)
    lim = n if n != -1 else hi
    r = data.find(b"\r", pos, lim)
    return a, (r if r != -1 else lim)


def _line_text(data: bytes, a: int, b: int) -> bytes:
    """A whole \\n-line as a terminal shows it: the last non-empty CR segment."""
    chunk = data[a : min(b, a + 4 * MAX_LINE)]
    if b"\r" in chunk:
        parts = [p for p in chunk.split(b"\r") if p.strip()]
        chunk = parts[-1] if parts else b""
    return chunk[:MAX_LINE]


def _next_line_end(data: bytes, p: int, end_all: int, eof: bool) -> int | None:
    """End of the line starting at ``p`` (its newline, or a cut at 4 * MAX_LINE), or None when the
    line runs past the data we have and more is coming: never keep half a line."""
    q = data.find(b"\n", p, min(end_all, p + 4 * MAX_LINE))
    if q == -1:
        if not eof and p + 4 * MAX_LINE >= end_all:
            return None
        q = min(end_all, p + 4 * MAX_LINE)
    return q


class _ChunkScan:
    """One block's scan: the lines any pattern can match, the windows around them and the samples
    (progress bars, loss dicts) the multi-line analyses read. ``data`` may extend past ``e``
    (lookahead for windows); ``eof`` says whether it ends the input."""

    def __init__(self, data: bytes, s: int, e: int, eof: bool, base: int = 0):
        self.data, self.s, self.e, self.eof = data, s, e, eof
        self.base = base  # the input's offset of data[0]
        self.end_all = len(data)
        self.pf = prefilter()
        self.hits: dict[int, tuple[int, bytes, int]] = {}  # seg_start -> (seg_end, text, kind)
        self.queue: list[tuple[int, bool]] = []  # (line start of a HIT, is a traceback header to walk)
        self.back_done = s

    def add(self, a: int, b: int, kind: int) -> None:
        """Keep data[a:b] as a record of ``kind`` (a HIT upgrades a CTX) and queue a new HIT's window."""
        old = self.hits.get(a)
        text = old[1] if old is not None else self.data[a : min(b, a + MAX_LINE)]
        if kind == CTX and old is None and a >= self.e and self.pf.line_ends(text, 0, len(text)):
            # a window line past the block's end: the next block will not look at it again
            # (the engine's watermark skips it), so it is judged here like any trigger line
            kind = HIT
        if old is None or (old[2] != HIT and kind == HIT):
            self.hits[a] = (b, text, kind)
            if kind == HIT:
                la = self.data.rfind(b"\n", 0, a) + 1
                self.queue.append((la, _TB_HEADER in text and (old is None or a >= self.e)))

    def run(self) -> tuple[int, list[tuple[int, int, bytes, int]]]:
        """(newlines in [s, e), records): see :func:`_scan_chunk`."""
        for pos in self.pf.line_ends(self.data, self.s, self.e):
            self.add(*_segment(self.data, pos, self.s, self.end_all), HIT)
        self._wrapped_pairs()
        self._windows()
        self._block_samples()
        return self._records()

    def _wrapped_pairs(self) -> None:
        """A message a terminal or a paste hard-wrapped mid-word is in neither half whole, so the pre-filter
        passes neither line. A pasted excerpt is short: each long line near the input's start (WRAP_HEAD) is
        pre-filtered joined with the next line too, and kept when the pair can match (the engine matches it
        joined across the cut). Which lines those are depends on their offsets only, never on the blocks."""
        data, s, e = self.data, self.s, self.e
        stop = min(e, WRAP_HEAD - self.base)
        if stop <= s:
            return
        lim = stop
        for _ in range(2):  # through the line after the last candidate
            q = data.find(b"\n", lim, self.end_all)
            lim = self.end_all if q == -1 else q + 1
            if q == -1:
                break
        lines = data[s:lim].split(b"\n")
        if lim == self.end_all and not self.eof and not data.endswith(b"\n", 0, lim):
            lines[-1] = b""  # a partial last line is not a line yet: the next block pairs it
        starts, cand, pos = [], [], s
        for i, ln in enumerate(lines[:-1]):
            if pos >= stop:
                break
            if len(ln) >= WRAP_MIN:
                cand.append(i)
                starts.append(pos)
            pos += len(ln) + 1
        if not cand:
            return
        offs, o = [], 0
        for i in cand:
            offs.append(o)
            o += len(lines[i]) + len(lines[i + 1]) + 1
        buf = b"\n".join(lines[i] + lines[i + 1] for i in cand)
        for end in self.pf.line_ends(buf, 0, len(buf)):
            k = bisect.bisect_right(offs, end) - 1
            self.add(starts[k], starts[k] + len(lines[cand[k]]), HIT)

    def _windows(self) -> None:
        """Windows after hits (the whole traceback after a header), and the progress bar / loss dict
        just before error-ish hits."""
        data, done = self.data, set()
        while self.queue:
            item = self.queue.pop()
            if item in done:
                continue
            done.add(item)
            la, is_header = item
            ln_end = data.find(b"\n", la, self.end_all)
            if ln_end == -1:
                continue
            if is_header:
                _walk_traceback(data, ln_end, self.end_all, self.add, self.eof)
                continue
            first = data[la : min(ln_end, la + MAX_LINE)]
            if _TB_HEADER in first:
                self.queue.append((la, True))
            elif la > self.s:
                # the frames just above a hit whose traceback header is not in the log (an excerpt
                # pasted from the middle, or a message printed without its exception class)
                _walk_back(data, la, self.s, self.add)
            self._after(ln_end, first)
            if la < self.e and (b"rror" in first or b"nan" in first or b"Killed" in first):
                self._before(la, ln_end)

    def _after(self, ln_end: int, first: bytes) -> None:
        """The lines after a hit's line: a long report after a launcher's failure header, a message
        after an error, its first lines after a warning."""
        if b"ChildFailed" in first or b"FAILED" in first:
            n_ctx = CTX_LINES_LONG
        elif b"rror" in first or b"Killed" in first:
            n_ctx = CTX_LINES
        else:
            n_ctx = CTX_WARN_LINES  # a warning's message may start on the next line
        p = ln_end + 1
        for _ in range(n_ctx):
            if p >= self.end_all:
                break
            q = _next_line_end(self.data, p, self.end_all, self.eof)
            if q is None:
                break
            if p not in self.hits:
                self.add(p, q, CTX)
                if self.hits[p][2] == CTX:
                    self.hits[p] = (q, _line_text(self.data, p, q), CTX)
            p = q + 1

    def _before(self, la: int, ln_end: int) -> None:
        """The progress bars and the loss dict before an error, up to the end of its line (tqdm often
        draws on the same line, before a CR)."""
        lo = max(self.back_done if self.back_done <= la else self.s, la - BACK_WINDOW, self.s)
        _bars_before(self.data, lo, ln_end, self.add)
        for key in _LOSS_KEYS:
            lp = self.data.rfind(key, lo, ln_end)
            if lp != -1:
                self.add(*_segment(self.data, lp, lo, ln_end), LOSS)
        self.back_done = ln_end

    def _block_samples(self) -> None:
        """The last progress bar of the block, and loss dicts from both of its ends."""
        data, s, e = self.data, self.s, self.e
        bar = data.rfind(b"%|", max(s, e - BACK_WINDOW), e)
        if bar != -1:
            a, b = _segment(data, bar, s, self.end_all)
            if a >= s:
                self.add(a, b, BAR)
        for key in _LOSS_KEYS:
            found: list[int] = []
            pos = data.find(key, s, e)
            while pos != -1 and len(found) < LOSS_SAMPLES:
                found.append(pos)
                pos = data.find(key, pos + 8, e)
            if not found:
                continue
            stop, hi = found[-1] + 8, e
            for _ in range(LOSS_SAMPLES):
                pos = data.rfind(key, stop, hi)
                if pos == -1:
                    break
                found.append(pos)
                hi = pos
            for pos in found:
                self.add(*_segment(data, pos, s, self.end_all), LOSS)
            break  # one loss style per block is enough

    def _records(self) -> tuple[int, list[tuple[int, int, bytes, int]]]:
        """The kept lines in file order, each with its line number relative to the block's start."""
        s, e, data = self.s, self.e, self.data
        records: list[tuple[int, int, bytes, int]] = []
        prev, rel = s, 0
        for a in sorted(self.hits):
            if a < s:
                continue
            b, text, kind = self.hits[a]
            if a >= e and kind not in (CTX, HIT):
                continue
            rel += data.count(b"\n", prev, a) if a > prev else 0  # bytes.count: faster here than a numpy mask
            prev = a
            records.append((a, rel, text, kind))
        nl = rel + data.count(b"\n", prev, e) if prev <= e else data.count(b"\n", s, e)
        return nl, records


def _scan_chunk(data: bytes, s: int, e: int, eof: bool, base: int = 0) -> tuple[int, list[tuple[int, int, bytes, int]]]:
    """Find the interesting lines whose start lies in data[s:e].

    Returns (newlines in [s, e), records) where a record is (offset, rel_line, text, kind) and
    rel_line counts newlines between s and the record. ``data`` may extend past ``e`` (lookahead
    for windows); ``eof`` says whether it ends the input.
    """
    return _ChunkScan(data, s, e, eof, base).run()


def _walk_traceback(data: bytes, p: int, end_all: int, add: Callable[[int, int, int], None], eof: bool) -> None:
    """From the end of a traceback header's line, keep every line up to and just past the exception."""
    p += 1
    after_exc = -1
    for _ in range(TB_MAX_LINES):
        if p >= end_all:
            return
        q = _next_line_end(data, p, end_all, eof)
        if q is None:
            return
        text = _line_text(data, p, q)
        if after_exc >= 0:
            add(p, q, CTX)
            after_exc += 1
            if after_exc >= CTX_LINES:
                return
        elif _EXC_LINE_B.match(text) and not text[:1].isspace():
            add(p, q, HIT)
            after_exc = 0
        else:
            add(p, q, CTX)
        p = q + 1


_FRAMEISH_B = re.compile(rb"^(?:\[(?:rank|default)\d+\]:)?\s+\S|^(?:\[(?:rank|default)\d+\]:\s?)?File ")


def _walk_back(data: bytes, la: int, s: int, add: Callable[[int, int, int], None]) -> None:
    """The frames just above an exception line whose traceback header is not in the log (an
    excerpt pasted from the middle of a traceback): kept so the phase and culprit can be read."""
    end = la - 1
    for _ in range(TB_MAX_LINES // 4):
        if end <= s:
            return
        a = data.rfind(b"\n", s, end) + 1
        a = max(a, s)
        text = data[a:end]
        if _TB_HEADER in text or not _FRAMEISH_B.match(text):
            return  # the header (walked forward already) or the text before the traceback
        add(a, end, CTX)
        end = a - 1


_BAR_TOTAL = re.compile(rb"\|\s*\d+/(\d+)\s*\[")


def _bars_before(data: bytes, lo: int, hi: int, add: Callable[[int, int, int], None]) -> None:
    """The last progress bar before an error, and the last one of a different bar before it
    (the training bar under an evaluation bar), so the phase and step can be told."""
    first_total = None
    pos = data.rfind(b"%|", lo, hi)
    for _ in range(400):
        if pos == -1:
            return
        a, b = _segment(data, pos, lo, hi)
        m = _BAR_TOTAL.search(data, a, b)
        total = m.group(1) if m else None
        if first_total is None:
            first_total = total or b""
            add(a, b, BAR)
        elif total is not None and total != first_total:
            add(a, b, BAR)
            return
        pos = data.rfind(b"%|", lo, a)


def _scan_range(path: str, s: int, e: int, size: int, lookahead: int) -> tuple[int, int, int, list[tuple[int, int, bytes, int]]]:
    """Worker entry: scan the lines starting in [s, e) of a file. Returns absolute offsets."""
    lo = max(0, s - 1)
    with open(path, "rb") as f:
        f.seek(lo)
        data = f.read(e - lo + lookahead)
    eof = lo + len(data) >= size
    # align both ends to line starts exactly as the neighbouring blocks do
    if s == 0:
        rs = 0
    else:
        k = data.find(b"\n", 0, e - lo)
        rs = k + 1 if k != -1 else s - lo
    rel_e = e - lo
    if e >= size:
        re_ = len(data)
    else:
        k = data.find(b"\n", rel_e - 1)
        re_ = k + 1 if k != -1 else (len(data) if eof else rel_e)
    if rs > re_:
        rs = re_
    nl, recs = _scan_chunk(data, rs, re_, eof, lo)
    return lo + rs, lo + re_, nl, [(lo + a, rel, t, k) for a, rel, t, k in recs]


# --------------------------------------------------------------------------------------------
# Line cleaning and parsing helpers (main process)
# --------------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_RANK = re.compile(r"^\s*\[(?:rank|default)(\d+)\]:\s?")
# what tools put before each line of a log (removed before the line is read, so frames, exception lines
# and anchored patterns read the same): an ISO timestamp (docker logs -t, CI runners, Python logging's
# 'time - LEVEL - '), syslog/journald's 'Mon DD hh:mm:ss host prog[pid]: ', pdsh's 'IP: ' (DeepSpeed on
# several nodes), mpirun's '[1,0]<stderr>:', a markdown quote '> ' and pytest's error mark 'E       '
_LINE_PREFIX = re.compile(
    r"^(?:\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?"
    r"(?: - (?:[\w.]+ - )?(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL) - | \| | )"
    r"|[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d [\w.-]+ [\w./-]+(?:\[\d+\])?: "
    r"|(?:\d{1,3}\.){3}\d{1,3}: |\[\d+,\d+\]<std(?:out|err)>:\s?|> ?(?!>)|E {3,}(?=\S))"
)
_FRAME = re.compile(
    r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+)(?:, in (?P<func>\S+))?'
    # rich's boxed frame 'path.py:12 in f'; a long path wraps inside the box, cutting the line number
    # or the function off: the next box line then holds the rest ('0 in save_model')
    r"|^\s*[│|]\s*(?P<rfile>\S+\.py):(?P<rline>\d+)(?: in (?P<rfunc>[\w<>.]+)|\s*[│|]?\s*$)"
    # IPython's "File path.py:12, in f"; VS Code's notebooks print the path as a link "[path.py:12](url)"
    r"|^\s*File \[?(?P<ifile>[^\s\[\]]+\.py):(?P<iline>\d+)(?:\]\([^)\s]*\))?, in (?P<ifunc>[\w<>.]+)"
    # older IPython and Colab: "path.py in f(args)", the path maybe a link "[path.py](url)", no line number
    r"|^\s*\[?(?P<cfile>[^\s\[\]]+\.py)\]?(?:\([^)\s]*\))? in (?P<cfunc>[\w<>.]+)\("
)
_EXC = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*(?P<type>(?:[A-Z]\w*)?(?:Error|Exception|Exit|Interrupt|Failure|Invalid|Iteration)|KeyboardInterrupt)(?::\s?(?P<msg>.*))?$"
)
# a line that reports an error itself, not a warning or a note: a native library's 'Error ... at line N in file x.cu',
# a logger's 'ERROR', a C++ 'terminate called' (Python's 'XError: msg' is _EXC)
_ERROR_MARK = re.compile(r"^\W{0,3}(?:error\b|fatal\b|critical\b|terminate called)", re.I)
_LAUNCHER_REPORTS = {"ranks_failed", "launcher_failed"}  # a launcher saying its process failed, not why
_FUNC_REST = re.compile(r"^ ?[\w<>.]+$")  # the rest of a frame's function name after a wrap
_RICH_REST = re.compile(r"^\s*[│|]\s*(\d*) in ([\w<>.]+)\s*[│|]?\s*$")  # the same inside rich's box
_SPAN_PATTERNS = [p for p in PATTERNS if p.span]
_CHAIN = ("During handling of the above exception", "The above exception was the direct cause")
_BAR_ANY = re.compile(r"(?P<desc>[A-Za-z][\w ()=.,-]*?)?:?\s*(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)")
_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+|nan|NaN|-?inf|-?Infinity)"
_DICT_VAL = {
    k: re.compile(r"['\"]" + k + r"['\"]:\s*'?(" + _NUM + r")")
    for k in ("loss", "grad_norm", "epoch", "learning_rate", "step", "global_step", "current_steps")
}
_SITE = re.compile(r"(?:site|dist)-packages[/\\]([A-Za-z_]\w*)")
# decorators that forward a call's arguments unchanged (transformers' deprecate_kwarg, huggingface_hub's _deprecate_*)
_WRAPPER_FILE = re.compile(r"[/\\]_?deprecation\.py$")
_STDLIB_HINT = re.compile(r"[/\\]lib[/\\]python\d\.\d+[/\\](?!site-packages|dist-packages)")

# frame function names that say which phase a traceback happened in; the first phase of
# _PHASE_ORDER with a frame in the traceback wins (an evaluation inside the training loop is eval,
# a generation inside a GRPO training step is generation)
_PHASE_FUNCS = {
    "merge": {"merge_and_unload", "_unload_and_optionally_merge", "merge_adapter", "merge_lora", "_merge_lora",
              "export_model", "merge_weights", "save_pretrained_merged", "unsloth_save_model", "merge_and_save",
              "unsloth_save_pretrained_merged"},
    "generation": {"generate", "_sample", "sample", "greedy_search", "_greedy_search", "beam_search", "_beam_search",
                   "_assisted_decoding", "generate_completions", "_generate_and_score_completions"},
    "save": {"_save_checkpoint", "save_model", "_save", "save_pretrained", "save_state", "_save_tpu",
             "_save_optimizer_and_scheduler", "get_state_dict", "save_checkpoint", "save_file", "save_16bit_model",
             "_zero3_consolidated_16bit_state_dict"},
    "predict": {"predict", "prediction_loop"},
    "eval": {"evaluate", "evaluation_loop", "prediction_step", "_evaluate", "eval_step", "evaluation_step",
             "_run_evaluation"},
    "load": {"from_pretrained", "_load_pretrained_model", "load_state_dict", "load_checkpoint_and_dispatch",
             "_load_state_dict_into_meta_model", "dispatch_model", "load_checkpoint_in_model", "load_model",
             "prepare_model_for_kbit_training", "_load_state_dict_into_model", "get_peft_model", "load_shard_file",
             "_materialize_copy", "create_quantized_param", "convert_and_load_state_dict_in_model", "load_model_and_tokenizer",
             "_load_from_checkpoint", "load_adapter"},
    # building the optimizer (DeepSpeed's engine, the Trainer's create_optimizer) starts training: a
    # failure there, before any step finished, is the first step's
    "training": {"training_step", "_inner_training_loop", "compute_loss", "backward", "train_step", "optimizer_step",
                 "create_optimizer", "create_optimizer_and_scheduler", "_configure_optimizer",
                 "_configure_zero_optimizer", "_configure_basic_optimizer"},
}
# a model's forward with no frame naming the phase: a step of some kind (training unless a banner or
# bar says eval/predict/generation), never loading
_FORWARD_FUNCS = {"forward", "_call_impl", "_wrapped_call_impl", "new_forward"}
_PHASE_ORDER = ("merge", "generation", "save", "predict", "eval", "load", "training")
_LOSS_FUNCS = {"cross_entropy", "log_softmax", "_log_softmax", "nll_loss", "ForCausalLMLoss", "fixed_cross_entropy",
               "loss_function", "cross_entropy_loss", "softmax_cross_entropy"}
# a bar's description -> the phase it shows (merge bars are not training steps)
_BAR_PHASES = (("merg", "merge"), ("unload", "merge"), ("eval", "eval"), ("predict", "predict"),
               ("generat", "generation"), ("sav", "save"), ("loading", "load"), ("checkpoint shards", "load"),
               ("fetching", "load"), ("download", "load"), ("map", "load"), ("token", "load"))


def _clean(raw: bytes) -> str:
    """Decode (bad UTF-8 replaced), drop ANSI colour codes and control characters."""
    text = raw.decode("utf-8", "replace")
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    if "\r" in text:
        parts = [p for p in text.split("\r") if p.strip()]
        text = parts[-1] if parts else ""
    if "\xa0" in text:  # no-break spaces, as a web page or a chat gives a copied log: indentation counts
        text = text.replace("\xa0", " ")
    return _CTRL.sub("", text).rstrip()


def _split_rank(text: str) -> tuple[str, str]:
    for _ in range(2):  # a host before a timestamp
        p = _LINE_PREFIX.match(text)
        if not p:
            break
        text = text[p.end():]
    m = _RANK.match(text)
    if m:
        return m.group(1), text[m.end():]
    return "", text


def _fnum(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _package_of(path: str) -> str | None:
    m = _SITE.search(path)
    if m:
        return m.group(1)
    return None


# --------------------------------------------------------------------------------------------
# Run state: what the scanner learned so far, in file order
# --------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    file: str
    line: int
    func: str
    src: str = ""  # the source line printed under it


@dataclass
class _Tb:
    frames: list[_Frame] = field(default_factory=list)
    start: int = 0
    chain: int = 0
    open: bool = True
    closed_at: int = -1
    chained_next: bool = False
    indent: int = 0  # of the header: a traceback pasted inside pip's or a tool's indented output


@dataclass
class _Bar:
    desc: str
    n: int
    total: int
    line: int
    phase: str | None = None  # set when a phase banner says what the bar counts


@dataclass
class _Loss:
    line: int
    value: float
    epoch: float | None
    step: int | None
    grad_norm: float | None


class _Ctx:
    """What an extractor sees: the line, the lines after it, and the run state."""

    def __init__(self, engine: _Engine, line: str, line_no: int, rank: str, idx: int, recs: list[Any]):
        self.engine = engine
        self.line = line
        self.line_no = line_no
        self.rank = rank
        self._idx = idx
        self._recs = recs
        self._after: list[str] | None = None

    @property
    def after(self) -> list[str]:
        """Cleaned text of the consecutive lines after this one (rank prefix removed)."""
        if self._after is None:
            out: list[str] = []
            want = self.line_no + 1
            for j in range(self._idx + 1, min(len(self._recs), self._idx + 1 + CTX_LINES_LONG)):
                ln, txt = self._recs[j][0], self._recs[j][1]
                if ln < want:
                    continue
                if ln > want:
                    break
                out.append(_split_rank(txt)[1])
                want += 1
            self._after = out
        return self._after

    @property
    def next_line(self) -> str:
        """The cleaned next line ('' when the next record is not the next line): ``after[0]`` without reading
        up to CTX_LINES_LONG lines (every matched line asks whether a terminal wrapped it)."""
        if self._after is not None:
            return self._after[0] if self._after else ""
        j = self._idx + 1
        while j < len(self._recs) and self._recs[j][0] <= self.line_no:
            j += 1
        if j < len(self._recs) and self._recs[j][0] == self.line_no + 1:
            return _split_rank(self._recs[j][1])[1]
        return ""

    @property
    def raw(self) -> str:
        """The cleaned line as printed, with any rank, timestamp or host prefix."""
        return self._recs[self._idx][1] if self._idx < len(self._recs) else self.line

    @property
    def frames(self) -> list[_Frame]:
        tb = self.engine.tbs.get(self.rank)
        if tb and (tb.open or tb.closed_at >= self.line_no - 2):
            return tb.frames
        return []

    def culprit(self) -> dict[str, Any]:
        return _culprit(self.frames)

    def calling_library(self) -> str | None:
        """The package of the innermost library frame that is not a pass-through wrapper (a deprecation
        decorator forwards the script's own arguments: the script made the call, not that library)."""
        for fr in reversed(self.frames):
            if _WRAPPER_FILE.search(fr.file):
                continue
            pkg = _package_of(fr.file)
            if pkg and pkg not in ("torch", "torchvision", "typing_extensions", "_pytest", "pluggy"):
                return pkg
        return None

    def phase(self, default: str | None = None) -> str:
        return self.shown_phase() or default or "load"

    def shown_phase(self) -> str | None:
        """The phase the log shows for this hit (None: nothing tells). IPython prints the exception type
        first: its frames and the cell's call ('----> 1 trainer.train()') come after it."""
        frames = self.frames
        if frames or "Traceback (most recent call last)" not in self.line:
            return self.engine.shown_phase(frames)
        frames = self.frames_after()
        shown = self.engine.shown_phase(frames)
        if any(_PHASE_FUNCS[ph] & {fr.func.rsplit(".", 1)[-1] for fr in frames} for ph in _PHASE_ORDER):
            return shown
        later = next((ph for text in self.after[:40] if (ph := marker_phase(text))), None)
        return self.engine._first_step(later) if later else shown

    def frames_after(self) -> list[_Frame]:
        """Frames printed after this line (an IPython traceback headed by its exception type)."""
        out = []
        for text in self.after[:100]:
            fm = _FRAME.match(text)
            if fm:
                out.append(_frame_of(fm))
        return out

    def rank_exception(self, rank: int) -> str | None:
        return self.engine.rank_exc.get(str(rank))


def _frame_of(fm: re.Match[str]) -> _Frame:
    """The frame a _FRAME match names, whichever of its printed forms (Python, rich, IPython)."""
    return _Frame(fm.group("file") or fm.group("rfile") or fm.group("ifile") or fm.group("cfile") or "",
                  int(fm.group("line") or fm.group("rline") or fm.group("iline") or 0),
                  fm.group("func") or fm.group("rfunc") or fm.group("ifunc") or fm.group("cfunc") or "?")


def _culprit(frames: list[_Frame]) -> dict[str, Any]:
    """Innermost frame, and the innermost library (non-torch, non-stdlib) frame's package."""
    if not frames:
        return {}
    last = frames[-1]
    out: dict[str, Any] = {"file": last.file, "line": last.line, "function": last.func}
    for fr in reversed(frames):
        pkg = _package_of(fr.file)
        if pkg and pkg not in ("torch", "torchvision", "typing_extensions", "_pytest", "pluggy"):
            out["package"] = pkg
            out["package_frame"] = f"{fr.file}:{fr.line} in {fr.func}"
            break
        if not pkg and not _STDLIB_HINT.search(fr.file) and not fr.file.startswith("<"):
            out["user_frame"] = f"{fr.file}:{fr.line} in {fr.func}"
            break
    pkg0 = _package_of(last.file)
    if pkg0:
        out.setdefault("innermost_package", pkg0)
    return out


def _cause_from_frames(etype: str, msg: str, frames: list[_Frame], after: list[str]) -> tuple[Pattern, str, dict[str, Any]] | None:
    """The cause an exception's frames name, read from where it was raised (None: a plain exception). A 401 from
    huggingface_hub's status check: the repo id does not exist (or is private).
    transformers' CONFIG_MAPPING[model_type]: a released architecture is newer than this transformers, any other
    type is a project's own; a row's column lookup inside datasets' formatting: the data lacks that column
    (under TRL's SFTTrainer, the text field it was told to read)."""
    if not frames:
        return None
    if etype.endswith("HTTPError") and msg.startswith("401 Client Error") and any(f.func == "hf_raise_for_status" for f in frames) \
            and not hub_401_is_gated(after):
        # the Hub answers 401 for a repo id that does not exist when no token is sent (a local path that is not
        # there, read as an id), or a private one: the message may be cut before its URL
        pat = BY_ID["hub_not_found"]
        return pat, f"{pat.cause} (the Hub answered 401 Unauthorized)", {}
    if etype != "KeyError":
        return None
    key = msg.strip().strip("'\"")
    if any(f.file.endswith("configuration_auto.py") for f in frames):
        if key.lower().replace("-", "_") in released_model_types():
            pat = BY_ID["transformers_too_old"]
        else:
            pat = BY_ID["custom_model_type_unregistered"]
        return pat, f"{pat.cause} (model type {msg})", {"model_type": key}
    if re.search(r"datasets[/\\]formatting[/\\]", frames[-1].file) and frames[-1].func == "__getitem__":
        if any(re.search(r"trl[/\\]trainer[/\\]sft_trainer\.py", f.file) for f in frames):
            pat = BY_ID["sft_text_field"]
            return pat, f"the dataset has no column '{key}', the text field SFTTrainer was told to read", {"column": key}
        pat = BY_ID["data_invalid"]
        return pat, f"the dataset has no column '{key}' that the code reads from each row", {"column": key}
    return None


class _Engine:
    """Consumes records in file order and builds the hits."""

    def __init__(self, name: str, vocab_size: int | None, settings: RunSettings | None = None):
        self.name = name
        self.vocab_size = vocab_size
        self.settings = settings or RunSettings()
        self.hits: dict[tuple[str, str], Hit] = {}
        self.tbs: dict[str, _Tb] = {}
        self.chain_counter = 0
        self.explained_chains: set[int] = set()
        # unexplained exceptions, merged by (type, last frame) as they come: flat memory
        self.provisional: dict[tuple[str, str], tuple[set[int], Hit]] = {}
        # findings read at least once on an exception line or inside a traceback (the run's own error), not only
        # on a log line printed before it: only those outrank the exception that ended the run
        self.on_error_line: set[tuple[str, str]] = set()
        self.rank_exc: dict[str, str] = {}
        self.last_bar: _Bar | None = None
        self.marker: tuple[int, str] | None = None  # (line, phase) of the latest phase banner
        self.last_train_bar: _Bar | None = None
        self.bar_totals: Counter[int] = Counter()
        # loss samples: the first few and a bounded tail keep memory flat on any log size
        self.loss_head: list[_Loss] = []
        self.losses: deque[_Loss] = deque(maxlen=LOSS_TAIL)
        self.loss_count = 0
        self.finite_count = 0
        self.nan_first: _Loss | None = None
        self.nan_key = ""
        self.nan_count = 0
        self.nan_last = 0
        self.nan_excerpt = ""
        self.finite_before_nan = 0
        self.nan_bar_step: int | None = None
        self.last_finite: _Loss | None = None
        self.vocab_from_log: int | None = None
        self.match_cache: dict[str, list[tuple[Pattern, re.Match[str]]]] = {}
        self.prev_frame_line: dict[str, int] = {}
        self.prev_frame_len: dict[str, int] = {}  # the last frame line's length: a long one may be wrapped
        self.watermark = -1  # highest byte offset already processed

    # ---- state updates ------------------------------------------------------------------
    def _bar(self, body: str, line_no: int) -> None:
        found = _BAR_ANY.findall(body)  # several bar updates glued on one line: the last one counts
        if not found:
            return
        desc_, _pct, n_, total_ = found[-1]
        desc = (desc_ or "").strip()
        n, total = int(n_), int(total_)
        bar = _Bar(desc, n, total, line_no)
        self.last_bar = bar
        mk = self.marker
        if mk is not None and mk[1] in ("merge", "save", "eval", "predict") and not desc and \
                (self.last_train_bar is None or self.last_train_bar.line < mk[0]) and total != self.train_total():
            bar.phase = mk[1]  # a bar under a merge/save/eval banner counts layers or batches, not training steps
            return
        if not desc and total > 0:
            self.bar_totals[total] += 1
            train_total = self.train_total()
            if train_total is None or total == train_total:
                self.last_train_bar = bar

    def train_total(self) -> int | None:
        if not self.bar_totals:
            return None
        # the training bar is the one updated most; ties go to the larger total
        return max(self.bar_totals.items(), key=lambda kv: (kv[1], kv[0]))[0]

    def _loss(self, body: str, line_no: int) -> None:
        if "eval_loss" in body and "'loss'" not in body and '"loss"' not in body:
            return
        m = _DICT_VAL["loss"].search(body)
        gm = _DICT_VAL["grad_norm"].search(body)
        if not m and not gm:
            return
        val = _fnum(m.group(1)) if m else None
        gn = _fnum(gm.group(1)) if gm else None
        em = _DICT_VAL["epoch"].search(body)
        step = None
        for k in ("step", "global_step", "current_steps"):
            sm = _DICT_VAL[k].search(body)
            if sm:
                step = int(float(sm.group(1)))
                break
        rec = _Loss(line_no, val if val is not None else math.nan, _fnum(em.group(1)) if em else None, step, gn)
        if self.losses and self.losses[-1].line >= line_no:
            return
        bad_loss = val is not None and not math.isfinite(val)
        bad_gn = gn is not None and not math.isfinite(gn)
        if bad_loss or bad_gn:
            if self.nan_first is None:
                self.nan_first = rec
                self.nan_key = "loss" if bad_loss else "grad_norm"
                self.finite_before_nan = self.finite_count
                self.nan_bar_step = self.last_train_bar.n if self.last_train_bar is not None else None
                self.nan_excerpt = body
            self.nan_count += 1
            self.nan_last = line_no
        elif val is not None:
            self.last_finite = rec if self.nan_first is None else self.last_finite
        if val is not None:
            self.losses.append(rec)
            self.loss_count += 1
            if math.isfinite(rec.value):
                self.finite_count += 1
                if len(self.loss_head) < 8:
                    self.loss_head.append(rec)

    def phase(self, frames: list[_Frame], default: str | None = None) -> str:
        """The phase (logadvice.PHASES) of a failure: its traceback's frames, else the latest phase
        banner or telling progress bar, else whether training had started, else ``default``."""
        return self.shown_phase(frames) or default or "load"

    def shown_phase(self, frames: list[_Frame]) -> str | None:
        """The phase the log shows for a failure with these frames (None: nothing in it tells)."""
        if frames and all(fr.file == "<stdin>" for fr in frames):
            return "load"  # typed at Python's prompt: a check of the set-up, not a step of a run
        funcs = {fr.func.rsplit(".", 1)[-1] for fr in frames}  # IPython writes Trainer.training_step
        for ph in _PHASE_ORDER:
            if funcs & _PHASE_FUNCS[ph]:
                return self._first_step(ph)
        evidence: list[tuple[int, str]] = []
        if self.marker is not None:
            evidence.append(self.marker)
        bar = self.last_bar
        if bar is not None:
            bar_ph = self._bar_phase(bar)
            if bar_ph is not None:
                evidence.append((bar.line, bar_ph))
        if self.last_train_bar is not None:
            evidence.append((self.last_train_bar.line, "training"))
        if self.losses:
            evidence.append((self.losses[-1].line, "training"))
        if evidence:
            return self._first_step(max(evidence)[1])
        if funcs & _FORWARD_FUNCS:
            return self._first_step("training")
        return None

    def _bar_phase(self, bar: _Bar) -> str | None:
        if bar.phase is not None:
            return bar.phase
        d = bar.desc.lower()
        for word, ph in _BAR_PHASES:
            if word in d:
                return ph
        tt = self.train_total()
        if not bar.desc and tt is not None and bar.total != tt and self.last_train_bar is not None \
                and self.last_train_bar.n < self.last_train_bar.total:
            return "eval"  # a bar of another length under an unfinished training bar
        return None

    def _first_step(self, ph: str) -> str:
        """'training' before any step finished (no loss logged, the bar at 0) is the first step."""
        if ph == "training" and self.loss_count == 0 and self.step() in (None, 0):
            return "first_step"
        return ph

    def step(self) -> int | None:
        if self.last_train_bar is not None:
            return self.last_train_bar.n
        for rec in reversed(self.losses):
            if rec.step is not None:
                return rec.step
        return None

    # ---- tracebacks ---------------------------------------------------------------------
    def _traceback(self, rank: str, body: str, line_no: int) -> tuple[bool, bool]:
        """Update traceback state. Returns (is_frame_or_source_line, closes_a_traceback)."""
        tb = self.tbs.get(rank)
        if "Traceback (most recent call last)" in body:
            chained = tb is not None and tb.chained_next and line_no - tb.closed_at < 6
            if not chained:
                self.chain_counter += 1
            # the header's own indent (text before it, a progress bar drawn on the same line, is not one)
            indent = len(body) - len(body.lstrip()) if body.lstrip().startswith("Traceback") else 0
            self.tbs[rank] = _Tb(start=line_no, chain=self.chain_counter, indent=indent)
            return True, False
        if any(c in body for c in _CHAIN):
            if tb is not None:
                tb.chained_next = True
            return True, False
        fm = _FRAME.match(body)
        if fm:
            if tb is None or not tb.open:
                # a traceback pasted without its header: Python prints frames 2 columns right of the
                # header, so an indented one (pip's build output) still closes at its exception line
                self.chain_counter += 1
                tb = self.tbs[rank] = _Tb(start=line_no, chain=self.chain_counter,
                                          indent=max(0, len(body) - len(body.lstrip()) - 2))
            tb.frames.append(_frame_of(fm))
            self.prev_frame_line[rank] = line_no
            self.prev_frame_len[rank] = len(body)
            return True, False
        if self._wrapped_func(tb, rank, body, line_no):
            return True, False
        indent = len(body) - len(body.lstrip())
        if tb is not None and tb.open and tb.indent and indent == tb.indent and _EXC.match(body.strip()):
            tb.open = False  # the exception line of an indented traceback: at the header's indent
            tb.closed_at = line_no
            return False, True
        if body[:1].isspace() and self.prev_frame_line.get(rank, -9) >= line_no - 3 and tb is not None and tb.open \
                and indent > tb.indent + 2:  # deeper than the frames: a message at the frames' depth is not source
            if tb.frames and not tb.frames[-1].src:
                tb.frames[-1].src = body.strip()[:200]
            return True, False  # source line under a frame, or ^^^^ markers
        if tb is not None and tb.open and body and not body[:1].isspace():
            em = _EXC.match(body.strip())
            if em:
                tb.open = False
                tb.closed_at = line_no
                return False, True
        return False, False

    def _wrapped_func(self, tb: _Tb | None, rank: str, body: str, line_no: int) -> bool:
        """A frame line a terminal wrapped inside its function name ('..., in _configur' then
        'e_optimizer'): the rest joins the frame's function, so the phase it names is read."""
        if tb is None or not tb.open or not tb.frames or self.prev_frame_line.get(rank) != line_no - 1 \
                or self.prev_frame_len.get(rank, 0) < WRAP_MIN:
            return False
        fr = tb.frames[-1]
        rich = _RICH_REST.match(body) if fr.func == "?" else None
        if rich:  # rich's box cut the frame after its path: the line number's rest and the function
            fr.line = int(f"{fr.line}{rich.group(1)}")
            fr.func = rich.group(2)
            return True
        if not _FUNC_REST.match(body):
            return False
        if fr.func == "?":  # cut right after ', in': the whole name is on this line
            fr.func = body.strip()
        elif not body[:1].isspace():
            fr.func += body
        else:
            return False
        return True

    # ---- hits ---------------------------------------------------------------------------
    def add(self, pid: str, key: str, line_no: int, excerpt: str, cause: str, severity: str,
            fix_: Fix | None, values: dict[str, Any], phase: str | None = None) -> Hit:
        k = (pid, key)
        h = self.hits.get(k)
        cause, values = mask_text(cause), mask_data(values)  # causes quote log text: no tokens in them
        if h is None:
            ph = phase or values.get("phase") or self.phase([], BY_ID[pid].phase or None)
            h = Hit(pid, self.name, line_no, line_no, 1, _excerpt(excerpt), cause, severity, fix_, values, ph)
            self.hits[k] = h
        else:
            h.count += 1
            h.last_line = max(h.last_line, line_no)
            if len(values) > len(h.values):  # a later repeat that says more (a path, a repo id)
                h.values, h.fix, h.cause = values, fix_, cause
            if severity == "error" and h.severity != "error":  # a repeat that got worse (loss scale at 1)
                h.severity, h.cause, h.values = severity, cause, values
        return h

    def record(self, recs: list[Any], idx: int) -> None:
        line_no, text, kind = recs[idx]
        rank, body = _split_rank(text)
        if not body:
            return
        if "%|" in body:
            self._bar(body, line_no)
        ph = marker_phase(body)
        if ph is not None:
            self.marker = (line_no, ph)
        if ("loss" in body or "grad_norm" in body) and ("'" in body or '"' in body):
            self._loss(body, line_no)
        is_tb_line, closes = self._traceback(rank, body, line_no)
        if closes or (kind == HIT and rank and not is_tb_line and _EXC.match(body.strip())):
            self.rank_exc.setdefault(rank, body.strip()[:200])
        # a traceback header with text before it (IPython's "XError  Traceback", a log pasted as one
        # line) still has that text matched
        inline = "Traceback (most recent call last)" in body and not body.lstrip().startswith("Traceback")
        if kind != HIT or (is_tb_line and not closes and not inline):
            return
        self._match(recs, idx, rank, body, line_no, closes)

    def _matches_of(self, text: str) -> list[tuple[Pattern, re.Match[str]]]:
        """Every single-line pattern that matches ``text`` (cached: logs repeat their lines)."""
        matches = self.match_cache.get(text)
        if matches is None:
            matches = []
            names = prefilter().names_in(text)  # the patterns that can match: the rest are skipped
            for p in PATTERNS:
                if p.rx is None or p.id not in names:
                    continue
                m = p.rx.search(text)
                if m:
                    matches.append((p, m))
            if len(self.match_cache) > 4096:
                self.match_cache.clear()
            self.match_cache[text] = matches
        return matches

    def _joined_matches(self, text: str, ctx: _Ctx, matches: list[tuple[Pattern, re.Match[str]]]) -> list[tuple[Pattern, re.Match[str]]]:
        """Matches of a message split over lines: patterns that read several lines (``span``), and a
        line a terminal or a paste wrapped at its width (a match that runs across the cut)."""
        done = {p.id for p, _m in matches}
        if "rror" in text:
            for p in _SPAN_PATTERNS:
                if p.id in done or p.rx is None:
                    continue
                m2 = p.rx.search(" ".join([text, *[a.strip() for a in ctx.after[: p.span]]]))
                if m2:
                    matches = [*matches, (p, m2)]
                    done.add(p.id)
        nxt = ctx.next_line
        # the next line continues a wrapped one when it starts flush, or with the one space the cut fell
        # before (two or more: an indented frame or source line, not a continuation)
        wrapped = bool(nxt[:1].strip()) or (nxt[:1] == " " and bool(nxt[1:2].strip()))
        # the terminal's width counts the prefix a tool put before the line (a timestamp, a host) too
        long = max(len(text), len(ctx.raw)) >= WRAP_MIN
        if long and wrapped and not any(p.severity == "error" for p, _m in matches):
            for sep in ("", " "):  # cut at the column, or at a word boundary
                joined = text + sep + nxt
                for p, m in self._matches_of(joined):
                    if p.id not in done and m.start() < len(text) < m.end():
                        matches = [*matches, (p, m)]
                        done.add(p.id)
        return matches

    def _match(self, recs: list[Any], idx: int, rank: str, body: str, line_no: int, closes: bool) -> None:
        text = body.strip()
        if (re.search(r"(?:Warning|Error|Exception|raised):\s*$", text) or "terminate called after throwing" in text) \
                and idx + 1 < len(recs) and recs[idx + 1][0] == line_no + 1:
            text = text + " " + _split_rank(recs[idx + 1][1])[1].strip()
        ctx = _Ctx(self, text, line_no, rank, idx, recs)
        matches = self._joined_matches(text, ctx, self._matches_of(text))
        tb = self.tbs.get(rank)
        chain = tb.chain if tb is not None and (tb.open or tb.closed_at == line_no) else None
        explained = False
        for p, m in matches:
            if p.id == "cuda_oom":
                results = _oom(m, ctx)
            elif p.extract is not None:
                r = p.extract(m, ctx)
                results = [] if r is None else [(r.pop("id", p.id), r), *r.pop("extra", [])]
            else:
                results = [(p.id, {})]
            for pid, r in results:
                pat = BY_ID[pid]
                cause = r.get("cause", pat.cause) + r.get("cause_suffix", "")
                values = dict(r.get("values", {}))
                if closes:
                    c = ctx.culprit()
                    if c:
                        values.setdefault("raised_in", f"{c['file']}:{c['line']} in {c['function']}")
                sev = r.get("severity", pat.severity)
                self.add(pid, str(r.get("key", "")), line_no, r.get("excerpt", text), cause, sev,
                         r.get("fix", pat.fix), values,
                         r.get("phase") or values.get("phase") or ctx.phase(r.get("default_phase") or pat.phase or None))
                if closes or chain is not None or _EXC.match(text) or _ERROR_MARK.match(text):
                    self.on_error_line.add((pid, str(r.get("key", ""))))
                if sev == "error" or closes:
                    explained = True  # a specific pattern on the exception line itself explains it
        if explained and chain is not None:
            self.explained_chains.add(chain)
        if closes and not explained and chain is not None:
            self._exception(text, line_no, chain, ctx)

    def _exception(self, text: str, line_no: int, chain: int, ctx: _Ctx) -> None:
        em = _EXC.match(text)
        if not em:
            return
        etype, msg = em.group("type"), (em.group("msg") or "").strip()
        c = ctx.culprit()
        known = _cause_from_frames(etype, msg, ctx.frames, ctx.after)
        if known is not None:
            pat, cause, values = known
            self.add(pat.id, "", line_no, text, cause, pat.severity, pat.fix, values, ctx.phase())
            self.explained_chains.add(chain)
            return
        values: dict[str, Any] = {"exception": etype, "message": mask_text(msg[:300])}
        values.update({k: v for k, v in c.items()})
        where = f" in {c['function']} ({c['file']}:{c['line']})" if c else ""
        cause = f"{etype}: {msg[:200]}" + (f" — raised{where}" if where else "")
        pkg = c.get("package")
        if pkg:
            cause += f"; the innermost library frame is in {pkg} ({c['package_frame']})"
        fx: Fix | None
        # a call whose arguments a library's signature no longer fits, raised inside that library. An argument,
        # attribute or import a known library lacks is library_api_changed's (matched on the line); any other
        # missing attribute or import ('NoneType' object has no attribute, a name from the script's own module) says
        # nothing about versions, so it is not advised as an upgrade of whichever library's frame is innermost
        version_skew = etype == "TypeError" and re.search(r"unexpected keyword argument|got multiple values|takes \d+ positional", msg)
        if version_skew and pkg:
            fx = fix(None, f"{pkg} and the libraries calling it are at versions that don't match; upgrade them together",
                     shell=f"pip install -U {pip_name(pkg)}")
            cause += " — typically libraries at mismatched versions"
        else:
            spot = c.get("user_frame") or c.get("package_frame") or (f"{c['file']}:{c['line']}" if c else "the last frame")
            fx = fix(None, f"start from {spot}: that is where it failed")
        key = f"{etype}:{c.get('file', '')}:{c.get('line', '')}"
        h = Hit("exception", self.name, line_no, line_no, 1, _excerpt(text), mask_text(cause), "error", fx,
                mask_data(values), ctx.phase())
        k = ("exception", key)
        old = self.provisional.get(k)
        if old is None:
            self.provisional[k] = ({chain}, h)
        else:
            old[0].add(chain)
            old[1].count += 1
            old[1].last_line = max(old[1].last_line, line_no)

    # ---- end of input ---------------------------------------------------------------------
    def finish(self) -> list[Hit]:
        for key, (chains, h) in self.provisional.items():
            if chains <= self.explained_chains:
                continue  # every occurrence was explained by a specific pattern in its chain
            self.hits.setdefault(key, h)
        self._loss_findings()
        self._cut_in_traceback()
        self._root_not_shown()
        out = list(self.hits.values())
        present = frozenset(h.pattern for h in out)
        weak = self._weaker_than_the_exception(out)
        out.sort(key=lambda h: (*rank_key(h.pattern, h.severity, h.line, present, id(h) in weak), h.pattern))
        return out

    def _weaker_than_the_exception(self, hits: list[Hit]) -> set[int]:
        """Specific errors read only on log lines printed before the exception that ended the run (a warning, a
        noisy line), never on an exception line or in a traceback: their evidence is weaker than that exception,
        which then ranks first (id() of each such hit)."""
        ended = [h for h in hits if h.pattern == "exception"]
        if not ended:
            return set()
        last = max(h.line for h in ended)
        return {id(h) for k, h in self.hits.items() if h.severity == "error" and h.pattern not in CONSEQUENCES
                and k not in self.on_error_line and h.line < last}

    def _cut_in_traceback(self) -> None:
        """A log that ends inside a traceback (an excerpt cut before the exception line) names no
        error: say so, with the phase its frames show, rather than nothing (only then: with an error
        found, the note would only repeat that the excerpt is short)."""
        open_tbs = [(rank, tb) for rank, tb in self.tbs.items() if tb.open and tb.frames]
        if not open_tbs or any(h.severity == "error" for h in self.hits.values()):
            return
        rank, tb = max(open_tbs, key=lambda rt: rt[1].start)
        last = tb.frames[-1]
        pat = BY_ID["log_cut_in_traceback"]
        self.add(pat.id, "", self.prev_frame_line.get(rank, tb.start), f'File "{last.file}", line {last.line}, in {last.func}',
                 pat.cause, pat.severity, pat.fix, {"frames": len(tb.frames), "last_frame": f"{last.file}:{last.line} in {last.func}"},
                 self.phase(tb.frames))

    def _root_not_shown(self) -> None:
        """A log whose only errors are launchers' reports (failed ranks, a non-zero exit) with no
        rank's error read and no signal that names a cause: the excerpt starts after the error that
        stopped the run. Say so (``root_error_in_log`` False) rather than let the report pass for a
        cause; a person reads the first rank's output above it."""
        errs = [h for h in self.hits.values() if h.severity == "error" or h.pattern in _LAUNCHER_REPORTS]
        if not errs or any(h.pattern not in _LAUNCHER_REPORTS or h.values.get("first_error")
                           or h.fix not in (None, FIX_READ_FIRST_RANK) for h in errs):
            return
        for h in errs:
            h.values["root_error_in_log"] = False
            h.cause += ("; the error that stopped the run is not in this text (it starts after it): "
                        "the first failed rank's output above the launcher's report names it")

    def _loss_findings(self) -> None:
        """The findings the logged losses make: NaN, then exactly 0, then flat at ln(vocab)."""
        if self.nan_first is not None:
            self._loss_nan(self.nan_first)
            return
        finite = [x for x in self.losses if math.isfinite(x.value)]
        if not self._loss_zero(finite) and len(finite) >= 8:
            self._loss_flat(finite)

    def _loss_nan(self, first: _Loss) -> None:
        n = self.finite_before_nan
        values: dict[str, Any] = {"key": self.nan_key, "finite_logs_before": n, "nan_logs": self.nan_count}
        where: list[str] = []
        if first.step is not None:
            where.append(f"step {first.step}")
        elif self.nan_bar_step is not None:
            where.append(f"around step {self.nan_bar_step}")
            values["step"] = self.nan_bar_step
        if first.epoch is not None:
            where.append(f"epoch {first.epoch:g}")
        at = f" at {', '.join(where)}" if where else ""
        if first.epoch is not None:
            values["epoch"] = first.epoch
        if first.step is not None:
            values["step"] = first.step
        fx: Fix | None
        if n == 0:
            cause = (f"the {self.nan_key} was NaN from the first logged step{at}: the forward pass overflows "
                     "(fp16) or the weights / compute dtype are broken")
            fx = FIX_DTYPE_FP16_OFF
        else:
            lf = self.last_finite
            cause = (f"the {self.nan_key} became NaN{at} after {n} finite loss log{'s' if n != 1 else ''}"
                     + (f" (last finite loss {lf.value:g} at line {lf.line})" if lf else "")
                     + ": training diverged (learning rate too high, or fp16 overflow)")
            if lf is not None:
                values["last_finite_loss"] = lf.value
                values["last_finite_line"] = lf.line
            grads = [x.grad_norm for x in self.losses if x.grad_norm is not None and math.isfinite(x.grad_norm)
                     and x.line < first.line]
            if len(grads) >= 3 and grads[-1] > 10 * (sorted(grads)[len(grads) // 2] or 1e-9):
                cause += f"; grad_norm grew to {grads[-1]:g} just before"
            fx = FIX_LR
        h = self.add("loss_nan", "", first.line, self.nan_excerpt, cause, "error", fx, values)
        h.count = self.nan_count
        h.last_line = self.nan_last

    def _loss_zero(self, finite: list[_Loss]) -> bool:
        """Three zero logs in a row, two when every log is 0, or a jump to exactly 0 from a real loss (a loss does
        not fall from 2.0 to below the log's 4 decimals in one logging interval). Whether it found one."""
        zeros = 0
        while zeros < len(finite) and finite[-1 - zeros].value == 0.0:
            zeros += 1
        # a loss is never exactly 0 from its very first log (two logs suffice then: fp16 skipping every step, all
        # labels masked), nor does it fall from a real value to below the log's 4 decimals in one interval
        from_start = zeros >= 2 and zeros == len(finite)
        if not (zeros >= 3 or from_start or (zeros >= 1 and len(finite) > zeros and finite[-1 - zeros].value > 0.1)):
            return False
        k = len(finite) - zeros
        first = finite[k]
        self.add("loss_zero", "", first.line, f"'loss': 0.0 (from line {first.line})",
                 f"the logged loss is exactly 0 for {len(finite) - k} logs from line {first.line}: every label is "
                 "masked (response template not found) or fp16 broke the loss", "warning",
                 BY_ID["loss_zero"].fix, {"zero_logs": len(finite) - k}).last_line = finite[-1].line
        return True

    def _loss_flat(self, finite: list[_Loss]) -> None:
        """The last losses flat at ln(vocab): uniform predictions, from the start or after a collapse."""
        tail = finite[-min(20, len(finite)):]
        vals = [x.value for x in tail]
        mean = sum(vals) / len(vals)
        vocab = self.vocab_size or self.vocab_from_log
        if max(vals) - min(vals) > max(0.08 * mean, 0.15):
            return
        ln_v = math.log(vocab) if vocab else mean
        if (vocab and abs(mean - ln_v) > max(0.5, 0.06 * ln_v)) or (not vocab and not 6.5 <= mean <= 13.0):
            return
        head_src = self.loss_head or finite
        head = [x.value for x in head_src[:5]]
        head_mean = sum(head) / len(head)
        values = {"plateau_loss": round(mean, 4), "ln_vocab": round(ln_v, 4), "logs": self.finite_count,
                  "first_loss": head_src[0].value}
        if vocab:
            values["vocab_size"] = vocab
        else:
            values["vocab_size_estimate"] = int(round(math.exp(mean)))
        vtxt = f"ln({vocab}) = {ln_v:.2f}" if vocab else f"ln(vocab) ≈ {mean:.2f}, a vocabulary of ~{int(round(math.exp(mean)))} tokens"
        fx: Fix | None
        if head_mean < mean - 1.0:
            cause = (f"the loss rose from {head_mean:.2f} to a flat {mean:.2f} = {vtxt}: the model collapsed to "
                     "uniform predictions (learning rate too high, or fp16 overflow)")
            fx = FIX_LR
        else:
            cause = (f"the loss sits flat at {mean:.2f} = {vtxt} from the start: the model predicts every token "
                     "as equally likely, so it is not learning (weights not loaded / random, nothing trainable, "
                     "or learning rate 0)")
            fx = BY_ID["loss_flat"].fix
        self.add("loss_flat", "", tail[0].line, f"loss ≈ {mean:.3f} over {len(tail)} logs", cause, "error", fx,
                 values).last_line = tail[-1].line


def _excerpt(text: str, limit: int = 300) -> str:
    t = mask_text(text.strip())
    return t if len(t) <= limit else t[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------
# CUDA OOM: numbers, phase, late step, fragmentation, other processes
# --------------------------------------------------------------------------------------------

_OOM_NEW = re.compile(
    rf"Tried to allocate (?P<try>{SIZE})\.? ?GPU (?P<gpu>\d+) has a total capacity of (?P<total>{SIZE}) of which "
    rf"(?P<free>{SIZE}) is free\.(?P<procs>.*?)Of the allocated memory (?P<alloc>{SIZE}) is allocated by PyTorch,"
    rf"(?: with (?P<priv>{SIZE}) allocated in private pools \(e\.g\., CUDA Graphs\),)? and (?P<unalloc>{SIZE}) is reserved"
    rf" by PyTorch but unallocated"
)
_OOM_OLD = re.compile(
    rf"Tried to allocate (?P<try>{SIZE}) \(GPU (?P<gpu>\d+); (?P<total>{SIZE}) total capacity; (?P<alloc>{SIZE}) already "
    rf"allocated; (?P<free>{SIZE}) free;(?: (?P<allowed>{SIZE}) allowed;)? (?P<reserved>{SIZE}) reserved in total by PyTorch"
)
_OOM_TRY = re.compile(rf"Tried to allocate (?P<try>{SIZE})")
_PROC = re.compile(rf"Process (?P<pid>\d+) has (?P<mem>{SIZE}) memory in use")
_THIS_PROC = re.compile(rf"this process has (?P<mem>{SIZE}) memory in use")


_OOM_BY_PHASE = {"load": "cuda_oom_loading", "eval": "cuda_oom_eval", "predict": "cuda_oom_eval",
                 "generation": "cuda_oom_generation", "save": "cuda_oom_save", "merge": "cuda_oom_merge"}
_OOM_WHERE = {"load": "while loading the model", "first_step": "in the first training step",
              "training": "in a training step", "eval": "while evaluating", "predict": "while predicting",
              "generation": "while generating", "save": "while saving a checkpoint",
              "merge": "while merging the adapter into the model"}
_OOM_WHY = {
    "cuda_oom_eval": ". Training steps fit; the evaluation/prediction batch (and its logits) does not",
    "cuda_oom_generation": ". Generation keeps a KV cache per sequence: the sequences generated at once do not fit",
    "cuda_oom_merge": ". Merging loads the base model unquantized; the training settings are not the cause",
    "model_too_big_per_card": (". Every process loads its own full copy of the model, so each card must hold "
                               "all of it: split the model across the cards (FSDP, or one process with device_map) "
                               "or load it in 4-bit; a smaller batch does not help"),
}


def _in_loss(frames: list[_Frame]) -> bool:
    """Whether the innermost frames are the loss (cross-entropy over full-vocabulary logits)."""
    for fr in frames[-4:]:
        if fr.func.rsplit(".", 1)[-1] in _LOSS_FUNCS or "logits.float()" in fr.src or "cross_entropy" in fr.src:
            return True
    return False


def _oom_numbers(joined: str) -> dict[str, Any]:
    """The sizes an OOM message gives (torch >= 2.1's wording, the older one, or just the request)."""
    v: dict[str, Any] = {}
    nm = _OOM_NEW.search(joined)
    om = _OOM_OLD.search(joined) if not nm else None
    if nm:
        v.update(
            tried_to_allocate_bytes=size_bytes(nm.group("try")), gpu=int(nm.group("gpu")),
            total_bytes=size_bytes(nm.group("total")), free_bytes=size_bytes(nm.group("free")),
            allocated_bytes=size_bytes(nm.group("alloc")), reserved_unallocated_bytes=size_bytes(nm.group("unalloc")),
        )
        v["reserved_bytes"] = (v["allocated_bytes"] or 0) + (v["reserved_unallocated_bytes"] or 0) + (size_bytes(nm.group("priv")) or 0)
        procs = [{"pid": int(p.group("pid")), "bytes": size_bytes(p.group("mem"))} for p in _PROC.finditer(nm.group("procs"))]
        this = _THIS_PROC.search(nm.group("procs"))
        if procs:
            v["processes"] = procs
        if this:
            v["this_process_bytes"] = size_bytes(this.group("mem"))
        v["other_process_bytes"] = _other_process_bytes(procs, v.get("this_process_bytes"), v["reserved_bytes"])
    elif om:
        reserved = size_bytes(om.group("reserved")) or 0
        alloc = size_bytes(om.group("alloc")) or 0
        v.update(
            tried_to_allocate_bytes=size_bytes(om.group("try")), gpu=int(om.group("gpu")),
            total_bytes=size_bytes(om.group("total")), free_bytes=size_bytes(om.group("free")),
            allocated_bytes=alloc, reserved_bytes=reserved, reserved_unallocated_bytes=max(0, reserved - alloc),
        )
    else:
        tm = _OOM_TRY.search(joined)
        if tm:
            v["tried_to_allocate_bytes"] = size_bytes(tm.group("try"))
    return v


def _oom_kind(ctx: _Ctx, v: dict[str, Any]) -> tuple[str, str, int | None]:
    """(pattern id, phase, step) of an OOM: where in the run it happened decides what it means."""
    phase = ctx.phase("training")
    if not ctx.frames and re.search(r"Failed to clone\(\) tensor|state_dict", ctx.line):
        phase = "save"  # FSDP gathering the full state dict to save it
    step = ctx.engine.step()
    logs_before = ctx.engine.loss_count
    if ctx.shown_phase() is None and phase == "training":
        v["phase_shown"] = False  # one OOM line and nothing around it: a step is only the likelier guess
    late = phase == "training" and ((step is not None and step >= 20) or (step is None and logs_before >= 10))
    pid = _OOM_BY_PHASE.get(phase, "cuda_oom")
    if late:
        pid = "cuda_oom_late"
    elif phase == "load" and (ctx.rank not in ("", "0") or (v.get("gpu") or 0) > 0 or len(ctx.engine.tbs) > 1
                              or (ctx.engine.settings.num_processes or 1) > 1):
        pid = "model_too_big_per_card"  # one full copy per GPU: each card must hold the whole model
    return pid, phase, step


def _oom_cause(pid: str, phase: str, step: int | None, v: dict[str, Any], logs_before: int, other_flag: bool) -> str:
    """The OOM's cause in words, with the numbers the message gave."""
    total_b, tried_b = v.get("total_bytes") or 0, v.get("tried_to_allocate_bytes") or 0
    nums = ""
    if v.get("tried_to_allocate_bytes") is not None:
        nums = f"tried to allocate {human(v['tried_to_allocate_bytes'])}"
        if v.get("total_bytes"):
            nums += f" with {human(v.get('free_bytes'))} free of {human(v['total_bytes'])}"
        if v.get("reserved_bytes"):
            nums += f"; PyTorch held {human(v['reserved_bytes'])}"
    unplaced = v.get("phase_shown") is False
    cause = f"CUDA ran out of memory {_OOM_WHERE[phase]}"
    if unplaced:
        cause = (f"CUDA ran out of memory, most likely {_OOM_WHERE[phase]} (nothing in the text shows when: no frame, "
                 "progress bar, banner or loss)")
    if step is not None and phase == "training":
        cause += f" (step {step})"
    if nums:
        cause += f": {nums}"
    cause += _OOM_WHY.get(pid, "")
    if pid == "cuda_oom_late":
        cause += (f". It ran {step if step is not None else logs_before} steps{'' if step is not None else ' (logs)'} fine "
                  "first, so one long batch is the outlier: cap max_seq_length or drop the longest examples rather "
                  "than shrinking the batch")
    if other_flag:
        cause += f". Other processes held {human(v.get('other_process_bytes') or 0)} of this GPU: free it first, then see if the run fits"
    elif pid == "cuda_oom" and "single_allocation_share" in v:
        cause += (f". One allocation asked for {round(100 * tried_b / total_b)}% of the card: a single tensor over the "
                  "whole sequence (the loss's full-vocabulary logits, or eager attention) from one long example")
    elif pid == "cuda_oom":
        cause += ". The loss's logits do not fit" if v.get("in_loss") else ". The batch's activations do not fit"
    if unplaced:
        cause += (". If it ran out while loading the model instead, before any step, the weights alone do not fit "
                  "the card (load in 4-bit, or split the model across cards) and a smaller batch does not help")
    return cause


def _oom_side_findings(v: dict[str, Any], other_flag: bool) -> list[tuple[str, dict[str, Any]]]:
    """What the OOM's numbers say besides it: a fragmented cache, other processes on the GPU."""
    out: list[tuple[str, dict[str, Any]]] = []
    total, other = v.get("total_bytes") or 0, v.get("other_process_bytes") or 0
    unalloc = v.get("reserved_unallocated_bytes") or 0
    tried = v.get("tried_to_allocate_bytes") or 0
    if total and unalloc >= max(tried, int(0.05 * total)):
        out.append(("cuda_oom_fragmentation", {
            "values": {k: v.get(k) for k in ("reserved_unallocated_bytes", "tried_to_allocate_bytes", "total_bytes")},
            "cause": (f"{human(unalloc)} was reserved by PyTorch but unallocated — more than the "
                      f"{human(tried)} it needed — so the cache is fragmented"),
            "fix": FIX_ALLOC_CONF, "severity": "warning", "phase": v.get("phase")}))
    if other_flag:
        out.append(("gpu_other_process", {
            "values": {"other_process_bytes": other, "total_bytes": total, "processes": v.get("processes")},
            "cause": (f"other processes held {human(other)} of the GPU's {human(total)} when it ran out"
                      + (": freeing them would have left room" if other + (v.get("free_bytes") or 0) >= tried else "")),
            "fix": FIX_OTHER_PROCESS, "phase": v.get("phase")}))
    return out


def _oom(m: re.Match[str], ctx: _Ctx) -> list[tuple[str, dict[str, Any]]]:
    """The OOM hit (id by phase) plus fragmentation / other-process findings from its numbers."""
    joined = re.sub(r"\s+", " ", " ".join([ctx.line, *[a.strip() for a in ctx.after[:6]]]))
    v = _oom_numbers(joined)
    if "total_bytes" not in v and len(ctx.line) >= WRAP_MIN:
        # a message a terminal wrapped at its width, mid-word ('GPU 3 has a tota' / 'l capacity'): rejoin as cut
        v = _oom_numbers(re.sub(r"\s+", " ", "".join([ctx.line, *ctx.after[:6]]))) or v
    pid, phase, step = _oom_kind(ctx, v)
    v["phase"] = phase
    if step is not None:
        v["step"] = step
    in_loss = _in_loss(ctx.frames)
    if in_loss:
        v["in_loss"] = True
    total_b, tried_b = v.get("total_bytes") or 0, v.get("tried_to_allocate_bytes") or 0
    one_tensor = bool(total_b and tried_b >= 0.4 * total_b)  # one request of 40%+ of the card: not the batch's activations
    if one_tensor:
        v["single_allocation_share"] = round(tried_b / total_b, 2)
    other = v.get("other_process_bytes") or 0
    other_flag = bool(total_b and other >= max(512 * 1024**2, int(0.05 * total_b)))
    cause = _oom_cause(pid, phase, step, v, ctx.engine.loss_count, other_flag)
    culprit = ctx.culprit()
    if culprit:
        v["raised_in"] = f"{culprit['file']}:{culprit['line']} in {culprit['function']}"
    fx = oom_fix(pid, phase, ctx.engine.settings, in_loss or one_tensor)
    if v.get("phase_shown") is False:  # the step is a guess: say what to do if it was loading
        fx = replace(fx, changes=list(fx.changes), summary=fx.summary + "; if it ran out while loading, before any "
                     "step: load the model in 4-bit or split it across cards instead")
    return [(pid, {"values": v, "cause": cause, "key": "", "fix": fx}), *_oom_side_findings(v, other_flag)]


def _other_process_bytes(procs: list[dict[str, Any]], this: int | None, reserved: int) -> int:
    """Memory held by processes other than the training one.

    With "this process has X" in the message, every "Process N" is another process. Without it
    (containers hide our own pid), our process is the entry that best covers PyTorch's reserved
    memory; the rest belong to others.
    """
    if not procs:
        return 0
    if this is not None:
        return sum(p["bytes"] or 0 for p in procs)
    if len(procs) == 1:
        return 0
    cands = [p for p in procs if (p["bytes"] or 0) >= 0.9 * reserved] or procs
    own = min(cands, key=lambda p: abs((p["bytes"] or 0) - reserved))
    return sum(p["bytes"] or 0 for p in procs if p is not own)


# --------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------

_Result = tuple[int, list[tuple[int, int, bytes, int]]]


def _feed(engine: _Engine, line0: int, records: list[tuple[int, int, bytes, int]]) -> None:
    recs: list[tuple[int, str, int]] = []
    last: tuple[int, str] | None = None
    for off, rel, text, kind in records:
        if off <= engine.watermark:
            continue  # already seen as lookahead of the previous block
        item = (line0 + rel + 1, _clean(text))
        if item == last:
            continue
        last = item
        recs.append((item[0], item[1], kind))
        engine.watermark = off
    for i in range(len(recs)):
        engine.record(recs, i)


def _stream_blocks(chunks: Iterable[bytes]) -> Iterator[_Result]:
    """Cut a byte stream into line-aligned blocks (with lookahead) and scan each."""
    buf = b""
    base = 0
    for chunk in chunks:
        if not chunk:
            continue
        buf += chunk
        while len(buf) >= BLOCK + LOOKAHEAD:
            cut = buf.rfind(b"\n", 0, len(buf) - LOOKAHEAD) + 1
            if cut <= 0:
                cut = len(buf) - LOOKAHEAD  # one giant line: split it
            nl, recs = _scan_chunk(buf, 0, cut, False, base)
            yield nl, [(base + a, rel, t, k) for a, rel, t, k in recs]
            buf = buf[cut:]
            base += cut
    if buf:
        nl, recs = _scan_chunk(buf, 0, len(buf), True, base)
        yield nl, [(base + a, rel, t, k) for a, rel, t, k in recs]


def _file_blocks(path: str, size: int) -> Iterator[_Result]:
    """Scan a big regular file's blocks in worker processes, results in file order."""
    import concurrent.futures as cf
    import multiprocessing as mp
    import threading

    workers = max(1, min(MAX_WORKERS, (os.cpu_count() or 1)))
    methods = mp.get_all_start_methods()
    # fork is cheapest, but not from a process with other threads (the TUI scans from a worker)
    if "fork" in methods and threading.active_count() == 1:
        method = "fork"
    else:
        method = "forkserver" if "forkserver" in methods else "spawn"
    ranges = [(s, min(size, s + BLOCK)) for s in range(0, size, BLOCK)]
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method)) as ex:
        pending: list[Any] = []
        it = iter(ranges)
        for s, e in it:
            pending.append(ex.submit(_scan_range, path, s, e, size, LOOKAHEAD))
            if len(pending) >= 2 * workers:
                break
        while pending:
            fut = pending.pop(0)
            _s, _e, nl, recs = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(ex.submit(_scan_range, path, nxt[0], nxt[1], size, LOOKAHEAD))
            yield nl, [(off, rel, t, k) for off, rel, t, k in recs]


def _run(name: str, blocks: Iterable[_Result], vocab_size: int | None, settings: RunSettings | None) -> list[Hit]:
    engine = _Engine(name, vocab_size, settings)
    lines = 0
    for nl, records in blocks:
        _feed(engine, lines, records)
        lines += nl
    return engine.finish()


def scan_file(path: str | os.PathLike[str], *, vocab_size: int | None = None,
              settings: RunSettings | None = None) -> list[Hit]:
    """Diagnose a training log file, root cause first. ``settings``: the run's config and plan as far
    as known (:meth:`RunSettings.from_config`), so a fix does not advise what is already done.
    Raises OSError (FileNotFoundError, IsADirectoryError, …) when it cannot be read; any content,
    binary included, is scanned without error."""
    p = os.fspath(path)
    size = os.path.getsize(p)
    if os.path.isdir(p):
        raise IsADirectoryError(p)
    if size >= PARALLEL_MIN and (os.cpu_count() or 1) > 1 and os.path.isfile(p):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return _run(p, _file_blocks(p, size), vocab_size, settings)
        except (BrokenProcessPool, PermissionError, NotImplementedError):
            pass  # no worker processes here (sandbox, no /dev/shm): one streaming pass instead

    def chunks() -> Iterator[bytes]:
        with open(p, "rb") as f:
            while True:
                b = f.read(BLOCK)
                if not b:
                    return
                yield b

    return _run(p, _stream_blocks(chunks()), vocab_size, settings)


def scan_lines(lines: Iterable[str | bytes], name: str = "<log>", *, vocab_size: int | None = None,
               settings: RunSettings | None = None) -> list[Hit]:
    """Diagnose log lines (one item per line, with or without its newline) from any source."""

    def chunks() -> Iterator[bytes]:
        parts: list[bytes] = []
        size = 0
        for ln in lines:
            b = ln if isinstance(ln, bytes) else str(ln).encode("utf-8", "replace")
            if not b.endswith((b"\n", b"\r")):
                b += b"\n"
            parts.append(b)
            size += len(b)
            if size >= BLOCK:
                yield b"".join(parts)
                parts, size = [], 0
        if parts:
            yield b"".join(parts)

    return _run(name, _stream_blocks(chunks()), vocab_size, settings)
