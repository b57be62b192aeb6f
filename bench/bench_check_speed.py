"""Wall time of the default `fmllm-check` suite (no --test, --offline, shipped config).

Target (issue): at most 1.5 s on the 2-core CPU machine. Usage: python bench/bench_check_speed.py [N]
Prints one line per run, then the median, and whether torch/textual were imported.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fmllm_tui.cli_check", "--offline", "--config", str(ROOT / "config.yaml")],
                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    one()  # warm the OS file cache and the per-user module-table cache
    times = [one() for _ in range(n)]
    for t in times:
        print(f"{t:.3f} s")
    cfg = str(ROOT / "config.yaml")
    probe = (f"import sys; sys.argv=['fmllm-check','--offline','--config',{cfg!r}]\n"
             "from fmllm_tui.cli_check import main\nimport contextlib, io\n"
             "with contextlib.redirect_stdout(io.StringIO()): main(sys.argv[1:])\n"
             "print('torch' in sys.modules, 'textual' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    print(f"median {statistics.median(times):.3f} s, min {min(times):.3f} s, max {max(times):.3f} s over {n} runs; "
          f"torch imported, textual imported: {out}")


if __name__ == "__main__":
    main()
