"""The CPU fallback: a tiny randomly initialised model of the configured architecture.

With no CUDA GPU the minimal test still runs the whole pipeline (load, LoRA, steps, save,
reload, generate) — on a shrunk model of the same ``model_type``:

* its config comes from the model folder, the local Hugging Face cache, or fmllm's catalogue
  (``fmllm_tui.catalogue.get_architecture``), never from the network;
* its tokenizer is the real one when it is available locally, else a byte-level BPE trained here
  on the training data with the ``tokenizers`` library.

A model small enough to train on the CPU as it is (a local folder of a tiny model) is used as it
is. Everything here is said plainly in the run's report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# A model with more parameters than this is replaced by its tiny twin on the CPU.
CPU_MAX_PARAMS = 300_000_000
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}
# Config fields that describe the full-size model's shapes or loading and would break a tiny copy.
_DROP = ("quantization_config", "head_dim", "layer_types", "max_window_layers", "num_experts",
         "num_local_experts", "moe_intermediate_size", "shared_expert_intermediate_size",
         "auto_map", "_name_or_path", "transformers_version", "rope_scaling", "rope_parameters")


def estimate_params(cfg: dict[str, Any]) -> int:
    """Rough parameter count of a decoder-only config (embeddings, attention, MLP)."""
    h = int(cfg.get("hidden_size") or cfg.get("n_embd") or 0)
    layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or 0)
    inter = int(cfg.get("intermediate_size") or 4 * h)
    vocab = int(cfg.get("vocab_size") or 0)
    heads = int(cfg.get("num_attention_heads") or 1)
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or (h // max(1, heads)))
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    emb = vocab * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return emb + layers * (attn + 3 * h * inter)


def local_model_config(name: str, *, revision: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """(config.json fields, where from) for ``name`` without the network; (None, why) if unknown."""
    p = Path(os.path.expanduser(name))
    if p.is_dir():
        f = p / "config.json"
        if f.is_file():
            return json.loads(f.read_text(encoding="utf-8")), f"the model folder {p}"
        return None, f"{p} has no config.json"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id=name, filename="config.json", revision=revision)
        if isinstance(cached, str) and os.path.isfile(cached):
            return json.loads(Path(cached).read_text(encoding="utf-8")), "the local Hugging Face cache"
    except Exception:  # an id that is not a valid repo id: fall through to the catalogue
        pass
    try:
        from fmllm_tui.catalogue import get_architecture
    except ImportError:
        get_architecture = None  # type: ignore[assignment]
    if get_architecture is not None:
        arch = get_architecture(name)
        if arch:
            return dict(arch), "fmllm's catalogue"
    return None, (f"the architecture of {name!r} is not available without the network (not a folder, not in "
                  "the local Hugging Face cache, not in fmllm's catalogue)")


def shrink_config(cfg: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """The same ``model_type`` at toy size, with ``vocab_size`` matching the tokenizer."""
    out = {k: v for k, v in cfg.items() if k not in _DROP}
    out.update(TINY)
    heads, kv = int(cfg.get("num_attention_heads") or 4), int(cfg.get("num_key_value_heads") or 0)
    if kv and kv == heads:
        out["num_key_value_heads"] = TINY["num_attention_heads"]  # keep plain multi-head attention
    out["vocab_size"] = vocab_size
    out["max_position_embeddings"] = min(int(cfg.get("max_position_embeddings") or 4096), 4096)
    if "sliding_window" in cfg and cfg.get("sliding_window"):
        out["sliding_window"] = min(int(cfg["sliding_window"]), 4096)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        out.pop(key, None)
    return out


def local_tokenizer(name: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any | None:
    """The model's real tokenizer if it is on this machine, else None (never downloads)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, revision=revision, local_files_only=True,
                                             trust_remote_code=trust_remote_code)
    except Exception:  # missing files, offline, unknown id: all mean "not here"
        return None


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> Any:
    """A byte-level BPE trained on ``texts``, with pad/bos/eos tokens, for a tiny model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|bos|>", "<|eos|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts or ["fmllm"], trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>",
                                      eos_token="<|eos|>")
    wrapped.model_max_length = 4096
    return wrapped


def texts_of(records: list[dict[str, Any]]) -> list[str]:
    """Every string in the records (for training a tokenizer)."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for r in records:
        walk(r)
    return out


def build_tiny_twin(arch_cfg: dict[str, Any], tokenizer: Any, dest: Path, *, seed: int = 0) -> Path:
    """Save a randomly initialised tiny model of ``arch_cfg``'s type, with ``tokenizer``, to ``dest``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    # Room for special tokens a tokenizer class may add when the folder is reloaded.
    small = shrink_config(arch_cfg, ((len(tokenizer) + 64 + 63) // 64) * 64)
    model_type = small.pop("model_type", None)
    if not model_type:
        raise ValueError("the model's config has no model_type")
    small.pop("architectures", None)
    small.pop("torch_dtype", None)
    small.pop("dtype", None)
    small["pad_token_id"] = tokenizer.pad_token_id
    small["bos_token_id"] = tokenizer.bos_token_id
    small["eos_token_id"] = tokenizer.eos_token_id
    config = AutoConfig.for_model(model_type, **small)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    from transformers import AutoTokenizer

    reloaded = len(AutoTokenizer.from_pretrained(dest))
    if reloaded > small["vocab_size"]:
        raise ValueError(f"the tiny model's tokenizer has {reloaded} tokens, more than its {small['vocab_size']} embeddings")
    return dest


def cpu_model_source(name: str, cfg: dict[str, Any], records: list[dict[str, Any]], workdir: Path) -> tuple[str, str]:
    """Where the CPU run loads its model from, and a plain sentence saying what it is.

    Raises ValueError (plain words) when the architecture cannot be found locally.
    """
    fm = cfg.get("fmllm", {})
    arch, where = local_model_config(name, revision=fm.get("revision"))
    if arch is None:
        raise ValueError(f"no CUDA GPU, and {where}. Run on a machine with a GPU, or download the model's "
                         f"config first (hf download {name} config.json)")
    n = estimate_params(arch)
    if Path(os.path.expanduser(name)).is_dir() and n <= CPU_MAX_PARAMS:
        return name, f"no CUDA GPU: trained {name} itself on the CPU (about {n / 1e6:.1f}M parameters)"
    tok = local_tokenizer(name, revision=fm.get("revision"), trust_remote_code=bool(fm.get("trust_remote_code")))
    tok_note = "its real tokenizer"
    if tok is None:
        tok = train_tokenizer(texts_of(records))
        tok_note = "a 512-token tokenizer trained here on your data (the real one is not on this machine)"
    dest = workdir / "tiny-model"
    build_tiny_twin(arch, tok, dest)
    return str(dest), (f"no CUDA GPU: ran on the CPU with a tiny randomly initialised {arch.get('model_type')} "
                       f"model (the architecture of {name} from {where}, shrunk to 2 layers of width 64) and "
                       f"{tok_note}; memory and speed say nothing about the real model on a GPU")
