"""The tiny-model factory builds real, loadable models and tokenizers, and caches them."""

from __future__ import annotations

import json

import pytest
from tinymodel import VOCAB_SIZE, build_tiny_model, tiny_archs, tiny_config_dict


def test_qwen2_folder_loads_with_auto_classes(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith(".bin") for n in names)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tok) == VOCAB_SIZE
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == ("<|endoftext|>", "<|im_end|>", "<|startoftext|>")
    assert model.config.pad_token_id == tok.pad_token_id == 0
    assert model.config.eos_token_id == tok.eos_token_id == 2
    # A real trained tokenizer: frequent words of the sample data are single tokens, text round-trips.
    words = "The capital of France is Paris."
    assert len(tok(words).input_ids) < len(words) / 2  # bytes alone would be 31 tokens
    text = "The capital of France is Paris. 9 + 66 = 75."
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    out = model(torch.tensor([ids]), labels=torch.tensor([ids]))
    assert out.logits.shape == (1, len(ids), VOCAB_SIZE)
    assert torch.isfinite(out.loss)


def test_chat_template_marks_assistant_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    msgs = [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<|im_start|>user\nAdd 2 and 3.<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
    enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    marked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(marked) == "5<|im_end|>"


def test_llama_adds_bos_and_matches_config(tiny_llama_dir):
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    cfg = AutoConfig.from_pretrained(tiny_llama_dir)
    assert cfg.model_type == "llama" and cfg.num_hidden_layers == 2 and cfg.num_key_value_heads == 2
    assert tok("hello").input_ids[0] == tok.bos_token_id == cfg.bos_token_id


def test_cache_reuses_the_same_folder_and_dest_copies(tmp_path, tiny_model_dir):
    assert build_tiny_model("qwen2") == tiny_model_dir
    copy = build_tiny_model("qwen2", dest=tmp_path / "m")
    assert copy == tmp_path / "m"
    assert (copy / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    (copy / "model.safetensors").unlink()  # a private copy: the shared build is untouched
    assert (tiny_model_dir / "model.safetensors").is_file()


def test_overrides_change_the_config_and_the_cache_key(tmp_path):
    d = build_tiny_model("qwen2", num_hidden_layers=3, tie_word_embeddings=True, pad_token=None)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3 and cfg["tie_word_embeddings"] is True
    assert cfg["pad_token_id"] is None
    assert "pad_token" not in json.loads((d / "tokenizer_config.json").read_text())
    assert d != build_tiny_model("qwen2")


@pytest.mark.parametrize("arch", ["mistral", "gemma2", "qwen3", "phi3"])
def test_other_families_build(arch):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(build_tiny_model(arch))
    assert cfg.model_type == arch
    assert cfg.vocab_size == VOCAB_SIZE


def test_config_dict_is_plain_and_unknown_arch_is_refused():
    cfg = tiny_config_dict("llama")
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]) == (64, 128, 4)
    assert set(tiny_archs()) >= {"qwen2", "llama", "mistral", "gemma2"}
    with pytest.raises(ValueError, match="unknown tiny arch 'gpt9'"):
        tiny_config_dict("gpt9")
