"""Sizes in one vocabulary: the binary units, reading a size a person wrote, reading a size a
library printed, and writing bytes for people. Every face formats memory through here, so the
same number reads the same way everywhere (GiB = 1024**3, as torch and NVML count)."""

from __future__ import annotations

import re

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)


def parse_size(text: str | int | float) -> int:
    """Parse '10GiB', '10 GB', '10g', '10240MiB', '10' (GiB) into bytes. Raises ValueError."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"size must be positive, got {text}")
        return int(text * 1024**3)
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(
            f"cannot read {text!r} as a memory size; write it like 10GiB, 24GB or 16000MiB"
        )
    number = float(m.group(1))
    unit = (m.group(2) or "").lower()
    if unit == "b":
        mult = 1
    elif unit == "":
        mult = 1024**3
    else:
        base = 1024 if "i" in unit else 1000
        power = "kmgt".index(unit[0]) + 1
        mult = base**power
        # "10G" and "10GB" are read as GiB: that is what people mean for GPU memory.
        if "i" not in unit:
            mult = 1024**power
    size = int(number * mult)
    if size <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return size


_PRINTED = re.compile(r"\s*([\d.]+) ?(bytes|[KMGTP]i?B)")
_PRINTED_UNIT = {"bytes": 1, "B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": 1 << 40, "PiB": 1 << 50,
                 "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4, "PB": 1000**5}


def printed_size(text: str | None) -> int | None:
    """A size as a library printed it ('2.00 GiB', '20.00 MiB', '1024 bytes'; 'GB' decimal) in
    bytes, or None when ``text`` does not start with one. (A size a person writes is read by
    :func:`parse_size`, which takes 'GB' as GiB: that is what people mean for GPU memory.)"""
    if not text:
        return None
    m = _PRINTED.match(text)
    if not m:
        return None
    try:
        return int(float(m.group(1)) * _PRINTED_UNIT[m.group(2)])
    except (ValueError, KeyError):
        return None


def gib(n: float | int | None, digits: int = 2) -> str:
    """Bytes as GiB with ``digits`` decimals ('5.56 GiB'); '?' when unknown."""
    return "?" if n is None else f"{float(n) / GiB:.{digits}f} GiB"


def human_bytes(n: float | int | None) -> str:
    """Bytes as people compare them with their card: GiB with one decimal, else MiB or KiB."""
    if n is None:
        return "?"
    n = float(n)
    if abs(n) >= GiB:
        return f"{n / GiB:.1f} GiB"
    if abs(n) >= MiB:
        return f"{n / MiB:.0f} MiB"
    return f"{n / KiB:.0f} KiB"


def format_duration(seconds: float) -> str:
    """Seconds as people read a run's length: '42s', '3m05s', '2h07m' (the runner's metrics line,
    fmllm-run's summary and the TUI's time estimates all write durations this way)."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
