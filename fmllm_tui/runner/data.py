"""Training data: read and check the person's JSONL, then turn it into token ids and labels.

Three formats (``data_format``):

* ``instruction``: ``{"instruction", "input" (optional), "output"}``
* ``prompt_completion``: ``{"prompt", "completion"}``
* ``chat``: ``{"messages": [{"role", "content"}, ...]}``

Reading and checking (:func:`read_records`) needs no torch and is what ``fmllm-run`` runs before
it launches anything: a bad line is named (file:line, the field, what to do) before a GPU is
touched. Tokenising (:func:`encode_record`, :func:`build_train_dataset`) needs a tokenizer and is
used by the training process.

Instruction and chat data are rendered with the model's chat template (a plain fallback template
is installed when the tokenizer has none); prompt/completion data is plain text, as TRL treats
non-conversational data. With ``response_only`` the loss is on the response tokens only: the
assistant turns, or the completion.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The data formats and the rules for a good row live in fmllm_tui/datafile.py (torch-free, read by
# the checks too); re-exported here for the training process.
from fmllm_tui.datafile import (  # noqa: F401
    _OPTIONAL,
    _REQUIRED,
    _ROLES,
    FORMATS,
    DataError,
    DataProblem,
    check_row,
    guess_format,
)

IGNORE_INDEX = -100

# Used when a tokenizer has no chat template: role headers, content, then eos so generation stops.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def read_records(
    path: str | os.PathLike[str], data_format: str, *, limit: int | None = None, max_problems: int = 20
) -> list[dict[str, Any]]:
    """Read and check a JSONL data file. Raises :class:`DataError` naming each bad line.

    ``limit`` stops after that many good records (the minimal test's sample).
    """
    p = Path(path)
    if data_format not in FORMATS:
        raise DataError(p, [DataProblem(f"unknown data_format {data_format!r}", hint=f"use one of {', '.join(FORMATS)}")])
    if not p.exists():
        raise DataError(p, [DataProblem("the data file does not exist",
                                        hint="set paths.ft_combined_data_file to your JSONL file (relative paths are read from the config's folder)")])
    if p.is_dir():
        raise DataError(p, [DataProblem("this is a folder, not a JSONL file",
                                        hint="point paths.ft_combined_data_file at the .jsonl file inside it")])
    records: list[dict[str, Any]] = []
    problems: list[DataProblem] = []
    try:
        fh = p.open("rb")
    except OSError as e:
        raise DataError(p, [DataProblem(f"cannot read the file: {e.strerror or e}")]) from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                problems.append(DataProblem(f"not UTF-8 text (byte {e.start + 1})", line=lineno,
                                            hint="save the file as UTF-8"))
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(DataProblem(f"not valid JSON: {e.msg} at column {e.colno}", line=lineno,
                                            hint="each line must be one JSON object, e.g. "
                                            + _EXAMPLES[data_format]))
                continue
            found = check_row(row, data_format, lineno)
            if found:
                problems.extend(found)
            else:
                records.append(row)
            if len(problems) >= max_problems:
                break
            if limit is not None and len(records) >= limit and not problems:
                break
    if problems:
        raise DataError(p, problems)
    if not records:
        raise DataError(p, [DataProblem("the data file has no examples (it is empty or only blank lines)",
                                        hint="add one JSON object per line, e.g. " + _EXAMPLES[data_format])])
    return records


_EXAMPLES = {
    "instruction": '{"instruction": "...", "input": "", "output": "..."}',
    "prompt_completion": '{"prompt": "...", "completion": "..."}',
    "chat": '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}',
}


# ------------------------------------------------------------------------------------------------
# Tokenising
# ------------------------------------------------------------------------------------------------


def to_messages(record: dict[str, Any], data_format: str) -> list[dict[str, str]]:
    """The conversation a record stands for (instruction → one user turn and one answer)."""
    if data_format == "chat":
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in record["messages"]]
    if data_format == "instruction":
        prompt = str(record["instruction"])
        extra = record.get("input")
        if extra:
            prompt += "\n\n" + str(extra)
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(record["output"])}]
    return [{"role": "user", "content": str(record["prompt"])},
            {"role": "assistant", "content": str(record["completion"])}]


def ensure_chat_template(tokenizer: Any) -> bool:
    """Install the fallback template when the tokenizer has none. Returns True if it did."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return True


def render_text(tokenizer: Any, record: dict[str, Any], data_format: str) -> tuple[str, list[tuple[int, int]], bool]:
    """The training text, the character spans of the response parts, and whether the spans
    are exact (False: the template rewrites earlier turns, so the whole text is the target)."""
    if data_format == "prompt_completion":
        prompt, completion = str(record["prompt"]), str(record["completion"])
        return prompt + completion, [(len(prompt), len(prompt) + len(completion))], True
    messages = to_messages(record, data_format)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (full.startswith(through) and through.startswith(before)):
            return full, [(0, len(full))], False
        spans.append((len(before), len(through)))
    return full, spans, True


def prompt_text(tokenizer: Any, record: dict[str, Any], data_format: str) -> str:
    """The text a generation from this record starts from (everything before the last answer)."""
    if data_format == "prompt_completion":
        return str(record["prompt"])
    messages = to_messages(record, data_format)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)


