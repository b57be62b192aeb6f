"""Multi-GPU checks: the GPUs for the planned mode (count, free memory, NCCL), whether the model
fits one card or several with FSDP, host RAM for FSDP's CPU loading and for its CPU offload."""

from __future__ import annotations

from typing import Any

import pytest
from fmllm_tui.checks._plugin import check, planned_fix

from fmllm_tui.findings import Change, Fix
from fmllm_tui.units import gib

NCCL_FIX = Fix(id="gpu.nccl", shell="pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu124",
               summary="a CUDA build of torch (Linux wheels ship NCCL); pick the CUDA version your driver supports")


_gib = gib


def _local_devices(inventory: Any) -> list[Any]:
    return list(inventory.devices) if inventory.ok and inventory.devices else []


def _short_gpus(report: Any, view: Any, arch: dict[str, Any], devices: list[Any], mode: str, n: int) -> str | None:
    """The GPUs of a ``mode`` (ddp or fsdp) launch of ``n`` processes whose free memory is short of
    the plan's per-GPU peak plus fmllm's margin, in words (None when every one has room)."""
    from fmllm_tui import fitsearch, memory
    from fmllm_tui import multigpu as dist

    per = memory.predict(dist.fsdp_view(view) if mode == "fsdp" else view, arch, mode=mode, n_gpus=n)
    report.set(per_gpu_peak_bytes=per.peak_process_bytes)
    used = devices[: max(1, n // max(1, view.fmllm.distributed.num_machines))]
    short = [dv for dv in used if per.peak_process_bytes > dv.free_bytes - fitsearch.default_margin(dv.free_bytes)]
    if not short:
        return None
    which = (f"GPU {short[0].index} has {_gib(short[0].free_bytes)} free" if len(short) == 1 else
             "GPUs " + ", ".join(str(dv.index) for dv in short) + " have "
             + ", ".join(_gib(dv.free_bytes) for dv in short) + " free")
    others = ", ".join(f"PID {p.pid} {p.name} {_gib(p.used_bytes)} on GPU {dv.index}"
                       for dv in short for p in dv.processes)
    return (f"{which} but the {mode} plan needs {_gib(per.peak_process_bytes)} per GPU plus fmllm's "
            "margin (see config.multi_gpu_fit)" + (f"; other processes hold memory there: {others}" if others else ""))


def _change(key: str, old: Any, new: Any, why: str) -> Change:
    return Change(key=key, to=new, from_=old, comment=why)


def _fix(loaded: Any, changes: list[Change]) -> Fix | None:
    if not changes:
        return None
    lines = "; ".join(f"{c.key} {c.from_} -> {c.to} ({c.comment})" for c in changes)
    return planned_fix(loaded, "memory.fit", {"changes": changes}, summary=lines)


@check("gpu.count", "GPUs for the planned mode: count, free memory, NCCL", "gpu")
def test_gpu_count(report, loaded, inventory, planning, architecture):
    from fmllm_tui import multigpu as dist
    from fmllm_tui.runner.distributed import (
        nccl_probe,  # a hardware probe (a child with torch), not planning
    )

    devices = _local_devices(inventory)
    if not devices:
        if any(planning):
            report.skip(f"planning for {planning[0] or planning[1]}: this machine's GPUs are not checked")
        report.skip(f"no GPU visible here ({inventory.error or 'NVML sees none'}; see gpu.devices)")
    view = loaded.view
    d = view.fmllm.distributed
    arch, _ = architecture
    fits, single = dist.fits_one_card(view, arch, [dv.free_bytes for dv in devices])
    report.set(n_gpus=len(devices), fits_one_card=fits,
               single_gpu_peak_bytes=single.peak_process_bytes if single is not None else None,
               devices=[{"index": dv.index, "name": dv.name, "free_bytes": dv.free_bytes, "total_bytes": dv.total_bytes}
                        for dv in devices])
    try:
        mode, n, reason = dist.plan_mode(view, len(devices), fits)
    except dist.DistributedError as e:
        changes = []
        if d.num_processes and d.num_processes > len(devices) * d.num_machines:
            changes.append(_change("fmllm.distributed.num_processes", d.num_processes, len(devices) * d.num_machines,
                                   f"one process per visible GPU ({len(devices)} here)"))
        report.fail(str(e), _fix(loaded, changes))
    report.set(mode=mode, n_processes=n, reason=reason)
    lines = [f"GPU {dv.index} {dv.name}: {_gib(dv.free_bytes)} free of {_gib(dv.total_bytes)}" for dv in devices]
    problems: list[str] = []
    fix: Fix | None = None
    if mode in ("ddp", "fsdp") and arch is not None:
        short = _short_gpus(report, view, arch, devices, mode, n)
        if short:
            problems.append(short)
    nccl: dict[str, Any] | None = None
    if len(devices) > 1:
        # Only here: the probe imports torch in a child (seconds), and one GPU needs no NCCL.
        nccl = nccl_probe()
        report.set(nccl=nccl)
        if mode in ("ddp", "fsdp") and not (nccl.get("ok") and nccl.get("nccl")):
            why = nccl.get("error") or (f"torch {nccl.get('torch')} (CUDA {nccl.get('cuda') or 'none'}) has no NCCL")
            problems.append(f"NCCL is not available ({why}): {mode} over {n} GPUs needs it to exchange gradients")
            fix = NCCL_FIX
            if fits and d.mode == "auto":
                fix = _fix(loaded, [_change("fmllm.distributed.mode", d.mode, "single",
                                            "NCCL is unavailable and the model fits one GPU")]) or NCCL_FIX
    head = "; ".join(lines) + f". Plan: {mode}" + (f" over {n} processes" if n > 1 else "") + f" ({reason})"
    if problems:
        report.fail(f"{head}. " + " ".join(p[0].upper() + p[1:] + "." for p in problems), fix)
    if nccl and nccl.get("nccl"):
        head += f"; NCCL {nccl.get('nccl_version') or 'available'}"
    report.ok(head)


@check("config.multi_gpu_fit", "The model fits one GPU, or several with FSDP", "memory")
def test_multi_gpu_fit(report, loaded, inventory, planning, architecture, request, seq_plan):
    from fmllm_tui import fitsearch, memory
    from fmllm_tui import multigpu as dist

    arch, source = architecture
    if arch is None:
        report.skip("the model's architecture is unknown (see model.available), so its memory cannot be predicted")
    view = loaded.view
    d = view.fmllm.distributed
    budget, where, available, planned = _fit_target(report, request, view, _local_devices(inventory), planning)
    margin = fitsearch.default_margin(budget)
    # The same sequence length config.fit plans for (the data's longest example when known).
    planned_seq_len, seq_why = seq_plan
    single = memory.predict(view, arch, mode="single", seq_len=planned_seq_len)
    report.set(single_gpu_peak_bytes=single.peak_process_bytes, budget_bytes=budget, margin_bytes=margin,
               gpus_available=available, planning=planned, architecture_source=source, mode=d.mode,
               cpu_offload=d.cpu_offload, planned_seq_len=planned_seq_len)
    one = (f"predicted single-GPU peak {_gib(single.peak_process_bytes)}, {_gib(budget)} available on {where}"
           + (f"; {seq_why}" if seq_why else ""))
    if single.peak_process_bytes <= budget - margin:
        _fits_one_card(report, loaded, d, one, available)
    one_card_fix = _one_card_fit(request, d)
    if one_card_fix is not None:
        report.set(fits_one_card_after_fit_changes=True)
        report.ok(f"fits one card with config.fit's changes ({one_card_fix}); as the config is: {one}")
    plan = dist.shard_search(view, arch, budget, available, planned_seq_len=planned_seq_len)
    if plan is None:
        report.fail(f"will not fit one card ({one}), nor {dist.MAX_PLAN_GPUS} such GPUs with FSDP and CPU offload. "
                    "Use a smaller model (fmllm-check --recommend) or GPUs with more memory.")
    _fits_with_fsdp(report, loaded, arch, plan, one=one, budget=budget, available=available, planned=planned)


def _fit_target(report: Any, request: pytest.FixtureRequest, view: Any, devices: list[Any],
                planning: Any) -> tuple[int, str, int, bool]:
    """What config.multi_gpu_fit plans for: (the budget of one GPU, its name, the GPUs available
    over every machine, whether it is a planned target rather than this machine's GPUs)."""
    from fmllm_tui.multigpu import gpus_per_machine

    d = view.fmllm.distributed
    planned = any(planning) or not devices
    if planned:
        try:
            target = request.getfixturevalue("target")
        except pytest.skip.Exception as e:
            report.skip(str(e.msg) if hasattr(e, "msg") else str(e))
        budget, where = target.budget_bytes, target.name
    else:
        budget = min(dv.free_bytes for dv in devices)
        where = devices[0].name if len(devices) == 1 else f"the smallest free of {len(devices)} GPUs"
    per_machine = gpus_per_machine(view, planned=planned, n_local=len(devices))
    return budget, where, per_machine * d.num_machines, planned


def _fits_one_card(report: Any, loaded: Any, d: Any, one: str, available: int) -> None:
    """End config.multi_gpu_fit for a model that fits one GPU (a warning when FSDP was asked for
    over several: DDP is faster then)."""
    if d.mode == "fsdp" and available > 1:
        fix = _fix(loaded, [_change("fmllm.distributed.mode", "fsdp", "ddp",
                                    "the model fits one GPU: DDP skips FSDP's per-layer gathering")])
        report.warn(f"fits one card ({one}): FSDP gathers every layer from the other GPUs at every step; DDP "
                    "trains faster when the whole model fits each GPU.", fix)
    report.ok(f"fits one card: {one}" + ("; auto trains with DDP over the "
                                         f"{available} GPUs" if d.mode == "auto" and available > 1 else ""))


def _fits_with_fsdp(report: Any, loaded: Any, arch: dict[str, Any], plan: Any, *, one: str, budget: int,
                    available: int, planned: bool) -> None:
    """End config.multi_gpu_fit for a model that needs FSDP's ``plan`` (a multigpu.ShardPlan):
    a failure when the GPUs are too few or the config would not run that plan, else the
    per-GPU peak of what the runner will do."""
    from fmllm_tui import memory
    from fmllm_tui import multigpu as dist

    view = loaded.view
    d = view.fmllm.distributed
    report.set(fsdp_gpus=plan.n_gpus, fsdp_cpu_offload=plan.cpu_offload, fsdp_per_gpu_peak_bytes=plan.per_gpu_peak_bytes,
               fsdp_within_available=plan.within_available)
    if not plan.within_available:
        # Never a fix for more processes than the target has GPUs: a named card is one GPU unless
        # fmllm.distributed.num_processes says how many there are.
        have = (f"this machine has {available} GPU{'s' if available != 1 else ''}" if not planned else
                f"the target is {available} such GPU{'s' if available != 1 else ''}"
                + (" (set fmllm.distributed.num_processes to the number you have)" if not d.num_processes else ""))
        report.fail(f"will not fit one card ({one}); it needs {plan.describe()} and {have}. Use "
                    f"{plan.n_gpus} such GPUs, a smaller model (fmllm-check --recommend, or the card's preset: "
                    "fmllm-check --list-presets), or GPUs with more memory.")
    runner_n, changes = _fsdp_changes(d, plan, available, planned)
    if changes:
        report.fail(f"will not fit one card ({one}) but fits {plan.n_gpus} with {plan.describe()}.",
                    _fix(loaded, changes))
    per = memory.predict(dist.fsdp_view(view), arch, mode="fsdp", n_gpus=max(runner_n, 2))
    report.set(runner_gpus=runner_n, runner_per_gpu_peak_bytes=per.peak_process_bytes, peak_phase=per.peak_phase,
               training_peak_bytes=per.phase_peaks.get("training", per.peak_process_bytes))
    report.ok(f"does not fit one card ({one}); FSDP over {runner_n} GPUs" + (" with CPU offload" if d.cpu_offload else "")
              + f": per-GPU peak {_gib(per.peak_process_bytes)} ({per.peak_phase}) of {_gib(budget)}")


def _fsdp_changes(d: Any, plan: Any, available: int, planned: bool) -> tuple[int, list[Change]]:
    """The processes the runner would start with the config as it is (plan_mode's rules), and
    the changes of fmllm.distributed that make it run FSDP's ``plan``."""
    runner_n = d.num_processes or available
    runner_fsdp = runner_n > 1 and (d.mode == "fsdp" or (d.mode == "auto" and not planned))
    runner_n = runner_n if runner_fsdp else 1
    changes = []
    if not runner_fsdp:
        changes.append(_change("fmllm.distributed.mode", d.mode, "fsdp",
                               f"the model does not fit one GPU; FSDP shards it over {plan.n_gpus}"))
    if (planned and (d.num_processes or 1) < plan.n_gpus) or (d.num_processes and d.num_processes < plan.n_gpus):
        changes.append(_change("fmllm.distributed.num_processes", d.num_processes, plan.n_gpus,
                               f"one process per GPU over {plan.n_gpus} GPUs"))
    if plan.cpu_offload and not d.cpu_offload:
        changes.append(_change("fmllm.distributed.cpu_offload", d.cpu_offload, True,
                               "parameters wait in host RAM between uses (see host.offload_ram)"))
    return runner_n, changes


def _one_card_fit(request: pytest.FixtureRequest, d: Any) -> str | None:
    """config.fit's one-card change set, when it makes the run fit one GPU (what to say before
    FSDP or a smaller model); None when it does not, or FSDP was asked for."""
    if d.mode == "fsdp":
        return None
    try:
        plan = request.getfixturevalue("fit_plan")
    except pytest.skip.Exception:
        return None
    fit = plan.fit
    if plan.mode != "single" or not fit.fits or fit.fits_now or not fit.changes:
        return None
    return (f"predicted {_gib(fit.prediction_after.peak_process_bytes)} after "
            + ", ".join(f"{c.key} {c.from_} -> {c.to}" for c in fit.changes))


def _fsdp_host(report: Any, architecture: Any, inventory: Any, d: Any, unknown: str) -> tuple[Any, list[Any], int]:
    """The model's config.json (the check skips, saying ``unknown``, without it), this machine's
    GPUs, and the FSDP processes this machine runs (fmllm.distributed's, else one a GPU, else 2)."""
    arch, _ = architecture
    if arch is None:
        report.skip(unknown)
    devices = _local_devices(inventory)
    return arch, devices, (d.num_processes // d.num_machines) if d.num_processes else (len(devices) or 2)


@check("host.load_ram", "Host RAM for FSDP's loading", "host", severity="warning")
def test_load_ram(report, loaded, architecture, inventory):
    import psutil

    from fmllm_tui import multigpu as dist

    view = loaded.view
    d = view.fmllm.distributed
    if d.mode in ("single", "ddp"):
        report.skip(f"FSDP loads the model into CPU RAM first; mode is {d.mode}, which loads it onto each GPU")
    arch, devices, here = _fsdp_host(report, architecture, inventory, d,
                                     "the model's architecture is unknown, so its size in RAM cannot be estimated")
    if d.mode == "auto":
        # What the launch would pick here (plan_mode): FSDP only for a model that does not fit one
        # of several GPUs.
        fits, _ = dist.fits_one_card(view, arch, [dv.free_bytes for dv in devices])
        try:
            mode, _n, why = dist.plan_mode(view, len(devices), fits)
        except dist.DistributedError as e:
            report.skip(f"mode auto cannot plan a launch here ({e}); see gpu.count")
        if mode != "fsdp":
            report.skip(f"mode auto plans {mode} here ({why}), which loads onto each GPU")
    need = dist.load_host_ram_bytes(view, arch, here)
    vm, swap = psutil.virtual_memory(), psutil.swap_memory()
    report.set(needed_bytes=need, available_bytes=vm.available, total_bytes=vm.total, swap_free_bytes=swap.free,
               processes_here=here, basis="every process quantizes the whole model into CPU RAM before FSDP moves "
                                          "it to its GPU unit by unit; derived from the model's sizes")
    what = (f"with FSDP each of the {here} processes on this machine first loads the whole 4-bit model into CPU RAM: "
            f"about {_gib(need)} together")
    if d.mode == "auto":
        what = "mode auto trains this with FSDP: " + what
    if vm.available + swap.free < need:
        report.fail(f"{what}, but {_gib(vm.available)} is available (+{_gib(swap.free)} swap): the kernel would kill "
                    "the run while loading ('Killed'). Add RAM or swap, or run fewer processes on this machine "
                    "(fmllm.distributed.num_processes, num_machines).")
    if vm.available < need:
        report.warn(f"{what}; {_gib(vm.available)} is available (+{_gib(swap.free)} swap): it would swap while "
                    "loading. Close other programs or add RAM.")
    report.ok(f"{what}; {_gib(vm.available)} available")


@check("host.offload_ram", "Host RAM for FSDP CPU offload", "host", severity="warning")
def test_offload_ram(report, loaded, architecture, inventory):
    import psutil

    from fmllm_tui import multigpu as dist

    view = loaded.view
    d = view.fmllm.distributed
    if not d.cpu_offload:
        report.skip("fmllm.distributed.cpu_offload is off: FSDP keeps the parameters on the GPUs")
    if d.mode in ("single", "ddp"):
        report.skip(f"fmllm.distributed.cpu_offload applies to FSDP; mode is {d.mode}, so nothing is offloaded")
    arch, devices, here = _fsdp_host(report, architecture, inventory, d,
                                     "the model's architecture is unknown, so the offloaded size cannot be estimated")
    low, high = dist.offload_host_ram_bytes(arch, here)
    vm, swap = psutil.virtual_memory(), psutil.swap_memory()
    report.set(needed_low_bytes=low, needed_high_bytes=high, available_bytes=vm.available, total_bytes=vm.total,
               swap_free_bytes=swap.free, processes_here=here,
               basis="scaled by parameter count from the published 70B runs (PEFT FSDP guide ~107 GB; "
                     "Answer.AI fsdp_qlora just over 128 GB); not measured by fmllm")
    need = f"FSDP CPU offload of this model needs about {_gib(low)}-{_gib(high)} of host RAM ({here} processes)"
    if vm.available + swap.free < low:
        fix = None
        if devices:
            budget = min(dv.free_bytes for dv in devices)
            plan = dist.shard_search(view, arch, budget, len(devices) * d.num_machines, allow_offload=False)
            if plan is not None and plan.within_available:
                fix = _fix(loaded, [_change("fmllm.distributed.cpu_offload", True, False,
                                            f"host RAM is short and {plan.describe()} fits without offload")])
        report.fail(f"{need}, but {_gib(vm.available)} is available (+{_gib(swap.free)} swap): the kernel would kill "
                    "the run ('Killed'). Add RAM or swap, or turn fmllm.distributed.cpu_offload off if the GPUs fit "
                    "without it (see config.multi_gpu_fit).", fix)
    if vm.available < high:
        report.warn(f"{need}; {_gib(vm.available)} is available (+{_gib(swap.free)} swap): tight. Add 10-20 GB of "
                    "swap (Answer.AI's advice for exactly 128 GB) and close other programs.")
    report.ok(f"{need}; {_gib(vm.available)} available")
