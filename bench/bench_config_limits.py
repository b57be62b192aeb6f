#!/usr/bin/env python3
"""How long and how much memory fmllm takes to refuse a hostile config (issue 22): a billion-laughs
alias bomb appended to the shipped config, a 400-level block mapping, a 5000-deep flow list and a
5 MiB file. Each case runs in a fresh process; prints seconds, the process's peak RSS and the
first line of the error. Usage: python bench/bench_config_limits.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = (ROOT / "config.yaml").read_text()
LAUGHS = "\nlaughs:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  {chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))
CASES = {
    "billion-laughs": SHIPPED + LAUGHS,
    "deep-block-400": SHIPPED + "\ndeep:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(400)) + "  " * 401 + "v: 1\n",
    "deep-flow-5000": SHIPPED + "\ndeep: " + "[" * 5000 + "]" * 5000 + "\n",
    "5-MiB-file": SHIPPED + "\n# " + "x" * (5 * 2**20) + "\n",
}
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from fmllm_tui.config import ConfigError, load_config
t0 = time.perf_counter()
try:
    load_config(Path(sys.argv[1])); msg = "loaded"
except ConfigError as e:
    msg = e.render().splitlines()[0]
print(json.dumps({"s": time.perf_counter() - t0, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "message": msg}))
"""


def main() -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(f"{'case':<16} {'seconds':>8} {'peak RSS MB':>12}  message")
        for name, text in CASES.items():
            path = Path(d) / f"{name}.yaml"
            path.write_text(text)
            out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                                 timeout=120, cwd=ROOT)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{name:<16} {r['s']:>8.2f} {r['rss_mb']:>12.0f}  {r['message'][:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
