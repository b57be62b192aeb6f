"""What to advise for a diagnosed log failure, given the phase it happened in and the run's settings.

The log alone says *that* memory ran out and *where* (load, first step, training, eval, predict,
generation, save, merge); the config and the plan say what is already done. Advice that repeats a
setting that is already on ("batch 1 and gradient checkpointing" to a run at batch 1 with
checkpointing) is wrong advice: here each fix is built from what is still left to change.

Also the ranking of findings: the error that started the failure first, its consequences (a
launcher's "exit status 1", ranks torn down after the first one died, an unexplained exception
at the end of a chain) after it, warnings after errors, information last.

Plain data: no torch, transformers or textual imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fmllm_tui.findings import Fix
from fmllm_tui.logpatterns import (
    FIX_EVAL_BATCH,
    FIX_MEMORY,
    FIX_MEMORY_LOAD,
    FIX_SAVE_OOM,
    FIX_SEQ_LEN,
    fix,
)

__all__ = ["PHASES", "RunSettings", "oom_fix", "rank_key"]

#: Every phase a finding can name, in the order a run goes through them.
PHASES = ("load", "first_step", "training", "eval", "predict", "generation", "save", "merge")


@dataclass(frozen=True)
class RunSettings:
    """The settings of the run that wrote the log, as far as fmllm knows them (None: unknown)."""

    micro_batch: int | None = None
    grad_accum: int | None = None
    gradient_checkpointing: bool | None = None
    max_seq_length: int | None = None
    use_4bit: bool | None = None
    loss: str | None = None  # the plan's loss kind: liger | chunked | plain
    eval_batch: int | None = None
    num_processes: int | None = None

    @classmethod
    def from_config(cls, view: Any, plan: Any | None = None, recipe: Any | None = None) -> RunSettings:
        """From a config view (fmllm_tui.config) and, when known, the run's plan (fmllm_tui.plan.RunPlan)
        or the recipe it resolves to (fmllm_tui.plan.Recipe): they say what really runs (the loss
        kind after ``auto``, checkpointing after the recipe)."""
        t = view.training
        loss = None if view.fmllm.loss == "auto" else view.fmllm.loss
        gc = bool(t.gradient_checkpointing)
        procs = None
        recipe = plan.recipe if plan is not None else recipe
        if recipe is not None:
            loss = recipe.loss
            gc = bool(recipe.gradient_checkpointing)
        if plan is not None:
            procs = plan.num_processes
        return cls(micro_batch=t.per_device_train_batch_size, grad_accum=t.gradient_accumulation_steps,
                   gradient_checkpointing=gc, max_seq_length=t.max_seq_length, use_4bit=bool(view.quantization.use_4bit),
                   loss=loss, eval_batch=t.per_device_eval_batch_size, num_processes=procs)


def _half(n: int | None) -> int | str:
    return max(1, n // 2) if n else "halve"


MIN_SEQ_LEN = 32  # the config's lower bound for training.max_seq_length


def _seq_change(n: int | None) -> list[tuple[str, Any]]:
    """Halve max_seq_length, unless that goes below what a config accepts."""
    if n and n // 2 < MIN_SEQ_LEN:
        return []
    return [("training.max_seq_length", _half(n))]


def _train_oom_fix(s: RunSettings, in_loss: bool) -> Fix:
    """A training-step OOM: what is not yet done, cheapest first."""
    if s == RunSettings():
        if in_loss:  # one tensor over the whole sequence: the loss's logits, not the batch's activations
            return fix("memory.fit", "compute the loss in chunks (fmllm.loss: chunked, never the full-vocabulary fp32 "
                       "logits) and cap max_seq_length or drop the longest examples",
                       [("fmllm.loss", "chunked"), ("training.max_seq_length", "halve")])
        return FIX_MEMORY
    changes: list[tuple[str, Any]] = []
    said: list[str] = []
    if s.micro_batch is None or s.micro_batch > 1:
        to = _half(s.micro_batch)
        changes.append(("training.per_device_train_batch_size", to))
        ga: int | str = (s.grad_accum or 1) * 2 if s.micro_batch else "double"
        changes.append(("training.gradient_accumulation_steps", ga))
        said.append(f"micro-batch {s.micro_batch or '?'} -> {to} with accumulation {ga} (the effective batch is kept)")
    if s.gradient_checkpointing is not True:
        changes.append(("training.gradient_checkpointing", True))
        said.append("gradient checkpointing on")
    if changes:
        return fix("memory.fit", "make the step fit: " + ", ".join(said), changes)
    # micro-batch 1 with checkpointing already: the batch is not what to change
    done = "micro-batch is 1 and gradient checkpointing is on already"
    if s.loss in (None, "plain") and (in_loss or s.loss == "plain"):
        changes.append(("fmllm.loss", "chunked"))
        said.append("the loss builds full-vocabulary fp32 logits: compute it in chunks (fmllm.loss: chunked)")
    seq = _seq_change(s.max_seq_length)
    changes += seq
    if seq:
        said.append(f"a shorter max_seq_length ({s.max_seq_length or '?'} -> {_half(s.max_seq_length)}), or drop the longest examples")
    else:
        said.append("drop the longest examples, or a smaller model or a bigger GPU")
    if s.use_4bit is False:
        changes.append(("quantization.use_4bit", True))
        said.append("load the model in 4-bit")
    return fix("memory.fit", f"{done}: " + "; ".join(said), changes)


def oom_fix(pid: str, phase: str, s: RunSettings | None, in_loss: bool = False) -> Fix:
    """The fix for a CUDA OOM of kind ``pid`` in ``phase``, reading what the settings already do."""
    s = s or RunSettings()
    if pid == "cuda_oom_eval":
        if s.eval_batch == 1:
            what = "prediction" if phase == "predict" else "evaluation"
            return fix(None, f"{what} ran out of memory with an eval batch of 1 already: keep its logits off the GPU "
                       "(eval_accumulation_steps, prediction_loss_only) or evaluate shorter sequences; the train batch is not the cause")
        if s.eval_batch:  # the number, not "halve": the fixer can plan it and a person can read it
            return fix(FIX_EVAL_BATCH.id, f"evaluation ran out of memory, not training: eval batch {s.eval_batch} -> "
                       f"{_half(s.eval_batch)}; leave the train batch alone",
                       [("training.per_device_eval_batch_size", _half(s.eval_batch))])
        return FIX_EVAL_BATCH
    if pid == "cuda_oom_generation":
        return fix(None, "generation ran out of memory, not the training step: generate fewer sequences at once "
                   "(generation batch, num_generations) and fewer max_new_tokens; the train batch is not the cause")
    if pid == "cuda_oom_merge":
        return fix(None, "merging the adapter loads the base model unquantized in 16-bit: merge on the CPU (hide the GPU) "
                   "or on a card that holds the full 16-bit model; training settings are not the cause",
                   shell='export CUDA_VISIBLE_DEVICES=""')
    if pid == "cuda_oom_save":
        return FIX_SAVE_OOM
    if pid == "model_too_big_per_card":
        return fix(None, "every process holds a full copy of the model and one card cannot: split the model across the "
                   "cards (FSDP, or one process with device_map='auto')" + ("" if s.use_4bit else ", or load it in 4-bit")
                   + "; a smaller batch does not help", [] if s.use_4bit else [("quantization.use_4bit", True)])
    if pid == "cuda_oom_loading":
        if s.use_4bit:
            return fix("memory.fit", "the 4-bit weights alone do not fit this GPU: a smaller model or a bigger GPU "
                       "(or several cards with the model sharded across them)")
        return FIX_MEMORY_LOAD
    if pid == "cuda_oom_late":
        changes: list[tuple[str, Any]] = _seq_change(s.max_seq_length)
        summary = FIX_SEQ_LEN.summary
        if s.loss == "plain":
            changes.insert(0, ("fmllm.loss", "chunked"))
            summary += "; the plain loss's full-vocabulary logits grow with the length: fmllm.loss: chunked"
        return fix("training.max_seq_length", summary, changes)
    return _train_oom_fix(s, in_loss)


# --------------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------------

#: Findings that report the consequence of another failure: ranked after the root cause.
CONSEQUENCES = {"launcher_failed": 3, "ranks_failed": 2, "exception": 1, "cuda_error": 1, "nccl_timeout": 1,
                "interrupted": 2, "signal_hangup": 2, "segfault": 1}
#: Findings that name the cause of the finding on their own line: ranked before it.
CAUSE_FIRST = {"gpu_other_process": -1, "model_too_big_per_card": -1}
_SEVERITY = {"error": 0, "warning": 1, "info": 2}


#: A finding that another, more specific one explains when both are present (a gated repo answers
#: "Repository Not Found" to a request without a token): ranked after it.
SUPERSEDED_BY = {
    "hub_not_found": {"hub_gated", "hub_auth_invalid", "hub_http_404", "hub_revision_not_found"},
    "cuda_error": {"token_id_out_of_range", "cuda_oom", "no_kernel_image"},
    "dtype_mismatch": {"fsdp_4bit"},
    # a missing bitsandbytes name or a transformers without the architecture say more than 'the API changed'
    "library_api_changed": {"bnb_not_installed", "bnb_native_missing", "transformers_too_old", "module_missing"},
    # a harmless notice printed before a traceback the excerpt cuts: 'the error is below, not in this text' says more
    "deprecation_info": {"log_cut_in_traceback"},
}


def rank_key(pattern: str, severity: str, line: int, present: frozenset[str] = frozenset(),
             weaker_than_exception: bool = False) -> tuple[int, ...]:
    """Sort key: errors before warnings before info; root causes before consequences and before
    findings a more specific one explains; then the earlier line (the failure that started it) first.
    ``weaker_than_exception``: a specific error read only on a line printed before the exception that ended the
    run, never on an error line: ranked after that exception (its evidence is weaker)."""
    demoted = 1 if SUPERSEDED_BY.get(pattern, set()) & present else 0
    if weaker_than_exception:
        demoted = CONSEQUENCES["exception"] + 1
    return (_SEVERITY.get(severity, 1), CONSEQUENCES.get(pattern, 0) + demoted, line, CAUSE_FIRST.get(pattern, 0))
