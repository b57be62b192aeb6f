"""Fixtures for fmllm's checks: the config, the GPU, the planning target, the model.

Options (also settable through the environment for CI):
  --fmllm-config PATH   (FMLLM_CONFIG)   the config.yaml to check (default ./config.yaml)
  --fmllm-gpu NAME      (FMLLM_GPU)      plan for a named GPU instead of this machine's
  --fmllm-vram SIZE     (FMLLM_VRAM)     plan for a memory budget, e.g. 10GiB
  --fmllm-log FILE                       extra training logs to scan (repeatable)
  --fmllm-offline                        never touch the network (also HF_HUB_OFFLINE=1)
  --fmllm-test                           also run the minimal fine-tuning test
  --fmllm-only ID                        run only these check ids (repeatable; prefixes work)
  --fmllm-report FILE                    stream results as JSON lines (for the TUI)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# The plugin's options, hooks and `report` fixture come from fmllm_tui.checks._plugin, which
# pytest loads through fmllm's `pytest11` entry point (fmllm-check names it with -p).
from fmllm_tui.config import ConfigError, LoadedConfig, load_config, parse_size


@dataclass
class Options:
    config_path: Path
    gpu: str | None
    vram: str | None
    logs: list[str] = field(default_factory=list)
    offline: bool = False
    run_test: bool = False


@pytest.fixture(scope="session")
def options(pytestconfig: pytest.Config) -> Options:
    cfg = pytestconfig.getoption("fmllm_config") or os.environ.get("FMLLM_CONFIG") or "config.yaml"
    offline = bool(pytestconfig.getoption("fmllm_offline")) or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "TRUE", "yes")
    return Options(
        config_path=Path(cfg),
        gpu=pytestconfig.getoption("fmllm_gpu") or os.environ.get("FMLLM_GPU") or None,
        vram=pytestconfig.getoption("fmllm_vram") or os.environ.get("FMLLM_VRAM") or None,
        logs=list(pytestconfig.getoption("fmllm_log") or []),
        offline=offline,
        run_test=bool(pytestconfig.getoption("fmllm_test")),
    )


@pytest.fixture(scope="session")
def config_or_error(options: Options) -> LoadedConfig | ConfigError:
    try:
        return load_config(options.config_path)
    except ConfigError as e:
        return e


@pytest.fixture(scope="session")
def loaded(config_or_error: LoadedConfig | ConfigError) -> LoadedConfig:
    """The loaded config; checks that need it skip when it cannot be read."""
    if isinstance(config_or_error, ConfigError):
        pytest.skip("the config could not be read (see check config.valid)")
    return config_or_error


@pytest.fixture(scope="session")
def inventory() -> Any:
    """What NVML says about this machine's GPUs (never raises)."""
    from fmllm_tui import gpu

    return gpu.probe()


@dataclass
class Target:
    """The GPU the run is planned for: this machine's, or one the person named."""

    name: str
    budget_bytes: int
    total_bytes: int | None
    compute_capability: tuple[int, int] | None
    planning: bool  # True when the person named a GPU/size instead of this machine's
    source: str
    device_index: int | None = None
    card: Any = None  # the gpudb card (speed model, bf16) when known


@pytest.fixture(scope="session")
def planning(options: Options, config_or_error: Any) -> tuple[str | None, str | None]:
    """(gpu name, vram) the person plans for, from the command line or the config; (None, None)
    when the run is checked against this machine's GPU."""
    view = None if isinstance(config_or_error, ConfigError) else config_or_error.view
    gpu_name = options.gpu or (view.fmllm.target_gpu if view else None)
    vram = options.vram or (view.fmllm.vram if view else None)
    return gpu_name, vram


