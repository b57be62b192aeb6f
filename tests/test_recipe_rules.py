"""The recipe rules the memory model and the runner share (fmllm_tui.recipe): one rule each, the
same plan on any machine, and the gpu.liger check on a GPU machine whose install lacks liger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmllm_tui import memory, recipe
from fmllm_tui.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_planning_for_a_cuda_card_does_not_depend_on_this_machines_liger(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug: a host without liger-kernel planned the chunked loss, the GPU box ran liger's."""
    from fmllm_tui import catalogue

    view = load_config(ROOT / "config.yaml").view
    arch = catalogue.get_architecture("Qwen/Qwen2.5-7B-Instruct")
    import importlib.util

    real = importlib.util.find_spec
    seen = []
    for installed in (False, True):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, _i=installed: (object() if _i else None) if name == "liger_kernel"
                            else real(name, *a))
        assert recipe.liger_installed() is installed
        seen.append(memory.predict(view, arch).peak_process_bytes)
    assert seen[0] == seen[1]
    assert memory.predict(view, arch).loss == "liger"  # what fmllm's GPU install runs


def test_the_runner_and_the_plan_read_one_rule() -> None:
    from fmllm_tui.runner.loss import resolve_loss_kind

    for requested in ("auto", "liger", "chunked", "plain"):
        for cuda in (False, True):
            for has in (False, True):
                assert resolve_loss_kind(requested, cuda=cuda, has_liger=has) == recipe.loss_kind(
                    requested, cuda=cuda, has_liger=has)
    assert memory.resolve_loss("fmllm", "auto") == recipe.loss_kind("auto", cuda=True, has_liger=True)[0] == "liger"
    # The optimizer swap: a small adapter's 32-bit AdamW runs fused; big, 8-bit, FSDP or forced: kept.
    small, big = 10_000_000, 500_000_000
    kw = {"recipe": "fmllm", "cuda": True, "distributed": "single"}
    assert recipe.fused_adamw("paged_adamw_32bit", trainable_params=small, **kw) == "adamw_torch_fused"
    assert recipe.fused_adamw("paged_adamw_32bit", trainable_params=big, **kw) == "paged_adamw_32bit"
    assert recipe.fused_adamw("paged_adamw_8bit", trainable_params=small, **kw) == "paged_adamw_8bit"
    assert recipe.fused_adamw("adamw_torch", trainable_params=small, recipe="fmllm", cuda=True,
                              distributed="fsdp") == "adamw_torch"
    assert recipe.fused_adamw("adamw_torch", trainable_params=small, forced=True, **kw) == "adamw_torch"


def test_the_no_sdpa_table_matches_transformers() -> None:
    """Every model type fmllm plans with eager attention has no SDPA in the installed
    transformers, and every catalogue model's family has it (else the table misses it)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    )

    from fmllm_tui import catalogue

    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    def supports_sdpa(model_type: str) -> bool:
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[CONFIG_MAPPING[model_type]]
        return bool(getattr(cls, "_supports_sdpa", False))

    for model_type in recipe.NO_SDPA_MODEL_TYPES:
        assert not supports_sdpa(model_type), f"{model_type} has SDPA now: drop it from NO_SDPA_MODEL_TYPES"
    families = {str((catalogue.get_architecture(m) or {}).get("model_type")) for m in catalogue.known_model_ids()}
    for model_type in sorted(families & set(causal)):
        assert supports_sdpa(model_type) or model_type in recipe.NO_SDPA_MODEL_TYPES, model_type
    assert recipe.attention("sdpa", "gemma2")[0] == "eager" and recipe.attention("sdpa", "llama") == ("sdpa", None)
    assert recipe.attention("flash_attention_2", "gemma2") == ("flash_attention_2", None)


def test_the_memory_model_plans_the_optimizer_the_runner_steps() -> None:
    view = load_config(ROOT / "config.yaml").view  # paged_adamw_32bit, LoRA r8: a small state
    from fmllm_tui import catalogue

    pred = memory.predict(view, catalogue.get_architecture("Qwen/Qwen2.5-7B-Instruct"))
    assert any("runs as adamw_torch_fused" in n for n in pred.notes), pred.notes
    assert pred.breakdown.get("optimizer_paged", 0) == 0  # a fused torch AdamW pages nothing


@pytest.mark.parametrize("installed, status", [(False, "warn"), (True, "pass")])
def test_gpu_liger_check_on_a_gpu_machine(tmp_path, monkeypatch, capsys, installed, status) -> None:
    from tui_support import fake_gpu, quiet_env, write_config

    from fmllm_tui.cli_check import main

    quiet_env(monkeypatch, tmp_path, fake_gpu(tmp_path))
    cfg = write_config(tmp_path)
    monkeypatch.setattr(recipe, "liger_installed", lambda: installed)
    main(["--config", str(cfg), "--offline", "--only", "gpu.liger", "--json"])
    (res,) = json.loads(capsys.readouterr().out)["checks"]
    assert res["status"] == status, res
    if not installed:
        assert res["fix"]["shell"] == "pip install liger-kernel" and "higher peak than predicted" in res["finding"]
    # Planning for a named card: this machine's install is not the target's.
    main(["--config", str(cfg), "--offline", "--gpu", "RTX 3090", "--only", "gpu.liger", "--json"])
    (res,) = json.loads(capsys.readouterr().out)["checks"]
    assert res["status"] == "skip"
