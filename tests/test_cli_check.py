"""fmllm-check end to end: flags, exit codes, human/JSON/JUnit output, the checks plugin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fmllm_tui.cli_check import exit_code_for, main
from fmllm_tui.findings import CheckResult

ROOT = Path(__file__).resolve().parents[1]
GiB = 1024**3

pytest_plugins = ["pytester"]


def fake_nvml(tmp_path: Path, **overrides) -> Path:
    spec = {
        "driver": "550.54.15",
        "cuda": 12040,
        "devices": [
            {
                "name": "NVIDIA GeForce RTX 3090",
                "total": 24 * GiB,
                "used": 1 * GiB,
                "cc": [8, 6],
                "uuid": "GPU-0",
                "processes": [{"pid": 4242, "name": "python other_job.py", "used": 900 * 2**20}],
            }
        ],
    }
    spec.update(overrides)
    p = tmp_path / "nvml.json"
    p.write_text(json.dumps(spec))
    return p


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env.pop("FMLLM_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "fmllm_tui.cli_check", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=300)


def copy_config(tmp_path: Path, text: str | None = None) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text if text is not None else (ROOT / "config.yaml").read_text())
    (tmp_path / "data").mkdir(exist_ok=True)
    shutil.copy(ROOT / "data" / "sample_instructions.jsonl", tmp_path / "data")
    return cfg


def test_console_scripts_installed():
    bindir = Path(sys.executable).parent
    for name in ("fmllm-check", "fmllm-tui", "fmllm-run"):
        assert (bindir / name).exists() or shutil.which(name), name


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version(flag):
    proc = run_cli(flag)
    assert proc.returncode == 0
    assert ("fmllm-check" in proc.stdout) if flag == "--help" else proc.stdout.startswith("fmllm ")


def test_usage_errors_exit_2(tmp_path):
    cfg = copy_config(tmp_path)
    for args, words in [
        (["--bogus"], "unrecognized arguments"),
        (["--dry-run"], "--dry-run goes with --fix"),
        (["--vram", "lots"], "--vram"),
        (["--gpu", "x", "--vram", "8GiB"], "not allowed with"),
        (["--log", str(tmp_path / "missing.log")], "no such file"),
        (["--log", str(tmp_path)], "a folder; give the log file"),
        (["--junitxml", str(tmp_path)], "a folder; give a file name"),
        (["--gpu", ""], "--gpu: empty"),
    ]:
        proc = run_cli("--config", str(cfg), *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert words in proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, env, words", [
    (["--fmllm-gpu", "RTX 9999"], {}, "--fmllm-gpu: unknown GPU 'RTX 9999'"),
    ([], {"FMLLM_GPU": "24GB"}, "FMLLM_GPU: '24GB' is a memory size"),
    (["--fmllm-vram", "lots"], {}, "--fmllm-vram:"),
    ([], {"FMLLM_VRAM": "-3GiB"}, "FMLLM_VRAM:"),
], ids=["gpu-flag", "gpu-env", "vram-flag", "vram-env"])
def test_pytest_planning_options_bad_forms_stop_the_session(tmp_path, args, env, words):
    """`pytest checks/` with a GPU name or size that means nothing: pytest's usage error (exit 4)
    naming the option, before any check runs (each check that plans with it crashed on its own)."""
    cfg = copy_config(tmp_path)
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "FMLLM_CONFIG": str(cfg), **env}
    for k in ("FMLLM_GPU", "FMLLM_VRAM"):
        if k not in env:
            full_env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "checks", *args],
                          capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=300)
    assert proc.returncode == 4, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "passed" not in proc.stdout


def test_invalid_config_exits_2_with_location(tmp_path):
    cfg = copy_config(tmp_path, "fine_tuning:\n  base_model_name: m\n  lora:\n    r: eight\n")
    before = cfg.read_bytes()
    proc = run_cli("--config", str(cfg), "--vram", "24GiB")
    assert proc.returncode == 2
    assert f"{cfg}:4:8" in proc.stderr and "whole number" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert cfg.read_bytes() == before


def test_missing_config_exits_2(tmp_path):
    proc = run_cli("--config", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_no_gpu_is_a_clear_failure(tmp_path):
    cfg = copy_config(tmp_path)
    proc = run_cli("--config", str(cfg), "--only", "gpu.devices", env={"FMLLM_FAKE_NVML": str(fake_nvml(tmp_path, devices=[]))})
    assert proc.returncode == 1
    assert "no usable CUDA GPU" in proc.stdout and "--gpu" in proc.stdout


def test_json_schema_with_fake_gpu(tmp_path):
    cfg = copy_config(tmp_path)
    proc = run_cli("--config", str(cfg), "--json", "--only", "config", "gpu.devices", "gpu.bf16",
                   env={"FMLLM_FAKE_NVML": str(fake_nvml(tmp_path))})
    doc = json.loads(proc.stdout)
    assert set(doc) >= {"fmllm_version", "config", "environment", "checks", "summary", "exit_code"}
    assert set(doc["summary"]) == {"pass", "warn", "fail", "skip", "crash"}
    by_id = {c["id"]: c for c in doc["checks"]}
    for c in doc["checks"]:
        assert set(c) >= {"id", "title", "category", "severity", "status", "finding", "values", "fix"}
    dev = by_id["gpu.devices"]
    assert dev["status"] == "warn" and "PID 4242" in dev["finding"]
    assert dev["values"]["devices"][0]["processes"][0]["used_bytes"] == 900 * 2**20
    bf16 = by_id["gpu.bf16"]
    assert bf16["status"] == "warn"  # float16 on an Ampere card
    change = bf16["fix"]["changes"][0]
    assert change == {"key": "fine_tuning.quantization.bnb_4bit_compute_dtype", "from": "float16", "to": "bfloat16"}
    assert doc["exit_code"] == proc.returncode == 0


def test_human_output_is_ascii_when_not_a_tty(tmp_path):
    cfg = copy_config(tmp_path)
    proc = run_cli("--config", str(cfg), "--only", "config", env={"NO_COLOR": "1"})
    assert "[PASS]" in proc.stdout and "\x1b[" not in proc.stdout
    assert "passed" in proc.stdout.splitlines()[-1]


def test_junit_has_finding_as_failure_message(tmp_path):
    cfg = copy_config(tmp_path)
    junit = tmp_path / "report.xml"
    proc = run_cli("--config", str(cfg), "--only", "gpu.devices", "--junitxml", str(junit),
                   env={"FMLLM_FAKE_NVML": str(fake_nvml(tmp_path, devices=[]))})
    assert proc.returncode == 1
    failures = ET.parse(junit).getroot().findall(".//failure")
    assert failures and "no usable CUDA GPU" in failures[0].get("message", "")


def test_crashing_check_exits_3(tmp_path, monkeypatch, capsys):
    cfg = copy_config(tmp_path)

    def broken_probe():
        raise RuntimeError("NVML binding blew up")

    # A bug below a fixture: every check that needs the GPU inventory crashes, none passes or fails.
    monkeypatch.setattr("fmllm_tui.gpu.probe", broken_probe)
    code = main(["--config", str(cfg), "--json", "--only", "gpu.devices", "env.cuda_visible_devices"])
    doc = json.loads(capsys.readouterr().out)
    assert {c["status"] for c in doc["checks"]} == {"crash"}
    assert "NVML binding blew up" in doc["checks"][0]["finding"]
    assert code == doc["exit_code"] == 3


@pytest.mark.parametrize("flags", [[], ["--list-checks"]], ids=["run", "list"])
def test_pytest_that_cannot_start_exits_3_with_its_message(tmp_path, monkeypatch, capsys, flags):
    """pytest itself refuses (here: an option it does not know): no check ran, exit 3 and pytest's
    words, not a traceback."""
    from fmllm_tui import checkrun

    cfg = copy_config(tmp_path)
    real = checkrun.pytest_args
    monkeypatch.setattr(checkrun, "pytest_args", lambda opts, **kw: [*real(opts, **kw), "--no-such-pytest-option"])
    code = main(["--config", str(cfg), "--only", "config", *flags])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "pytest could not" in err and "--no-such-pytest-option" in err and "Traceback" not in err


def test_interrupt_exits_130(monkeypatch, tmp_path):
    cfg = copy_config(tmp_path)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("fmllm_tui.checkrun.run_checks", boom)
    assert main(["--config", str(cfg)]) == 130


def test_interrupt_after_the_fix_is_reported_as_partial_json(monkeypatch, tmp_path, capsys):
    """Ctrl-C while the checks run again after --fix wrote the config: the JSON says what was
    applied, that the checks after it are incomplete, and exit_code 130 (never 0)."""
    from fmllm_tui import checkrun

    cfg = copy_config(tmp_path)
    real = checkrun.run_checks
    calls = []

    def second_interrupted(opts):
        calls.append(opts)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(opts)

    monkeypatch.setattr(checkrun, "run_checks", second_interrupted)
    code = main(["--config", str(cfg), "--fix", "--json", "--gpu", "RTX 3080", "--offline", "--only", "gpu.bf16"])
    doc = json.loads(capsys.readouterr().out)
    assert code == doc["exit_code"] == 130 and doc["interrupted"] is True
    assert doc["fix"]["applied"] == ["dtype.compute"] and doc["before"]["summary"]["warn"] == 1
    assert doc["checks"] == [] and doc["completed"] == []


def test_exit_code_precedence():
    def r(status):
        return CheckResult(id="x", title="x", category="c", severity="error", status=status, finding="")

    assert exit_code_for([r("pass"), r("warn"), r("skip")], True) == 0
    assert exit_code_for([r("pass"), r("fail")], True) == 1
    assert exit_code_for([r("fail"), r("crash")], True) == 3
    assert exit_code_for([r("pass")], False) == 2


def test_list_checks():
    proc = run_cli("--list-checks", "--json")
    metas = json.loads(proc.stdout)
    ids = {m["id"] for m in metas}
    assert {"config.valid", "gpu.devices", "gpu.bf16", "env.alloc_conf"} <= ids
    assert len(ids) == len(metas), "check ids are unique"


# --- the plugin's status mapping, on throwaway checks --------------------------------------

PLUGIN_CHECKS = '''
import pytest
from fmllm_tui.checks._plugin import check

@check("t.pass", "p", "t")
def test_pass(report):
    report.set(x=1)
    report.ok("all good")

@check("t.warn", "w", "t", severity="warning")
def test_warn(report):
    report.warn("careful")

@check("t.fail", "f", "t")
def test_fail(report):
    report.fail("broken: 3 > 2")

@check("t.skip", "s", "t")
def test_skip(report):
    report.skip("not here")

@check("t.crash", "c", "t")
def test_crash(report):
    {}["missing"]

@pytest.fixture
def bad_fixture():
    raise RuntimeError("fixture broke")

@check("t.setup_crash", "sc", "t")
def test_setup_crash(report, bad_fixture):
    pass
'''


def test_plugin_status_mapping(pytester):
    # No conftest: the plugin comes from fmllm's pytest11 entry point, as in a user's own project.
    pytester.makepyfile(test_checks=PLUGIN_CHECKS)
    stream = pytester.path / "stream.jsonl"
    res = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:textual-snapshot", "-p", "no:syrupy",
                             f"--junitxml={pytester.path / 'j.xml'}",
                             "-o", "junit_family=xunit1", f"--fmllm-report={stream}")
    events = [json.loads(line) for line in stream.read_text().splitlines()]
    results = {e["result"]["id"]: e["result"] for e in events if e["event"] == "result"}
    assert {k: v["status"] for k, v in results.items()} == {
        "t.pass": "pass", "t.warn": "warn", "t.fail": "fail", "t.skip": "skip", "t.crash": "crash",
        "t.setup_crash": "crash",
    }
    assert results["t.pass"]["values"] == {"x": 1}
    assert results["t.skip"]["finding"] == "skipped: not here"
    assert "KeyError" in results["t.crash"]["finding"]
    assert "fixture broke" in results["t.setup_crash"]["finding"]
    assert events[0]["event"] == "collected" and len(events[0]["checks"]) == 6
    # pytest's own view: warn passes (CI stays green), fail and crashes fail.
    res.assert_outcomes(passed=2, failed=2, skipped=1, errors=1)
    junit = ET.parse(pytester.path / "j.xml").getroot()
    failures = junit.findall(".//failure")
    assert any("broken: 3 > 2" in f.get("message", "") for f in failures)
    # A warning passes, yet CI readers see it: a JUnit property on its test case and a summary line.
    (warn_case,) = [c for c in junit.iter("testcase") if c.get("name") == "test_warn"]
    assert [(p.get("name"), p.get("value")) for p in warn_case.iter("property")] == [
        ("fmllm_warning", "[t.warn] careful")]
    assert not [p for c in junit.iter("testcase") if c.get("name") != "test_warn" for p in c.iter("property")]
    res.stdout.fnmatch_lines(["*fmllm warnings*", "! t.warn: careful"])


@pytest.mark.parametrize("only, words", [
    ("t.wrn", "did you mean t.warn"),
    ("zzz", "the categories are t"),
])
def test_plugin_only_that_matches_nothing_is_a_usage_error(pytester, only, words):
    pytester.makepyfile(test_checks=PLUGIN_CHECKS)
    res = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:textual-snapshot", "-p", "no:syrupy",
                             "--fmllm-only", "t.pass", "--fmllm-only", only)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*--fmllm-only: {only!r} matches no check*{words}*"])
    res = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:textual-snapshot", "-p", "no:syrupy",
                             "--fmllm-only", "t.")  # a dotted prefix selects its category
    res.assert_outcomes(passed=2, failed=2, skipped=1, errors=1)


@pytest.mark.parametrize("env, status, words, shell", [
    ({}, "warn", "PYTORCH_CUDA_ALLOC_CONF is not set", "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"),
    ({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, "pass", "PYTORCH_CUDA_ALLOC_CONF=expandable", None),
    ({"PYTORCH_ALLOC_CONF": "max_split_size_mb:128"}, "warn", "PYTORCH_ALLOC_CONF=max_split_size_mb:128",
     "export PYTORCH_ALLOC_CONF=expandable_segments:True"),
    # torch reads PYTORCH_ALLOC_CONF first: the older name beside it is ignored
    ({"PYTORCH_ALLOC_CONF": "expandable_segments:True", "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:64"}, "pass",
     "torch ignores it", None),
    ({"PYTORCH_ALLOC_CONF": "garbage_collection_threshold:0.6", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
     "warn", "PYTORCH_ALLOC_CONF=garbage_collection_threshold:0.6 does not enable", "export PYTORCH_ALLOC_CONF="),
], ids=["unset", "cuda-name-good", "new-name-legacy", "new-name-wins", "new-name-shadows-good-old"])
def test_alloc_conf_judges_the_variable_torch_reads(tmp_path, monkeypatch, capsys, env, status, words, shell):
    cfg = copy_config(tmp_path)
    for k in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    main(["--config", str(cfg), "--json", "--only", "env.alloc_conf"])
    (res,) = json.loads(capsys.readouterr().out)["checks"]
    assert res["status"] == status and words in res["finding"], res
    if shell is None:
        assert res["fix"] is None or res["status"] == "pass"
    else:
        assert res["fix"]["shell"].startswith(shell)


@pytest.mark.parametrize("vram", ["100MiB", "256MiB"])
def test_a_budget_below_the_margin_does_not_fit_instead_of_crashing(tmp_path, vram):
    """--vram of a few hundred MiB (below the 256 MiB default margin) crashed config.fit and
    config.multi_gpu_fit (exit 3, "the margin must be between 0 and the budget"): it is a budget
    nothing fits (exit 1), and --recommend says nothing fits."""
    cfg = copy_config(tmp_path)
    proc = run_cli("--config", str(cfg), "--offline", "--vram", vram, "--json")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    checks = {c["id"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["config.fit"]["status"] == "fail"
    assert checks["config.multi_gpu_fit"]["status"] in ("fail", "skip", "pass")
    assert not [c for c in checks.values() if c["status"] == "crash"]
    rec = run_cli("--config", str(cfg), "--offline", "--vram", vram, "--recommend")
    assert rec.returncode == 0 and "none fits" in rec.stdout


def test_recommend_plans_for_the_configs_target_gpu(tmp_path):
    """--recommend reads fmllm.target_gpu / fmllm.vram as the checks do (it asked for a GPU or
    --gpu before, exit 2, while the check planned for the config's card)."""
    text = (ROOT / "config.yaml").read_text().replace("\nfmllm:\n", "\nfmllm:\n  target_gpu: RTX 3080\n", 1)
    cfg = copy_config(tmp_path, text)
    proc = run_cli("--config", str(cfg), "--offline", "--recommend", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "3080" in out["gpu"] and out["recommendations"]
    bad = copy_config(tmp_path, text.replace("target_gpu: RTX 3080", "target_gpu: RTX 9999"))
    proc = run_cli("--config", str(bad), "--offline", "--recommend")
    assert proc.returncode == 2 and "fmllm.target_gpu" in proc.stderr


def test_an_ambiguous_gpu_name_says_which_card_it_plans_for(tmp_path):
    """'RTX 3060' is an 8 GB and a 12 GB card: the plan is for the smaller and says so (README:
    "an ambiguous name plans for the smallest variant and says so"); nothing said it before."""
    cfg = copy_config(tmp_path)
    human = run_cli("--config", str(cfg), "--offline", "--gpu", "RTX 3060", "--only", "config.fit")
    assert "can also mean GeForce RTX 3060 12GB" in human.stdout.splitlines()[0]
    js = run_cli("--config", str(cfg), "--offline", "--gpu", "RTX 3060", "--only", "config.fit", "--json")
    (fit,) = [c for c in json.loads(js.stdout)["checks"] if c["id"] == "config.fit"]
    assert "12GB" in fit["values"]["gpu_note"] and "12GB" in fit["finding"]
    plain = run_cli("--config", str(cfg), "--offline", "--gpu", "RTX 3090", "--only", "config.fit", "--json")
    (fit,) = [c for c in json.loads(plain.stdout)["checks"] if c["id"] == "config.fit"]
    assert "gpu_note" not in fit["values"]
