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
from typing import Any

import torch
import torch.nn.functional as F

from fmllm_tui.config import FineTuneConfig
from fmllm_tui.memory import OFFLOAD_AUTO_MIN_BYTES
from fmllm_tui.plan import Recipe, RunPlan
from fmllm_tui.recipe import lean_loss

from .loss import install_lean_forward, lean_forward_unsupported, loss_fn_for

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# What the runner's functions read a config from: the typed config (the training process's), or a
# config dict (config.json's resolved config; tests' partial ones). Either way every value and
# every default comes from fmllm_tui.config's models, never a default repeated here.
Config = dict[str, Any] | FineTuneConfig


def _section(cfg: Config, name: str) -> Any:
    """The typed ``name`` section (``lora``, ``quantization``, ``training``, ``fmllm``) of ``cfg``."""
    if isinstance(cfg, FineTuneConfig):
        return getattr(cfg, name)
    model = FineTuneConfig.model_fields[name].annotation
    assert model is not None and hasattr(model, "model_validate")
    return model.model_validate(cfg.get(name) or {})


class RecipeError(Exception):
    """A setting the runner cannot honour, in plain words (raised before training starts)."""


def honour_plan(plan: RunPlan, *, cuda: bool, mode: str, bf16_supported: bool) -> Recipe:
    """The plan's recipe for this process, after checking this machine can run it.

    Nothing is decided again here. What the plan needs and this machine lacks either stops the
    run before loading (a CUDA plan without a GPU, another distributed mode, bf16 on a card
    without it, compiled layers the config forces without Triton) or, where a slower path
    gives the same training, is taken and said as a note (Triton or liger-kernel not usable
    here).
    """
    r = Recipe.from_json(plan.recipe.to_json())
    where = plan.target.name or plan.target.device
    if r.device == "cuda" and not cuda:
        build = torch.version.cuda
        why = (f"torch {torch.__version__} is a CPU-only build: install its CUDA build" if not build else
               "check CUDA_VISIBLE_DEVICES and the driver")
        raise RecipeError(f"the run was planned for a CUDA GPU ({where}) but this process sees none ({why}), "
                          "or start the run again with --device cpu")
    if r.distributed != mode:
        raise RecipeError(f"the run was planned as {r.distributed} but was launched as {mode}: start it with fmllm-run")
    if r.device == "cuda" and r.dtype == "bfloat16" and not bf16_supported:
        raise RecipeError(f"the run was planned for {where} (bf16) but this GPU has no bf16: set "
                          "quantization.bnb_4bit_compute_dtype: float16 and start a new run")
    if r.compile_layers and r.device == "cuda" and not triton_usable():
        r.compile_layers = False
        r.notes.append("not as planned: Triton, which the compiled layers need, is not usable here; the layers run "
                       "uncompiled (same training, slower: pip install triton)")
    if r.liger_kernels:
        from .loss import liger_available

        if not liger_available():
            r.liger_kernels = False
            r.notes.append("not as planned: liger-kernel does not import here; RMSNorm/SwiGLU/RoPE use the model's "
                           "own code (pip install -c constraints.txt 'fmllm[gpu]')")
    if r.loss == "liger":
        from .loss import liger_available

        if not liger_available():
            r.loss = "chunked"
            r.notes.append("not as planned: liger-kernel does not import here; the chunked loss runs instead "
                           "(a little more memory)")
    return r


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


def load_tokenizer(source: str, cfg: Config, *, local_only: bool = False) -> Any:
    """The tokenizer of ``source`` with the pad token set (fmllm.pad_token, else its own, else eos)."""
    from transformers import AutoTokenizer

    fm = _section(cfg, "fmllm")
    tok = AutoTokenizer.from_pretrained(source, revision=fm.revision, trust_remote_code=fm.trust_remote_code,
                                        local_files_only=local_only)
    set_pad_token(tok, fm.pad_token)
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


def model_load_kwargs(cfg: Config, recipe: Recipe, *, device_index: int = 0) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for the recipe.

    One GPU and DDP: the whole model on this process's GPU (``device_map={"": local_rank}``).
    FSDP: the model is quantized into CPU RAM (``device_map={"": "cpu"}``, 4-bit storage in
    ``recipe.quant_storage``) and FSDP moves each unit to this rank's GPU as it shards it. Without
    the CPU map transformers 5 reads the whole checkpoint on every rank and bitsandbytes puts the
    whole 4-bit model on every GPU before FSDP shards it (measured: twice the sharded peak on a
    14B, bench/RESULTS.md), which a model that needs FSDP cannot afford.
    """
    fm, q = _section(cfg, "fmllm"), _section(cfg, "quantization")
    kwargs: dict[str, Any] = {"revision": fm.revision, "trust_remote_code": fm.trust_remote_code,
                              "dtype": _DTYPES[recipe.dtype], "attn_implementation": recipe.attn_implementation}
    if recipe.device == "cuda":
        kwargs["device_map"] = {"": "cpu" if recipe.distributed == "fsdp" else device_index}
        if recipe.quantize_4bit:
            from transformers import BitsAndBytesConfig

            extra: dict[str, Any] = {}
            if recipe.quant_storage:
                extra["bnb_4bit_quant_storage"] = _DTYPES[recipe.quant_storage]
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=q.bnb_4bit_quant_type,
                bnb_4bit_use_double_quant=q.use_nested_quant,
                bnb_4bit_compute_dtype=_DTYPES[q.bnb_4bit_compute_dtype], **extra,
            )
    return kwargs


def load_model(source: str, cfg: Config, recipe: Recipe, *, device_index: int = 0) -> Any:
    """The base model for training, on the GPU in 4-bit (as configured) or on the CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fm = _section(cfg, "fmllm")
    model_cfg = AutoConfig.from_pretrained(source, revision=fm.revision, trust_remote_code=fm.trust_remote_code)
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
    if setting == "auto" and size < OFFLOAD_AUTO_MIN_BYTES:
        return 0, f"the input embedding is small ({size / 2**20:.0f} MiB)"
    wrapper = CpuEmbedding(emb, emb.weight.device)
    model.set_input_embeddings(wrapper)
    del emb
    torch.cuda.empty_cache()
    return size, None


def lora_config(cfg: Config) -> Any:
    """peft's LoraConfig for the config's ``lora`` section."""
    from peft import LoraConfig

    lo = _section(cfg, "lora")
    alpha = float(lo.alpha)
    return LoraConfig(r=lo.r, lora_alpha=int(alpha) if alpha.is_integer() else alpha,  # type: ignore[arg-type]
                      lora_dropout=lo.dropout, target_modules=lo.target_modules, bias="none", task_type="CAUSAL_LM")


def prepare_for_training(model: Any, cfg: Config, recipe: Recipe) -> Any:
    """Gradient checkpointing, the loss, LoRA: the model the Trainer gets."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    gc_kwargs = _section(cfg, "training").gradient_checkpointing_kwargs or {"use_reentrant": recipe.gc_reentrant}
    if recipe.memory_recipe == "plain":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=gc_kwargs)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        if recipe.offload_embeddings:
            setting = _section(cfg, "fmllm").offload_embeddings
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
                softcap = bool(getattr(model.config, "final_logit_softcapping", None))
                recipe.loss, why = lean_loss(recipe.loss, softcap=softcap)
                if why and why not in recipe.notes:
                    recipe.notes.append(why)
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
