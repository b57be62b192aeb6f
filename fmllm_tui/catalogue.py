"""The shipped catalogue of popular base models: architecture config, gating, did-you-mean.

The data (``data/architectures.json``) holds, per Hub model id, the config.json fields that
matter for memory planning and LoRA targets, whether the repo is gated on the Hub, and its
family and size. It lets fmllm plan and check without the network and suggest the id a person
probably meant when theirs does not exist. Pure Python: no torch, no network.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from typing import Any

# A size token inside a model name: "7B", "0.5B", "1.7b", "135M", "8x7B".
_SIZE_RE = re.compile(r"(?<![A-Za-z0-9.])(?:(\d+)x)?(\d+(?:\.\d+)?)([BbMm])(?![A-Za-z])")


@lru_cache(maxsize=1)
def _data() -> dict[str, dict[str, Any]]:
    raw = resources.files("fmllm_tui").joinpath("data/architectures.json").read_text(encoding="utf-8")
    return json.loads(raw)["models"]


@lru_cache(maxsize=1)
def _by_lower() -> dict[str, str]:
    return {k.lower(): k for k in _data()}


def known_model_ids() -> list[str]:
    """Every model id in the catalogue, sorted case-insensitively."""
    return sorted(_data(), key=str.lower)


def canonical_id(model_id: str) -> str | None:
    """The catalogue's spelling of ``model_id`` (matched case-insensitively), or None."""
    return _by_lower().get(model_id.strip().lower())


def catalogue_entry(model_id: str) -> dict[str, Any] | None:
    """The full entry (family, size, gated, config, ...) for ``model_id``, or None (a copy)."""
    key = canonical_id(model_id)
    return copy.deepcopy(_data()[key]) if key else None


def get_architecture(model_id: str) -> dict[str, Any] | None:
    """The config.json fields of ``model_id`` (case-insensitive), or None when not catalogued."""
    entry = catalogue_entry(model_id)
    return entry["config"] if entry else None


def gated_status(model_id: str) -> str | bool | None:
    """False, "auto" or "manual" as on the Hub; None when the id is not catalogued."""
    entry = catalogue_entry(model_id)
    return entry["gated"] if entry else None


def size_in_billions(model_id: str) -> float | None:
    """The parameter count a model name announces ("Qwen2.5-7B" -> 7.0, "8x7B" -> 56.0)."""
    name = model_id.rsplit("/", 1)[-1]
    m = _SIZE_RE.search(name)
    if not m:
        return None
    experts = int(m.group(1)) if m.group(1) else 1
    value = float(m.group(2)) * experts
    return value / 1000.0 if m.group(3) in "Mm" else value


def _stem(model_id: str) -> str:
    """The name with its size replaced by '{}', lower-cased: the model family and variant."""
    name = model_id.rsplit("/", 1)[-1].lower()
    return _SIZE_RE.sub("{}", name, count=1)


def _org(model_id: str) -> str:
    return model_id.split("/", 1)[0].lower() if "/" in model_id else ""


def _score(wrong: str, candidate: str) -> float:
    """How likely ``candidate`` is what a person typing ``wrong`` meant (higher is closer)."""
    w, c = wrong.strip().lower(), candidate.lower()
    w_name, c_name = w.rsplit("/", 1)[-1], c.rsplit("/", 1)[-1]
    score = max(difflib.SequenceMatcher(None, w, c).ratio(),
                difflib.SequenceMatcher(None, w_name, c_name).ratio())
    if _org(w) and _org(w) == _org(c):
        score += 0.2
    if _stem(w) == _stem(c):
        score += 0.4
    elif len(w_name) >= 4 and c_name.startswith(w_name):
        # A truncated id ("phi-3-mini") most likely means the full name it starts.
        score += 0.3
    ws, cs = size_in_billions(w), size_in_billions(c)
    if ws and cs:
        # Same family, nearest size first: the penalty grows with the size ratio (log scale).
        score += 0.3 * (1.0 - min(1.0, abs(math.log(ws / cs)) / math.log(10)))
    return score


def rank_ids(wrong_id: str, candidates: Iterable[str], n: int = 3, *, cutoff: float = 0.45) -> list[str]:
    """The ``n`` candidates closest to ``wrong_id`` (did-you-mean), best first; never ``wrong_id`` itself."""
    seen: set[str] = set()
    scored: list[tuple[float, str]] = []
    for cand in candidates:
        key = cand.lower()
        if key in seen or cand == wrong_id.strip():
            continue
        seen.add(key)
        s = _score(wrong_id, cand)
        if s >= cutoff:
            scored.append((s, cand))
    scored.sort(key=lambda t: (-t[0], t[1].lower()))
    return [c for _, c in scored[:n]]


def suggest_ids(wrong_id: str, n: int = 3) -> list[str]:
    """Catalogue ids a person probably meant by ``wrong_id``, best first.

    Prefers the same family and organisation, then the nearest size:
    ``Qwen/Qwen2.5-15B-Instruct`` -> ``Qwen/Qwen2.5-14B-Instruct`` first.
    """
    return rank_ids(wrong_id, known_model_ids(), n)


def _head_dim(arch: dict[str, Any]) -> int:
    hd = arch.get("head_dim")
    return int(hd) if hd else int(arch["hidden_size"]) // int(arch["num_attention_heads"])


def param_count(arch: dict[str, Any]) -> int:
    """Parameters of the text model a config describes (dense decoder families).

    Counts embeddings, the untied output head, attention (with Qwen2's qkv bias), the gated
    MLP, norms (Gemma's four per layer, Qwen3/Gemma3's q/k norms). Exact for the catalogued
    families, e.g. Qwen2.5-7B -> 7,615,616,512; an estimate for other dense architectures.
    """
    if "text_config" in arch and "hidden_size" not in arch:
        arch = arch["text_config"]
    h = int(arch["hidden_size"])
    inter = int(arch["intermediate_size"])
    layers = int(arch["num_hidden_layers"])
    heads = int(arch["num_attention_heads"])
    kv = int(arch.get("num_key_value_heads") or heads)
    vocab = int(arch["vocab_size"])
    hd = _head_dim(arch)
    model_type = str(arch.get("model_type", ""))
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    if model_type == "qwen2" or arch.get("attention_bias"):
        attn += heads * hd + 2 * kv * hd + (h if arch.get("attention_bias") and model_type != "qwen2" else 0)
    mlp = 3 * h * inter + (3 * inter if arch.get("mlp_bias") else 0)
    norms = 4 * h if model_type.startswith("gemma2") or model_type.startswith("gemma3") else 2 * h
    if model_type in ("qwen3", "gemma3_text", "gemma3"):
        norms += 2 * hd
    tied = arch.get("tie_word_embeddings")
    if tied is None:
        tied = model_type.startswith("gemma")
    return vocab * h * (1 if tied else 2) + layers * (attn + mlp + norms) + h
