"""Fuzz: mutated realistic configs never crash fmllm, never exit outside the documented codes, and
are never changed without --fix (issue 22, "a fuzz test in the suite").

The seeds are the shipped config.yaml and the corpus in tests/configs (nested and flat layouts,
sections of a project's own, interpolations). A seeded generator (reproducible: a failure names
its case number) mutates each with what people and tools get wrong: a key dropped, a value of
the wrong type, a key written twice, deep nesting, anchors and aliases (merge keys, a merge into
its own anchor, an alias bomb), Unicode (look-alike letters, zero-width and control characters,
a BOM), numbers too large for any type, bad interpolations, a file cut short, stray tabs.

In process, for every case (cheap): load the file as fmllm-check does (size and cost limits,
ruamel, the typed view) and resolve its plan for a named card (recipe, sequence length,
memory prediction) as the checks do. A config error is fine when it renders as a located
message; any other exception is a bug. The file's bytes never change. A few cases run the real
``fmllm-check --json`` to hold the exit-code contract (README, "Exit codes") end to end.
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from fmllm_tui.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
SEEDS = [REPO / "config.yaml", *sorted((REPO / "tests" / "configs").glob("*.yaml"))]
CASES_PER_SEED = 60  # 6 seeds: 360 cases per run
CARD = "RTX 3090"
# README "Exit codes": 0 nothing failed, 1 a check failed, 2 usage or config error. 3 (a check
# crashed) is documented too, but a config must never make a check crash: it is a bug here.
ALLOWED_EXIT = {0, 1, 2}

HOSTILE_SCALARS: list[Any] = [
    None, "", True, False, 0, -1, 2**63, 10**400, -(10**30), 1e308, float("inf"), float("nan"), 0.5, "1e9999",
    "0x1F", "ÿ", "Qwen/Qwen2.5-7B-Instruсt",  # a Cyrillic с
    "a\u200bb", "\u202eevil", "\x07bell", "🦙" * 40, "x" * 5000, "${missing.key}", "${paths.output_dir}",
    "~", "/", "../../etc/passwd", "NaN", "yes", "no", "null", [1, 2], {"a": 1}, [], {},
]


def _keys_paths(node: Any, path: tuple = ()) -> list[tuple]:
    """Every path to a value in a plain YAML tree (mapping keys and list indexes)."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*path, k))
            out += _keys_paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*path, i))
            out += _keys_paths(v, (*path, i))
    return out


def _parent(tree: Any, path: tuple) -> Any:
    for p in path[:-1]:
        tree = tree[p]
    return tree


def _dump(tree: Any) -> str:
    from io import StringIO

    y = YAML(typ="safe", pure=True)
    y.default_flow_style = False
    buf = StringIO()
    y.dump(tree, buf)
    return buf.getvalue()


# Structural mutations of the plain tree (then dumped as YAML).


def _drop(rng: random.Random, tree: Any) -> None:
    paths = _keys_paths(tree)
    if paths:
        p = rng.choice(paths)
        del _parent(tree, p)[p[-1]]


def _retype(rng: random.Random, tree: Any) -> None:
    paths = _keys_paths(tree)
    if paths:
        p = rng.choice(paths)
        _parent(tree, p)[p[-1]] = copy.deepcopy(rng.choice(HOSTILE_SCALARS))


def _nest(rng: random.Random, tree: Any) -> None:
    paths = _keys_paths(tree)
    if paths:
        p = rng.choice(paths)
        value: Any = _parent(tree, p)[p[-1]]
        for _ in range(rng.choice([3, 20, 70, 150])):
            value = [value] if rng.random() < 0.5 else {"k": value}
        _parent(tree, p)[p[-1]] = value


def _unicode_key(rng: random.Random, tree: Any) -> None:
    paths = [p for p in _keys_paths(tree) if isinstance(p[-1], str)]
    if paths:
        p = rng.choice(paths)
        parent = _parent(tree, p)
        new = rng.choice(["lоra", "r\u200b", "ｒ", "learning_rate\u0000", "🦙", "ß" * 300])
        parent[new] = parent.pop(p[-1])


STRUCTURAL: list[Callable[[random.Random, Any], None]] = [_drop, _retype, _retype, _nest, _unicode_key]

# Text mutations of the YAML as written.


def _duplicate_line(rng: random.Random, text: str) -> str:
    lines = text.splitlines()
    keyed = [i for i, ln in enumerate(lines) if ":" in ln and not ln.lstrip().startswith("#")]
    if not keyed:
        return text
    i = rng.choice(keyed)
    return "\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1:]) + "\n"


def _aliases(rng: random.Random, text: str) -> str:
    kind = rng.randrange(4)
    if kind == 0:  # a merge key into its own anchor (a cycle)
        return text + "loop: &loop\n  a: 1\n  <<: *loop\n"
    if kind == 1:  # an alias bomb in a section fmllm does not read
        bomb = "bomb:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        for i, (prev, cur) in enumerate(zip("abcdefgh", "bcdefghi", strict=True)):
            bomb += f"  {cur}: &{cur} [{', '.join(['*' + prev] * 10)}]\n"
            if i > rng.randrange(4, 8):
                break
        return text + bomb
    if kind == 2:  # an alias to an anchor that does not exist
        return text + "other: *nowhere\n"
    return text + "base: &base {r: 8, alpha: 16}\nmerged:\n  <<: *base\n  r: 4\n"


def _cut(rng: random.Random, text: str) -> str:
    return text[: rng.randrange(len(text) + 1)]


