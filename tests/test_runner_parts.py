"""The training process's parts (issue 18, items 4 and 5): the Trainer's arguments come from the
typed config, config.json's ``runner`` section is read in one place, the bench's instrumentation
is a callback of its own that an ordinary run never carries, and the supervisor's exit record
reads only this attempt's outcome."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from test_runner_launch import write_config

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fmllm_tui.config import load_config  # noqa: E402
from fmllm_tui.plan import RunPlan  # noqa: E402
from fmllm_tui.runner import rundir as rd  # noqa: E402
from fmllm_tui.runner.launch import build_spec  # noqa: E402
from fmllm_tui.runner.lean import RecipeError, honour_plan  # noqa: E402


def _args(spec: dict[str, Any], tmp_path: Path, kind: str, steps: int | None = None,
          notes: list[str] | None = None) -> Any:
    from fmllm_tui.runner import train

    view = train.typed_config(spec["config"])
    recipe = honour_plan(RunPlan.from_json(spec["plan"]), cuda=False, mode="single", bf16_supported=False)
    return train._training_args(view.training, recipe, tmp_path, kind, steps, [] if notes is None else notes), recipe


def test_the_trainers_arguments_are_the_typed_configs(tmp_path: Path, tiny_model_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMLLM_FAKE_NVML", raising=False)
    # write_config sets batch 2, accumulation 1, learning rate 0.01, a constant schedule, no warmup
    # and a row per step; these add the rest.
    cfg = write_config(tmp_path, tiny_model_dir, training="""\
        per_device_eval_batch_size: 3
        weight_decay: 0.01
        max_grad_norm: 0.3
        max_steps: 40
        save_steps: 7
        save_total_limit: 2
        seed: 123
        extra_args: {adam_beta2: 0.95, output_dir: /elsewhere}
        """)
    spec = build_spec(load_config(cfg), "train", device="cpu")
    notes: list[str] = []
    args, recipe = _args(spec, tmp_path, "train", notes=notes)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size, args.gradient_accumulation_steps) == (2, 3, 1)
    assert (args.learning_rate, args.weight_decay, args.max_grad_norm) == (0.01, 0.01, 0.3)
    assert (getattr(args, "warmup_ratio", None) or args.warmup_steps) == 0
    assert str(args.lr_scheduler_type.value) == "constant" and args.max_steps == 40 and args.seed == 123
    assert (args.save_steps, args.logging_steps, args.save_total_limit) == (7, 1, 2)
    assert str(args.optim.value) == recipe.optim and args.adam_beta2 == 0.95
    # fmllm's run folder wins over extra_args.output_dir, and the note says so.
    assert args.output_dir == str(tmp_path / rd.CHECKPOINTS)
    assert notes == ["training.extra_args.output_dir is set by fmllm (the run directory) and was ignored"]

    test_args, _ = _args(spec, tmp_path, "test", steps=3)
    # A minimal test: few steps, constant LR, no accumulation, a row per step, no checkpoints.
    assert (test_args.max_steps, test_args.gradient_accumulation_steps, test_args.logging_steps) == (3, 1, 1)
    assert str(test_args.save_strategy.value) == "no" and str(test_args.lr_scheduler_type.value) == "constant"
    assert test_args.warmup_steps == 0


def test_extra_args_that_are_not_trainer_arguments_are_refused(tmp_path: Path, tiny_model_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMLLM_FAKE_NVML", raising=False)
    cfg = write_config(tmp_path, tiny_model_dir, training="extra_args: {warp_factor: 9}\n")
    spec = build_spec(load_config(cfg), "train", device="cpu")
    with pytest.raises(RecipeError, match=r"training.extra_args: warp_factor is not transformers TrainingArguments"):
        _args(spec, tmp_path, "train")
    spec["config"]["training"]["extra_args"] = {"hub_token": "***"}  # what config.json holds of a secret
    notes: list[str] = []
    args, _ = _args(spec, tmp_path, "train", notes=notes)
    assert args.hub_token is None
    assert notes == ["training.extra_args.hub_token is a secret and was not passed to the training process"]


def test_a_config_json_without_a_setting_reads_the_config_models_default() -> None:
    """A bench's config.json names only what it sets: what it leaves out is FineTuneConfig's
    default (warmup_ratio 0.03), not a second default the training process kept (it read 0.0)."""
    from fmllm_tui.config import TrainingSettings
    from fmllm_tui.runner import train

    view = train.typed_config({"base_model_name": "m", "training": {"learning_rate": 0.001}})
    assert view.training.warmup_ratio == TrainingSettings().warmup_ratio == 0.03
    assert view.training.learning_rate == 0.001 and view.data_format == "instruction" and view.use_adapter
    with pytest.raises(RecipeError, match=r"config.json's config does not validate \(training.seed: "):
        train.typed_config({"base_model_name": "m", "training": {"seed": -1}})


def test_the_runner_section_is_read_in_one_place(tmp_path: Path, tiny_model_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from fmllm_tui.runner.runfiles import RunnerSettings

    monkeypatch.delenv("FMLLM_FAKE_NVML", raising=False)
    loaded = load_config(write_config(tmp_path, tiny_model_dir))
    for kind in ("train", "test"):
        raw = build_spec(loaded, kind, device="cpu", vram_bytes=2**30, overrides={"profile": True})["runner"]
        got = RunnerSettings.from_json(raw)
        assert (got.kind, got.device, got.steps, got.vram_bytes) == (kind, "cpu", raw["steps"], 2**30)
        assert (got.sample_generations, got.max_new_tokens) == (raw["sample_generations"], raw["max_new_tokens"])
        assert got.overrides == {"profile": True} and got.bench_asks("profile") and not got.bench_asks("memory_snapshot")
    # A bench's runner section with fewer keys, or none: launch's defaults.
    assert RunnerSettings.from_json({"kind": "test"}).max_new_tokens == 32
    assert RunnerSettings.from_json(None) == RunnerSettings(kind="train", device="auto", max_new_tokens=64,
                                                            sample_generations=3)


def test_the_bench_probe_is_there_only_when_a_bench_asks(tmp_path: Path) -> None:
    from fmllm_tui.runner.benchprobe import BenchProbe, bench_probe
    from fmllm_tui.runner.runfiles import RunFiles

    files = RunFiles(tmp_path)
    assert bench_probe(files, "cpu", {}, fsdp=False) is None
    assert bench_probe(files, "cpu", {"profile": False, "memory_snapshot": False}, fsdp=False) is None
    probe = bench_probe(files, "cpu", {"profile": True, "memory_snapshot": True}, fsdp=False)
    assert isinstance(probe, BenchProbe) and probe.profile_steps == (3, 5)
    assert not probe.snapshot  # the allocator records need CUDA

    def state(step: int) -> Any:
        return type("S", (), {"global_step": step, "max_steps": 8})()

    # The profiler runs over steps 4-5 (global_step 3 to 5) and writes its table there.
    probe.on_step_begin(None, state(3), None)
    assert probe.prof is not None
    torch.ones(64, 64) @ torch.ones(64, 64)
    probe.on_step_end(None, state(4), None)
    assert not (tmp_path / "profile.txt").exists()
    probe.on_step_end(None, state(5), None)
    assert probe.prof is None and "aten::mm" in (tmp_path / "profile.txt").read_text()
    assert not list(tmp_path.glob("memory_*"))


def test_the_exit_record_reads_this_attempts_outcome_only(tmp_path: Path) -> None:
    from fmllm_tui.runner.supervise import exit_record

    started = time.time()
    rd.write_json_atomic(tmp_path / rd.OUTCOME, {"status": "ok", "ts": started - 60, "message": "an earlier attempt"})
    (tmp_path / rd.LOG).write_text("[fmllm] starting\n")
    rec = exit_record(tmp_path, {"kind": "train"}, 1, started, started + 2)
    assert rec["outcome"] is None and rec["status"] == "failed" and rec["wall_s"] == 2
    assert rec["message"] == "the training command exited with code 1" and rec["kind"] == "train"
    rec = exit_record(tmp_path, {}, -9, started, started + 1)
    assert (rec["status"], rec["signal"], rec["exit_code"]) == ("killed", "SIGKILL", None)
    assert rec["message"] == "the training command was ended by SIGKILL"
    rd.write_json_atomic(tmp_path / rd.OUTCOME, {"status": "oom", "ts": started + 1, "exit_code": 4,
                                                 "message": "CUDA out of memory"})
    rec = exit_record(tmp_path, {}, 4, started, started + 2)
    assert (rec["status"], rec["message"], rec["recorded_by"]) == ("oom", "CUDA out of memory", "supervisor")
