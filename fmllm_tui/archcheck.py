"""Do the LoRA target modules exist in this model's architecture?

The architecture is built from its config.json on the meta device (no weights, no memory, no
download) and its module names are read off the real model class, so the answer matches what
PEFT will see. A target name matches a module when it equals the module's full name or ends
it after a dot (PEFT's rule); a plain string other than "all-linear" is a regular expression
matched against full names, as in PEFT. Remote-code models (``auto_map`` for a model type
transformers doesn't know) are only built when the person allowed remote code.

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

# Module names other architectures use for the same role, to turn a name copied from another
# model ("query", "c_attn", "w1") into this model's name.
_ROLES: dict[str, set[str]] = {
    "q": {"q_proj", "query", "q", "wq", "to_q", "q_lin", "query_proj", "q_linear"},
    "k": {"k_proj", "key", "k", "wk", "to_k", "k_lin", "key_proj", "k_linear"},
    "v": {"v_proj", "value", "v", "wv", "to_v", "v_lin", "value_proj", "v_linear"},
    "o": {"o_proj", "out_proj", "o", "wo", "dense", "to_out", "out_lin", "c_proj", "attn_out", "output_proj"},
    "qkv": {"qkv_proj", "query_key_value", "c_attn", "wqkv", "qkv", "w_pack", "in_proj"},
    "gate": {"gate_proj", "gate", "w1", "fc_gate"},
    "up": {"up_proj", "up", "w3", "fc1", "c_fc", "dense_h_to_4h", "fc_in"},
    "down": {"down_proj", "down", "w2", "fc2", "dense_4h_to_h", "fc_out"},
    "gate_up": {"gate_up_proj", "gate_up"},
}
# Where a role's weights live when the architecture fuses projections.
_FUSED = {"q": ("qkv",), "k": ("qkv",), "v": ("qkv",), "qkv": ("q", "k", "v"),
          "gate": ("gate_up",), "up": ("gate_up",), "gate_up": ("gate", "up")}


class ArchCheckError(Exception):
    """The architecture could not be built, in plain words (``str(err)``)."""


@dataclass
class TargetCheck:
    """The answer for one model and one target_modules setting."""

    model_id: str
    checked: bool
    ok: bool
    message: str
    source: str = "none"
    missing: list[str] = field(default_factory=list)
    available: list[str] = field(default_factory=list)
    suggestions: dict[str, list[str]] = field(default_factory=dict)
    remedy: str | None = None


def _native_model_type(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def _config_key(config_dict: dict[str, Any]) -> str:
    return json.dumps(config_dict, sort_keys=True, default=str)


def _build_config(config_dict: dict[str, Any], trust_remote_code: bool, source: str | None) -> Any:
    from transformers import AutoConfig

    model_type = config_dict.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ArchCheckError("config.json has no model_type, so the architecture is unknown")
    if not _native_model_type(model_type):
        if not config_dict.get("auto_map"):
            raise ArchCheckError(f"this transformers version does not know model_type {model_type!r}; "
                                 "upgrade transformers (pip install -U transformers)")
        if not trust_remote_code:
            raise ArchCheckError(f"model_type {model_type!r} needs the model's own code (auto_map in config.json), "
                                 "so its modules can't be checked without trust_remote_code")
        if not source:
            raise ArchCheckError("checking a remote-code model needs its Hub id or folder, not just its config")
        return AutoConfig.from_pretrained(source, trust_remote_code=True)
    kwargs = {k: v for k, v in config_dict.items() if k not in ("model_type", "auto_map", "transformers_version")}
    try:
        return AutoConfig.for_model(model_type, **kwargs)
    except Exception as e:  # the config's own values are at fault (wrong types, bad combinations)
        raise ArchCheckError(f"config.json could not be read as a {model_type} config: "
                             f"{str(e).strip().splitlines()[-1].strip()}") from e


@lru_cache(maxsize=16)
def _module_table(key: str, trust_remote_code: bool, source: str | None) -> tuple[tuple[str, str], ...]:
    """(full module name, kind) for every module, kind "linear", "lora" (other LoRA-able) or "other"."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    config = _build_config(json.loads(key), trust_remote_code, source)
    try:
        # Meta device: shapes only, no memory and no weights.
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as e:  # e.g. a config class with no causal-LM model, or inconsistent sizes
        raise ArchCheckError(f"transformers could not build this architecture as a causal LM: "
                             f"{str(e).strip().splitlines()[-1].strip()}") from e
    out_emb = model.get_output_embeddings()
    lora_able: tuple[type, ...] = (nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)
    try:
        from transformers.pytorch_utils import Conv1D

        lora_able += (Conv1D,)
    except ImportError:  # older/newer transformers without GPT-2's Conv1D
        pass
    table: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        if not name:
            continue
        if isinstance(module, nn.Linear) and module is not out_emb and name.rsplit(".", 1)[-1] != "lm_head":
            table.append((name, "linear"))
        elif isinstance(module, (nn.Linear, *lora_able)):
            table.append((name, "lora"))
        else:
            table.append((name, "other"))
    return tuple(table)


