"""What the Memory and Presets screens show: the memory model's prediction for the config, with
a few settings varied, against the GPU budget (no Textual here).

The numbers are :mod:`fmllm_tui.memory`'s; the budget is the checks' own (the ``budget_bytes``
value of the memory-fit check) when they have reported, else the same sources the checks use:
``--gpu``/``--vram``, ``fmllm.target_gpu``/``fmllm.vram``, then this machine's first GPU.
Applying writes the varied settings through the ``memory.fit`` fixer, with a diff and a backup.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from fmllm_tui.findings import Change, CheckResult
from fmllm_tui.units import GiB

#: The settings the Memory screen varies: (PlanInputs field, label).
KNOBS: tuple[tuple[str, str], ...] = (
    ("micro_batch", "micro-batch"),
    ("seq_len", "sequence length"),
    ("lora_r", "LoRA rank"),
    ("gradient_checkpointing", "gradient checkpointing"),
    ("use_4bit", "4-bit weights"),
    ("optim", "optimizer"),
)

#: Breakdown components grouped for the bar: (group label, fill character, colour, components).
GROUPS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("weights", "█", "blue", ("weights_4bit", "quant_constants", "weights_16bit")),
    ("LoRA + optimizer", "▓", "magenta", ("lora_weights", "lora_grads", "optimizer_state", "optimizer_paged")),
    ("activations", "▒", "green", ("checkpoints", "final_norm", "head_autocast_copy", "layer_backward")),
    ("loss", "▞", "yellow", ("loss",)),
    ("CUDA + allocator", "░", "cyan", ("cuda_context", "allocator_reserve", "runtime_misc", "nccl")),
)
OTHER_GROUP = ("other", "▚", "white")


def group_of(component: str) -> tuple[str, str, str]:
    """(group label, fill, colour) of a breakdown component; unknown ones go to "other"."""
    for label, fill, colour, members in GROUPS:
        if component in members:
            return label, fill, colour
    return OTHER_GROUP


def grouped(breakdown: dict[str, int]) -> list[tuple[str, str, str, int]]:
    """The breakdown summed per group, in bar order: (label, fill, colour, bytes)."""
    sums: dict[str, int] = {}
    for comp, b in breakdown.items():
        sums[group_of(comp)[0]] = sums.get(group_of(comp)[0], 0) + int(b)
    out = []
    for label, fill, colour, _members in (*GROUPS, (*OTHER_GROUP, ())):
        if sums.get(label, 0) > 0:
            out.append((label, fill, colour, sums[label]))
    return out


def optimizers() -> tuple[str, ...]:
    """Every optimizer the config accepts, in the schema's order."""
    from fmllm_tui.config import TrainingSettings

    return tuple(typing.get_args(TrainingSettings.model_fields["optim"].annotation))


