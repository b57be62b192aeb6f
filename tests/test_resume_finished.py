"""Resume of a finished run is refused (found on the GPU resume bench, 2026-12-07): resuming a run
that ended ok, from its final checkpoint, made the Trainer run one step past max_steps ('finished
13 steps' of 12) and overwrite the adapter the run had delivered."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tui_support import scaled

from fmllm_tui.config import load_config
from fmllm_tui.runner import RunError, resume, start, status, wait
from fmllm_tui.runner import rundir as rd

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_resume_of_a_finished_run_is_refused_and_changes_nothing(tmp_path: Path, tiny_model_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        paths:
          output_dir: {tmp_path / 'out'}
          ft_combined_data_file: {REPO / 'data' / 'sample_instructions.jsonl'}
        fine_tuning:
          base_model_name: {tiny_model_dir}
          data_format: instruction
          lora: {{r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}
          training: {{per_device_train_batch_size: 2, max_seq_length: 96, max_steps: 2, save_steps: 1,
                      logging_steps: 1}}
        """))
    run_dir = start(load_config(cfg), "train")
    rec = wait(run_dir, timeout=scaled(300))
    assert rec and rec["status"] == "ok", (run_dir / rd.LOG).read_text()[-3000:]
    before = sorted(p.name for p in (run_dir / rd.CHECKPOINTS).iterdir())
    exit_before = (run_dir / rd.EXIT).read_text()

    with pytest.raises(RunError, match=r"finished( \(\d+ steps\))?: there is nothing to resume; start a new run"):
        resume(run_dir)
    assert sorted(p.name for p in (run_dir / rd.CHECKPOINTS).iterdir()) == before
    assert (run_dir / rd.EXIT).read_text() == exit_before and status(run_dir)["state"] == "ok"

    # The CLI: exit 2 (a refused resume, as for a live run), the message on stderr.
    p = subprocess.run([sys.executable, "-m", "fmllm_tui.cli_run", "resume", "--run-dir", str(run_dir)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "nothing to resume" in p.stderr
    assert json.loads((run_dir / rd.EXIT).read_text())["status"] == "ok"