# ---- a torch-free fast path -----------------------------------------------------------------
# Building a model on the meta device needs torch and transformers (several seconds to import).
# Module names depend on the model type's code and a few structural settings, not on sizes or
# depth, so tables with layer indices collapsed to 0 are kept per "shape key": shipped for the
# catalogue's architectures (data/module_tables.json, verified against real builds by
# tests/test_archcheck.py) and cached per user (~/.cache/fmllm/module_tables.json) for others.
_SHAPE_FIELDS = ("model_type", "num_local_experts", "num_experts", "n_routed_experts", "tie_word_embeddings",
                 "num_experts_per_tok", "moe_intermediate_size", "first_k_dense_replace", "q_lora_rank",
                 "kv_lora_rank", "attention_bias", "mlp_bias")
_LAYER_INDEX = re.compile(r"\.(\d+)(?=\.|$)")
_SHIPPED_TABLES = Path(__file__).parent / "data" / "module_tables.json"


def shape_key(config_dict: dict[str, Any]) -> str:
    """What a module table depends on: the model type and a few structural settings."""
    return json.dumps({k: config_dict.get(k) for k in _SHAPE_FIELDS if k in config_dict}, sort_keys=True, default=str)


def collapse(table: tuple[tuple[str, str], ...]) -> list[list[str]]:
    """The table with every numeric index replaced by 0 (one layer, one expert), order kept."""
    seen: dict[str, str] = {}
    for name, kind in table:
        seen.setdefault(_LAYER_INDEX.sub(".0", name), kind)
    return [[n, k] for n, k in seen.items()]


def _user_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fmllm" / "module_tables.json"


@lru_cache(maxsize=2)
def _load_tables(path: str) -> dict[str, list[list[str]]]:
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _cached_table(config_dict: dict[str, Any]) -> tuple[tuple[str, str], ...] | None:
    key = shape_key(config_dict)
    for path in (_SHIPPED_TABLES, _user_cache_path()):
        rows = _load_tables(str(path)).get(key)
        if rows:
            return tuple((n, k) for n, k in rows)
    return None


def _remember(config_dict: dict[str, Any], table: tuple[tuple[str, str], ...]) -> None:
    path = _user_cache_path()
    try:
        data = dict(_load_tables(str(path)))
        data[shape_key(config_dict)] = collapse(table)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
        _load_tables.cache_clear()
    except OSError:  # a read-only home: stay correct, just slower next time
        pass


def _table(config_dict: dict[str, Any], trust_remote_code: bool = False,
           source: str | None = None, *, exact: bool = False) -> tuple[tuple[str, str], ...]:
    """The module table; from the cache unless ``exact`` (regex targets need real layer indices)
    or the model needs its own code."""
    remote = bool(config_dict.get("auto_map")) and trust_remote_code
    if not exact and not remote:
        hit = _cached_table(config_dict)
        if hit is not None:
            return hit
    table = _module_table(_config_key(config_dict), trust_remote_code, source)
    if not remote:
        _remember(config_dict, table)
    return table


def linear_module_names(config_dict: dict[str, Any], *, trust_remote_code: bool = False,
                        source: str | None = None) -> set[str]:
    """Leaf names of the nn.Linear modules of the architecture, without the output head (lm_head).

    Raises ArchCheckError (plain words) when the architecture can't be built.
    """
    return {name.rsplit(".", 1)[-1] for name, kind in _table(config_dict, trust_remote_code, source)
            if kind == "linear"}


def _matches(target: str, full_names: list[str]) -> bool:
    return any(n == target or n.endswith("." + target) for n in full_names)


def check_target_modules(config_dict: dict[str, Any], target_modules: list[str] | str, *,
                         trust_remote_code: bool = False, source: str | None = None
                         ) -> tuple[list[str], list[str]]:
    """(missing, available): the targets that match no LoRA-able module, and the linear leaf names.

    ``target_modules`` is a list of names (PEFT suffix matching), "all-linear", or a regular
    expression string matched against full module names. Missing names keep their spelling.
    """
    regex = isinstance(target_modules, str) and target_modules.strip().lower() != "all-linear"
    table = _table(config_dict, trust_remote_code, source, exact=regex)
    available = sorted({n.rsplit(".", 1)[-1] for n, kind in table if kind == "linear"})
    adaptable = [n for n, kind in table if kind != "other"]
    if isinstance(target_modules, str):
        if target_modules.strip().lower() == "all-linear":
            return [], available
        try:
            pattern = re.compile(target_modules)
        except re.error:
            return [target_modules], available
        return ([] if any(pattern.fullmatch(n) for n in adaptable) else [target_modules]), available
    missing = [t for t in target_modules if not isinstance(t, str) or not _matches(t, adaptable)]
    return [str(t) for t in missing], available


