"""Loading the model the memory-lean way (and the plain way, for side-by-side benches).

The fmllm recipe, each part measured on the GPU (bench/bench_runner_gpu.py):

* 4-bit NF4 weights as configured; norms, embeddings and ``lm_head`` stay in the compute dtype
  (no ``prepare_model_for_kbit_training``: its fp32 upcast cost 3.4 GiB on a 7B at 1024 tokens);
* non-reentrant gradient checkpointing with input gradients enabled;
* the loss without full-vocabulary logits (``loss.py``);
* each decoder layer compiled with ``torch.compile`` on one CUDA GPU (``fmllm.compile``,
  ``compiled.py``); otherwise liger-kernel's RMSNorm / SwiGLU / RoPE kernels where liger
  supports the model type (CUDA);
* the input embedding kept in CPU RAM (``fmllm.offload_embeddings``), the lookup's output moved
  to the GPU: a 152k × 5120 bf16 table is 1.45 GiB that the 14B needs elsewhere;
* SDPA attention; the optimizer from the config.

``fmllm.memory_recipe: plain`` is the guide's recipe: ``prepare_model_for_kbit_training`` and the
model's own (unfused) loss.

This module's only job needs torch, so it imports it at the top.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from fmllm_tui import recipe as rules

from .loss import install_lean_forward, lean_forward_unsupported, loss_fn_for, resolve_loss_kind

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# An input embedding smaller than this is not worth a CPU round trip per step.
OFFLOAD_MIN_BYTES = 256 * 1024**2


class RecipeError(Exception):
    """A setting the runner cannot honour, in plain words (raised before training starts)."""


@dataclass
class Recipe:
    """What the runner decided to do, and why where it differs from the config."""

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

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def plan_recipe(cfg: dict[str, Any], *, cuda: bool, overrides: dict[str, Any] | None = None,
                bf16_supported: bool = True, distributed: str = "single",
                compute_capability: tuple[int, int] | None = None) -> Recipe:
    """Resolve the config (and bench overrides) into a :class:`Recipe` for this machine.

    ``distributed`` is the launch's mode (single | ddp | fsdp). Under FSDP the recipe follows
    the FSDP+QLoRA recipe (PEFT's FSDP guide): 4-bit weights stored in the dtype FSDP shards
    (``quant_storage``), the model loaded in it, no CPU-offloaded input embedding (FSDP shards it
    with the root unit), torch's AdamW instead of bitsandbytes' optimizers, and reentrant
    gradient checkpointing unless the config sets ``gradient_checkpointing_kwargs``.
    """
    if distributed not in ("single", "ddp", "fsdp"):
        raise RecipeError(f"unknown distributed mode {distributed!r}; expected single, ddp or fsdp")
    ov = overrides or {}
    fm = cfg.get("fmllm", {})
    q = cfg.get("quantization", {})
    tr = cfg.get("training", {})
    recipe_name = ov.get("memory_recipe") or fm.get("memory_recipe", "fmllm")
    notes: list[str] = []
    compute = q.get("bnb_4bit_compute_dtype", "bfloat16")
    if not cuda:
        dtype, mixed = "float32", "no"
        quant = False
        if q.get("use_4bit", True):
            notes.append("no CUDA GPU: loaded without 4-bit quantization (bitsandbytes 4-bit needs a GPU), in float32")
    else:
        quant = bool(q.get("use_4bit", True))
        dtype = compute
        if compute == "bfloat16" and not bf16_supported:
            raise RecipeError("quantization.bnb_4bit_compute_dtype is bfloat16 but this GPU has no bf16 (pre-Ampere): "
                              "set it to float16")
        if tr.get("bf16"):
            mixed = "bf16"
        elif tr.get("fp16"):
            mixed = "fp16"
        else:
            mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(compute, "no")
    requested_loss = ov.get("loss") or fm.get("loss", "auto")
    if recipe_name == "plain":
        loss_kind, why = "plain", None
    else:
        loss_kind, why = resolve_loss_kind(requested_loss, cuda=cuda)
    if why:
        notes.append(why)
    compile_layers = False
    want_compile = str(ov.get("compile") or fm.get("compile", "auto"))
    if recipe_name == "fmllm" and (want_compile == "on" or (want_compile == "auto" and cuda and distributed == "single")):
        compile_layers = True
    if compile_layers and cuda and compute_capability is not None and compute_capability < (7, 0):
        compile_layers = False
        notes.append(f"fmllm.compile: this GPU (compute capability {compute_capability[0]}.{compute_capability[1]}) is "
                     "older than Triton supports (7.0): ran uncompiled")
    if compile_layers and want_compile == "auto" and fm.get("trust_remote_code"):
        compile_layers = False  # remote modelling code: fmllm cannot know its layers compile cleanly
        notes.append("fmllm.compile: auto leaves models with remote code (trust_remote_code) uncompiled; "
                     "set fmllm.compile: on to try")
    if compile_layers and cuda and not triton_usable():
        if want_compile == "on":
            raise RecipeError("fmllm.compile is on but Triton, which torch.compile needs for CUDA, is not usable "
                              "here (pip install triton, or a torch build that ships it); or set fmllm.compile: off")
        compile_layers = False
        notes.append("fmllm.compile: Triton is not usable here, so the layers ran uncompiled (install triton "
                     "for the compiled runner's speed)")
    if compile_layers and recipe_name == "fmllm" and (tr.get("gradient_checkpointing_kwargs") or {}).get("use_reentrant"):
        notes.append("compiled layers use non-reentrant gradient checkpointing around the compiled call; "
                     "gradient_checkpointing_kwargs.use_reentrant is not used")
    if compile_layers and distributed == "fsdp":
        compile_layers = False
        notes.append("fmllm.compile is on but FSDP's flat parameters (use_orig_params off, the QLoRA recipe) "
                     "cannot be compiled per layer: ran uncompiled")
    want_liger = ov.get("liger_kernels", "auto")
    has_liger = False
    if recipe_name == "fmllm" and cuda and not compile_layers and want_liger != "off":
        from .loss import liger_available

        has_liger = liger_available()
        if not has_liger:
            notes.append("liger-kernel is not installed: RMSNorm/SwiGLU/RoPE use the model's own code, and the "
                         "plan assumed them (pip install -c constraints.txt 'fmllm[gpu]')")
    liger_kernels = rules.liger_layers(recipe=recipe_name, cuda=cuda, compiled=compile_layers, want=want_liger,
                                       has_liger=has_liger)
    offload_setting = ov.get("offload_embeddings") or fm.get("offload_embeddings", "auto")
    offload = recipe_name == "fmllm" and cuda and offload_setting in ("auto", "on")
    if offload_setting == "on" and not cuda:
        notes.append("fmllm.offload_embeddings is on but there is no CUDA GPU: nothing to offload")
    optim = ov.get("optim") or tr.get("optim", "paged_adamw_32bit")
    if not cuda and ("8bit" in optim or optim.startswith("paged") or optim.startswith("lion")):
        notes.append(f"no CUDA GPU: optimizer {optim} needs bitsandbytes on a GPU; used adamw_torch")
        optim = "adamw_torch"
    attn = fm.get("attn_implementation", "sdpa")
    if not cuda and attn == "flash_attention_2":
        notes.append("no CUDA GPU: flash_attention_2 needs one; used sdpa")
        attn = "sdpa"
    storage = None
    reentrant = bool((tr.get("gradient_checkpointing_kwargs") or {}).get("use_reentrant", False))
    if distributed == "fsdp":
        if offload:
            offload = False
            if offload_setting == "on":
                notes.append("fmllm.offload_embeddings is on but FSDP shards the input embedding with the rest of "
                             "the model: it stays on the GPUs")
        if "8bit" in optim or optim.startswith(("paged", "lion")):
            notes.append(f"FSDP: optimizer {optim} (bitsandbytes) cannot step sharded or CPU-offloaded parameters "
                         "and fails saving FSDP checkpoints; used adamw_torch")
            optim = "adamw_torch"
        if quant:
            from .distributed import quant_storage_dtype

            storage = quant_storage_dtype(compute)
            if storage != dtype:
                notes.append(f"FSDP: 4-bit weights stored in {storage} (FSDP shards float tensors; the PEFT guide "
                             f"asks for {storage} storage with {compute} compute), model loaded in {storage}")
            dtype = storage
        if not tr.get("gradient_checkpointing_kwargs"):
            reentrant = True  # the FSDP+QLoRA recipe's: non-reentrant hits a bitsandbytes memory bug there
    return Recipe(memory_recipe=recipe_name, device="cuda" if cuda else "cpu", quantize_4bit=quant, dtype=dtype,
                  mixed_precision=mixed, loss=loss_kind, liger_kernels=liger_kernels, offload_embeddings=offload,
                  optim=optim, gradient_checkpointing=bool(tr.get("gradient_checkpointing", True)),
                  attn_implementation=attn, notes=notes, distributed=distributed, quant_storage=storage,
                  gc_reentrant=reentrant, compile_layers=compile_layers)


def triton_usable() -> bool:
    """Whether torch.compile can generate CUDA kernels here (Triton importable, a GPU it supports)."""
    try:
        from torch.utils._triton import has_triton

        return bool(has_triton())
    except Exception:  # a broken Triton install fails in many ways
        return False


def apply_liger_kernels(model_type: str, recipe: Recipe) -> bool:
    """Patch transformers' classes for ``model_type`` with liger's RMSNorm, SwiGLU and RoPE
    kernels (before the model is built). Returns whether liger supports the type."""
    if not recipe.liger_kernels:
        return False
    from liger_kernel.transformers.monkey_patch import (
        MODEL_TYPE_TO_APPLY_LIGER_FN,
        _apply_liger_kernel,
    )

    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        recipe.liger_kernels = False
        recipe.notes.append(f"liger-kernel has no kernels for model type {model_type!r}")
        return False
    # Our own loss replaces the forward, so liger's loss patches stay off.
    _apply_liger_kernel(model_type, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                        fused_linear_cross_entropy=False)
    return True


def load_tokenizer(source: str, cfg: dict[str, Any], *, local_only: bool = False) -> Any:
    """The tokenizer of ``source`` with the pad token set (fmllm.pad_token, else its own, else eos)."""
    from transformers import AutoTokenizer

    fm = cfg.get("fmllm", {})
    tok = AutoTokenizer.from_pretrained(source, revision=fm.get("revision"),
                                        trust_remote_code=bool(fm.get("trust_remote_code")),
                                        local_files_only=local_only)
    set_pad_token(tok, fm.get("pad_token"))
    tok.padding_side = "right"
    return tok


def set_pad_token(tok: Any, requested: str | None) -> str:
    """Set the pad token; returns where it came from (config, tokenizer, eos)."""
    if requested:
        ids = tok.convert_tokens_to_ids(requested)
        unk = getattr(tok, "unk_token_id", None)
        if ids is None or (unk is not None and ids == unk and requested != tok.unk_token):
            raise RecipeError(f"fmllm.pad_token {requested!r} is not a token of this tokenizer; use one of its "
                              f"special tokens (eos is {tok.eos_token!r}) or remove the setting")
        tok.pad_token = requested
        return "config"
    if tok.pad_token is not None:
        return "tokenizer"
    if tok.eos_token is None:
        raise RecipeError("the tokenizer has neither a pad token nor an eos token: set fmllm.pad_token")
    tok.pad_token = tok.eos_token
    return "eos"


def model_load_kwargs(cfg: dict[str, Any], recipe: Recipe, *, device_index: int = 0) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for the recipe.

    One GPU and DDP: the whole model on this process's GPU (``device_map={"": local_rank}``).
    FSDP: the model is quantized into CPU RAM (``device_map={"": "cpu"}``, 4-bit storage in
    ``recipe.quant_storage``) and FSDP moves each unit to this rank's GPU as it shards it. Without
    the CPU map transformers 5 reads the whole checkpoint on every rank and bitsandbytes puts the
    whole 4-bit model on every GPU before FSDP shards it (measured: twice the sharded peak on a
    14B, bench/RESULTS.md), which a model that needs FSDP cannot afford.
    """
    fm = cfg.get("fmllm", {})
    q = cfg.get("quantization", {})
    kwargs: dict[str, Any] = {"revision": fm.get("revision"), "trust_remote_code": bool(fm.get("trust_remote_code")),
                              "dtype": _DTYPES[recipe.dtype], "attn_implementation": recipe.attn_implementation}
    if recipe.device == "cuda":
        kwargs["device_map"] = {"": "cpu" if recipe.distributed == "fsdp" else device_index}
        if recipe.quantize_4bit:
            from transformers import BitsAndBytesConfig

            extra: dict[str, Any] = {}
            if recipe.quant_storage:
                extra["bnb_4bit_quant_storage"] = _DTYPES[recipe.quant_storage]
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=q.get("bnb_4bit_quant_type", "nf4"),
                bnb_4bit_use_double_quant=bool(q.get("use_nested_quant", True)),
                bnb_4bit_compute_dtype=_DTYPES[q.get("bnb_4bit_compute_dtype", "bfloat16")], **extra,
            )
    return kwargs


