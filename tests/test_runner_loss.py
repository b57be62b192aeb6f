"""The lean loss and recipe on the CPU: same numbers as the plain path, less memory by design."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fmllm_tui.runner.lean import CpuEmbedding
from fmllm_tui.runner.loss import (
    chunked_ce_sum,
    install_lean_forward,
    lean_forward_unsupported,
    loss_fn_for,
    resolve_loss_kind,
)
from tests.recipe_support import recipe_of


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_ce_matches_plain_in_value_and_gradient(chunk: int) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    h1 = torch.randn(23, 16, requires_grad=True)
    h2 = h1.detach().clone().requires_grad_(True)
    target = torch.randint(0, 50, (23,))
    target[4] = -100  # ignored positions contribute nothing
    ref = F.cross_entropy(head(h1).float(), target, reduction="sum", ignore_index=-100)
    ref.backward()
    ref_head_grad = head.weight.grad.clone()
    head.weight.grad = None
    got = chunked_ce_sum(h2, head, target, chunk_tokens=chunk)
    got.backward()
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(h2.grad, h1.grad, atol=1e-6)
    assert torch.allclose(head.weight.grad, ref_head_grad, atol=1e-5)


def test_chunked_ce_of_nothing_is_zero_with_a_graph() -> None:
    h = torch.randn(0, 4, requires_grad=True)
    out = chunked_ce_sum(h, torch.nn.Linear(4, 9), torch.zeros(0, dtype=torch.long))
    out.backward()
    assert out.item() == 0.0


def _tiny(path: Path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, 12), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt
    return ids, labels


@pytest.mark.parametrize("kind, arch", [("chunked", "qwen2"), ("selected-plain", "qwen2"), ("chunked", "llama")])
def test_lean_forward_equals_the_models_own_loss(tiny_model_dir: Path, tiny_llama_dir: Path, kind: str,
                                                 arch: str) -> None:
    path = tiny_model_dir if arch == "qwen2" else tiny_llama_dir
    ref_model, lean_model = _tiny(path), _tiny(path)
    assert lean_forward_unsupported(lean_model) is None
    install_lean_forward(lean_model, loss_fn_for(kind))
    ids, labels = _batch(ref_model.config.vocab_size)
    ref = ref_model(input_ids=ids, labels=labels).loss
    out = lean_model(input_ids=ids, labels=labels)
    assert out.logits is None  # no full-vocabulary logits
    assert torch.allclose(out.loss, ref, atol=1e-5)
    ref.backward()
    out.loss.backward()
    for (n, a), (_, b) in zip(ref_model.named_parameters(), lean_model.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), n
    # num_items_in_batch: the loss is the sum over the accumulated batch's target count.
    n_items = torch.tensor(40)
    summed = lean_model(input_ids=ids, labels=labels, num_items_in_batch=n_items).loss
    expected = ref.detach() * (labels[:, 1:] != -100).sum() / 40
    assert torch.allclose(summed, expected, atol=1e-5)
    # Without labels the original forward runs (generation needs logits).
    assert lean_model(input_ids=ids).logits.shape == (2, 12, lean_model.config.vocab_size)


def test_packed_sequences_do_not_attend_across_examples(tiny_model_dir: Path) -> None:
    """Padding-free packing with position ids gives each example's own loss (SDPA path)."""
    model = _tiny(tiny_model_dir)
    install_lean_forward(model, loss_fn_for("chunked"))
    a = torch.arange(10, 19)
    b = torch.arange(40, 46)
    separate = []
    for x in (a, b):
        lab = x.clone()
        separate.append(model(input_ids=x[None], labels=lab[None], num_items_in_batch=torch.tensor(len(x) - 1)).loss)
    ids = torch.cat([a, b])[None]
    pos = torch.cat([torch.arange(len(a)), torch.arange(len(b))])[None]
    lab = ids.clone()
    lab[0, len(a)] = -100  # the collator's separator: no prediction across the boundary
    total = len(a) - 1 + len(b) - 1
    packed = model(input_ids=ids, position_ids=pos, labels=lab, num_items_in_batch=torch.tensor(total)).loss
    expected = (separate[0] * (len(a) - 1) + separate[1] * (len(b) - 1)) / total
    assert torch.allclose(packed, expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["chunked", "selected-plain", "liger"])