@dataclass
class EncodeStats:
    """What tokenising did to the data, for the run's report."""

    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    inexact_spans: int = 0
    tokens: int = 0
    target_tokens: int = 0
    longest: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def encode_record(
    tokenizer: Any, record: dict[str, Any], data_format: str, max_seq_length: int, response_only: bool,
    stats: EncodeStats | None = None,
) -> dict[str, list[int]] | None:
    """Token ids and labels of one record, or None when no target token fits in ``max_seq_length``."""
    text, spans, exact = render_text(tokenizer, record, data_format)
    raw = data_format == "prompt_completion"
    # Chat templates write their own special tokens; plain text gets the tokenizer's (e.g. bos).
    try:
        enc = tokenizer(text, add_special_tokens=raw, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError):
        # Tokenizers without offsets: a token's span is where the prefix before it ends.
        ids, offsets = _offsets_by_prefix(tokenizer, text, raw)
    labels = []
    for tok, (start, end) in zip(ids, offsets, strict=True):
        # Zero-width offsets are special tokens the tokenizer added (bos): never targets.
        inside = end > start and any(s <= start < e for s, e in spans)
        labels.append(tok if (inside or not response_only) else IGNORE_INDEX)
    if raw and tokenizer.eos_token_id is not None:
        # The completion ends with eos so the model learns to stop.
        ids.append(int(tokenizer.eos_token_id))
        labels.append(int(tokenizer.eos_token_id))
    if stats is not None:
        stats.examples += 1
        stats.inexact_spans += 0 if exact else 1
    if len(ids) > max_seq_length:
        ids, labels = ids[:max_seq_length], labels[:max_seq_length]
        if stats is not None:
            stats.truncated += 1
    # Position 0 is never predicted, so a target only there teaches nothing.
    if not any(lab != IGNORE_INDEX for lab in labels[1:]):
        if stats is not None:
            stats.dropped_no_target += 1
        return None
    if stats is not None:
        stats.kept += 1
        stats.tokens += len(ids)
        stats.target_tokens += sum(1 for lab in labels[1:] if lab != IGNORE_INDEX)
        stats.longest = max(stats.longest, len(ids))
    return {"input_ids": ids, "labels": labels}


def _offsets_by_prefix(tokenizer: Any, text: str, add_special: bool) -> tuple[list[int], list[tuple[int, int]]]:
    ids = list(tokenizer(text, add_special_tokens=add_special)["input_ids"])
    offsets: list[tuple[int, int]] = []
    prev = 0
    for i in range(1, len(ids) + 1):
        end = len(tokenizer.decode(ids[:i], skip_special_tokens=False))
        offsets.append((min(prev, len(text)), min(end, len(text))))
        prev = end
    return ids, offsets


def pack_examples(examples: list[dict[str, list[int]]], max_seq_length: int) -> list[dict[str, list[int]]]:
    """Group examples into rows of at most ``max_seq_length`` tokens (first fit, longest first).

    A row keeps each example's length in ``seq_lens`` so the collator can flatten it with
    position ids that restart per example (no attention across examples).
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i]["input_ids"])
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_seq_length - n)
    rows: list[dict[str, list[int]]] = []
    for members in bins:
        rows.append({
            "input_ids": [t for i in members for t in examples[i]["input_ids"]],
            "labels": [t for i in members for t in examples[i]["labels"]],
            "seq_lens": [len(examples[i]["input_ids"]) for i in members],
        })
    return rows


def build_train_dataset(
    tokenizer: Any, records: Iterable[dict[str, Any]], data_format: str, *, max_len: int,
    response_only: bool = True, packing: bool = False,
) -> tuple[Any, EncodeStats]:
    """A ``datasets.Dataset`` of token ids and labels (packed rows when ``packing``), each cut at
    ``max_len``: the config's training.max_seq_length (keyword named so for train.py's calls)."""
    import datasets  # deferred: only the training process needs it

    stats = EncodeStats()
    if ensure_chat_template(tokenizer):
        stats.notes.append("the tokenizer has no chat template: fmllm used a plain role-header template")
    encoded = []
    for rec in records:
        ex = encode_record(tokenizer, rec, data_format, max_len, response_only, stats)
        if ex is not None:
            encoded.append(ex)
    if stats.inexact_spans:
        stats.notes.append(
            f"{stats.inexact_spans} conversations: the chat template rewrites earlier turns, so the loss "
            "covers the whole conversation for them")
    if stats.truncated:
        stats.notes.append(f"{stats.truncated} examples were longer than max_seq_length={max_len} and were cut")
    if stats.dropped_no_target:
        stats.notes.append(
            f"{stats.dropped_no_target} examples had no response token within max_seq_length={max_len} and were left out")
    rows = pack_examples(encoded, max_len) if packing else encoded
    return datasets.Dataset.from_list(rows), stats


class Collator:
    """Batches for the Trainer: padding-free flattening when packing, right padding otherwise."""

    def __init__(self, tokenizer: Any, packing: bool, pad_to_multiple_of: int | None = None):
        from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

        self.packing = packing
        self.flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
        self.pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX,
                                          pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if self.packing:
            parts = []
            for f in features:
                start = 0
                for n in f["seq_lens"]:
                    parts.append({"input_ids": f["input_ids"][start:start + n],
                                  "labels": f["labels"][start:start + n]})
                    start += n
            return self.flatten(parts)
        return self.pad([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
