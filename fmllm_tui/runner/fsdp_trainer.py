"""The Trainer under FSDP in the training process: what fmllm adds to transformers' Trainer when
accelerate wraps the model in torch's FSDP (launch side: :mod:`fmllm_tui.runner.distributed`).

* :class:`FsdpTrainBegin`, a callback: when training starts, check the 4-bit quantization state
  came to the GPU with the weights, record what wrapping cost, run FSDP's lazy initialisation and
  hand the load's cached blocks back (bench/RESULTS.md has the measurements behind each).
* :func:`fsdp_trainer_class`: hands the allocator's cache back before every checkpoint and
  materialises the optimizer's state before a resume loads it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from .lean import RecipeError, quant_states_off_device
from .monitor import NvmlSampler
from .runfiles import say


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


class FsdpTrainBegin(TrainerCallback):  # type: ignore[misc]
    """FSDP on CUDA, when training starts: hand the allocator's cached blocks back (wrapping held
    the root unit twice; cached, that would stay "used" all run), after checking the quantization
    state, recording what wrapping cost (``wrapped_mem``) and running FSDP's lazy initialisation.
    First among fmllm's callbacks: the others' train-begin sees the released cache."""

    def __init__(self, sampler: NvmlSampler | None):
        self.sampler = sampler
        self.wrapped_mem: dict[str, int | None] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        # FSDP has wrapped the model by now: its units must have come to this GPU with their 4-bit
        # quantization state, or every layer would fail on its first step. (.get: the Trainer's
        # callback keywords, where the model is passed along with others.)
        misplaced = quant_states_off_device(kw.get("model"), torch.device("cuda", torch.cuda.current_device()))
        if misplaced:
            raise RecipeError(f"FSDP moved the 4-bit weights to the GPU but {len(misplaced)} layers kept their "
                              f"quantization state elsewhere (first: {misplaced[0]}); this bitsandbytes/torch "
                              "pair does not support fmllm's FSDP loading: report it with train.log")
        # What wrapping cost (FSDP moves, flattens and shards each unit here: a peak of its own,
        # bench/RESULTS.md); the summary's peaks are then the training's alone.
        self.wrapped_mem = {"wrapped_allocated_bytes": int(torch.cuda.memory_allocated()),
                            "wrap_peak_allocated_bytes": int(torch.cuda.max_memory_allocated()),
                            "wrap_peak_reserved_bytes": int(torch.cuda.max_memory_reserved())}
        if not fsdp_lazy_init(kw.get("model")):
            say("note: the model is not a torch FSDP root here, so FSDP's lazy initialisation runs in the "
                "first step and its buffer may stay cached (up to the embeddings and head more per GPU)")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        sampler = self.sampler
        used = sampler.used_now() if sampler is not None else None
        if used is not None and sampler is not None and sampler.baseline_bytes is not None:
            # CUDA context and NCCL's buffers: the process's use that torch does not reserve.
            self.wrapped_mem["outside_torch_bytes"] = max(
                0, used - sampler.baseline_bytes - int(torch.cuda.memory_reserved()))


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
