"""Planning a recipe from a partial config in tests: the typed view and a target machine."""

from __future__ import annotations

from typing import Any

from fmllm_tui.config import FineTuneConfig
from fmllm_tui.plan import Recipe, Target, resolve_recipe


def view_of(cfg: dict[str, Any]) -> FineTuneConfig:
    """The typed config of a partial config dict (sections left out take their defaults)."""
    return FineTuneConfig.model_validate({"base_model_name": "tiny/model", **cfg})


def recipe_of(cfg: dict[str, Any], *, cuda: bool, compute_capability: tuple[int, int] | None = None,
              liger: bool = False, triton: bool = True, bf16_supported: bool = True,
              distributed: str = "single", overrides: dict[str, Any] | None = None,
              trainable_params: int | None = None) -> Recipe:
    """plan.resolve_recipe for ``cfg`` on a CUDA card (``compute_capability``; pre-Ampere when
    ``bf16_supported`` is false) with or without liger-kernel and Triton, or on the CPU."""
    if cuda:
        cc = compute_capability or ((9, 0) if bf16_supported else (7, 5))
        target = Target("cuda", "test GPU", cc, liger, triton)
    else:
        target = Target.cpu()
    return resolve_recipe(view_of(cfg), target, distributed=distributed, overrides=overrides,
                          trainable_params=trainable_params)
