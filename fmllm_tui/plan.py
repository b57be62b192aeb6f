"""The one plan of a run: every decision about what the run will do, made once (torch-free).

:func:`resolve_recipe` turns the typed config and a :class:`Target` (the machine the plan is
for) into a :class:`Recipe`: the memory recipe, device, 4-bit loading, dtypes, the loss kind,
liger's layers, compiled layers, the embedding offload, the optimizer as it will really run,
checkpointing, attention, the distributed mode and FSDP's storage dtype. :func:`run_plan` adds
the launch's mode and process count, the sequence length planned for and why, the trainable
parameter count and the predicted peak, as a :class:`RunPlan`.

Who reads it:

* ``fmllm-run`` / the TUI's launch resolve the plan for the machine they launch on and write it
  into the run folder's config.json (``plan``). The training process rebuilds the typed config
  (validated again), reads the plan and re-derives nothing: it only checks that this machine
  can honour it, and records any deviation it is forced into (a kernel liger lacks for this
  model type, Triton unusable) as a note in train.log and the run's outcome.
* The checks, ``--recommend``, the presets and the TUI plan for a named card with
  :meth:`Target.planned`: a CUDA card with fmllm's GPU install (liger-kernel, Triton), so the
  same config and card give the same plan on any machine (fmllm_tui.recipe).

The rules themselves (loss kind, liger layers, fused AdamW) live in :mod:`fmllm_tui.recipe`,
shared with the memory model.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fmllm_tui import recipe as rules
from fmllm_tui.config import DEFAULT_MAX_SEQ_LENGTH


class PlanError(ValueError):
    """A setting no run on this target can honour, in plain words (raised before launch)."""


@dataclass
class Recipe:
    """What the run does, and why where it differs from the config (``notes``)."""

    memory_recipe: str
    device: str  # "cuda" | "cpu"
    quantize_4bit: bool
    dtype: str
    mixed_precision: str  # "bf16" | "fp16" | "no"
    loss: str  # liger | chunked | plain
    liger_kernels: bool
    offload_embeddings: bool
    optim: str
    gradient_checkpointing: bool
    attn_implementation: str
    notes: list[str] = field(default_factory=list)
    distributed: str = "single"  # single | ddp | fsdp (the launch's mode)
    quant_storage: str | None = None  # bnb_4bit_quant_storage under FSDP (None: bitsandbytes' uint8)
    gc_reentrant: bool = False  # reentrant gradient checkpointing (the FSDP+QLoRA recipe's)
    compile_layers: bool = False  # torch.compile each decoder layer (launch/Python overhead away)
    optim_forced: bool = False  # the optimizer came from an override: never swapped

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recipe:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise PlanError(f"the run's plan has fields this fmllm does not know: {', '.join(unknown)} "
                            "(written by another fmllm version): start a new run")
        return cls(**{**data, "notes": list(data.get("notes") or [])})


@dataclass(frozen=True)
class Target:
    """The machine a plan is for: a CUDA card (its compute capability, and whether liger-kernel
    and Triton are installed there) or the CPU."""

    device: str  # "cuda" | "cpu"
    name: str | None = None
    compute_capability: tuple[int, int] | None = None  # None: planned as a current card
    has_liger: bool = False
    has_triton: bool = False

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def bf16(self) -> bool:
        """bf16 arithmetic: Ampere (8.0) and newer."""
        return self.cuda and (self.compute_capability is None or self.compute_capability >= (8, 0))

    @classmethod
    def planned(cls, card: Any | None = None) -> Target:
        """A named CUDA card (a gpudb card, or None for a current one) with fmllm's GPU install."""
        cc = tuple(card.compute_capability) if card is not None and card.compute_capability else None
        return cls("cuda", getattr(card, "name", None), cc, rules.PLANNED_GPU_HAS_LIGER, True)  # type: ignore[arg-type]

    @classmethod
    def cpu(cls) -> Target:
        return cls("cpu")

    @classmethod
    def local(cls, devices: list[Any]) -> Target:
        """This machine: its first visible GPU as NVML reports it (``devices``: gpu.GpuDevice),
        with what is installed here; the CPU when NVML sees none."""
        if not devices:
            return cls.cpu()
        dev = devices[0]
        return cls("cuda", dev.name, tuple(dev.compute_capability), rules.liger_installed(),  # type: ignore[arg-type]
                   installed("triton"))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Target:
        cc = data.get("compute_capability")
        return cls(str(data["device"]), data.get("name"), tuple(cc) if cc else None,  # type: ignore[arg-type]
                   bool(data.get("has_liger")), bool(data.get("has_triton")))


