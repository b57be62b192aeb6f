"""Property tests: random configs with random comments and styles, every applicable fix.

For each generated config: every old line outside the changed values survives byte for byte
and in order; the result parses to exactly the intended data (checked inside render_changes)
and validates; applying the same changes again changes nothing.
"""

from __future__ import annotations

import string
from pathlib import Path

import fmllm_tui.fixes as fixes
from fixes_support import assert_only_changed_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmllm_tui.config import ConfigError, load_config
from fmllm_tui.findings import Change

# Comment text: printable Unicode (no line breaks), tabs, and YAML's own punctuation.
COMMENT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp", "Co", "Cn")),
        st.sampled_from(["\t", "#", "'", '"', ":", "-", "{", "}", "[", "]", " "]),
    ),
    max_size=24,
).filter(lambda s: "\ufeff" not in s and "\ufffe" not in s and "\uffff" not in s)


def _eol(draw) -> str:
    if draw(st.booleans()):
        return ""
    return " " * draw(st.integers(1, 6)) + "#" + draw(COMMENT)


def _full_comments(draw, indent: int) -> list[str]:
    out = []
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["comment", "blank", "col0"]))
        if kind == "blank":
            out.append("")
        else:
            pad = 0 if kind == "col0" else indent
            out.append(" " * pad + "#" + draw(COMMENT))
    return out


def _scalar_text(draw, value) -> str:
    if isinstance(value, bool):
        return draw(st.sampled_from(["true", "True"] if value else ["false", "False"]))
    if isinstance(value, str):
        style = draw(st.sampled_from(["plain", "single", "double"]))
        return {"plain": value, "single": f"'{value}'", "double": f'"{value}"'}[style]
    if isinstance(value, float):
        return draw(st.sampled_from([repr(value), f"{value:.1e}".replace("e-0", "e-")]))
    return str(value)


TRAINING = {
    "per_device_train_batch_size": st.integers(1, 8),
    "per_device_eval_batch_size": st.integers(1, 16),
    "gradient_accumulation_steps": st.integers(1, 16),
    "learning_rate": st.sampled_from([1e-4, 2e-4, 3e-4, 0.5]),
    "max_seq_length": st.sampled_from([512, 1024, 2048, 4096]),
    "packing": st.booleans(),
    "fp16": st.booleans(),
    "bf16": st.booleans(),
    "gradient_checkpointing": st.booleans(),
    "save_total_limit": st.integers(1, 5),
}
ALIASABLE = ("per_device_eval_batch_size", "gradient_accumulation_steps", "save_total_limit")
QUANT = {"use_4bit": st.just(True), "bnb_4bit_compute_dtype": st.sampled_from(["float16", "bfloat16"])}
LORA = {"r": st.sampled_from([4, 8, 16]), "alpha": st.sampled_from([8, 16, 32]), "dropout": st.sampled_from([0.0, 0.05])}
FMLLM = {"attn_implementation": st.sampled_from(["sdpa", "flash_attention_2", "eager"]), "minimal_test_steps": st.integers(1, 20)}
OTHER_KEYS = st.text(alphabet=string.ascii_lowercase + "_", min_size=2, max_size=8).filter(
    lambda k: k not in ("yes", "no", "on", "off", "null", "true", "false") and not k.startswith("_")
)
OTHER_VALUES = st.one_of(
    st.integers(-5, 5000),
    st.sampled_from(["wandb", "cosine", "/data/x", "hello world", "a-b_c.d", "über"]),
    st.booleans(),
)


def _section(draw, name: str, fields: dict, indent: int, step: int, lines: list[str], *, required: dict | None = None) -> None:
    keys = [k for k in fields if draw(st.booleans())]
    items = dict(required or {})
    for k in keys:
        items[k] = draw(fields[k])
    if name == "lora" and draw(st.booleans()):
        items["target_modules"] = draw(st.sampled_from([["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"], "all-linear"]))
    style = draw(st.sampled_from(["block", "block", "flow", "null"])) if not items else draw(st.sampled_from(["block", "block", "flow"]))
    pad = " " * indent
    if style == "null" or not items:
        lines.append(f"{pad}{name}:{_eol(draw)}")
        return
    if style == "flow":
        inner = ", ".join(f"{k}: {_flow(draw, v)}" for k, v in items.items())
        lines.append(f"{pad}{name}: {{{inner}}}{_eol(draw)}")
        return
    lines.append(f"{pad}{name}:{_eol(draw)}")
    child = " " * (indent + step)
    for k, v in items.items():
        lines.extend(_full_comments(draw, indent + step))
        if isinstance(v, list):
            if draw(st.booleans()):
                lines.append(f"{child}{k}: [{', '.join(v)}]{_eol(draw)}")
            else:
                lines.append(f"{child}{k}:{_eol(draw)}")
                dash = child + (" " * step if draw(st.booleans()) else "")
                for item in v:
                    lines.append(f"{dash}- {_scalar_text(draw, item)}{_eol(draw)}")
        elif k in ALIASABLE and draw(st.integers(0, 3)) == 0:
            lines.append(f"{child}{k}: *n{_eol(draw)}")  # alias of the top-level `x_anchor: &n 4`
        else:
            lines.append(f"{child}{k}: {_scalar_text(draw, v)}{_eol(draw)}")


