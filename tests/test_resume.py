"""Resume is exact and survives a damaged checkpoint (issue 22, items 3 and 6).

The step after a resume reproduces the loss it had without the interruption: the same batches,
RNG (python, numpy, torch) and optimizer state come from the Trainer's checkpoint, and the loss
window (the losses summed since the last logged step, which the Trainer does not keep) from
fmllm's. Rows the resumed run writes again are marked, and readers keep the newest row of a step.
A checkpoint with a file cut short is named, set aside, and the one before it is used.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from runconfig import write_run_config
from tui_support import scaled

from fmllm_tui.config import load_config
from fmllm_tui.runner import resume, start, status, wait
from fmllm_tui.runner import rundir as rd
from fmllm_tui.runner.monitor import read_jsonl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _config(tmp_path: Path, model: Path, *, max_steps: int, save_steps: int, logging_steps: int) -> Path:
    """Dropout on (the RNG matters), accumulation, a cosine schedule with warmup (the scheduler's
    state matters), length-grouped batches (the sampler's order matters), a log row every few steps."""
    return write_run_config(
        tmp_path, model, data_format="instruction", qlora=True, lora={"dropout": 0.1},
        training={"gradient_accumulation_steps": 2, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1,
                  "group_by_length": True, "seed": 11, "max_steps": max_steps, "save_steps": save_steps,
                  "logging_steps": logging_steps},
        fmllm={"minimal_test_steps": 4})



def _finish(run_dir: Path) -> dict:
    rec = wait(run_dir, timeout=scaled(300))
    assert rec and rec["status"] == "ok", (run_dir / rd.LOG).read_text()[-3000:]
    return rec


def _as_if_killed_after(run_dir: Path, step: int) -> None:
    """Take a finished run back to what a kill after checkpoint-``step`` leaves: no later
    checkpoint, no final adapter or summary, and an exit record that says killed (fmllm-run
    resume refuses a run that finished ok)."""
    for ck in (run_dir / rd.CHECKPOINTS).glob("checkpoint-*"):
        if int(ck.name.split("-")[-1]) > step:
            shutil.rmtree(ck)
    shutil.rmtree(run_dir / rd.ADAPTER)
    (run_dir / rd.SUMMARY).unlink()
    rec = json.loads((run_dir / rd.EXIT).read_text())
    rec.update(status="killed", exit_code=None, signal="SIGKILL", outcome=None,
               message="the training command was ended by SIGKILL")
    rd.write_json_atomic(run_dir / rd.EXIT, rec)


@pytest.mark.slow
def test_resume_reproduces_the_run_without_the_interruption(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Run 12 steps (checkpoints 3, 6, 9, 12; rows at 1, 4, 8, 12), then take the run back to
    checkpoint-6 and resume: rows 8 and 12 come again with the same loss, grad norm and token count.
    Row 8 averages steps 5-8, two of them before the checkpoint: before fmllm kept the loss window,
    it averaged 7-8 only (6.1673 vs 6.1402 with these settings)."""
    cfg = _config(tmp_path, tiny_model_dir, max_steps=12, save_steps=3, logging_steps=4)
    run_dir = start(load_config(cfg), "train")
    _finish(run_dir)
    first = {r["step"]: r for r in read_jsonl(run_dir / rd.METRICS)}
    assert sorted(first) == [1, 4, 8, 12] and not any("replayed" in r for r in first.values())
    _as_if_killed_after(run_dir, 6)

    resume(run_dir)
    _finish(run_dir)
    rows = read_jsonl(run_dir / rd.METRICS)
    again = rows[len(first):]
    assert [r["step"] for r in again] == [8, 12], again
    for r in again:
        before = first[r["step"]]
        assert r["replayed"] is True and r["resumed_from"] == "checkpoint-6"
        assert r["loss"] == pytest.approx(before["loss"], rel=0, abs=1e-6), (r["step"], before["loss"], r["loss"])
        assert r["grad_norm"] == pytest.approx(before["grad_norm"], rel=1e-5)
        assert r["lr"] == pytest.approx(before["lr"], rel=1e-9) and r["tokens"] == before["tokens"]
    assert "resuming from checkpoint-6" in (run_dir / rd.LOG).read_text()

    # Readers count each step once: the replayed rows replace the first ones from step 8 on.
    current = rd.current_rows(rows)
    assert [r["step"] for r in current] == [1, 4, 8, 12] and current[-1] is rows[-1]
    assert status(run_dir)["last_metrics"]["step"] == 12
    from fmllm_tui.cli_run import _print_event

    buf = io.StringIO()
    _print_event({"type": "metrics", **again[0]}, False, buf)
    assert "(replayed after resume from checkpoint-6)" in buf.getvalue()


@pytest.mark.slow
def test_a_truncated_adapter_in_the_latest_checkpoint_falls_back_to_the_one_before(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    """The resume failed with safetensors' own error (no file named), did not try the previous
    checkpoint, and the state read 'failed (tokenizing)'."""
    cfg = _config(tmp_path, tiny_model_dir, max_steps=4, save_steps=2, logging_steps=1)
    run_dir = start(load_config(cfg), "train")
    _finish(run_dir)
    bad = run_dir / rd.CHECKPOINTS / "checkpoint-4" / "adapter_model.safetensors"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # a disk that filled, a copy cut short
    _as_if_killed_after(run_dir, 4)  # killed after that save

    resume(run_dir)
    _finish(run_dir)
    log = (run_dir / rd.LOG).read_text()
    assert f"checkpoint-4 is damaged and not resumed from: {bad}: truncated" in log, log[-2000:]
    assert "falling back to checkpoint-2, the newest complete checkpoint before checkpoint-4" in log
    assert "resuming from checkpoint-2" in log
    assert (run_dir / rd.CHECKPOINTS / "checkpoint-4.damaged").is_dir()  # kept for a look, never resumed
    summary = json.loads((run_dir / rd.SUMMARY).read_text())
    assert summary["steps"] == 4 and summary["resumed_from"].endswith("checkpoint-2")
    assert status(run_dir)["state"] == "ok"


def test_checkpoint_problem_names_the_file_cut_short(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    ck = tmp_path / "checkpoint-4"
    ck.mkdir()
    save_file({"a": torch.zeros(8, 8), "b": torch.ones(3)}, str(ck / "adapter_model.safetensors"))
    torch.save({"state": {0: torch.zeros(16)}}, ck / "optimizer.pt")
    (ck / "trainer_state.json").write_text("{}")
    assert rd.checkpoint_problem(ck) is None
    for name, cut, why in (("adapter_model.safetensors", 100, "truncated"), ("adapter_model.safetensors", 4, "shorter"),
                           ("optimizer.pt", -40, "no zip directory"), ("trainer_state.json", 1, "not valid JSON")):
        good = (ck / name).read_bytes()
        (ck / name).write_bytes(good[:cut])
        problem = rd.checkpoint_problem(ck)
        assert problem is not None and problem.startswith(f"{ck / name}: ") and why in problem, problem
        (ck / name).write_bytes(good)
    assert rd.checkpoint_problem(ck) is None


def test_current_rows_keep_the_newest_row_of_each_step() -> None:
    rows = [{"step": s, "loss": 1.0} for s in (1, 4, 8, 12)]
    rows += [{"step": 8, "loss": 2.0, "replayed": True}, {"step": 12, "loss": 3.0, "replayed": True},
             {"step": 16, "loss": 4.0}]
    assert [(r["step"], r["loss"]) for r in rd.current_rows(rows)] == [(1, 1.0), (4, 1.0), (8, 2.0), (12, 3.0),
                                                                       (16, 4.0)]
    # A resume from an earlier checkpoint whose first row is a step with no earlier row.
    rows2 = [{"step": s} for s in (1, 4, 8, 12)] + [{"step": 10, "replayed": True}]
    assert [r["step"] for r in rd.current_rows(rows2)] == [1, 4, 8, 10]
    # One attempt logging a step twice (the Trainer's epoch-end row): both rows stay.
    rows3 = [{"step": 1, "tokens_per_s": 812.0}, {"step": 1, "tokens_per_s": 0.0}, {"step": 2}]
    assert len(rd.current_rows(rows3)) == 3
    resumed = [{"step": 4, "resumed_from": "checkpoint-2"}, {"step": 4, "resumed_from": "checkpoint-2", "epoch": 1.0}]
    assert len(rd.current_rows(rows3 + resumed)) == 5


@pytest.mark.slow
def test_a_real_trainer_outliving_its_supervisor_is_stopped_then_resumed(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Issue 22 item 1 with fmllm's own training process: its supervisor SIGKILLed mid-run, the run
    stays 'running' (the trainer recorded itself), resume refuses naming it, stop reaches it (it
    saves a checkpoint; its own outcome gives 'stopped'), then a resume takes the folder again."""
    import os
    import signal
    import time

    from fmllm_tui.runner import RunError, kill, procs, stop

    cfg = _config(tmp_path, tiny_model_dir, max_steps=40, save_steps=5, logging_steps=1)
    run_dir = start(load_config(cfg), "train")
    end = time.monotonic() + scaled(180)
    while time.monotonic() < end and not any(r.get("step", 0) >= 2 for r in read_jsonl(run_dir / rd.METRICS)):
        assert not (run_dir / rd.EXIT).exists(), (run_dir / rd.LOG).read_text()[-3000:]
        time.sleep(0.1)
    trainer, _ = procs.read_pid_record(run_dir / rd.trainer_pid(0))
    assert trainer
    os.kill(int((run_dir / rd.PID).read_text().split()[0]), signal.SIGKILL)
    time.sleep(0.5)
    st = status(run_dir)
    assert st["state"] == "running" and not st["supervisor_alive"], st
    assert {"role": "rank0", "pid": trainer} in st["processes"]
    with pytest.raises(RunError, match=f"training process pid {trainer} \\(rank 0\\)"):
        resume(run_dir)
    assert stop(run_dir)
    rec = wait(run_dir, timeout=scaled(120))
    assert rec and rec["status"] == "stopped" and "supervisor was gone" in rec["recorded_by"], rec
    assert status(run_dir)["state"] == "stopped"
    resume(run_dir)  # the folder is free again: a new supervisor and trainer take it
    end = time.monotonic() + scaled(180)
    while time.monotonic() < end and not any("resumed_from" in r for r in read_jsonl(run_dir / rd.METRICS)):
        assert not (run_dir / rd.EXIT).exists(), (run_dir / rd.LOG).read_text()[-3000:]
        time.sleep(0.1)
    assert status(run_dir)["supervisor_alive"] is True
    assert kill(run_dir) and not procs.live(run_dir)