def _tabs(rng: random.Random, text: str) -> str:
    lines = text.splitlines()
    if lines:
        i = rng.randrange(len(lines))
        lines[i] = "\t" + lines[i]
    return "\n".join(lines) + "\n"


def _flow_deep(rng: random.Random, text: str) -> str:
    depth = rng.choice([50, 100, 400])  # 5000-deep: tests/test_config_load.py (about a second alone)
    return text + "deep: " + "[" * depth + "]" * depth + "\n"


def _interpolation(rng: random.Random, text: str) -> str:
    return text + rng.choice(["cyc:\n  a: ${cyc.b}\n  b: ${cyc.a}\n", "bad: ${\n", "x: ${oc.env:HOME}\n",
                              "y: ${paths.nothing.here}\n"])


TEXTUAL: list[Callable[[random.Random, str], str]] = [_duplicate_line, _aliases, _cut, _tabs, _flow_deep,
                                                      _interpolation]


def mutate(rng: random.Random, seed_text: str) -> bytes:
    """One mutated config: structural changes to the parsed tree, then changes to its text."""
    text = seed_text
    if rng.random() < 0.7:
        tree = YAML(typ="safe", pure=True).load(seed_text)
        for _ in range(rng.randint(1, 3)):
            rng.choice(STRUCTURAL)(rng, tree)
        try:
            text = _dump(tree)
        except Exception:  # a value ruamel's dumper refuses (a NUL in a key): keep the text as it was
            text = seed_text
    if rng.random() < 0.5:
        text = rng.choice(TEXTUAL)(rng, text)
    data = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.05:
        data = b"\xef\xbb\xbf" + data  # a BOM
    if rng.random() < 0.05:
        data = data.replace(b"a", b"\xff", 1)  # not UTF-8
    return data


def cases() -> list[tuple[str, bytes]]:
    """Every case of this run, reproducible: (name, bytes)."""
    rng = random.Random(22)
    out = []
    for seed in SEEDS:
        text = seed.read_text(encoding="utf-8")
        for i in range(CASES_PER_SEED):
            out.append((f"{seed.stem}#{i}", mutate(rng, text)))
    return out


def _plan(loaded: Any) -> None:
    """What the checks plan from a loaded config, for a named card: recipe, length, prediction."""
    from fmllm_tui import gpudb
    from fmllm_tui.catalogue import get_architecture
    from fmllm_tui.plan import PlanError, Target, run_plan

    card = gpudb.lookup(CARD)
    arch = get_architecture(str(loaded.view.base_model_name or ""))
    try:
        run_plan(loaded.view, Target.planned(card), arch=arch, card=card)
    except PlanError as e:  # a setting no run can honour: a message, not a crash
        assert str(e)


def test_mutated_configs_never_crash_in_process(tmp_path: Path) -> None:
    all_cases = cases()
    assert len(all_cases) >= 300
    errors = loaded = 0
    failures = []
    for name, data in all_cases:
        path = tmp_path / "config.yaml"
        path.write_bytes(data)
        before = (data, path.stat().st_mtime_ns)
        try:
            cfg = load_config(path)
            loaded += 1
            _plan(cfg)
        except ConfigError as e:
            errors += 1
            text = e.render()
            # Located: the message names the file, and says nothing was changed.
            if str(path) not in text or "did not change the file" not in text:
                failures.append(f"{name}: config error without a location: {text[:300]}")
        except Exception as e:  # the property under test: nothing else may escape
            failures.append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
        if (path.read_bytes(), path.stat().st_mtime_ns) != before:
            failures.append(f"{name}: the file changed without --fix")
    assert not failures, f"{len(failures)} of {len(all_cases)} cases:\n" + "\n".join(failures[:20])
    # The generator must exercise both sides: configs that load and configs that are refused.
    assert loaded >= 50 and errors >= 50, (loaded, errors)


def _subprocess_sample() -> list[tuple[str, bytes]]:
    """A few cases for the real CLI: two that load and two that are config errors, spread over
    the seeds (sorted in memory; collection stays cheap)."""
    from fmllm_tui.config import load_config_text

    ok: list[tuple[str, bytes]] = []
    bad: list[tuple[str, bytes]] = []
    every = cases()
    for name, data in every[::7]:
        if len(ok) >= 2 and len(bad) >= 2:
            break
        try:
            load_config_text(REPO / "config.yaml", data.decode("utf-8"))
            if len(ok) < 2:
                ok.append((name, data))
        except Exception:  # config errors (and any bug: the in-process test reports it, not collection)
            if len(bad) < 2:
                bad.append((name, data))
    return ok + bad


@pytest.mark.slow
@pytest.mark.parametrize("name,data", _subprocess_sample(), ids=lambda v: v if isinstance(v, str) else "")
def test_fmllm_check_keeps_its_exit_codes(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    (tmp_path / "data").mkdir()
    proc = subprocess.run([sys.executable, "-m", "fmllm_tui.cli_check", "--json", "-c", str(path), "--offline",
                           "--gpu", CARD], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    both = proc.stdout + proc.stderr
    assert proc.returncode in ALLOWED_EXIT, f"{name}: exit {proc.returncode}\n{both[-3000:]}"
    assert "Traceback" not in both, f"{name}:\n{both[-3000:]}"
    assert path.read_bytes() == data, f"{name}: the file changed without --fix"
    if proc.returncode != 2:
        doc = json.loads(proc.stdout)
        assert doc["summary"]["crash"] == 0, [c for c in doc["checks"] if c["status"] == "crash"]
