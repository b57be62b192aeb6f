"""fmllm-check --fix / --dry-run / --undo / --preset end to end on a person's file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fmllm_tui.cli_check import main

ROOT = Path(__file__).resolve().parents[1]


def shipped_copy(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.yaml"
    shutil.copy(ROOT / "config.yaml", cfg)
    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "data" / "sample_instructions.jsonl", tmp_path / "data")
    return cfg


def statuses(capsys, *args: str) -> tuple[int, dict]:
    code = main([*args, "--json"])
    doc = json.loads(capsys.readouterr().out)
    return code, {c["id"]: c for c in doc["checks"]}


def test_fix_applies_then_rechecks_and_keeps_comments(tmp_path, capsys):
    cfg = shipped_copy(tmp_path)
    original = cfg.read_text()
    code = main(["--config", str(cfg), "--gpu", "RTX 3090", "--offline", "--fix", "--only", "gpu.bf16"])
    out = capsys.readouterr().out
    assert code == 0
    assert "before --fix: 0 failed, 1 warning; after: 0 failed, 0 warnings" in out
    new = cfg.read_text()
    assert "bnb_4bit_compute_dtype: bfloat16 # bfloat16 on Ampere" in new
    # Only that value changed: every other line, comments included, is byte-identical.
    diff_lines = [(a, b) for a, b in zip(original.splitlines(), new.splitlines(), strict=True) if a != b]
    assert len(diff_lines) == 1 and len(original.splitlines()) == len(new.splitlines())
    assert (tmp_path / "config.yaml.bak").read_text() == original
    code, checks = statuses(capsys, "--config", str(cfg), "--gpu", "RTX 3090", "--offline", "--only", "gpu.bf16")
    assert checks["gpu.bf16"]["status"] == "pass"


def test_dry_run_writes_nothing(tmp_path, capsys):
    cfg = shipped_copy(tmp_path)
    before = cfg.read_bytes()
    main(["--config", str(cfg), "--gpu", "RTX 3090", "--offline", "--fix", "--dry-run", "--only", "gpu.bf16"])
    out = capsys.readouterr().out
    assert "--dry-run" in out and "-    bnb_4bit_compute_dtype: float16" in out
    assert cfg.read_bytes() == before and not (tmp_path / "config.yaml.bak").exists()


def test_undo_restores_and_says_so(tmp_path, capsys):
    cfg = shipped_copy(tmp_path)
    before = cfg.read_bytes()
    main(["--config", str(cfg), "--gpu", "RTX 3090", "--offline", "--fix", "--only", "gpu.bf16"])
    capsys.readouterr()
    assert cfg.read_bytes() != before
    assert main(["--config", str(cfg), "--undo"]) == 0
    assert "restored" in capsys.readouterr().out
    assert cfg.read_bytes() == before


def test_undo_without_backup_is_a_usage_error(tmp_path, capsys):
    cfg = shipped_copy(tmp_path)
    assert main(["--config", str(cfg), "--undo"]) == 2
    assert "backup" in capsys.readouterr().err


def test_memory_fix_makes_a_14b_fit_12gib(tmp_path, capsys):
    cfg = shipped_copy(tmp_path)
    # Long examples (about 2,000 tokens) that fit once the micro-batch drops: no example is cut,
    # so the change set is safe (a cut that truncates them would be offered, never applied).
    long_row = json.dumps({"instruction": "Summarise. " + "word " * 1500, "input": "", "output": "ok"})
    (tmp_path / "data" / "sample_instructions.jsonl").write_text((long_row + "\n") * 4)
    cfg.write_text(cfg.read_text().replace("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-14B-Instruct")
                   .replace("max_seq_length: 1024", "max_seq_length: 4096")
                   .replace("per_device_train_batch_size: 1 ", "per_device_train_batch_size: 4 ")
                   .replace("gradient_accumulation_steps: 8 ", "gradient_accumulation_steps: 2 "))
    code, checks = statuses(capsys, "--config", str(cfg), "--vram", "12GiB", "--offline", "--only", "config.fit")
    fit = checks["config.fit"]
    assert fit["status"] == "fail" and code == 1
    assert fit["values"]["predicted_peak_bytes"] > fit["values"]["budget_bytes"]
    keys = {c["key"] for c in fit["fix"]["changes"]}
    assert "fine_tuning.training.per_device_train_batch_size" in keys and fit["fix"]["safe"]
    code = main(["--config", str(cfg), "--vram", "12GiB", "--offline", "--fix", "--only", "config.fit"])
    capsys.readouterr()
    code, checks = statuses(capsys, "--config", str(cfg), "--vram", "12GiB", "--offline", "--only", "config.fit")
    assert checks["config.fit"]["status"] in ("pass", "warn"), checks["config.fit"]["finding"]
    # The effective batch (micro-batch x accumulation) is kept.
    from fmllm_tui.config import load_config

    assert load_config(cfg).view.effective_batch == 8


def test_preset_then_undo(tmp_path, capsys):
    cfg = shipped_copy(tmp_path)
    before = cfg.read_bytes()
    assert main(["--config", str(cfg), "--list-presets"]) == 0
    listed = capsys.readouterr().out
    for name in ("7b-10gb", "14b-12gb", "14b-24gb", "70b-multi-gpu"):
        assert name in listed
    main(["--config", str(cfg), "--preset", "14b-24gb", "--offline", "--gpu", "RTX 3090", "--only", "config"])
    out = capsys.readouterr().out
    assert "Qwen/Qwen2.5-14B-Instruct" in cfg.read_text() and "backup:" in out
    assert main(["--config", str(cfg), "--undo"]) == 0
    assert cfg.read_bytes() == before


def test_unknown_preset_and_fix_on_invalid_config(tmp_path, capsys):
    cfg = shipped_copy(tmp_path)
    assert main(["--config", str(cfg), "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    cfg.write_text("fine_tuning:\n  base_model_name: m\n  lora:\n    r: eight\n")
    before = cfg.read_bytes()
    assert main(["--config", str(cfg), "--fix", "--vram", "24GiB"]) == 2
    assert cfg.read_bytes() == before


def test_fix_on_the_shipped_config_for_an_rtx_3080_makes_nothing_worse(tmp_path, capsys):
    """The regression of the "one plan" issue: config.fit planned for the data's longest example
    and multi_gpu_fit for max_seq_length, so the fit's change set (micro-batch 8, no
    checkpointing) turned multi_gpu_fit into "use a smaller model". Both now read one planned
    length and show one peak; a second --fix changes nothing."""
    cfg = shipped_copy(tmp_path)
    args = ("--config", str(cfg), "--gpu", "RTX 3080", "--offline")
    _, before = statuses(capsys, *args)
    assert before["config.fit"]["values"]["predicted_peak_bytes"] == before["config.multi_gpu_fit"]["values"][
        "single_gpu_peak_bytes"]
    main([*args, "--fix"])
    capsys.readouterr()
    fixed = cfg.read_text()
    _, after = statuses(capsys, *args)
    passed_before = {k for k, c in before.items() if c["status"] == "pass"}
    assert not [k for k in passed_before if after[k]["status"] == "fail"], {k: after[k]["finding"] for k in after}
    assert sum(c["status"] == "fail" for c in after.values()) <= sum(c["status"] == "fail" for c in before.values())
    assert after["config.multi_gpu_fit"]["status"] == "pass"
    assert after["config.fit"]["values"]["predicted_peak_bytes"] == after["config.multi_gpu_fit"]["values"][
        "single_gpu_peak_bytes"]
    main([*args, "--fix"])
    capsys.readouterr()
    assert cfg.read_text() == fixed  # a second --fix changes nothing


def test_a_14b_on_an_rtx_3080_gets_the_one_card_plan_not_fsdp_for_gpus_it_lacks(tmp_path, capsys):
    """multi_gpu_fit reads config.fit's plan before proposing FSDP or a smaller model, and never
    writes a process count for GPUs the person did not say they have."""
    cfg = shipped_copy(tmp_path)
    cfg.write_text(cfg.read_text().replace("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-14B-Instruct"))
    args = ("--config", str(cfg), "--gpu", "RTX 3080", "--offline")
    _, before = statuses(capsys, *args)
    multi = before["config.multi_gpu_fit"]
    assert multi["status"] == "pass" and "fits one card with config.fit's changes" in multi["finding"], multi
    assert before["config.fit"]["status"] == "fail" and before["config.fit"]["fix"]
    main([*args, "--fix"])
    capsys.readouterr()
    text = cfg.read_text()
    assert "distributed" not in text and "num_processes" not in text
    _, after = statuses(capsys, *args)
    assert sum(c["status"] == "fail" for c in after.values()) == 0, {k: c["finding"] for k, c in after.items()
                                                                     if c["status"] == "fail"}


def test_a_sequence_cut_that_truncates_the_data_is_offered_never_applied(tmp_path, capsys):
    """When only a shorter max_seq_length fits and the data is longer, the change set is an
    unsafe fix: the finding gives the share truncated, and --fix leaves the file alone."""
    cfg = shipped_copy(tmp_path)
    cfg.write_text(cfg.read_text().replace("max_seq_length: 1024", "max_seq_length: 8192"))
    data = tmp_path / "data" / "sample_instructions.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    data.write_text("".join(json.dumps({**r, "output": " ".join(f"word{j}" for j in range(2000 + 500 * i))}) + "\n"
                            for i, r in enumerate(rows)))
    args = ("--config", str(cfg), "--vram", "7GiB", "--offline", "--only", "config.fit")
    code, res = statuses(capsys, *args)
    fit = res["config.fit"]
    assert code == 1 and fit["status"] == "fail"
    assert fit["fix"]["safe"] is False
    assert any(c["key"] == "fine_tuning.training.max_seq_length" for c in fit["fix"]["changes"])
    assert "--fix does not apply it" in fit["finding"] and "of the examples" in fit["finding"]
    # a cut that ruins the fine-tune is not a sensible fit: what fits instead is named, with its peak
    assert fit["values"]["alternatives"] and "What fits instead:" in fit["finding"]
    assert all(0 < a["peak_bytes"] < fit["values"]["budget_bytes"] for a in fit["values"]["alternatives"])
    before = cfg.read_text()
    main([*args, "--fix"])
    out = capsys.readouterr().out
    assert cfg.read_text() == before, out  # nothing written: the only fix on offer is unsafe


def test_when_nothing_fits_one_card_the_finding_lists_what_does_and_applies_none(tmp_path, capsys):
    cfg = shipped_copy(tmp_path)
    cfg.write_text(cfg.read_text().replace("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-72B-Instruct"))
    args = ("--config", str(cfg), "--gpu", "RTX 3080", "--offline", "--only", "config.fit")
    code, res = statuses(capsys, *args)
    fit = res["config.fit"]
    assert code == 1 and fit["status"] == "fail" and fit["fix"] is None
    alts = fit["values"]["alternatives"]
    budget = fit["values"]["budget_bytes"]
    assert any(a["kind"] == "preset" and "7b-10gb" in a["what"] for a in alts)
    assert any(a["kind"] == "model" for a in alts) and all(0 < a["peak_bytes"] < budget for a in alts)
    assert "Nothing sensible fits one such card" in fit["finding"] and "None is applied for you" in fit["finding"]
    before = cfg.read_text()
    main([*args, "--fix"])
    capsys.readouterr()
    assert cfg.read_text() == before
