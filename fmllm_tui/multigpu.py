"""The multi-GPU plan, torch-free: which mode a run takes (single, DDP, FSDP) and how many
processes, whether the model fits one card, the cheapest FSDP plan that fits each GPU, and the
host RAM an FSDP run needs. The checks, the fit search, the one plan (fmllm_tui/plan.py) and the
launcher (fmllm_tui/runner/distributed.py, which writes accelerate's config) all read it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODES = ("single", "ddp", "fsdp")
# Largest GPU count the shard search plans for (one host of 8 cards).
MAX_PLAN_GPUS = 8
# Host RAM per FSDP CPU-offload run, in bytes per model parameter, from the two published 70B
# runs: the PEFT FSDP guide (~107 GB for Llama-2-70B on 2 GPUs) and Answer.AI's fsdp_qlora
# ("just over 128 GB"). fmllm has not measured this itself (no GPU host with that much RAM).
OFFLOAD_RAM_BYTES_PER_PARAM = (1.55, 1.86)
# Each training process: Python, torch, CUDA libraries, tokenizer, data.
PROCESS_RAM_BYTES = 3 * 1024**3


class DistributedError(ValueError):
    """A distributed setting fmllm cannot run; the message says what and how to fix it."""


# ------------------------------------------------------------------------------------------------
# The mode
# ------------------------------------------------------------------------------------------------


def plan_mode(view: Any, n_gpus_visible: int, fits_one_card: bool | None, *, kind: str = "train",
              cpu: bool = False) -> tuple[str, int, str]:
    """(mode, total processes, why) for a run of ``view`` on this machine.

    ``fmllm.distributed.mode``: single, ddp and fsdp are taken as set (and checked against the
    GPUs visible here); auto picks single with one GPU, ddp when the model fits one card and
    several are visible, fsdp when it does not fit one card. ``fits_one_card`` None means the
    memory could not be predicted: auto then stays on one GPU and says so. A minimal test
    (``kind="test"``) of a model that fits one card runs on one. ``cpu``: a CPU run (several
    processes only with mode ddp, over gloo). Raises :class:`DistributedError`.
    """
    d = view.fmllm.distributed
    machines = int(d.num_machines)
    local = max(0, int(n_gpus_visible))
    if d.machine_rank >= machines:
        raise DistributedError(f"fmllm.distributed.machine_rank is {d.machine_rank} but num_machines is {machines}: "
                               f"ranks count 0 to {machines - 1}")
    if d.mode == "single":
        if machines > 1:
            raise DistributedError("fmllm.distributed.mode is single but num_machines is "
                                   f"{machines}: several machines need mode ddp or fsdp")
        return "single", 1, "fmllm.distributed.mode is single: one process on one GPU"
    if d.mode in ("ddp", "fsdp"):
        if cpu and d.mode == "fsdp":
            raise DistributedError("fmllm.distributed.mode is fsdp but this run is on the CPU: accelerate's FSDP "
                                   "needs CUDA GPUs. Use mode ddp for a multi-process CPU test, or run on GPUs")
        if cpu:
            n = int(d.num_processes or 0)
            if n < 2:
                raise DistributedError("fmllm.distributed.mode is ddp on the CPU: set fmllm.distributed.num_processes "
                                       "(2 or more processes, over gloo)")
            return d.mode, n, f"fmllm.distributed.mode is ddp: {n} CPU processes over gloo"
        if local == 0:
            raise DistributedError(f"fmllm.distributed.mode is {d.mode} but no GPU is visible here "
                                   "(see fmllm-check gpu.devices and CUDA_VISIBLE_DEVICES)")
        n = int(d.num_processes or local * machines)
        _check_count(n, local, machines)
        if n < 2:
            raise DistributedError(f"fmllm.distributed.mode is {d.mode} with {n} process: {d.mode} needs 2 or more "
                                   f"(one per GPU); {local} GPU{'s are' if local != 1 else ' is'} visible here. "
                                   "Use mode single (or auto) for one GPU")
        return d.mode, n, f"fmllm.distributed.mode is {d.mode}: {n} processes, one per GPU"
    # auto
    if cpu:
        return "single", 1, ("auto on the CPU: one process (mode ddp with num_processes runs several over gloo)")
    n = int(d.num_processes or local * machines)
    if n <= 1 and machines == 1:
        if fits_one_card is False:
            return "single", 1, ("auto: one GPU visible and the model does not fit it; FSDP needs several GPUs "
                                 "(see fmllm-check config.multi_gpu_fit)")
        return "single", 1, "auto: one GPU" if local <= 1 else "auto: fmllm.distributed.num_processes is 1"
    if fits_one_card is None:
        return "single", 1, (f"auto: the model's memory could not be predicted (its architecture is not known "
                             f"offline), so fmllm trains on one GPU; set fmllm.distributed.mode: ddp or fsdp to use "
                             f"all {n}")
    if fits_one_card and kind == "test" and machines == 1:
        return "single", 1, "auto: the model fits one GPU; the minimal test runs on one"
    _check_count(n, local, machines)
    if fits_one_card:
        return "ddp", n, f"auto: the model fits one GPU and {n} are visible: DDP, each GPU trains on its share"
    return "fsdp", n, f"auto: the model does not fit one GPU: FSDP shards it over {n}"


def gpus_per_machine(view: Any, *, planned: bool, n_local: int) -> int:
    """GPUs on each machine the plan counts: for a planned card (``--gpu``/``--vram``,
    ``fmllm.target_gpu``/``vram``) one, unless ``fmllm.distributed.num_processes`` says how many
    (spread over ``num_machines``); else the GPUs visible here."""
    d = view.fmllm.distributed
    if planned:
        return max(1, int(d.num_processes or 1) // max(1, int(d.num_machines)))
    return max(1, int(n_local))


def planned_mode(view: Any, arch: dict[str, Any] | None, budget_bytes: int | None, *, planned: bool,
                 n_local: int, seq_len: int | None = None) -> tuple[str, int]:
    """(mode, processes) every face predicts with (config.fit, the TUI's Memory screen): plan_mode
    over :func:`gpus_per_machine`; one GPU when the distributed settings are in error (gpu.count
    and config.multi_gpu_fit report that)."""
    from fmllm_tui import memory

    fits = None
    if arch is not None and budget_bytes is not None:
        try:
            fits = memory.predict(view, arch, seq_len=seq_len).peak_process_bytes <= budget_bytes
        except (ValueError, memory.ArchitectureError):
            fits = None
    try:
        mode, n, _why = plan_mode(view, gpus_per_machine(view, planned=planned, n_local=n_local), fits)
    except DistributedError:
        return "single", 1
    return (mode if mode in ("ddp", "fsdp") else "single"), max(1, n)


def _check_count(n: int, local: int, machines: int) -> None:
    """``n`` processes in all must split evenly over the machines, one per GPU here."""
    per_machine, rest = divmod(n, machines)
    if rest:
        raise DistributedError(f"fmllm.distributed.num_processes is {n}, not a multiple of num_machines "
                               f"{machines}: accelerate starts the same number of processes on every machine")
    if per_machine > local:
        raise DistributedError(f"fmllm.distributed.num_processes is {n} ({per_machine} per machine) but only "
                               f"{local} GPU{'s are' if local != 1 else ' is'} visible here: set num_processes to "
                               f"{local * machines} or fewer (one process per GPU)")


def fits_one_card(view: Any, arch: dict[str, Any] | None, free_bytes: list[int]) -> tuple[bool | None, Any]:
    """(whether the single-GPU prediction fits the smallest free memory less fmllm's margin, the
    prediction); (None, None) when the architecture is unknown or the memory model refuses it."""
    if not isinstance(arch, dict) or not free_bytes:
        return None, None
    from fmllm_tui import fitsearch, memory

    try:
        pred = memory.predict(view, arch, mode="single")
    except (memory.ArchitectureError, ValueError):
        return None, None
    budget = min(free_bytes)
    return pred.peak_process_bytes <= budget - fitsearch.default_margin(budget), pred


@dataclass
class ShardPlan:
    """FSDP over ``n_gpus`` (with CPU offload or not) and its per-GPU prediction."""

    n_gpus: int
    cpu_offload: bool
    per_gpu_peak_bytes: int
    budget_bytes: int
    margin_bytes: int
    within_available: bool
    prediction: Any

    def describe(self) -> str:
        off = " with parameters offloaded to CPU RAM" if self.cpu_offload else ""
        return f"FSDP over {self.n_gpus} GPUs{off} (per-GPU peak {self.per_gpu_peak_bytes / 2**30:.2f} GiB)"


def fsdp_view(view: Any, cpu_offload: bool | None = None) -> Any:
    """A copy of ``view`` as the FSDP runner trains it, for the memory model: the input embedding
    stays on the GPUs (the runner never offloads it under FSDP) and ``cpu_offload`` as given
    (None: as configured)."""
    v = view.model_copy(deep=True)
    v.fmllm.offload_embeddings = "off"
    if cpu_offload is not None:
        v.fmllm.distributed.cpu_offload = cpu_offload
    return v


def shard_search(view: Any, arch: dict[str, Any], budget_per_gpu: int, n_available: int, *,
                 allow_offload: bool = True, max_gpus: int = MAX_PLAN_GPUS,
                 planned_seq_len: int | None = None) -> ShardPlan | None:
    """The cheapest FSDP plan whose per-GPU prediction fits ``budget_per_gpu`` less the margin
    (at ``planned_seq_len`` tokens per example: fitsearch.planning_seq_len; default max_seq_length).

    Preference: without offload on the GPUs available, then with offload on them, then the
    same beyond what is available (``within_available`` False: more GPUs are needed); a config
    that sets ``fmllm.distributed.cpu_offload: true`` has chosen offload, so it comes first. Fewer
    GPUs first within each. None when nothing up to ``max_gpus`` fits.
    """
    from fmllm_tui import fitsearch, memory

    margin = fitsearch.default_margin(budget_per_gpu)
    limit = budget_per_gpu - margin
    offloads = (((True, False) if view.fmllm.distributed.cpu_offload else (False, True)) if allow_offload
                else (False,))
    views = {o: fsdp_view(view, o) for o in offloads}
    avail = max(1, int(n_available))
    ranges = [(range(2, avail + 1), True), (range(max(2, avail + 1), max_gpus + 1), False)]
    for counts, within in ranges:
        for off in offloads:
            for n in counts:
                pred = memory.predict(views[off], arch, mode="fsdp", n_gpus=n, seq_len=planned_seq_len)
                if pred.peak_process_bytes <= limit:
                    return ShardPlan(n, off, pred.peak_process_bytes, budget_per_gpu, margin, within, pred)
    return None


def offload_host_ram_bytes(arch: dict[str, Any], n_processes_here: int) -> tuple[int, int]:
    """(low, high) host RAM one machine needs for an FSDP run with CPU offload.

    Scaled from the published 70B runs by parameter count (OFFLOAD_RAM_BYTES_PER_PARAM), plus
    each process's own footprint. An estimate from others' measurements, not fmllm's own.
    """
    from fmllm_tui import memory

    params = memory.param_count(arch)
    base = PROCESS_RAM_BYTES * max(1, n_processes_here)
    lo, hi = OFFLOAD_RAM_BYTES_PER_PARAM
    return int(params * lo) + base, int(params * hi) + base


def load_host_ram_bytes(view: Any, arch: dict[str, Any], n_processes_here: int) -> int:
    """Host RAM one machine needs while an FSDP run loads: every process quantizes the whole model
    into CPU RAM (4-bit weights and their constants, the 16-bit embeddings, head and norms) before
    FSDP moves it to the GPUs unit by unit, plus each process's own footprint. Derived from the
    model's sizes (the CPU copy is freed as units move); fmllm has not measured host RAM itself."""
    from fmllm_tui import memory

    bd = memory.predict(fsdp_view(view), arch, mode="single").breakdown
    whole = int(bd.get("weights_4bit", 0)) + int(bd.get("quant_constants", 0)) + int(bd.get("weights_16bit", 0))
    return max(1, n_processes_here) * (whole + PROCESS_RAM_BYTES)
