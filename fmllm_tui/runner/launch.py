"""Launching and managing runs: start (detached), resume, stop, kill, status, follow, latest.

A run is a folder (see :mod:`fmllm_tui.runner.rundir` for its layout). :func:`start` checks what a
person can get wrong before anything heavy starts (the data, the output folder, the training
command), writes the folder, and starts the supervisor in its own process session
(``start_new_session=True``), so the run survives the TUI, the terminal or the SSH connection
closing. Every command is an argv list: config values never pass through a shell.

Several GPUs (``fmllm.distributed``, see :mod:`fmllm_tui.runner.distributed`): the training
process is started through ``accelerate launch`` with the accelerate config fmllm writes into
the run folder (``accelerate.yaml``); DDP when the model fits one card, FSDP + QLoRA when not.

No torch here: the parent (``fmllm-check``, ``fmllm-run``, the TUI) stays light.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import procs
from . import rundir as rd
from .monitor import JsonlFollower

# supervise is imported where it is used: the supervisor runs as ``python -m
# fmllm_tui.runner.supervise``, and an import here (through the package's __init__) made runpy warn
# "found in sys.modules" at the top of every run's train.log.


def masked_launch(*args: Any, **kwargs: Any) -> Any:
    from .supervise import masked_launch as launch

    return launch(*args, **kwargs)


def orphan_exit(*args: Any, **kwargs: Any) -> Any:
    from .supervise import orphan_exit as exit_of

    return exit_of(*args, **kwargs)


KINDS = ("train", "test")
MIN_FREE_BYTES = 1 * 1024**3


class RunError(Exception):
    """Something a person can fix before (or instead of) a run; the message says what and how."""


# ------------------------------------------------------------------------------------------------
# Where runs live
# ------------------------------------------------------------------------------------------------


def runs_root(loaded: Any) -> Path:
    """``fmllm.run_dir`` (the folder runs go in) if set, else ``<output_dir>/runs``."""
    view = loaded.view
    base = Path(loaded.path).resolve().parent
    custom = view.fmllm.run_dir
    if custom:
        p = Path(os.path.expanduser(custom))
        return p if p.is_absolute() else (base / p)
    out = Path(view.output_dir) if view.output_dir else base / "outputs"
    return out / "runs"


def _config_slug(config_path: str | os.PathLike[str]) -> str:
    p = Path(config_path).resolve()
    digest = hashlib.sha1(str(p).encode()).hexdigest()[:8]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in p.stem)[:40]
    return f"{stem}-{digest}"


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        raise RunError(f"cannot create the run folder {path}: a file is in the way; set paths.output_dir "
                       "(or fmllm.run_dir) to a folder you can write") from None
    except NotADirectoryError:
        raise RunError(f"cannot create the run folder {path}: part of that path is a file, not a folder; "
                       "set paths.output_dir (or fmllm.run_dir) to a folder you can write") from None
    except OSError as e:
        raise RunError(f"cannot create the run folder {path}: {e.strerror or e}; set paths.output_dir "
                       "(or fmllm.run_dir) to a folder you can write") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunError(f"cannot write to {path}: permission denied; set paths.output_dir (or fmllm.run_dir) "
                       "to a folder you can write")


def new_run_dir(root: Path, kind: str) -> Path:
    """A fresh ``<root>/<YYYYmmdd-HHMMSS>-<kind>`` folder, mode 0700."""
    _make_dir(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        name = f"{stamp}-{kind}" + (f"-{i}" if i else "")
        path = root / name
        try:
            path.mkdir(mode=0o700)
            os.chmod(path, 0o700)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise RunError(f"cannot create the run folder {path}: {e.strerror or e}") from None
    raise RunError(f"cannot find a free run folder name in {root}")


def _point_latest(root: Path, run_dir: Path, config_path: str) -> None:
    for name in ("latest", f"latest-{_config_slug(config_path)}"):
        link = root / name
        tmp = root / f".{name}.{os.getpid()}"
        try:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(run_dir.name if run_dir.parent == root else str(run_dir), tmp)
            os.replace(tmp, link)
        except OSError:
            pass  # a pointer is a convenience; latest_run() also scans the folder


def list_runs(loaded: Any) -> list[Path]:
    """This config's runs, newest first."""
    root = runs_root(loaded)
    want = str(Path(loaded.path).resolve())
    found = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for p in entries:
        if not p.is_dir() or p.is_symlink() or p.name.startswith("."):
            continue
        spec = rd.read_json(p / rd.RUN)
        if isinstance(spec, dict) and spec.get("config_path") == want:
            found.append((float(spec.get("created", 0)), p))
    return [p for _, p in sorted(found, reverse=True)]


