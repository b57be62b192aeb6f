"""fmllm-check's promises to the person at the shell, run for real in a child process:

* Ctrl-C in the middle of the checks exits 130 with a report marked partial (which checks
  completed; ``"interrupted": true`` in --json), and stops the minimal test's training process;
* an ``--only`` that matches no check is a usage error (exit 2) with a did-you-mean;
* a printed "apply with" / "undo with" command repeats the flags that shaped the finding, and
  does what it says when run as printed;
* ``--fix`` leaves no lock file in the config's folder (and the lock still excludes).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from hubstub import HubStub
from tui_support import scaled

from fmllm_tui.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_instructions.jsonl"
CHECK_SCRIPT = Path(sys.executable).parent / "fmllm-check"


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "NO_COLOR": "1", "PYTHONPATH": str(ROOT), **extra}
    for k in ("FMLLM_CONFIG", "FMLLM_GPU", "FMLLM_VRAM"):
        env.pop(k, None)
    return env


def copy_config(folder: Path, name: str = "config.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / name
    cfg.write_text((ROOT / "config.yaml").read_text())
    (folder / "data").mkdir(exist_ok=True)
    shutil.copy(SAMPLE, folder / "data")
    return cfg


def wait_for(cond: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen[str] | None = None) -> Any:
    """Poll ``cond`` until it returns something truthy; fail naming ``what`` after ``timeout``
    (scaled for a loaded CI machine), or at once when ``proc`` ended first."""
    end = time.monotonic() + scaled(timeout)
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"fmllm-check ended (exit {proc.returncode}) before {what}:\n{out[-3000:]}\n{err[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def events(stream: Path) -> list[dict[str, Any]]:
    try:
        lines = stream.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


def started(stream: Path, check_id: str) -> bool:
    return any(e.get("event") == "start" and e.get("id") == check_id for e in events(stream))


def ctrl_c(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """What a terminal's Ctrl-C does: SIGINT to the foreground process group."""
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=scaled(60))
    return proc.returncode, out, err


