"""One writer of a real run's config.yaml, for the tests that launch training and for the resume bench.

Every such config shares one shape: a LoRA on q_proj/v_proj over tests' sample instructions, a
constant learning rate with no warmup and a log row per step; callers name only what differs.
No pytest import here: bench/bench_resume_gpu.py imports this module through sys.path.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample_instructions.jsonl"

LORA: dict[str, Any] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
TRAINING: dict[str, Any] = {
    "per_device_train_batch_size": 2,
    "learning_rate": 0.01,
    "lr_scheduler_type": "constant",
    "warmup_ratio": 0.0,
    "max_seq_length": 96,
    "logging_steps": 1,
}
# What a 4-bit QLoRA run adds: the quantization block and the paged optimizer that goes with it.
QLORA_QUANTIZATION: dict[str, Any] = {"use_4bit": True, "bnb_4bit_compute_dtype": "bfloat16"}
QLORA_OPTIM = "paged_adamw_32bit"


def yaml_block(text: str) -> dict[str, Any]:
    """A YAML mapping written as an indented snippet (as tests write extra settings), as a dict."""
    return yaml.safe_load(textwrap.dedent(text)) or {}


def write_run_config(folder: Path, model: Path | str, *, data: Path | None = SAMPLE,
                     output: Path | str | None = None, data_format: str | None = None,
                     qlora: bool = False, lora: dict[str, Any] | None = None,
                     training: dict[str, Any] | None = None,
                     fmllm: dict[str, Any] | None = None) -> Path:
    """Write ``folder/config.yaml`` for a run of `model` and return its path.

    `lora`, `training` and `fmllm` add to (or override) the shared settings; `data=None` leaves the
    data file out; `output` replaces ``folder/out``; `qlora` adds 4-bit quantization and its optimizer.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {"output_dir": str(output or folder / "out")}
    if data:
        paths["ft_combined_data_file"] = str(data)
    fine_tuning: dict[str, Any] = {"base_model_name": str(model)}
    if data_format:
        fine_tuning["data_format"] = data_format
    fine_tuning["lora"] = {**LORA, **(lora or {})}
    train = dict(TRAINING)
    if qlora:
        fine_tuning["quantization"] = dict(QLORA_QUANTIZATION)
        train["optim"] = QLORA_OPTIM
    fine_tuning["training"] = {**train, **(training or {})}
    doc = {"paths": paths, "fine_tuning": fine_tuning, "fmllm": fmllm or {}}
    cfg = folder / "config.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return cfg