def _role(name: str) -> str | None:
    key = name.strip().lower().rsplit(".", 1)[-1]
    return next((role for role, names in _ROLES.items() if key in names), None)


def suggest_modules(wrong: str, available: list[str] | set[str], n: int = 3) -> list[str]:
    """Did-you-mean for a target module name, among this architecture's ``available`` names."""
    avail = sorted(available)
    clean = wrong.strip()
    lower = {a.lower(): a for a in avail}
    if clean.lower() in lower:  # "q_proj " or "Q_PROJ"
        return [lower[clean.lower()]]
    squashed = {re.sub(r"[^a-z0-9]", "", a.lower()): a for a in avail}
    key = re.sub(r"[^a-z0-9]", "", clean.lower().rsplit(".", 1)[-1])
    out: list[str] = []
    if key in squashed:  # "qproj", "q-proj"
        out.append(squashed[key])
    role = _role(clean)
    if role:
        roles = (role, *_FUSED.get(role, ()))
        out.extend(a for r in roles for a in avail if _role(a) == r)
    if not out:
        out.extend(difflib.get_close_matches(clean.lower(), avail, n=n, cutoff=0.6))
    return list(dict.fromkeys(out))[:n]


def describe_missing(missing: list[str], available: list[str], *,
                     config_dict: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """Did-you-mean suggestions for each missing target name.

    With ``config_dict``, a name that is a container ("mlp", "self_attn") suggests the linear
    layers inside it.
    """
    table = _table(config_dict) if config_dict is not None else ()
    out: dict[str, list[str]] = {}
    for m in missing:
        sugg = suggest_modules(m, available)
        if not sugg and table:
            key = m.strip()
            inner = [n for n, kind in table if kind == "linear"
                     and (f".{key}." in f".{n}" and not n.endswith(f".{key}"))]
            sugg = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in inner))
        out[m] = sugg
    return out


def check_model_targets(model_id: str, target_modules: list[str] | str, *, revision: str | None = None,
                        offline: bool | None = None, trust_remote_code: bool = False) -> TargetCheck:
    """Resolve ``model_id``'s config (local, Hub, cache, catalogue) and check ``target_modules`` in it."""
    from fmllm_tui.hub import resolve_config

    config, source = resolve_config(model_id, revision=revision, offline=offline)
    if config is None:
        return TargetCheck(model_id, False, False,
                           f"the architecture of {model_id} is unknown (no config.json from a local folder, "
                           "the Hub, the cache or fmllm's catalogue), so target_modules can't be checked",
                           remedy="fix the model id first (see the model check)")
    try:
        missing, available = check_target_modules(config, target_modules, trust_remote_code=trust_remote_code,
                                                  source=model_id)
    except ArchCheckError as e:
        return TargetCheck(model_id, False, False, f"target_modules of {model_id} can't be checked: {e}",
                           source=source,
                           remedy=("set fmllm.trust_remote_code: true if you trust this model's code"
                                   if "trust_remote_code" in str(e) else None))
    if not missing:
        what = "all linear layers" if isinstance(target_modules, str) else ", ".join(target_modules)
        return TargetCheck(model_id, True, True, f"{what}: present in {model_id}",
                           source=source, available=available)
    suggestions = describe_missing(missing, available, config_dict=config)
    parts = []
    for m in missing:
        hint = f" (did you mean {', '.join(suggestions[m])}?)" if suggestions[m] else ""
        parts.append(f"{m!r}{hint}")
    msg = (f"{model_id} has no module named {', '.join(parts)}; "
           f"its linear layers are {', '.join(available)}")
    fix = [suggestions[m][0] if suggestions[m] else None for m in missing]
    remedy = ("use target_modules: " + ", ".join(dict.fromkeys(
        [t for t in (target_modules if isinstance(target_modules, list) else []) if t not in missing]
        + [f for f in fix if f])) if all(fix) else "use names from the list above, or 'all-linear'")
    return TargetCheck(model_id, True, False, msg, source=source, missing=missing, available=available,
                       suggestions=suggestions, remedy=remedy)


def build_shipped_tables(config_dicts: list[dict[str, Any]]) -> dict[str, list[list[str]]]:
    """Module tables for the given architectures, built on the meta device (bench/ and tests)."""
    return {shape_key(c): collapse(_module_table(_config_key(c), False, None)) for c in config_dicts}
