"""Launching runs end to end on the CPU with a tiny model: the minimal test, kill and resume,
a graceful stop, bad input before and during a run, custom training commands."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from runconfig import write_run_config, yaml_block
from tui_support import scaled

from fmllm_tui.config import load_config
from fmllm_tui.runner import (
    RunError,
    kill,
    latest_run,
    resume,
    run_minimal_test,
    start,
    status,
    stop,
    wait,
)
from fmllm_tui.runner import rundir as rd
from fmllm_tui.runner.monitor import JsonlFollower, read_jsonl
from fmllm_tui.runner.supervise import decide_status

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample_instructions.jsonl"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # The training processes inherit this: nothing may reach the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def write_config(tmp_path: Path, model: Path | str, *, data: Path | None = SAMPLE, fmt: str = "instruction",
                 training: str = "", fmllm: str = "", output: str | None = None) -> Path:
    """A QLoRA run's config (batch 2, no accumulation, a row per step, an 8-step minimal test);
    `training` and `fmllm` are YAML snippets added to those sections."""
    return write_run_config(tmp_path, model, data=data, output=output, data_format=fmt, qlora=True,
                            training={"gradient_accumulation_steps": 1, **yaml_block(training)},
                            fmllm={"minimal_test_steps": 8, **yaml_block(fmllm)})



def wait_for_step(run_dir: Path, step: int, timeout: float = 120) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rows = read_jsonl(run_dir / rd.METRICS)
        if rows and rows[-1]["step"] >= step:
            return rows[-1]["step"]
        if (run_dir / rd.EXIT).exists():
            raise AssertionError(f"run ended early: {(run_dir / rd.EXIT).read_text()}\n{(run_dir / rd.LOG).read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"step {step} not reached; log:\n{(run_dir / rd.LOG).read_text()[-3000:]}")


# ------------------------------------------------------------------------------------------------
# The whole pipeline
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_minimal_test_end_to_end_on_the_cpu(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = write_config(tmp_path, tiny_model_dir,
                       training="packing: true\nextra_args: {hub_token: hf_abcdefghijklmnopqrstuv}\n")
    report = run_minimal_test(load_config(cfg), timeout=240)
    assert report["ok"], json.dumps(report, indent=1, default=str)[:4000]
    assert report["status"] == "ok" and report["device"] == "cpu" and report["steps"] == 8
    losses = report["losses"]
    assert len(losses) == 8 and report["loss_falling"] and losses[-1] < losses[0]
    assert report["adapter_reloaded"] and "all equal" in report["reload_message"]
    assert isinstance(report["generation"], str)
    assert report["peak_bytes"] > 0 and report["tokens_per_s"] > 0
    # the steady rate, with the warm-up apart (runner/speed.py), from the training process's own steps
    speed = report["speed"]
    assert speed["tokens_per_s"] == report["tokens_per_s"] and speed["warmup_steps"] + speed["steady_steps"] == 8
    notes = " ".join(report["notes"])
    assert "no CUDA GPU" in notes and "without 4-bit" in notes and "adamw_torch" in notes
    assert any("hub_token" in n and "secret" in n for n in report["notes"])
    run_dir = Path(report["run_dir"])
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    for name in (rd.CONFIG, rd.RUN, rd.PID, rd.LOG, rd.METRICS, rd.RESULT, rd.EXIT, rd.STATE):
        assert (run_dir / name).is_file(), name
    assert rd.adapter_complete(run_dir / rd.ADAPTER)
    assert (run_dir / rd.ADAPTER / "adapter_config.json").is_file()
    saved = (run_dir / rd.CONFIG).read_text()
    assert "hf_abcdefghijklmnopqrstuv" not in saved and "***" in saved
    row = read_jsonl(run_dir / rd.METRICS)[-1]
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "allocated_bytes", "reserved_bytes",
                "peak_bytes", "eta_s", "ts"):
        assert key in row, key
    assert latest_run(load_config(cfg)) == run_dir
    assert json.loads((run_dir / rd.EXIT).read_text())["status"] == "ok"


@pytest.mark.slow
def test_kill_resume_stop_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    """SIGKILL mid-run, resume (step count and loss continue), stop gracefully, resume to the end."""
    # 40 steps: the stop below must land before the last step, or the stopped run is finished and
    # resume rightly refuses (seen once when the tiny model's steps outran the stop's signal).
    cfg = write_config(tmp_path, tiny_model_dir, training="max_steps: 40\nsave_steps: 3\nseed: 7\n")
    loaded = load_config(cfg)
    run_dir = start(loaded, "train")
    wait_for_step(run_dir, 7, timeout=scaled(120))
    assert kill(run_dir)
    st = status(run_dir)
    assert st["state"] == "killed" and not (run_dir / rd.ADAPTER).exists()
    before = {r["step"]: r["loss"] for r in read_jsonl(run_dir / rd.METRICS)}
    last_ckpt = max(int(p.name.split("-")[1]) for p in (run_dir / rd.CHECKPOINTS).glob("checkpoint-*")
                    if (p / "trainer_state.json").is_file())
    # Training goes on between the wait and the SIGKILL, so the bound is the last step logged
    # before the kill (read after it): the Trainer logs a step before it saves that step.
    assert 3 <= last_ckpt <= max(before)

    resume(run_dir)
    follower = JsonlFollower(run_dir / rd.METRICS)
    follower.read_new()  # skip the first attempt's rows
    end = time.monotonic() + scaled(120)
    new: list[dict] = []
    while len(new) < 2 and time.monotonic() < end:
        new += follower.read_new()
        time.sleep(0.1)
    assert new, (run_dir / rd.LOG).read_text()[-3000:]
    assert new[0]["step"] == last_ckpt + 1  # continues from the last complete checkpoint
    for r in new:
        if r["step"] in before:  # the same batches and RNG: the same loss as before the kill
            assert r["loss"] == pytest.approx(before[r["step"]], rel=1e-3, abs=1e-3)
    assert f"resuming from checkpoint-{last_ckpt}" in (run_dir / rd.LOG).read_text()

    wait_for_step(run_dir, new[0]["step"] + 2, timeout=scaled(120))
    assert stop(run_dir)
    rec = wait(run_dir, timeout=scaled(120))
    assert rec and rec["status"] == "stopped", rec
    stopped_at = max(r["step"] for r in read_jsonl(run_dir / rd.METRICS))
    assert stopped_at < 40, "the run reached its last step before the stop: nothing left to resume"
    assert (run_dir / rd.CHECKPOINTS / f"checkpoint-{stopped_at}" / "trainer_state.json").is_file()

    resume(run_dir)
    rec = wait(run_dir, timeout=scaled(240))
    assert rec and rec["status"] == "ok", (run_dir / rd.LOG).read_text()[-3000:]
    summary = json.loads((run_dir / rd.SUMMARY).read_text())
    assert summary["steps"] == 40 and summary["resumed_from"].endswith(f"checkpoint-{stopped_at}")
    assert len(summary["samples"]) == 3 and rd.adapter_complete(run_dir / rd.ADAPTER)
    assert sorted(p.name for p in run_dir.glob("exit.*.json")) == ["exit.1.json", "exit.2.json"]


# ------------------------------------------------------------------------------------------------
# Bad input: a clear message before the run, or a clear failure during it
# ------------------------------------------------------------------------------------------------


def test_missing_data_file(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = write_config(tmp_path, tiny_model_dir, data=tmp_path / "nope.jsonl")
    with pytest.raises(RunError, match="nope.jsonl.*does not exist"):
        start(load_config(cfg), "train")
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").iterdir())


def test_no_data_configured(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = write_config(tmp_path, tiny_model_dir, data=None)
    with pytest.raises(RunError, match="ft_combined_data_file"):
        start(load_config(cfg), "test")


def test_empty_dataset(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "empty.jsonl"
    data.write_text("\n\n")
    report = run_minimal_test(load_config(write_config(tmp_path, tiny_model_dir, data=data)))
    assert not report["ok"] and report["status"] == "not-started"
    assert "no examples" in report["problems"][0]


def test_wrong_format_names_line_and_field(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "response": "b"}\n')
    with pytest.raises(RunError) as ei:
        start(load_config(write_config(tmp_path, tiny_model_dir, data=data)), "train")
    assert "d.jsonl:2" in str(ei.value) and "'output'" in str(ei.value) and "missing" in str(ei.value)


def test_unwritable_output_dir(tmp_path: Path, tiny_model_dir: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cfg = write_config(tmp_path, tiny_model_dir, output=str(blocker / "sub"))
    with pytest.raises(RunError, match="cannot create the run folder.*paths.output_dir"):
        start(load_config(cfg), "train")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_dir(tmp_path: Path, tiny_model_dir: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(RunError, match="output_dir"):
            start(load_config(write_config(tmp_path, tiny_model_dir, output=str(ro / "out"))), "train")
    finally:
        ro.chmod(0o700)


@pytest.mark.slow
def test_no_response_within_max_seq_length_fails_clearly(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"instruction": "word " * 300, "output": "short"}) + "\n")
    cfg = write_config(tmp_path, tiny_model_dir, data=data)
    report = run_minimal_test(load_config(cfg), timeout=180)
    assert report["status"] == "failed" and not report["ok"]
    assert "max_seq_length=96" in report["problems"][0] and "raise training.max_seq_length" in report["problems"][0]


def test_bad_vram_and_device(tmp_path: Path, tiny_model_dir: Path) -> None:
    loaded = load_config(write_config(tmp_path, tiny_model_dir))
    with pytest.raises(RunError, match="--vram"):
        start(loaded, "test", vram="lots")
    with pytest.raises(RunError, match="--device"):
        start(loaded, "test", device="tpu")


def test_run_dir_must_be_new(tmp_path: Path, tiny_model_dir: Path) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("1")
    with pytest.raises(RunError, match="not empty"):
        start(load_config(write_config(tmp_path, tiny_model_dir)), "train", run_dir=used)


def test_disk_full_while_saving_leaves_no_adapter_that_looks_complete(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A write that fails mid-save (file size limit: the kernel's EFBIG, as a full disk gives
    ENOSPC) removes the temporary folder; nothing named like the adapter appears."""
    import resource
    import signal

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fmllm_tui.runner.train import SaveError, save_adapter_atomic

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    dest = tmp_path / "adapter"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, hard))
    try:
        with pytest.raises(SaveError, match="nothing was left that looks like a finished adapter"):
            save_adapter_atomic(model, tok, dest, {"kind": "test"})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert list(tmp_path.iterdir()) == []
    # And with room, the same call leaves a complete adapter (the marker written last).
    save_adapter_atomic(model, tok, dest, {"kind": "test"})
    assert rd.adapter_complete(dest)
    marker = json.loads((dest / rd.COMPLETE_MARKER).read_text())
    assert "adapter_model.safetensors" in marker["files"]


