"""The training process: ``python -m fmllm_tui.runner.train --run-dir DIR [--resume]``.

It reads ``DIR/config.json`` (written by :mod:`fmllm_tui.runner.launch`), trains with the
transformers ``Trainer`` + peft (+ bitsandbytes 4-bit on a GPU), and writes the run directory's
state, metrics, checkpoints, adapter, summary or minimal-test result, and its own last word
(``outcome.json``). The supervisor (:mod:`fmllm_tui.runner.supervise`) turns that into
``exit.json``.

Run kinds (``runner.kind`` in config.json):

* ``train``: the full run from the config: checkpoints every ``save_steps``, resume with
  ``--resume`` from the last complete checkpoint, the final adapter, ``summary.json``.
* ``test``: the minimal test: N steps on a sample of the data (the longest examples, so the peak
  memory is the data's worst case), then save, reload and generate; ``result.json``.

SIGTERM/SIGINT during training (or ``stop.requested`` appearing in the run folder): the step
finishes, a checkpoint is saved (full runs) and the process exits with status "stopped".

Under ``accelerate launch`` (several processes: DDP or FSDP, see
:mod:`fmllm_tui.runner.distributed`) every rank trains; rank 0 alone writes the run folder's
files, each metrics row carries every rank's memory (``ranks``), and a rank that fails on its
own leaves ``outcome.rank<N>.json``. This module's only job needs torch, so it imports it at
the top.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fmllm_tui import recipe as rules

from . import rundir as rd
from .data import (
    Collator,
    DataError,
    build_train_dataset,
    ensure_chat_template,
    prompt_text,
    read_records,
)
from .launch import HUB_KERNELS_DEFAULT
from .lean import (
    Recipe,
    RecipeError,
    honour_plan,
    load_model,
    load_tokenizer,
    prepare_for_training,
    quant_states_off_device,
    trainable_parameters,
)
from .monitor import NvmlSampler, visible_device

if TYPE_CHECKING:
    from fmllm_tui.plan import RunPlan

# The training process's own exit codes, read only by its supervisor (which reports a run's
# status from outcome.json); OOM is 4 so it never reads as fmllm's ExitCode.CRASHED (3).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_OOM = 0, 1, 2, 4
# How many examples a minimal test cycles through per micro-batch slot.
TEST_SAMPLE_PER_SLOT = 4
# Records scanned to find the minimal test's longest examples.
TEST_SCAN_LIMIT = 2000
# The memory_snapshot override records torch's allocator history over the first steps (a 14B
# under FSDP makes ~70,000 allocator events a step).
SNAPSHOT_STEPS = 2
SNAPSHOT_MAX_ENTRIES = 600_000


class StopRequested(Exception):
    """SIGTERM/SIGINT that ends the process at once: before training started (nothing to
    checkpoint yet), or a second one during or after training."""

    def __init__(self, signame: str, phase: str):
        super().__init__(signame)
        self.signame, self.phase = signame, phase

    def describe(self) -> str:
        if self.phase == "loading":
            return f"{self.signame} before training started; nothing to save"
        return (f"a second {self.signame} {'during' if self.phase == 'training' else 'after'} training: ended at "
                "once" + ("; fmllm-run resume continues from the last complete checkpoint"
                          if self.phase == "training" else "; the adapter may not have been saved"))


class SaveError(Exception):
    """Saving the adapter failed; nothing that looks complete was left behind."""


# phase: loading (a stop ends the process: nothing to save), training (the first stop ends the
# training after this step, with a checkpoint), after (the first stop lets the adapter save finish).
_signals: dict[str, Any] = {"count": 0, "phase": "loading"}


def _on_signal(signum: int, frame: Any) -> None:
    _signals["count"] += 1
    name, phase = signal.Signals(signum).name, _signals["phase"]
    if phase == "loading" or _signals["count"] > 1:
        raise StopRequested(name, phase)
    if phase == "training":
        print(f"[fmllm] {name}: stopping after this step (a checkpoint is saved first)", flush=True)
    else:
        print(f"[fmllm] {name} after training: the adapter save finishes first, sample generations are skipped",
              flush=True)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _dist_ready() -> bool:
    return _world() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def gather_ranks(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (a collective: every rank must call it); [value]
    in a one-process run."""
    if not _dist_ready():
        return [value]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def distributed_mode(runner: dict[str, Any]) -> str:
    """single | ddp | fsdp: what the launch set up (accelerate's own variable wins for FSDP)."""
    if _world() <= 1:
        return "single"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        return "fsdp"
    mode = str((runner.get("distributed") or {}).get("mode") or "ddp")
    return mode if mode in ("ddp", "fsdp") else "ddp"


def say(message: str) -> None:
    """A ``[fmllm]`` line in train.log, from rank 0 only (the others would repeat it)."""
    if _rank() == 0:
        print(f"[fmllm] {message}", flush=True)


