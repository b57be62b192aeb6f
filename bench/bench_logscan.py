"""Log-scan speed: fmllm's log diagnosis vs `grep -E` with the same patterns on a 1 GB log.

Usage:
    python bench/bench_logscan.py [--size-mb 1024] [--path /tmp/fmllm_bench_train.log] [--keep]

The log is generated into /tmp (never the repo): a realistic fine-tune log (tqdm bars rewritten
with CR, trainer loss dicts, warnings with ANSI colour, eval passes, checkpoint saves) that ends
in a CUDA OOM traceback. grep gets every regex of fmllm's pattern table (translated to POSIX ERE)
plus the loss-NaN and traceback markers, and runs first so both read from the page cache.
Prints grep's and fmllm's wall time, MB/s and the ratio (target: fmllm >= 1/3 of grep's speed),
and checks that fmllm found the OOM at the right line.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fmllm_tui import logdiag  # noqa: E402
from fmllm_tui.logdiag import PATTERNS, scan_file  # noqa: E402

ESC = "\x1b"


def _chunk(rng: random.Random, step0: int, steps: int, total: int) -> str:
    """Log text for `steps` training steps starting at step0."""
    out: list[str] = []
    for i in range(step0, step0 + steps):
        pct = i * 100 // total
        fill = "█" * (pct // 10) + ("▌" if pct % 10 >= 5 else "")
        secs = i * 2
        for _ in range(3):  # tqdm refreshes several times per step
            out.append(f"\r{pct:3d}%|{fill:<10}| {i}/{total} [{secs // 3600:02d}:{secs // 60 % 60:02d}<{(total - i) * 2 // 60:02d}:00,  "
                       f"{1.9 + rng.random() / 5:.2f}s/it]")
        if i % 10 == 0:
            loss = 2.2 * (0.999 ** (i / 10)) + rng.random() / 10
            out.append(f"\n{{'loss': {loss:.4f}, 'grad_norm': {0.2 + rng.random():.4f}, "
                       f"'learning_rate': {2e-4 * (1 - i / total):.4e}, 'epoch': {i / total * 3:.2f}}}\n")
        if i % 500 == 0:
            out.append("\n  0%|          | 0/63 [00:00<?, ?it/s]")
            for j in range(1, 64, 4):
                out.append(f"\r {j * 100 // 63:2d}%|{'█' * (j * 10 // 63):<10}| {j}/63 [00:{j // 4:02d}<00:10,  6.01it/s]")
            out.append(f"\n{{'eval_loss': {1.5 + rng.random() / 5:.4f}, 'eval_runtime': 10.52, "
                       f"'eval_samples_per_second': 47.5, 'eval_steps_per_second': 5.99, 'epoch': {i / total * 3:.2f}}}\n")
            out.append(f"[INFO|trainer.py:3984] 2026-05-01 12:{i % 60:02d}:00,123 >> Saving model checkpoint to out/checkpoint-{i}\n")
            out.append(f"{ESC}[33m/usr/local/lib/python3.11/site-packages/torch/utils/checkpoint.py:87: UserWarning: "
                       f"torch.utils.checkpoint: the use_reentrant parameter should be passed explicitly.{ESC}[0m\n"
                       "  warnings.warn(\n")
    return "".join(out)


CRASH = """
Traceback (most recent call last):
  File "/home/u/train.py", line 88, in <module>
    trainer.train()
  File "/usr/local/lib/python3.11/site-packages/transformers/trainer.py", line 2245, in train
    return inner_training_loop(
  File "/usr/local/lib/python3.11/site-packages/transformers/trainer.py", line 3485, in training_step
    self.accelerator.backward(loss, **kwargs)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.91 GiB. GPU 0 has a total capacity of 23.57 GiB of which 2.11 GiB is free. Including non-PyTorch memory, this process has 21.44 GiB memory in use. Of the allocated memory 18.02 GiB is allocated by PyTorch, and 3.01 GiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.
"""


#: Failures planted in the noise (a fifth, two fifths, ... of the way in), one per pattern family that
#: the old hand-written trigger list could not see: each must be found at its line.
PLANTS = (
    ("NVIDIA GeForce RTX 5090 with CUDA capability sm_120 is not compatible with the current PyTorch installation.\n",
     "no_kernel_image"),
    ("Some modules are dispatched on the CPU or the disk. Make sure you have enough GPU RAM to fit the quantized model.\n",
     "modules_offloaded"),
    ("[rank1]:[W reducer.cpp:1389] Expected to have finished reduction in the prior iteration before starting a new one.\n",
     "ddp_reentrant"),
    ("/usr/local/lib/python3.11/site-packages/trl/trainer/sft_trainer.py:401: FutureWarning: `tokenizer` is deprecated and "
     "will be removed in version 5.0.0 for `SFTTrainer.__init__`. Use `processing_class` instead.\n", "deprecation_info"),
)


def generate(path: str, size_mb: int) -> tuple[int, dict[str, int]]:
    """Write the bench log; returns the 1-based line of the OOM message and the planted lines."""
    rng = random.Random(1234)
    target = size_mb << 20
    total = 10**9  # steps in the (imaginary) run; only the bar's numbers depend on it
    head = ("Loading checkpoint shards: 100%|██████████| 4/4 [00:12<00:00,  3.01s/it]\n"
            "trainable params: 41,943,040 || all params: 8,072,204,288 || trainable%: 0.5196\n")
    written = 0
    lines = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(head)
        written += len(head.encode())
        lines += head.count("\n")
        step = 1
        planted: dict[str, int] = {}
        while written < target:
            text = _chunk(rng, step, 1000, total)
            step += 1000
            f.write(text)
            written += len(text.encode())
            lines += text.count("\n")
            k = len(planted)
            if k < len(PLANTS) and written >= target * (k + 1) // (len(PLANTS) + 1):
                line, pid = PLANTS[k]
                f.write("\n" + line)  # the bar in progress ends first, as a real log's does
                lines += 2
                written += len(line) + 1
                planted[pid] = lines
        f.write(CRASH)
        oom_line = lines + CRASH.count("\n")  # the OOM line is CRASH's last line
    return oom_line, planted


def to_ere(rx: str) -> str:
    """Translate one of fmllm's Python regexes to POSIX ERE for GNU grep."""
    s = re.sub(r"\(\?P<\w+>", "(", rx)
    s = s.replace("(?:", "(")
    s = re.sub(r"([*+?}])\?", r"\1", s)  # lazy -> greedy (same lines match)
    s = s.replace(r"\d", "[0-9]").replace(r"\s", "[[:space:]]").replace(r"\w", "[[:alnum:]_]")
    s = s.replace(r"\-", "-").replace(r"\'", "'").replace(r"\"", '"').replace(r"\`", "`")
    return s


def grep_patterns() -> list[str]:
    pats = [to_ere(p.rx.pattern) for p in PATTERNS if p.rx is not None]
    pats += ["['\"](loss|grad_norm)['\"]: nan", r"Traceback \(most recent call last\)"]
    return pats


def compare_engines(path: str, size: int, re_mb: int = 64) -> None:
    """Time one pass of the pattern pre-filter over the log, per engine, single process.

    hyperscan: the engine fmllm uses (finds each matching line). re2.Set: google-re2's
    multi-pattern set over the same expressions; it only says *which* expressions match a block,
    so this is a lower bound of what re2 would cost (positions need a second pass). Python re:
    fmllm's fallback, timed on the first ``re_mb`` MiB and scaled.
    """
    from fmllm_tui import logprefilter

    block = logdiag.BLOCK
    exprs = logprefilter.Prefilter(engine="re").exprs

    def timed(fn, limit: int) -> float:
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            done = 0
            while done < limit:
                data = f.read(block)
                if not data:
                    break
                fn(data)
                done += len(data)
        return (time.perf_counter() - t0) * size / max(1, min(size, limit))

    if logprefilter.ENGINE == "hyperscan":
        import hyperscan

        hs = logprefilter.Prefilter(engine="hyperscan")
        print(f"engine hyperscan {hyperscan.__version__}: {timed(lambda d: hs.line_ends(d, 0, len(d)), size):.2f}s for the whole log")
    try:
        import re2

        rs = re2.Set.SearchSet(re2.Options())
        for _name, rx, ci in exprs:
            rs.Add(("(?i)" if ci else "") + rx)
        rs.Compile()
        print(f"engine google-re2 re2.Set: {timed(rs.Match, size):.2f}s for the whole log (which expressions only; "
              "positions need another pass)")
    except ImportError:
        print("engine google-re2: not installed (pip install google-re2)")
    py = logprefilter.Prefilter(engine="re")
    print(f"engine Python re (fmllm's fallback): {timed(lambda d: py.line_ends(d, 0, len(d)), re_mb << 20):.2f}s "
          f"for the whole log (scaled from {re_mb} MiB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--path", default=os.path.join(tempfile.gettempdir(), "fmllm_bench_train.log"))
    ap.add_argument("--keep", action="store_true", help="keep the generated log")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="worker processes for fmllm (default: logdiag.MAX_WORKERS)")
    ap.add_argument("--reuse", action="store_true", help="reuse an existing log at --path instead of generating it")
    ap.add_argument("--engines", action="store_true",
                    help="also time the pre-filter pass alone with each multi-pattern engine (hyperscan, re2.Set, Python re)")
    args = ap.parse_args()
    if os.path.abspath(args.path).startswith(os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))):
        print("refusing to write the bench log inside the repository", file=sys.stderr)
        return 2
    grep = shutil.which("grep")
    if not grep:
        print("skipped: grep not found", file=sys.stderr)
        return 0

    if args.workers is not None:
        logdiag.MAX_WORKERS = args.workers
    t = time.perf_counter()
    if args.reuse and os.path.exists(args.path):
        oom_line, planted = sum(1 for _ in open(args.path, "rb")), {}
    else:
        oom_line, planted = generate(args.path, args.size_mb)
    size = os.path.getsize(args.path)
    print(f"log {args.path}: {size / 2**20:.0f} MiB ({time.perf_counter() - t:.1f}s to make or count)")

    with tempfile.NamedTemporaryFile("w", suffix=".ere", delete=False) as pf:
        pf.write("\n".join(grep_patterns()) + "\n")
        pat_file = pf.name
    try:
        def run_grep() -> tuple[float, str]:
            t0 = time.perf_counter()
            r = subprocess.run([grep, "-c", "-a", "-E", "-f", pat_file, args.path], capture_output=True, text=True)
            if r.returncode not in (0, 1):
                raise SystemExit(f"grep failed: {r.stderr.strip()}")
            return time.perf_counter() - t0, r.stdout.strip()

        def cpu_now() -> tuple[float, float]:
            me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime

        run_grep()  # warm the page cache
        load_before = os.getloadavg() if hasattr(os, "getloadavg") else (0.0,)
        g_times, f_times, g_cpu, f_cpu = [], [], [], []
        hits = []
        for _ in range(args.runs):
            c0 = cpu_now()
            gt, gcount = run_grep()
            c1 = cpu_now()
            g_times.append(gt)
            g_cpu.append(c1[1] - c0[1])
            t0 = time.perf_counter()
            hits = scan_file(args.path)
            f_times.append(time.perf_counter() - t0)
            c2 = cpu_now()
            f_cpu.append((c2[0] - c1[0]) + (c2[1] - c1[1]))
        g, fm = min(g_times), min(f_times)
        mb = size / 1e6
        load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
        print(f"load average before/after: {load_before[0]:.2f} / {load[0]:.2f} (other work on the machine skews timings)")
        print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, "
              f"{subprocess.run([grep, '--version'], capture_output=True, text=True).stdout.splitlines()[0]}, LANG={os.environ.get('LANG', '')}")
        print(f"grep -E ({len(grep_patterns())} patterns): best {g:.2f}s  ({mb / g:.0f} MB/s)  matching lines: {gcount}")
        print(f"fmllm scan_file ({min(logdiag.MAX_WORKERS, os.cpu_count() or 1)} workers): best {fm:.2f}s  ({mb / fm:.0f} MB/s)  "
              f"runs: {', '.join(f'{x:.2f}' for x in f_times)}")
        print(f"CPU seconds (user+sys, best run): grep {min(g_cpu):.2f}, fmllm {min(f_cpu):.2f} (all processes)")
        print(f"speed ratio fmllm/grep (wall): {g / fm:.2f} (target >= 0.33)")
        oom = [h for h in hits if h.pattern.startswith("cuda_oom")]
        print("hits:", ", ".join(f"{h.pattern}@{h.line}x{h.count}" for h in hits))
        ok = bool(oom) and oom[0].line == oom_line
        print(f"OOM found at the right line ({oom_line}): {ok}")
        for pid, line in planted.items():
            found = any(h.pattern == pid and h.line == line for h in hits)
            print(f"planted {pid} at line {line} found: {found}")
            ok = ok and found
        print(f"peak RSS of this process (the main one): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB, "
              f"largest worker: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB")
        if args.engines:
            compare_engines(args.path, size)
        return 0 if ok else 1
    finally:
        os.unlink(pat_file)
        if not args.keep:
            os.unlink(args.path)


if __name__ == "__main__":
    raise SystemExit(main())
