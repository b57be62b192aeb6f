"""Golden round trips: real-world-shaped configs, a set of fixes each, byte-exact expected output.

The inputs in tests/data/configs/ cover: many unrelated sections, comments in every position,
flow and block sequences and mappings, single/double/un-quoted strings, anchors, aliases and
merges, folded and literal block scalars, non-ASCII and tab-containing comments, odd
indentation, a YAML directive and document markers, null sections, a missing final newline.
Each input is also run as CRLF, without a final newline and with a UTF-8 BOM.
"""

from __future__ import annotations

from pathlib import Path

import fmllm_tui.fixes as fixes
import pytest
from fixes_support import assert_only_changed_lines

from fmllm_tui.config import load_config
from fmllm_tui.findings import Change

DATA = Path(__file__).parent / "data" / "configs"


def _memfit(*items):
    return ("memory.fit", {"changes": [Change(k, t, comment=w, saving_bytes=s) for k, t, w, s in items]})


CASES: dict[str, list[tuple[str, dict]]] = {
    "shipped_nested": [
        ("dtype.compute", {"compute_capability": [8, 6]}),
        ("training.gc_reentrant", {}),
        ("tokenizer.pad_token", {"pad_token": "<|endoftext|>"}),
        _memfit(
            ("training.max_seq_length", 512, "halves activation memory", 805306368),
            ("lora.target_modules", ["q_proj", "v_proj"], "fewer adapted modules", 104857600),
        ),
        ("training.save_total_limit", {"to": 3}),
        ("model.pin_revision", {"commit": "0123456789abcdef0123456789abcdef01234567"}),
    ],
    "flat_minimal": [
        ("dtype.compute", {"compute_capability": "7.5"}),
        ("attn.sdpa", {"reason": "flash-attn is not installed"}),
        ("training.eval_batch", {"per_device_eval_batch_size": 8}),
        ("model.id", {"suggestions": ["Qwen/Qwen2.5-7B-Instruct-1M", "Qwen/Qwen2.5-7B"]}),
        ("model.adapter", {}),
    ],
    "kitchen_sink": [
        ("training.precision_flags", {}),
        ("training.gc_reentrant", {}),
        ("attn.sdpa", {}),
        ("training.learning_rate", {"to": 1e-4}),
        ("training.packing_seq", {}),
        _memfit(
            ("training.per_device_train_batch_size", 2, "halves activations", 2147483648),
            ("lora.r", 8, "smaller adapter", 52428800),
        ),
        ("dtype.compute", {"bf16_supported": False}),
    ],
    "flow_sections": [
        ("attn.sdpa", {}),
        ("training.learning_rate", {}),
        ("training.eval_batch", {"per_device_eval_batch_size": 32}),
        _memfit(
            ("training.max_seq_length", 4096, "halves activations", 4 * 1024**3),
            ("lora.target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"], "attention only", 10**9),
        ),
        ("model.pin_revision", {"commit": "89abcdef0123456789abcdef0123456789abcdef"}),
        ("preset.70b-multi-gpu", {}),
    ],
    "anchors_aliases": [
        ("training.eval_batch", {"to": 2}),
        ("training.learning_rate", {"to": 2e-4}),
        _memfit(("training.max_seq_length", 1024, "halves activations", 10**9)),
        ("dtype.compute", {"bf16_supported": False}),
    ],
    "null_sections": [
        ("dtype.compute", {"bf16_supported": False}),
        ("attn.sdpa", {}),
        ("tokenizer.pad_token", {"eos_token": "</s>"}),
        _memfit(("lora.r", 4, "smaller adapter", 10**7)),
        ("training.gc_reentrant", {}),
    ],
    "odd_indent": [
        ("attn.sdpa", {}),
        ("training.learning_rate", {"to": 1e-4}),
        _memfit(("lora.target_modules", ["q_proj", "k_proj", "v_proj"], "one more module", -(10**7))),
        ("distributed.fsdp_storage", {}),
        ("preset.7b-10gb", {}),
    ],
}


def _expected(name: str) -> str:
    return (DATA / f"{name}.expected.yaml").read_bytes().decode("utf-8")


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    loaded = load_config(DATA / f"{name}.yaml")
    changes = fixes.plan_fixes(loaded, CASES[name])
    new = fixes.render_changes(loaded, changes)
    assert new == _expected(name)
    assert_only_changed_lines(loaded.text, new, [c.key for c in changes])
    again = fixes.load_text(loaded, new)
    assert fixes.render_changes(again, changes) == new  # applying the changes twice = once
    # The last fix re-planned on the result plans nothing (earlier ones may be overridden by
    # later ones in these cases, e.g. a preset after memory.fit, so only the last is stable).
    assert fixes.plan_fix(again, *CASES[name][-1]) == []


def _variant(text: str, kind: str) -> tuple[bytes, bool]:
    if kind == "crlf":
        return text.replace("\n", "\r\n").encode(), True
    if kind == "no_final_newline":
        return (text[:-1] if text.endswith("\n") else text).encode(), True
    return b"\xef\xbb\xbf" + text.encode(), True  # bom


@pytest.mark.parametrize("kind", ["crlf", "no_final_newline", "bom"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_variants_through_the_safe_write(tmp_path: Path, name: str, kind: str) -> None:
    src = (DATA / f"{name}.yaml").read_bytes().decode("utf-8")
    exp = _expected(name)
    raw, _ = _variant(src, kind)
    want, _ = _variant(exp, kind)
    cfg = tmp_path / "config.yaml"
    cfg.write_bytes(raw)
    loaded = load_config(cfg)
    changes = fixes.plan_fixes(loaded, CASES[name])
    result = fixes.apply_changes(cfg, changes, expected_raw=raw)
    assert result.changed
    assert cfg.read_bytes() == want
    assert result.backup_path is not None and result.backup_path.read_bytes() == raw


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_changes_writes_nothing(tmp_path: Path, name: str) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_bytes((DATA / f"{name}.yaml").read_bytes())
    before = sorted(p.name for p in tmp_path.iterdir())
    result = fixes.apply_changes(cfg, [])
    assert not result.changed and result.backup_path is None and result.diff == ""
    assert cfg.read_bytes() == (DATA / f"{name}.yaml").read_bytes()
    assert [p for p in sorted(x.name for x in tmp_path.iterdir()) if not p.endswith("-lock")] == before