class RunFiles:
    """Writes the run directory's files (rank 0 only under several processes)."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.main = _rank() == 0

    def state(self, phase: str, **extra: Any) -> None:
        if self.main:
            rd.write_json_atomic(self.dir / rd.STATE, {"phase": phase, "ts": time.time(), "pid": os.getpid(), **extra})
            print(f"[fmllm] phase: {phase}" + (f" {json.dumps(extra, default=str)}" if extra else ""), flush=True)

    def metrics(self, row: dict[str, Any]) -> None:
        if self.main:
            rd.append_jsonl(self.dir / rd.METRICS, row)

    def write(self, name: str, data: Any) -> None:
        if self.main:
            rd.write_json_atomic(self.dir / name, data)


# ------------------------------------------------------------------------------------------------
# Memory and speed
# ------------------------------------------------------------------------------------------------


def memory_now(device: str) -> dict[str, int | None]:
    """Allocated, reserved and peak bytes (CUDA), or the process RSS and its peak (CPU)."""
    if device == "cuda":
        return {"allocated_bytes": int(torch.cuda.memory_allocated()),
                "reserved_bytes": int(torch.cuda.memory_reserved()),
                "peak_bytes": int(torch.cuda.max_memory_reserved()),
                "peak_allocated_bytes": int(torch.cuda.max_memory_allocated())}
    rss = None
    try:
        import psutil

        rss = int(psutil.Process().memory_info().rss)
    except Exception:  # psutil is a dependency, but memory figures are never worth a crash
        pass
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return {"allocated_bytes": rss, "reserved_bytes": rss, "peak_bytes": peak, "peak_allocated_bytes": peak}


class TokenCountingCollator:
    """Wraps the collator to count the tokens each batch carries (padding excluded)."""

    def __init__(self, inner: Collator):
        self.inner = inner
        self.tokens = 0
        self.last = 0  # the newest batch's tokens: accelerate's loader collates one batch ahead

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        mask = batch.get("attention_mask")
        self.last = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        self.tokens += self.last
        return batch


# Saved in each checkpoint by fmllm's callback: the Trainer's loss sum since the last logged step.
LOSS_WINDOW = "fmllm_loss_window"


def _make_callback(files: RunFiles, counter: TokenCountingCollator, device: str, kind: str,
                   save_on_stop: bool, sampler: NvmlSampler | None, profile: bool = False,
                   checkpoint_adapter: Any = None, release_load_cache: bool = False,
                   memory_snapshot: bool = False) -> Any:
    """The Trainer callback. ``checkpoint_adapter(folder)``: called on every rank after each
    checkpoint is written (FSDP: the adapter the Trainer's own FSDP checkpoint leaves out).
    ``release_load_cache``: hand the allocator's cached blocks back when training starts (FSDP:
    wrapping held the root unit twice; cached, that would stay "used" all run), after checking
    the quantization state, recording what wrapping cost and running FSDP's lazy initialisation
    (:func:`fsdp_lazy_init`). (Before each checkpoint the FSDP trainer hands them back too.)
    ``memory_snapshot`` (a bench override, CUDA): rank 0 records torch's allocator history over
    the first ``SNAPSHOT_STEPS`` steps into ``memory_snapshot.pickle`` (pytorch.org/memory_viz reads
    it); every rank writes its allocator segments by stream when training starts
    (``memory_segments.train_begin.rank<r>.json``), after steps 1-3 (``step<n>_end``; the cache is
    handed back after step 1, ``step1_end_released``, to see whether the reserve comes back), after
    each checkpoint (``saved<step>``) and at the end of training (``memory_segments.rank<r>.json``)."""
    from transformers import TrainerCallback

    # Steps 4-5 (after allocation and kernel selection settle), for the bench's --profile.
    profile_steps = (3, 5) if profile else None

    def record_segments(label: str) -> None:
        (files.dir / f"memory_segments.{label}.rank{_rank()}.json").write_text(json.dumps(allocator_segments(), indent=1))

    class FmllmCallback(TrainerCallback):
        """Metrics rows, per-step times and the graceful stop."""

        def __init__(self) -> None:
            self.step_times: list[float] = []
            self.step_tokens: list[int] = []
            self.losses: list[tuple[int, float]] = []
            self._t0 = 0.0
            self._tok0 = 0
            self._last_log_t = 0.0
            self._last_log_tok = 0
            self._last_log_step = 0
            self.start = 0.0
            self.stopped = False
            self.prof: Any = None
            self.wrapped_mem: dict[str, int] = {}
            # Set by run() before training: the Trainer (its loss window is saved with each
            # checkpoint) and the checkpoint a resume starts from.
            self.trainer: Any = None
            self.resumed_from: Path | None = None
            self._replay_until = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if release_load_cache and device == "cuda":
                # FSDP has wrapped the model by now: its units must have come to this GPU with
                # their 4-bit quantization state, or every layer would fail on its first step.
                misplaced = quant_states_off_device(kw.get("model"), torch.device("cuda", torch.cuda.current_device()))
                if misplaced:
                    raise RecipeError(f"FSDP moved the 4-bit weights to the GPU but {len(misplaced)} layers kept their "
                                      f"quantization state elsewhere (first: {misplaced[0]}); this bitsandbytes/torch "
                                      "pair does not support fmllm's FSDP loading: report it with train.log")
                # What wrapping cost (FSDP moves, flattens and shards each unit here: a peak of its
                # own, bench/RESULTS.md); the summary's peaks are then the training's alone.
                self.wrapped_mem = {"wrapped_allocated_bytes": int(torch.cuda.memory_allocated()),
                                    "wrap_peak_allocated_bytes": int(torch.cuda.max_memory_allocated()),
                                    "wrap_peak_reserved_bytes": int(torch.cuda.max_memory_reserved())}
                if not fsdp_lazy_init(kw.get("model")):
                    say("note: the model is not a torch FSDP root here, so FSDP's lazy initialisation runs in the "
                        "first step and its buffer may stay cached (up to the embeddings and head more per GPU)")
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                if memory_snapshot:
                    record_segments("train_begin")
                used = sampler.used_now() if sampler is not None else None
                if used is not None and sampler.baseline_bytes is not None:
                    # CUDA context and NCCL's buffers: the process's use that torch does not reserve.
                    self.wrapped_mem["outside_torch_bytes"] = max(
                        0, used - sampler.baseline_bytes - int(torch.cuda.memory_reserved()))
            self.start = self._last_log_t = self._t0 = time.perf_counter()
            self._last_log_tok = self._tok0 = counter.tokens
            self._last_log_step = state.global_step
            _signals["phase"] = "training"
            files.state("training", step=state.global_step, max_steps=state.max_steps)
            if self.resumed_from is not None:
                self._resume_window(state, self.resumed_from)

        def _resume_window(self, state: Any, checkpoint: Path) -> None:
            """A resume: restore the Trainer's loss window (the losses summed since the last logged
            step, which the Trainer's own checkpoint does not keep) and the token count, so the
            first logged loss averages the same steps as without the kill; and note up to which
            step rows are replays of rows already in metrics.jsonl."""
            if files.main:
                from .monitor import read_jsonl

                rows = read_jsonl(files.dir / rd.METRICS)
                self._replay_until = max((r["step"] for r in rows if isinstance(r.get("step"), int)), default=0)
            saved = rd.read_json(checkpoint / f"{LOSS_WINDOW}.rank{_rank()}.json")
            tr_loss = getattr(self.trainer, "_tr_loss", None)
            if not isinstance(saved, dict) or saved.get("step") != state.global_step:
                say(f"note: {checkpoint.name} has no loss window (saved before fmllm kept one): the first "
                    "logged loss after the resume averages only the steps since it")
                return
            if isinstance(tr_loss, torch.Tensor) and hasattr(self.trainer, "_globalstep_last_logged"):
                tr_loss.add_(float(saved["tr_loss"]))  # in place: the Trainer's loop holds this tensor
                self.trainer._globalstep_last_logged = int(saved["last_logged"])
            counter.tokens = int(saved.get("tokens") or 0)
            self._last_log_tok = self._tok0 = counter.tokens

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if memory_snapshot and device == "cuda" and files.main and state.global_step == 0:
                torch.cuda.memory._record_memory_history(max_entries=SNAPSHOT_MAX_ENTRIES, stacks="python")
            if profile_steps and state.global_step == profile_steps[0] and self.prof is None:
                acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
                self.prof = torch.profiler.profile(activities=acts)
                self.prof.__enter__()

        def _end_profile(self) -> None:
            if self.prof is None:
                return
            if device == "cuda":
                torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)
            ka = self.prof.key_averages()
            text = ka.table(sort_by="self_cpu_time_total", row_limit=40)
            if device == "cuda":
                text += "\n\n" + ka.table(sort_by="self_cuda_time_total", row_limit=25)
            if files.main:
                (files.dir / "profile.txt").write_text(text)
            self.prof = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if memory_snapshot and device == "cuda" and files.main and state.global_step == SNAPSHOT_STEPS:
                torch.cuda.memory._dump_snapshot(str(files.dir / "memory_snapshot.pickle"))
                torch.cuda.memory._record_memory_history(enabled=None)
            if memory_snapshot and device == "cuda" and 1 <= state.global_step <= 3:
                # Is the reserve above the training's allocations made again every step? Hand the
                # cache back after step 1 and look at it after steps 2 and 3.
                record_segments(f"step{state.global_step}_end")
                if state.global_step == 1:
                    torch.cuda.empty_cache()
                    record_segments("step1_end_released")
            if self.prof is not None and profile_steps and state.global_step >= profile_steps[1]:
                self._end_profile()
            # End to end: the Trainer fetches a step's batches before on_step_begin, so a step
            # is measured from the previous step's end (data loading included).
            now = time.perf_counter()
            self.step_times.append(now - self._t0)
            self.step_tokens.append(counter.tokens - self._tok0)
            self._t0, self._tok0 = now, counter.tokens
            # stop.requested: how `fmllm-run stop` reaches the ranks of an accelerate launch.
            flag = _signals["count"] > 0 or (files.dir / rd.STOP_REQUEST).exists()
            if _world() > 1 and torch.distributed.is_initialized():
                # Every rank must stop at the same step, or the others wait forever.
                t = torch.tensor([1 if flag else 0], device=f"cuda:{torch.cuda.current_device()}" if device == "cuda" else "cpu")
                torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
                flag = bool(t.item())
            if flag:
                self.stopped = True
                control.should_training_stop = True
                if save_on_stop:
                    control.should_save = True

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            logs = logs or {}
            if "loss" not in logs:
                return
            now = time.perf_counter()
            if device == "cuda":
                torch.cuda.synchronize()
            steps = max(1, state.global_step - self._last_log_step)
            dt = max(1e-9, now - self._last_log_t)
            dtok = counter.tokens - self._last_log_tok
            avg_step = dt / steps
            remaining = max(0, state.max_steps - state.global_step)
            row: dict[str, Any] = {
                "step": state.global_step, "max_steps": state.max_steps, "epoch": logs.get("epoch", state.epoch),
                "loss": logs.get("loss"), "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                "tokens_per_s": dtok / dt, "tokens": counter.tokens, "step_time_s": avg_step,
                **memory_now(device), "eta_s": remaining * avg_step, "ts": time.time(), "kind": kind,
            }
            if sampler is not None and sampler.error is None:
                row["gpu_used_bytes"] = sampler.last_used_bytes
                row["process_peak_bytes"] = sampler.process_peak_bytes
            if _world() > 1:
                # Every rank's memory and tokens (Trainer calls on_log on every rank at the same step).
                mine = {"rank": _rank(), "local_rank": int(os.environ.get("LOCAL_RANK", "0")), "tokens": dtok,
                        **memory_now(device), "gpu_used_bytes": row.get("gpu_used_bytes"),
                        "process_peak_bytes": row.get("process_peak_bytes")}
                ranks = gather_ranks(mine)
                row["ranks"] = ranks
                row["world_size"] = len(ranks)
                row["tokens_per_s"] = sum(int(r.get("tokens") or 0) for r in ranks) / dt
            loss = logs.get("loss")
            if isinstance(loss, (int, float)):
                self.losses.append((state.global_step, float(loss)))
            if self.resumed_from is not None:
                # Readers keep the newest row of a step (fmllm_tui.runner.rundir.current_rows).
                row["resumed_from"] = self.resumed_from.name
                if state.global_step <= self._replay_until:
                    row["replayed"] = True
            files.metrics(row)
            self._last_log_t, self._last_log_tok, self._last_log_step = now, counter.tokens, state.global_step

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if memory_snapshot and device == "cuda" and files.main and state.global_step < SNAPSHOT_STEPS:
                # A run shorter than SNAPSHOT_STEPS: dump what was recorded.
                torch.cuda.memory._dump_snapshot(str(files.dir / "memory_snapshot.pickle"))
                torch.cuda.memory._record_memory_history(enabled=None)
            if memory_snapshot and device == "cuda":
                (files.dir / f"memory_segments.rank{_rank()}.json").write_text(
                    json.dumps(allocator_segments(), indent=1))

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if memory_snapshot and device == "cuda":
                record_segments(f"saved{state.global_step}")
            if checkpoint_adapter is not None:
                checkpoint_adapter(Path(args.output_dir) / f"checkpoint-{state.global_step}")
            tr_loss = getattr(self.trainer, "_tr_loss", None)
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if isinstance(tr_loss, torch.Tensor) and folder.is_dir():
                # The Trainer's checkpoint keeps no loss window: without it the first logged loss of
                # a resume averages fewer steps and differs from the run without the kill.
                rd.write_json_atomic(folder / f"{LOSS_WINDOW}.rank{_rank()}.json", {
                    "step": state.global_step, "tr_loss": float(tr_loss.item()),
                    "last_logged": int(getattr(self.trainer, "_globalstep_last_logged", state.global_step)),
                    # The batch collated ahead is collated again by the resumed run (none at an epoch's end).
                    "tokens": counter.tokens - (0 if float(state.epoch or 0).is_integer() else counter.last)})
            say(f"checkpoint saved at step {state.global_step}")

    return FmllmCallback()


# ------------------------------------------------------------------------------------------------
# Saving
# ------------------------------------------------------------------------------------------------


def fsdp_lazy_init(wrapped: Any) -> bool:
    """Run torch FSDP's lazy initialisation now, outside any forward. Entering ``no_sync()`` on the
    root does it (and nothing else: the context is left at once). It allocates and frees each
    unit's padded unsharded buffer on the default stream; done inside the first forward, the
    root's (input embedding and head) stayed cached while the root gathered into its own block on
    the unshard stream: one root more than the training needs (2.9 GiB for Qwen2.5-14B over 2
    H100s, bench/RESULTS.md). Called before the cache is handed back at train begin. True when
    ``wrapped`` is an FSDP root."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if not isinstance(wrapped, FSDP):
        return False
    with wrapped.no_sync():
        pass
    return True