def test_incomplete_checkpoints_are_never_resumed(tmp_path: Path) -> None:
    from fmllm_tui.runner.train import last_complete_checkpoint

    ck = tmp_path / "checkpoints"
    for step, complete in ((4, True), (8, True), (12, False)):
        d = ck / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(b"\x02" + b"\x00" * 7 + b"{}")  # whole, no tensors
        if complete:
            (d / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(ck) == ck / "checkpoint-8"
    assert (ck / "checkpoint-12.incomplete").is_dir()
    assert last_complete_checkpoint(tmp_path / "none") is None


# ------------------------------------------------------------------------------------------------
# People's own training commands
# ------------------------------------------------------------------------------------------------

HOSTILE = ["; rm -rf ~", "$(id)", "`id`", "a b", "'quoted'", '"dq"', "|cat", "&& echo pwned", "*", "~", "$HOME"]


def test_train_command_args_arrive_literally(tmp_path: Path, tiny_model_dir: Path) -> None:
    script = tmp_path / "my_train.py"
    script.write_text(textwrap.dedent("""\
        import json, os, sys
        out = os.path.join(os.environ["FMLLM_RUN_DIR"], "argv.json")
        json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "metrics": os.environ["FMLLM_METRICS"]}, open(out, "w"))
        print("my trainer ran")
    """))
    token = "hf_" + "Ab1" * 10  # a token passed on the command line: given to the trainer, never logged
    argv = json.dumps([sys.executable, "my_train.py", *HOSTILE, token])
    cfg = write_config(tmp_path, tiny_model_dir, fmllm=f"train_command: {argv}\n")
    run_dir = start(load_config(cfg), "train")
    rec = wait(run_dir, timeout=60)
    assert rec and rec["status"] == "ok", (run_dir / rd.LOG).read_text()
    got = json.loads((run_dir / "argv.json").read_text())
    assert got["argv"] == [*HOSTILE, token]
    assert token not in (run_dir / rd.LOG).read_text() and "[fmllm] starting:" in (run_dir / rd.LOG).read_text()
    assert got["cwd"] == str(tmp_path)  # relative script paths are read from the config's folder
    assert got["metrics"] == str(run_dir / rd.METRICS)
    assert "my trainer ran" in (run_dir / rd.LOG).read_text()
    assert not (Path.home() / "pwned").exists()


def test_failing_train_command_is_recorded_and_diagnosed(tmp_path: Path, tiny_model_dir: Path) -> None:
    script = tmp_path / "oom.py"
    script.write_text(textwrap.dedent("""\
        import sys
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
              "capacity of 10.00 GiB of which 1.20 GiB is free.", file=sys.stderr)
        sys.exit(1)
    """))
    cfg = write_config(tmp_path, tiny_model_dir, fmllm=f"train_command: {json.dumps([sys.executable, str(script)])}\n")
    run_dir = start(load_config(cfg), "train")
    rec = wait(run_dir, timeout=60)
    assert rec["exit_code"] == 1 and rec["status"] in ("oom", "failed")
    assert "code 1" in rec["message"]
    try:
        import fmllm_tui.logdiag  # noqa: F401
    except ImportError:
        assert rec["diagnosis"] is None and "unavailable" in rec["diagnosis_note"]
        return
    assert rec["status"] == "oom"
    hit = rec["diagnosis"][0]
    assert hit["pattern"] == "cuda_oom" and hit["values"]["tried_to_allocate_bytes"] == 2 * 2**30


def test_missing_train_command_program(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = write_config(tmp_path, tiny_model_dir, fmllm='train_command: ["no-such-trainer-xyz", "--go"]\n')
    with pytest.raises(RunError, match="no-such-trainer-xyz.*not on PATH"):
        start(load_config(cfg), "train")


# ------------------------------------------------------------------------------------------------
# Pieces
# ------------------------------------------------------------------------------------------------


def test_follower_keeps_partial_lines_for_later(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    f = JsonlFollower(p)
    assert f.read_new() == []
    p.write_text('{"step": 1}\n{"step": 2')
    assert f.read_new() == [{"step": 1}]
    with p.open("a") as fh:
        fh.write('}\nnot json\n{"step": 3}\n')
    assert f.read_new() == [{"step": 2}, {"step": 3}] and f.bad_lines == 1


@pytest.mark.parametrize(
    "rc, outcome, stop_req, diag, expected",
    [
        (0, {"status": "ok"}, False, None, "ok"),
        (0, {"status": "stopped"}, True, None, "stopped"),
        (3, {"status": "oom"}, False, None, "oom"),
        (0, None, False, None, "ok"),
        (0, None, True, None, "stopped"),
        (-15, None, True, None, "stopped"),
        (-9, None, False, None, "killed"),  # killed from outside, unasked: killed, not failed (issue 22)
        (-15, None, False, None, "killed"),
        (137, None, False, None, "killed"),
        (-11, None, False, None, "failed"),  # a crash's own signal
        (1, None, False, [{"pattern": "cuda_oom", "severity": "error"}], "oom"),
        (1, None, False, [{"pattern": "model_too_big_per_card", "severity": "error"}], "oom"),
        (1, None, False, [{"pattern": "deprecation_info", "severity": "info"}], "failed"),
        (-9, None, False, [{"pattern": "host_oom", "severity": "error"}], "killed"),  # the diagnosis says why
        (1, {"status": "ok"}, False, None, "failed"),
    ],
)
def test_exit_status_rules(rc, outcome, stop_req, diag, expected) -> None:
    assert decide_status(rc, outcome, stop_req, diag) == expected


def test_parent_never_imports_torch(tmp_path: Path) -> None:
    code = ("import sys, fmllm_tui.runner, fmllm_tui.cli_run, fmllm_tui.runner.launch, fmllm_tui.runner.minimal;"
            "bad=[m for m in ('torch','transformers','peft','datasets') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    from fmllm_tui.cli_run import main

    assert main(["status", "--run-dir", str(tmp_path)]) == 2
    assert "not an fmllm run folder" in capsys.readouterr().err
    cfg = write_config(tmp_path, tiny_model_dir)
    assert main(["follow", "--config", str(cfg)]) == 2
    assert "no runs yet" in capsys.readouterr().err
    assert main(["test", "--config", str(cfg), "--steps", "0"]) == 2
    for bad in ("0", "-5", "nan", "inf"):
        assert main(["test", "--config", str(cfg), "--timeout", bad]) == 2
        assert "--timeout must be a number of seconds above 0" in capsys.readouterr().err
    assert main(["start", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        main(["launch"])
    assert ei.value.code == 2


def test_cli_detach_status_stop_kill(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A custom command that sleeps: start --detach, status, stop, status."""
    script = tmp_path / "slow.py"
    script.write_text("import time, signal, sys\n"
                      "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
                      "print('working', flush=True)\ntime.sleep(60)\n")
    cfg = write_config(tmp_path, tiny_model_dir, fmllm=f"train_command: {json.dumps([sys.executable, str(script)])}\n")
    from fmllm_tui.cli_run import main

    assert main(["start", "--config", str(cfg), "--detach", "--json"]) == 0
    run_dir = Path(json.loads(capsys.readouterr().out)["run_dir"])
    assert main(["status", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "running"
    assert main(["stop", "--config", str(cfg)]) == 0
    assert "stop requested" in (said := capsys.readouterr().out) and "gets SIGTERM" in said
    rec = wait(run_dir, timeout=30)
    assert rec["status"] == "stopped"
    assert main(["kill", "--config", str(cfg)]) == 1  # not running any more
    assert main(["follow", "--run-dir", str(run_dir)]) == 130  # stopped
    assert "finished: stopped" in capsys.readouterr().out


def test_stop_before_the_training_process_starts_does_not_start_it(tmp_path: Path) -> None:
    """stop.requested already there when the supervisor gets to the launch: no child, "stopped"."""
    from fmllm_tui.runner.supervise import supervise

    marker = tmp_path / "started"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rd.write_json_atomic(run_dir / rd.RUN, {"kind": "train", "argv": [
        sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]})
    (run_dir / rd.STOP_REQUEST).write_text("stop 0\n")
    assert supervise(run_dir) == 0
    rec = json.loads((run_dir / rd.EXIT).read_text())
    assert rec["status"] == "stopped" and "before the training process started" in rec["message"]
    assert not marker.exists() and not (run_dir / rd.CHILD_PID).exists()
    assert "not starting it" in (run_dir / rd.LOG).read_text()


def test_stop_between_child_start_and_its_pid_file_reaches_the_child(tmp_path: Path) -> None:
    """The supervisor writes child.pid and then looks for stop.requested: a stop that found no
    child.pid still ends the child (here a child that would otherwise sleep for a minute)."""
    from fmllm_tui.runner import supervise as sup

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rd.write_json_atomic(run_dir / rd.RUN, {"kind": "train", "argv": [
        sys.executable, "-c", "import time; time.sleep(60)"]})
    real_popen = subprocess.Popen

    def popen_then_stop(*a, **kw):  # the stop lands right after the child started, before child.pid
        child = real_popen(*a, **kw)
        (run_dir / rd.STOP_REQUEST).write_text("stop 0\n")
        return child

    t0 = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sup.subprocess, "Popen", popen_then_stop)
        assert sup.supervise(run_dir) == 0
    assert time.monotonic() - t0 < 30
    rec = json.loads((run_dir / rd.EXIT).read_text())
    assert rec["status"] == "stopped" and rec["signal"] == "SIGTERM"


def test_status_reads_only_the_end_of_long_metrics(tmp_path: Path) -> None:
    from fmllm_tui.runner.launch import _last_jsonl

    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps({"step": i, "pad": "x" * 100}) + "\n" for i in range(5000)) + '{"step": 50')
    assert _last_jsonl(p)["step"] == 4999
    assert _last_jsonl(tmp_path / "missing.jsonl") is None


def test_visible_device_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    from fmllm_tui.runner.monitor import NvmlSampler, visible_device

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_device(1) == (1, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert visible_device(0) == (3, None) and visible_device(1) == (1, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc,GPU-def")
    assert visible_device(1) == (None, "GPU-def")
    # One parser for every reader: "" and -1 hide every GPU; CUDA stops at the first -1.
    from fmllm_tui import gpu
    from fmllm_tui.runner.distributed import _cuda_visible_count

    for hidden in ("", "-1", " -1 , 0"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert visible_device(0) == (None, None) and _cuda_visible_count() == 0 and gpu._visible_indices(4) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,-1,3")
    assert gpu.cuda_visible_devices() == ["2"] and _cuda_visible_count() == 1 and gpu._visible_indices(4) == [2]
    # Without a GPU driver the sampler says why and samples nothing (never raises).
    s = NvmlSampler(index=0).start()
    s.stop()
    if s.error is not None:
        assert "NVML" in s.error and s.process_peak_bytes is None


def test_latest_run_finds_a_run_dir_given_on_the_command_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    script = tmp_path / "noop.py"
    script.write_text("print('ok')\n")
    cfg = write_config(tmp_path, tiny_model_dir, fmllm=f"train_command: {json.dumps([sys.executable, str(script)])}\n")
    loaded = load_config(cfg)
    custom = tmp_path / "elsewhere" / "my-run"
    assert start(loaded, "train", run_dir=custom) == custom.resolve()
    assert wait(custom, timeout=30)["status"] == "ok"
    assert latest_run(loaded) == custom.resolve()
    assert stat.S_IMODE(custom.stat().st_mode) == 0o700


def test_runs_load_no_hub_kernels_unless_the_user_asks(monkeypatch, tiny_model_dir):
    """transformers 5.2x kernelizes every from_pretrained with code from the Hub (offline on a GPU:
    "kernels-community/rotary ... not available in the local cache"); fmllm's runs turn that off,
    and a user's own USE_HUB_KERNELS wins."""
    import subprocess
    import sys

    from fmllm_tui.runner.launch import child_env

    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)
    env = child_env()
    assert env["USE_HUB_KERNELS"] == "NO"
    monkeypatch.setenv("USE_HUB_KERNELS", "YES")
    assert "USE_HUB_KERNELS" not in child_env()  # theirs is inherited untouched
    code = ("import sys; from transformers import AutoModelForCausalLM; "
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); print(bool(getattr(m, 'use_kernels', False)))")
    base = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir)], env={**base, **env, "HF_HUB_OFFLINE": "1"},
                         capture_output=True, text=True, timeout=scaled(120))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_runs_keep_compiled_artifacts_in_a_private_per_user_cache(monkeypatch, tmp_path):
    """The launch points torch.compile's caches at $XDG_CACHE_HOME/fmllm/compile (0700: torch
    loads the code it finds there), so a second run of a config skips the compile; a user's own
    TORCHINDUCTOR_CACHE_DIR or TRITON_CACHE_DIR wins, and a folder that cannot be made leaves
    torch's default instead of failing the run."""
    from fmllm_tui.runner.launch import child_env

    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = tmp_path / "xdg" / "fmllm" / "compile"
    old = os.umask(0o022)
    try:
        env = child_env()
    finally:
        os.umask(old)
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert "TRITON_CACHE_DIR" not in env  # Inductor keeps its Triton kernels under its own folder
    folder.chmod(0o755)  # a folder left with looser permissions is made private again
    child_env()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert child_env()["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "home" / ".cache" / "fmllm" / "compile")

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "their-triton"))
    assert "TRITON_CACHE_DIR" not in child_env()  # theirs is inherited untouched
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "theirs"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "unused"))
    assert "TORCHINDUCTOR_CACHE_DIR" not in child_env()
    assert not (tmp_path / "unused").exists()

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))  # not a folder: no cache, no failure
    assert "TORCHINDUCTOR_CACHE_DIR" not in child_env()


