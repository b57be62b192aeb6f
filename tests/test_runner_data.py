"""The runner's data path: reading and checking JSONL, labels on the response only, packing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmllm_tui.runner.data import (
    IGNORE_INDEX,
    Collator,
    DataError,
    EncodeStats,
    build_train_dataset,
    encode_record,
    ensure_chat_template,
    pack_examples,
    prompt_text,
    read_records,
)


def write(tmp_path: Path, text: str | bytes, name: str = "train.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def row(**kw: object) -> str:
    return json.dumps(kw) + "\n"


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    return t


# ------------------------------------------------------------------------------------------------
# Reading and checking
# ------------------------------------------------------------------------------------------------


def test_reads_each_format(tmp_path: Path) -> None:
    p = write(tmp_path, row(instruction="a", input="", output="b") + "\n" + row(instruction="c", output="d"))
    assert [r["output"] for r in read_records(p, "instruction")] == ["b", "d"]
    p = write(tmp_path, row(prompt="a", completion="b"))
    assert read_records(p, "prompt_completion")[0]["completion"] == "b"
    p = write(tmp_path, row(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]))
    assert len(read_records(p, "chat")[0]["messages"]) == 2


def test_limit_stops_early(tmp_path: Path) -> None:
    p = write(tmp_path, row(instruction="a", output="b") * 50)
    assert len(read_records(p, "instruction", limit=7)) == 7


@pytest.mark.parametrize(
    "text, fmt, words",
    [
        (row(instruction="a", output="b") + "{not json\n", "instruction", ["train.jsonl:2", "not valid JSON"]),
        (row(instruction="a", output="b") + row(instruction="x"), "instruction", ["train.jsonl:2", "'output'", "missing"]),
        (row(prompt="a", completion="b"), "instruction", [":1", "looks like prompt_completion data",
                                                          "set data_format: prompt_completion"]),
        (row(instruction="a", output=3), "instruction", ["'output'", "expected text, found int"]),
        (row(instruction="a", output="  "), "instruction", ["'output'", "empty"]),
        ("[1, 2]\n", "instruction", [":1", "expected a JSON object"]),
        (b'{"instruction": "caf\xe9", "output": "x"}\n', "instruction", [":1", "not UTF-8"]),
        (row(messages=[]), "chat", ["'messages'", "non-empty list"]),
        (row(messages=[{"role": "user"}]), "chat", ["messages[0].content", "missing"]),
        (row(messages=[{"role": "robot", "content": "x"}]), "chat", ["messages[0].role", "unknown role 'robot'"]),
        (row(messages=[{"role": "user", "content": "x"}]), "chat", ["no assistant message"]),
        (row(messages=[{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]), "chat",
         ["messages[0].content", "expected text"]),
    ],
)
def test_bad_lines_are_named(tmp_path: Path, text: str | bytes, fmt: str, words: list[str]) -> None:
    p = write(tmp_path, text)
    with pytest.raises(DataError) as ei:
        read_records(p, fmt)
    msg = ei.value.render()
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_dataset(tmp_path: Path, text: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(DataError, match="no examples"):
        read_records(p, "instruction")


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as ei:
        read_records(tmp_path / "nope.jsonl", "instruction")
    assert "paths.ft_combined_data_file" in ei.value.render()
    with pytest.raises(DataError, match="folder"):
        read_records(tmp_path, "instruction")
    with pytest.raises(DataError, match="unknown data_format"):
        read_records(write(tmp_path, row(a=1)), "csv")


def test_bom_on_first_line_is_fine(tmp_path: Path) -> None:
    p = write(tmp_path, b"\xef\xbb\xbf" + row(instruction="a", output="b").encode())
    assert read_records(p, "instruction")[0]["instruction"] == "a"


# ------------------------------------------------------------------------------------------------
# Tokenising: the loss is on the response tokens only
# ------------------------------------------------------------------------------------------------


def targets(tok, ex: dict) -> str:
    return tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX], skip_special_tokens=False)


def test_instruction_labels_cover_the_answer_only(tok) -> None:
    rec = {"instruction": "Name a colour.", "input": "warm ones", "output": "Amber is warm."}
    ex = encode_record(tok, rec, "instruction", 512, response_only=True)
    assert ex is not None and len(ex["input_ids"]) == len(ex["labels"])
    assert targets(tok, ex) == "Amber is warm.<|im_end|>\n"
    full = encode_record(tok, rec, "instruction", 512, response_only=False)
    assert full["labels"] == full["input_ids"]
    assert "warm ones" in tok.decode(full["input_ids"])


def test_prompt_completion_is_plain_text_with_eos(tok) -> None:
    ex = encode_record(tok, {"prompt": "2+2=", "completion": " four"}, "prompt_completion", 512, True)
    assert ex["input_ids"][-1] == tok.eos_token_id
    assert targets(tok, ex) == " four" + tok.eos_token
    assert "<|im_start|>" not in tok.decode(ex["input_ids"])


def test_chat_labels_every_assistant_turn(tok) -> None:
    rec = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"},
                        {"role": "assistant", "content": "first answer"}, {"role": "user", "content": "two"},
                        {"role": "assistant", "content": "second answer"}]}
    ex = encode_record(tok, rec, "chat", 512, True)
    got = targets(tok, ex)
    assert "first answer" in got and "second answer" in got
    assert "Be brief" not in got and "one" not in got and "two" not in got
    assert prompt_text(tok, rec, "chat").endswith("<|im_start|>assistant\n")


def test_truncation_and_examples_without_targets(tok) -> None:
    stats = EncodeStats()
    long_prompt = {"instruction": "word " * 200, "output": "answer"}
    assert encode_record(tok, long_prompt, "instruction", 32, True, stats) is None
    ok = encode_record(tok, {"instruction": "hi", "output": "x " * 100}, "instruction", 32, True, stats)
    assert ok is not None and len(ok["input_ids"]) == 32
    assert stats.dropped_no_target == 1 and stats.truncated == 2 and stats.kept == 1


def test_fallback_template_when_the_tokenizer_has_none(tmp_path: Path) -> None:
    from tinymodel import build_tiny_model
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(build_tiny_model("qwen2", chat_template=None))
    assert not t.chat_template
    ds, stats = build_train_dataset(t, [{"instruction": "q", "output": "a"}], "instruction", max_len=64)
    assert t.chat_template and any("plain role-header template" in n for n in stats.notes)
    ex = ds[0]
    assert t.decode([x for x in ex["labels"] if x != IGNORE_INDEX], skip_special_tokens=False) == "a" + t.eos_token + "\n"
    assert not ensure_chat_template(t)  # installed once, then left alone


# ------------------------------------------------------------------------------------------------
# Packing (padding-free, position ids restart per example)
# ------------------------------------------------------------------------------------------------


def test_pack_examples_fill_bins_without_splitting() -> None:
    exs = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate([5, 3, 7, 2, 6, 1])]
    rows = pack_examples(exs, 8)
    assert all(len(r["input_ids"]) <= 8 and sum(r["seq_lens"]) == len(r["input_ids"]) for r in rows)
    assert sorted(n for r in rows for n in r["seq_lens"]) == [1, 2, 3, 5, 6, 7]
    assert len(rows) == 3  # 24 tokens in bins of 8: the first-fit-decreasing optimum


def test_collator_flattens_packed_rows_with_position_ids(tok) -> None:
    rows = pack_examples([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}], 16)
    batch = Collator(tok, packing=True)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # Each example's first label is the separator: nothing predicts across the boundary.
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]
    assert "attention_mask" not in batch


def test_collator_pads_labels_with_ignore_index(tok) -> None:
    batch = Collator(tok, packing=False)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                                          {"input_ids": [8], "labels": [8]}])
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
