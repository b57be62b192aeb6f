"""The compiled runner path: ``torch.compile`` per decoder layer, with a traceable 4-bit linear.

At 1024 tokens a 4-bit LoRA step is bound by the CPU, not the GPU: a 7B micro-batch issues
thousands of small kernels and Python-level calls (bitsandbytes' 4-bit matmul alone costs about
180 µs of CPU per call through its Python dispatch, ~400 calls per micro-batch), while the GPU is
busy about a third of the time (bench/RESULTS.md). Compiling each decoder layer removes the
per-module Python and fuses the small kernels.

bitsandbytes' 4-bit matmul enters the compiled graph as an opaque operator whose own Python still
runs on every call. So inside compiled layers the 4-bit weight is dequantised by
:func:`dequantize_4bit`: the same arithmetic in plain torch operations (unpack two 4-bit codes per
byte, look them up in the quantisation's code table, scale by the block's absmax, itself
dequantised from 8 bits when the quantisation is nested), which Inductor fuses into one kernel per
weight. :class:`_Dequant4bitLinear` keeps the memory behaviour of bitsandbytes': only the packed
weight is kept for backward and the bf16 weight is rebuilt there, one matrix at a time. A test
checks the dequantisation against bitsandbytes' own, bit for bit.

Gradient checkpointing stays non-reentrant and wraps the compiled call (the recompute replays the
compiled layer), the arrangement torchtune uses for compiled QLoRA. The layers share one code
object, so the compile happens once and every layer reuses it.

This module's only job needs torch, so it imports it at the top.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

# Index of each 8-bit absmax's second-level block (bitsandbytes' nested quantisation uses 256).
NESTED_BLOCK = 256


def dequantize_4bit(packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, shape: tuple[int, int],
                    blocksize: int, dtype: torch.dtype, absmax2: torch.Tensor | None = None,
                    code2: torch.Tensor | None = None, offset: torch.Tensor | None = None) -> torch.Tensor:
    """The ``shape`` weight (``dtype``) of a bitsandbytes 4-bit tensor, in plain torch operations.

    ``packed`` holds two 4-bit codes per byte, the first element in the high nibble; ``code`` is the
    16-entry table (NF4 or FP4); ``absmax`` one scale per ``blocksize`` elements: float32, or, for
    nested quantisation, uint8 codes into ``code2`` scaled per 256 by ``absmax2`` plus ``offset``.
    """
    # Every step is an index or a pointwise op (no cat/stack), so the compiled graph's partitioner
    # may recompute the weight in backward instead of saving it: saving it would keep every
    # layer's 16-bit weights alive until backward (13 GiB on a 7B without checkpointing).
    if absmax2 is not None:
        assert code2 is not None and offset is not None  # nested quantisation comes with all three
        i = torch.arange(absmax.numel(), device=absmax.device)
        scales = code2[absmax.reshape(-1)[i].long()] * absmax2[i // NESTED_BLOCK] + offset
    else:
        scales = absmax.reshape(-1).float()
    b = packed.reshape(-1).view(torch.uint8)
    j = torch.arange(shape[0] * shape[1], device=packed.device)
    nibble = (b[j // 2].to(torch.int32) >> ((1 - j % 2) * 4)) & 0xF
    return (code[nibble.long()] * scales[j // blocksize]).to(dtype).reshape(shape)


class _Dequant4bitLinear(torch.autograd.Function):
    """``x @ W.T + b`` with W rebuilt from 4 bits in forward and again in backward (never kept)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                absmax2: torch.Tensor | None, code2: torch.Tensor | None, offset: torch.Tensor | None,
                bias: torch.Tensor | None, shape: tuple[int, int], blocksize: int) -> torch.Tensor:
        w = dequantize_4bit(packed, absmax, code, shape, blocksize, x.dtype, absmax2, code2, offset)
        ctx.save_for_backward(packed, absmax, code, absmax2, code2, offset)
        ctx.shape, ctx.blocksize = shape, blocksize
        return F.linear(x, w, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        packed, absmax, code, absmax2, code2, offset = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            w = dequantize_4bit(packed, absmax, code, ctx.shape, ctx.blocksize, grad.dtype, absmax2, code2, offset)
            grad_x = grad @ w
        return grad_x, None, None, None, None, None, None, None, None, None


def linear_4bit(module: Any, x: torch.Tensor) -> torch.Tensor:
    """A bitsandbytes ``Linear4bit``'s output through :class:`_Dequant4bitLinear`."""
    qs = module.weight.quant_state
    dtype = module.compute_dtype or x.dtype
    inp_dtype = x.dtype
    x = x.to(dtype)
    bias = module.bias
    if bias is not None and bias.dtype != dtype:
        bias = bias.to(dtype)
    if qs.nested:
        out = _Dequant4bitLinear.apply(x, module.weight, qs.absmax, qs.code.to(x.device), qs.state2.absmax,
                                       qs.state2.code.to(x.device), qs.offset, bias, tuple(qs.shape), qs.blocksize)
    else:
        out = _Dequant4bitLinear.apply(x, module.weight, qs.absmax, qs.code.to(x.device), None, None, None, bias,
                                       tuple(qs.shape), qs.blocksize)
    return out.to(inp_dtype)


def _compiled_linear_class(base: Any) -> type:
    """A subclass of bitsandbytes' Linear4bit whose forward is :func:`linear_4bit` (the module's
    class is swapped on the instance: its parameters, names and state dict stay as they were)."""

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        # Outside compiled code (a variant beyond the recompile limit runs eagerly, say) the plain
        # torch dequantisation would build weight-sized index tensors: bitsandbytes' own kernel then.
        if not torch.compiler.is_compiling():
            return base.forward(self, x)
        return linear_4bit(self, x)

    return type("FmllmCompiledLinear4bit", (base,), {"forward": forward, "_fmllm_base_class": base})


def traceable_4bit(module: Any) -> str | None:
    """Why this 4-bit module cannot take the traceable path (None: it can)."""
    qs = getattr(module.weight, "quant_state", None)
    if qs is None:
        return "no quantisation state"
    if qs.quant_type not in ("nf4", "fp4"):
        return f"quant type {qs.quant_type}"
    if module.weight.dtype != torch.uint8:
        return f"4-bit storage {module.weight.dtype}"
    if qs.nested and getattr(qs.state2, "blocksize", NESTED_BLOCK) != NESTED_BLOCK:
        return "nested blocksize"
    if len(qs.shape) != 2:
        return "not a 2-D weight"
    return None


#: Compiled variants allowed per code object. Every decoder layer shares one compiled function,
#: and variants add up over a run (fixed then dynamic sequence length, with and without a padding
#: mask, grad on and off for evaluation, a short last batch); torch's default of 8 sent the layers
#: back to eager code partway through a run.
RECOMPILE_LIMIT = 64


def configure_compiler() -> None:
    """Process-wide compiler settings for the compiled layers (the training process compiles
    nothing else).

    * AOT autograd's common subexpression elimination off: the backward's dequantisation repeats
      the forward's exactly, and merging the two keeps each 16-bit weight from forward to backward
      (+0.3 GiB on a 7B with checkpointing, +12 GiB without, measured on an H100); with it off
      only the packed 4-bit weight is saved, as bitsandbytes does.
    * a recompile limit of :data:`RECOMPILE_LIMIT`.
    * torch's own on-disk caches kept across runs (the compile is paid once per model and shapes):
      TORCHINDUCTOR_CACHE_DIR as fmllm's launch sets it (:func:`~.launch.compile_cache_env`), also
      for a training process started without fmllm-run, and AOTAutograd's cache allowed for the
      layers' custom autograd function (the 4-bit linear), which it skips by default.
    """
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config

    from .launch import compile_cache_env

    functorch_config.cse = False
    for key, value in compile_cache_env().items():  # before the first compile reads it
        os.environ.setdefault(key, value)
    if hasattr(functorch_config, "autograd_cache_allow_custom_autograd_functions"):
        # Safe here: the cache key hashes the traced graph with the function's forward and
        # backward subgraphs, so a changed function is a miss. Measured on the CPU (tiny 4-bit
        # model, Inductor): the second process hit both caches, 159 s cold -> 21 s (32 s with
        # only the FX graph cache); the GPU figures are bench/bench_runner_gpu.py --minimal-test.
        functorch_config.autograd_cache_allow_custom_autograd_functions = True
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(RECOMPILE_LIMIT, getattr(dynamo_config, name)))
            break


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's repeated decoder blocks (transformers' checkpointable layers), in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def compile_decoder_layers(model: Any, *, checkpointing: bool, backend: str = "inductor") -> tuple[int, int]:
    """Compile every decoder block; 4-bit linears inside them take the traceable path.

    ``backend`` is torch.compile's (tests use ``aot_eager``: the same graphs and autograd
    without code generation). Returns (layers compiled, 4-bit linears switched to the traceable
    dequantisation).
    """
    from torch.utils.checkpoint import checkpoint

    linear4bit: Any = None
    try:
        from bitsandbytes.nn import Linear4bit as linear4bit
    except Exception:  # no bitsandbytes (a CPU machine without it): nothing 4-bit to switch
        pass

    configure_compiler()
    if not checkpointing and hasattr(model, "enable_input_require_grads"):
        # Every layer's input then requires grad, the first one's too: one compiled variant
        # serves all layers instead of two (transformers enables this only with checkpointing).
        model.enable_input_require_grads()
    layers: list[Any] = decoder_layers(model)  # transformers' layers: their attributes are set below
    switched = 0
    classes: dict[type, type] = {}
    for layer in layers:
        if linear4bit is not None:
            for sub in layer.modules():
                if isinstance(sub, linear4bit) and not hasattr(type(sub), "_fmllm_base_class") \
                        and traceable_4bit(sub) is None:
                    cls = type(sub)
                    sub.__class__ = classes.setdefault(cls, _compiled_linear_class(cls))
                    switched += 1
        compiled = torch.compile(layer._call_impl, backend=backend)
        if checkpointing:
            # transformers' own per-layer checkpoint would sit inside or outside the compiled call
            # depending on its version; here it is always outside.
            layer.gradient_checkpointing = False

            def call(*args: Any, _fn: Any = compiled, **kwargs: Any) -> Any:
                return checkpoint(_fn, *args, use_reentrant=False, **kwargs)

            layer._compiled_call_impl = call
        else:
            layer._compiled_call_impl = compiled
        layer._fmllm_checkpointing = checkpointing
    return len(layers), switched


def uncompile_decoder_layers(model: Any) -> None:
    """Back to the eager layers (generation after training: new shapes and a KV cache each step)."""
    layers: list[Any] = decoder_layers(model)
    for layer in layers:
        if not hasattr(layer, "_fmllm_checkpointing"):
            continue
        layer._compiled_call_impl = None
        layer.gradient_checkpointing = layer._fmllm_checkpointing
        del layer._fmllm_checkpointing
        for sub in layer.modules():
            base = getattr(type(sub), "_fmllm_base_class", None)
            if base is not None:
                sub.__class__ = base
