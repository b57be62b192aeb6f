"""How a finished run is explained: the supervisor's diagnosis reads what the run really ran
(config.json's typed config and plan), and the Run screen's lines and metrics read it right."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from test_runner_launch import write_config

from fmllm_tui.config import load_config
from fmllm_tui.runner import rundir as rd
from fmllm_tui.runner.launch import build_spec
from fmllm_tui.runner.supervise import diagnose
from fmllm_tui.tui.runlink import RunFollower, diagnosis_lines

ROOT = Path(__file__).resolve().parents[1]
OOM_LOG = ROOT / "tests" / "data" / "logs" / "cuda_oom__torch25_train_step.log"


def _run_dir(base: Path, tiny_model_dir: Path, **training: object) -> Path:
    """A finished run's folder: config.json as the launch writes it (``training`` changed), and
    train.log ending in a training-step OOM."""
    base.mkdir(parents=True)
    spec = build_spec(load_config(write_config(base, tiny_model_dir)), "train", device="cpu")
    spec["config"]["training"].update(training)
    run_dir = base / "run"
    run_dir.mkdir()
    rd.write_json_atomic(run_dir / rd.CONFIG, spec)
    shutil.copy(OOM_LOG, run_dir / rd.LOG)
    return run_dir


def _advised(hits: list[dict]) -> set[str]:
    return {c["key"] for h in hits if (h.get("fix") or {}).get("changes") for c in h["fix"]["changes"]}


def test_the_supervisors_diagnosis_does_not_advise_what_the_run_already_did(tmp_path, tiny_model_dir) -> None:
    hits, why = diagnose(_run_dir(tmp_path / "a", tiny_model_dir, per_device_train_batch_size=2,
                                  gradient_checkpointing=False) / rd.LOG)
    assert why is None and hits and hits[0]["pattern"].startswith("cuda_oom")
    assert "training.per_device_train_batch_size" in _advised(hits)
    # micro-batch 1 with checkpointing on (the run's config.json says so): neither is advised again
    hits, _ = diagnose(_run_dir(tmp_path / "b", tiny_model_dir, per_device_train_batch_size=1,
                                gradient_checkpointing=True) / rd.LOG)
    advised = _advised(hits)
    assert hits and not advised & {"training.per_device_train_batch_size", "training.gradient_checkpointing"}


def test_run_screen_lines_put_the_failure_first_and_notes_after_with_their_phase() -> None:
    exit_rec = {"message": "failed", "diagnosis": [
        {"pattern": "deprecation_info", "severity": "info", "line": 3, "cause": "a harmless deprecation", "phase": "load"},
        {"pattern": "cuda_oom_eval", "severity": "error", "line": 90, "cause": "GPU out of memory in evaluation",
         "phase": "eval", "fix": {"summary": "lower the eval batch"}},
    ]}
    lines = diagnosis_lines(exit_rec)
    assert lines[1] == "train.log:90: GPU out of memory in evaluation (during eval)"
    assert lines[2] == "  fix: lower the eval batch"
    assert lines[3].startswith("note: train.log:3: a harmless deprecation")


def test_run_screen_counts_a_replayed_step_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"step": 1, "loss": 6.3}, {"step": 2, "loss": 6.2}, {"step": 3, "loss": 6.1},
            {"step": 3, "loss": 6.1, "replayed": True, "resumed_from": "checkpoint-2"},
            {"step": 4, "loss": 6.0, "resumed_from": "checkpoint-2"}]
    (run_dir / rd.METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = RunFollower(run_dir)
    f.poll()
    assert [r["step"] for r in f.rows] == [1, 2, 3, 4] and f.rows[2].get("replayed")