def test_torch_reads_the_compile_cache_the_launch_sets(monkeypatch, tmp_path):
    """In the training process's environment, Inductor's cache folder and its Triton kernels'
    folder are fmllm's (and the user's TRITON_CACHE_DIR where set)."""
    pytest.importorskip("torch")
    from fmllm_tui.runner.launch import child_env

    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    code = ("from torch._inductor.runtime.cache_dir_utils import cache_dir, triton_cache_dir; "
            "print(cache_dir()); print(triton_cache_dir(0))")

    def folders(extra: dict[str, str]) -> list[str]:
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **child_env(), **extra},
                             capture_output=True, text=True, timeout=scaled(120))
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()

    mine = tmp_path / "fmllm" / "compile"
    assert folders({}) == [str(mine), str(mine / "triton" / "0")]
    assert folders({"TRITON_CACHE_DIR": str(tmp_path / "t")}) == [str(mine), str(tmp_path / "t")]


def test_a_killed_minimal_test_is_not_offered_a_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fmllm-run kill of a minimal test (and Ctrl-C of fmllm-check --test) said "fmllm-run resume
    continues from the last checkpoint", and resume then refused: a test is run again instead."""
    from fmllm_tui.cli_run import main

    script = tmp_path / "slow.py"
    script.write_text("import time\nprint('working', flush=True)\ntime.sleep(60)\n")
    cfg = write_config(tmp_path, "Qwen/Qwen2.5-0.5B-Instruct",
                       fmllm=f"train_command: {json.dumps([sys.executable, str(script)])}\n")
    run_dir = start(load_config(cfg), "test")
    end = time.monotonic() + scaled(30)
    while status(run_dir)["state"] != "running" and time.monotonic() < end:
        time.sleep(0.05)
    assert main(["kill", "--run-dir", str(run_dir)]) == 0
    said = capsys.readouterr().out
    assert "not resumed" in said and "resume continues" not in said
    st = status(run_dir)
    assert st["state"] == "killed" and "run it again" in json.dumps(st) and "resume continues" not in json.dumps(st)


