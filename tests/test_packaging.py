"""The built wheel carries checks/, fixes/ and the data files, and fmllm-check runs from it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contents_and_checks_run_from_it(tmp_path):
    wheel_dir = tmp_path / "wheel"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(wheel_dir), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(wheel_dir.glob("fmllm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("checks/__init__.py", "checks/conftest.py", "checks/_plugin.py", "checks/test_fit.py",
                   "fixes/__init__.py", "fmllm_tui/data/architectures.json", "fmllm_tui/data/gpus.json",
                   "fmllm_tui/data/module_tables.json", "fmllm_tui/tui/app.tcss"):
        assert needed in names, needed
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Run from a folder with no checkout in sight, importing only the installed copy.
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("FMLLM_CONFIG", None)
    code = ("import checks, fixes, fmllm_tui, sys; "
            f"assert checks.__file__.startswith({str(site)!r}), checks.__file__; "
            "from fmllm_tui.cli_check import main; sys.exit(main(sys.argv[1:]))")
    cfg = tmp_path / "config.yaml"
    cfg.write_text((ROOT / "config.yaml").read_text())
    out = subprocess.run([sys.executable, "-c", code, "--config", str(cfg), "--offline", "--gpu", "RTX 3080",
                          "--only", "config", "model.architecture"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "model.architecture" in out.stdout and "0 crashed" in out.stdout
