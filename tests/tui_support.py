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


async def open_memory_screen(pilot: Any) -> Any:
    """Press 2 and wait for the Memory screen's whole load: the plan comes before the budget it is
    drawn against, so wait for both. Returns the screen."""
    await pilot.press("2")
    app = pilot.app
    await wait_until(pilot, lambda: type(app.screen).__name__ == "MemoryScreen" and app.screen.plan is not None
                     and app.screen.budget is not None, 20, "the memory plan and its budget")
    return app.screen


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


# What a QLoRA run's log looks like on a recent stack (bitsandbytes 0.48, transformers 4.5x).
NOISY_LOG = """\
[fmllm] starting: python -m fmllm_tui.runner.train --run-dir /r
Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. Please make sure you already `pip install kernels` and the kernels >= 0.11.1
/venv/lib/python3.11/site-packages/transformers/training_args.py:1525: FutureWarning: `evaluation_strategy` is deprecated and will be removed in version 4.46 of Transformers. Use `eval_strategy` instead
  warnings.warn(
/venv/lib/python3.11/site-packages/peft/tuners/lora/bnb.py:348: UserWarning: Merge lora module to 4-bit linear may get different generations due to rounding errors.
  warnings.warn(
Loading checkpoint shards: 100%|██████████| 2/2 [00:01<00:00,  1.50it/s]
/venv/lib/python3.11/site-packages/torch/utils/checkpoint.py:91: UserWarning: None of the inputs have requires_grad=True. Gradients will be None
{'loss': 2.31, 'grad_norm': 0.5, 'learning_rate': 0.0002, 'epoch': 0.5}
Traceback (most recent call last):
  File "train.py", line 3, in <module>
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB
"""


def stopped_run(folder: Path) -> Path:
    """A minimal test stopped at step 2 of 5 whose last logged row is step 1, and whose rows
    include the epoch-end row the Trainer logs with no tokens since the row before."""
    run = folder / "run"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"kind": "test"}))
    rows = [{"step": 1, "max_steps": 5, "loss": 2.5, "tokens_per_s": 812.0, "tokens": 812, "eta_s": 4},
            {"step": 1, "max_steps": 5, "loss": 2.4, "tokens_per_s": 0.0, "tokens": 812, "eta_s": 4}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "train.log").write_text(NOISY_LOG)
    (run / "result.json").write_text(json.dumps({"status": "stopped", "steps": 2, "message": "stopped at step 2"}))
    (run / "exit.json").write_text(json.dumps({"status": "stopped", "exit_code": 0, "kind": "test",
                                               "message": "stopped at step 2", "wall_s": 3.0}))
    return run
