"""Pinned installs: constraints.txt pins what pyproject.toml's ranges allow, and
.ci/update_constraints.py writes new pins only when the suite passes on them."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("update_constraints", ROOT / ".ci" / "update_constraints.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_pins_fall_inside_pyproject_ranges_and_cover_every_dependency():
    import tomllib
    from packaging.requirements import Requirement

    uc = _script()
    pins = uc.parse_pins((ROOT / "constraints.txt").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
            + project["optional-dependencies"]["gpu"]]
    for req in reqs:
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"
    assert "fmllm" not in pins and "+" not in pins["torch"]


def test_the_readme_and_ci_install_with_the_constraints():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv")]
    assert len(commands) >= 2
    for cmd in commands:
        assert "pip install -q -c constraints.txt torch==2.13.0" in cmd or "pip install -c constraints.txt torch==2.13.0" in cmd
        assert re.search(r"pip install (-q )?-c constraints\.txt -e ", cmd), cmd
    test_cmd = next(c for c in commands if "pytest" in c)
    assert test_cmd in ci  # CI runs the README's test command verbatim


FREEZE = """accelerate==1.16.0
-e git+https://example.invalid/fmllm@abc#egg=fmllm
fmllm==0.1.0
torch==2.13.0+cpu
Ruamel.Yaml==0.19.1
some_pkg @ file:///tmp/x.whl
"""


def test_constraints_text_from_a_freeze():
    uc = _script()
    text = uc.constraints_text(FREEZE, python="3.11.7", torch="2.13.0+cpu", date="2026-12-07",
                               gpu_pins={"liger-kernel": "0.8.5", "accelerate": "0.1"})
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == ["accelerate==1.16.0", "liger-kernel==0.8.5", "ruamel-yaml==0.19.1", "torch==2.13.0"]
    assert "2026-12-07" in text and "3.11.7" in text
    assert uc.moved({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "1"}) == ["  b: 2 -> 3", "  c: (new) -> 1"]


@pytest.mark.parametrize("suite, code, written", [("exit 1", 1, False), ("exit 0", 0, True)])
def test_new_pins_are_written_only_when_the_suite_passes(tmp_path, capsys, suite, code, written):
    """Run against this environment (--python: no venv, no install) with a stand-in suite."""
    uc = _script()
    target = tmp_path / "constraints.txt"
    old = "# old\ntorch==2.13.0\naccelerate==0.0.1\nliger-kernel==0.8.5\n"
    target.write_text(old)
    rc = uc.main(["--python", sys.executable, "--suite", suite, "--constraints", str(target)])
    assert rc == code
    out = capsys.readouterr()
    assert "accelerate: 0.0.1 -> " in out.out
    if written:
        pins = uc.parse_pins(target.read_text())
        assert pins["accelerate"] != "0.0.1" and pins["liger-kernel"] == "0.8.5"
        assert not list(tmp_path.glob("*.tmp"))
    else:
        assert target.read_text() == old and "the suite failed" in out.err


def test_a_dry_run_writes_nothing(tmp_path, capsys):
    uc = _script()
    target = tmp_path / "constraints.txt"
    target.write_text("torch==2.13.0\n")
    assert uc.main(["--python", sys.executable, "--suite", "exit 0", "--constraints", str(target), "--dry-run"]) == 0
    assert target.read_text() == "torch==2.13.0\n" and "torch==" in capsys.readouterr().out


def test_no_torch_pin_and_no_torch_flag_is_a_usage_error(tmp_path, capsys):
    uc = _script()
    target = tmp_path / "constraints.txt"
    target.write_text("accelerate==1.0\n")
    assert uc.main(["--constraints", str(target)]) == 2
    assert "--torch" in capsys.readouterr().err


def test_an_environment_that_cannot_be_read_leaves_the_pins_alone(tmp_path, capsys):
    uc = _script()
    target = tmp_path / "constraints.txt"
    target.write_text("torch==2.13.0\n")
    assert uc.main(["--python", str(tmp_path / "no-such-python"), "--suite", "exit 0",
                    "--constraints", str(target)]) == 3
    assert "could not read the environment" in capsys.readouterr().err
    assert target.read_text() == "torch==2.13.0\n"