def installed(module: str) -> bool:
    """Whether ``module`` is installed here (looked up without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def quant_storage_dtype(compute_dtype: str) -> str:
    """The dtype the 4-bit weights are stored in under FSDP (FSDP shards float tensors only).

    The compute dtype for bfloat16 (and float32); float32 for float16, as the PEFT FSDP guide
    asks for fp16 mixed precision (fp16 storage is not stable there).
    """
    return "float32" if compute_dtype == "float16" else compute_dtype


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


def _precision(view: Any, target: Target, notes: list[str]) -> tuple[bool, str, str]:
    """(4-bit, load dtype, mixed precision) on this target."""
    q, tr = view.quantization, view.training
    compute = q.bnb_4bit_compute_dtype
    if not target.cuda:
        if q.use_4bit:
            notes.append("no CUDA GPU: loaded without 4-bit quantization (bitsandbytes 4-bit needs a GPU), in float32")
        return False, "float32", "no"
    if compute == "bfloat16" and not target.bf16:
        cc = target.compute_capability or (0, 0)
        raise PlanError(f"quantization.bnb_4bit_compute_dtype is bfloat16 but this GPU (compute capability "
                        f"{cc[0]}.{cc[1]}) has no bf16 (pre-Ampere): set it to float16")
    if tr.bf16:
        mixed = "bf16"
    elif tr.fp16:
        mixed = "fp16"
    else:
        mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(compute, "no")
    return bool(q.use_4bit), compute, mixed


def _compiled(view: Any, target: Target, recipe_name: str, want: str, distributed: str, notes: list[str]) -> bool:
    """Whether each decoder layer is compiled (fmllm.compile, on this target)."""
    if recipe_name != "fmllm" or not (want == "on" or (want == "auto" and target.cuda and distributed == "single")):
        return False
    cc = target.compute_capability
    if target.cuda and cc is not None and cc < (7, 0):
        notes.append(f"fmllm.compile: this GPU (compute capability {cc[0]}.{cc[1]}) is older than Triton supports "
                     "(7.0): runs uncompiled")
        return False
    if want == "auto" and view.fmllm.trust_remote_code:
        notes.append("fmllm.compile: auto leaves models with remote code (trust_remote_code) uncompiled; "
                     "set fmllm.compile: on to try")
        return False
    if target.cuda and not target.has_triton:
        if want == "on":
            raise PlanError("fmllm.compile is on but Triton, which torch.compile needs for CUDA, is not installed "
                            "(pip install triton, or a torch build that ships it); or set fmllm.compile: off")
        notes.append("fmllm.compile: Triton is not installed here, so the layers run uncompiled (install triton "
                     "for the compiled runner's speed)")
        return False
    if distributed == "fsdp":
        notes.append("fmllm.compile is on but FSDP's flat parameters (use_orig_params off, the QLoRA recipe) "
                     "cannot be compiled per layer: runs uncompiled")
        return False
    if (view.training.gradient_checkpointing_kwargs or {}).get("use_reentrant"):
        notes.append("compiled layers use non-reentrant gradient checkpointing around the compiled call; "
                     "gradient_checkpointing_kwargs.use_reentrant is not used")
    return True


def _optimizer(view: Any, target: Target, ov: dict[str, Any], notes: list[str]) -> str:
    optim = str(ov.get("optim") or view.training.optim)
    if not target.cuda and ("8bit" in optim or optim.startswith("paged") or optim.startswith("lion")):
        notes.append(f"no CUDA GPU: optimizer {optim} needs bitsandbytes on a GPU; uses adamw_torch")
        optim = "adamw_torch"
    return optim


def _fsdp_adjust(r: Recipe, view: Any, offload_setting: str) -> None:
    """The FSDP+QLoRA recipe (PEFT's FSDP guide) applied to ``r`` in place."""
    if r.offload_embeddings:
        r.offload_embeddings = False
        if offload_setting == "on":
            r.notes.append("fmllm.offload_embeddings is on but FSDP shards the input embedding with the rest of "
                           "the model: it stays on the GPUs")
    if "8bit" in r.optim or r.optim.startswith(("paged", "lion")):
        r.notes.append(f"FSDP: optimizer {r.optim} (bitsandbytes) cannot step sharded or CPU-offloaded parameters "
                       "and fails saving FSDP checkpoints; uses adamw_torch")
        r.optim = "adamw_torch"
    if r.quantize_4bit:
        compute = view.quantization.bnb_4bit_compute_dtype
        r.quant_storage = quant_storage_dtype(compute)
        if r.quant_storage != r.dtype:
            r.notes.append(f"FSDP: 4-bit weights stored in {r.quant_storage} (FSDP shards float tensors; the PEFT "
                           f"guide asks for {r.quant_storage} storage with {compute} compute), model loaded in "
                           f"{r.quant_storage}")
        r.dtype = r.quant_storage
    if not view.training.gradient_checkpointing_kwargs:
        r.gc_reentrant = True  # the FSDP+QLoRA recipe's: non-reentrant hits a bitsandbytes memory bug there


def resolve_recipe(view: Any, target: Target, *, distributed: str = "single",
                   overrides: dict[str, Any] | None = None, trainable_params: int | None = None) -> Recipe:
    """The recipe ``view`` (a typed FineTuneConfig) runs on ``target``.

    ``distributed`` is the launch's mode (single | ddp | fsdp); ``overrides`` are a bench's
    (memory_recipe, loss, compile, liger_kernels, offload_embeddings, optim);
    ``trainable_params`` (known when the model's config.json is) resolves the optimizer swap
    (fmllm_tui.recipe.fused_adamw). Raises :class:`PlanError`.
    """
    if distributed not in ("single", "ddp", "fsdp"):
        raise PlanError(f"unknown distributed mode {distributed!r}; expected single, ddp or fsdp")
    ov = overrides or {}
    fm = view.fmllm
    recipe_name = str(ov.get("memory_recipe") or fm.memory_recipe)
    notes: list[str] = []
    quant, dtype, mixed = _precision(view, target, notes)
    if recipe_name == "plain":
        loss, why = "plain", None
    else:
        loss, why = rules.loss_kind(str(ov.get("loss") or fm.loss), cuda=target.cuda, has_liger=target.has_liger)
    if why:
        notes.append(why)
    compiled = _compiled(view, target, recipe_name, str(ov.get("compile") or fm.compile), distributed, notes)
    want_liger = str(ov.get("liger_kernels", "auto"))
    if recipe_name == "fmllm" and target.cuda and not compiled and want_liger != "off" and not target.has_liger:
        notes.append("liger-kernel is not installed: RMSNorm/SwiGLU/RoPE use the model's own code, and a plan for "
                     "a named card assumes them (pip install -c constraints.txt 'fmllm[gpu]')")
    liger = rules.liger_layers(recipe=recipe_name, cuda=target.cuda, compiled=compiled, want=want_liger,
                               has_liger=target.has_liger)
    offload_setting = str(ov.get("offload_embeddings") or fm.offload_embeddings)
    if offload_setting == "on" and not target.cuda:
        notes.append("fmllm.offload_embeddings is on but there is no CUDA GPU: nothing to offload")
    attn = fm.attn_implementation
    if not target.cuda and attn == "flash_attention_2":
        notes.append("no CUDA GPU: flash_attention_2 needs one; uses sdpa")
        attn = "sdpa"
    r = Recipe(memory_recipe=recipe_name, device=target.device, quantize_4bit=quant, dtype=dtype,
               mixed_precision=mixed, loss=loss, liger_kernels=liger,
               offload_embeddings=recipe_name == "fmllm" and target.cuda and offload_setting in ("auto", "on"),
               optim=_optimizer(view, target, ov, notes),
               gradient_checkpointing=bool(view.training.gradient_checkpointing), attn_implementation=attn,
               notes=notes, distributed=distributed,
               gc_reentrant=bool((view.training.gradient_checkpointing_kwargs or {}).get("use_reentrant", False)),
               compile_layers=compiled, optim_forced=bool(ov.get("optim")))
    if distributed == "fsdp":
        _fsdp_adjust(r, view, offload_setting)
    if trainable_params is not None:
        swap_optimizer(r, trainable_params)
    return r


def swap_optimizer(r: Recipe, trainable_params: int) -> str | None:
    """Apply fmllm_tui.recipe.fused_adamw to ``r`` (in place); returns the note when it swaps."""
    new = rules.fused_adamw(r.optim, recipe=r.memory_recipe, cuda=r.device == "cuda", distributed=r.distributed,
                            trainable_params=trainable_params, forced=r.optim_forced)
    if new == r.optim:
        return None
    old, r.optim = r.optim, new
    note = (f"optimizer {old} runs as {new}: the same AdamW update in one fused kernel; the adapter's optimizer "
            f"state ({trainable_params * 8 / 2**20:.0f} MiB) is too small for paging to matter")
    r.notes.append(note)
    return note


# --------------------------------------------------------------------------------------------
# The run's plan
# --------------------------------------------------------------------------------------------


@dataclass
class RunPlan:
    """Everything a launch decided, written into the run folder for the training process."""

    target: Target
    recipe: Recipe
    mode: str = "single"
    num_processes: int = 1
    mode_reason: str | None = None
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    planned_seq_len: int = DEFAULT_MAX_SEQ_LENGTH
    seq_reason: str | None = None
    trainable_params: int | None = None
    predicted_peak_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["target"] = self.target.to_json()
        d["recipe"] = self.recipe.to_json()
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunPlan:
        if not isinstance(data, dict) or not isinstance(data.get("recipe"), dict) or not isinstance(data.get("target"), dict):
            raise PlanError("the run's plan is missing or malformed: start a new run with fmllm-run")
        rest = {k: v for k, v in data.items() if k not in ("target", "recipe")}
        unknown = sorted(set(rest) - {f.name for f in fields(cls)})
        if unknown:
            raise PlanError(f"the run's plan has fields this fmllm does not know: {', '.join(unknown)}: start a new run")
        return cls(target=Target.from_json(data["target"]), recipe=Recipe.from_json(data["recipe"]), **rest)

    def describe(self) -> list[str]:
        """The plan in a few lines for train.log and people."""
        r = self.recipe
        lines = [f"plan for {self.target.name or self.target.device}: {r.memory_recipe} recipe, loss {r.loss}, "
                 f"{'compiled layers' if r.compile_layers else 'eager layers'}"
                 f"{', liger kernels' if r.liger_kernels else ''}, optimizer {r.optim}, "
                 f"{self.mode} on {self.num_processes} process{'es' if self.num_processes != 1 else ''}"]
        length_line = f"sequence length planned for: {self.planned_seq_len}"
        if self.seq_reason:
            length_line += f" ({self.seq_reason})"
        lines.append(length_line)
        if self.predicted_peak_bytes:
            lines.append(f"predicted process peak {self.predicted_peak_bytes / 2**30:.2f} GiB per GPU")
        return lines


def lora_trainable_params(view: Any, arch: dict[str, Any]) -> int | None:
    """LoRA parameters the adapter trains on this architecture (None: no adapter, or an
    architecture the memory model cannot read)."""
    from fmllm_tui import memory

    if not view.use_adapter:
        return None
    try:
        spec = memory.ArchSpec.from_config(arch)
    except memory.ArchitectureError:
        return None
    t = view.lora.target_modules
    roles, _ = memory.resolve_targets(t if isinstance(t, str) else tuple(t), spec)
    r = int(view.lora.r)
    return sum(r * (d_in + d_out) for d_in, d_out in map(spec.shape, roles)) * spec.layers


def _text_config(arch: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config.json (``text_config`` of multimodal configs)."""
    text = arch.get("text_config")
    return text if "hidden_size" not in arch and isinstance(text, dict) else arch


def lean_loss_unsupported(arch: dict[str, Any]) -> str | None:
    """Why fmllm's loss without full-vocabulary logits cannot serve this architecture (its
    config.json), or None: the model transforms its logits before the loss."""
    cfg = _text_config(arch)
    if cfg.get("logit_scale") not in (None, 1, 1.0):
        return "the model scales its logits (logit_scale)"
    return None


def _offload_for_arch(r: Recipe, arch: dict[str, Any], setting: str) -> None:
    """Settle ``offload_embeddings`` from the model's shapes (the memory model's rule): a tied
    input embedding stays on the GPU, and ``auto`` moves only tables of 256 MiB or more."""
    from fmllm_tui import memory

    try:
        spec = memory.ArchSpec.from_config(arch)
    except memory.ArchitectureError:
        return
    size = spec.vocab * spec.hidden * (4 if r.dtype == "float32" else 2)
    if spec.tied:
        r.offload_embeddings = False
        if setting == "on":
            r.notes.append("fmllm.offload_embeddings is on but the input embedding is tied to lm_head (shared with "
                           "the output layer, which must stay on the GPU): it stays on the GPU")
    elif setting == "auto" and size < memory.OFFLOAD_AUTO_MIN_BYTES:
        r.offload_embeddings = False


def run_plan(view: Any, target: Target, *, mode: str = "single", num_processes: int = 1,
             mode_reason: str | None = None, overrides: dict[str, Any] | None = None,
             arch: dict[str, Any] | None = None, example_lengths: list[int] | None = None,
             card: Any | None = None) -> RunPlan:
    """The plan of a run of ``view`` on ``target`` (``arch``: the model's config.json, when known;
    ``example_lengths``: the data's token lengths, when read; ``card``: the gpudb card, for the
    prediction's allocator rule and speed)."""
    from fmllm_tui import fitsearch, memory

    trainable = lora_trainable_params(view, arch) if arch else None
    rec = resolve_recipe(view, target, distributed=mode, overrides=overrides, trainable_params=trainable)
    if arch and rec.loss != "plain":
        why = lean_loss_unsupported(arch)
        if why:
            rec.loss = "plain"
            rec.notes.append(f"{why}: the run uses the model's own loss")
        else:
            rec.loss, why = rules.lean_loss(rec.loss, softcap=bool(_text_config(arch).get("final_logit_softcapping")))
            if why:
                rec.notes.append(why)
    if arch:
        try:
            model_type = memory.ArchSpec.from_config(arch).model_type
        except memory.ArchitectureError:
            model_type = str(arch.get("model_type") or "")
        attn, why = rules.attention(rec.attn_implementation, model_type)
        if why:
            rec.attn_implementation = attn
            rec.notes.append(why)
    if arch and rec.offload_embeddings:
        _offload_for_arch(rec, arch, str((overrides or {}).get("offload_embeddings") or view.fmllm.offload_embeddings))
    max_seq_length = int(view.training.max_seq_length or DEFAULT_MAX_SEQ_LENGTH)
    planned_seq_len, why = fitsearch.planning_seq_len(max_seq_length, example_lengths)
    peak = None
    if arch and target.cuda:
        try:
            pred = memory.predict(view, arch, recipe=rec.memory_recipe, n_gpus=num_processes, mode=mode,
                                  seq_len=planned_seq_len, gpu=card)
            peak = pred.peak_process_bytes
        except (memory.ArchitectureError, ValueError):
            peak = None
    return RunPlan(target=target, recipe=rec, mode=mode, num_processes=num_processes, mode_reason=mode_reason,
                   max_seq_length=max_seq_length, planned_seq_len=planned_seq_len, seq_reason=why, trainable_params=trainable,
                   predicted_peak_bytes=peak)
