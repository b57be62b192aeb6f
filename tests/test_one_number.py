"""One number: for the same config and card, config.fit, config.multi_gpu_fit, the Memory screen,
the Presets screen and --recommend show the same predicted peak (the "one plan" issue found
5.55, 6.1 and 6.08 GiB for the shipped config on an RTX 3080)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fmllm_tui import catalogue, fitsearch, gpudb, memory
from fmllm_tui.cli_check import main
from fmllm_tui.config import load_config
from fmllm_tui.datafile import example_lengths
from fmllm_tui.tui import memplan

ROOT = Path(__file__).resolve().parents[1]
MODEL = "Qwen/Qwen2.5-7B-Instruct"


def test_every_face_shows_the_same_peak_for_the_shipped_config_on_an_rtx_3080(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    shutil.copytree(ROOT / "data", tmp_path / "data")
    cfg = tmp_path / "config.yaml"
    shutil.copy(ROOT / "config.yaml", cfg)
    main(["--config", str(cfg), "--gpu", "RTX 3080", "--offline", "--json"])
    checks = {c["id"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    fit = checks["config.fit"]["values"]["predicted_peak_bytes"]
    assert checks["config.multi_gpu_fit"]["values"]["single_gpu_peak_bytes"] == fit

    loaded = load_config(cfg)
    arch = catalogue.get_architecture(MODEL)
    plan = memplan.MemoryPlan.build(loaded, arch, "catalogue")
    assert plan.predict().peak_process_bytes == fit  # the Memory screen
    assert plan.current.seq_len == loaded.view.training.max_seq_length  # its knob is still the setting

    # The Presets screen plans each preset's config at the same planned length.
    lengths = example_lengths(loaded.view)
    assert lengths and max(lengths) < loaded.view.training.max_seq_length
    rows = {r.name: r for r in memplan.preset_rows(loaded, offline=True)}
    from fmllm_tui.fixes import preset_changes
    from fmllm_tui.fixes.engine import render_loaded

    after = render_loaded(loaded, preset_changes(loaded, "7b-10gb"))[2]
    want = memory.predict(after.view, arch, seq_len=fitsearch.planning_seq_len(
        after.view.training.max_seq_length, lengths)[0]).peak_process_bytes
    assert rows["7b-10gb"].peak_bytes == want

    # --recommend plans the model at the same length: the same change set as config.fit's, and
    # the same peak after it.
    card = gpudb.lookup("RTX 3080")
    (rec,) = fitsearch.recommend(card.usable_bytes, loaded.view, gpu=card, model_ids=[MODEL],
                                 example_lengths=lengths, include_unfit=True)
    fit_after = checks["config.fit"]["values"]["fit"]
    assert rec.peak_process_bytes == fit_after["predicted_peak_after_bytes"]
    assert [(c.key, c.to) for c in rec.changes] == [(c["key"], c["to"]) for c in fit_after["changes"]]

    # The speed (issue 19): config.fit's predicted tokens/s and steps are the Memory screen's for
    # the same card, and --recommend's after the changes is config.fit's after them.
    values = checks["config.fit"]["values"]
    tps, where, eta = memplan.eta_line(plan, memplan.Budget(card.usable_bytes, "RTX 3080", "--gpu"))
    assert where == card.name and round(tps, 1) == values["predicted_tokens_per_s"]
    assert eta is not None and eta.endswith(f"for {values['planned_steps']} steps")
    assert round(rec.tokens_per_second, 1) == values["predicted_tokens_per_s_after"]


def test_a_planned_card_with_num_processes_plans_that_many_gpus_on_every_face(tmp_path, monkeypatch, capsys):
    """A named card counts as num_processes GPUs when the config says so (README, the plan table):
    config.fit predicts the per-GPU peak of the mode the run will use, as config.multi_gpu_fit and
    the Memory screen do (config.fit planned one GPU here before: a config that fits two 3090s with
    FSDP failed config.fit at the whole model's peak)."""
    from fmllm_tui import multigpu

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    shutil.copytree(ROOT / "data", tmp_path / "data")
    cfg = tmp_path / "config.yaml"
    text = (ROOT / "config.yaml").read_text().replace("\nfmllm:\n", "\nfmllm:\n  distributed:\n    mode: fsdp\n"
                                                       "    num_processes: 2\n", 1)
    cfg.write_text(text)
    main(["--config", str(cfg), "--gpu", "RTX 3090", "--offline", "--json"])
    checks = {c["id"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    values = checks["config.fit"]["values"]
    assert (values["mode"], values["n_gpus"]) == ("fsdp", 2)
    loaded = load_config(cfg)
    arch = catalogue.get_architecture(MODEL)
    seq = fitsearch.planning_seq_len(loaded.view.training.max_seq_length, example_lengths(loaded.view))[0]
    per_gpu = memory.predict(multigpu.fsdp_view(loaded.view), arch, mode="fsdp", n_gpus=2, seq_len=seq)
    assert values["predicted_peak_bytes"] == per_gpu.peak_process_bytes
    card = gpudb.lookup("RTX 3090")
    plan = memplan.MemoryPlan.build(loaded, arch, "catalogue", memplan.Budget(card.usable_bytes, card.name, "--gpu"),
                                    planned=True)
    assert plan.predict().peak_process_bytes == values["predicted_peak_bytes"]  # the Memory screen
    # without num_processes a named card is one GPU: FSDP cannot run there, planned as one process
    single = memplan.MemoryPlan.build(load_config(ROOT / "config.yaml"), arch, "catalogue", None, planned=True)
    assert (single.base.mode, single.base.n_gpus) == ("single", 1)
