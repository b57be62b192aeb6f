"""The training data file: does it parse as JSONL of the configured format, and how long are
its examples in tokens? Streaming, no torch; the tokenizer (``tokenizers``) only when a local
``tokenizer.json`` exists for the model."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("instruction", "prompt_completion", "chat")
_REQUIRED = {
    "instruction": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "chat": ("messages",),
}
_OPTIONAL = {"instruction": ("input",), "prompt_completion": (), "chat": ()}
_ROLES = ("system", "user", "assistant", "tool", "developer")


@dataclass
class DataProblem:
    """One bad line (or the whole file) in plain words."""

    message: str
    line: int | None = None
    field: str | None = None
    hint: str | None = None

    def render(self, path: str) -> str:
        where = f"{path}:{self.line}" if self.line else path
        text = f"{where}: error: " + (f"field {self.field!r}: " if self.field else "") + self.message
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class DataError(Exception):
    """Data that cannot be trained on; ``render()`` is the person-facing message."""

    def __init__(self, path: str | os.PathLike[str], problems: list[DataProblem]):
        self.path = str(path)
        self.problems = problems
        super().__init__(self.render())

    def render(self, limit: int = 8) -> str:
        lines = [p.render(self.path) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"... and {len(self.problems) - limit} more bad lines")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "problems": [
                {"message": p.message, "line": p.line, "field": p.field, "hint": p.hint}
                for p in self.problems
            ],
        }


def guess_format(row: dict[str, Any]) -> str | None:
    """The data_format whose required fields this row has, if any."""
    for fmt, needed in _REQUIRED.items():
        if all(k in row for k in needed):
            return fmt
    return None


def check_row(row: Any, fmt: str, line: int) -> list[DataProblem]:
    """Every problem of one parsed line for ``fmt``."""
    if not isinstance(row, dict):
        return [DataProblem(f"expected a JSON object {{...}}, found {type(row).__name__}", line=line)]
    out: list[DataProblem] = []
    missing = [k for k in _REQUIRED[fmt] if k not in row]
    if missing:
        other = guess_format(row)
        hint = (
            f"this line looks like {other} data: set data_format: {other}"
            if other and other != fmt
            else f"data_format {fmt} needs the fields {', '.join(_REQUIRED[fmt])}"
            + (f" (optional: {', '.join(_OPTIONAL[fmt])})" if _OPTIONAL[fmt] else "")
            + f"; this line has: {', '.join(sorted(map(str, row))) or 'no fields'}"
        )
        for k in missing:
            out.append(DataProblem("missing", line=line, field=k, hint=hint))
        return out
    if fmt == "chat":
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            return [DataProblem("expected a non-empty list of {\"role\", \"content\"} objects", line=line, field="messages")]
        has_assistant = False
        for i, m in enumerate(msgs):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                out.append(DataProblem(f"expected an object with role and content, found {type(m).__name__}", line=line, field=where))
                continue
            for k in ("role", "content"):
                if k not in m:
                    out.append(DataProblem("missing", line=line, field=f"{where}.{k}"))
            role, content = m.get("role"), m.get("content")
            if "role" in m and role not in _ROLES:
                out.append(DataProblem(f"unknown role {role!r}", line=line, field=f"{where}.role",
                                       hint=f"roles are {', '.join(_ROLES)}"))
            if "content" in m and not isinstance(content, str):
                out.append(DataProblem(f"expected text, found {type(content).__name__}", line=line, field=f"{where}.content"))
            has_assistant = has_assistant or role == "assistant"
        if not out and not has_assistant:
            out.append(DataProblem("no assistant message: nothing to learn from this conversation", line=line, field="messages"))
        return out
    for k in (*_REQUIRED[fmt], *_OPTIONAL[fmt]):
        if k in row and row[k] is not None and not isinstance(row[k], str):
            out.append(DataProblem(f"expected text, found {type(row[k]).__name__}", line=line, field=k))
    target = "output" if fmt == "instruction" else "completion"
    if not out and not str(row.get(target) or "").strip():
        out.append(DataProblem("empty: nothing to learn from this example", line=line, field=target))
    return out


# Chat-template and special-token overhead per example when no tokenizer renders it.
TEMPLATE_OVERHEAD_TOKENS = 12
CHARS_PER_TOKEN = 3.6  # English-heavy BPE vocabularies; only used without a tokenizer
MAX_PROBLEMS = 20


@dataclass
class DataReport:
    path: str
    data_format: str
    rows: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, message)
    lengths: list[int] = field(default_factory=list)
    tokenizer: str | None = None  # where token counts came from; None = estimated from characters

    @property
    def ok(self) -> bool:
        return self.rows > 0 and not self.problems

    def share_over(self, max_seq_length: int) -> float:
        if not self.lengths:
            return 0.0
        return sum(1 for n in self.lengths if n > max_seq_length) / len(self.lengths)


def example_text(row: dict[str, Any], data_format: str) -> str:
    """The text an example contributes to a training sequence (before the chat template)."""
    if data_format == "instruction":
        parts = [row.get("instruction", ""), row.get("input", "") or "", row.get("output", "")]
        return "\n".join(p for p in parts if p)
    if data_format == "prompt_completion":
        return f"{row.get('prompt', '')}{row.get('completion', '')}"
    return "\n".join(str(m.get("content", "")) for m in row.get("messages", []) if isinstance(m, dict))


def validate_row(row: Any, data_format: str) -> str | None:
    """What is wrong with one parsed JSONL row, in one line, or None.

    The rules are check_row's, which the training process reads too, so the check and the run
    agree on what a good example is.
    """
    problems = check_row(row, data_format, 0)
    if not problems:
        return None
    parts = [(f"field {p.field!r}: " if p.field else "") + p.message for p in problems]
    hint = next((p.hint for p in problems if p.hint), None)
    return "; ".join(parts) + (f" ({hint})" if hint else "")


def find_tokenizer_file(model: str) -> str | None:
    """A local tokenizer.json for the model: in its directory, or in the Hub cache (no network)."""
    p = Path(os.path.expanduser(model))
    if p.is_dir():
        t = p / "tokenizer.json"
        return str(t) if t.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(model, "tokenizer.json")
        return hit if isinstance(hit, str) else None
    except Exception:  # an id the cache cannot even parse
        return None


def inspect_data(path: str, data_format: str, *, model: str | None = None, limit: int | None = None) -> DataReport:
    """Read the JSONL file once: count rows, collect problems (with line numbers) and lengths."""
    rep = DataReport(path=path, data_format=data_format)
    tok = None
    tok_file = find_tokenizer_file(model) if model else None
    if tok_file:
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(tok_file)
            rep.tokenizer = tok_file
        except Exception:
            tok = None
    texts: list[str] = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if limit is not None and rep.rows >= limit:
                break
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                rep.problems.append((lineno, "not UTF-8 text"))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                rep.problems.append((lineno, f"invalid JSON: {e.msg} at column {e.colno}"))
                if len(rep.problems) >= MAX_PROBLEMS:
                    break
                continue
            err = validate_row(row, data_format)
            if err:
                rep.problems.append((lineno, err))
                if len(rep.problems) >= MAX_PROBLEMS:
                    break
                continue
            rep.rows += 1
            texts.append(example_text(row, data_format))
    if tok is not None:
        for enc in tok.encode_batch(texts, add_special_tokens=True):
            rep.lengths.append(len(enc.ids) + TEMPLATE_OVERHEAD_TOKENS)
    else:
        rep.lengths = [int(len(t) / CHARS_PER_TOKEN) + TEMPLATE_OVERHEAD_TOKENS for t in texts]
    return rep


def lengths_of(rep: DataReport | None) -> list[int] | None:
    """A report's tokens per example, or None when there is no report or it holds no row."""
    return list(rep.lengths) if rep is not None and rep.rows else None


def example_lengths(view: Any) -> list[int] | None:
    """Tokens per example of the config's training data (what the fit plans from:
    fitsearch.planning_seq_len), or None when the file is not there or holds no row."""
    path = getattr(view, "data_file", None)
    if not path or not os.path.isfile(path):
        return None
    try:
        return lengths_of(inspect_data(path, view.data_format, model=view.base_model_name))
    except OSError:
        return None
