"""The fixers: one per failing check that has a config-level remedy.

A fixer reads the loaded config and the check's finding values and returns the changes it will
make, as absolute values (``key`` -> ``to``) in the person's dotted file keys, so applying the
same plan twice changes nothing the second time. A plan is empty when the config already says
what the fix would write.

Findings whose remedy is not a config edit (an environment variable, a package, a Hub login)
get a shell command instead: :func:`shell_fix`.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fmllm_tui.config import LoadedConfig, to_plain
from fmllm_tui.findings import Change, Fix
from fmllm_tui.redact import mask_text
from fmllm_tui.units import gib

from .engine import already, get_path, is_missing
from .errors import FixError
from .schema import known_canonical

Planner = Callable[[LoadedConfig, dict[str, Any]], list[Change]]


@dataclass(frozen=True)
class Fixer:
    """A named remedy: ``plan(loaded, values)`` gives the changes it would make."""

    id: str
    title: str
    description: str
    planner: Planner

    def plan(self, loaded: LoadedConfig, values: dict[str, Any] | None = None) -> list[Change]:
        """The changes this fix makes to ``loaded`` given the finding's ``values``."""
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise FixError(f"fix {self.id}: the finding's values must be a mapping, got {type(values).__name__}")
        return self.planner(loaded, values)


FIXERS: dict[str, Fixer] = {}


def _fixer(fix_id: str, title: str, description: str) -> Callable[[Planner], Planner]:
    def register(fn: Planner) -> Planner:
        FIXERS[fix_id] = Fixer(fix_id, title, description, fn)
        return fn

    return register


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def current(loaded: LoadedConfig, canonical: str) -> Any:
    """The value the person's file holds for a canonical setting (None when absent)."""
    value = get_path(to_plain(loaded.doc), loaded.file_key(canonical))
    return None if is_missing(value) else value


def present(loaded: LoadedConfig, canonical: str) -> bool:
    return not is_missing(get_path(to_plain(loaded.doc), loaded.file_key(canonical)))


def change(loaded: LoadedConfig, canonical: str, to: Any, why: str) -> list[Change]:
    """One change of a canonical setting, or none when the file already holds ``to``."""
    fk = loaded.file_key(canonical)
    plain = to_plain(loaded.doc)
    if already(plain, fk, to):
        return []
    old = get_path(plain, fk)
    return [Change(key=fk, to=to, from_=None if is_missing(old) else old, comment=why)]


_gib = gib


def _saving_note(saving: float | None) -> str:
    """`` (saves ~X GiB)`` for a predicted saving; negative: the change spends memory the plan has
    to spare (e.g. a longer sequence); nothing when the finding does not say."""
    if not saving:
        return ""
    return f" (saves ~{_gib(saving)})" if saving > 0 else f" (uses ~{_gib(-saving)} more)"


def _req(values: dict[str, Any], name: str, fix_id: str, what: str) -> Any:
    if name not in values or values[name] in (None, "", []):
        raise FixError(
            f"fix {fix_id}: the finding does not say {what} (no {name!r} in its values)",
            hint="run the check again (fmllm-check --json shows its values); this is a bug in the check if it persists",
        )
    return values[name]


def _dtype_changes(loaded: LoadedConfig, target: str, why: str) -> list[Change]:
    """Compute dtype, plus training.fp16/bf16 kept consistent with it when the file sets them."""
    out = change(loaded, "quantization.bnb_4bit_compute_dtype", target, why)
    has_fp16, has_bf16 = present(loaded, "training.fp16"), present(loaded, "training.bf16")
    if has_fp16 or has_bf16:
        mixed = bool(current(loaded, "training.fp16")) or bool(current(loaded, "training.bf16"))
        want = {"training.fp16": mixed and target == "float16", "training.bf16": mixed and target == "bfloat16"}
        for key, on in want.items():
            if present(loaded, key) or on:
                out += change(loaded, key, on, f"mixed precision follows the compute dtype ({target})")
    return out


