"""The memory model's per-layer activation terms against what autograd really saves, on the CPU.

A tiny model of the real Hugging Face class runs forward with LoRA under bf16 autocast, as the
runner's Trainer runs it; a ``saved_tensors_hooks`` pack hook sums the bytes of every storage
autograd keeps (each once, parameters and autocast's copies of the LoRA weights left out). Two
configurations that differ in one thing are compared, so everything else cancels, and the
difference must be what memory._saved_per_token says it is. The three terms below were found by a
CPU audit of every catalogue family (bench/RESULTS.md, 2026-12-08) and missed by the model before.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch

from fmllm_tui import memory

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

R = 8
SEQ = 96  # no activation has a LoRA weight's shape (autocast's weight copies are told apart by it)
SMALL = {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 512, "max_position_embeddings": 256}


def _saved_bytes(model_type: str, *, targets: list[str], four_bit_path: bool, **cfg: Any) -> int:
    """Bytes autograd saves in one forward with labels (bf16 base, fp32 LoRA, CPU autocast)."""
    from peft import LoraConfig, get_peft_model
    from peft.helpers import disable_input_dtype_casting
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    conf = AutoConfig.for_model(model_type, **{**SMALL, **cfg})
    model = AutoModelForCausalLM.from_config(conf, attn_implementation="eager", dtype=torch.bfloat16)
    model.requires_grad_(False)
    pm = get_peft_model(model, LoraConfig(r=R, lora_alpha=16, lora_dropout=0.0, target_modules=targets,
                                          task_type="CAUSAL_LM"))
    pm.train()
    # Every layer's input requires grad (as under the runner's checkpointing), so layer 0 saves
    # what the others do: otherwise what it saves depends on which adapters come first.
    pm.enable_input_require_grads()
    params = {p.untyped_storage().data_ptr() for p in pm.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        lora_weight_copy = t.dim() == 2 and R in t.shape and SEQ not in t.shape
        if st.data_ptr() not in params and not lora_weight_copy:
            seen.setdefault(st.data_ptr(), st.nbytes())
        return t

    ids = torch.randint(3, conf.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(1))
    # peft's 4-bit LoRA layer skips its fp32 input cast under CUDA autocast; on the CPU that path
    # is peft's disable_input_dtype_casting (a bitsandbytes 4-bit base itself saves no input).
    nocast = disable_input_dtype_casting(pm) if four_bit_path else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16), nocast:
        pm(input_ids=ids, labels=ids).loss.backward()
    return sum(seen.values())


def _per_token(model_type: str, *, targets: list[str], use_4bit: bool, **cfg: Any) -> int:
    arch = memory.ArchSpec.from_config({"model_type": model_type, **SMALL, **cfg})
    inp = memory.PlanInputs(seq_len=SEQ, micro_batch=1, gradient_checkpointing=False, use_4bit=use_4bit,
                            lora_r=R, lora_targets=tuple(targets), lora_dropout=0.0, recipe="fmllm",
                            attn="eager", loss="plain", liger_layers=False, compiled=False)
    return memory._saved_per_token(memory._resolve(inp, arch, []))


def _diff(model_type: str, a: dict, b: dict, *, four_bit_path: bool) -> tuple[int, int]:
    """(measured, predicted) saved bytes of configuration a less b, over all layers and tokens."""
    measured = (_saved_bytes(model_type, four_bit_path=four_bit_path, **a)
                - _saved_bytes(model_type, four_bit_path=four_bit_path, **b))
    layers = SMALL["num_hidden_layers"]
    predicted = layers * SEQ * (_per_token(model_type, use_4bit=four_bit_path, **a)
                                - _per_token(model_type, use_4bit=four_bit_path, **b))
    return measured, predicted


QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_gemma2_attention_softcapping_keeps_tanhs_scores() -> None:
    """attn_weights / cap -> tanh -> x cap: tanh keeps its bf16 scores (heads x seq per token)."""
    measured, predicted = _diff("gemma2", {"targets": QKVO, "attn_logit_softcapping": 50.0},
                                {"targets": QKVO, "attn_logit_softcapping": None}, four_bit_path=True)
    assert measured == predicted == SMALL["num_hidden_layers"] * SEQ * 2 * SMALL["num_attention_heads"] * SEQ


def test_a_16_bit_base_gives_every_adapter_its_own_input_copy() -> None:
    """peft casts each adapter's input to its fp32 weights and autocast casts it back: q, k and v
    do not share one copy, and o does not share the attention output."""
    measured, predicted = _diff("llama", {"targets": QKVO}, {"targets": ["o_proj"]}, four_bit_path=False)
    assert measured == predicted


def test_eager_attention_output_is_kept_by_the_o_adapter_only() -> None:
    """Eager attention saves q and the repeated k, v, not its output: o's adapter keeps that."""
    measured, predicted = _diff("llama", {"targets": QKVO}, {"targets": ["q_proj", "k_proj", "v_proj"]},
                                four_bit_path=True)
    assert measured == predicted
