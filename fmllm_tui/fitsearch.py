"""The memory fix: find the settings with the highest predicted throughput that fit a budget.

``fit(view, arch, budget)`` keeps the effective batch (micro-batch x accumulation) and searches
the settings in tiers, cheapest in quality first (memory-estimators.md section 7.4 and the issue):

0. micro-batch / accumulation (effective batch kept), gradient checkpointing, and with the fmllm
   recipe a fused or chunked loss instead of the plain one: no effect on what is learned;
1. 4-bit with nested quantization; with the fmllm recipe the input embeddings on the CPU;
2. the optimizer: paged_adamw_8bit;
3. max_seq_length (truncates data: cut only when nothing above fits; the share of examples it
   would truncate is reported when example lengths are given);
4. LoRA rank (barely moves the peak: last; alpha follows to keep alpha/r).

Within the first tier that fits it takes the fastest combination (the throughput model in
memory.py: per-micro-batch host overhead vs compute); ties go to fewer changes. When memory is
plentiful the same search runs the other way: a bigger micro-batch (the guide: "increase
per_device_train_batch_size if memory allows") and checkpointing off, when they are faster.

``recommend(budget, view)`` answers the guide's "Model Size Recommendations" exactly: which
catalogue models fit this budget, with which settings (tiers 0-2 only: no truncation, rank kept),
at what predicted peak and relative speed.

The budget is compared with the predicted *process* peak (what NVML shows for the training
process, CUDA context included) less a margin (default: 5% of the budget, at least 256 MiB).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fmllm_tui import memory
from fmllm_tui.findings import Change, plural
from fmllm_tui.memory import GiB, MiB, PlanInputs, Prediction

if TYPE_CHECKING:
    from fmllm_tui.config import FineTuneConfig
    from fmllm_tui.gpudb import GpuCard

#: Default margin: this share of the budget, and at least MIN_MARGIN_BYTES.
MARGIN_SHARE = 0.05
MIN_MARGIN_BYTES = 256 * MiB
#: A faster plan must beat the current one by this much before fmllm proposes it.
MIN_SPEEDUP = 1.03
#: Shortest max_seq_length the search will propose, and the step it cuts in.
SEQ_FLOOR = 64
SEQ_STEP = 64

KEYS = {
    "micro_batch": "training.per_device_train_batch_size",
    "grad_accum": "training.gradient_accumulation_steps",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "use_4bit": "quantization.use_4bit",
    "nested_quant": "quantization.use_nested_quant",
    "optim": "training.optim",
    "seq_len": "training.max_seq_length",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "offload_embeddings": "fmllm.offload_embeddings",
    "loss": "fmllm.loss",
}
#: Order in which changes are listed and their savings accumulated (the preference order).
ORDER = (
    "micro_batch",
    "grad_accum",
    "gradient_checkpointing",
    "loss",
    "use_4bit",
    "nested_quant",
    "offload_embeddings",
    "optim",
    "seq_len",
    "lora_r",
    "lora_alpha",
)


@dataclass
class FitResult:
    """What the fit search found.

    ``changes``: findings.Change with the canonical key, ``from_``, ``to``, ``comment`` (why) and
    ``saving_bytes``, in preference order; each saving is on top of the changes listed before it
    (negative: the change spends memory for speed), so they sum to before - after.
    ``truncated_share``/``truncated_token_share``: share of examples longer than a cut
    max_seq_length and share of all tokens cut (None without lengths).
    """

    fits: bool
    changes: list[Change]
    prediction_before: Prediction
    prediction_after: Prediction
    budget_bytes: int
    margin_bytes: int
    truncated_share: float | None
    truncated_token_share: float | None
    message: str
    settings_after: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def fits_now(self) -> bool:
        """The config as it is fits the budget less the margin."""
        return self.prediction_before.peak_process_bytes <= self.budget_bytes - self.margin_bytes

    @property
    def speedup(self) -> float:
        """Predicted tokens/s with the changes over tokens/s as configured."""
        before = self.prediction_before.tokens_per_second
        return self.prediction_after.tokens_per_second / before if before else 1.0

    def to_json(self) -> dict[str, Any]:
        """Every field and derived value, JSON-ready (changes as findings.Change.to_json). How much of
        the card each plan uses is its prediction's ``relative_speed``."""
        return {
            "fits_now": self.fits_now, "fits": self.fits, "changes": [c.to_json() for c in self.changes],
            "prediction_before": self.prediction_before.to_json(), "prediction_after": self.prediction_after.to_json(),
            "speedup": self.speedup, "budget_bytes": self.budget_bytes, "margin_bytes": self.margin_bytes,
            "truncated_share": self.truncated_share, "truncated_token_share": self.truncated_token_share,
            "message": self.message, "settings_after": dict(self.settings_after), "notes": list(self.notes),
        }