def load_model(source: str, cfg: dict[str, Any], recipe: Recipe, *, device_index: int = 0) -> Any:
    """The base model for training, on the GPU in 4-bit (as configured) or on the CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fm = cfg.get("fmllm", {})
    model_cfg = AutoConfig.from_pretrained(source, revision=fm.get("revision"),
                                           trust_remote_code=bool(fm.get("trust_remote_code")))
    apply_liger_kernels(getattr(model_cfg, "model_type", ""), recipe)
    kwargs = model_load_kwargs(cfg, recipe, device_index=device_index)
    if recipe.distributed == "fsdp" and recipe.device == "cuda":
        with load_threads():
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        # The CPU map is only where the weights wait for FSDP: left on the model, accelerate would
        # refuse to train a 4-bit model "loaded on another device" than this rank's GPU.
        if getattr(model, "hf_device_map", None) is not None:
            del model.hf_device_map
    else:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    model.config.use_cache = False
    # transformers hands the model back in eval mode. On a CPU with AVX512-BF16, bitsandbytes
    # (0.48+) repacks a Linear4bit's weight in place into its uint8 CPU-inference layout at the
    # first eval-mode forward without grad, which FSDP then refuses ("Cannot flatten integer
    # dtype tensors"); the Trainer trains in train mode anyway.
    model.train()
    return model


def weights_not_in_storage(model: Any, storage: str | None) -> list[str]:
    """Names of the 4-bit layers whose packed weight is not stored as ``storage`` (the planned
    ``bnb_4bit_quant_storage``), or was repacked by bitsandbytes for CPU inference; ``None``:
    nothing is planned, nothing to check."""
    if model is None or not storage:
        return []
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return []
    want = _DTYPES[storage]
    bad = []
    for name, module in model.named_modules():
        if not isinstance(module, Linear4bit):
            continue
        weight = getattr(module, "weight", None)
        if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
            bad.append(f"{name} (repacked for CPU inference)")
        elif getattr(weight, "dtype", None) != want:
            bad.append(f"{name} ({str(getattr(weight, 'dtype', None)).replace('torch.', '')})")
    return bad


def quant_states_off_device(model: Any, device: torch.device) -> list[str]:
    """Names of the 4-bit layers whose quantization state (absmax) is missing or not on ``device``.

    Under FSDP the packed weights become views of a flat parameter that FSDP moves; the state
    travels only through ``Params4bit.to``. Checked once after wrapping (``None``: nothing to check).
    """
    if model is None:
        return []
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:  # no bitsandbytes: nothing here is 4-bit
        return []
    bad = []
    for name, module in model.named_modules():
        if not isinstance(module, Linear4bit):
            continue
        qs = getattr(module, "quant_state", None)
        if qs is None:
            qs = getattr(getattr(module, "weight", None), "quant_state", None)
        absmax = getattr(qs, "absmax", None)
        if not isinstance(absmax, torch.Tensor):
            bad.append(f"{name} (no quantization state)")
        elif absmax.device != device:
            bad.append(name)
    return bad


@contextlib.contextmanager
def load_threads() -> Iterator[int]:
    """This process's share of the machine's cores for torch while the model loads.

    Quantizing on the CPU runs on torch's intra-op threads, and ``accelerate launch`` sets
    OMP_NUM_THREADS=1 for every process: one core would take ~14 minutes for a 14B. The
    processes on this machine (LOCAL_WORLD_SIZE) split the cores this process may use; the
    previous thread count comes back after loading (the training step wants few CPU threads).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    before = torch.get_num_threads()
    n = max(before, cores // local)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


class CpuEmbedding(torch.nn.Module):
    """An input embedding whose table lives in CPU RAM; outputs land on ``device``.

    The table is deliberately not a registered parameter or buffer: ``model.device`` and
    ``model.parameters()`` must keep describing the GPU part, and it is frozen anyway.
    """

    def __init__(self, embedding: torch.nn.Embedding, device: torch.device):
        super().__init__()
        table = embedding.weight.detach().to("cpu").contiguous()
        self.__dict__["_table"] = table
        self.num_embeddings, self.embedding_dim = table.shape
        self.padding_idx = embedding.padding_idx
        self.target_device = device
        scale = getattr(embedding, "embed_scale", None)  # Gemma-style scaled embeddings
        self.embed_scale = scale

    @property
    def weight(self) -> torch.Tensor:
        return self.__dict__["_table"]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = F.embedding(input_ids.to("cpu"), self.__dict__["_table"], self.padding_idx)
        out = out.to(self.target_device, non_blocking=True)
        if self.embed_scale is not None:
            out = out * self.embed_scale.to(out.device, out.dtype) if torch.is_tensor(self.embed_scale) else out * self.embed_scale
        return out


def offload_input_embeddings(model: Any, setting: str) -> tuple[int, str | None]:
    """Move the input embedding table to CPU RAM. Returns (bytes freed on the GPU, why not)."""
    emb = model.get_input_embeddings()
    out = model.get_output_embeddings()
    if emb is None or not isinstance(emb, torch.nn.Embedding):
        return 0, "the input embedding is not a plain embedding table"
    if out is not None and getattr(out, "weight", None) is not None and out.weight.data_ptr() == emb.weight.data_ptr():
        return 0, "the input embedding is tied to lm_head (shared with the output layer, which must stay on the GPU)"
    if emb.weight.device.type != "cuda":
        return 0, "the input embedding is not on a GPU"
    size = emb.weight.numel() * emb.weight.element_size()
    if setting == "auto" and size < OFFLOAD_MIN_BYTES:
        return 0, f"the input embedding is small ({size / 2**20:.0f} MiB)"
    wrapper = CpuEmbedding(emb, emb.weight.device)
    model.set_input_embeddings(wrapper)
    del emb
    torch.cuda.empty_cache()
    return size, None


def lora_config(cfg: dict[str, Any]) -> Any:
    from peft import LoraConfig

    lo = cfg.get("lora", {})
    targets = lo.get("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"])
    alpha = float(lo.get("alpha", 16))
    return LoraConfig(r=int(lo.get("r", 8)), lora_alpha=int(alpha) if alpha.is_integer() else alpha,  # type: ignore[arg-type]
                      lora_dropout=float(lo.get("dropout", 0.05)), target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")


def prepare_for_training(model: Any, cfg: dict[str, Any], recipe: Recipe) -> Any:
    """Gradient checkpointing, the loss, LoRA: the model the Trainer gets."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    tr = cfg.get("training", {})
    gc_kwargs = tr.get("gradient_checkpointing_kwargs") or {"use_reentrant": recipe.gc_reentrant}
    if recipe.memory_recipe == "plain":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=gc_kwargs)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        if recipe.offload_embeddings:
            setting = cfg.get("fmllm", {}).get("offload_embeddings", "auto")
            freed, why = offload_input_embeddings(model, setting)
            if freed:
                recipe.notes.append(f"input embedding kept in CPU RAM: {freed / 2**30:.2f} GiB less on the GPU")
            else:
                recipe.offload_embeddings = False
                if setting == "on" and why:
                    recipe.notes.append(f"fmllm.offload_embeddings is on but {why}: left on the GPU")
        if recipe.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
            # PEFT + checkpointing needs a grad-requiring input to the first layer (transformers#42489).
            model.enable_input_require_grads()
        if recipe.loss != "plain":
            why = lean_forward_unsupported(model)
            if why:
                recipe.notes.append(f"{why}: used the model's own loss")
                recipe.loss = "plain"
            else:
                install_lean_forward(model, loss_fn_for(recipe.loss))
    try:
        peft_model = get_peft_model(model, lora_config(cfg))
    except ValueError as e:
        msg = str(e)
        if "not found in the base model" in msg or "Target module" in msg:
            names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                            or type(m).__name__ in ("Linear4bit", "Linear8bitLt")})
            raise RecipeError(f"lora.target_modules: {msg.splitlines()[0]}. This model's linear layers are: "
                              f"{', '.join(names)} (or use all-linear)") from None
        raise
    if recipe.compile_layers:
        from .compiled import compile_decoder_layers

        n, switched = compile_decoder_layers(peft_model, checkpointing=recipe.gradient_checkpointing)
        if n:
            recipe.notes.append(f"torch.compile: {n} decoder layers compiled ({switched} 4-bit linears dequantised "
                                "inside the compiled code); the first steps include the compile")
        else:
            recipe.compile_layers = False
            recipe.notes.append("fmllm.compile: this model has no decoder layers fmllm can compile; ran uncompiled")
    wrong = weights_not_in_storage(peft_model, recipe.quant_storage)
    if wrong:  # FSDP would stop later with "Cannot flatten integer dtype tensors", naming nothing
        raise RecipeError(f"FSDP needs every 4-bit weight stored as {recipe.quant_storage} "
                          f"(bnb_4bit_quant_storage); {len(wrong)} are not: {', '.join(wrong[:3])}"
                          f"{' …' if len(wrong) > 3 else ''}. Report this with `pip freeze` (bitsandbytes, "
                          "transformers): the install differs from fmllm's constraints.txt")
    return peft_model


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
