"""The built wheel carries checks/ and fixes/ inside fmllm's own package (fmllm_tui.checks,
fmllm_tui.fixes: no generic top-level names in site-packages) with the data files; fmllm-check
runs from it, and so does the README's CI command from a user's own folder."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
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
    assert not {n.split("/", 1)[0] for n in names} - {"fmllm_tui", *(n.split("/", 1)[0] for n in names
                                                                       if ".dist-info/" in n)}
    eps = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "[pytest11]\nfmllm = fmllm_tui.checks._plugin" in zipfile.ZipFile(wheel).read(eps).decode()
    for needed in ("fmllm_tui/checks/__init__.py", "fmllm_tui/checks/conftest.py", "fmllm_tui/checks/_plugin.py",
                   "fmllm_tui/checks/test_fit.py", "fmllm_tui/fixes/__init__.py", "fmllm_tui/data/architectures.json", "fmllm_tui/data/gpus.json",
                   "fmllm_tui/data/module_tables.json", "fmllm_tui/tui/app.tcss"):
        assert needed in names, needed
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Run from a folder with no checkout in sight, importing only the installed copy.
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("FMLLM_CONFIG", None)
    code = ("import fmllm_tui.checks as checks, fmllm_tui.fixes, fmllm_tui, sys; "
            f"assert checks.__file__.startswith({str(site)!r}), checks.__file__; "
            "from fmllm_tui.cli_check import main; sys.exit(main(sys.argv[1:]))")
    cfg = tmp_path / "config.yaml"
    cfg.write_text((ROOT / "config.yaml").read_text())
    out = subprocess.run([sys.executable, "-c", code, "--config", str(cfg), "--offline", "--gpu", "RTX 3080",
                          "--only", "config", "model.architecture"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "model.architecture" in out.stdout and "0 crashed" in out.stdout

    # The README's CI command, verbatim but for the paths, from a folder holding only a config.
    junit = tmp_path / "report.xml"
    ci = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "fmllm_tui.checks", "--fmllm-config", "config.yaml",
                         "--fmllm-gpu", "RTX 3090", "--fmllm-offline", "--fmllm-only", "config",
                         "--junitxml", str(junit), "-p", "no:cacheprovider"],
                        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert ci.returncode == 0, ci.stdout[-3000:] + ci.stderr[-2000:]
    cases = {c.get("name"): c.get("classname") for c in ET.parse(junit).iter("testcase")}
    # Collected from the installed package (not a checkout), and only the config checks ran.
    # (JUnit's class names are paths from the rootdir, the user's folder: site/ is the install.)
    assert cases.get("test_config_valid") == "site.fmllm_tui.checks.test_config", cases
    assert all(c.startswith("site.fmllm_tui.checks.") for c in cases.values()), cases
