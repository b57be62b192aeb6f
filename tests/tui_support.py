"""Helpers for the TUI tests (tests/test_tui_*.py): a config in a folder, a fake GPU, a
deterministic environment for the child ``fmllm-check``, and waiting on the app. ``scaled`` is
shared with the tests that wait on training processes (this module never imports textual)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
GiB = 1024**3

#: A nested config with comments, like the shipped one but small; ``{model}`` and extra lines are
#: filled in per test. Data lives next to it in data/.
CONFIG = """\
# fmllm test config (TUI tests)
paths:
  data_dir: data
  output_dir: outputs
  ft_combined_data_file: ${{paths.data_dir}}/sample_instructions.jsonl

fine_tuning:
  base_model_name: {model}   # the model to fine-tune
  data_format: instruction
  use_adapter: true

  lora:
    r: 8                  # LoRA rank
    alpha: 16
    dropout: 0.05
    target_modules: [q_proj, k_proj, v_proj, o_proj]

  quantization:
    use_4bit: {use_4bit}
    bnb_4bit_compute_dtype: bfloat16
    bnb_4bit_quant_type: nf4
    use_nested_quant: true

  training:
    num_train_epochs: 1
    per_device_train_batch_size: 1  # micro-batch
    gradient_accumulation_steps: 4
    gradient_checkpointing: true
    learning_rate: 2.0e-4
    optim: paged_adamw_32bit
    max_seq_length: {seq}
    logging_steps: 1
    save_steps: {save_steps}
{training_extra}
fmllm:
  attn_implementation: {attn}   # sdpa | flash_attention_2 | eager
  minimal_test_steps: {steps}
"""


def write_config(folder: Path, *, model: str = "Qwen/Qwen2.5-0.5B-Instruct", attn: str = "sdpa",
                 use_4bit: bool = True, seq: int = 512, steps: int = 5, save_steps: int = 50,
                 training_extra: str = "") -> Path:
    """Write config.yaml (and data/) into ``folder``; the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    shutil.copy(ROOT / "data" / "sample_instructions.jsonl", folder / "data" / "sample_instructions.jsonl")
    text = CONFIG.format(model=model, attn=attn, use_4bit=str(use_4bit).lower(), seq=seq, steps=steps,
                         save_steps=save_steps, training_extra=training_extra)
    path = folder / "config.yaml"
    path.write_text(text)
    return path


def fake_gpu(folder: Path, *, name: str = "NVIDIA GeForce RTX 3090", total: int = 24 * GiB,
             used: int = 1 * GiB, util: int = 37) -> Path:
    """A FakeNvml description (fmllm_tui.gpu) of one idle GPU."""
    spec = {"driver": "550.54.15", "cuda": 12040,
            "devices": [{"name": name, "total": total, "used": used, "cc": [8, 6], "uuid": "GPU-test",
                         "util": util, "processes": []}]}
    p = folder / "nvml.json"
    p.write_text(json.dumps(spec))
    return p


def quiet_env(monkeypatch: pytest.MonkeyPatch, home: Path, nvml: Path | None) -> None:
    """Same environment on every machine: no Hub, a fake (or no) GPU, no allocator or CUDA
    variables leaking in, and the child processes importing this checkout."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf-home" / "hub"))
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    for name in ("CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH", "FMLLM_CONFIG", "FMLLM_GPU",
                 "FMLLM_VRAM", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    if nvml is not None:
        monkeypatch.setenv("FMLLM_FAKE_NVML", str(nvml))
    else:
        monkeypatch.setenv("FMLLM_FAKE_NVML", str(_no_gpu(home)))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def _no_gpu(folder: Path) -> Path:
    p = folder / "no-gpu.json"
    p.write_text(json.dumps({"init_error": "Driver Not Loaded"}))
    return p


def timeout_scale() -> float:
    """How many times longer than on an idle machine the tests wait (FMLLM_TEST_TIMEOUT_SCALE,
    default 4): a loaded 2-core CI machine running two test workers is several times slower, and
    waiting longer costs nothing when the condition comes true early."""
    raw = os.environ.get("FMLLM_TEST_TIMEOUT_SCALE", "4")
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"FMLLM_TEST_TIMEOUT_SCALE must be a number such as 4, not {raw!r}") from None
    if not scale > 0:
        raise ValueError(f"FMLLM_TEST_TIMEOUT_SCALE must be above 0, not {raw!r}")
    return scale


def scaled(seconds: float) -> float:
    """``seconds`` as a ceiling on waiting for something (a frame, a process, a run's end), scaled
    by ``timeout_scale()``. Only for ceilings: never for how long something must last."""
    return seconds * timeout_scale()


async def wait_until(pilot: Any, predicate: Callable[[], bool], timeout: float = 60.0,
                     what: str = "condition") -> None:
    """Let the app run until ``predicate()`` holds; fail the test with ``what`` after ``timeout``
    (scaled: see ``timeout_scale``)."""
    timeout = scaled(timeout)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        await pilot.pause(0.1)
    try:
        shown = screen_text(pilot.app)
    except Exception as e:  # the screen itself may be what broke
        shown = f"(screen unavailable: {e})"
    notes = [n.message for n in getattr(pilot.app, "_notifications", [])]
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; notifications {notes}; "
                         f"the screen:\n{shown}")


async def checks_done(pilot: Any, timeout: float = 90.0) -> None:
    """Wait for the current check run to finish with results."""
    app = pilot.app
    await wait_until(pilot, lambda: not app.checks.running and (app.checks.results or app.checks.error),
                     timeout, "the checks to finish")
    await pilot.pause(0.1)


def screen_text(app: Any) -> str:
    """What the terminal shows now, as plain text (the top screen composited over the others)."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in strip) for strip in strips)