def start_check(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fmllm_tui.cli_check", *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


# --- Ctrl-C -------------------------------------------------------------------------------------


def in_flight(stream: Path) -> str | None:
    """The check that has started and not finished, if any."""
    open_ids = []
    for e in events(stream):
        if e.get("event") == "start":
            open_ids.append(e["id"])
        elif e.get("event") == "result" and e["result"]["id"] in open_ids:
            open_ids.remove(e["result"]["id"])
    return open_ids[-1] if open_ids else None


@pytest.mark.slow
@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_ctrl_c_while_a_check_waits_on_the_hub_exits_130_with_a_partial_report(tmp_path, as_json):
    """The Hub answers nothing (a stand-in that hangs): a check waits on it and the person
    presses Ctrl-C. The checks that completed are reported, the report says it is partial, and
    the exit code is 130 (never 0: a CI step must not read a cut-short run as green)."""
    cfg = copy_config(tmp_path / "proj")
    stream = tmp_path / "stream.jsonl"
    with HubStub(hang_seconds=scaled(60)) as hub:
        hub.fail_mode = "hang"
        env = env_for(tmp_path, HF_ENDPOINT=hub.endpoint)
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("TRANSFORMERS_OFFLINE", None)
        args = ["--config", str(cfg), "--vram", "24GiB", "--report", str(stream)] + (["--json"] if as_json else [])
        proc = start_check(args, env, tmp_path)
        try:
            # The model's Hub lookup (the client waits up to 10 s for an answer that never comes).
            wait_for(lambda: hub.requests_to("/api/models/Qwen/"), 120, "a request for the model's Hub page", proc)
            waiting = wait_for(lambda: in_flight(stream), 30, "the check that waits on the Hub", proc)
            code, out, err = ctrl_c(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    done = [e["result"]["id"] for e in events(stream) if e.get("event") == "result"]
    assert code == 130, (out[-2000:], err[-2000:])
    assert "config.valid" in done and waiting not in done and "model.available" not in done
    assert "Traceback" not in err
    assert "interrupted" in err and "partial" in err
    if as_json:
        doc = json.loads(out)
        assert doc["interrupted"] is True and doc["exit_code"] == 130
        assert doc["completed"] == [c["id"] for c in doc["checks"]] == done
        assert {waiting, "model.available"} <= set(doc["not_completed"])
        assert "config.valid" not in doc["not_completed"]
    else:
        (note,) = [line for line in out.splitlines() if line.startswith("interrupted")]
        assert "partial report" in note and f"{len(done)} of " in note
        completed, _, missing = note.partition("; not completed: ")
        assert "config.valid" in completed and waiting in missing and "model.available" in missing
        assert "[PASS]   config.valid" in out


def write_tiny_config(folder: Path, model: Path) -> Path:
    cfg = folder / "config.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        base_model_name: {model}
        lora: {{r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}
        quantization: {{use_4bit: true, bnb_4bit_compute_dtype: bfloat16}}
        training: {{max_seq_length: 64, learning_rate: 0.005, logging_steps: 1, per_device_train_batch_size: 2}}
        paths: {{ft_combined_data_file: {SAMPLE}, output_dir: {folder / 'out'}}}
        fmllm: {{minimal_test_steps: 10000}}  # the most: it trains until stopped
        """))
    return cfg


def _training_pid(runs: Path) -> tuple[Path, int] | None:
    for child_pid in runs.glob("*-test/child.pid"):
        state = child_pid.parent / "state.json"
        try:
            pid = int(child_pid.read_text().split()[0])
            phase = json.loads(state.read_text()).get("phase")
        except (OSError, ValueError, IndexError):
            continue
        if phase == "training" and psutil.pid_exists(pid):
            return child_pid.parent, pid
    return None


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
def test_ctrl_c_during_the_minimal_test_stops_its_training_process(tmp_path, tiny_model_dir):
    """--test starts the training in a process session of its own (so it survives a closed
    terminal); a Ctrl-C to fmllm-check must still end it, not leave it training."""
    cfg = write_tiny_config(tmp_path, tiny_model_dir)
    env = env_for(tmp_path, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    stream = tmp_path / "stream.jsonl"
    proc = start_check(["--config", str(cfg), "--test", "--only", "config.valid", "run.minimal_test", "--json",
                        "--report", str(stream)], env, tmp_path)
    tree: list[psutil.Process] = []
    try:
        run_dir, trainer = wait_for(lambda: _training_pid(tmp_path / "out" / "runs"), 150,
                                    "the minimal test's training process to be training", proc)
        tree = psutil.Process(proc.pid).children(recursive=True)  # the supervisor and the trainer
        assert trainer in [p.pid for p in tree]
        code, out, err = ctrl_c(proc)
        wait_for(lambda: all(_gone(p.pid) for p in tree), 30, "the run's processes to end")
    finally:
        for p in [*tree, psutil.Process(proc.pid) if proc.poll() is None else None]:
            if p is not None:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
    assert code == 130, (out[-2000:], err[-2000:])
    doc = json.loads(out)
    assert doc["interrupted"] is True and doc["exit_code"] == 130
    assert doc["completed"] == ["config.valid"] and doc["not_completed"] == ["run.minimal_test"]
    assert "training process was stopped" in err
    exit_rec = json.loads((run_dir / "exit.json").read_text())
    assert exit_rec["status"] == "killed"


# --- --only that matches nothing -----------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--json"], ["--list-checks"], ["--list", "--json"], ["--fix"]],
                         ids=["run", "json", "list-checks", "list", "fix"])
def test_only_that_matches_no_check_is_a_usage_error(tmp_path, extra):
    cfg = copy_config(tmp_path)
    before = cfg.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "fmllm_tui.cli_check", "--config", str(cfg), "--offline",
                           "--only", "config.valid", "gpu.bf61", *extra],
                          capture_output=True, text=True, env=env_for(tmp_path), cwd=tmp_path, timeout=scaled(120))
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "--only: 'gpu.bf61' matches no check (did you mean gpu.bf16" in proc.stderr
    assert "--list-checks" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""  # never a report (JSON or text) of zero or some checks
    assert cfg.read_bytes() == before


def test_list_with_only_lists_the_selection(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fmllm_tui.cli_check", "--list", "--json", "--only", "gpu.bf16",
                           "config."], capture_output=True, text=True, env=env_for(tmp_path), cwd=tmp_path,
                          timeout=scaled(120))
    assert proc.returncode == 0, proc.stderr
    ids = [m["id"] for m in json.loads(proc.stdout)]
    assert "gpu.bf16" in ids and "config.valid" in ids and "gpu.devices" not in ids


# --- printed commands carry the flags ------------------------------------------------------------


def test_apply_with_hint_repeats_the_flags_and_runs_as_printed(tmp_path):
    """A config elsewhere (a space in its path), planned for an RTX 3080, offline: the printed
    "apply with" command names them all, quoted, and running it as printed fixes that config
    (for that card), not the ./config.yaml of the folder it runs in."""
    cfg = copy_config(tmp_path / "my configs", "other.yaml")
    decoy = copy_config(tmp_path)  # ./config.yaml: what a bare `fmllm-check --fix` would change
    decoy_bytes, cfg_bytes = decoy.read_bytes(), cfg.read_bytes()
    rel = str(cfg.relative_to(tmp_path))
    env = env_for(tmp_path, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "fmllm_tui.cli_check", "-c", rel, "--gpu", "RTX 3080", "--offline"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=scaled(120))
    hints = {line.strip().removeprefix("apply with: ") for line in proc.stdout.splitlines()
             if line.strip().startswith("apply with: ")}
    assert hints == {f"fmllm-check --fix -c '{rel}' --gpu 'RTX 3080' --offline"}, proc.stdout
    (hint,) = hints
    argv = shlex.split(hint)
    assert argv[0] == "fmllm-check"
    ran = subprocess.run([str(CHECK_SCRIPT), *argv[1:]], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=scaled(120))
    assert "planning for RTX 3080" in ran.stdout, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert decoy.read_bytes() == decoy_bytes
    assert cfg.read_bytes() != cfg_bytes
    view = load_config(cfg).view
    assert view.quantization.bnb_4bit_compute_dtype == "bfloat16"  # gpu.bf16's fix for an Ampere card
    # The fix's own "undo with" names the same config: running it restores the original.
    (undo,) = [line.split("(undo with ", 1)[1].rstrip(")") for line in ran.stdout.splitlines() if "undo with" in line]
    assert undo == f"fmllm-check --undo -c '{rel}'"
    subprocess.run([str(CHECK_SCRIPT), *shlex.split(undo)[1:]], check=True, capture_output=True, env=env,
                   cwd=tmp_path, timeout=scaled(120))
    assert cfg.read_bytes() == cfg_bytes and decoy.read_bytes() == decoy_bytes


def test_hint_has_no_config_flag_for_the_default_config(tmp_path, capsys, monkeypatch):
    from fmllm_tui.cli_check import main

    copy_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FMLLM_CONFIG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    main(["--vram", "10GiB", "--only", "config.fit", "gpu"])
    out = capsys.readouterr().out
    assert "apply with: fmllm-check --fix --vram 10GiB --only config.fit gpu\n" in out, out


# --- the lock file ----------------------------------------------------------------------------------


def test_fix_leaves_no_lock_file(tmp_path):
    cfg = copy_config(tmp_path)
    proc = subprocess.run([str(CHECK_SCRIPT), "--fix", "-c", str(cfg), "--gpu", "RTX 3080", "--offline"],
                          capture_output=True, text=True, env=env_for(tmp_path, HF_HUB_OFFLINE="1"), cwd=tmp_path,
                          timeout=scaled(120))
    assert "backup:" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert load_config(cfg).view.quantization.bnb_4bit_compute_dtype == "bfloat16"  # the fix was written
    assert not [p.name for p in tmp_path.iterdir() if "lock" in p.name]


def test_lock_still_excludes_while_holders_remove_it(tmp_path):
    """Many processes take the config lock in turn, each holder removing the file as it lets go;
    a read-modify-write of a counter under the lock never loses an update (a waiter that locked a
    removed file must notice and lock the new one)."""
    from fmllm_tui.fixes import safewrite as sw

    target = tmp_path / "config.yaml"
    target.write_text("x: 1\n")
    counter = tmp_path / "counter"
    counter.write_text("0")
    workers, rounds = 6, 40
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for _ in range(rounds):
                    with sw.config_lock(target, timeout=scaled(60)):
                        n = int(counter.read_text())
                        time.sleep(0.001)  # widen the window a second holder would need
                        counter.write_text(str(n + 1))
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    assert all(os.waitpid(p, 0)[1] == 0 for p in pids)
    assert int(counter.read_text()) == workers * rounds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "counter"]