def test_the_supervisor_starts_without_runpys_warning() -> None:
    """``python -m fmllm_tui.runner.supervise`` printed runpy's "found in sys.modules after import of
    package" RuntimeWarning at the top of every run's train.log (the package imported it first)."""
    proc = subprocess.run([sys.executable, "-m", "fmllm_tui.runner.supervise"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr
    assert "RuntimeWarning" not in proc.stderr and "sys.modules" not in proc.stderr


def test_a_test_refused_before_training_is_a_usage_error(tmp_path: Path, tiny_model_dir: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """fmllm-run test --device cuda on a machine without CUDA: the training process refuses it
    before training (a flag it cannot run), exit 2 as the README says; it was 1 (a failed run)."""
    import torch

    from fmllm_tui.cli_run import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda runs")
    cfg = write_config(tmp_path, tiny_model_dir)
    assert main(["test", "--config", str(cfg), "--device", "cuda"]) == 2
    assert "--device cuda was asked for" in capsys.readouterr().out



@pytest.mark.parametrize("phase, words", [(None, "ends before training (nothing to save yet)"),
                                          ("training", "saves a checkpoint after this step")])
def test_stop_says_what_happens_in_the_runs_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], phase: str | None,
                                                  words: str) -> None:
    """fmllm-run stop while the model loads said "saves a checkpoint after this step" (nothing is
    saved then: the run ends before training)."""
    from fmllm_tui import runner
    from fmllm_tui.cli_run import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rd.write_json_atomic(run_dir / rd.RUN, {"kind": "train", "custom_command": False})
    monkeypatch.setattr(runner, "status", lambda d: {"phase": phase, "state": "running"})
    monkeypatch.setattr(runner, "stop", lambda d: True)
    assert main(["stop", "--run-dir", str(run_dir)]) == 0
    assert words in capsys.readouterr().out