@dataclass
class Recommendation:
    """One catalogue model on a budget: whether and how it fits, its peak and predicted tokens/s."""

    model_id: str
    also: list[str]
    family: str | None
    size: str | None
    params: int
    fits_as_is: bool
    fits: bool
    changes: list[Change]
    peak_process_bytes: int
    low_bytes: int
    high_bytes: int
    tokens_per_second: float
    message: str

    def to_json(self) -> dict[str, Any]:
        """Every field, JSON-ready (changes as findings.Change.to_json)."""
        d = asdict(self)
        d["changes"] = [c.to_json() for c in self.changes]
        return d

    def describe(self) -> str:
        """One line (plus changes) for people."""
        head = f"{self.model_id} ({self.size or f'{self.params / 1e9:.1f}B'})"
        if not self.fits:
            return f"  {head}: does not fit ({self.message})"
        how = "as configured" if self.fits_as_is and not self.changes else "with " + ", ".join(
            f"{c.key.split('.', 1)[1]}={c.to}" for c in self.changes
        )
        return (
            f"  {head}: fits {how}; peak {self.peak_process_bytes / GiB:.1f} GiB "
            f"({self.low_bytes / GiB:.1f}-{self.high_bytes / GiB:.1f}), ~{self.tokens_per_second:,.0f} tokens/s "
            "(estimate)"
        )


# --------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------