def test_soft_capped_logits_get_the_models_own_loss_without_full_logits(kind: str) -> None:
    """Gemma-2 caps its logits (cap * tanh(logits / cap)) before the loss: the lean loss caps each
    chunk the same way, so loss and gradients equal the model's own (before, such models fell back
    to the full-vocabulary loss: +14 bytes per logit, 7 GiB at 2048 tokens of Gemma-2's vocabulary).
    The liger kind takes the chunked loss on such models (recipe.lean_loss)."""
    from tinymodel import build_tiny_model

    path = build_tiny_model("gemma2")
    ref_model, lean_model = _tiny(path), _tiny(path)
    assert ref_model.config.final_logit_softcapping
    # A cap this tiny model's small logits reach (Gemma-2's 30 would leave them almost unchanged).
    ref_model.config.final_logit_softcapping = lean_model.config.final_logit_softcapping = 0.5
    assert lean_forward_unsupported(lean_model) is None
    ids, labels = _batch(ref_model.config.vocab_size)
    ref = ref_model(input_ids=ids, labels=labels).loss
    if kind == "liger":
        from fmllm_tui.recipe import lean_loss

        kind, why = lean_loss("liger", softcap=True)
        assert kind == "chunked" and "final_logit_softcapping" in (why or "")
    install_lean_forward(lean_model, loss_fn_for(kind))
    out = lean_model(input_ids=ids, labels=labels)
    assert out.logits is None
    assert torch.allclose(out.loss, ref, atol=1e-5)
    uncapped = _tiny(path)
    uncapped.config.final_logit_softcapping = None
    install_lean_forward(uncapped, loss_fn_for(kind))
    assert not torch.allclose(uncapped(input_ids=ids, labels=labels).loss, ref, atol=1e-3)  # the cap matters here
    ref.backward()
    out.loss.backward()
    for (n, a), (_, b) in zip(ref_model.named_parameters(), lean_model.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), n


def test_models_that_scale_logits_keep_their_own_loss(tiny_llama_dir: Path) -> None:
    model = _tiny(tiny_llama_dir)
    model.config.logit_scale = 0.0625
    assert "logit_scale" in (lean_forward_unsupported(model) or "")


def test_cpu_embedding_keeps_the_table_out_of_parameters() -> None:
    emb = torch.nn.Embedding(30, 8)
    wrapped = CpuEmbedding(emb, torch.device("cpu"))
    ids = torch.tensor([[1, 2, 29]])
    assert torch.equal(wrapped(ids), emb(ids))
    assert list(wrapped.parameters()) == [] and wrapped.weight.shape == (30, 8)


def test_recipe_on_the_cpu_says_what_it_changed() -> None:
    cfg = {"quantization": {"use_4bit": True, "bnb_4bit_compute_dtype": "bfloat16"},
           "training": {"optim": "paged_adamw_32bit"},
           "fmllm": {"memory_recipe": "fmllm", "loss": "liger", "offload_embeddings": "on",
                     "attn_implementation": "flash_attention_2"}}
    r = recipe_of(cfg, cuda=False)
    assert (r.device, r.quantize_4bit, r.dtype, r.optim, r.loss, r.offload_embeddings, r.attn_implementation) == \
        ("cpu", False, "float32", "adamw_torch", "chunked", False, "sdpa")
    text = " ".join(r.notes)
    for words in ("without 4-bit", "adamw_torch", "liger", "nothing to offload", "flash_attention_2"):
        assert words in text, text


def test_recipe_on_a_gpu() -> None:
    base = {"quantization": {"use_4bit": True, "bnb_4bit_compute_dtype": "bfloat16"},
            "training": {"optim": "paged_adamw_32bit"}, "fmllm": {"memory_recipe": "fmllm"}}
    r = recipe_of(base, cuda=True)
    assert r.quantize_4bit and r.mixed_precision == "bf16" and r.offload_embeddings and r.optim == "paged_adamw_32bit"
    assert r.loss in ("liger", "chunked")
    plain = recipe_of({**base, "fmllm": {"memory_recipe": "plain"}}, cuda=True)
    assert plain.loss == "plain" and not plain.offload_embeddings and not plain.liger_kernels
    fp16 = recipe_of({**base, "quantization": {"bnb_4bit_compute_dtype": "float16"}}, cuda=True)
    assert fp16.mixed_precision == "fp16"
    from fmllm_tui.plan import PlanError

    with pytest.raises(PlanError, match="no bf16"):
        recipe_of(base, cuda=True, bf16_supported=False)