def fsdp_trainer_class(base: type, cuda: bool) -> type:
    """The Trainer (``base``) for FSDP runs: hands the allocator's cache back before every
    checkpoint, and materialises the optimizer's state before a resume loads it."""

    class FsdpTrainer(base):  # type: ignore[misc, valid-type]
        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            # Every checkpoint (save_steps, the last step, a stop, after an evaluation) gathers
            # units: the Trainer's sharded state dict unshards each one, then the adapter's full
            # state dict. From a cache the training filled, that adds a gathered root on top of
            # the training's reserve; handed back first, it fits inside it (bench/RESULTS.md).
            if cuda:
                torch.cuda.empty_cache()
            super()._save_checkpoint(model, trial)

        def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
            if checkpoint is not None and self.optimizer is not None:
                materialize_optimizer_state(self.optimizer)
            super()._load_optimizer_and_scheduler(checkpoint)

    return FsdpTrainer


def allocator_segments() -> dict[str, Any]:
    """torch's caching allocator on this GPU right now, by stream: reserved and allocated bytes,
    segment count and the largest blocks (what holds the gap between reserved and allocated)."""
    streams: dict[str, dict[str, Any]] = {}
    blocks: list[dict[str, Any]] = []
    for seg in torch.cuda.memory_snapshot():
        st = streams.setdefault(str(seg.get("stream")), {"reserved": 0, "allocated": 0, "segments": 0})
        st["reserved"] += int(seg.get("total_size", 0))
        st["allocated"] += int(seg.get("allocated_size", 0))
        st["segments"] += 1
        for b in seg.get("blocks", []):
            blocks.append({"stream": str(seg.get("stream")), "size": int(b.get("size", 0)), "state": b.get("state")})
    blocks.sort(key=lambda b: -b["size"])
    return {"reserved_bytes": int(torch.cuda.memory_reserved()), "allocated_bytes": int(torch.cuda.memory_allocated()),
            "max_reserved_bytes": int(torch.cuda.max_memory_reserved()),
            "max_allocated_bytes": int(torch.cuda.max_memory_allocated()), "streams": streams, "largest_blocks": blocks[:40]}