def default_margin(budget_bytes: int) -> int:
    """The margin kept free by default: 5% of the budget, at least 256 MiB, at most half of it
    (a budget of a few hundred MiB then plans as "nothing fits", not as an error)."""
    return min(max(MIN_MARGIN_BYTES, int(MARGIN_SHARE * budget_bytes)), max(0, budget_bytes) // 2)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _changed(a: PlanInputs, b: PlanInputs) -> list[str]:
    return [k for k in ORDER if k != "lora_alpha" and getattr(a, k) != getattr(b, k)]


class _Search:
    """Evaluates plans with a cache (the same plan recurs across tiers)."""

    def __init__(self, base: PlanInputs, arch: memory.ArchSpec, limit: int):
        self.base = base
        self.arch = arch
        self.limit = limit
        self.cache: dict[PlanInputs, Prediction] = {}

    def pred(self, inp: PlanInputs) -> Prediction:
        p = self.cache.get(inp)
        if p is None:
            p = memory.predict_inputs(inp, self.arch)
            self.cache[inp] = p
        return p

    def fits(self, inp: PlanInputs) -> bool:
        return self.pred(inp).peak_process_bytes <= self.limit

    def best(self, plans: list[PlanInputs]) -> PlanInputs | None:
        """The fastest fitting plan; ties (within 0.5%) go to fewer changes."""
        fitting = [p for p in plans if self.fits(p)]
        if not fitting:
            return None
        top = max(self.pred(p).tokens_per_second for p in fitting)
        near = [p for p in fitting if self.pred(p).tokens_per_second >= 0.995 * top]
        return min(near, key=lambda p: (len(_changed(self.base, p)), -self.pred(p).tokens_per_second))


def _tier_options(base: PlanInputs, arch: memory.ArchSpec, tier: int) -> dict[str, list[Any]]:
    """Per-lever value lists for a tier (each includes the current value first)."""
    eff = base.micro_batch * base.grad_accum
    opts: dict[str, list[Any]] = {
        "micro_batch": sorted(set(_divisors(eff)) | {base.micro_batch}),
        "gradient_checkpointing": [base.gradient_checkpointing, not base.gradient_checkpointing],
    }
    fmllm = base.recipe == "fmllm"
    if fmllm and base.loss == "plain":
        opts["loss"] = ["plain", "auto"]
    if tier >= 1:
        if not base.use_4bit or not base.nested_quant:
            opts["quant"] = [(base.use_4bit, base.nested_quant), (True, True)]
        # Under FSDP the embedding is sharded with the rest (the runner never offloads it).
        if fmllm and not arch.tied and base.offload_embeddings != "on" and not (base.mode == "fsdp" and base.n_gpus > 1):
            opts["offload_embeddings"] = [base.offload_embeddings, "on"]
    if tier >= 2 and base.optim not in memory.OPTIMIZERS_8BIT and base.optim != "sgd" and base.use_adapter:
        opts["optim"] = [base.optim, "paged_adamw_8bit"]
    return opts


def _expand(base: PlanInputs, opts: dict[str, list[Any]]) -> list[PlanInputs]:
    eff = base.micro_batch * base.grad_accum
    keys = list(opts)
    plans = []
    for values in itertools.product(*(opts[k] for k in keys)):
        ch: dict[str, Any] = {}
        for k, v in zip(keys, values, strict=True):
            if k == "micro_batch":
                ch["micro_batch"] = v
                ch["grad_accum"] = eff // v
            elif k == "quant":
                ch["use_4bit"], ch["nested_quant"] = v
            else:
                ch[k] = v
        plans.append(replace(base, **ch))
    return plans


def _max_seq(search: _Search, plan: PlanInputs) -> int | None:
    """The longest max_seq_length (multiple of SEQ_STEP, >= SEQ_FLOOR) at which ``plan`` fits."""
    hi = plan.seq_len
    if search.fits(plan):
        return hi
    lo_val = SEQ_FLOOR
    if not search.fits(replace(plan, seq_len=lo_val)):
        return None
    lo, top = lo_val // SEQ_STEP, (hi - 1) // SEQ_STEP  # search over multiples of SEQ_STEP below hi
    while lo < top:
        mid = (lo + top + 1) // 2
        if search.fits(replace(plan, seq_len=mid * SEQ_STEP)):
            lo = mid
        else:
            top = mid - 1
    return max(lo_val, lo * SEQ_STEP)


def _most_saving(base: PlanInputs, arch: memory.ArchSpec) -> dict[str, Any]:
    """Every memory lever of tiers 1-2 at its saving setting."""
    ch: dict[str, Any] = {}
    if not base.use_4bit or not base.nested_quant:
        ch["use_4bit"], ch["nested_quant"] = True, True
    if base.recipe == "fmllm":
        if base.loss == "plain":
            ch["loss"] = "auto"
        if not arch.tied:
            ch["offload_embeddings"] = "on"
    if base.optim not in memory.OPTIMIZERS_8BIT and base.optim != "sgd" and base.use_adapter:
        ch["optim"] = "paged_adamw_8bit"
    return ch


def _search(
    search: _Search,
    fits_now: bool,
    allow_seq_cut: bool,
    allow_rank_cut: bool,
) -> tuple[PlanInputs | None, int]:
    """The chosen plan (None when nothing fits) and the tier it came from."""
    base, arch = search.base, search.arch
    if fits_now:
        faster = search.best(_expand(base, _tier_options(base, arch, 0))) or base
        if search.pred(faster).tokens_per_second < MIN_SPEEDUP * search.pred(base).tokens_per_second:
            faster = base
        return faster, 0
    for tier in (0, 1, 2):
        found_plan = search.best(_expand(base, _tier_options(base, arch, tier)))
        if found_plan is not None:
            return found_plan, tier
    if not allow_seq_cut:
        return None, 3
    saving = _most_saving(base, arch)
    batch_gc = _expand(base, {"micro_batch": sorted(set(_divisors(base.micro_batch * base.grad_accum))),
                              "gradient_checkpointing": [True, False]})
    ranks = [base.lora_r]
    if allow_rank_cut and base.use_adapter:
        r = base.lora_r
        while r > 1:
            r //= 2
            ranks.append(r)
    for tier, rank_list in ((3, ranks[:1]), (4, ranks[1:])):
        found: list[tuple[int, int, PlanInputs]] = []
        for r in rank_list:
            for p in batch_gc:
                plan = replace(p, lora_r=r, **saving)
                s = _max_seq(search, plan)
                if s is not None:
                    found.append((s, r, replace(plan, seq_len=s)))
            if found:
                break
        if found:
            seq, r = max((f[0], f[1]) for f in found)
            # With the sequence fixed, undo the savers that are not needed (fastest plan wins).
            at = replace(base, seq_len=seq, lora_r=r)
            relaxed = search.best(_expand(at, _tier_options(at, arch, 2)))
            if relaxed is None:  # cannot happen (the saving plan fits), but keep the found one
                relaxed = next(f[2] for f in found if f[0] == seq and f[1] == r)
            return relaxed, tier
    return None, 4


def _why(key: str, base: PlanInputs, after: PlanInputs, arch: memory.ArchSpec) -> str:
    eff = base.micro_batch * base.grad_accum
    if key == "micro_batch":
        if after.micro_batch < base.micro_batch:
            return (f"micro-batch {base.micro_batch} -> {after.micro_batch} with more accumulation keeps the "
                    f"effective batch at {eff}; activations and loss buffers scale with tokens per micro-batch")
        return (f"memory allows {after.tokens} tokens per micro-batch instead of {base.tokens}: small "
                "micro-batches are bound by per-step overhead, so tokens/s rises with the micro-batch")
    if key == "grad_accum":
        return f"keeps the effective batch (micro-batch x accumulation) at {eff}"
    if key == "gradient_checkpointing":
        if after.gradient_checkpointing:
            return ("keeps one hidden state per layer and recomputes the rest in backward "
                    "(about one more forward pass of compute)")
        return "memory allows keeping every layer's activations: no recompute, faster"
    if key == "loss":
        return (f"the fused or chunked cross-entropy never holds the full-vocabulary fp32 logits "
                f"({arch.vocab:,} per token)")
    if key == "use_4bit":
        return "4-bit base weights: about 0.52 bytes per parameter instead of 2"
    if key == "nested_quant":
        return "nested quantization stores the 4-bit scaling constants in 8 bits (about 0.37 bits per parameter less)"
    if key == "offload_embeddings":
        return (f"input embeddings on the CPU (one lookup per batch): frees {arch.vocab * arch.hidden * 2 / GiB:.2f} "
                "GiB of GPU memory at little cost in speed")
    if key == "optim":
        return "8-bit paged AdamW keeps about 2 bytes of state per trainable parameter instead of 8"
    if key == "seq_len":
        return f"nothing else fits: examples are cut at {after.seq_len} tokens instead of {base.seq_len}"
    if key == "lora_r":
        return "the LoRA rank barely moves the peak, so it is lowered last"
    if key == "lora_alpha":
        return "keeps alpha/r, the adapter's scale"
    return ""


def _truncation(lengths: list[int] | None, seq: int) -> tuple[float | None, float | None]:
    if not lengths:
        return None, None
    n = len(lengths)
    over = sum(1 for x in lengths if x > seq)
    total = sum(lengths)
    lost = sum(x - seq for x in lengths if x > seq)
    return over / n, (lost / total if total else 0.0)


def planning_seq_len(max_seq_length: int, example_lengths: list[int] | None) -> tuple[int, str | None]:
    """The sequence length every fmllm face plans for, and why when it is not max_seq_length.

    Batches are padded to their longest example, so with the data's lengths known the run's
    peak is set by the longest example (up to max_seq_length); without them, by max_seq_length.
    config.fit, config.multi_gpu_fit and the fit search read this one decision.
    """
    if example_lengths:
        longest = max(example_lengths)
        if 0 < longest < max_seq_length:
            return longest, (f"the longest example has {longest} tokens (< max_seq_length {max_seq_length}): "
                             "planned for batches of that length")
    return max_seq_length, None


def _fit_inputs(
    base: PlanInputs,
    arch: memory.ArchSpec,
    budget_bytes: int,
    margin_bytes: int,
    example_lengths: list[int] | None,
    lora_alpha: float | None,
    allow_seq_cut: bool = True,
    allow_rank_cut: bool = True,
) -> FitResult:
    """The search on plan inputs: ``fit`` and ``recommend`` share it."""
    notes: list[str] = []
    seq_len, why = planning_seq_len(base.seq_len, example_lengths)
    if why:
        notes.append(why)
        base = replace(base, seq_len=seq_len)
    search = _Search(base, arch, budget_bytes - margin_bytes)
    before = search.pred(base)
    chosen, tier = _search(search, before.peak_process_bytes <= search.limit, allow_seq_cut, allow_rank_cut)
    after_plan = chosen or base
    changes = _changes(search, after_plan, lora_alpha)
    trunc, trunc_tok = _note_truncation(changes, example_lengths, base, after_plan)
    result = FitResult(
        fits=chosen is not None, changes=changes,
        prediction_before=before, prediction_after=search.pred(after_plan),
        budget_bytes=budget_bytes, margin_bytes=margin_bytes,
        truncated_share=trunc, truncated_token_share=trunc_tok,
        message="",
        settings_after={KEYS[k]: getattr(after_plan, k) for k in ORDER if k != "lora_alpha"},
        notes=notes + before.notes,
    )
    result.message = _message(result, search, tier)
    return result


def _change(key: str, old: Any, new: Any, search: _Search, after: PlanInputs, saving: int) -> Change:
    """One listed change: the canonical key, why (``_why``) and its saving."""
    return Change(key=KEYS[key], to=new, from_=old, comment=_why(key, search.base, after, search.arch),
                  saving_bytes=int(saving))


def _changes(search: _Search, after: PlanInputs, lora_alpha: float | None) -> list[Change]:
    """The changes from the search's base to ``after`` in preference order, each with its saving on
    top of the ones listed before it. The accumulation and alpha are listed after the micro-batch
    and the rank they keep in step, with no saving of their own."""
    base = search.base
    changes: list[Change] = []
    current, prev = base, search.pred(base)
    for key in ORDER:
        if key in ("lora_alpha", "grad_accum"):
            continue  # listed with the micro-batch and the rank they follow
        old, new = getattr(base, key), getattr(after, key)
        if old == new:
            continue
        step: dict[str, Any] = {key: new}
        if key == "micro_batch":
            step["grad_accum"] = after.grad_accum
        current = replace(current, **step)
        p = search.pred(current)
        changes.append(_change(key, old, new, search, after, prev.peak_process_bytes - p.peak_process_bytes))
        if key == "micro_batch" and after.grad_accum != base.grad_accum:
            changes.append(_change("grad_accum", base.grad_accum, after.grad_accum, search, after, 0))
        if key == "lora_r" and lora_alpha is not None:
            new_alpha = lora_alpha * new / old
            new_alpha = int(new_alpha) if float(new_alpha).is_integer() else round(new_alpha, 4)
            changes.append(_change("lora_alpha", lora_alpha, new_alpha, search, after, 0))
        prev = p
    return changes


def _note_truncation(changes: list[Change], lengths: list[int] | None, base: PlanInputs,
                     after: PlanInputs) -> tuple[float | None, float | None]:
    """What a cut max_seq_length truncates (``_truncation``), also said in the cut's reason."""
    if after.seq_len >= base.seq_len:
        return None, None
    trunc, trunc_tok = _truncation(lengths, after.seq_len)
    for c in changes:
        if c.key == KEYS["seq_len"]:
            c.comment = f"{c.comment}" + (
                f"; {trunc:.1%} of the examples are longer and lose {trunc_tok:.1%} of all tokens"
                if trunc is not None and trunc_tok is not None
                else "; pass the data's token lengths to see what share it truncates")
    return trunc, trunc_tok


def _message(res: FitResult, search: _Search, tier: int) -> str:
    """The search's result in words: what fits, or what the change set does (the verdict, "fits
    with room to spare" or "does not fit", is the caller's first words)."""
    gib, budget, margin = GiB, res.budget_bytes, res.margin_bytes
    before, after = res.prediction_before.peak_process_bytes, res.prediction_after.peak_process_bytes
    if not res.fits:
        return (f"nothing fits {budget / gib:.1f} GiB less a {margin / gib:.2f} GiB margin: the "
                f"leanest plan with the {search.base.recipe} recipe still needs "
                f"{_leanest(search, search.base).peak_process_bytes / gib:.1f} GiB. "
                "Use a smaller model, a GPU with more memory, or FSDP over several GPUs.")
    if res.fits_now and not res.changes:
        return (f"fits: predicted peak {before / gib:.1f} GiB of {budget / gib:.1f} GiB "
                f"({(search.limit - before) / gib:.1f} GiB to spare after the margin)")
    if res.fits_now:
        return (f"{plural(len(res.changes), 'change')} {'uses' if len(res.changes) == 1 else 'use'} the room for a predicted {res.speedup:.2f}x the tokens/s "
                f"(peak {before / gib:.1f} -> {after / gib:.1f} GiB of {budget / gib:.1f} GiB)")
    message = (f"{plural(len(res.changes), 'change')} bring the peak from {before / gib:.1f} to "
               f"{after / gib:.1f} GiB, within {budget / gib:.1f} GiB less a "
               f"{margin / gib:.2f} GiB margin, at {res.speedup:.2f}x the tokens/s")
    if tier >= 3 and res.truncated_share is not None:
        message += f"; the shorter max_seq_length truncates {res.truncated_share:.1%} of the examples"
    return message


def _leanest(search: _Search, base: PlanInputs) -> Prediction:
    """The smallest plan the levers allow (for the 'nothing fits' message)."""
    plan = replace(base, micro_batch=1, grad_accum=base.micro_batch * base.grad_accum,
                   gradient_checkpointing=True, seq_len=min(base.seq_len, SEQ_FLOOR), lora_r=1,
                   **_most_saving(base, search.arch))
    return search.pred(plan)


def fit(
    view: FineTuneConfig,
    arch: dict[str, Any] | memory.ArchSpec,
    budget_bytes: int,
    *,
    margin_bytes: int | None = None,
    example_lengths: list[int] | None = None,
    gpu: GpuCard | None = None,
    recipe: str | None = None,
    n_gpus: int = 1,
    mode: str = "single",
    allow_seq_cut: bool = True,
    allow_rank_cut: bool = True,
) -> FitResult:
    """Find the fastest settings whose predicted process peak fits ``budget_bytes`` less a margin.

    Keeps micro-batch x accumulation. ``example_lengths`` (tokens per example) lets it report
    what a shorter max_seq_length truncates. ``gpu`` (a gpudb card) sets the speed model's card.
    Raises ValueError for a non-positive budget and memory.ArchitectureError for a bad config.json.
    """
    if budget_bytes <= 0:
        raise ValueError(f"the memory budget must be positive, got {budget_bytes} bytes")
    margin = default_margin(budget_bytes) if margin_bytes is None else int(margin_bytes)
    if margin < 0 or margin >= budget_bytes:
        raise ValueError(f"the margin ({margin} bytes) must be between 0 and the budget ({budget_bytes} bytes)")
    if example_lengths is not None:
        bad = [x for x in example_lengths if not isinstance(x, int) or isinstance(x, bool) or x < 0]
        if bad:
            raise ValueError(f"example lengths must be whole token counts >= 0; found {bad[:3]}")
    inp, notes = memory.inputs_from_view(view, recipe=recipe, n_gpus=n_gpus, mode=mode, gpu=gpu)
    spec = memory.ArchSpec.from_config(arch)
    result = _fit_inputs(inp, spec, budget_bytes, margin, example_lengths, float(view.lora.alpha),
                         allow_seq_cut, allow_rank_cut)
    result.notes[:0] = notes
    if inp.recipe in ("plain", "noprep") and (not result.fits or result.changes):
        lean = _fit_inputs(replace(inp, recipe="fmllm"), spec, budget_bytes, margin, example_lengths,
                           float(view.lora.alpha), allow_seq_cut, allow_rank_cut)
        if lean.fits and len(lean.changes) < len(result.changes) or (lean.fits and not result.fits):
            result.message += (f" fmllm's runner (fmllm.memory_recipe: fmllm) would need "
                               f"{lean.prediction_before.peak_process_bytes / GiB:.1f} GiB as configured"
                               + (" and fits as is." if lean.fits_now else f" and fits with {plural(len(lean.changes), 'change')}."))
    after = result.prediction_after
    if after.loss == "chunked" and after.breakdown.get("loss", 0) > 0.5 * GiB:
        result.notes.append(f"the chunked loss holds {after.breakdown['loss'] / GiB:.2f} GiB at its peak; with "
                            "liger-kernel installed (pip install liger-kernel) fmllm's fused loss needs a few MB")
    return result


def recommend(
    budget_bytes: int,
    base_view: FineTuneConfig,
    *,
    gpu: GpuCard | None = None,
    margin_bytes: int | None = None,
    include_unfit: bool = False,
    model_ids: list[str] | None = None,
    example_lengths: list[int] | None = None,
) -> list[Recommendation]:
    """Which catalogue models fit ``budget_bytes`` with ``base_view``'s training settings.

    Only tiers 0-2 of the search are used (batching, checkpointing, loss, 4-bit, offload,
    optimizer): the sequence length and LoRA rank stay as configured. Models with identical
    architectures (base and instruct) share one entry. Largest models first. A model is listed
    as fitting only when the high end of its predicted range fits the budget too (the range is
    the memory model's own error band). ``example_lengths``: the data's, planned as config.fit
    plans (the longest example, up to max_seq_length).
    """
    from fmllm_tui import catalogue  # deferred: a separate module with its own data file

    if budget_bytes <= 0:
        raise ValueError(f"the memory budget must be positive, got {budget_bytes} bytes")
    margin = default_margin(budget_bytes) if margin_bytes is None else int(margin_bytes)
    inp, _ = memory.inputs_from_view(base_view, gpu=gpu)
    inp = replace(inp, seq_len=planning_seq_len(inp.seq_len, example_lengths)[0])  # as config.fit plans
    ids = model_ids if model_ids is not None else catalogue.known_model_ids()
    groups: dict[memory.ArchSpec, list[str]] = {}  # same shapes, same plan (base and instruct)
    for mid in ids:
        cfg = catalogue.get_architecture(mid)
        if cfg is None:
            continue
        groups.setdefault(memory.ArchSpec.from_config(cfg), []).append(mid)
    out: list[Recommendation] = []
    for spec, members in groups.items():
        members.sort(key=lambda m: ("instruct" not in m.lower() and "-it" not in m.lower(), m.lower()))
        res = _fit_inputs(inp, spec, budget_bytes, margin, None, float(base_view.lora.alpha),
                          allow_seq_cut=False, allow_rank_cut=False)
        renamed = memory.targets_as_named(base_view.lora.target_modules, spec)
        if renamed is not None:
            # The plan is for the layers this model has; peft needs them by its names.
            res.changes.append(Change(key="lora.target_modules", to=renamed, from_=list(base_view.lora.target_modules),
                                      comment=f"{spec.model_type} names these layers {', '.join(renamed)}"))
        out.append(_recommendation(members, spec, res, catalogue.catalogue_entry(members[0]) or {}))
    out.sort(key=lambda r: (-r.params, r.model_id.lower()))
    return out if include_unfit else [r for r in out if r.fits]


def _recommendation(members: list[str], spec: memory.ArchSpec, res: FitResult, entry: dict[str, Any]) -> Recommendation:
    """One catalogue entry (``members``: models of one architecture, the one to name first) from its
    fit search ``res``: fitting only when the high end of the predicted range fits the budget too."""
    pred, budget = res.prediction_after, res.budget_bytes
    fits, message = res.fits, res.message
    if fits and pred.high_bytes > budget:
        fits = False
        message = (f"its predicted range reaches {pred.high_bytes / GiB:.1f} GiB, above the "
                   f"{budget / GiB:.1f} GiB available, even with {plural(len(res.changes), 'change')}")
    return Recommendation(
        model_id=members[0], also=members[1:], family=entry.get("family"), size=entry.get("size"),
        params=memory.param_count(spec), fits_as_is=res.fits_now and fits, fits=fits,
        changes=res.changes if fits else [],
        peak_process_bytes=pred.peak_process_bytes, low_bytes=pred.low_bytes, high_bytes=pred.high_bytes,
        tokens_per_second=pred.tokens_per_second, message=message,
    )


def preset_prediction(loaded: Any, name: str, lengths: list[int] | None, *, gpu: GpuCard | None = None,
                      arch_for: Any = None) -> memory.Prediction:
    """The memory model's prediction for ``loaded`` as preset ``name`` would leave it, at the length
    the checks plan for (``planning_seq_len`` with the data's ``lengths``). The architecture is the
    catalogue's for the preset's model, else ``arch_for(view)``. Raises LookupError when there is
    none, FixError or ValueError when the preset or the model cannot be planned."""
    from fmllm_tui import catalogue
    from fmllm_tui.fixes import PRESETS, preset_changes
    from fmllm_tui.fixes.engine import render_loaded

    pre = PRESETS[name]
    changes = preset_changes(loaded, name)
    after = render_loaded(loaded, changes)[2] if changes else loaded
    arch = catalogue.get_architecture(pre.model) or (arch_for(after.view) if arch_for else None)
    if arch is None:
        raise LookupError(f"no architecture for {pre.model}")
    seq = planning_seq_len(after.view.training.max_seq_length, lengths)[0]
    return memory.predict(after.view, arch, n_gpus=pre.gpus, seq_len=seq, gpu=gpu,
                          mode=after.view.fmllm.distributed.mode if pre.gpus > 1 else "single")
