"""The training process: ``python -m fmllm_tui.runner.train --run-dir DIR [--resume]``.

It reads ``DIR/config.json`` (written by :mod:`fmllm_tui.runner.launch`), trains with the
transformers ``Trainer`` + peft (+ bitsandbytes 4-bit on a GPU), and writes the run directory's
state, metrics, checkpoints, adapter, summary or minimal-test result, and its own last word
(``outcome.json``). The supervisor (:mod:`fmllm_tui.runner.supervise`) turns that into
``exit.json``. The typed config (FineTuneConfig, validated again) and the launch's plan
(fmllm_tui.plan.RunPlan) drive every step; config.json's ``runner`` section is read once
(:class:`fmllm_tui.runner.runfiles.RunnerSettings`).

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
own leaves ``outcome.rank<N>.json``.

The parts live beside this module: run-folder I/O, ranks and signals (``runfiles``), fmllm's
Trainer callback (``callback``), the adapter's save, FSDP gather and reload (``adapter``), the
Trainer under FSDP (``fsdp_trainer``), and the bench-only instrumentation (``benchprobe``). This
module's only job needs torch, so it imports it at the top.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fmllm_tui import recipe as rules

from . import rundir as rd
from .adapter import (
    SaveError,
    adapter_from_full_state,
    adapter_key_map,
    gather_full_state,
    last_complete_checkpoint,
    load_checkpoint_adapter,
    reload_check,
    reload_check_files,
    save_adapter_atomic,
    write_adapter_files,
)
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
    trainable_parameters,
)
from .monitor import NvmlSampler, visible_device
from .runfiles import (
    RunFiles,
    RunnerSettings,
    StopRequested,
    _dist_ready,
    _local_rank,
    _rank,
    _world,
    distributed_mode,
    gather_ranks,
    install_signal_handlers,
    memory_now,
    say,
    set_phase,
    stop_signalled,
)

if TYPE_CHECKING:
    from fmllm_tui.config import FineTuneConfig, TrainingSettings
    from fmllm_tui.plan import RunPlan

    from .callback import FmllmCallback
    from .fsdp_trainer import FsdpTrainBegin

# Names other modules and tests import from here (the training process's public surface).
__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "EXIT_OOM", "SaveError", "StopRequested",
           "adapter_from_full_state", "adapter_key_map", "last_complete_checkpoint", "load_checkpoint_adapter",
           "main", "read_plan", "run", "save_adapter_atomic", "typed_config"]

# The training process's own exit codes, read only by its supervisor (which reports a run's
# status from outcome.json); OOM is 4 so it never reads as fmllm's ExitCode.CRASHED (3).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_OOM = 0, 1, 2, 4
# How many examples a minimal test cycles through per micro-batch slot.
TEST_SAMPLE_PER_SLOT = 4
# Records scanned to find the minimal test's longest examples.
TEST_SCAN_LIMIT = 2000


# ------------------------------------------------------------------------------------------------
# The Trainer's arguments
# ------------------------------------------------------------------------------------------------


def _training_args(tr: TrainingSettings, recipe: Recipe, run_dir: Path, kind: str, steps: int | None,
                   notes: list[str], with_eval: bool = False) -> Any:
    """transformers' TrainingArguments from the typed ``training`` section and the recipe."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    args = _base_args(tr, recipe, run_dir)
    if "warmup_ratio" in names:
        args["warmup_ratio"] = tr.warmup_ratio
    elif tr.warmup_ratio:
        args["warmup_steps"] = float(tr.warmup_ratio) if tr.warmup_ratio < 1 else int(tr.warmup_ratio)
    if tr.group_by_length and not tr.packing:
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
        args["eval_steps"] = tr.eval_steps or args["save_steps"]
    args.update(_extra_args(tr.extra_args, names, notes))
    args = {k: v for k, v in args.items() if k in names and v is not None}
    return TrainingArguments(**args)


