"""The recipe decisions the memory model and the runner share (torch-free).

Each rule lives here once; the runner (runner/lean.py, runner/train.py) applies it to the machine
it runs on, and the memory model (memory.py) applies it to the card being planned for. Planning
for a CUDA card assumes fmllm's GPU install (``pip install -c constraints.txt "fmllm[gpu]"``):
liger-kernel present, and Triton, which torch's CUDA wheels ship. So the same config and card give
the same plan on any machine (a laptop without liger plans what the GPU box will run), and the
``gpu.liger`` check says so on a GPU machine whose install lacks what the plan assumes.
"""

from __future__ import annotations

import importlib.util

#: What a planned CUDA target has: fmllm's `gpu` extra (liger-kernel) installed.
PLANNED_GPU_HAS_LIGER = True

#: AdamW state below this is too small for paging to CPU RAM to matter: the fmllm recipe on one
#: GPU runs 32-bit AdamW as torch's fused kernel instead (the same update, one launch).
FUSED_ADAMW_MAX_STATE_BYTES = 1 * 1024**3


def liger_installed() -> bool:
    """Whether liger-kernel is installed here (looked up without importing it)."""
    try:
        return importlib.util.find_spec("liger_kernel") is not None
    except (ImportError, ValueError):
        return False


def loss_kind(requested: str, *, cuda: bool, has_liger: bool) -> tuple[str, str | None]:
    """The loss implementation (plain | chunked | liger) for ``fmllm.loss`` and, when it differs
    from the request, why."""
    if requested in ("plain", "chunked"):
        return requested, None
    if requested == "liger":
        if not cuda:
            return "chunked", "fmllm.loss is liger but there is no CUDA GPU: used the chunked loss"
        if not has_liger:
            return "chunked", ("fmllm.loss is liger but liger-kernel is not installed (pip install liger-kernel): "
                               "used the chunked loss")
        return "liger", None
    return ("liger", None) if (cuda and has_liger) else ("chunked", None)


def lean_loss(kind: str, *, softcap: bool) -> tuple[str, str | None]:
    """The lean loss for a model and, when it differs from ``kind``, why: soft-capped logits
    (Gemma-2's ``final_logit_softcapping``) take the chunked loss, which caps each chunk as the
    model's own forward does; liger's fused loss is not used on them (not verified here)."""
    if kind == "liger" and softcap:
        return "chunked", ("the model caps its logits (final_logit_softcapping): the chunked loss, "
                           "which caps each chunk as the model does")
    return kind, None


def liger_layers(*, recipe: str, cuda: bool, compiled: bool, want: str, has_liger: bool) -> bool:
    """Whether liger's RMSNorm/SwiGLU/RoPE kernels patch the model: the fmllm recipe on CUDA,
    uncompiled (compiled layers fuse those operations themselves), liger installed, not off."""
    return recipe == "fmllm" and cuda and not compiled and want != "off" and has_liger


def fused_adamw(optim: str, *, recipe: str, cuda: bool, distributed: str, trainable_params: int,
                forced: bool = False) -> str:
    """The optimizer that really runs: 32-bit AdamW (paged or not) of a small adapter becomes
    ``adamw_torch_fused`` in the fmllm recipe on CUDA outside FSDP, unless the optimizer was
    forced (an override)."""
    if forced or recipe != "fmllm" or not cuda or distributed == "fsdp":
        return optim
    if optim not in ("paged_adamw_32bit", "adamw_torch"):
        return optim
    if trainable_params * 8 > FUSED_ADAMW_MAX_STATE_BYTES:  # two fp32 moments per parameter
        return optim
    return "adamw_torch_fused"


#: Causal-LM model types whose transformers class has no SDPA attention (``_supports_sdpa`` is
#: false in transformers 5.25; tests/test_recipe_rules.py checks each against the installed
#: transformers). Asking for SDPA there fails at load ("does not support an attention
#: implementation through torch.nn.functional.scaled_dot_product_attention"): measured on the
#: H100 for gemma-2 (bench/RESULTS.md).
NO_SDPA_MODEL_TYPES = frozenset({"gemma2", "vaultgemma", "bloom", "gpt_neo", "mpt", "xglm", "granite_swa"})


def attention(requested: str, model_type: str) -> tuple[str, str | None]:
    """The attention implementation that runs for ``fmllm.attn_implementation`` on this model
    type and, when it differs from the request, why."""
    if requested == "sdpa" and model_type in NO_SDPA_MODEL_TYPES:
        return "eager", (f"transformers has no SDPA attention for {model_type}: the run uses eager attention "
                         "(it keeps seq x seq scores per layer; flash_attention_2 is the faster choice where installed)")
    return requested, None
