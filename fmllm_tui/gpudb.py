"""GPUs to plan for: name -> memory (nominal and usable), compute capability, bf16, speed figures.

The data is ``data/gpus.json`` (NVIDIA only: consumer RTX 20-50 and common laptop parts,
workstation and data-centre cards). Names are matched leniently: "3080", "RTX 3080",
"rtx3080-10gb", "NVIDIA GeForce RTX 3080" (as NVML reports it), "a100 80gb", "H100 SXM".

Ambiguity, decided once: a name that leaves the memory open ("3080": 10 GB or 12 GB; "a100":
40 or 80 GB; "4060 ti": 8 or 16 GB) plans for the *smallest* variant, because a plan that fits
it fits the larger ones, and the card's ``note`` says so (name the size to change it). A name
that leaves only the form open among equal-memory cards ("h100 80gb": SXM or PCIe) takes the
common one, also with a note. A name that could be different models ("rtx 6000": Quadro RTX
6000, RTX 6000 Ada, RTX PRO 6000 Blackwell) is an error that lists the candidates.

Usable memory: the total NVML reports less a driver reserve (the memory the driver holds on an
idle card, which NVML counts as used): DRIVER_RESERVE_BASE + DRIVER_RESERVE_FRACTION x total.
On the H200 the rule gives 0.60 GiB, what NVML showed idle there. A desktop on the same card
takes more; fmllm uses NVML's free memory when it plans for the local GPU.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from importlib import resources
from typing import Any

from fmllm_tui.units import GiB, MiB

DRIVER_RESERVE_BASE = 256 * MiB
DRIVER_RESERVE_FRACTION = 0.0025

_IGNORED = {
    "nvidia", "geforce", "tesla", "gpu", "graphics", "generation", "edition", "workstation", "server",
    "hbm2", "hbm2e", "hbm3", "hbm3e", "founders", "with", "design", "max", "q", "maxq", "rtx", "card",
}
_VARIANTS = {
    "ti": "ti", "super": "super", "laptop": "laptop", "mobile": "laptop", "notebook": "laptop",
    "ada": "ada", "pro": "pro", "blackwell": "blackwell", "quadro": "quadro", "nvl": "nvl",
}
_FORMS = {"sxm": "sxm", "sxm2": "sxm", "sxm3": "sxm", "sxm4": "sxm", "sxm5": "sxm", "pcie": "pcie"}
_MEM_RE = re.compile(r"^(\d+(?:\.\d+)?)(gb|gib|g)$")


@dataclass(frozen=True)
class GpuCard:
    """One GPU model as fmllm plans for it."""

    name: str
    memory_gb: float  # nominal ("24 GB")
    memory_bytes: int  # total as NVML reports it
    usable_bytes: int  # what one process can get on an idle card
    compute_capability: tuple[int, int]
    sm_count: int
    tflops16: float  # dense FP16/BF16 tensor TFLOP/s (approximate; relative speed only)
    bandwidth_gbs: float
    segment: str  # consumer | laptop | workstation | datacenter
    note: str | None = None  # set by lookup() when it chose among variants

    @property
    def bf16(self) -> bool:
        """bf16 arithmetic needs compute capability 8.0 (Ampere) or newer."""
        return self.compute_capability >= (8, 0)

    @property
    def driver_reserve_bytes(self) -> int:
        return self.memory_bytes - self.usable_bytes

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability)
        d["bf16"] = self.bf16
        return d

    def describe(self) -> str:
        cc = ".".join(map(str, self.compute_capability))
        return (
            f"{self.name}: {self.memory_gb:g} GB ({self.memory_bytes / GiB:.1f} GiB total, "
            f"{self.usable_bytes / GiB:.1f} GiB usable), compute capability {cc}, "
            f"bf16 {'yes' if self.bf16 else 'no (use fp16)'}"
        )


@dataclass(frozen=True)
class _Entry:
    card: GpuCard
    model: str
    variants: frozenset[str]
    form: str | None
    common: bool


@dataclass(frozen=True)
class _Query:
    model: str | None
    variants: frozenset[str]
    memory_gb: float | None
    form: str | None
    unknown: tuple[str, ...]


def usable_bytes(total_bytes: int) -> int:
    """What one process can get of a card whose NVML total is ``total_bytes``."""
    return int(total_bytes - DRIVER_RESERVE_BASE - DRIVER_RESERVE_FRACTION * total_bytes)


@lru_cache(maxsize=1)
def _entries() -> tuple[_Entry, ...]:
    raw = json.loads(resources.files("fmllm_tui").joinpath("data/gpus.json").read_text(encoding="utf-8"))
    out = []
    for g in raw["gpus"]:
        total = int(g["memory_mib"]) * MiB
        card = GpuCard(
            name=g["name"],
            memory_gb=float(g["memory_gb"]),
            memory_bytes=total,
            usable_bytes=usable_bytes(total),
            compute_capability=(int(g["compute_capability"][0]), int(g["compute_capability"][1])),
            sm_count=int(g["sm_count"]),
            tflops16=float(g["tflops16"]),
            bandwidth_gbs=float(g["bandwidth_gbs"]),
            segment=g["segment"],
        )
        out.append(_Entry(card, g["model"], frozenset(g["variants"]), g.get("form"), bool(g.get("common"))))
    return tuple(out)


def all_cards() -> list[GpuCard]:
    """Every GPU in the database, in file order."""
    return [e.card for e in _entries()]


def _parse(text: str) -> _Query:
    s = text.strip().lower()
    s = re.sub(r"[-_/(),+]", " ", s)
    s = re.sub(r"\b(rtx|gtx)(?=\d)", r"\1 ", s)  # rtx3080 -> rtx 3080
    s = re.sub(r"(\d)\s+(gb|gib|g)\b", r"\1\2", s)  # "24 gb" -> "24gb"
    model = None
    variants: set[str] = set()
    memory = None
    form = None
    unknown: list[str] = []
    if re.search(r"\bmax\s*q\s+design\b", s):
        variants.add("laptop")  # "GeForce RTX 2080 with Max-Q Design" is a laptop part
    for tok in s.split():
        m = _MEM_RE.match(tok)
        if m and model is not None and not tok.startswith(model):
            memory = float(m.group(1))
        elif m and model is None and re.fullmatch(r"\d+(gb|gib|g)", tok):
            memory = float(m.group(1))
        elif tok in _IGNORED:
            continue
        elif tok in _VARIANTS:
            variants.add(_VARIANTS[tok])
        elif tok in _FORMS:
            form = _FORMS[tok]
        elif re.search(r"\d", tok):
            if model is None:
                model = tok
            else:
                unknown.append(tok)
        else:
            unknown.append(tok)
    return _Query(model, frozenset(variants), memory, form, tuple(unknown))


def _choose(entries: list[_Entry], name: str) -> GpuCard:
    """One card among several a name fits: smallest memory, then the common form."""
    smallest = min(e.card.memory_gb for e in entries)
    pool = [e for e in entries if e.card.memory_gb == smallest]
    pick = next((e for e in pool if e.common), pool[0])
    others = ", ".join(e.card.name for e in entries if e is not pick)
    if len({e.card.memory_gb for e in entries}) > 1:
        why = "the smallest variant: a plan that fits it fits the larger ones"
    else:
        why = "the most common form"
    note = (
        f"{name.strip()!r} can also mean {others}; planning for {pick.card.name} "
        f"({pick.card.memory_gb:g} GB), {why}. Name the exact card to change it."
    )
    return replace(pick.card, note=note)


def lookup(name: str) -> GpuCard:
    """The GPU a person means by ``name``. Raises LookupError with candidates when unclear."""
    if not isinstance(name, str) or not name.strip():
        raise LookupError("empty GPU name; write it like 'RTX 3090', 'A100 80GB' or 'T4'")
    q = _parse(name)
    entries = _entries()
    if q.model is None:
        if q.memory_gb is not None:
            raise LookupError(
                f"{name!r} is a memory size, not a GPU model; use --vram {q.memory_gb:g}GiB for a size, "
                "or name the card, e.g. 'RTX 3090'"
            )
        raise LookupError(f"{name!r} names no GPU model; write it like 'RTX 3090', 'A100 80GB' or 'T4'")
    same_model = [e for e in entries if e.model == q.model]
    if not same_model:
        names = [e.card.name for e in entries]
        close = difflib.get_close_matches(name.strip(), names, n=4, cutoff=0.5)
        close += [e.card.name for e in entries if q.model in e.model or e.model in q.model][:4]
        close = list(dict.fromkeys(close))[:5]
        hint = f" did you mean: {', '.join(close)}?" if close else ""
        raise LookupError(
            f"unknown GPU {name!r}: fmllm's database has {len(entries)} NVIDIA GPUs (consumer RTX 20-50, "
            f"workstation, data-centre).{hint} Or plan for a size with --vram SIZE."
        )
    exact = [
        e
        for e in same_model
        if e.variants == q.variants
        and (q.memory_gb is None or e.card.memory_gb == q.memory_gb)
        and (q.form is None or e.form is None or e.form == q.form)
    ]
    if exact and not q.unknown:
        if len(exact) == 1:
            return exact[0].card
        return _choose(exact, name)
    listed = ", ".join(e.card.name for e in same_model)
    if q.unknown:
        raise LookupError(f"{name!r}: did not understand {' '.join(q.unknown)!r}; candidates: {listed}")
    same_variant = [e for e in same_model if e.variants == q.variants]
    if same_variant and q.memory_gb is not None:
        sizes = sorted({e.card.memory_gb for e in same_variant})
        raise LookupError(
            f"{name!r}: {same_variant[0].card.name} comes with {' or '.join(f'{s:g}' for s in sizes)} GB, "
            f"not {q.memory_gb:g} GB"
        )
    raise LookupError(f"{name!r} could be any of: {listed}; name one of them")


def budget_for_gpu(name: str) -> int:
    """Usable bytes of the card ``name`` means (LookupError when unknown or ambiguous)."""
    return lookup(name).usable_bytes


def match_nvml(nvml_name: str, total_bytes: int | None = None) -> GpuCard | None:
    """The database card for a device NVML reports (name, total memory); None when unknown.

    Memory variants are told apart by ``total_bytes``. Never raises.
    """
    try:
        q = _parse(nvml_name)
    except Exception:  # odd bytes in a driver-reported name
        return None
    pool = [e for e in _entries() if e.model == q.model and e.variants == q.variants]
    if q.form:
        pool = [e for e in pool if e.form in (None, q.form)] or pool
    if q.memory_gb is not None:
        pool = [e for e in pool if e.card.memory_gb == q.memory_gb] or pool
    if not pool:
        return None
    if total_bytes:
        best = min(abs(e.card.memory_bytes - total_bytes) for e in pool)
        pool = [e for e in pool if abs(e.card.memory_bytes - total_bytes) == best]
    pick = next((e for e in pool if e.common), pool[0])
    return pick.card


def resolve_budget(spec: str) -> tuple[int, str, GpuCard | None]:
    """A budget from a size ("10GiB", "24GB") or a GPU name: (bytes, label, card or None).

    Raises ValueError for text that is neither (the message covers both readings).
    """
    from fmllm_tui.units import parse_size

    try:
        size = parse_size(spec)
        return size, f"{size / GiB:.1f} GiB", None
    except ValueError as size_error:
        try:
            card = lookup(spec)
        except LookupError as gpu_error:
            raise ValueError(f"{spec!r} is neither a memory size ({size_error}) nor a known GPU ({gpu_error})") from None
    return card.usable_bytes, card.name, card