def summarize(changes: list[Change]) -> str:
    """Person-facing lines, one per change: key, old -> new, and why."""
    lines = []
    for ch in changes:
        old = "(not set)" if ch.from_ is None else repr(ch.from_)
        why = f"  ({ch.comment})" if ch.comment else ""
        lines.append(f"{ch.key}: {old} -> {ch.to!r}{why}")
    return mask_text("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Fixers
# --------------------------------------------------------------------------------------------


@_fixer("memory.fit", "Make the run fit the GPU", "apply the memory model's change set, each change with its predicted saving")
def _memory_fit(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: ``changes``: findings.Change with canonical keys, as fmllm_tui.fitsearch lists
    them: ``to``, ``comment`` (why) and ``saving_bytes`` (predicted saving, negative when the
    change spends memory; None: not said). Each becomes the edit of the file's own key."""
    items = values.get("changes")
    if not isinstance(items, list) or not items:
        raise FixError(
            "the memory model found no change set that fits this GPU, so there is nothing to apply",
            hint="use a smaller model or a GPU with more memory; `fmllm-check --json` shows the prediction",
        )
    out: list[Change] = []
    for item in items:
        if not isinstance(item, Change):
            raise FixError(f"fix memory.fit: malformed change {item!r}; expected a findings.Change")
        if not known_canonical(item.key):
            raise FixError(f"fix memory.fit: {item.key!r} is not a setting fmllm knows; nothing was applied")
        out += change(loaded, item.key, item.to, (item.comment or "fits the GPU memory budget") + _saving_note(item.saving_bytes))
    return out


def _suggestion_id(s: Any) -> str | None:
    if isinstance(s, str) and s.strip():
        return s.strip()
    if isinstance(s, dict):
        for name in ("id", "repo_id", "model"):
            if isinstance(s.get(name), str) and s[name].strip():
                return s[name].strip()
    return None


@_fixer("model.id", "Use an existing model id", "replace a model id that does not exist with the chosen suggestion")
def _model_id(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: ``suggestions`` (ids or {"id": ...}, best first); optional ``choice`` (an id or
    an index into suggestions, from the TUI). Without a choice the top suggestion is taken."""
    raw = values.get("suggestions") or []
    suggestions = [i for i in (_suggestion_id(s) for s in raw) if i]
    choice = values.get("choice")
    if isinstance(choice, int) and not isinstance(choice, bool):
        if not 0 <= choice < len(suggestions):
            raise FixError(f"fix model.id: choice {choice} is not one of the {len(suggestions)} suggestions")
        chosen, how = suggestions[choice], "chosen suggestion"
    elif isinstance(choice, str) and choice.strip():
        chosen, how = choice.strip(), "chosen id"
    elif suggestions:
        chosen = suggestions[0]
        others = f"; others: {', '.join(suggestions[1:4])}" if len(suggestions) > 1 else ""
        how = f"top of {len(suggestions)} suggestion{'s' if len(suggestions) > 1 else ''}, taken without asking{others}"
    else:
        raise FixError(
            "fix model.id: no similar model id was found to suggest",
            hint="check the spelling on the Hub, or point base_model_name at a local model folder",
        )
    old = current(loaded, "base_model_name")
    out = change(loaded, "base_model_name", chosen, f"replaces {old!r} ({how})")
    if out and current(loaded, "fmllm.revision"):
        # A pinned commit belongs to the old repository; keep the key, clear the value.
        out += change(loaded, "fmllm.revision", None, "the pinned revision was a commit of the old model")
    return out


def _bf16_ok(values: dict[str, Any]) -> bool | None:
    if isinstance(values.get("bf16_supported"), bool):
        return values["bf16_supported"]
    cc = values.get("compute_capability")
    if isinstance(cc, (list, tuple)) and cc:
        return int(cc[0]) >= 8
    if isinstance(cc, (int, float)) and not isinstance(cc, bool):
        return cc >= 8
    if isinstance(cc, str) and re.match(r"^\d+(\.\d+)?$", cc.strip()):
        return float(cc) >= 8
    return None


@_fixer("dtype.compute", "Use the compute dtype this GPU supports", "bfloat16 -> float16 before Ampere, float16 -> bfloat16 from Ampere on")
def _dtype_compute(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: ``to`` ("float16"|"bfloat16"), or ``bf16_supported`` (bool), or
    ``compute_capability`` ([8, 6], "8.6" or 8.6)."""
    target = values.get("to")
    if target is None:
        ok = _bf16_ok(values)
        if ok is None:
            _req(values, "bf16_supported", "dtype.compute", "whether the GPU supports bfloat16")
        target = "bfloat16" if ok else "float16"
    if target not in ("float16", "bfloat16", "float32"):
        raise FixError(f"fix dtype.compute: {target!r} is not a compute dtype (float16, bfloat16, float32)")
    why = (
        "bfloat16 is native on Ampere and newer and does not overflow like float16"
        if target == "bfloat16"
        else "this GPU has no bfloat16 (it predates Ampere)"
        if target == "float16"
        else "float32 compute"
    )
    return _dtype_changes(loaded, target, why)


@_fixer("attn.sdpa", "Use SDPA attention", "flash_attention_2 -> sdpa when flash-attn cannot be used")
def _attn(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: optional ``to`` ("sdpa" or "eager"), optional ``reason``."""
    to = values.get("to", "sdpa")
    if to not in ("sdpa", "eager"):
        raise FixError(f"fix attn.sdpa: {to!r} is not sdpa or eager")
    reason = values.get("reason") or "flash-attn cannot be used here"
    return change(loaded, "fmllm.attn_implementation", to, f"{reason}; {to} needs no extra package")


@_fixer("training.gc_reentrant", "Non-reentrant gradient checkpointing", "set gradient_checkpointing_kwargs.use_reentrant: false")
def _gc_reentrant(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: optional ``use_reentrant`` (default False)."""
    flag = values.get("use_reentrant", False)
    if not isinstance(flag, bool):
        raise FixError("fix training.gc_reentrant: use_reentrant must be true or false")
    kwargs = current(loaded, "training.gradient_checkpointing_kwargs")
    why = "reentrant checkpointing breaks with PEFT inputs and under DDP" if not flag else "required by this setup"
    if isinstance(kwargs, dict):
        return change(loaded, "training.gradient_checkpointing_kwargs.use_reentrant", flag, why)
    return change(loaded, "training.gradient_checkpointing_kwargs", {"use_reentrant": flag}, why)


@_fixer("tokenizer.pad_token", "Give the tokenizer a pad token", "set fmllm.pad_token")
def _pad_token(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: ``pad_token`` (preferred) or ``eos_token`` (used as the pad token)."""
    token = values.get("pad_token") or values.get("eos_token")
    if not isinstance(token, str) or not token:
        _req(values, "pad_token", "tokenizer.pad_token", "which token to pad with")
    why = "the tokenizer has no pad token" + (" (uses the end-of-text token)" if not values.get("pad_token") else "")
    return change(loaded, "fmllm.pad_token", token, why)


@_fixer("training.precision_flags", "One mixed-precision flag", "fp16 and bf16 both on: keep the one that matches the compute dtype")
def _precision_flags(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: optional ``keep`` ("fp16"|"bf16"); default follows the compute dtype."""
    keep = values.get("keep")
    if keep is None:
        keep = "bf16" if loaded.view.compute_dtype == "bfloat16" else "fp16"
    if keep not in ("fp16", "bf16"):
        raise FixError(f"fix training.precision_flags: keep must be fp16 or bf16, got {keep!r}")
    drop = "fp16" if keep == "bf16" else "bf16"
    why = f"fp16 and bf16 cannot both be on; {keep} matches the compute dtype"
    return change(loaded, f"training.{drop}", False, why) + change(loaded, f"training.{keep}", True, why)


def _positive_int(value: Any, what: str, fix_id: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FixError(f"fix {fix_id}: {what} must be a whole number of 1 or more, got {value!r}")
    return value


@_fixer("training.eval_batch", "Smaller evaluation batch", "halve training.per_device_eval_batch_size")
def _eval_batch(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: optional ``to``; else half of ``per_device_eval_batch_size`` as the check saw it
    (so re-planning the same finding is idempotent), else half of the current value."""
    if "to" in values:
        to = _positive_int(values["to"], "to", "training.eval_batch")
    else:
        seen = values.get("per_device_eval_batch_size", loaded.view.training.per_device_eval_batch_size)
        to = max(1, _positive_int(seen, "per_device_eval_batch_size", "training.eval_batch") // 2)
    why = "evaluation runs its own forward passes; a smaller batch lowers their peak"
    return change(loaded, "training.per_device_eval_batch_size", to, why + _saving_note(values.get("saving_bytes")))


@_fixer("training.max_seq_length", "Sequence length the model and data need", "set training.max_seq_length")
def _max_seq_length(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: ``to``, or ``limit`` (e.g. the model's max_position_embeddings) to cap it at."""
    if "to" in values:
        to = _positive_int(values["to"], "to", "training.max_seq_length")
    else:
        limit = _positive_int(_req(values, "limit", "training.max_seq_length", "the length to use"), "limit", "training.max_seq_length")
        now = loaded.view.training.max_seq_length
        to = min(now, limit) if now else limit
    why = values.get("why") or "tokens per example; longer costs activation memory"
    return change(loaded, "training.max_seq_length", to, str(why))


@_fixer("training.learning_rate", "A learning rate QLoRA trains with", "set training.learning_rate")
def _learning_rate(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: optional ``to`` or ``suggested``; default 2e-4 (QLoRA's usual 1e-4 to 3e-4)."""
    to = values.get("to", values.get("suggested", 2e-4))
    if isinstance(to, bool) or not isinstance(to, (int, float)) or not 0 < to < 1:
        raise FixError(f"fix training.learning_rate: {to!r} is not a learning rate between 0 and 1")
    return change(loaded, "training.learning_rate", float(to), "QLoRA usually trains with 1e-4 to 3e-4")


@_fixer("model.adapter", "Train an adapter", "use_adapter: true (a 4-bit model cannot be trained without one)")
def _adapter(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: optional ``to`` (default True)."""
    to = values.get("to", True)
    if not isinstance(to, bool):
        raise FixError("fix model.adapter: to must be true or false")
    return change(loaded, "use_adapter", to, "4-bit weights cannot be trained directly; LoRA trains an adapter on top")


@_fixer("training.save_total_limit", "Keep fewer checkpoints", "set training.save_total_limit")
def _save_total_limit(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: optional ``to`` (default 2)."""
    to = _positive_int(values.get("to", 2), "to", "training.save_total_limit")
    why = "keeps only the newest checkpoints so the disk does not fill"
    if values.get("free_bytes"):
        why += f" ({_gib(values['free_bytes'])} free)"
    return change(loaded, "training.save_total_limit", to, why)


@_fixer("distributed.fsdp_storage", "4-bit storage FSDP can shard", "bfloat16 compute dtype under FSDP (4-bit weights are stored in it)")
def _fsdp_storage(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: optional ``to`` (default "bfloat16"). fmllm stores 4-bit weights in the compute
    dtype (bnb_4bit_quant_storage), which FSDP needs to be the float dtype it shards in."""
    to = values.get("to", "bfloat16")
    if to not in ("bfloat16", "float16", "float32"):
        raise FixError(f"fix distributed.fsdp_storage: {to!r} is not a float dtype")
    return _dtype_changes(loaded, to, "FSDP shards 4-bit weights only when they are stored in its float dtype")


@_fixer("training.packing_seq", "Packing with a fixed length", "packing needs max_seq_length: set it, or turn packing off")
def _packing_seq(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: ``max_seq_length`` to pack into; without it packing is turned off."""
    if values.get("max_seq_length") is not None:
        to = _positive_int(values["max_seq_length"], "max_seq_length", "training.packing_seq")
        return change(loaded, "training.max_seq_length", to, "packing fills sequences up to this length")
    return change(loaded, "training.packing", False, "packing needs a fixed max_seq_length")


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@_fixer("model.pin_revision", "Pin the remote code", "fmllm.revision: the commit whose code trust_remote_code runs")
def _pin_revision(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
    """values: ``commit`` (the full 40-character commit hash of the model repository)."""
    commit = _req(values, "commit", "model.pin_revision", "which commit to pin")
    if not isinstance(commit, str) or not _COMMIT.match(commit.strip().lower()):
        raise FixError(f"fix model.pin_revision: {commit!r} is not a full 40-character commit hash")
    return change(loaded, "fmllm.revision", commit.strip().lower(), "trust_remote_code runs this commit's code, not whatever is pushed next")


# --------------------------------------------------------------------------------------------
# Remedies that are commands, not config edits
# --------------------------------------------------------------------------------------------

_PKG = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?(\[[A-Za-z0-9._,-]+\])?$")
_SPEC = re.compile(r"^(==|>=|<=|~=|!=|>|<)[0-9A-Za-z.*+!-]+(,(==|>=|<=|~=|!=|>|<)[0-9A-Za-z.*+!-]+)*$")


def _alloc_conf(values: dict[str, Any]) -> tuple[str, str]:
    existing = str(values.get("current") or "").strip()
    opts = [o for o in existing.split(",") if o and not o.startswith("expandable_segments")]
    value = ",".join([*opts, "expandable_segments:True"])
    return (
        f"export PYTORCH_CUDA_ALLOC_CONF={shlex.quote(value)}",
        "lets PyTorch grow memory segments instead of fragmenting them (set it in the shell that launches training)",
    )


def _package(values: dict[str, Any]) -> tuple[str, str]:
    name = str(_req(values, "package", "package.install", "which package to install")).strip()
    spec = str(values.get("spec") or "").replace(" ", "")
    if not _PKG.match(name) or (spec and not _SPEC.match(spec)):
        raise FixError(f"fix package.install: {name + spec!r} is not a package requirement fmllm will print")
    return (
        f"{shlex.quote(sys.executable)} -m pip install {shlex.quote(name + spec)}",
        f"installs {name + spec} into the Python environment fmllm runs in",
    )


def _hub_login(values: dict[str, Any]) -> tuple[str, str]:
    model = values.get("model")
    why = "stores a Hugging Face access token for downloads"
    if isinstance(model, str) and re.match(r"^[\w.-]+/[\w.-]+$", model):
        why += f"; for a gated model also accept its licence at https://huggingface.co/{model}"
    return "hf auth login", why


SHELL_FIXES: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {
    "env.alloc_conf": _alloc_conf,
    "package.install": _package,
    "hub.login": _hub_login,
}


def shell_fix(fix_id: str, values: dict[str, Any] | None = None) -> Fix:
    """A remedy that is a command to run: ``Fix.shell`` holds it exactly, ``summary`` says why."""
    if fix_id not in SHELL_FIXES:
        raise FixError(f"unknown command fix {fix_id!r}; known: {', '.join(sorted(SHELL_FIXES))}")
    cmd, why = SHELL_FIXES[fix_id](values or {})
    return Fix(id=fix_id, shell=cmd, summary=why, safe=False)