def adapter_key_map(model: Any, adapter_name: str = "default") -> dict[str, str]:
    """{model state-dict key: key in adapter_model.safetensors} of the adapter's tensors, asked of
    peft while the model is unwrapped. Under FSDP peft cannot select them itself: it matches the
    wrapped module names, which carry ``_fsdp_wrapped_module`` inside, and keeps nothing."""
    from peft import get_peft_model_state_dict

    saved = get_peft_model_state_dict(model, adapter_name=adapter_name)
    by_ptr = {t.data_ptr(): k for k, t in saved.items()}
    out = {name: by_ptr[t.data_ptr()] for name, t in model.state_dict().items() if t.data_ptr() in by_ptr}
    if len(out) != len(saved):
        raise RecipeError(f"could not match the adapter's {len(saved)} tensors to the model's parameters "
                          f"(matched {len(out)}): saving under FSDP would lose some")
    return out


def adapter_from_full_state(full_state: dict[str, Any], key_map: dict[str, str]) -> dict[str, Any]:
    """The adapter's tensors (peft's saved keys) picked from the full state dict FSDP gathered."""
    missing = [k for k in key_map if k not in full_state]
    if missing or not key_map:
        raise SaveError(f"the gathered FSDP state dict lacks {len(missing)} of the adapter's {len(key_map)} "
                        f"tensors (e.g. {missing[0] if missing else 'none selected'}); nothing was saved")
    return {saved: full_state[k].detach().to("cpu").contiguous() for k, saved in key_map.items()}


def gather_full_state(wrapped: Any, device: str) -> dict[str, Any]:
    """The FSDP model's full state dict, on rank 0 (a collective: every rank calls it; the
    others get an empty or partial dict). On the CPU without ``offload_to_cpu``: torch's FSDP
    frees the unsharded storage the offloaded "copies" would alias there."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    cfg = FullStateDictConfig(offload_to_cpu=device == "cuda", rank0_only=True)
    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, cfg):
        return wrapped.state_dict()


def _write_adapter_files(model: Any, tmp: Path, adapter: dict[str, Any], adapter_name: str = "default") -> None:
    """peft's save_pretrained, for tensors already selected: adapter_config.json (inference
    mode, as peft writes it) and adapter_model.safetensors."""
    import copy

    from safetensors.torch import save_file

    config = copy.deepcopy(model.peft_config[adapter_name])
    config.inference_mode = True
    config.save_pretrained(str(tmp))
    # The tensors last, under their final name only once complete (a checkpoint counts as
    # complete when its adapter_model.safetensors is there).
    part = tmp / ".adapter_model.safetensors.part"
    save_file(adapter, str(part), metadata={"format": "pt"})
    os.replace(part, tmp / "adapter_model.safetensors")


def load_checkpoint_adapter(model: Any, checkpoint: Path) -> int:
    """FSDP resume: the checkpoint's adapter into the (not yet wrapped) peft model, on every rank.
    The Trainer's own FSDP checkpoint holds no adapter tensors (see adapter_key_map)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    f = checkpoint / "adapter_model.safetensors"
    try:
        tensors = load_file(str(f))
    except Exception as e:  # missing, truncated or not safetensors: say which file and what to do
        raise RecipeError(f"{f} cannot be read ({type(e).__name__}: {e}): resume from an earlier checkpoint "
                          "(move this one aside) or start a new run") from None
    result = set_peft_model_state_dict(model, tensors)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if not tensors or unexpected:
        raise RecipeError(f"{f} does not fit this model's adapter ({len(tensors)} tensors, {len(unexpected)} unexpected, "
                          f"e.g. {unexpected[:1]}): start a new run instead of resuming this one")
    return len(tensors)


