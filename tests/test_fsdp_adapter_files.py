"""Bad forms of the files fmllm's FSDP save and resume read and write (fast, no processes).

The FSDP path itself runs in tests/test_fsdp_cpu.py (two gloo ranks); here each helper meets a
missing, corrupt or mismatched input and must say what and where, losing nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fmllm_tui.runner.lean import RecipeError  # noqa: E402
from fmllm_tui.runner.train import (  # noqa: E402
    SaveError,
    adapter_from_full_state,
    adapter_key_map,
    last_complete_checkpoint,
    load_checkpoint_adapter,
)


@pytest.fixture()
def peft_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    return get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


def test_key_map_covers_every_adapter_tensor(peft_model):
    key_map = adapter_key_map(peft_model)
    assert key_map and all("lora_" in k and "lora_" in v for k, v in key_map.items())
    full = peft_model.state_dict()
    picked = adapter_from_full_state(full, key_map)
    assert set(picked) == set(key_map.values())


def test_gathered_state_missing_adapter_tensors_is_a_save_error(peft_model):
    key_map = adapter_key_map(peft_model)
    full = {k: v for k, v in peft_model.state_dict().items() if k != next(iter(key_map))}
    with pytest.raises(SaveError, match="lacks 1 of the adapter's"):
        adapter_from_full_state(full, key_map)
    with pytest.raises(SaveError, match="none selected"):
        adapter_from_full_state(peft_model.state_dict(), {})


def test_resume_adapter_bad_forms(peft_model, tmp_path: Path):
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    with pytest.raises(RecipeError, match=r"checkpoint-4/adapter_model\.safetensors cannot be read.*earlier checkpoint"):
        load_checkpoint_adapter(peft_model, ckpt)  # missing
    (ckpt / "adapter_model.safetensors").write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(RecipeError, match="cannot be read"):
        load_checkpoint_adapter(peft_model, ckpt)  # corrupt
    from safetensors.torch import save_file

    save_file({"base_model.model.not.a.lora_A.weight": torch.zeros(2, 2)}, str(ckpt / "adapter_model.safetensors"))
    with pytest.raises(RecipeError, match="does not fit this model's adapter"):
        load_checkpoint_adapter(peft_model, ckpt)  # someone else's adapter
    good = adapter_from_full_state(peft_model.state_dict(), adapter_key_map(peft_model))
    save_file(good, str(ckpt / "adapter_model.safetensors"))
    assert load_checkpoint_adapter(peft_model, ckpt) == len(good)


def test_fsdp_checkpoint_counts_only_with_its_adapter(tmp_path: Path):
    for step, files in ((2, ["pytorch_model_fsdp_0", "optimizer_0", "adapter_model.safetensors"]),
                        (4, ["pytorch_model_fsdp_0", "optimizer_0"])):  # killed before the adapter
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        for f in files:
            (d / f).mkdir() if not f.endswith(".safetensors") else (d / f).write_bytes(b"\x02" + b"\x00" * 7 + b"{}")
    assert last_complete_checkpoint(tmp_path, rename=False) == tmp_path / "checkpoint-2"