def latest_run(loaded: Any, kind: str | None = None) -> Path | None:
    """The newest run of this config (of ``kind`` if given), or None."""
    root = runs_root(loaded)
    link = root / f"latest-{_config_slug(loaded.path)}"
    if kind is None and link.is_symlink():
        target = (root / os.readlink(link)).resolve()
        if (target / rd.RUN).is_file():
            return target
    for p in list_runs(loaded):
        spec = rd.read_json(p / rd.RUN) or {}
        if kind is None or spec.get("kind") == kind:
            return p
    return None


# ------------------------------------------------------------------------------------------------
# Checks before launching
# ------------------------------------------------------------------------------------------------


def preflight(loaded: Any, kind: str) -> list[str]:
    """Raise :class:`RunError` for what would make the run fail at once; return warnings."""
    from .data import DataError, read_records

    view = loaded.view
    warnings: list[str] = []
    if kind not in KINDS:
        raise RunError(f"unknown run kind {kind!r}; use one of {', '.join(KINDS)}")
    custom = view.fmllm.train_command if kind == "train" else None
    if custom:
        prog = custom[0]
        base = Path(loaded.path).resolve().parent
        if os.sep in prog or (os.altsep and os.altsep in prog):
            p = Path(os.path.expanduser(prog))
            p = p if p.is_absolute() else base / p
            if not p.exists():
                raise RunError(f"fmllm.train_command: {prog!r} does not exist (relative paths are read from "
                               f"{base})")
        elif shutil.which(prog) is None:
            raise RunError(f"fmllm.train_command: the program {prog!r} is not on PATH")
    else:
        if not view.data_file:
            raise RunError("no training data is configured: set paths.ft_combined_data_file to your JSONL file")
        try:
            read_records(view.data_file, view.data_format)
        except DataError as e:
            raise RunError(e.render()) from None
        if view.eval_data_file:
            try:
                read_records(view.eval_data_file, view.data_format)
            except DataError as e:
                raise RunError(e.render()) from None
    root = runs_root(loaded)
    _make_dir(root)
    try:
        free = shutil.disk_usage(root).free
        if free < MIN_FREE_BYTES:
            warnings.append(f"only {free / 2**20:.0f} MiB free on the disk of {root}: checkpoints and the "
                            "adapter may not fit")
    except OSError:
        pass
    return warnings


# ------------------------------------------------------------------------------------------------
# Starting
# ------------------------------------------------------------------------------------------------


# transformers 5.2x kernelizes every from_pretrained on CUDA with code fetched from the Hub
# (`kernels`, now a dependency): offline it stops the run ("kernels-community/rotary ... not
# available in the local cache"), online it runs code the plan never saw. fmllm's runs load none
# unless the user sets USE_HUB_KERNELS themselves.
HUB_KERNELS_DEFAULT = "NO"


# torch.compile's on-disk caches (Inductor's FX graph cache, the AOTAutograd cache, autotuning,
# and the Triton kernels unless TRITON_CACHE_DIR says otherwise) live under this variable's folder.
COMPILE_CACHE_VAR = "TORCHINDUCTOR_CACHE_DIR"


