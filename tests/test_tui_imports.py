"""Import boundaries: the headless core never imports Textual, and the TUI's first frame does
not wait for the heavy parts (checked in fresh interpreters, so nothing is imported already)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tui_support import ROOT, write_config

HEADLESS = """
import json, sys
import fmllm_tui.checks._plugin, fmllm_tui.checks.conftest
import fmllm_tui.fixes as fixes
from fmllm_tui.fixes import apply_changes, plan_fix, preset_changes, PRESETS
from fmllm_tui import checkrun, cli_check, cli_run, fitsearch, gpudb, hub, logdiag, lognoise, memory, runner
from fmllm_tui.runner import launch, monitor, rundir, supervise
# the TUI's own helpers that hold no UI either
from fmllm_tui.tui import checkstream, configops, detailtext, memplan, runlink
rc = cli_check.main(["--config", sys.argv[1], "--vram", "24GiB", "--only", "config", "--json"])
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "textual_plotext", "textual_serve"))
print(json.dumps({"rc": rc, "textual": bad}))
"""

FIRST_FRAME = """
import json, sys
import fmllm_tui.cli_tui
from fmllm_tui.tui.app import FmllmApp, run_app
heavy = ("torch", "transformers", "peft", "datasets", "pydantic", "ruamel", "textual_plotext", "plotext",
         "fmllm_tui.fixes", "fmllm_tui.memory", "fmllm_tui.config", "fmllm_tui.runner", "huggingface_hub", "psutil")
print(json.dumps(sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy)))
"""


def _run(code: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_headless_core_never_imports_textual(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    out = json.loads(_run(HEADLESS, str(cfg), cwd=tmp_path))
    assert out["textual"] == []
    assert out["rc"] in (0, 1)  # the checks ran (pass or findings), not a usage error or crash


def test_first_frame_imports_nothing_heavy(tmp_path: Path) -> None:
    assert json.loads(_run(FIRST_FRAME, cwd=tmp_path)) == []
