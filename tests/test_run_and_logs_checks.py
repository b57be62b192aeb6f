"""The minimal-test check on the CPU tiny model, and the log check on real-shaped logs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fmllm_tui.cli_check import main

LOGS = Path(__file__).parent / "data" / "logs"


def write_config(tmp_path: Path, model: str) -> Path:
    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "data" / "sample_instructions.jsonl", tmp_path / "train.jsonl")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"base_model_name: {model}\n"
        "lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj]}\n"
        "quantization: {use_4bit: true, bnb_4bit_compute_dtype: bfloat16}\n"
        "training: {max_seq_length: 64, learning_rate: 0.005, logging_steps: 1, per_device_train_batch_size: 2}\n"
        "paths: {ft_combined_data_file: train.jsonl, ft_output_dir: out}\n"
        "fmllm: {minimal_test_steps: 6}\n"
    )
    return cfg


def run_json(capsys, *args: str) -> tuple[int, dict]:
    code = main([*args, "--json"])
    doc = json.loads(capsys.readouterr().out)
    return code, {c["id"]: c for c in doc["checks"]}


@pytest.mark.slow
def test_minimal_test_check_on_cpu(tmp_path, capsys, tiny_model_dir):
    cfg = write_config(tmp_path, str(tiny_model_dir))
    code, checks = run_json(capsys, "--config", str(cfg), "--test", "--only", "run.minimal_test")
    c = checks["run.minimal_test"]
    assert c["status"] in ("pass", "warn"), c["finding"]
    v = c["values"]
    assert v["steps"] == 6 and len(v["losses"]) >= 1 and v["adapter_reloaded"] is True
    assert str(v["device"]).startswith("cpu") and "CPU smoke test" in c["finding"]
    assert Path(v["run_dir"]).is_dir()
    # The run's own log is scanned by default afterwards.
    code, checks = run_json(capsys, "--config", str(cfg), "--only", "logs.scan")
    assert checks["logs.scan"]["status"] == "pass"
    assert checks["logs.scan"]["values"]["files"][0].endswith("train.log")


def test_minimal_test_skips_without_flag(tmp_path, capsys, tiny_model_dir):
    cfg = write_config(tmp_path, str(tiny_model_dir))
    code, checks = run_json(capsys, "--config", str(cfg), "--only", "run.minimal_test")
    assert checks["run.minimal_test"]["status"] == "skip" and code == 0


def test_log_check_reports_oom_with_line_and_fix(tmp_path, capsys, tiny_model_dir):
    cfg = write_config(tmp_path, str(tiny_model_dir))
    oom = sorted(LOGS.glob("cuda_oom__*.log"))[0]
    code, checks = run_json(capsys, "--config", str(cfg), "--only", "logs.scan", "--log", str(oom))
    c = checks["logs.scan"]
    assert c["status"] == "fail" and code == 1
    hit = c["values"]["hits"][0]
    assert set(hit) >= {"pattern", "file", "line", "excerpt", "count", "cause", "fix"}
    assert hit["pattern"].startswith("cuda_oom") and hit["line"] > 0
    assert f"{oom}:{hit['line']}" in c["finding"]


def test_log_check_clean_log_passes(tmp_path, capsys, tiny_model_dir):
    cfg = write_config(tmp_path, str(tiny_model_dir))
    log = tmp_path / "ok.log"
    log.write_text("{'loss': 2.1, 'grad_norm': 0.5, 'learning_rate': 0.0002, 'epoch': 0.1}\n"
                   "{'loss': 1.7, 'grad_norm': 0.4, 'learning_rate': 0.0002, 'epoch': 0.2}\n"
                   "{'train_runtime': 12.0, 'train_loss': 1.9, 'epoch': 1.0}\n")
    code, checks = run_json(capsys, "--config", str(cfg), "--only", "logs.scan", "--log", str(log))
    assert checks["logs.scan"]["status"] == "pass" and code == 0


def test_log_check_reads_the_config_before_advising(tmp_path, capsys, tiny_model_dir):
    """Micro-batch 1 with checkpointing on: an OOM's fix does not advise them again (issue 21)."""
    cfg = write_config(tmp_path, str(tiny_model_dir))
    cfg.write_text(cfg.read_text().replace("per_device_train_batch_size: 2", "per_device_train_batch_size: 1, "
                                           "gradient_checkpointing: true"))
    code, checks = run_json(capsys, "--config", str(cfg), "--only", "logs.scan",
                            "--log", str(LOGS / "cuda_oom__torch25_train_step.log"))
    c = checks["logs.scan"]
    assert c["status"] == "fail"
    hit = c["values"]["hits"][0]
    keys = {ch["key"] for ch in hit["fix"]["changes"]}
    assert hit["phase"] == "training"
    assert f"[{hit['pattern']}] training: " in c["finding"]  # the human line names the phase too
    assert "training.max_seq_length" in keys
    assert not keys & {"training.per_device_train_batch_size", "training.gradient_checkpointing"}
    assert "already" in hit["fix"]["summary"]
    # the check's fix plans the concrete change; cutting max_seq_length may truncate data: not applied by --fix
    fx = c["fix"]
    assert fx["id"] == "memory.fit" and fx["safe"] is False
    assert {"key": "training.max_seq_length", "from": 64, "to": 32} in fx["changes"]


def test_log_check_info_is_a_note_not_a_failure(tmp_path, capsys, tiny_model_dir):
    cfg = write_config(tmp_path, str(tiny_model_dir))
    code, checks = run_json(capsys, "--config", str(cfg), "--only", "logs.scan",
                            "--log", str(LOGS / "deprecation_info__tokenizer_futurewarning.log"))
    c = checks["logs.scan"]
    assert c["status"] == "pass" and code == 0
    assert c["values"]["hits"][0]["severity"] == "info"
    assert "deprecation_info" in c["finding"]


def test_log_check_warns_when_the_log_ends_inside_a_traceback(tmp_path, capsys, tiny_model_dir):
    """A pasted log cut inside its traceback shows a run that stopped, without the error: not a pass."""
    cfg = write_config(tmp_path, str(tiny_model_dir))
    log = tmp_path / "cut.log"
    log.write_text("{'loss': 2.1, 'grad_norm': 0.5, 'learning_rate': 0.0002, 'epoch': 0.1}\n"
                   "Traceback (most recent call last):\n"
                   '  File "/w/train.py", line 88, in <module>\n'
                   "    trainer.train()\n"
                   '  File "/py/site-packages/transformers/trainer.py", line 2240, in train\n'
                   "    return inner_training_loop(\n")
    code, checks = run_json(capsys, "--config", str(cfg), "--only", "logs.scan", "--log", str(log))
    c = checks["logs.scan"]
    assert c["status"] == "warn" and code == 0, c
    assert "log_cut_in_traceback" in c["finding"] and f"{log}:5:" in c["finding"]  # the last frame it holds
    assert "whole log" in c["fix"]["summary"]