def compile_cache_dir() -> Path:
    """fmllm's per-user folder for compiled artifacts: ``$XDG_CACHE_HOME/fmllm/compile``
    (``~/.cache/fmllm/compile`` when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fmllm" / "compile"


def compile_cache_env() -> dict[str, str]:
    """TORCHINDUCTOR_CACHE_DIR for a run, so a second run of the same model and shapes loads its
    compiled layers instead of compiling them again.

    torch's default (``/tmp/torchinductor_<user>``) is lost with /tmp; fmllm's folder is kept in
    the user's cache and made private (0700: torch loads the code it finds there). A user's own
    TORCHINDUCTOR_CACHE_DIR wins (nothing is returned), as does their TRITON_CACHE_DIR (Inductor
    reads it for the Triton kernels); a folder that cannot be made leaves torch's default.
    """
    path = compile_cache_dir()
    if os.environ.get(COMPILE_CACHE_VAR) or not path.is_absolute():  # theirs, or no home to keep it in
        return {}
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)  # also when it existed with looser permissions
    except OSError:
        return {}  # a cold compile each run (torch's default folder), never a failed run
    return {COMPILE_CACHE_VAR: str(path)}


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment fixes every run gets (existing settings win)."""
    env: dict[str, str] = compile_cache_env()
    if "PYTORCH_CUDA_ALLOC_CONF" not in os.environ and "PYTORCH_ALLOC_CONF" not in os.environ:
        # Less fragmentation: the reserved-but-unallocated gap of many real OOMs.
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    for k, v in (("PYTHONUNBUFFERED", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                 ("CUDA_DEVICE_ORDER", "PCI_BUS_ID"), ("HF_HUB_DISABLE_TELEMETRY", "1"),
                 ("USE_HUB_KERNELS", HUB_KERNELS_DEFAULT)):
        if k not in os.environ:
            env[k] = v
    env.update(extra or {})
    return env


def _train_argv(run_dir: Path, resume: bool, distributed: dict[str, Any] | None) -> list[str]:
    """The training process's argv: plain for one process, ``accelerate launch`` for ddp/fsdp."""
    if distributed and distributed.get("mode") in ("ddp", "fsdp"):
        from .distributed import ACCELERATE_CONFIG, launch_argv

        config = distributed.get("accelerate_config") or str(Path(run_dir) / ACCELERATE_CONFIG)
        return launch_argv(run_dir, config, int(distributed.get("num_processes") or 1), resume=resume)
    tail = ["-m", "fmllm_tui.runner.train", "--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    return [sys.executable, *tail]


def _spawn_supervisor(run_dir: Path, handover: dict[str, Any] | None = None) -> int:
    """Start the supervisor; ``handover`` (the real argv and env, when run.json's are masked) goes
    to it on its stdin, never into the run folder."""
    log = rd.open_private_append(run_dir / rd.LOG)  # private like the folder (this process's umask is the user's)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fmllm_tui.runner.supervise", str(run_dir)],
            stdin=subprocess.PIPE if handover else subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd=str(run_dir),
            env={**os.environ, **_pythonpath_env()},
        )
        if handover and proc.stdin is not None:
            import json

            with proc.stdin:
                proc.stdin.write(json.dumps(handover).encode())
    finally:
        log.close()
    procs.write_pid_record(run_dir / rd.PID, proc.pid)  # pid and start time (safe from pid reuse), atomically
    # The supervisor is its own parent's child: reap it in a thread so it never lingers as a zombie.
    import threading

    threading.Thread(target=proc.wait, name=f"fmllm-reap-{proc.pid}", daemon=True).start()
    return proc.pid


def _pythonpath_env() -> dict[str, str]:
    """Make sure the children import this very fmllm_tui (also when it is not installed)."""
    pkg_root = str(Path(__file__).resolve().parents[2])
    current = os.environ.get("PYTHONPATH", "")
    parts = [p for p in current.split(os.pathsep) if p]
    if pkg_root not in parts:
        parts.insert(0, pkg_root)
    return {"PYTHONPATH": os.pathsep.join(parts)}


def build_spec(loaded: Any, kind: str, *, steps: int | None = None, vram_bytes: int | None = None,
               device: str | None = None, overrides: dict[str, Any] | None = None,
               distributed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of config.json: the resolved config (secrets masked) and the runner settings
    (``runner.distributed``: the launch's mode, process count and why)."""
    from fmllm_tui import __version__
    from fmllm_tui.config import to_plain
    from fmllm_tui.redact import mask_data

    view = loaded.view
    cfg = mask_data(view.model_dump(mode="json"))
    if kind == "test" and steps is None:
        steps = view.fmllm.minimal_test_steps
    if vram_bytes is None and view.fmllm.vram:
        from fmllm_tui.config import parse_size

        vram_bytes = parse_size(view.fmllm.vram)
    dist = distributed or {"mode": "single", "num_processes": 1}
    the_plan = launch_plan(loaded, device=device, distributed=dist, overrides=overrides)
    return {
        "fmllm_version": __version__,
        "created": time.time(),
        "config_path": str(Path(loaded.path).resolve()),
        "layout": loaded.layout,
        "config": cfg,
        # Every decision about the run, made here once: the training process reads it (fmllm_tui.plan).
        "plan": the_plan.to_json(),
        # The person's whole file, every section, as a record of the run (secrets masked).
        "file": mask_data(to_plain(loaded.doc)),
        "runner": {"kind": kind, "steps": steps, "vram_bytes": vram_bytes, "device": device or "auto",
                   "overrides": overrides or {}, "sample_generations": 3,
                   "max_new_tokens": 32 if kind == "test" else 64,
                   "distributed": dist},
    }


def launch_plan(loaded: Any, *, device: str | None, distributed: dict[str, Any],
                overrides: dict[str, Any] | None = None) -> Any:
    """The run's plan (fmllm_tui.plan.RunPlan) for the machine this launch starts it on: its
    first visible GPU as NVML sees it (the CPU for ``--device cpu`` or when NVML sees none),
    the launch's mode and process count, the data's lengths. Raises :class:`RunError`."""
    from fmllm_tui import gpudb
    from fmllm_tui.datafile import example_lengths
    from fmllm_tui.gpu import torch_build_info
    from fmllm_tui.plan import PlanError, Target, installed, run_plan
    from fmllm_tui.recipe import liger_installed

    from .distributed import model_architecture, visible_gpus

    view = loaded.view
    gpus = [] if device == "cpu" else visible_gpus()
    target = Target.local(gpus)
    cpu_torch = None
    if target.cuda and device != "cuda":
        build = torch_build_info()
        if build.get("installed") and not build.get("cuda"):  # a CPU-only torch cannot use the GPU
            cpu_torch = (f"NVML sees {target.name} but torch {build.get('version')} is a CPU-only build: planned "
                         "for the CPU (install torch's CUDA build to train on the GPU)")
            target = Target.cpu()
    if device == "cuda" and not target.cuda:  # NVML sees no GPU; torch may (the child checks)
        target = Target("cuda", None, None, liger_installed(), installed("triton"))
    card = gpudb.match_nvml(target.name) if target.name else None
    try:
        made = run_plan(view, target, mode=str(distributed.get("mode") or "single"),
                        num_processes=int(distributed.get("num_processes") or 1),
                        mode_reason=distributed.get("reason"), overrides=overrides,
                        arch=model_architecture(view), example_lengths=example_lengths(view), card=card)
    except PlanError as e:
        raise RunError(str(e)) from None
    if cpu_torch:
        made.recipe.notes.insert(0, cpu_torch)
    return made


def start(loaded: Any, kind: str = "train", *, run_dir: str | os.PathLike[str] | None = None,
          steps: int | None = None, vram: str | int | None = None, device: str | None = None,
          overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Path:
    """Check, write the run folder, and start the run detached. Returns the run folder.

    ``vram`` ("8GiB" or bytes) caps the process's GPU memory to prove a fit for a smaller card;
    ``device`` is ``auto`` (default), ``cuda`` or ``cpu``. Raises :class:`RunError`.
    """
    from fmllm_tui.config import parse_size

    warnings = preflight(loaded, kind)
    vram_bytes = None
    if vram is not None:
        try:
            vram_bytes = parse_size(vram)
        except ValueError as e:
            raise RunError(f"--vram: {e}") from None
    if device not in (None, "auto", "cuda", "cpu"):
        raise RunError(f"--device must be auto, cuda or cpu, not {device!r}")
    view = loaded.view
    custom = view.fmllm.train_command if kind == "train" else None
    plan: dict[str, Any] = {"mode": "single", "num_processes": 1}
    if custom and view.fmllm.distributed.mode in ("ddp", "fsdp"):
        warnings.append(f"fmllm.distributed.mode is {view.fmllm.distributed.mode} but fmllm.train_command runs your "
                        "own command as it is: launch it with accelerate yourself")
    if not custom:
        from .distributed import DistributedError, plan_launch

        try:
            plan = plan_launch(loaded, kind=kind, device=device, vram_bytes=vram_bytes)
        except DistributedError as e:
            raise RunError(str(e)) from None
    if run_dir is not None:
        rdir = Path(run_dir).resolve()
        _make_dir(rdir)
        if any(rdir.iterdir()):
            raise RunError(f"{rdir} is not empty: give a new folder, or resume that run with fmllm-run resume")
        os.chmod(rdir, 0o700)
    else:
        root = runs_root(loaded)
        rdir = new_run_dir(root, kind)
    distributed: dict[str, Any] | None = None
    if plan["mode"] in ("ddp", "fsdp"):
        from .distributed import write_accelerate_config

        cfg_path = write_accelerate_config(rdir, plan["accelerate"])
        distributed = {k: v for k, v in plan.items() if k != "accelerate"}
        distributed["accelerate_config"] = str(cfg_path)
    summary = {k: plan.get(k) for k in ("mode", "num_processes", "reason")}
    spec = build_spec(loaded, kind, steps=steps, vram_bytes=vram_bytes, device=device, overrides=overrides,
                      distributed=summary)
    rd.write_json_atomic(rdir / rd.CONFIG, spec)
    extra_env = {"FMLLM_RUN_DIR": str(rdir), "FMLLM_CONFIG": str(Path(loaded.path).resolve()),
                 "FMLLM_RUN_KIND": kind, "FMLLM_METRICS": str(rdir / rd.METRICS), **(env or {})}
    if device == "cpu":
        extra_env["CUDA_VISIBLE_DEVICES"] = ""
    argv = list(custom) if custom else _train_argv(rdir, False, distributed)
    # A token in fmllm.train_command (or the env) reaches the trainer through the supervisor's
    # stdin; run.json keeps it masked.
    shown, handover = masked_launch(argv, child_env(extra_env))
    record = {
        "kind": kind, **shown, "custom_command": bool(custom), "created": spec["created"],
        "config_path": spec["config_path"], "distributed": distributed,
        "cwd": str(Path(loaded.path).resolve().parent) if custom else str(rdir), "warnings": warnings,
        "attempts": [{"started": time.time(), "resume": False}],
    }
    rd.write_json_atomic(rdir / rd.RUN, record)
    for w in warnings:
        rd.log_line(rdir, f"warning: {w}")
    if plan.get("reason") and plan.get("decided"):
        rd.log_line(rdir, f"distributed: {plan['reason']}" + (f"; {plan['note']}" if plan.get("note") else ""))
    _spawn_supervisor(rdir, handover)
    # The pointers live in the config's runs folder also for a --run-dir elsewhere (absolute link).
    _point_latest(runs_root(loaded), rdir, loaded.path)
    return rdir


def _finished_checkpoint(rdir: Path) -> str | None:
    """The name of the run's newest sound checkpoint when it is at the run's last step (its
    trainer state's global_step reached max_steps), else None. Torch-free: the training process
    makes the real choice (and sets damaged checkpoints aside); this only spots a finished run."""
    for _, p in rd.checkpoint_dirs(rdir / rd.CHECKPOINTS):
        if not rd.checkpoint_saved(p) or rd.checkpoint_problem(p) is not None:
            continue  # the training process skips it too, so it says nothing about the end
        state = rd.read_json(p / "trainer_state.json") or {}
        step, last = state.get("global_step"), state.get("max_steps")
        if isinstance(step, int) and isinstance(last, int) and last > 0 and step >= last:
            return p.name
        return None
    return None


def resume(run_dir: str | os.PathLike[str]) -> Path:
    """Start a stopped, killed or failed run again in its folder, from its last complete checkpoint."""
    rdir = Path(run_dir).resolve()
    record = rd.read_json(rdir / rd.RUN)
    if not isinstance(record, dict):
        raise RunError(f"{rdir} is not an fmllm run folder (no run.json)")
    st = status(rdir)
    if st["exit"] is not None:
        # The supervisor writes the exit record as its last act: give it (and any process of the
        # run still tearing down) a moment to go before a new one takes over the folder. On a
        # loaded machine 15 s was once not enough (a resume refused as "still running").
        deadline = time.monotonic() + 45
        while ((procs.is_alive(st.get("pid"), must_mention=str(rdir)) or procs.live(rdir))
               and time.monotonic() < deadline):
            time.sleep(0.1)
    holders = procs.live(rdir)
    if st["state"] == "running" or holders:
        # Refused, not adopted: a process fmllm did not start cannot be waited on for its exit code.
        who = procs.holders_text(holders) or f"pid {st.get('pid')}"
        gone = "" if any(p.role == "supervisor" for p in holders) else " (its supervisor is gone)"
        raise RunError(f"the run in {rdir} is still running: {who}{gone}; follow it with fmllm-run follow "
                       f"--run-dir {rdir}, or end it with fmllm-run stop (or kill), then resume")
    if record.get("kind") == "test":
        raise RunError("a minimal test is not resumed: run it again with fmllm-run test")
    if not record.get("custom_command") and (done := _finished_checkpoint(rdir)):
        # Resuming from a checkpoint at the run's last step made the Trainer run one step past
        # max_steps (seen on the bench: 'finished 13 steps' of 12) and write the adapter again.
        # A train_command of the user's own decides for itself what FMLLM_RESUME=1 means.
        steps_flag = ((rd.read_json(rdir / rd.CONFIG) or {}).get("runner") or {}).get("steps")
        longer = (f"a higher --steps (this run had --steps {steps_flag})" if steps_flag else
                  "a higher training.max_steps or num_train_epochs")
        raise RunError(f"the run in {rdir} finished: its newest checkpoint, {done}, is at its last step; there "
                       f"is nothing to resume: start a new run (fmllm-run start), with {longer} to train longer")
    handover = _resume_handover(record)
    old_exit = rdir / rd.EXIT
    if old_exit.exists():
        n = len(list(rdir.glob("exit.*.json"))) + 1
        os.replace(old_exit, rdir / f"exit.{n}.json")
    for name in (rd.STOP_REQUEST, rd.OUTCOME, *(f.name for f in rdir.glob("outcome.rank*.json"))):
        try:
            (rdir / name).unlink()
        except FileNotFoundError:
            pass
    if record.get("custom_command"):
        record["env"] = {**record.get("env", {}), "FMLLM_RESUME": "1"}
        if handover:
            handover["env"]["FMLLM_RESUME"] = "1"
    else:
        dist = record.get("distributed")
        if isinstance(dist, dict) and dist.get("port_auto") and dist.get("accelerate_config"):
            # The port fmllm picked at the start may be taken by now: pick a free one again.
            from .distributed import free_port, read_accelerate_config, write_accelerate_config

            try:
                acc = read_accelerate_config(dist["accelerate_config"])
            except (OSError, ValueError) as e:
                raise RunError(f"cannot read the run's accelerate config {dist['accelerate_config']}: {e}") from None
            acc["main_process_port"] = dist["main_process_port"] = free_port()
            write_accelerate_config(rdir, acc)
        record["argv"] = _train_argv(rdir, True, dist)
    record.setdefault("attempts", []).append({"started": time.time(), "resume": True})
    rd.write_json_atomic(rdir / rd.RUN, record)
    rd.log_line(rdir, f"---- resume at {time.strftime('%Y-%m-%d %H:%M:%S')} ----")
    _spawn_supervisor(rdir, handover)
    return rdir


def _resume_handover(record: dict[str, Any]) -> dict[str, Any] | None:
    """The real command of a run whose run.json holds it masked: fmllm.train_command read again
    from the config, which must still mask to what run.json holds. Raises :class:`RunError`."""
    if not record.get("secrets_handed_over"):
        return None
    from fmllm_tui.config import ConfigError, load_config

    path = record.get("config_path")
    try:
        command = list(load_config(Path(str(path))).view.fmllm.train_command or [])
    except ConfigError as e:
        raise RunError(f"this run's command holds secrets the run folder does not keep, and its config cannot be "
                       f"read again: {e.render()}") from None
    env = {str(k): str(v) for k, v in (record.get("env") or {}).items()}
    if any("***" in v for v in env.values()):
        raise RunError("this run was started with a token in its environment, which the run folder does not keep: "
                       "start a new run with fmllm-run start")
    shown, handover = masked_launch(command, env)
    if not record.get("custom_command") or handover is None or shown["argv"] != record.get("argv"):
        raise RunError(f"this run's command holds secrets the run folder does not keep, and fmllm.train_command in "
                       f"{path} is no longer the command it started with: start a new run with fmllm-run start")
    return handover


# ------------------------------------------------------------------------------------------------
# Watching and ending
# ------------------------------------------------------------------------------------------------


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _last_jsonl(path: Path, tail_bytes: int = 65536) -> dict[str, Any] | None:
    """The last complete JSON line of a (possibly long) JSONL file, reading only its end."""
    import json

    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - tail_bytes))
            lines = fh.read().split(b"\n")
    except OSError:
        return None
    for raw in reversed(lines[:-1] if lines and lines[-1] else lines):
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict):
            return rec
    return None


def status(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Where a run stands: ``state`` is running | ok | failed | killed | stopped | oom | lost.

    A run runs while any of its processes does (:mod:`.procs`: the supervisor, what it started,
    every rank), also when its supervisor was killed. ``lost``: every process is gone and left no
    exit record (a machine reboot, say); when the training process left its own outcome, that
    is the state (``exit.recorded_by`` says so). An exit record wins over a live supervisor: it
    writes the record as its last act, and a follower that polled in the moment before it exits
    must see the run as ended. It does not win over a live training process.
    """
    rdir = Path(run_dir).resolve()
    record = rd.read_json(rdir / rd.RUN) or {}
    pid = _read_pid(rdir / rd.PID)
    exit_rec = rd.read_json(rdir / rd.EXIT)
    live = procs.live(rdir)
    running = bool(live)
    last = _last_jsonl(rdir / rd.METRICS)
    out: dict[str, Any] = {"run_dir": str(rdir), "kind": record.get("kind"), "pid": pid,
                           "child_pid": _read_pid(rdir / rd.CHILD_PID),
                           "phase": (rd.read_json(rdir / rd.STATE) or {}).get("phase"),
                           "last_metrics": last, "exit": exit_rec, **procs.summary_of(live)}
    if procs.trainers(live):
        out["state"] = "running"
    elif isinstance(exit_rec, dict):
        out["state"] = exit_rec.get("status", "failed")
    elif running:
        out["state"] = "running"
    elif isinstance(orphan := orphan_exit(rdir, record), dict):
        out["state"], out["exit"] = orphan["status"], orphan
    elif not record:
        out["state"] = "unknown"
    else:
        out["state"] = "lost"
    return out


def stop(run_dir: str | os.PathLike[str]) -> bool:
    """Ask the run to stop: it finishes the step, saves a checkpoint and exits ("stopped").
    Returns False when it was not running."""
    rdir = Path(run_dir).resolve()
    st = status(rdir)
    if st["state"] != "running":
        return False
    (rdir / rd.STOP_REQUEST).write_text(f"stop {time.time()}\n")
    record = rd.read_json(rdir / rd.RUN) or {}
    if (record.get("distributed") or {}).get("mode") in ("ddp", "fsdp") and st.get("phase") == "training":
        # The ranks read stop.requested at the end of each step and stop together; a SIGTERM to
        # accelerate's launcher would give them only its 30 s grace before SIGKILL.
        rd.log_line(rdir, "stop requested (stop.requested: the ranks stop after this step)")
        return True
    # Read child.pid only after stop.requested is written: the supervisor writes child.pid, then
    # reads stop.requested, so whichever comes second sends the SIGTERM (it never starts a child
    # once the file is there). The supervisor itself is not signalled: one that has not yet set
    # its handler would die of it and leave no exit record.
    # Its start time too: a child that ended long ago may have left its pid to someone else. Also
    # reached when the supervisor is gone (killed from outside) and the training process lives on.
    children = [p for p in procs.recorded(rdir) if p.role == "child" and procs.alive(rdir, p)]
    # Its launcher gone too, the ranks that live on get the SIGTERM themselves.
    targets = children or [p for p in procs.live(rdir) if p.role.startswith("rank")]
    if targets:
        for p in targets:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        rd.log_line(rdir, "stop requested (SIGTERM)")
    else:
        rd.log_line(rdir, "stop requested before the training process started (stop.requested)")
    return True


def after_kill(kind: str | None) -> str:
    """What a person can do after a kill: resume a training run; a minimal test is run again."""
    if kind == "test":
        return "a minimal test is not resumed: run it again (fmllm-run test)"
    return "fmllm-run resume continues from the last checkpoint"


def kill(run_dir: str | os.PathLike[str], timeout: float = 10.0) -> bool:
    """SIGKILL every process of the run (supervisor, training process, every rank; also those left
    without their supervisor) and record it as "killed". False if not running."""
    rdir = Path(run_dir).resolve()
    st = status(rdir)
    if st["state"] != "running":
        return False
    # Every process of the run, found through its records (supervisor, launcher, each rank: also
    # when the supervisor is gone), their groups frozen before anything is listed (procs.kill_all).
    signalled = procs.kill_all(rdir)
    end = time.monotonic() + timeout
    while time.monotonic() < end and (procs.live(rdir) or any(procs.is_alive(p) for p in signalled)):
        time.sleep(0.05)
    # An exit record beside a live training process was wrong (its supervisor wrote it, then the
    # trainer lived on): this kill is how the run ended.
    if not (rdir / rd.EXIT).exists() or isinstance(st.get("exit"), dict):
        now = time.time()
        run_rec = rd.read_json(rdir / rd.RUN) or {}
        started = (run_rec.get("attempts") or [{}])[-1].get("started", now)
        rd.write_json_atomic(rdir / rd.EXIT, {
            "status": "killed", "exit_code": None, "signal": "SIGKILL", "kind": run_rec.get("kind"),
            "started": started, "ended": now, "wall_s": now - started,
            "message": f"killed (SIGKILL to the run's process group); {after_kill(run_rec.get('kind'))}",
            "outcome": None, "diagnosis": None, "recorded_by": "kill"})
    try:
        rd.log_line(rdir, "killed (SIGKILL)")
    except OSError:
        pass
    return True


def wait(run_dir: str | os.PathLike[str], timeout: float | None = None, poll: float = 0.2) -> dict[str, Any] | None:
    """Block until the run has an exit record (returned) or ``timeout`` passes (None)."""
    rdir = Path(run_dir).resolve()
    end = None if timeout is None else time.monotonic() + timeout
    lost_since = None
    while True:
        rec = rd.read_json(rdir / rd.EXIT)
        if isinstance(rec, dict):
            return rec
        if not procs.live(rdir):
            # The supervisor writes exit.json just before it ends; give the file a moment.
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > 3.0:
                return orphan_exit(rdir, rd.read_json(rdir / rd.RUN) or {}) or {
                    "status": "lost", "message": "the run's process is gone and left no exit record"}
        if end is not None and time.monotonic() > end:
            return None
        time.sleep(poll)


def follow(run_dir: str | os.PathLike[str], *, poll: float = 0.5, timeout: float | None = None,
           gpu_every: float | None = 2.0, skip_existing: bool = False) -> Iterator[dict[str, Any]]:
    """Events of a run as they come, ending with its exit record.

    Yields ``{"type": "metrics", **row}`` per metrics row, ``{"type": "state", **state}`` when the
    phase changes, ``{"type": "gpu", used, total, free, util_pct, index, name, gpus}`` every
    ``gpu_every`` seconds when NVML answers (also for a custom train_command; the top-level
    figures are the first GPU's, ``gpus`` lists every visible GPU's), and last
    ``{"type": "exit", **exit_record}``
    (``status`` "lost" if the process vanished without one). With ``timeout`` it may end with
    ``{"type": "timeout"}`` instead. ``skip_existing`` starts after the rows already written
    (following a resumed run without replaying its history).
    """
    rdir = Path(run_dir).resolve()
    reader = JsonlFollower(rdir / rd.METRICS)
    if skip_existing:
        try:
            reader.offset = (rdir / rd.METRICS).stat().st_size
        except OSError:
            pass
    last_phase = None
    last_gpu = 0.0
    gpu_ok = gpu_every is not None
    end = None if timeout is None else time.monotonic() + timeout
    lost_since = None
    while True:
        for row in reader.read_new():
            yield {"type": "metrics", **row}
        st = rd.read_json(rdir / rd.STATE)
        if isinstance(st, dict) and st.get("phase") != last_phase:
            last_phase = st.get("phase")
            yield {"type": "state", **st}
        rec = rd.read_json(rdir / rd.EXIT)
        if isinstance(rec, dict):
            for row in reader.read_new():
                yield {"type": "metrics", **row}
            yield {"type": "exit", **rec}
            return
        if gpu_ok and time.monotonic() - last_gpu >= (gpu_every or 0):
            last_gpu = time.monotonic()
            from .distributed import gpu_snapshots

            gpus = gpu_snapshots()
            if not gpus:
                gpu_ok = False
            else:
                yield {"type": "gpu", **gpus[0], "gpus": gpus, "ts": time.time()}
        if not procs.live(rdir):
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > 3.0:
                for row in reader.read_new():
                    yield {"type": "metrics", **row}
                yield {"type": "exit", **(orphan_exit(rdir, rd.read_json(rdir / rd.RUN) or {}) or {
                    "status": "lost", "message": "the run's process is gone and left no exit record"})}
                return
        if end is not None and time.monotonic() > end:
            yield {"type": "timeout"}
            return
        time.sleep(poll)