def test_loss_kind_resolution() -> None:
    assert resolve_loss_kind("auto", cuda=True, has_liger=True) == ("liger", None)
    assert resolve_loss_kind("auto", cuda=True, has_liger=False) == ("chunked", None)
    assert resolve_loss_kind("auto", cuda=False, has_liger=True) == ("chunked", None)
    kind, why = resolve_loss_kind("liger", cuda=True, has_liger=False)
    assert kind == "chunked" and "pip install liger-kernel" in why
    assert resolve_loss_kind("plain", cuda=True, has_liger=True) == ("plain", None)


def test_fused_adamw_swap_only_for_small_adapter_state_on_a_gpu() -> None:
    from fmllm_tui.plan import swap_optimizer

    cfg = {"training": {"optim": "paged_adamw_32bit"}, "fmllm": {"memory_recipe": "fmllm"}}
    r = recipe_of(cfg, cuda=True)
    note = swap_optimizer(r, 10_000_000)
    assert r.optim == "adamw_torch_fused" and "paged_adamw_32bit" in note and "76 MiB" in note
    assert recipe_of(cfg, cuda=True, trainable_params=10_000_000).optim == "adamw_torch_fused"  # the plan swaps
    big = recipe_of(cfg, cuda=True)
    assert swap_optimizer(big, 500_000_000) is None and big.optim == "paged_adamw_32bit"
    eight = recipe_of({**cfg, "training": {"optim": "paged_adamw_8bit"}}, cuda=True)
    assert swap_optimizer(eight, 1000) is None  # 8-bit state is a memory choice: kept
    plain = recipe_of({**cfg, "fmllm": {"memory_recipe": "plain"}}, cuda=True)
    assert swap_optimizer(plain, 1000) is None
    assert swap_optimizer(recipe_of(cfg, cuda=False), 1000) is None
    forced = recipe_of(cfg, cuda=True, overrides={"optim": "paged_adamw_32bit"})
    assert swap_optimizer(forced, 1000) is None


def test_pad_token_order(tmp_path: Path) -> None:
    from tinymodel import build_tiny_model
    from transformers import AutoTokenizer

    from fmllm_tui.runner.lean import RecipeError, set_pad_token

    folder = build_tiny_model("llama", pad_token=None)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.pad_token is None
    assert set_pad_token(tok, None) == "eos" and tok.pad_token == tok.eos_token
    tok = AutoTokenizer.from_pretrained(folder)
    assert set_pad_token(tok, "<|im_start|>") == "config" and tok.pad_token == "<|im_start|>"
    with pytest.raises(RecipeError, match="not a token of this tokenizer"):
        set_pad_token(AutoTokenizer.from_pretrained(folder), "<no-such-token>")
    own = AutoTokenizer.from_pretrained(build_tiny_model("qwen2"))
    assert set_pad_token(own, None) == "tokenizer"


def test_cpu_twin_of_a_catalogued_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU, a Hub id not on this machine: a tiny twin of its architecture from the catalogue,
    with a tokenizer trained on the data; never the network."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fmllm_tui.runner.smoke import cpu_model_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    records = [{"instruction": "say hello", "output": "hello there"}] * 4
    src, note = cpu_model_source("Qwen/Qwen2.5-7B-Instruct", {}, records, tmp_path)
    cfg = json.loads((Path(src) / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(src)
    assert cfg["model_type"] == "qwen2" and cfg["hidden_size"] == 64 and cfg["num_hidden_layers"] == 2
    assert len(tok) <= cfg["vocab_size"] <= len(tok) + 128 and cfg["tie_word_embeddings"] is False
    assert "catalogue" in note and "trained here" in note and "tiny randomly initialised qwen2" in note
    model = AutoModelForCausalLM.from_pretrained(src)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    with pytest.raises(ValueError, match="not available without the network"):
        cpu_model_source("nobody/no-such-model-xyz", {}, records, tmp_path)
