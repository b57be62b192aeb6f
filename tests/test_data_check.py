"""The data checks and fmllm_tui.datafile on good and bad training files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmllm_tui.cli_check import main
from fmllm_tui.datafile import inspect_data, validate_row

CONFIG = """\
base_model_name: {model}
data_format: {fmt}
lora: {{r: 8}}
training:
  max_seq_length: {seq}
paths:
  ft_combined_data_file: {data}
"""


def run_data_checks(tmp_path: Path, data_text: str | bytes | None, fmt: str = "instruction", seq: int = 1024,
                    model: str = "Qwen/Qwen2.5-7B-Instruct", capsys=None) -> tuple[int, dict]:
    data = tmp_path / "train.jsonl"
    if isinstance(data_text, bytes):
        data.write_bytes(data_text)
    elif data_text is not None:
        data.write_text(data_text)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG.format(model=model, fmt=fmt, seq=seq, data=data.name))
    code = main(["--config", str(cfg), "--json", "--only", "data"])
    doc = json.loads(capsys.readouterr().out)
    return code, {c["id"]: c for c in doc["checks"]}


def row(**kw) -> str:
    return json.dumps(kw) + "\n"


def test_good_instruction_data(tmp_path, capsys):
    text = row(instruction="Say hi", input="", output="hi") * 3
    code, checks = run_data_checks(tmp_path, text, capsys=capsys)
    assert code == 0
    assert checks["data.file"]["status"] == "pass" and checks["data.file"]["values"]["rows"] == 3
    assert checks["data.lengths"]["status"] == "pass"


@pytest.mark.parametrize(
    "text, words",
    [
        (row(instruction="a", output="b") + "{not json\n", ["train.jsonl:2", "invalid JSON"]),
        (row(prompt="a", completion="b"), ["'instruction': missing", "set data_format: prompt_completion"]),
        (row(instruction="a", output=""), ["'output': empty"]),
        (row(instruction="a", output=3), ["'output': expected text"]),
        ("[1, 2]\n", ["expected a JSON object"]),
        (b'{"instruction": "caf\xe9", "output": "x"}\n', ["not UTF-8"]),
        ("\n\n", ["has no examples"]),
    ],
    ids=["invalid-json", "wrong-format", "empty-output", "wrong-type", "not-object", "not-utf8", "empty"],
)
def test_bad_data_is_a_failure_with_the_line(tmp_path, capsys, text, words):
    code, checks = run_data_checks(tmp_path, text, capsys=capsys)
    finding = checks["data.file"]["finding"]
    assert checks["data.file"]["status"] == "fail" and code == 1
    for w in words:
        assert w in finding, finding


def test_missing_data_file(tmp_path, capsys):
    code, checks = run_data_checks(tmp_path, None, capsys=capsys)
    assert checks["data.file"]["status"] == "fail" and "does not exist" in checks["data.file"]["finding"]
    assert checks["data.lengths"]["status"] == "skip"


def test_chat_format(tmp_path, capsys):
    good = row(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    code, checks = run_data_checks(tmp_path, good, fmt="chat", capsys=capsys)
    assert checks["data.file"]["status"] == "pass"
    bad = row(messages=[{"role": "user", "content": "hi"}])
    code, checks = run_data_checks(tmp_path, bad, fmt="chat", capsys=capsys)
    assert "no assistant message" in checks["data.file"]["finding"]


def test_long_examples_warn_with_share(tmp_path, capsys):
    text = row(instruction="short", output="ok") * 3 + row(instruction="long " * 400, output="ok")
    code, checks = run_data_checks(tmp_path, text, seq=64, capsys=capsys)
    lengths = checks["data.lengths"]
    assert lengths["status"] == "warn" and lengths["values"]["share_truncated"] == 0.25
    assert "25.0%" in lengths["finding"] and code == 0


def test_real_tokenizer_is_used_when_local(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(row(instruction="What is the capital of France?", output="Paris."))
    rep = inspect_data(str(data), "instruction", model=str(tiny_model_dir))
    assert rep.tokenizer and rep.tokenizer.endswith("tokenizer.json")
    assert rep.rows == 1 and rep.lengths[0] > 12


def test_validate_row_formats():
    assert validate_row({"prompt": "a", "completion": "b"}, "prompt_completion") is None
    assert "role" in validate_row({"messages": [{"content": "x"}]}, "chat")
