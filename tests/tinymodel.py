"""Tiny randomly initialised causal LMs of real architecture families, for tests.

``build_tiny_model("qwen2")`` returns a folder that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load: a real config.json, safetensors weights, and a real
byte-level BPE tokenizer trained here on data/sample_instructions.jsonl, with bos/eos/pad tokens
and a ChatML chat template. Builds are cached per (arch, overrides) in memory and on disk under
``tempfile.gettempdir()/fmllm-tiny-models/<key>`` (shared by processes, created atomically), so
only the first call in a machine's lifetime pays the few seconds it takes.

Overrides are config.json fields (``num_hidden_layers=3``, ``tie_word_embeddings=True``), except
these reserved keys, which shape the tokenizer: ``pad_token`` (``None`` = no pad token, as in
Llama 3), ``chat_template`` (``None`` = no template) and ``seed`` (weight initialisation).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

# Bump when the output layout changes so stale on-disk caches are not reused.
FACTORY_VERSION = 4
VOCAB_SIZE = 512
SAMPLE_DATA = Path(__file__).resolve().parent.parent / "data" / "sample_instructions.jsonl"
CACHE_ROOT = Path(tempfile.gettempdir()) / "fmllm-tiny-models"

PAD, BOS, EOS, IM_START = "<|endoftext|>", "<|startoftext|>", "<|im_end|>", "<|im_start|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START]

# ChatML with {% generation %} markers so return_assistant_tokens_mask works.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] }}{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "vocab_size": VOCAB_SIZE,
    "initializer_range": 0.02,
    "torch_dtype": "float32",
}

# Per family: the fields its real config.json carries beyond the common ones.
_ARCHS: dict[str, dict[str, Any]] = {
    "qwen2": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu",
              "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False,
              "use_sliding_window": False, "sliding_window": None},
    "qwen3": {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_act": "silu",
              "head_dim": 16, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
              "tie_word_embeddings": True, "attention_bias": False},
    "llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
              "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
              "attention_bias": False, "mlp_bias": False},
    "mistral": {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "hidden_act": "silu",
                "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "tie_word_embeddings": False,
                "sliding_window": None},
    "gemma2": {"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"],
               "hidden_activation": "gelu_pytorch_tanh", "head_dim": 16, "query_pre_attn_scalar": 16,
               "sliding_window": 32, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
               "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True},
    "phi3": {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "hidden_act": "silu",
             "num_key_value_heads": 4, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
             "tie_word_embeddings": False, "original_max_position_embeddings": 2048},
}
# Families whose real tokenizers put a bos token in front of every sequence.
_ADDS_BOS = {"llama", "mistral", "gemma2"}
_RESERVED = ("pad_token", "chat_template", "seed")
_UNSET: Any = object()

_memo: dict[str, Path] = {}
_lock = threading.Lock()


def tiny_archs() -> list[str]:
    """The architecture families the factory can build."""
    return sorted(_ARCHS)


def tiny_config_dict(arch: str = "qwen2", **overrides: Any) -> dict[str, Any]:
    """The config.json fields of a tiny model of ``arch`` (plain dict, no torch import).

    Token ids match the tokenizer ``build_tiny_model`` trains (pad 0, bos 1, eos 2).
    """
    if arch not in _ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; choose one of {', '.join(tiny_archs())}")
    cfg = {**_COMMON, **copy.deepcopy(_ARCHS[arch])}
    cfg.update({"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2})
    cfg.update({k: v for k, v in overrides.items() if k not in _RESERVED})
    if overrides.get("pad_token", _UNSET) is None:
        cfg["pad_token_id"] = None
    return cfg


def _cache_key(arch: str, overrides: dict[str, Any]) -> str:
    # Package metadata, not imports: a cache hit must not pay for importing transformers.
    versions = {name: metadata.version(name) for name in ("transformers", "tokenizers", "torch")}
    blob = json.dumps({"arch": arch, "overrides": overrides, "v": FACTORY_VERSION, **versions},
                      sort_keys=True, default=repr)
    return f"{arch}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _training_texts() -> list[str]:
    texts: list[str] = []
    with SAMPLE_DATA.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                texts.extend(v for v in row.values() if isinstance(v, str) and v)
    return texts


def _train_tokenizer(arch: str, pad_token: str | None, chat_template: str | None) -> Any:
    """Train a byte-level BPE on the sample data and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=1, show_progress=False,
                                  special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_texts(), trainer)
    if arch in _ADDS_BOS:
        bos_id = tok.token_to_id(BOS)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    kwargs: dict[str, Any] = {"bos_token": BOS, "eos_token": EOS}
    if pad_token is not None:
        kwargs["pad_token"] = pad_token
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    wrapped.add_special_tokens({"additional_special_tokens": [IM_START]})
    if chat_template is not None:
        wrapped.chat_template = chat_template
    wrapped.model_max_length = 2048
    return wrapped


def _build_into(folder: Path, arch: str, overrides: dict[str, Any]) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    pad_token = overrides.get("pad_token", PAD)
    chat_template = overrides.get("chat_template", CHAT_TEMPLATE)
    tokenizer = _train_tokenizer(arch, pad_token, chat_template)
    if len(tokenizer) != VOCAB_SIZE:
        raise RuntimeError(f"tiny tokenizer has {len(tokenizer)} tokens, expected {VOCAB_SIZE}")
    cfg = tiny_config_dict(arch, **overrides)
    model_type = cfg.pop("model_type")
    cfg.pop("architectures", None)
    dtype = cfg.pop("torch_dtype", "float32")
    config = AutoConfig.for_model(model_type, **cfg)
    torch.manual_seed(int(overrides.get("seed", 0)))
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=cfg["bos_token_id"], eos_token_id=cfg["eos_token_id"],
        pad_token_id=cfg["pad_token_id"])
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def build_tiny_model(arch: str = "qwen2", *, dest: str | os.PathLike[str] | None = None,
                     **overrides: Any) -> Path:
    """Build (or reuse) a tiny ``arch`` model folder and return its path.

    With ``dest`` the cached build is copied there (a private copy tests may modify);
    without it the shared cached folder is returned and must be treated as read-only.
    """
    if arch not in _ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; choose one of {', '.join(tiny_archs())}")
    key = _cache_key(arch, overrides)
    with _lock:
        path = _memo.get(key)
        if path is None or not (path / "config.json").is_file():
            path = _build_cached(key, arch, overrides)
            _memo[key] = path
    if dest is None:
        return path
    out = Path(dest)
    shutil.copytree(path, out, dirs_exist_ok=True)
    return out


def _build_cached(key: str, arch: str, overrides: dict[str, Any]) -> Path:
    final = CACHE_ROOT / key
    if (final / "config.json").is_file():
        return final
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    # Build beside the final folder, then rename: readers never see a half-written model.
    work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=CACHE_ROOT))
    try:
        _build_into(work, arch, overrides)
        # mkdtemp makes a private folder: open it up so other users of a shared /tmp can read it.
        os.chmod(work, 0o755)
        for f in work.iterdir():
            os.chmod(f, 0o644)
        try:
            os.rename(work, final)
        except OSError:
            # Another process won the race (final exists and is complete): use theirs.
            if not (final / "config.json").is_file():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return final
