"""fmllm's Trainer callback in the training process: a metrics row per logged step (loss, speed,
memory, every rank's under several processes), the per-step times and tokens the summary reads,
the graceful stop at a step's end, and the loss window each checkpoint keeps so that a resume
logs the same losses as the run without the interruption.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from . import rundir as rd
from .data import Collator
from .monitor import NvmlSampler
from .runfiles import (
    RunFiles,
    _local_rank,
    _rank,
    _world,
    gather_ranks,
    memory_now,
    say,
    set_phase,
    stop_signalled,
)

# Saved in each checkpoint by fmllm's callback: the Trainer's loss sum since the last logged step.
LOSS_WINDOW = "fmllm_loss_window"


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


class FmllmCallback(TrainerCallback):  # type: ignore[misc]
    """Metrics rows, per-step times and the graceful stop. ``checkpoint_adapter(folder)``: called
    on every rank after each checkpoint is written (FSDP: the adapter the Trainer's own FSDP
    checkpoint leaves out). ``save_on_stop``: a stop saves a checkpoint (full runs)."""

    def __init__(self, files: RunFiles, counter: TokenCountingCollator, device: str, kind: str, *,
                 save_on_stop: bool, sampler: NvmlSampler | None,
                 checkpoint_adapter: Callable[[Path], None] | None = None):
        self.files, self.counter, self.device, self.kind = files, counter, device, kind
        self.save_on_stop, self.sampler, self.checkpoint_adapter = save_on_stop, sampler, checkpoint_adapter
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
        # Set before training: the Trainer (its loss window is saved with each checkpoint) and
        # the checkpoint a resume starts from.
        self.trainer: Any = None
        self.resumed_from: Path | None = None
        self._replay_until = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.start = self._last_log_t = self._t0 = time.perf_counter()
        self._last_log_tok = self._tok0 = self.counter.tokens
        self._last_log_step = state.global_step
        set_phase("training")
        self.files.state("training", step=state.global_step, max_steps=state.max_steps)
        if self.resumed_from is not None:
            self._resume_window(state, self.resumed_from)

    def _resume_window(self, state: Any, checkpoint: Path) -> None:
        """A resume: restore the Trainer's loss window (the losses summed since the last logged
        step, which the Trainer's own checkpoint does not keep) and the token count, so the
        first logged loss averages the same steps as without the kill; and note up to which
        step rows are replays of rows already in metrics.jsonl."""
        if self.files.main:
            from .monitor import read_jsonl

            rows = read_jsonl(self.files.dir / rd.METRICS)
            self._replay_until = max((r["step"] for r in rows if isinstance(r.get("step"), int)), default=0)
        saved = rd.read_json(checkpoint / f"{LOSS_WINDOW}.rank{_rank()}.json")
        tr_loss = getattr(self.trainer, "_tr_loss", None)
        # .get: the loss window is a JSON file an older fmllm may have written without these keys.
        if not isinstance(saved, dict) or saved.get("step") != state.global_step:
            say(f"note: {checkpoint.name} has no loss window (saved before fmllm kept one): the first "
                "logged loss after the resume averages only the steps since it")
            return
        if isinstance(tr_loss, torch.Tensor) and hasattr(self.trainer, "_globalstep_last_logged"):
            tr_loss.add_(float(saved["tr_loss"]))  # in place: the Trainer's loop holds this tensor
            self.trainer._globalstep_last_logged = int(saved["last_logged"])
        self.counter.tokens = int(saved.get("tokens") or 0)
        self._last_log_tok = self._tok0 = self.counter.tokens

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        # End to end: the Trainer fetches a step's batches before on_step_begin, so a step
        # is measured from the previous step's end (data loading included).
        now = time.perf_counter()
        self.step_times.append(now - self._t0)
        self.step_tokens.append(self.counter.tokens - self._tok0)
        self._t0, self._tok0 = now, self.counter.tokens
        if self._stop_wanted():
            self.stopped = True
            control.should_training_stop = True
            if self.save_on_stop:
                control.should_save = True

    def _stop_wanted(self) -> bool:
        """A signal, or stop.requested (how `fmllm-run stop` reaches the ranks of an accelerate
        launch), on any rank: every rank must stop at the same step, or the others wait forever."""
        flag = stop_signalled() or (self.files.dir / rd.STOP_REQUEST).exists()
        if _world() > 1 and torch.distributed.is_initialized():
            on = f"cuda:{torch.cuda.current_device()}" if self.device == "cuda" else "cpu"
            t = torch.tensor([1 if flag else 0], device=on)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        # .get: the Trainer's logs are an untyped dict whose keys vary by row (loss, eval, ...).
        logs = logs or {}
        if "loss" not in logs:
            return
        now = time.perf_counter()
        if self.device == "cuda":
            torch.cuda.synchronize()
        steps = max(1, state.global_step - self._last_log_step)
        dt = max(1e-9, now - self._last_log_t)
        dtok = self.counter.tokens - self._last_log_tok
        avg_step = dt / steps
        remaining = max(0, state.max_steps - state.global_step)
        row: dict[str, Any] = {
            "step": state.global_step, "max_steps": state.max_steps, "epoch": logs.get("epoch", state.epoch),
            "loss": logs.get("loss"), "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
            "tokens_per_s": dtok / dt, "tokens": self.counter.tokens, "step_time_s": avg_step,
            **memory_now(self.device), "eta_s": remaining * avg_step, "ts": time.time(), "kind": self.kind,
        }
        sampler = self.sampler
        if sampler is not None and sampler.error is None:
            row["gpu_used_bytes"] = sampler.last_used_bytes
            row["process_peak_bytes"] = sampler.process_peak_bytes
        if _world() > 1:
            self._add_ranks(row, dtok, dt)
        loss = logs.get("loss")
        if isinstance(loss, (int, float)):
            self.losses.append((state.global_step, float(loss)))
        if self.resumed_from is not None:
            # Readers keep the newest row of a step (fmllm_tui.runner.rundir.current_rows).
            row["resumed_from"] = self.resumed_from.name
            if state.global_step <= self._replay_until:
                row["replayed"] = True
        self.files.metrics(row)
        self._last_log_t, self._last_log_tok, self._last_log_step = now, self.counter.tokens, state.global_step

    def _add_ranks(self, row: dict[str, Any], dtok: int, dt: float) -> None:
        """Every rank's memory and tokens into ``row`` (a collective: the Trainer calls on_log on
        every rank at the same step); tokens/s is then the whole run's."""
        mine = {"rank": _rank(), "local_rank": _local_rank(), "tokens": dtok,
                **memory_now(self.device), "gpu_used_bytes": row.get("gpu_used_bytes"),
                "process_peak_bytes": row.get("process_peak_bytes")}
        ranks = gather_ranks(mine)
        row["ranks"] = ranks
        row["world_size"] = len(ranks)
        row["tokens_per_s"] = sum(int(r.get("tokens") or 0) for r in ranks) / dt

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.checkpoint_adapter is not None:
            self.checkpoint_adapter(folder)
        tr_loss = getattr(self.trainer, "_tr_loss", None)
        if isinstance(tr_loss, torch.Tensor) and folder.is_dir():
            # The Trainer's checkpoint keeps no loss window: without it the first logged loss of
            # a resume averages fewer steps and differs from the run without the kill.
            rd.write_json_atomic(folder / f"{LOSS_WINDOW}.rank{_rank()}.json", {
                "step": state.global_step, "tr_loss": float(tr_loss.item()),
                "last_logged": int(getattr(self.trainer, "_globalstep_last_logged", state.global_step)),
                # The batch collated ahead is collated again by the resumed run (none at an epoch's end).
                "tokens": self.counter.tokens - (0 if float(state.epoch or 0).is_integer() else self.counter.last)})
        say(f"checkpoint saved at step {state.global_step}")
