#!/usr/bin/env python3
"""Move fmllm's pinned versions forward, deliberately: newest releases in a scratch venv, the
suite on them, and constraints.txt rewritten only when the suite passes.

    python .ci/update_constraints.py                 # scratch venv in a temp folder, full suite
    python .ci/update_constraints.py --keep-venv DIR # keep the venv (to look at a failure)
    python .ci/update_constraints.py --dry-run       # print the new pins, write nothing

Steps: (1) a new venv; (2) ``pip install torch==<pinned>`` (the CPU wheel on a CPU machine; move
torch itself with ``--torch``), then ``pip install --upgrade -e ".[dev]"`` with no constraints, so
every other package takes its newest release inside pyproject.toml's ranges; (3) ``pip freeze``;
(4) the README's test command's pytest part in that venv; (5) only on exit 0, constraints.txt is
replaced atomically and the moved versions are printed. The GPU figures in bench/RESULTS.md name
the versions they were taken with: re-run the GPU benches on the new pins before relying on them.

Exit codes: 0 pins written (or unchanged, or --dry-run), 1 the suite failed on the new versions
(constraints.txt untouched), 2 usage error, 3 the venv or install failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
SUITE = 'python -m pytest -n 2 tests checks --fmllm-gpu "RTX 3090"'
PROJECT = "fmllm"
# Installed only on GPU machines (the `gpu` extra): pinned to what the GPU benches ran with and
# carried over unchanged here; move them by hand after a GPU bench on the new version.
GPU_ONLY = ("liger-kernel",)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def parse_pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a freeze or constraints file (names normalised, PEP 503)."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        m = _PIN.match(line.strip())
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def constraints_text(freeze: str, *, python: str, torch: str, date: str,
                     gpu_pins: dict[str, str] | None = None) -> str:
    """constraints.txt from ``pip freeze``: every pinned release but fmllm itself, sorted, torch
    as the plain version (its +cpu/+cu local label is the platform's choice, not the pin), and the
    GPU-only pins carried over."""
    pins = parse_pins(freeze)
    pins.pop(PROJECT, None)
    pins["torch"] = torch.split("+", 1)[0]
    for name in GPU_ONLY:
        if name in (gpu_pins or {}) and name not in pins:
            pins[name] = (gpu_pins or {})[name]
    head = [
        "# The versions fmllm's suite passed with (and its GPU benches ran with: bench/RESULTS.md).",
        f"# Written by .ci/update_constraints.py on {date}, Python {python}. Do not edit by hand:",
        "# run that script to move them forward. Used as: pip install -c constraints.txt -e .",
    ]
    return "\n".join(head + [f"{name}=={ver}" for name, ver in sorted(pins.items())]) + "\n"


def moved(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """One line per package added, removed or moved between two pin sets."""
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a != b:
            out.append(f"  {name}: {a or '(new)'} -> {b or '(gone)'}")
    return out


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _run(cmd: list[str], **kw: object) -> int:
    print("+", shlex.join(cmd), flush=True)
    return subprocess.run(cmd, **kw).returncode  # type: ignore[call-overload]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch", help="torch version to move to (default: the pinned one)")
    ap.add_argument("--keep-venv", metavar="DIR", help="make the scratch venv here and keep it")
    ap.add_argument("--python", metavar="EXE", default=None,
                    help="use this existing environment's python: no venv, no install (for tests)")
    ap.add_argument("--suite", default=SUITE, help=f"the test command (default: {SUITE})")
    ap.add_argument("--constraints", default=str(CONSTRAINTS), help=argparse.SUPPRESS)
    ap.add_argument("--dry-run", action="store_true", help="print the new pins, write nothing")
    a = ap.parse_args(argv)
    target = Path(a.constraints)
    old = parse_pins(target.read_text(encoding="utf-8")) if target.exists() else {}
    torch_version = a.torch or old.get("torch")
    if not torch_version and not a.python:
        print("update_constraints: no torch pin in constraints.txt: pass --torch VERSION", file=sys.stderr)
        return 2

    scratch = None
    if a.python:
        py = a.python
    else:
        venv = Path(a.keep_venv) if a.keep_venv else Path(scratch := tempfile.mkdtemp(prefix="fmllm-pins-")) / "venv"
        py = str(venv / "bin" / "python")
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        if (_run([sys.executable, "-m", "venv", str(venv)])
                or _run([py, "-m", "pip", "install", "-q", f"torch=={torch_version}"], env=env)
                or _run([py, "-m", "pip", "install", "-q", "--upgrade", "-e", ".[dev]"], cwd=ROOT, env=env)):
            print("update_constraints: the scratch install failed (see above); constraints.txt untouched",
                  file=sys.stderr)
            return 3
    try:
        freeze = subprocess.run([py, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
        info = subprocess.run([py, "-c", "import sys, torch; print(sys.version.split()[0], torch.__version__)"],
                              capture_output=True, text=True, check=True).stdout.split()
        date = dt.date.today().isoformat()
        text = constraints_text(freeze, python=info[0], torch=info[1], date=date, gpu_pins=old)
        new = parse_pins(text)
        print("\n".join(moved(old, new)) or "  nothing moved")
        if a.dry_run:
            print(text, end="")
            return 0
        suite_env = {**os.environ, "PATH": f"{Path(py).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                     "VIRTUAL_ENV": str(Path(py).parent.parent)}
        code = _run(["bash", "-c", a.suite], cwd=ROOT, env=suite_env)
        if code != 0:
            print(f"update_constraints: the suite failed on these versions (exit {code}); "
                  f"{target.name} untouched", file=sys.stderr)
            return 1
        if new == old:
            print(f"update_constraints: the suite passed; {target.name} already pins these versions")
            return 0
        write_atomic(target, text)
        print(f"update_constraints: the suite passed; {target.name} written. Re-run the GPU benches "
              "(bench/RESULTS.md) on the new pins, then commit.")
        return 0
    except (subprocess.CalledProcessError, OSError, IndexError) as e:
        print(f"update_constraints: could not read the environment: {e}", file=sys.stderr)
        return 3
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
