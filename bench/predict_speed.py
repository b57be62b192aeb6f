"""Speed of the memory model and the fit search (the search calls predict hundreds of times).

    python bench/predict_speed.py

Prints median wall times on this machine for: predict_inputs (plain inputs), predict (from the
typed config view), building the view itself (pydantic), fit() on a budget that needs changes,
fit() with memory to spare, and recommend() over the catalogue.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fmllm_tui import catalogue, fitsearch, gpudb, memory  # noqa: E402
from fmllm_tui.config import FineTuneConfig, load_config  # noqa: E402

GiB = 1 << 30


def timed(fn, n: int) -> float:
    """Median seconds of n calls."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    loaded = load_config(Path(__file__).resolve().parent.parent / "config.yaml")
    view = loaded.view
    arch = catalogue.get_architecture(view.base_model_name)
    spec = memory.ArchSpec.from_config(arch)
    inp, _ = memory.inputs_from_view(view)
    data = view.model_dump()
    card = gpudb.lookup("rtx 3060 laptop")
    h200 = gpudb.lookup("h200")
    seqs = iter(range(64, 10**9, 64))  # every call a new plan, as in the search
    rows = [
        ("predict_inputs (plain inputs)", lambda: memory.predict_inputs(replace(inp, seq_len=next(seqs)), spec), 2000),
        ("predict (from the config view)", lambda: memory.predict(view, arch), 500),
        ("FineTuneConfig.model_validate", lambda: FineTuneConfig.model_validate(data), 500),
        ("fit: needs changes (6 GiB laptop)", lambda: fitsearch.fit(view, arch, card.usable_bytes, gpu=card), 30),
        ("fit: memory to spare (H200)", lambda: fitsearch.fit(view, arch, h200.usable_bytes, gpu=h200), 30),
        ("recommend: whole catalogue, 24 GiB", lambda: fitsearch.recommend(24 * GiB, view), 5),
    ]
    print(f"fmllm memory model speed — {platform.node()}, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}")
    for name, fn, n in rows:
        s = timed(fn, n)
        print(f"  {name:38} median {s * 1e6:10.1f} µs  (n={n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
