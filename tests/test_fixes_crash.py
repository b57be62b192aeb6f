"""Crash safety: SIGKILL a process in the middle of fixing, many times; the config survives.

A forked child loops over apply, apply, undo on one config; the parent kills it with SIGKILL
after a random delay, then checks that the config exists, is complete and is one of the
versions a finished step would leave. Forking (not spawning) keeps each round to milliseconds,
so 100+ kills take a few seconds. The delays spread over the whole write path: lock, load,
render, backup, temp write, fsync, validation, rename.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import fmllm_tui.fixes as fixes
from fmllm_tui.fixes import safewrite as sw

from fmllm_tui.config import load_config
from fmllm_tui.findings import Change

SEQ = "fine_tuning.training.max_seq_length"
# Small on purpose: a fix cycle takes ~0.1 s, so random delays up to 0.15 s cover all of it.
CONFIG = (
    b"# crash test config\n"
    b"fine_tuning:\n"
    b"  base_model_name: Qwen/Qwen2.5-7B-Instruct   # model\n"
    b"  training:\n"
    b"    max_seq_length: 1024   # tokens\n"
    b"fmllm:\n"
    b"  minimal_test_steps: 10\n"
)


def test_sigkill_at_random_moments_never_breaks_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    original = CONFIG
    cfg.write_bytes(original)
    loaded = load_config(cfg)
    a, b = [Change(key=SEQ, to=512)], [Change(key=SEQ, to=2048)]
    valid = {
        original,
        fixes.engine.encode(loaded, fixes.render_changes(loaded, a)),
        fixes.engine.encode(loaded, fixes.render_changes(loaded, b)),
    }
    rng = random.Random(20261126)
    kills = 0
    mid_write = 0  # kills that left a temp file behind: the kill landed inside a write
    deadline = time.monotonic() + 25
    while (kills < 120 and time.monotonic() < deadline) or kills < 100:
        pid = os.fork()
        if pid == 0:  # child: fix, fix, undo, forever
            try:
                while True:
                    fixes.apply_changes(cfg, a, lock_timeout=5)
                    fixes.apply_changes(cfg, b, lock_timeout=5)
                    fixes.undo(cfg, lock_timeout=5)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        kills += 1
        data = cfg.read_bytes()  # exists (else FileNotFoundError fails the test)
        assert data in valid, f"kill {kills}: config is neither old nor new ({len(data)} bytes)"
        load_config(cfg)  # and it loads and validates
        for backup in fixes.list_backups(cfg):
            assert backup.read_bytes() in valid, f"kill {kills}: a torn backup {backup.name}"
        if any(p.name.endswith(sw.TMP_SUFFIX) for p in tmp_path.iterdir()):
            mid_write += 1
    assert kills >= 100
    assert mid_write >= 5, f"only {mid_write} of {kills} kills landed inside a write"
    # A leftover temp file is cleaned by the next write, and the config still fixes normally.
    fixes.apply_changes(cfg, [Change(key=SEQ, to=256)])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(sw.TMP_SUFFIX)]
    assert load_config(cfg).view.training.max_seq_length == 256
    print(f"{kills} kills, {mid_write} inside a write")
