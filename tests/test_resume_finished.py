"""Resume of a finished run is refused (found on the resume bench, 2026-12-07): resuming a run from
a checkpoint at its last step made the Trainer run one step past max_steps ('finished 13 steps' of
12) and overwrite the adapter the run had delivered. A run taken back to an earlier checkpoint
(tests/test_resume.py, test_fsdp_cpu.py) still resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_resume import _config
from tui_support import scaled

from fmllm_tui.config import load_config
from fmllm_tui.runner import RunError, resume, start, status, wait
from fmllm_tui.runner import rundir as rd


@pytest.mark.slow
def test_resume_of_a_finished_run_is_refused_and_changes_nothing(tmp_path: Path, tiny_model_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the run's own settings are test_resume's (one config)
    cfg = _config(tmp_path, tiny_model_dir, max_steps=2, save_steps=1, logging_steps=1)
    run_dir = start(load_config(cfg), "train")
    rec = wait(run_dir, timeout=scaled(300))
    assert rec and rec["status"] == "ok", (run_dir / rd.LOG).read_text()[-3000:]
    before = sorted(p.name for p in (run_dir / rd.CHECKPOINTS).iterdir())
    exit_before = (run_dir / rd.EXIT).read_text()

    with pytest.raises(RunError, match=r"finished: its newest checkpoint, checkpoint-2, is at its last step; there is nothing to resume"):
        resume(run_dir)
    assert sorted(p.name for p in (run_dir / rd.CHECKPOINTS).iterdir()) == before
    assert (run_dir / rd.EXIT).read_text() == exit_before and status(run_dir)["state"] == "ok"

    # The CLI: exit 2 (a refused resume, as for a live run), the message on stderr.
    p = subprocess.run([sys.executable, "-m", "fmllm_tui.cli_run", "resume", "--run-dir", str(run_dir)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "nothing to resume" in p.stderr
    assert json.loads((run_dir / rd.EXIT).read_text())["status"] == "ok"
    assert "training.max_steps" in p.stderr  # the config set the length of this run

    # A run whose length came from --steps is told to use a higher --steps (it was told to raise
    # training.max_steps, which that run did not read).
    spec = json.loads((run_dir / rd.CONFIG).read_text())
    spec["runner"]["steps"] = 2
    rd.write_json_atomic(run_dir / rd.CONFIG, spec)
    with pytest.raises(RunError, match=r"with a higher --steps \(this run had --steps 2\)"):
        resume(run_dir)
