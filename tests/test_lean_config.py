"""The runner's config reads (runner/lean.py) take every value and default from fmllm_tui.config's
models: the typed config and a config dict read the same, and an empty section reads pydantic's
defaults (issue 18: no default written twice)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from fmllm_tui.config import LoraSettings, QuantizationSettings, load_config  # noqa: E402
from fmllm_tui.runner import lean  # noqa: E402
from tests.recipe_support import recipe_of  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "tests" / "configs").glob("*.yaml")) + [ROOT / "config.yaml"]


def _lora(cfg: lean.Config) -> tuple[object, ...]:
    lc = lean.lora_config(cfg)
    return lc.r, lc.lora_alpha, lc.lora_dropout, lc.target_modules


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_typed_config_and_its_dict_read_the_same(path: Path) -> None:
    view = load_config(path).view
    as_dict = view.model_dump(mode="json")
    assert _lora(view) == _lora(as_dict)
    recipe = recipe_of({k: as_dict[k] for k in ("lora", "quantization", "training", "fmllm")}, cuda=True)
    a, b = (lean.model_load_kwargs(c, recipe, device_index=1) for c in (view, as_dict))
    assert a.pop("quantization_config").to_dict() == b.pop("quantization_config").to_dict()
    assert a == b


def test_an_empty_config_reads_the_models_defaults() -> None:
    lo, q = LoraSettings(), QuantizationSettings()
    assert _lora({}) == (lo.r, lo.alpha, lo.dropout, set(lo.target_modules))
    qc = lean.model_load_kwargs({}, recipe_of({}, cuda=True))["quantization_config"]
    assert (qc.bnb_4bit_quant_type, qc.bnb_4bit_use_double_quant, str(qc.bnb_4bit_compute_dtype)) == (
        q.bnb_4bit_quant_type, q.use_nested_quant, f"torch.{q.bnb_4bit_compute_dtype}")
