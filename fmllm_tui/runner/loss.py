"""The causal-LM loss without full-vocabulary fp32 logits.

The plain recipe computes ``lm_head`` on every position and upcasts the whole
``tokens × vocab`` logits tensor to fp32 before the cross-entropy: 2 GiB at 1024 tokens of a
152k vocabulary. Here the model's forward is replaced (on the instance, only when labels are
given) by one that

1. runs the decoder to the last hidden state,
2. keeps only the positions that have a target (the response tokens), and
3. computes the cross-entropy sum (of the soft-capped logits, ``cap * tanh(logits / cap)``, for
   models that cap them: Gemma-2) with one of

   * ``liger``: liger-kernel's fused linear cross-entropy (CUDA; logits never materialised),
   * ``chunked``: pure torch; logits per chunk of tokens, recomputed in backward through
     ``torch.utils.checkpoint`` so only one chunk's logits live at a time (works anywhere),

then divides by the number of target tokens in the whole accumulated batch
(``num_items_in_batch``, the Trainer's gradient-accumulation contract).

This module's only job needs torch, so it imports it at the top.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
# Elements of one chunk's logits: 2**25 fp32 = 128 MiB, so a 152k vocabulary gives ~220 tokens.
CHUNK_ELEMENTS = 2**25

LossFn = Callable[..., torch.Tensor]  # (hidden [N, H], head, target [N], *, softcap=None) -> summed loss


def liger_available() -> bool:
    """liger-kernel importable (its kernels need CUDA and Triton)."""
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception:  # an import of Triton can fail in many ways on a machine without a GPU
        return False
    return True


def resolve_loss_kind(requested: str, *, cuda: bool, has_liger: bool | None = None) -> tuple[str, str | None]:
    """The loss implementation to use here and, when it differs from the request, why
    (fmllm_tui.recipe.loss_kind with this machine's liger-kernel)."""
    from fmllm_tui.recipe import loss_kind

    return loss_kind(requested, cuda=cuda, has_liger=liger_available() if has_liger is None else has_liger)


def _ce_sum_of_chunk(hidden: torch.Tensor, head: torch.nn.Module, target: torch.Tensor,
                     softcap: float | None = None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:  # the model's final_logit_softcapping, applied as its own forward does (here in fp32)
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, target, reduction="sum", ignore_index=IGNORE_INDEX)


def chunked_ce_sum(hidden: torch.Tensor, head: torch.nn.Module, target: torch.Tensor,
                   chunk_tokens: int | None = None, *, softcap: float | None = None) -> torch.Tensor:
    """Sum of token cross-entropies of ``head(hidden)`` (soft-capped at ``softcap`` when given)
    against ``target``, one chunk at a time.

    ``hidden`` is ``[N, H]``, ``target`` ``[N]``. Each chunk runs under non-reentrant
    checkpointing, so its logits are freed after the forward and recomputed in the backward.
    """
    n = hidden.shape[0]
    if n == 0:
        return hidden.sum() * 0.0
    weight: Any = head.weight
    vocab = getattr(head, "out_features", None) or int(weight.shape[0])
    step = chunk_tokens or max(1, CHUNK_ELEMENTS // max(1, int(vocab)))
    total: torch.Tensor | None = None
    for start in range(0, n, step):
        part = checkpoint(_ce_sum_of_chunk, hidden[start:start + step], head, target[start:start + step],
                          softcap, use_reentrant=False)
        total = part if total is None else total + part
    assert total is not None
    return total


def plain_ce_sum(hidden: torch.Tensor, head: torch.nn.Module, target: torch.Tensor, *,
                 softcap: float | None = None) -> torch.Tensor:
    """All selected positions' logits at once, upcast to fp32 (the unfused reference)."""
    return _ce_sum_of_chunk(hidden, head, target, softcap)


def _liger_ce_sum() -> LossFn:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fused = LigerFusedLinearCrossEntropyLoss(reduction="sum", ignore_index=IGNORE_INDEX)

    def run(hidden: torch.Tensor, head: torch.nn.Module, target: torch.Tensor, *,
            softcap: float | None = None) -> torch.Tensor:
        if type(head) is not torch.nn.Linear or softcap:
            # An adapted or quantized head has no single weight to fuse with; soft-capped logits
            # take the chunked loss (fmllm.recipe.lean_loss_kind: one rule for plan and runner).
            return chunked_ce_sum(hidden, head, target, softcap=softcap)
        weight = head.weight
        if hidden.dtype != weight.dtype:
            hidden = hidden.to(weight.dtype)
        return fused(weight, hidden.contiguous(), target, head.bias)

    return run


def loss_fn_for(kind: str) -> LossFn:
    """The sum-reduced loss for ``kind`` in ``liger | chunked``."""
    if kind == "liger":
        return _liger_ce_sum()
    if kind == "chunked":
        return chunked_ce_sum
    if kind == "selected-plain":
        return plain_ce_sum
    raise ValueError(f"no lean loss called {kind!r}")


def lean_forward_unsupported(model: Any) -> str | None:
    """Why the lean forward cannot serve this model (None when it can)."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        return "the model scales its logits (logit_scale)"
    if not hasattr(model, "get_decoder") or not hasattr(model, "get_output_embeddings"):
        return "the model has no separate decoder and output head"
    try:
        decoder = model.get_decoder()
    except Exception:  # some remote-code models raise here
        decoder = None
    if decoder is None or model.get_output_embeddings() is None:
        return "the model has no separate decoder and output head"
    return None


def install_lean_forward(model: Any, loss: LossFn) -> None:
    """Replace ``model.forward`` (this instance only) so a forward with labels never builds
    full-vocabulary logits. Without labels (generation) the original forward runs."""
    original = model.forward
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None) or None

    def forward(self: Any, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, num_items_in_batch: Any = None,
                shift_labels: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if labels is None and shift_labels is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            inputs_embeds=inputs_embeds, **kwargs)
        from transformers.modeling_outputs import CausalLMOutputWithPast

        for k in ("use_cache", "logits_to_keep", "past_key_values", "cache", "return_dict"):
            kwargs.pop(k, None)
        out = self.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 inputs_embeds=inputs_embeds, use_cache=False, **kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if shift_labels is None:
            assert labels is not None
            shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
        flat = shift_labels.reshape(-1).to(hidden.device)
        keep = flat != IGNORE_INDEX
        selected = hidden.reshape(-1, hidden.shape[-1])[keep]
        total = loss(selected, self.get_output_embeddings(), flat[keep], softcap=softcap)
        if num_items_in_batch is None:
            denom: Any = keep.sum().clamp(min=1)
        else:
            denom = num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
        return CausalLMOutputWithPast(loss=total / denom, logits=None)

    model.forward = MethodType(forward, model)
    # Tells the Trainer to pass num_items_in_batch and not to rescale for accumulation again.
    model.accepts_loss_kwargs = True
