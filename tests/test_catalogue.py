"""The shipped model catalogue: exact architecture numbers, gating, did-you-mean."""

from __future__ import annotations

import pytest

from fmllm_tui import catalogue
from fmllm_tui.catalogue import (
    get_architecture,
    known_model_ids,
    param_count,
    size_in_billions,
    suggest_ids,
)

REQUIRED = [
    *(f"Qwen/Qwen2.5-{s}{v}" for s in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B") for v in ("", "-Instruct")),
    *(f"Qwen/Qwen3-{s}" for s in ("0.6B", "1.7B", "4B", "8B", "14B", "32B")),
    "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-70B-Instruct",
    "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.3-70B-Instruct",
    "mistralai/Mistral-7B-v0.3", "mistralai/Mistral-7B-Instruct-v0.3",
    *(f"google/gemma-2-{s}-it" for s in ("2b", "9b", "27b")),
    *(f"google/gemma-3-{s}-it" for s in ("1b", "4b", "12b", "27b")),
    "microsoft/Phi-3-mini-4k-instruct", "microsoft/Phi-3-medium-4k-instruct", "microsoft/phi-4",
]
FIELDS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
          "num_attention_heads", "num_key_value_heads", "vocab_size", "tie_word_embeddings",
          "max_position_embeddings", "torch_dtype")


def test_required_models_are_present_with_every_field():
    ids = set(known_model_ids())
    assert not [m for m in REQUIRED if m not in ids]
    for mid in known_model_ids():
        arch = get_architecture(mid)
        assert arch is not None
        assert not [f for f in FIELDS if f not in arch], mid
        assert arch["hidden_size"] % arch["num_attention_heads"] == 0 or "head_dim" in arch, mid
        assert arch["num_attention_heads"] % arch["num_key_value_heads"] == 0, mid


@pytest.mark.parametrize(("mid", "expected"), [
    ("Qwen/Qwen2.5-7B-Instruct", (3584, 18944, 28, 28, 4, 152064, False)),
    ("Qwen/Qwen2.5-14B-Instruct", (5120, 13824, 48, 40, 8, 152064, False)),
    ("Qwen/Qwen2.5-0.5B-Instruct", (896, 4864, 24, 14, 2, 151936, True)),
    ("meta-llama/Llama-3.1-8B-Instruct", (4096, 14336, 32, 32, 8, 128256, False)),
    ("meta-llama/Llama-3.2-1B", (2048, 8192, 16, 32, 8, 128256, True)),
    ("mistralai/Mistral-7B-Instruct-v0.3", (4096, 14336, 32, 32, 8, 32768, False)),
    ("microsoft/Phi-3-mini-4k-instruct", (3072, 8192, 32, 32, 32, 32064, False)),
])
def test_exact_numbers(mid, expected):
    a = get_architecture(mid)
    got = (a["hidden_size"], a["intermediate_size"], a["num_hidden_layers"], a["num_attention_heads"],
           a["num_key_value_heads"], a["vocab_size"], a["tie_word_embeddings"])
    assert got == expected


@pytest.mark.parametrize(("mid", "params"), [
    # Published parameter counts of these checkpoints.
    ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512),
    ("meta-llama/Llama-3.1-8B", 8_030_261_248),
    ("microsoft/Phi-3-mini-4k-instruct", 3_821_079_552),
    ("mistralai/Mistral-7B-v0.3", 7_248_023_552),
    ("meta-llama/Llama-3.2-1B", 1_235_814_400),
])
def test_param_count_matches_published_sizes(mid, params):
    assert param_count(get_architecture(mid)) == params


def test_param_counts_agree_with_the_size_in_the_name():
    for mid in known_model_ids():
        announced = size_in_billions(mid)
        if announced is None:
            continue
        actual = param_count(get_architecture(mid)) / 1e9
        # Names round (Qwen2.5-7B has 7.6B, Gemma-2-2b 2.6B, Qwen3-0.6B 0.6B).
        assert 0.65 * announced < actual < 1.4 * announced, (mid, actual)


def test_gemma_keeps_its_extra_fields_and_text_config():
    g2 = get_architecture("google/gemma-2-27b-it")
    assert (g2["head_dim"], g2["query_pre_attn_scalar"], g2["sliding_window"]) == (128, 144, 4096)
    assert g2["final_logit_softcapping"] == 30.0 and g2["attn_logit_softcapping"] == 50.0
    g3 = catalogue.catalogue_entry("google/gemma-3-12b-it")
    assert g3["multimodal"] is True and g3["config"]["model_type"] == "gemma3_text"
    assert g3["config"]["architectures"] == ["Gemma3ForCausalLM"]


def test_gating_and_case_insensitive_lookup():
    assert catalogue.gated_status("meta-llama/Llama-3.1-8B-Instruct") == "manual"
    assert catalogue.gated_status("google/gemma-2-9b-it") == "manual"
    assert catalogue.gated_status("Qwen/Qwen2.5-7B-Instruct") is False
    assert catalogue.gated_status("nobody/nothing") is None
    assert get_architecture("qwen/qwen2.5-7b-INSTRUCT") == get_architecture("Qwen/Qwen2.5-7B-Instruct")
    assert catalogue.canonical_id(" qwen/qwen2.5-7b-instruct ") == "Qwen/Qwen2.5-7B-Instruct"
    assert get_architecture("nobody/nothing") is None
    # Callers get copies: editing one can't corrupt the catalogue.
    get_architecture("Qwen/Qwen2.5-7B-Instruct")["hidden_size"] = 1
    assert get_architecture("Qwen/Qwen2.5-7B-Instruct")["hidden_size"] == 3584


@pytest.mark.parametrize(("wrong", "first"), [
    ("Qwen/Qwen2.5-15B-Instruct", "Qwen/Qwen2.5-14B-Instruct"),
    ("Qwen/Qwen2.5-6B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
    ("qwen/qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct"),
    ("Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
    ("meta-llama/Llama-3.1-8B-Instruc", "meta-llama/Llama-3.1-8B-Instruct"),
    ("meta-llama/Meta-Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
    ("Qwen/Qwen3-16B", "Qwen/Qwen3-14B"),
    ("google/gemma-2-7b-it", "google/gemma-2-9b-it"),
    ("microsoft/phi-3-mini", "microsoft/Phi-3-mini-4k-instruct"),
])
def test_did_you_mean(wrong, first):
    got = suggest_ids(wrong)
    assert got[0] == first
    assert len(got) <= 3 and wrong not in got


def test_did_you_mean_stays_in_family_and_stays_quiet_for_nonsense():
    assert all(s.startswith("Qwen/Qwen2.5-") for s in suggest_ids("Qwen/Qwen2.5-15B-Instruct"))
    assert suggest_ids("totally/unrelated-thing") == []
    assert suggest_ids("Qwen/Qwen2.5-15B-Instruct", n=1) == ["Qwen/Qwen2.5-14B-Instruct"]
    assert catalogue.rank_ids("org/modle-7b", ["org/model-7b", "other/thing"]) == ["org/model-7b"]


def test_size_parsing():
    assert size_in_billions("Qwen/Qwen2.5-0.5B") == 0.5
    assert size_in_billions("mistralai/Mixtral-8x7B-v0.1") == 56.0
    assert size_in_billions("HuggingFaceTB/SmolLM2-135M") == pytest.approx(0.135)
    assert size_in_billions("microsoft/phi-4") is None