@pytest.fixture(scope="session")
def target(options: Options, planning: tuple[str | None, str | None], inventory: Any) -> Target:
    """The planning target: --gpu/--vram, fmllm.target_gpu/vram, else the first local GPU."""
    gpu_name, vram = planning
    if gpu_name:
        from fmllm_tui import gpudb

        card = gpudb.lookup(gpu_name)
        budget = parse_size(vram) if vram else card.usable_bytes
        src = "--gpu" if options.gpu else "fmllm.target_gpu"
        return Target(card.name, budget, card.memory_bytes, card.compute_capability, True, src, card=card)
    if vram:
        try:
            budget = parse_size(vram)
        except ValueError as e:
            pytest.fail(f"--vram: {e}")
        cc = None
        if inventory.ok and inventory.devices:
            cc = inventory.devices[0].compute_capability
        return Target(f"{budget / 2**30:.1f} GiB budget", budget, budget, cc, True, "--vram" if options.vram else "fmllm.vram")
    if inventory.ok and inventory.devices:
        from fmllm_tui import gpudb

        d = inventory.devices[0]
        return Target(d.name, d.free_bytes, d.total_bytes, d.compute_capability, False, "nvml", d.index,
                      card=gpudb.match_nvml(d.name, d.total_bytes))
    pytest.skip("no GPU to plan for: this machine has none (see gpu.devices); name one with --gpu 'RTX 3090' or --vram 24GiB")


# Model findings a known public model can survive: the runner can still fetch it later.
SOFT_KINDS = ("unreachable", "offline_missing")
# Findings where the model exists but cannot be fetched yet: planning can still use the catalogue.
CATALOGUE_KINDS = (*SOFT_KINDS, "gated_no_token", "gated_no_access", "invalid_token")


@pytest.fixture(scope="session")
def model_status(loaded, options):
    from fmllm_tui import hub

    v = loaded.view
    return hub.check_model(v.base_model_name, revision=v.fmllm.revision, offline=options.offline or None)


@pytest.fixture(scope="session")
def architecture(loaded, model_status):
    """(config.json dict, where it came from) or (None, "none")."""
    from fmllm_tui import catalogue

    if model_status.config is not None:
        return model_status.config, {"local_dir": "local", "hub": "hub"}.get(model_status.kind, "cache")
    if model_status.kind in CATALOGUE_KINDS:
        arch = catalogue.get_architecture(loaded.view.base_model_name)
        if arch is not None:
            return arch, "catalogue"
    return None, "none"


@pytest.fixture(scope="session")
def data_report(loaded):
    from fmllm_tui.datafile import inspect_data

    path = loaded.view.data_file
    if not path or not os.path.isfile(path):
        return None
    return inspect_data(path, loaded.view.data_format, model=loaded.view.base_model_name)


@pytest.fixture(scope="session")
def seq_plan(loaded, data_report) -> tuple[int, str | None]:
    """(planned_seq_len, why): the sequence length every check plans for (fitsearch.planning_seq_len:
    the data's longest example when known, else max_seq_length), and why when it is not max_seq_length."""
    from fmllm_tui.datafile import lengths_of
    from fmllm_tui.fitsearch import planning_seq_len

    lengths = lengths_of(data_report)
    return planning_seq_len(loaded.view.training.max_seq_length, lengths)


@dataclass
class FitPlan:
    """config.fit's plan, shared so every check that judges the fit reads the same one."""

    mode: str
    n_gpus: int
    view: Any  # the view as the runner trains it (fsdp_view under FSDP)
    fit: Any  # fitsearch.FitResult
    lengths: list[int] | None


@pytest.fixture(scope="session")
def fit_plan(loaded, target, architecture, data_report, inventory, seq_plan) -> FitPlan:
    """The fit search for the config on the target (skips when the architecture is unknown)."""
    from fmllm_tui import fitsearch
    from fmllm_tui.datafile import lengths_of

    arch, _source = architecture
    if arch is None:
        pytest.skip("the model's architecture is unknown (see model.available), so its memory cannot be predicted")
    v = loaded.view
    from fmllm_tui.multigpu import planned_mode

    n_local = len(inventory.devices) if inventory.ok and inventory.devices else 0
    mode, n = planned_mode(v, arch, target.budget_bytes, planned=target.planning, n_local=n_local,
                           seq_len=seq_plan[0])
    if mode == "fsdp":
        from fmllm_tui.multigpu import fsdp_view

        v = fsdp_view(v)  # as the FSDP runner trains it: the input embedding stays on the GPUs
    lengths = lengths_of(data_report)
    fit = fitsearch.fit(v, arch, target.budget_bytes, example_lengths=lengths, gpu=target.card, mode=mode, n_gpus=n)
    return FitPlan(mode, n, v, fit, lengths)