def _pow2_step(value: int, up: bool, lo: int, hi: int) -> int:
    """The next power of two above (or below) ``value``, kept within [lo, hi]."""
    p = 1
    if up:
        while p <= value:
            p *= 2
        return min(p, hi)
    while p * 2 < value:
        p *= 2
    return max(p if p < value else value // 2, lo)


def accumulation_for(effective: int, micro_batch: int) -> int:
    """The accumulation that keeps ``effective`` examples per optimizer step at ``micro_batch``
    (the nearest whole number, at least 1, where it cannot be kept exactly)."""
    return max(1, round(effective / micro_batch))


def step(inp: Any, knob: str, up: bool) -> Any:
    """``inp`` (PlanInputs) with one setting moved a notch up or down (booleans toggle)."""
    from fmllm_tui.memory import vary

    if knob == "micro_batch":
        # Keep the effective batch (micro-batch x accumulation), as the fit search does: the
        # micro-batch is a memory knob, the effective batch a training decision.
        mb = _pow2_step(inp.micro_batch, up, 1, 65_536)
        return vary(inp, micro_batch=mb, grad_accum=accumulation_for(inp.micro_batch * inp.grad_accum, mb))
    if knob == "seq_len":
        return vary(inp, seq_len=_pow2_step(inp.seq_len, up, 32, 1_048_576))
    if knob == "lora_r":
        return vary(inp, lora_r=_pow2_step(inp.lora_r, up, 1, 4096))
    if knob in ("gradient_checkpointing", "use_4bit"):
        return vary(inp, **{knob: not getattr(inp, knob)})
    if knob == "optim":
        opts = optimizers()
        i = opts.index(inp.optim) if inp.optim in opts else 0
        return vary(inp, optim=opts[(i + (1 if up else -1)) % len(opts)])
    raise KeyError(knob)


def show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


@dataclass
class Budget:
    """The memory one training process may use, and where that number came from."""

    bytes: int | None
    label: str
    source: str

    def card(self) -> Any:
        """The gpudb card this budget names (for its speed), or None (a bare size, no GPU)."""
        from fmllm_tui import gpudb

        if self.bytes is None or self.label.endswith("GiB"):
            return None
        try:
            return gpudb.lookup(self.label)
        except LookupError:
            return None


#: Where a model's architecture came from (hub.resolve_config's sources), for people.
SOURCES = {"catalogue": "fmllm's catalogue", "hub": "the Hub", "cache": "the Hugging Face cache",
           "local": "the local folder"}


def source_words(b: Budget) -> str:
    """Where a budget came from, for people ("as the checks plan", "from --gpu")."""
    if b.source.startswith("check "):
        return "as the checks plan"
    if b.source.startswith(("--", "fmllm.")):
        return f"from {b.source}"
    return b.source


def eta_line(plan: MemoryPlan, budget: Budget | None) -> tuple[float, str, str | None]:
    """(tokens/s, the card it is for, ETA text or None) for the plan as varied: the memory
    model's speed on the budget's card and its time for the planned steps."""
    from fmllm_tui.memory import estimate_time, planned_steps
    from fmllm_tui.units import format_duration

    inp = plan.planned(plan.current)
    t = plan.loaded.view.training
    steps = planned_steps(t.max_steps, t.num_train_epochs, len(plan.lengths) if plan.lengths else None,
                          inp.micro_batch, inp.grad_accum, inp.n_gpus)
    card = budget.card() if budget is not None else None
    est = estimate_time(inp, plan.arch, steps=steps or 0, gpu=card)
    where = card.name if card is not None else "an unnamed card"
    eta = f"{format_duration(est.eta_s)} for {steps} step{'' if steps == 1 else 's'}" if steps else None
    return est.tokens_per_second, where, eta


def describe_budget(b: Budget | None, *, with_source: bool = False) -> str:
    """"RTX 3080 (9.7 GiB)" for people, with where it came from ("…, as the checks plan");
    the reason when there is no budget."""
    if b is None:
        return "…"
    if b.bytes is None:
        return b.source
    size = f"{b.bytes / GiB:.1f} GiB"
    text = b.label if b.label == size else f"{b.label} ({size})"
    return f"{text}, {source_words(b)}" if with_source else text


def budget_from_checks(results: dict[str, CheckResult]) -> Budget | None:
    """The budget the checks planned with (a result carrying ``budget_bytes``; one that also
    names its GPU first, for the card's speed and a readable label), or None."""
    found: Budget | None = None
    for res in results.values():
        b = res.values.get("budget_bytes") if res.values else None
        if not (isinstance(b, int) and not isinstance(b, bool) and b > 0):
            continue
        named = res.values.get("gpu") or res.values.get("target")
        label = str(named or f"{b / GiB:.1f} GiB")
        if named:
            return Budget(b, label, f"check {res.id}")
        found = found or Budget(b, label, f"check {res.id}")
    return found


def planned_budget(view: Any, gpu: str | None, vram: str | None) -> bool:
    """Whether the plan is for a named card or size (the flags, the config) rather than this
    machine's GPUs: the checks' rule (checks/conftest.py ``planning``)."""
    return bool(gpu or vram or view.fmllm.target_gpu or view.fmllm.vram)


def local_gpu_count() -> int:
    """The GPUs NVML sees here (0 without NVML or a GPU)."""
    from fmllm_tui import gpu as gpumod

    inv = gpumod.probe()
    return len(inv.devices) if inv.ok and inv.devices else 0


def budget_elsewhere(view: Any, gpu: str | None, vram: str | None) -> Budget:
    """The budget before the checks report: the flags, the config, then this machine's GPU."""
    from fmllm_tui import gpudb

    for spec, src in ((vram, "--vram"), (gpu, "--gpu"), (view.fmllm.vram, "fmllm.vram"),
                      (view.fmllm.target_gpu, "fmllm.target_gpu")):
        if spec:
            try:
                b, label, _card = gpudb.resolve_budget(spec)
            except ValueError as e:
                return Budget(None, f"{spec}?", f"{src}: {e}")
            return Budget(b, label, src)
    from fmllm_tui import gpu as gpumod

    inv = gpumod.probe()
    if inv.ok and inv.devices:
        d = inv.devices[0]
        return Budget(d.free_bytes, d.name, "this machine's GPU 0 (free memory)")
    return Budget(None, "no GPU", "no GPU here and none named: start with --gpu NAME or --vram SIZE")


def architecture(view: Any, offline: bool) -> tuple[dict[str, Any] | None, str]:
    """The model's config.json (local folder, Hub, cache, then catalogue) and its source."""
    from fmllm_tui import hub

    return hub.resolve_config(view.base_model_name, revision=view.fmllm.revision, offline=offline or None)


@dataclass
class MemoryPlan:
    """The config's planned settings, the varied ones, and the prediction for the varied ones."""

    loaded: Any
    arch: dict[str, Any]
    arch_source: str
    base: Any  # PlanInputs from the file
    current: Any  # PlanInputs as varied on screen
    notes: list[str] = field(default_factory=list)
    lengths: list[int] | None = None  # tokens per example of the training data, when readable

    @classmethod
    def build(cls, loaded: Any, arch: dict[str, Any], arch_source: str, budget: Budget | None = None, *,
              planned: bool = True, n_local: int = 0) -> MemoryPlan:
        """The plan of ``loaded`` in the mode config.fit plans (multigpu.planned_mode on ``budget``:
        ``planned`` when the budget is a named card or size, ``n_local`` this machine's GPUs)."""
        from fmllm_tui import multigpu
        from fmllm_tui.datafile import example_lengths
        from fmllm_tui.fitsearch import planning_seq_len
        from fmllm_tui.memory import inputs_from_view

        view, lengths = loaded.view, example_lengths(loaded.view)
        seq, _why = planning_seq_len(view.training.max_seq_length, lengths)
        mode, n = multigpu.planned_mode(view, arch, budget.bytes if budget else None, planned=planned,
                                        n_local=n_local, seq_len=seq)
        base, notes = inputs_from_view(multigpu.fsdp_view(view) if mode == "fsdp" else view, mode=mode, n_gpus=n)
        if n > 1:
            notes.append(f"planned as the run will go: {mode} over {n} GPUs, per-GPU memory")
        return cls(loaded, arch, arch_source, base, base, notes, lengths)

    def planned(self, inp: Any) -> Any:
        """``inp`` at the sequence length the checks plan for (fitsearch.planning_seq_len): the
        seq_len knob stays max_seq_length, the prediction is for the data's longest example."""
        from fmllm_tui.fitsearch import planning_seq_len
        from fmllm_tui.memory import vary

        seq, _why = planning_seq_len(inp.seq_len, self.lengths)
        return inp if seq == inp.seq_len else vary(inp, seq_len=seq)

    def predict(self) -> Any:
        """The memory model's Prediction for the varied settings (ArchitectureError if unusable)."""
        from fmllm_tui.memory import predict_inputs

        return predict_inputs(self.planned(self.current), self.arch)

    def predict_base(self) -> Any:
        from fmllm_tui.memory import predict_inputs

        return predict_inputs(self.planned(self.base), self.arch)

    def move(self, knob: str, up: bool) -> None:
        self.current = step(self.current, knob, up)

    def reset(self) -> None:
        self.current = self.base

    def changed(self) -> list[tuple[str, Any, Any]]:
        """(knob, file value, varied value) of every setting that differs from the file, the
        accumulation that keeps the effective batch included."""
        return [(k, getattr(self.base, k), getattr(self.current, k)) for k in (*(k for k, _ in KNOBS), "grad_accum")
                if getattr(self.base, k) != getattr(self.current, k)]

    def effective_batch(self) -> tuple[int, int]:
        """(file, varied) examples per optimizer step."""
        return (self.base.micro_batch * self.base.grad_accum, self.current.micro_batch * self.current.grad_accum)

    def changes(self, budget: Budget | None) -> list[Change]:
        """The varied settings as exact config changes, planned by the ``memory.fit`` fixer."""
        from fmllm_tui.fitsearch import KEYS
        from fmllm_tui.fixes import plan_fix
        from fmllm_tui.memory import predict_inputs

        items = []
        for knob, before, after in self.changed():
            one = predict_inputs(self.planned(self.base), self.arch).peak_process_bytes - predict_inputs(
                self.planned(_with(self.base, knob, after)), self.arch).peak_process_bytes
            why = f"planned in fmllm-tui's memory screen ({show(before)} -> {show(after)})"
            items.append(Change(key=KEYS[knob], to=after, comment=why, saving_bytes=one if one > 0 else None))
        if not items:
            return []
        return plan_fix(self.loaded, "memory.fit", {"changes": items})


def _with(inp: Any, knob: str, value: Any) -> Any:
    from fmllm_tui.memory import vary

    return vary(inp, **{knob: value})


@dataclass
class PresetRow:
    """One preset as the Presets screen lists it."""

    name: str
    description: str
    model: str
    target: str
    peak_bytes: int | None
    low_bytes: int | None
    high_bytes: int | None
    error: str | None
    notes: str


def preset_rows(loaded: Any, offline: bool) -> list[PresetRow]:
    """Every preset with the memory model's peak for the config as that preset would leave it
    (fitsearch.preset_prediction: planned as the checks plan, at the data's longest example)."""
    from fmllm_tui.datafile import example_lengths
    from fmllm_tui.fitsearch import preset_prediction
    from fmllm_tui.fixes import PRESETS, FixError

    lengths = example_lengths(loaded.view)
    rows = []
    for name, pre in PRESETS.items():
        peak = low = high = None
        err = None
        try:
            p = preset_prediction(loaded, name, lengths, arch_for=lambda view: architecture(view, offline)[0])
            peak, low, high = p.peak_process_bytes, p.low_bytes, p.high_bytes
        except LookupError as e:
            err = str(e)
        except (FixError, ValueError) as e:
            err = e.render() if hasattr(e, "render") else str(e)
        rows.append(PresetRow(name, pre.description, pre.model, pre.target_gpu_memory, peak, low, high,
                              err, pre.notes))
    return rows
