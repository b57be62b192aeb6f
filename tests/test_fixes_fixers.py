"""Each fixer's plan: the right keys in both layouts, absolute values, clear refusals; presets."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import fmllm_tui.fixes as fixes
import pytest
from fmllm_tui.fixes import FIXERS, FixError, plan_fix, plan_fixes, preset_changes, render_changes

from fmllm_tui.config import load_config
from fmllm_tui.findings import Change, Fix

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = (ROOT / "config.yaml").read_text()

FLAT = """\
base_model_name: Qwen/Qwen2.5-7B-Instruct
lora:
  r: 16
quantization:
  bnb_4bit_compute_dtype: bfloat16
training:
  per_device_eval_batch_size: 8
  learning_rate: 0.0002
  max_seq_length: 2048
  packing: true
"""

REQUIRED_IDS = {
    "memory.fit", "training.eval_batch", "training.max_seq_length", "dtype.compute", "attn.sdpa",
    "training.gc_reentrant", "tokenizer.pad_token", "training.learning_rate", "model.id",
    "model.adapter", "distributed.fsdp_storage", "training.save_total_limit", "training.packing_seq",
    "training.precision_flags", "model.pin_revision",
}


@pytest.fixture
def nested(tmp_path: Path):
    p = tmp_path / "config.yaml"
    p.write_text(SHIPPED)
    return load_config(p)


@pytest.fixture
def flat(tmp_path: Path):
    p = tmp_path / "flat.yaml"
    p.write_text(FLAT)
    return load_config(p)


def loaded_from(tmp_path: Path, text: str, name: str = "c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return load_config(p)


def after(loaded, changes):
    """The config as it would be after the changes (rendered, verified, validated)."""
    return fixes.load_text(loaded, render_changes(loaded, changes))


def test_every_required_fixer_is_registered() -> None:
    assert REQUIRED_IDS <= set(FIXERS)
    assert {f"preset.{n}" for n in fixes.PRESETS} <= set(FIXERS)
    for fid, fixer in FIXERS.items():
        assert fixer.id == fid and fixer.title and fixer.description


def test_unknown_fixer_names_the_known_ones(nested) -> None:
    with pytest.raises(FixError) as e:
        plan_fix(nested, "memory.fits", {})
    assert "memory.fit" in e.value.render()


# -- memory -----------------------------------------------------------------------------------


def test_memory_fit_applies_the_change_set_with_savings(nested, flat) -> None:
    values = {"changes": [
        Change("training.max_seq_length", 512, comment="halves activations", saving_bytes=805306368),
        Change("lora.r", 4, comment="smaller adapter", saving_bytes=int(0.02 * 2**30)),
        Change("fmllm.offload_embeddings", "on", comment="embeddings on the CPU"),
        Change("training.per_device_train_batch_size", 2, comment="uses the room", saving_bytes=-(2**30)),
    ]}
    ch = plan_fix(nested, "memory.fit", values)
    assert [c.key for c in ch] == [
        "fine_tuning.training.max_seq_length", "fine_tuning.lora.r", "fmllm.offload_embeddings",
        "fine_tuning.training.per_device_train_batch_size",
    ]
    assert ch[0].from_ == 1024 and ch[0].to == 512 and "saves ~0.75 GiB" in ch[0].comment
    assert "saves ~0.02 GiB" in ch[1].comment
    assert "uses ~1.00 GiB more" in ch[3].comment
    new = after(nested, ch)
    assert new.view.training.max_seq_length == 512 and new.view.lora.r == 4
    assert plan_fix(new, "memory.fit", values) == []  # idempotent
    flat_ch = plan_fix(flat, "memory.fit", values)
    assert [c.key for c in flat_ch][:3] == ["training.max_seq_length", "lora.r", "fmllm.offload_embeddings"]


@pytest.mark.parametrize(
    ("values", "msg"),
    [
        ({}, "no change set"),
        ({"changes": []}, "no change set"),
        ({"changes": [Change("training.max_seq_lenght", 1)]}, "not a setting"),
        ({"changes": [{"key": "training.max_seq_length", "to": 1}]}, "malformed"),
        ({"changes": ["training.max_seq_length"]}, "malformed"),
    ],
)
def test_memory_fit_refuses_bad_change_sets(nested, values, msg) -> None:
    with pytest.raises(FixError, match=msg):
        plan_fix(nested, "memory.fit", values)


def test_memory_fit_value_the_schema_rejects_is_refused(nested) -> None:
    ch = plan_fix(nested, "memory.fit", {"changes": [Change("training.max_seq_length", 8)]})
    with pytest.raises(FixError, match="would not be valid") as e:
        render_changes(nested, ch)
    assert "max_seq_length" in e.value.render()


# -- model id -----------------------------------------------------------------------------------


def test_model_id_headless_takes_top_suggestion_and_says_so(nested) -> None:
    fix = fixes.make_fix(nested, "model.id", {"suggestions": ["Qwen/Qwen2.5-7B-Instruct-AWQ", {"id": "Qwen/Qwen2.5-7B"}]})
    assert isinstance(fix, Fix)
    assert fix.changes[0].key == "fine_tuning.base_model_name"
    assert fix.changes[0].to == "Qwen/Qwen2.5-7B-Instruct-AWQ"
    assert "top of 2 suggestions, taken without asking" in fix.summary
    assert "Qwen/Qwen2.5-7B" in fix.summary


def test_model_id_choice_and_revision_reset(tmp_path: Path) -> None:
    text = SHIPPED + "  revision: " + "a" * 40 + "\n"
    loaded = loaded_from(tmp_path, text)
    ch = plan_fix(loaded, "model.id", {"suggestions": ["a/b", "c/d"], "choice": 1})
    assert [(c.key, c.to) for c in ch] == [("fine_tuning.base_model_name", "c/d"), ("fmllm.revision", None)]
    new = after(loaded, ch)
    assert new.view.fmllm.revision is None
    assert "  revision: null" in new.text  # the key stays (its comment block too), the value clears


@pytest.mark.parametrize("values", [{}, {"suggestions": []}, {"suggestions": ["a/b"], "choice": 3}, {"suggestions": [""]}])
def test_model_id_without_usable_suggestion_is_refused(nested, values) -> None:
    with pytest.raises(FixError):
        plan_fix(nested, "model.id", values)


# -- dtype / precision --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "want"),
    [
        ({"bf16_supported": True}, "bfloat16"),
        ({"bf16_supported": False}, "float16"),
        ({"compute_capability": [7, 5]}, "float16"),
        ({"compute_capability": "8.9"}, "bfloat16"),
        ({"compute_capability": 7.0}, "float16"),
        ({"to": "bfloat16"}, "bfloat16"),
    ],
)
def test_dtype_compute_targets(nested, values, want) -> None:
    new = after(nested, plan_fix(nested, "dtype.compute", values))
    assert new.view.quantization.bnb_4bit_compute_dtype == want
    assert "fp16" not in new.text and "bf16:" not in new.text  # flags absent stay absent


def test_dtype_compute_keeps_training_flags_consistent(flat, tmp_path: Path) -> None:
    loaded = loaded_from(tmp_path, FLAT.replace("  packing: true\n", "  packing: true\n  bf16: true\n"))
    ch = plan_fix(loaded, "dtype.compute", {"bf16_supported": False})
    new = after(loaded, ch)
    assert new.view.compute_dtype == "float16"
    assert new.view.training.fp16 is True and new.view.training.bf16 is False
    assert {c.key for c in ch} == {"quantization.bnb_4bit_compute_dtype", "training.bf16", "training.fp16"}


@pytest.mark.parametrize("values", [{}, {"compute_capability": "new"}, {"to": "int8"}])
def test_dtype_compute_refuses_unknown_hardware(nested, values) -> None:
    with pytest.raises(FixError):
        plan_fix(nested, "dtype.compute", values)


def test_precision_flags_keeps_the_one_matching_compute_dtype(tmp_path: Path) -> None:
    loaded = loaded_from(tmp_path, FLAT + "  fp16: true\n  bf16: true\n")
    new = after(loaded, plan_fix(loaded, "training.precision_flags", {}))
    assert (new.view.training.fp16, new.view.training.bf16) == (False, True)
    with pytest.raises(FixError):
        plan_fix(loaded, "training.precision_flags", {"keep": "fp32"})


def test_fixes_compose_later_sees_earlier(tmp_path: Path) -> None:
    loaded = loaded_from(tmp_path, FLAT + "  fp16: true\n  bf16: true\n")
    ch = plan_fixes(loaded, [("dtype.compute", {"bf16_supported": False}), ("training.precision_flags", {})])
    new = after(loaded, ch)
    assert new.view.compute_dtype == "float16"
    assert (new.view.training.fp16, new.view.training.bf16) == (True, False)


# -- the rest ---------------------------------------------------------------------------------


def test_attn_sdpa_creates_fmllm_section_at_end(flat) -> None:
    ch = plan_fix(flat, "attn.sdpa", {"reason": "flash-attn is not installed"})
    assert ch[0].key == "fmllm.attn_implementation" and ch[0].from_ is None
    new = render_changes(flat, ch)
    assert new.startswith(FLAT)
    assert new[len(FLAT):] == (
        "\n# fmllm: section added by fmllm-check --fix\nfmllm:\n"
        "  attn_implementation: sdpa  # flash-attn is not installed; sdpa needs no extra package\n"
    )


def test_attn_sdpa_replaces_flash(tmp_path: Path) -> None:
    loaded = loaded_from(tmp_path, SHIPPED.replace("attn_implementation: sdpa  ", "attn_implementation: flash_attention_2"))
    new = render_changes(loaded, plan_fix(loaded, "attn.sdpa", {}))
    old_line = next(ln for ln in loaded.text.splitlines() if "attn_implementation" in ln)
    new_line = next(ln for ln in new.splitlines() if "attn_implementation" in ln)
    assert new_line.startswith("  attn_implementation: sdpa ")
    assert new_line.index("#") == old_line.index("#")  # the comment keeps its column
    assert new.replace(new_line, old_line) == loaded.text
    with pytest.raises(FixError):
        plan_fix(loaded, "attn.sdpa", {"to": "flash_attention_3"})


def test_gc_reentrant_inserts_or_sets_within_existing_kwargs(nested, tmp_path: Path) -> None:
    ch = plan_fix(nested, "training.gc_reentrant", {})
    assert ch[0].key == "fine_tuning.training.gradient_checkpointing_kwargs" and ch[0].to == {"use_reentrant": False}
    assert "gradient_checkpointing_kwargs: {use_reentrant: false}  # " in render_changes(nested, ch)
    loaded = loaded_from(tmp_path, FLAT + "  gradient_checkpointing_kwargs:\n    use_reentrant: true\n    preserve_rng_state: false\n")
    ch = plan_fix(loaded, "training.gc_reentrant", {})
    assert [(c.key, c.to) for c in ch] == [("training.gradient_checkpointing_kwargs.use_reentrant", False)]
    assert after(loaded, ch).view.training.gradient_checkpointing_kwargs == {"use_reentrant": False, "preserve_rng_state": False}


def test_pad_token(nested) -> None:
    ch = plan_fix(nested, "tokenizer.pad_token", {"eos_token": "<|im_end|>"})
    assert after(nested, ch).view.fmllm.pad_token == "<|im_end|>"
    with pytest.raises(FixError, match="pad_token"):
        plan_fix(nested, "tokenizer.pad_token", {})


def test_eval_batch_halves_from_what_the_check_saw(flat) -> None:
    ch = plan_fix(flat, "training.eval_batch", {"per_device_eval_batch_size": 8})
    assert [(c.key, c.from_, c.to) for c in ch] == [("training.per_device_eval_batch_size", 8, 4)]
    new = after(flat, ch)
    assert plan_fix(new, "training.eval_batch", {"per_device_eval_batch_size": 8}) == []  # same finding: no-op
    assert plan_fix(new, "training.eval_batch", {})[0].to == 2  # a new finding halves again
    with pytest.raises(FixError):
        plan_fix(flat, "training.eval_batch", {"to": 0})


def test_max_seq_length_learning_rate_adapter_save_limit(flat) -> None:
    assert plan_fix(flat, "training.max_seq_length", {"limit": 1024})[0].to == 1024
    assert plan_fix(flat, "training.max_seq_length", {"to": 512})[0].to == 512
    with pytest.raises(FixError):
        plan_fix(flat, "training.max_seq_length", {})
    assert plan_fix(flat, "training.learning_rate", {})== []  # already 2e-4
    assert plan_fix(flat, "training.learning_rate", {"to": 1e-4})[0].to == 1e-4
    for bad in (5, 0, "fast", True):
        with pytest.raises(FixError):
            plan_fix(flat, "training.learning_rate", {"to": bad})
    ch = plan_fix(flat, "model.adapter", {})
    assert (ch[0].key, ch[0].to, ch[0].from_) == ("use_adapter", True, None)
    ch = plan_fix(flat, "training.save_total_limit", {"free_bytes": 5 * 1024**3})
    assert ch[0].to == 2 and "5.00 GiB free" in ch[0].comment


def test_fsdp_storage_and_packing(flat, tmp_path: Path) -> None:
    loaded = loaded_from(tmp_path, FLAT.replace("bfloat16", "float16"))
    assert after(loaded, plan_fix(loaded, "distributed.fsdp_storage", {})).view.compute_dtype == "bfloat16"
    assert plan_fix(flat, "distributed.fsdp_storage", {}) == []
    assert [(c.key, c.to) for c in plan_fix(flat, "training.packing_seq", {})] == [("training.packing", False)]
    assert [(c.key, c.to) for c in plan_fix(flat, "training.packing_seq", {"max_seq_length": 4096})] == [("training.max_seq_length", 4096)]


def test_pin_revision(nested) -> None:
    ch = plan_fix(nested, "model.pin_revision", {"commit": "ABCDEF0123456789ABCDEF0123456789ABCDEF01"})
    assert ch[0].key == "fmllm.revision" and ch[0].to == "abcdef0123456789abcdef0123456789abcdef01"
    for bad in ("main", "abc123", "g" * 40, None):
        with pytest.raises(FixError):
            plan_fix(nested, "model.pin_revision", {"commit": bad})


def test_bad_values_type_is_refused(nested) -> None:
    with pytest.raises(FixError, match="mapping"):
        FIXERS["attn.sdpa"].plan(nested, ["sdpa"])  # type: ignore[arg-type]


# -- command remedies ---------------------------------------------------------------------------


def test_shell_fixes_print_exact_commands() -> None:
    fix = fixes.shell_fix("env.alloc_conf", {"current": "max_split_size_mb:128"})
    assert fix.shell == "export PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128,expandable_segments:True"
    fix = fixes.shell_fix("package.install", {"package": "bitsandbytes", "spec": ">=0.45"})
    assert shlex.split(fix.shell)[1:] == ["-m", "pip", "install", "bitsandbytes>=0.45"]
    fix = fixes.shell_fix("hub.login", {"model": "meta-llama/Llama-3.3-70B-Instruct"})
    assert fix.shell == "hf auth login" and "huggingface.co/meta-llama/Llama-3.3-70B-Instruct" in fix.summary
    for bad in ({"package": "x; rm -rf /"}, {"package": "ok", "spec": ">=1; echo"}, {}):
        with pytest.raises(FixError):
            fixes.shell_fix("package.install", bad)
    with pytest.raises(FixError):
        fixes.shell_fix("apt.install", {})


# -- presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(fixes.PRESETS))
def test_each_preset_applies_validates_and_is_idempotent(nested, name: str) -> None:
    preset = fixes.PRESETS[name]
    assert preset.description and preset.target_gpu_memory and preset.changes
    ch = preset_changes(nested, name)
    new = after(nested, ch)
    assert new.view.base_model_name == preset.model
    assert preset_changes(new, name) == []
    assert plan_fix(new, f"preset.{name}", {}) == []


def test_70b_preset_sets_fsdp_and_takes_the_alternative_model(nested) -> None:
    ch = preset_changes(nested, "70b-multi-gpu", model="meta-llama/Llama-3.3-70B-Instruct")
    new = after(nested, ch)
    assert new.view.base_model_name == "meta-llama/Llama-3.3-70B-Instruct"
    assert new.view.fmllm.distributed.mode == "fsdp" and new.view.fmllm.distributed.cpu_offload is True
    assert new.view.compute_dtype == "bfloat16"
    with pytest.raises(FixError, match="written for"):
        preset_changes(nested, "70b-multi-gpu", model="mistralai/Mistral-7B-v0.1")


def test_unknown_preset_suggests(nested) -> None:
    with pytest.raises(FixError) as e:
        preset_changes(nested, "7b-10g")
    assert "did you mean '7b-10gb'" in e.value.render()


def test_list_presets_names_each_with_memory() -> None:
    text = fixes.list_presets()
    for name, p in fixes.PRESETS.items():
        assert re.search(rf"^{re.escape(name)}\s+.*{p.target_gpu_memory}", text, re.M)


def test_preset_test_run_restores_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(SHIPPED)
    changes = preset_changes(load_config(cfg), "14b-12gb")
    with fixes.temporarily_applied(cfg, changes) as result:
        assert result.changed and "Qwen2.5-14B-Instruct" in cfg.read_text()
        assert load_config(cfg).view.training.max_seq_length == 512
    assert cfg.read_text() == SHIPPED


def test_changes_only_write_settings_fmllm_reads(nested, flat) -> None:
    with pytest.raises(FixError, match="canonical name"):
        render_changes(nested, [Change(key="training.max_seq_length", to=512)])  # needs fine_tuning.
    with pytest.raises(FixError, match="not a setting fmllm reads"):
        render_changes(nested, [Change(key="fine_tuning.training.max_seq_lenght", to=512)])
    with pytest.raises(FixError, match="not a setting fmllm reads"):
        render_changes(flat, [Change(key="wandb.project", to="x")])
    assert "paths:" in render_changes(flat, [Change(key="paths.output_dir", to="out")])


def test_summary_masks_secrets() -> None:
    text = fixes.summarize([Change(key="paths.hub", to="hf_abcdefghijklmnop", from_=None, comment="x")])
    assert "hf_abcdefghijklmnop" not in text