def _flow(draw, v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(v) + "]"
    return _scalar_text(draw, v)


@st.composite
def configs(draw) -> tuple[bytes, bool]:
    step = draw(st.sampled_from([2, 3, 4]))
    nested = draw(st.booleans())
    lines: list[str] = ["---"] if draw(st.booleans()) else []
    lines += _full_comments(draw, 0)
    lines.append(f"x_anchor: &n 4{_eol(draw)}")  # aliases below may point at it
    blocks = []
    for _ in range(draw(st.integers(0, 3))):  # sections fmllm does not know
        b: list[str] = []
        name = draw(OTHER_KEYS)
        b.append(f"x_{name}:{_eol(draw)}")
        for _ in range(draw(st.integers(1, 3))):
            b.extend(_full_comments(draw, step))
            kind = draw(st.sampled_from(["scalar", "scalar", "alias", "literal"]))
            key = f"{' ' * step}{draw(OTHER_KEYS)}_k"
            if kind == "alias":
                b.append(f"{key}: *n{_eol(draw)}")
            elif kind == "literal":
                b.append(f"{key}: |{_eol(draw)}")
                b.extend(f"{' ' * (2 * step)}{draw(COMMENT).replace(chr(9), ' ').strip() or 'x'}" for _ in range(2))
            else:
                b.append(f"{key}: {_scalar_text(draw, draw(OTHER_VALUES))}{_eol(draw)}")
        blocks.append(b)
    ours: list[str] = []
    if nested:
        ours.append(f"fine_tuning:{_eol(draw)}")
        base = step
    else:
        base = 0
    ours.append(f"{' ' * base}base_model_name: {_scalar_text(draw, 'Qwen/Qwen2.5-7B-Instruct')}{_eol(draw)}")
    for name, fields in (("lora", LORA), ("quantization", QUANT), ("training", TRAINING)):
        if draw(st.booleans()):
            ours.extend(_full_comments(draw, base))
            _section(draw, name, fields, base, step, ours)
    blocks.append(ours)
    if draw(st.booleans()):
        fm: list[str] = []
        _section(draw, "fmllm", FMLLM, 0, step, fm)
        blocks.append(fm)
    order = draw(st.permutations(range(len(blocks))))
    for i in order:
        lines.extend(blocks[i])
        lines.extend(_full_comments(draw, 0))
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    text = nl.join(lines)
    if draw(st.booleans()):
        text += nl
    return text.encode("utf-8"), nested


REQUESTS = [
    ("dtype.compute", {"bf16_supported": False}),
    ("attn.sdpa", {}),
    ("training.gc_reentrant", {}),
    ("tokenizer.pad_token", {"pad_token": "<pad>"}),
    ("training.eval_batch", {"to": 1}),
    ("training.max_seq_length", {"to": 256}),
    ("training.learning_rate", {"to": 1e-4}),
    ("model.adapter", {}),
    ("training.save_total_limit", {"to": 2}),
    ("training.precision_flags", {}),
    ("training.packing_seq", {}),
    ("model.pin_revision", {"commit": "c" * 40}),
    ("memory.fit", {"changes": [
        Change("lora.r", 4, comment="smaller adapter"),
        Change("lora.target_modules", ["q_proj", "v_proj"], comment="fewer modules"),
        Change("training.per_device_train_batch_size", 1, comment="one sequence"),
    ]}),
    ("model.id", {"suggestions": ["Qwen/Qwen2.5-7B-Instruct-1M"]}),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=configs(), picks=st.lists(st.sampled_from(range(len(REQUESTS))), min_size=1, max_size=8, unique=True))
def test_random_configs_keep_every_unrelated_line(tmp_path: Path, data: tuple[bytes, bool], picks: list[int]) -> None:
    raw, _nested = data
    p = tmp_path / "config.yaml"
    p.write_bytes(raw)
    try:
        loaded = load_config(p)
    except ConfigError:
        return  # the generator can write configs the schema rejects; those are not fixable
    requests = [REQUESTS[i] for i in picks]
    changes = fixes.plan_fixes(loaded, requests)
    new = fixes.render_changes(loaded, changes)
    assert_only_changed_lines(loaded.text, new, [c.key for c in changes])
    again = fixes.load_text(loaded, new)
    assert fixes.render_changes(again, changes) == new  # fixing twice equals fixing once
    # Each fix's own plan on the result is empty when it is the only fix touching its keys.
    last_id, last_values = requests[-1]
    assert fixes.plan_fix(again, last_id, last_values) == []