def save_adapter_atomic(model: Any, tokenizer: Any, dest: Path, meta: dict[str, Any],
                        adapter: dict[str, Any] | None = None) -> Path:
    """Save the adapter to a temporary folder beside ``dest``, write the completion marker last,
    then rename. On any failure the temporary folder is removed and :class:`SaveError` says why;
    ``dest`` is never left half-written. ``adapter``: the adapter's tensors already selected
    (FSDP: :func:`adapter_from_full_state`); None: peft takes them from ``model``."""
    dest = Path(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        if adapter is not None:
            _write_adapter_files(model, tmp, adapter)
        else:
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        files = {}
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                files[str(f.relative_to(tmp))] = f.stat().st_size
        marker = {"files": files, "saved": time.time(), **meta}
        rd.write_json_atomic(tmp / rd.COMPLETE_MARKER, marker)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{int(time.time())}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        try:
            fd = os.open(dest.parent, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        except OSError:
            pass
        return dest
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            free = shutil.disk_usage(dest.parent).free
            raise SaveError(f"disk full while saving the adapter to {dest} ({free / 2**20:.0f} MiB free): "
                            "free space or point paths.output_dir at a bigger disk; nothing was left "
                            "that looks like a finished adapter") from None
        raise SaveError(f"saving the adapter to {dest} failed: {e.strerror or e}; nothing was left that "
                        "looks like a finished adapter") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_CKPT = re.compile(r"^checkpoint-(\d+)$")


def last_complete_checkpoint(folder: Path, *, rename: bool = True) -> Path | None:
    """The newest checkpoint whose save finished: trainer state and the adapter present (an FSDP
    checkpoint holds the sharded model, ``pytorch_model_fsdp_*``, and optimizer instead).

    Checkpoints a kill interrupted mid-save are renamed ``*.incomplete`` so the Trainer's
    rotation never counts them (``rename`` False: only rank 0 renames, the others just skip).
    One with a file cut short (rundir.checkpoint_problem names it) is renamed ``*.damaged`` and
    the one before it is used, saying so.
    """
    if not folder.is_dir():
        return None
    found = []
    for p in folder.iterdir():
        m = _CKPT.match(p.name)
        if not m or not p.is_dir():
            continue
        # FSDP checkpoints: the Trainer's sharded model and optimizer, and fmllm's adapter (written
        # after them, so its presence means the rest is there).
        model_saved = any(p.glob("adapter_model.*")) and (not any(p.glob("pytorch_model_fsdp*")) or any(p.glob("optimizer*")))
        if (p / "trainer_state.json").is_file() and model_saved:
            found.append((int(m.group(1)), p))
        elif rename:
            p.rename(p.with_name(p.name + ".incomplete"))
    damaged: list[str] = []
    for _, p in sorted(found, reverse=True):
        problem = rd.checkpoint_problem(p)
        if problem is None:
            if damaged:
                say(f"falling back to {p.name}, the newest complete checkpoint before {damaged[-1]}")
            return p
        say(f"{p.name} is damaged and not resumed from: {problem}")
        damaged.append(p.name)
        if rename:
            p.rename(p.with_name(p.name + ".damaged"))
    return None


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def _training_args(cfg: dict[str, Any], recipe: Recipe, run_dir: Path, kind: str, steps: int | None,
                   notes: list[str], with_eval: bool = False) -> Any:
    import dataclasses

    from transformers import TrainingArguments

    tr = dict(cfg.get("training", {}))
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    args: dict[str, Any] = {
        "output_dir": str(run_dir / rd.CHECKPOINTS),
        "per_device_train_batch_size": tr.get("per_device_train_batch_size", 1),
        "per_device_eval_batch_size": tr.get("per_device_eval_batch_size", 1),
        "gradient_accumulation_steps": tr.get("gradient_accumulation_steps", 1),
        "num_train_epochs": tr.get("num_train_epochs", 1.0),
        "max_steps": tr.get("max_steps", -1),
        "learning_rate": tr.get("learning_rate", 2e-4),
        "weight_decay": tr.get("weight_decay", 0.0),
        "max_grad_norm": tr.get("max_grad_norm", 1.0),
        "lr_scheduler_type": tr.get("lr_scheduler_type", "cosine"),
        "optim": recipe.optim,
        "logging_steps": tr.get("logging_steps", 10),
        "save_strategy": "steps",
        "save_steps": tr.get("save_steps", 100),
        "save_total_limit": tr.get("save_total_limit"),
        "seed": tr.get("seed", 42),
        "report_to": tr.get("report_to", "none"),
        "bf16": recipe.mixed_precision == "bf16",
        "fp16": recipe.mixed_precision == "fp16",
        "use_cpu": recipe.device == "cpu",
        # The model was prepared for checkpointing already (lean.prepare_for_training).
        "gradient_checkpointing": False,
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "logging_first_step": True,
        "prediction_loss_only": True,
        "ddp_find_unused_parameters": False if _world() > 1 else None,
    }
    ratio = tr.get("warmup_ratio", 0.0)
    if "warmup_ratio" in names:
        args["warmup_ratio"] = ratio
    elif ratio:
        args["warmup_steps"] = float(ratio) if ratio < 1 else int(ratio)
    if tr.get("group_by_length") and not tr.get("packing"):
        if "train_sampling_strategy" in names:
            args["train_sampling_strategy"] = "group_by_length"
        elif "group_by_length" in names:
            args["group_by_length"] = True
    if kind == "test":
        # Few steps on a few examples: constant LR, no accumulation, a row per step, no checkpoints.
        args.update(max_steps=int(steps or 10), gradient_accumulation_steps=1, logging_steps=1,
                    save_strategy="no", lr_scheduler_type="constant")
        args.pop("warmup_ratio", None)
        args["warmup_steps"] = 0
    elif steps:
        args["max_steps"] = int(steps)
    if with_eval and kind != "test":
        args["eval_strategy"] = "steps"
        args["eval_steps"] = tr.get("eval_steps") or args["save_steps"]
    extra = dict(tr.get("extra_args") or {})
    unknown = sorted(k for k in extra if k not in names)
    if unknown:
        raise RecipeError(f"training.extra_args: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
                          "transformers TrainingArguments; remove or rename "
                          f"{'it' if len(unknown) == 1 else 'them'}")
    for k, v in extra.items():
        if v == "***":
            notes.append(f"training.extra_args.{k} is a secret and was not passed to the training process")
            continue
        if k in ("output_dir", "logging_dir"):
            notes.append(f"training.extra_args.{k} is set by fmllm (the run directory) and was ignored")
            continue
        args[k] = v
    args = {k: v for k, v in args.items() if k in names and v is not None}
    return TrainingArguments(**args)


def _sample_for_test(tokenizer: Any, records: list[dict[str, Any]], fmt: str, max_len: int, slots: int) -> list[dict[str, Any]]:
    """The longest examples (so the measured peak is the data's worst case)."""
    want = max(1, slots * TEST_SAMPLE_PER_SLOT)

    def length(r: dict[str, Any]) -> int:
        from .data import render_text

        text, _, _ = render_text(tokenizer, r, fmt)
        return min(max_len, len(tokenizer(text, add_special_tokens=False)["input_ids"]))

    ranked = sorted(records, key=length, reverse=True)
    return ranked[:want]


def _generate(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int, raw: bool) -> str:
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=raw)
    dev = next(p for p in model.parameters() if p.device.type != "meta").device
    enc = {k: v.to(dev) for k, v in enc.items()}
    model.eval()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[0][enc["input_ids"].shape[1]:].tolist()
    vocab = len(tokenizer)
    new = [t for t in new if 0 <= t < vocab]  # a random-weight model may emit ids the tokenizer lacks
    return tokenizer.decode(new, skip_special_tokens=True)


def _adapter_tensors(model: Any, name: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.named_parameters():
        if f".{name}." in k or k.endswith(f".{name}"):
            out[k.replace(f".{name}", "")] = v.detach()
    return out


def _falling(losses: list[float]) -> bool:
    if len(losses) < 2:
        return False
    k = max(1, len(losses) // 3)
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


def run(run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train as ``run_dir/config.json`` says. Returns the outcome record (also written)."""
    from transformers import Trainer

    files = RunFiles(run_dir)
    spec = rd.read_json(run_dir / rd.CONFIG)
    if not isinstance(spec, dict):
        raise RecipeError(f"{run_dir / rd.CONFIG} is missing or unreadable: start the run with fmllm-run")
    cfg: dict[str, Any] = spec["config"]
    runner: dict[str, Any] = spec.get("runner", {})
    kind = runner.get("kind", "train")
    started = time.time()
    files.state("starting", kind=kind, resume=resume)

    want = runner.get("device", "auto")
    if want == "cuda" and not torch.cuda.is_available():
        raise RecipeError("--device cuda was asked for but torch sees no CUDA GPU "
                          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
    view = typed_config(cfg)
    mode = distributed_mode(runner)
    the_plan = read_plan(spec, view, runner, mode)
    cuda = the_plan.target.cuda and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    sampler: NvmlSampler | None = None
    context_bytes = None
    if cuda:
        # Sample before this process touches the GPU: the baseline must not include our context.
        nv_index, nv_uuid = visible_device(local_rank)
        sampler = NvmlSampler(index=nv_index, uuid=nv_uuid).start()
        torch.cuda.set_device(local_rank)
        torch.zeros(1, device="cuda")  # create the CUDA context now, to measure it
        torch.cuda.synchronize()
        context_bytes = sampler.used_now()
        if context_bytes is not None and sampler.baseline_bytes is not None:
            context_bytes = max(0, context_bytes - sampler.baseline_bytes)
        vram = runner.get("vram_bytes")
        if vram:
            total = torch.cuda.get_device_properties(local_rank).total_memory
            ctx = context_bytes if context_bytes else 512 * 2**20
            frac = max(0.01, min(1.0, (int(vram) - ctx) / total))
            torch.cuda.set_per_process_memory_fraction(frac, local_rank)
            print(f"[fmllm] --vram {int(vram) / 2**30:.2f} GiB: capped torch at {frac * total / 2**30:.2f} GiB "
                  f"(the card minus a {ctx / 2**30:.2f} GiB CUDA context)", flush=True)
    bf16_ok = (not cuda) or torch.cuda.is_bf16_supported()
    recipe = honour_plan(the_plan, cuda=cuda, mode=mode, bf16_supported=bf16_ok)
    for line in the_plan.describe():
        say(line)
    if mode != "single":
        recipe.notes.append(f"{mode.upper()} over {_world()} processes (this is rank {_rank()})")

    fmt = cfg.get("data_format", "instruction")
    tr = cfg.get("training", {})
    max_len = the_plan.max_seq_length
    data_file = cfg.get("data_file")
    if not data_file:
        raise RecipeError("no training data is configured: set paths.ft_combined_data_file to your JSONL file")
    files.state("reading data", data_file=data_file)
    records = read_records(data_file, fmt, limit=TEST_SCAN_LIMIT if kind == "test" else None)

    model_name = cfg["base_model_name"]
    source, model_note = model_name, None
    if not cuda:
        from .smoke import cpu_model_source

        try:
            source, model_note = cpu_model_source(model_name, cfg, records, run_dir)
        except ValueError as e:
            raise RecipeError(str(e)) from None
        recipe.notes.insert(0, model_note)
    if not cfg.get("use_adapter", True):
        raise RecipeError("use_adapter is false: fmllm's runner trains LoRA adapters (4-bit weights cannot be "
                          "trained directly); set use_adapter: true")
    for note in recipe.notes:
        say(note)

    files.state("loading model", model=model_name, source=source)
    if mode == "fsdp" and cuda:
        say(f"FSDP: every process quantizes {model_name} into CPU RAM first (a 14B took 70 s per process with 16 "
            "cores each on an H100 host); FSDP moves it to the GPUs when training starts")
    t_load = time.perf_counter()
    tokenizer = load_tokenizer(source, cfg)
    if ensure_chat_template(tokenizer):
        recipe.notes.append("the tokenizer has no chat template: fmllm used a plain role-header template")
    model = load_model(source, cfg, recipe, device_index=local_rank)
    load_s = time.perf_counter() - t_load
    load_mem = memory_now(recipe.device)
    # The LoRA matrices are initialised randomly here, before the Trainer seeds anything: seed
    # now, so a run is reproducible and every rank starts from the same adapter.
    from transformers import set_seed

    set_seed(int(tr.get("seed", 42)))
    model = prepare_for_training(model, cfg, recipe)
    # Under FSDP the adapter's keys must be known before the Trainer wraps the model.
    key_map = adapter_key_map(model) if mode == "fsdp" else None
    trainable, total = trainable_parameters(model)
    _settle_optimizer(the_plan, recipe, trainable)
    say(f"loaded {model_name} in {load_s:.1f}s; trainable parameters {trainable:,} of {total:,}; "
        f"recipe {json.dumps(recipe.to_json())}")

    files.state("tokenizing")
    slots = int(tr.get("per_device_train_batch_size", 1))
    train_records = _sample_for_test(tokenizer, records, fmt, max_len, slots) if kind == "test" else records
    fm = cfg.get("fmllm", {})
    packing = bool(tr.get("packing"))
    dataset, stats = build_train_dataset(tokenizer, train_records, fmt, max_len=max_len,
                                         response_only=bool(fm.get("response_only_loss", True)), packing=packing)
    for note in stats.notes:
        say(note)
    if len(dataset) == 0:
        raise DataError(data_file, [_no_examples_problem(stats, max_len)])
    notes: list[str] = list(recipe.notes) + list(stats.notes)
    eval_dataset = None
    if kind != "test" and cfg.get("eval_data_file"):
        eval_records = read_records(cfg["eval_data_file"], fmt)
        eval_dataset, _ = build_train_dataset(tokenizer, eval_records, fmt, max_len=max_len,
                                              response_only=bool(fm.get("response_only_loss", True)), packing=packing)
    args = _training_args(cfg, recipe, run_dir, kind, runner.get("steps"), notes, with_eval=eval_dataset is not None)
    counter = TokenCountingCollator(Collator(tokenizer, packing))
    trainer: Any = None

    def fsdp_checkpoint_adapter(folder: Path) -> None:
        # A collective: every rank gathers, rank 0 writes the adapter into the checkpoint folder.
        if cuda:
            torch.cuda.empty_cache()  # what the Trainer's own sharded save left cached
        full = gather_full_state(trainer.model_wrapped, recipe.device)
        if files.main and key_map is not None:
            _write_adapter_files(model, folder, adapter_from_full_state(full, key_map))

    callback = _make_callback(files, counter, recipe.device, kind, save_on_stop=(kind != "test"), sampler=sampler,
                              profile=bool((runner.get("overrides") or {}).get("profile")),
                              checkpoint_adapter=fsdp_checkpoint_adapter if mode == "fsdp" else None,
                              release_load_cache=mode == "fsdp",
                              memory_snapshot=bool((runner.get("overrides") or {}).get("memory_snapshot")))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer_cls = fsdp_trainer_class(Trainer, cuda) if mode == "fsdp" else Trainer
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset,
                          data_collator=counter, callbacks=[callback])
    checkpoint = None
    if resume:
        checkpoint = last_complete_checkpoint(run_dir / rd.CHECKPOINTS, rename=files.main)
        if checkpoint is None:
            say("resume: no complete checkpoint yet, starting from step 0")
        else:
            say(f"resuming from {checkpoint.name}")
            files.state("resuming", checkpoint=checkpoint.name)  # a failure to load it reads as such
            if mode == "fsdp":
                n = load_checkpoint_adapter(model, checkpoint)
                say(f"loaded the adapter ({n} tensors) of {checkpoint.name} before FSDP wraps the model")
    callback.trainer, callback.resumed_from = trainer, checkpoint
    t_train = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_s = time.perf_counter() - t_train
    _signals["phase"] = "after"
    mem = memory_now(recipe.device)
    wrapped = callback.wrapped_mem
    if wrapped:
        # FSDP: torch's peaks were reset after wrapping; the run's peaks are the larger of the two.
        wrapped["training_peak_allocated_bytes"] = mem.get("peak_allocated_bytes")
        wrapped["training_peak_reserved_bytes"] = mem.get("peak_bytes")
        mem["peak_allocated_bytes"] = max(mem.get("peak_allocated_bytes") or 0, wrapped["wrap_peak_allocated_bytes"])
        mem["peak_bytes"] = max(mem.get("peak_bytes") or 0, wrapped["wrap_peak_reserved_bytes"])
    if sampler is not None:
        sampler.stop()
    steps_done = trainer.state.global_step
    losses = [loss for _, loss in callback.losses]
    times, toks = callback.step_times, callback.step_tokens
    # Tokens/s over steps 3.. (the first steps pay for allocation and kernel selection).
    skip = 2 if len(times) > 3 else 0
    tps = (sum(toks[skip:]) / sum(times[skip:])) if times[skip:] and sum(times[skip:]) > 0 else None
    peak_process = sampler.process_peak_bytes if (sampler is not None and sampler.error is None) else None
    # Every rank's peak (a collective: every rank reaches this line after training).
    ranks = gather_ranks({"rank": _rank(), "local_rank": local_rank, "peak_bytes": mem.get("peak_bytes"),
                          "peak_allocated_bytes": mem.get("peak_allocated_bytes"), "peak_process_bytes": peak_process,
                          "device_name": torch.cuda.get_device_name(local_rank) if cuda else "cpu",
                          "steps": steps_done, "losses": losses, **callback.wrapped_mem})
    base = {
        "kind": kind, "model": model_name, "model_source": source, "model_note": model_note,
        "device": recipe.device, "device_name": torch.cuda.get_device_name(local_rank) if cuda else "cpu",
        "recipe": recipe.to_json(), "steps": steps_done, "losses": losses, "tokens_per_s": tps,
        "step_times_s": times, "step_tokens": toks, "load_s": load_s, "train_s": train_s,
        "wall_s": time.time() - started, "trainable_params": trainable, "total_params": total,
        "peak_allocated_bytes": mem.get("peak_allocated_bytes"), "peak_reserved_bytes": mem.get("peak_bytes"),
        "load_allocated_bytes": load_mem.get("allocated_bytes"),
        "peak_process_bytes": peak_process, "cuda_context_bytes": context_bytes,
        "peak_bytes": peak_process if peak_process is not None else mem.get("peak_bytes"),
        "peak_method": (sampler.method if peak_process is not None and sampler else
                        ("torch-reserved" if cuda else "cpu-rss")),
        "nvml": sampler.to_json() if sampler else None, "vram_cap_bytes": runner.get("vram_bytes"),
        "data": stats.to_json(), "notes": notes, "run_dir": str(run_dir),
        "versions": _versions(), "distributed": mode, "world_size": _world(),
        "ranks": ranks if _world() > 1 else None,
    }
    if callback.stopped:
        files.state("stopped", step=steps_done)
        out = {**base, "status": "stopped", "message": f"stopped at step {steps_done}"
               + ("; a checkpoint was saved: fmllm-run resume continues from it" if kind != "test" else "")}
        files.write(rd.SUMMARY if kind != "test" else rd.RESULT, out)
        return out

    if recipe.compile_layers:
        # Reloading and generating run new shapes with a KV cache: the eager layers do that best.
        from .compiled import uncompile_decoder_layers

        uncompile_decoder_layers(model)
    files.state("saving adapter")
    fsdp_adapter = None
    if mode == "fsdp":
        # The adapter is sharded over the ranks: gather the full state dict (a collective; rank 0
        # receives it), as transformers' Trainer.save_model does for FSDP, and keep its tensors.
        # The training's cached blocks go back first: the gather then fits inside them.
        if cuda:
            torch.cuda.empty_cache()
        full_state = gather_full_state(trainer.model_wrapped, recipe.device)
        if files.main and key_map is not None:
            fsdp_adapter = adapter_from_full_state(full_state, key_map)
        del full_state
    if files.main:
        adapter = save_adapter_atomic(model, tokenizer, run_dir / rd.ADAPTER,
                                      {"model": model_name, "steps": steps_done, "kind": kind,
                                       "distributed": mode, "world_size": _world()}, adapter=fsdp_adapter)
    else:
        adapter = run_dir / rd.ADAPTER
    raw = fmt == "prompt_completion"
    if not files.main:
        # Rank 0 reloads, generates and writes the result; the others are done.
        return {**base, "status": "ok", "message": f"rank {_rank()} finished {steps_done} steps"}
    if kind == "test":
        files.state("reloading adapter")
        if fsdp_adapter is not None:
            reload_ok, reload_msg = _reload_check_files(adapter, fsdp_adapter)
        else:
            reload_ok, reload_msg = _reload_check(model, adapter)
        prompt = prompt_text(tokenizer, train_records[0], fmt)
        if mode == "fsdp":
            gen = None
            notes.append("no sample generation under FSDP: the model is sharded over the GPUs; load adapter/ on "
                         "one GPU to generate")
        elif _signals["count"]:
            gen = None
            notes.append("no sample generation: a stop came after training")
        else:
            files.state("generating")
            gen = _generate(model, tokenizer, prompt, int(runner.get("max_new_tokens", 32)), raw)
        finite = bool(losses) and all(math.isfinite(x) for x in losses)
        result = {**base, "status": "ok", "adapter_dir": str(adapter), "adapter_reloaded": reload_ok,
                  "reload_message": reload_msg, "prompt": prompt[-500:], "generation": gen,
                  "loss_finite": finite, "loss_falling": _falling(losses)}
        files.write(rd.RESULT, result)
        files.state("done")
        return result

    samples = []
    n_samples = int(runner.get("sample_generations", 3))
    if mode == "fsdp" and n_samples:
        n_samples = 0
        notes.append("no sample generations under FSDP: the model is sharded over the GPUs; load adapter/ on one "
                     "GPU to generate")
    if _signals["count"] and n_samples:
        n_samples = 0
        notes.append("no sample generations: a stop came after training")
    if n_samples:
        files.state("generating samples")
    for rec in records[:n_samples]:
        prompt = prompt_text(tokenizer, rec, fmt)
        samples.append({"prompt": prompt[-500:], "generation": _generate(model, tokenizer, prompt,
                                                                         int(runner.get("max_new_tokens", 64)), raw)})
    summary = {**base, "status": "ok", "adapter_dir": str(adapter), "final_loss": losses[-1] if losses else None,
               "samples": samples, "resumed_from": str(checkpoint) if checkpoint else None}
    files.write(rd.SUMMARY, summary)
    files.state("done")
    return summary


def typed_config(cfg: dict[str, Any]) -> Any:
    """The typed config (FineTuneConfig) from config.json's resolved config, validated again."""
    from pydantic import ValidationError

    from fmllm_tui.config import FineTuneConfig

    try:
        return FineTuneConfig.model_validate(cfg)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise RecipeError(f"config.json's config does not validate ({where}: {first.get('msg')}): "
                          "start the run with fmllm-run") from None


def read_plan(spec: dict[str, Any], view: Any, runner: dict[str, Any], mode: str) -> RunPlan:
    """The run's plan from config.json. A config.json written without one (a bench's, or an
    older fmllm's) is planned here once, for this machine, by the same resolver."""
    from fmllm_tui.plan import PlanError, RunPlan, Target, run_plan

    try:
        if spec.get("plan") is not None:
            return RunPlan.from_json(spec["plan"])
        from .distributed import model_architecture, visible_gpus

        target = Target.cpu() if runner.get("device") == "cpu" else Target.local(visible_gpus())
        if not target.cuda and runner.get("device") != "cpu" and torch.cuda.is_available():
            target = Target("cuda", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0),
                            rules.liger_installed(), True)
        made = run_plan(view, target, mode=mode, num_processes=_world(), overrides=runner.get("overrides"),
                        arch=model_architecture(view))
    except PlanError as e:
        raise RecipeError(str(e)) from None
    made.recipe.notes.append("config.json carries no plan (a bench's or an older fmllm's): planned here for "
                             f"{made.target.name or made.target.device}")
    return made


def _settle_optimizer(the_plan: RunPlan, recipe: Recipe, trainable: int) -> None:
    """The optimizer swap (fmllm_tui.recipe.fused_adamw) is the plan's when it knew the model's
    shapes; it only falls to this process when the plan could not count the trainable
    parameters (the model's config.json was not available at launch)."""
    from fmllm_tui.plan import swap_optimizer

    if the_plan.trainable_params is None:
        swap_optimizer(recipe, trainable)
    elif the_plan.trainable_params != trainable:
        recipe.notes.append(f"the plan counted {the_plan.trainable_params:,} trainable parameters, the model has "
                            f"{trainable:,}: the optimizer stays as planned ({recipe.optim})")


def _no_examples_problem(stats: Any, max_len: int) -> Any:
    from .data import DataProblem

    return DataProblem(
        f"no example has a response token within max_seq_length={max_len} "
        f"({stats.dropped_no_target} of {stats.examples} examples were left out)",
        hint="raise training.max_seq_length or shorten the prompts")


def materialize_optimizer_state(optimizer: Any) -> None:
    """Create the optimizer's per-parameter state (AdamW's moments) with a step that changes
    nothing (zero gradients, learning rate 0). accelerate restores an FSDP optimizer checkpoint
    into the state that exists already: into a fresh optimizer, which has none, it restores
    nothing, and the resumed run would restart AdamW's moments silently."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    lrs = [g["lr"] for g in inner.param_groups]
    for g in inner.param_groups:
        g["lr"] = 0.0
        for p in g["params"]:
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
    inner.step()
    for g, lr in zip(inner.param_groups, lrs, strict=True):
        g["lr"] = lr
    inner.zero_grad(set_to_none=True)


def _reload_check(model: Any, adapter: Path) -> tuple[bool, str]:
    """Load the saved adapter beside the trained one and compare every tensor."""
    try:
        model.load_adapter(str(adapter), adapter_name="reloaded", is_trainable=False)
        trained = _adapter_tensors(model, "default")
        loaded = _adapter_tensors(model, "reloaded")
        if not trained or set(trained) != set(loaded):
            return False, f"the reloaded adapter has {len(loaded)} tensors, the trained one {len(trained)}"
        bad = [k for k in trained if not torch.equal(trained[k].float().cpu(), loaded[k].float().cpu())]
        if bad:
            return False, f"{len(bad)} tensors differ after reloading, e.g. {bad[0]}"
        model.set_adapter("reloaded")
        return True, f"reloaded {len(loaded)} tensors from {adapter}; all equal to the trained ones"
    except Exception as e:  # a reload failure is a finding of the test, not a crash
        return False, f"reloading the adapter failed: {type(e).__name__}: {e}"


def _reload_check_files(adapter: Path, expected: dict[str, torch.Tensor]) -> tuple[bool, str]:
    """FSDP: compare the saved adapter file with the adapter tensors gathered from the ranks
    (the sharded model cannot load a second adapter beside the first)."""
    try:
        from safetensors.torch import load_file

        files = sorted(adapter.glob("adapter_model*.safetensors"))
        if not files:
            return False, f"no adapter_model*.safetensors in {adapter}"
        saved: dict[str, torch.Tensor] = {}
        for f in files:
            saved.update(load_file(str(f)))
        if not expected or set(saved) != set(expected):
            return False, f"the saved adapter has {len(saved)} tensors, the trained one {len(expected)}"
        bad = [k for k in expected if not torch.equal(expected[k].float().cpu(), saved[k].float().cpu())]
        if bad:
            return False, f"{len(bad)} tensors differ after reloading, e.g. {bad[0]}"
        return True, f"reloaded {len(saved)} tensors from {adapter}; all equal to the gathered trained ones"
    except Exception as e:  # a reload failure is a finding of the test, not a crash
        return False, f"reloading the adapter failed: {type(e).__name__}: {e}"


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "liger-kernel"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _oom_record(run_dir: Path, err: BaseException) -> dict[str, Any]:
    info: dict[str, Any] = {"error": str(err).splitlines()[0] if str(err) else type(err).__name__}
    try:
        info.update(memory_now("cuda"))
        free, total = torch.cuda.mem_get_info()
        info.update(free_bytes=int(free), total_bytes=int(total))
        summary = torch.cuda.memory_summary()
    except Exception as e:  # the summary is a nicety on top of the error itself
        summary = f"(memory summary unavailable: {e})"
    name = rd.OOM if _rank() == 0 else f"oom.rank{_rank()}.txt"
    (run_dir / name).write_text(f"{err}\n\n{summary}\n", encoding="utf-8")
    return info


def main(argv: list[str] | None = None) -> int:
    """Entry point of the training process. Exit codes: 0 ok/stopped, 1 failed, 2 bad input, 3 OOM."""
    ap = argparse.ArgumentParser(prog="python -m fmllm_tui.runner.train")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--resume", action="store_true")
    ns = ap.parse_args(argv)
    run_dir = Path(ns.run_dir).resolve()
    files = RunFiles(run_dir)
    from .procs import write_pid_record

    # Every rank says who it is: the run lives while it does, also if its supervisor is killed.
    write_pid_record(run_dir / rd.trainer_pid(_rank()))
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("USE_HUB_KERNELS", HUB_KERNELS_DEFAULT)  # also when started without fmllm-run

    def finish(status: str, code: int, message: str, **extra: Any) -> int:
        record = {"status": status, "exit_code": code, "message": message, "ts": time.time(), **extra}
        files.write(rd.OUTCOME, record)
        if not files.main and status in ("failed", "oom"):
            # A rank that fails alone must be heard: rank 0 may only see the others vanish.
            try:
                rd.write_json_atomic(run_dir / f"outcome.rank{_rank()}.json", {**record, "rank": _rank()})
            except OSError:
                pass
        who = f" (rank {_rank()})" if _world() > 1 else ""
        if files.main or status in ("failed", "oom"):
            print(f"[fmllm] {status}{who}: {message}", flush=True)
        return code

    try:
        out = run(run_dir, resume=ns.resume)
        return finish(out["status"], EXIT_OK, out.get("message") or f"finished {out['steps']} steps")
    except StopRequested as e:
        return finish("stopped", EXIT_OK, e.describe())
    except DataError as e:
        return finish("failed", EXIT_BAD_INPUT, e.render(), problem="data", details=e.to_json())
    except RecipeError as e:
        return finish("failed", EXIT_BAD_INPUT, str(e), problem="config")
    except SaveError as e:
        return finish("failed", EXIT_FAILED, str(e), problem="save")
    except torch.OutOfMemoryError as e:
        traceback.print_exc()
        info = _oom_record(run_dir, e)
        return finish("oom", EXIT_OOM, "CUDA out of memory: " + info["error"] + f" (memory state in {rd.OOM})",
                      memory=info)
    except KeyboardInterrupt:
        return finish("stopped", EXIT_OK, "interrupted")
    except Exception as e:
        traceback.print_exc()
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        code = EXIT_FAILED
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            first = f"disk full: {first}"
        return finish("failed", code, f"{type(e).__name__}: {first}")


def _end_process_group() -> None:
    """Leave the process group cleanly after a finished distributed run."""
    try:
        if _dist_ready():
            torch.distributed.destroy_process_group()
    except Exception:  # a peer already gone: nothing left to coordinate
        pass


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if _world() == 1:
        # Every file is written and synced: skip the interpreter's slow teardown (seconds on a CPU).
        os._exit(code)
    if code == 0:
        _end_process_group()  # after a failure a peer may be gone: tearing down could hang
    sys.exit(code)