def _base_args(tr: TrainingSettings, recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """The arguments every run passes: the config's training settings, the recipe's optimizer and
    precision, and what fmllm fixes (its own logging, no workers, no tqdm)."""
    return {
        "output_dir": str(run_dir / rd.CHECKPOINTS),
        "per_device_train_batch_size": tr.per_device_train_batch_size,
        "per_device_eval_batch_size": tr.per_device_eval_batch_size,
        "gradient_accumulation_steps": tr.gradient_accumulation_steps,
        "num_train_epochs": tr.num_train_epochs,
        "max_steps": tr.max_steps,
        "learning_rate": tr.learning_rate,
        "weight_decay": tr.weight_decay,
        "max_grad_norm": tr.max_grad_norm,
        "lr_scheduler_type": tr.lr_scheduler_type,
        "optim": recipe.optim,
        "logging_steps": tr.logging_steps,
        "save_strategy": "steps",
        "save_steps": tr.save_steps,
        "save_total_limit": tr.save_total_limit,
        "seed": tr.seed,
        "report_to": tr.report_to,
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


def _extra_args(extra: dict[str, Any], names: set[str], notes: list[str]) -> dict[str, Any]:
    """``training.extra_args`` that may pass: TrainingArguments only, no masked secret, not the
    run directory fmllm sets (each left out says so in ``notes``)."""
    unknown = sorted(k for k in extra if k not in names)
    if unknown:
        raise RecipeError(f"training.extra_args: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
                          "transformers TrainingArguments; remove or rename "
                          f"{'it' if len(unknown) == 1 else 'them'}")
    out: dict[str, Any] = {}
    for k, v in extra.items():
        if v == "***":
            notes.append(f"training.extra_args.{k} is a secret and was not passed to the training process")
            continue
        if k in ("output_dir", "logging_dir"):
            notes.append(f"training.extra_args.{k} is set by fmllm (the run directory) and was ignored")
            continue
        out[k] = v
    return out


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
    """A greedy continuation of ``prompt`` (``raw``: a prompt_completion prompt, with special tokens)."""
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


def _falling(losses: list[float]) -> bool:
    """Whether the last third of the losses averages below the first third."""
    if len(losses) < 2:
        return False
    k = max(1, len(losses) // 3)
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


# ------------------------------------------------------------------------------------------------
# The run, step by step
# ------------------------------------------------------------------------------------------------


class TrainingJob:
    """One run of the training process, in the order :func:`run` calls its steps: read
    config.json, open the device, read the data, load the model, build the datasets and the
    Trainer, train, then save and (rank 0) check the adapter and write the result or summary."""

    def __init__(self, run_dir: Path, resume: bool):
        self.run_dir, self.resume = run_dir, resume
        self.files = RunFiles(run_dir)
        self.started = time.time()
        self.local_rank = _local_rank()
        self.sampler: NvmlSampler | None = None
        self.context_bytes: int | None = None
        self.cuda = False
        self.trainer: Any = None
        self.key_map: dict[str, str] | None = None
        self.checkpoint: Path | None = None
        self.fsdp_begin: FsdpTrainBegin | None = None

    # -- config.json, the device, the recipe ------------------------------------------------------

    def read_spec(self) -> None:
        """config.json: the typed config, the runner's settings, the run's mode and plan."""
        spec = rd.read_json(self.run_dir / rd.CONFIG)
        if not isinstance(spec, dict):
            raise RecipeError(f"{self.run_dir / rd.CONFIG} is missing or unreadable: start the run with fmllm-run")
        self.cfg: dict[str, Any] = spec["config"]  # lean's loaders read the resolved config as a dict
        self.runner = RunnerSettings.from_json(spec.get("runner"))  # untyped JSON: read once there
        self.kind = self.runner.kind
        self.files.state("starting", kind=self.kind, resume=self.resume)
        if self.runner.device == "cuda" and not torch.cuda.is_available():
            raise RecipeError("--device cuda was asked for but torch sees no CUDA GPU "
                              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
        self.view: FineTuneConfig = typed_config(self.cfg)
        self.mode = distributed_mode(self.runner)
        self.plan = read_plan(spec, self.view, self.runner, self.mode)
        self.cuda = self.plan.target.cuda and torch.cuda.is_available()

    def open_device(self) -> None:
        """CUDA: start the NVML sampler, create and measure the CUDA context, apply --vram's cap."""
        if not self.cuda:
            return
        # Sample before this process touches the GPU: the baseline must not include our context.
        nv_index, nv_uuid = visible_device(self.local_rank)
        sampler = self.sampler = NvmlSampler(index=nv_index, uuid=nv_uuid).start()
        torch.cuda.set_device(self.local_rank)
        torch.zeros(1, device="cuda")  # create the CUDA context now, to measure it
        torch.cuda.synchronize()
        context_bytes = sampler.used_now()
        if context_bytes is not None and sampler.baseline_bytes is not None:
            context_bytes = max(0, context_bytes - sampler.baseline_bytes)
        self.context_bytes = context_bytes
        vram = self.runner.vram_bytes
        if vram:
            total = torch.cuda.get_device_properties(self.local_rank).total_memory
            ctx = context_bytes if context_bytes else 512 * 2**20
            frac = max(0.01, min(1.0, (int(vram) - ctx) / total))
            torch.cuda.set_per_process_memory_fraction(frac, self.local_rank)
            print(f"[fmllm] --vram {int(vram) / 2**30:.2f} GiB: capped torch at {frac * total / 2**30:.2f} GiB "
                  f"(the card minus a {ctx / 2**30:.2f} GiB CUDA context)", flush=True)

    def make_recipe(self) -> None:
        """The plan's recipe on this machine (lean.honour_plan), said in train.log."""
        bf16_ok = (not self.cuda) or torch.cuda.is_bf16_supported()
        self.recipe = honour_plan(self.plan, cuda=self.cuda, mode=self.mode, bf16_supported=bf16_ok)
        for line in self.plan.describe():
            say(line)
        if self.mode != "single":
            self.recipe.notes.append(f"{self.mode.upper()} over {_world()} processes (this is rank {_rank()})")

    # -- data and model ---------------------------------------------------------------------------

    def read_data(self) -> None:
        """The training records (a minimal test scans the first TEST_SCAN_LIMIT) and the model's
        source (on the CPU, possibly a small stand-in: smoke.cpu_model_source says why)."""
        view = self.view
        if not view.data_file:
            raise RecipeError("no training data is configured: set paths.ft_combined_data_file to your JSONL file")
        self.data_file: str = view.data_file
        self.files.state("reading data", data_file=self.data_file)
        self.records = read_records(self.data_file, view.data_format,
                                    limit=TEST_SCAN_LIMIT if self.kind == "test" else None)
        self.source, self.model_note = view.base_model_name, None
        if not self.cuda:
            from .smoke import cpu_model_source

            try:
                self.source, self.model_note = cpu_model_source(view.base_model_name, self.cfg, self.records,
                                                                self.run_dir)
            except ValueError as e:
                raise RecipeError(str(e)) from None
            self.recipe.notes.insert(0, self.model_note)
        if not view.use_adapter:
            raise RecipeError("use_adapter is false: fmllm's runner trains LoRA adapters (4-bit weights cannot be "
                              "trained directly); set use_adapter: true")
        for note in self.recipe.notes:
            say(note)

    def load(self) -> None:
        """The tokenizer and the model, seeded and prepared for training (LoRA on), and the
        optimizer settled against the trainable parameters counted."""
        model_name, recipe = self.view.base_model_name, self.recipe
        self.files.state("loading model", model=model_name, source=self.source)
        if self.mode == "fsdp" and self.cuda:
            say(f"FSDP: every process quantizes {model_name} into CPU RAM first (a 14B took 70 s per process with "
                "16 cores each on an H100 host); FSDP moves it to the GPUs when training starts")
        t_load = time.perf_counter()
        self.tokenizer = load_tokenizer(self.source, self.cfg)
        if ensure_chat_template(self.tokenizer):
            recipe.notes.append("the tokenizer has no chat template: fmllm used a plain role-header template")
        model = load_model(self.source, self.cfg, recipe, device_index=self.local_rank)
        self.load_s = time.perf_counter() - t_load
        self.load_mem = memory_now(recipe.device)
        # The LoRA matrices are initialised randomly here, before the Trainer seeds anything: seed
        # now, so a run is reproducible and every rank starts from the same adapter.
        from transformers import set_seed

        set_seed(self.view.training.seed)
        self.model = prepare_for_training(model, self.cfg, recipe)
        # Under FSDP the adapter's keys must be known before the Trainer wraps the model.
        self.key_map = adapter_key_map(self.model) if self.mode == "fsdp" else None
        self.trainable, self.total = trainable_parameters(self.model)
        _settle_optimizer(self.plan, recipe, self.trainable)
        say(f"loaded {model_name} in {self.load_s:.1f}s; trainable parameters {self.trainable:,} of "
            f"{self.total:,}; recipe {json.dumps(recipe.to_json())}")

    def build_datasets(self) -> None:
        """Tokenized training (a minimal test: its longest examples) and evaluation datasets."""
        view, tr, fmt = self.view, self.view.training, self.view.data_format
        max_len = self.plan.max_seq_length
        self.files.state("tokenizing")
        slots = tr.per_device_train_batch_size
        self.train_records = (_sample_for_test(self.tokenizer, self.records, fmt, max_len, slots)
                              if self.kind == "test" else self.records)
        response_only = view.fmllm.response_only_loss
        self.dataset, self.stats = build_train_dataset(self.tokenizer, self.train_records, fmt, max_len=max_len,
                                                       response_only=response_only, packing=tr.packing)
        for note in self.stats.notes:
            say(note)
        if len(self.dataset) == 0:
            raise DataError(self.data_file, [_no_examples_problem(self.stats, max_len)])
        # One list: the result's notes, which later steps (generation skipped) still add to.
        self.notes: list[str] = list(self.recipe.notes) + list(self.stats.notes)
        self.eval_dataset = None
        if self.kind != "test" and view.eval_data_file:
            eval_records = read_records(view.eval_data_file, fmt)
            self.eval_dataset, _ = build_train_dataset(self.tokenizer, eval_records, fmt, max_len=max_len,
                                                       response_only=response_only, packing=tr.packing)

    # -- the Trainer and training -----------------------------------------------------------------

    def build_trainer(self) -> None:
        """The Trainer with fmllm's callbacks: FSDP's train-begin (FSDP on CUDA), the bench's
        probe (when a bench asks), then fmllm's own (metrics, stop, loss window)."""
        from transformers import Trainer

        from .benchprobe import bench_probe
        from .callback import FmllmCallback, TokenCountingCollator

        recipe, fsdp = self.recipe, self.mode == "fsdp"
        args = _training_args(self.view.training, recipe, self.run_dir, self.kind, self.runner.steps, self.notes,
                              with_eval=self.eval_dataset is not None)
        self.counter = TokenCountingCollator(Collator(self.tokenizer, self.view.training.packing))
        self.callback: FmllmCallback = FmllmCallback(
            self.files, self.counter, recipe.device, self.kind, save_on_stop=(self.kind != "test"),
            sampler=self.sampler, checkpoint_adapter=self._fsdp_checkpoint_adapter if fsdp else None)
        callbacks: list[Any] = []
        if fsdp and recipe.device == "cuda":
            from .fsdp_trainer import FsdpTrainBegin

            self.fsdp_begin = FsdpTrainBegin(self.sampler)
            callbacks.append(self.fsdp_begin)
        probe = bench_probe(self.files, recipe.device, self.runner.overrides, fsdp=fsdp)
        if probe is not None:
            callbacks.append(probe)
        callbacks.append(self.callback)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer_cls: type = Trainer
        if fsdp:
            from .fsdp_trainer import fsdp_trainer_class

            trainer_cls = fsdp_trainer_class(Trainer, self.cuda)
        self.trainer = trainer_cls(model=self.model, args=args, train_dataset=self.dataset,
                                   eval_dataset=self.eval_dataset, data_collator=self.counter, callbacks=callbacks)

    def _fsdp_checkpoint_adapter(self, folder: Path) -> None:
        """A collective: every rank gathers, rank 0 writes the adapter into the checkpoint folder."""
        if self.cuda:
            torch.cuda.empty_cache()  # what the Trainer's own sharded save left cached
        full = gather_full_state(self.trainer.model_wrapped, self.recipe.device)
        if self.files.main and self.key_map is not None:
            write_adapter_files(self.model, folder, adapter_from_full_state(full, self.key_map))

    def find_checkpoint(self) -> None:
        """A resume: the newest complete checkpoint (FSDP: its adapter loaded before wrapping)."""
        if self.resume:
            checkpoint = last_complete_checkpoint(self.run_dir / rd.CHECKPOINTS, rename=self.files.main)
            if checkpoint is None:
                say("resume: no complete checkpoint yet, starting from step 0")
            else:
                say(f"resuming from {checkpoint.name}")
                self.files.state("resuming", checkpoint=checkpoint.name)  # a failure to load it reads as such
                if self.mode == "fsdp":
                    n = load_checkpoint_adapter(self.model, checkpoint)
                    say(f"loaded the adapter ({n} tensors) of {checkpoint.name} before FSDP wraps the model")
            self.checkpoint = checkpoint
        self.callback.trainer, self.callback.resumed_from = self.trainer, self.checkpoint

    def train(self) -> dict[str, Any]:
        """Train; the record every ending shares (what ran, its speed and memory, every rank's)."""
        t_train = time.perf_counter()
        self.trainer.train(resume_from_checkpoint=str(self.checkpoint) if self.checkpoint else None)
        self.train_s = time.perf_counter() - t_train
        set_phase("after")
        mem = memory_now(self.recipe.device)  # its four keys are always there
        wrapped = self.fsdp_begin.wrapped_mem if self.fsdp_begin is not None else {}
        if wrapped:
            # FSDP: torch's peaks were reset after wrapping; the run's peaks are the larger of the two.
            wrapped["training_peak_allocated_bytes"] = mem["peak_allocated_bytes"]
            wrapped["training_peak_reserved_bytes"] = mem["peak_bytes"]
            mem["peak_allocated_bytes"] = max(mem["peak_allocated_bytes"] or 0,
                                              wrapped["wrap_peak_allocated_bytes"] or 0)
            mem["peak_bytes"] = max(mem["peak_bytes"] or 0, wrapped["wrap_peak_reserved_bytes"] or 0)
        if self.sampler is not None:
            self.sampler.stop()
        self.steps_done = self.trainer.state.global_step
        self.losses = [loss for _, loss in self.callback.losses]
        sampler = self.sampler
        peak_process = sampler.process_peak_bytes if (sampler is not None and sampler.error is None) else None
        # Every rank's peak (a collective: every rank reaches this line after training).
        ranks = gather_ranks({"rank": _rank(), "local_rank": self.local_rank, "peak_bytes": mem["peak_bytes"],
                              "peak_allocated_bytes": mem["peak_allocated_bytes"],
                              "peak_process_bytes": peak_process, "device_name": self._device_name(),
                              "steps": self.steps_done, "losses": self.losses, **wrapped})
        return self._base_record(mem, peak_process, ranks)

    def _device_name(self) -> str:
        return torch.cuda.get_device_name(self.local_rank) if self.cuda else "cpu"

    def _base_record(self, mem: dict[str, int | None], peak_process: int | None,
                     ranks: list[Any]) -> dict[str, Any]:
        """The fields the result, the summary and a stopped run's record share."""
        from .speed import steady_state

        times, toks, sampler = self.callback.step_times, self.callback.step_tokens, self.sampler
        speed = steady_state(times, toks)  # the steady rate apart from the warm-up (compile, autotuning)
        return {
            "kind": self.kind, "model": self.view.base_model_name, "model_source": self.source,
            "model_note": self.model_note, "device": self.recipe.device, "device_name": self._device_name(),
            "recipe": self.recipe.to_json(), "steps": self.steps_done, "losses": self.losses,
            "tokens_per_s": speed.tokens_per_s, "speed": speed.to_json(),
            "step_times_s": times, "step_tokens": toks, "load_s": self.load_s, "train_s": self.train_s,
            "wall_s": time.time() - self.started, "trainable_params": self.trainable, "total_params": self.total,
            "peak_allocated_bytes": mem["peak_allocated_bytes"], "peak_reserved_bytes": mem["peak_bytes"],
            "load_allocated_bytes": self.load_mem["allocated_bytes"],
            "peak_process_bytes": peak_process, "cuda_context_bytes": self.context_bytes,
            "peak_bytes": peak_process if peak_process is not None else mem["peak_bytes"],
            "peak_method": (sampler.method if peak_process is not None and sampler else
                            ("torch-reserved" if self.cuda else "cpu-rss")),
            "nvml": sampler.to_json() if sampler else None, "vram_cap_bytes": self.runner.vram_bytes,
            "data": self.stats.to_json(), "notes": self.notes, "run_dir": str(self.run_dir),
            "versions": _versions(), "distributed": self.mode, "world_size": _world(),
            "ranks": ranks if _world() > 1 else None,
        }

    # -- after training -----------------------------------------------------------------------------

    def finish_stopped(self, base: dict[str, Any]) -> dict[str, Any]:
        """A stop during training: the record says where (a full run saved a checkpoint)."""
        self.files.state("stopped", step=self.steps_done)
        out = {**base, "status": "stopped", "message": f"stopped at step {self.steps_done}"
               + ("; a checkpoint was saved: fmllm-run resume continues from it" if self.kind != "test" else "")}
        self.files.write(rd.SUMMARY if self.kind != "test" else rd.RESULT, out)
        return out

    def save_adapter(self) -> tuple[Path, dict[str, Any] | None]:
        """The final adapter in adapter/ (rank 0 writes it; under FSDP every rank gathers it
        first). Returns its folder and, under FSDP, the gathered tensors (rank 0's; else None)."""
        if self.recipe.compile_layers:
            # Reloading and generating run new shapes with a KV cache: the eager layers do that best.
            from .compiled import uncompile_decoder_layers

            uncompile_decoder_layers(self.model)
        self.files.state("saving adapter")
        fsdp_adapter = None
        if self.mode == "fsdp":
            # The adapter is sharded over the ranks: gather the full state dict (a collective; rank 0
            # receives it), as transformers' Trainer.save_model does for FSDP, and keep its tensors.
            # The training's cached blocks go back first: the gather then fits inside them.
            if self.cuda:
                torch.cuda.empty_cache()
            full_state = gather_full_state(self.trainer.model_wrapped, self.recipe.device)
            if self.files.main and self.key_map is not None:
                fsdp_adapter = adapter_from_full_state(full_state, self.key_map)
            del full_state
        if not self.files.main:
            return self.run_dir / rd.ADAPTER, fsdp_adapter
        meta = {"model": self.view.base_model_name, "steps": self.steps_done, "kind": self.kind,
                "distributed": self.mode, "world_size": _world()}
        return save_adapter_atomic(self.model, self.tokenizer, self.run_dir / rd.ADAPTER, meta,
                                   adapter=fsdp_adapter), fsdp_adapter

    def _no_generation(self, what: str) -> str | None:
        """Why samples are not generated (a note), or None when they are."""
        if self.mode == "fsdp":
            return (f"no {what} under FSDP: the model is sharded over the GPUs; load adapter/ on one GPU "
                    "to generate")
        if stop_signalled():
            return f"no {what}: a stop came after training"
        return None

    def finish_test(self, base: dict[str, Any], adapter: Path, fsdp_adapter: dict[str, Any] | None) -> dict[str, Any]:
        """The minimal test's result: the adapter reloads equal, a sample generation, the losses."""
        fmt = self.view.data_format
        self.files.state("reloading adapter")
        if fsdp_adapter is not None:
            reload_ok, reload_msg = reload_check_files(adapter, fsdp_adapter)
        else:
            reload_ok, reload_msg = reload_check(self.model, adapter)
        prompt = prompt_text(self.tokenizer, self.train_records[0], fmt)
        skipped = self._no_generation("sample generation")
        gen = None
        if skipped:
            self.notes.append(skipped)
        else:
            self.files.state("generating")
            gen = _generate(self.model, self.tokenizer, prompt, self.runner.max_new_tokens,
                            raw=fmt == "prompt_completion")
        losses = self.losses
        finite = bool(losses) and all(math.isfinite(x) for x in losses)
        result = {**base, "status": "ok", "adapter_dir": str(adapter), "adapter_reloaded": reload_ok,
                  "reload_message": reload_msg, "prompt": prompt[-500:], "generation": gen,
                  "loss_finite": finite, "loss_falling": _falling(losses)}
        self.files.write(rd.RESULT, result)
        self.files.state("done")
        return result

    def finish_train(self, base: dict[str, Any], adapter: Path) -> dict[str, Any]:
        """A full run's summary: the final loss and a few sample generations."""
        fmt = self.view.data_format
        samples = []
        n_samples = self.runner.sample_generations
        skipped = self._no_generation("sample generations") if n_samples else None
        if skipped:
            n_samples = 0
            self.notes.append(skipped)
        if n_samples:
            self.files.state("generating samples")
        for rec in self.records[:n_samples]:
            prompt = prompt_text(self.tokenizer, rec, fmt)
            samples.append({"prompt": prompt[-500:], "generation": _generate(
                self.model, self.tokenizer, prompt, self.runner.max_new_tokens, raw=fmt == "prompt_completion")})
        losses = self.losses
        summary = {**base, "status": "ok", "adapter_dir": str(adapter), "final_loss": losses[-1] if losses else None,
                   "samples": samples, "resumed_from": str(self.checkpoint) if self.checkpoint else None}
        self.files.write(rd.SUMMARY, summary)
        self.files.state("done")
        return summary


def run(run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train as ``run_dir/config.json`` says. Returns the outcome record (also written)."""
    job = TrainingJob(run_dir, resume)
    job.read_spec()
    job.open_device()
    job.make_recipe()
    job.read_data()
    job.load()
    job.build_datasets()
    job.build_trainer()
    job.find_checkpoint()
    base = job.train()
    if job.callback.stopped:
        return job.finish_stopped(base)
    adapter, fsdp_adapter = job.save_adapter()
    if not job.files.main:
        # Rank 0 reloads, generates and writes the result; the others are done.
        return {**base, "status": "ok", "message": f"rank {_rank()} finished {job.steps_done} steps"}
    if job.kind == "test":
        return job.finish_test(base, adapter, fsdp_adapter)
    return job.finish_train(base, adapter)


def typed_config(cfg: dict[str, Any]) -> FineTuneConfig:
    """The typed config (FineTuneConfig) from config.json's resolved config, validated again."""
    from pydantic import ValidationError

    from fmllm_tui.config import FineTuneConfig

    try:
        return FineTuneConfig.model_validate(cfg)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RecipeError(f"config.json's config does not validate ({where}: {first['msg']}): "
                          "start the run with fmllm-run") from None


def read_plan(spec: dict[str, Any], view: FineTuneConfig, runner: RunnerSettings, mode: str) -> RunPlan:
    """The run's plan from config.json. A config.json written without one (a bench's, or an
    older fmllm's) is planned here once, for this machine, by the same resolver."""
    from fmllm_tui.plan import PlanError, RunPlan, Target, run_plan

    try:
        # .get: config.json is untyped JSON, and a bench's or an older fmllm's has no plan.
        if spec.get("plan") is not None:
            return RunPlan.from_json(spec["plan"])
        from .distributed import model_architecture, visible_gpus

        target = Target.cpu() if runner.device == "cpu" else Target.local(visible_gpus())
        if not target.cuda and runner.device != "cpu" and torch.cuda.is_available():
            target = Target("cuda", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0),
                            rules.liger_installed(), True)
        made = run_plan(view, target, mode=mode, num_processes=_world(), overrides=runner.overrides,
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
    """The data problem of a dataset left empty: no example kept a response token."""
    from .data import DataProblem

    return DataProblem(
        f"no example has a response token within max_seq_length={max_len} "
        f"({stats.dropped_no_target} of {stats.examples} examples were left out)",
        hint="raise training.max_seq_length or shorten the prompts")


def _versions() -> dict[str, str]:
    """The versions of the libraries that trained, for the result."""
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "liger-kernel"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _oom_record(run_dir: Path, err: BaseException) -> dict[str, Any]:
    """oom.txt (torch's memory summary) and the memory figures for the outcome."""
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


# ------------------------------------------------------------------------------------------------
# The process
# ------------------------------------------------------------------------------------------------


def _finish(files: RunFiles, status: str, code: int, message: str, **extra: Any) -> int:
    """outcome.json (and a failing non-zero rank's outcome.rank<N>.json), the last line in
    train.log; returns the exit code."""
    record = {"status": status, "exit_code": code, "message": message, "ts": time.time(), **extra}
    files.write(rd.OUTCOME, record)
    if not files.main and status in ("failed", "oom"):
        # A rank that fails alone must be heard: rank 0 may only see the others vanish.
        try:
            rd.write_json_atomic(files.dir / f"outcome.rank{_rank()}.json", {**record, "rank": _rank()})
        except OSError:
            pass
    who = f" (rank {_rank()})" if _world() > 1 else ""
    if files.main or status in ("failed", "oom"):
        print(f"[fmllm] {status}{who}: {message}", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the training process. Exit codes: 0 ok/stopped, 1 failed, 2 bad input, 4 OOM."""
    ap = argparse.ArgumentParser(prog="python -m fmllm_tui.runner.train")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--resume", action="store_true")
    ns = ap.parse_args(argv)
    run_dir = Path(ns.run_dir).resolve()
    files = RunFiles(run_dir)
    from .procs import write_pid_record

    # Every rank says who it is: the run lives while it does, also if its supervisor is killed.
    write_pid_record(run_dir / rd.trainer_pid(_rank()))
    install_signal_handlers()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("USE_HUB_KERNELS", HUB_KERNELS_DEFAULT)  # also when started without fmllm-run
    try:
        out = run(run_dir, resume=ns.resume)
        # .get: a rank other than 0 returns its own short record
        return _finish(files, out["status"], EXIT_OK, out.get("message") or f"finished {out['steps']} steps")
    except StopRequested as e:
        return _finish(files, "stopped", EXIT_OK, e.describe())
    except DataError as e:
        return _finish(files, "failed", EXIT_BAD_INPUT, e.render(), problem="data", details=e.to_json())
    except RecipeError as e:
        return _finish(files, "failed", EXIT_BAD_INPUT, str(e), problem="config")
    except SaveError as e:
        return _finish(files, "failed", EXIT_FAILED, str(e), problem="save")
    except torch.OutOfMemoryError as e:
        traceback.print_exc()
        info = _oom_record(run_dir, e)
        return _finish(files, "oom", EXIT_OOM, "CUDA out of memory: " + info["error"]
                       + f" (memory state in {rd.OOM})", memory=info)
    except KeyboardInterrupt:
        return _finish(files, "stopped", EXIT_OK, "interrupted")
    except Exception as e:
        traceback.print_exc()
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            first = f"disk full: {first}"
        return _finish(files, "failed", EXIT_FAILED, f"{type(e).__name__}: {first}")


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
