"""The text-splicing engine: each edit touches only the characters of the value it changes."""

from __future__ import annotations

import io

import pytest
from fmllm_tui.fixes.errors import FixError
from fmllm_tui.fixes.yamltext import apply_change, plain_ok, render_scalar

from fmllm_tui.config import make_yaml, to_plain


def parse(text: str):
    return to_plain(make_yaml().load(io.StringIO(text)))


def edit(text: str, key: str, to, comment: str | None = "why") -> str:
    new = apply_change(text, key, to, comment)
    parse(new)  # every result must be YAML
    return new


# -- scalars keep their style and their neighbours -------------------------------------------


@pytest.mark.parametrize(
    ("line", "to", "expected"),
    [
        ("k: 1024   # tokens\n", 512, "k: 512    # tokens\n"),  # comment stays in its column
        ("k: 8 # c\n", 1024, "k: 1024 # c\n"),  # at least one space before '#'
        ("k: 'bfloat16'  # q\n", "float16", "k: 'float16'   # q\n"),
        ('k: "bfloat16"\n', "float16", 'k: "float16"\n'),
        ("k: bfloat16\n", "float16", "k: float16\n"),
        ("k: 3e-4\n", 1e-4, "k: 1.0e-4\n"),  # exponent style kept, made YAML 1.1-safe
        ("k: 2.0e-4\n", 5e-5, "k: 5.0e-5\n"),
        ("k: 0.0002\n", 0.0001, "k: 0.0001\n"),
        ("k: True\n", False, "k: False\n"),  # capitalised booleans stay capitalised
        ("k: true\n", False, "k: false\n"),
        ("k: ~\n", 4, "k: 4\n"),
        ("k: off_text\n", "off", "k: 'off'\n"),  # YAML 1.1 reads bare off as false
        ("k: abc\n", "it's: #1", "k: 'it''s: #1'\n"),
        ("k:\n", 5, "k: 5\n"),
        ("k:      # nothing yet\n", "sdpa", "k: sdpa # nothing yet\n"),
        ("k: &a 5\n", 6, "k: &a 6\n"),  # an unreferenced anchor is kept
        ("k: !!str 5\n", "6", "k: '6'\n"),  # the explicit tag of the old value goes with it
    ],
)
def test_scalar_replacement(line: str, to, expected: str) -> None:
    text = "before: 1  # x\n" + line + "after: 2\n"
    assert edit(text, "k", to) == "before: 1  # x\n" + expected + "after: 2\n"


def test_multiline_values_are_replaced_whole() -> None:
    text = "a: |\n  one\n  two\n\nb: plain\n  continued\nc: \"dq\n  more\"\nd: 1\n"
    out = edit(text, "a", "x")
    assert out == "a: x\n\nb: plain\n  continued\nc: \"dq\n  more\"\nd: 1\n"
    out = edit(out, "b", "w")
    out = edit(out, "c", "z")
    assert out == "a: x\n\nb: w\nc: \"z\"\nd: 1\n"


def test_crlf_and_missing_final_newline_survive() -> None:
    text = "a: 1\r\ns:\r\n  x: 1  # c\r\n# tail"
    out = edit(text, "s.x", 2)
    assert out == "a: 1\r\ns:\r\n  x: 2  # c\r\n# tail"
    out = edit(text, "s.w", True)
    assert out == "a: 1\r\ns:\r\n  x: 1  # c\r\n  w: true  # why\r\n# tail"
    out = edit(text, "new.z", 1)
    assert out == "a: 1\r\ns:\r\n  x: 1  # c\r\n# tail\r\n\r\n# new: section added by fmllm-check --fix\r\nnew:\r\n  z: 1  # why"


# -- flow style ------------------------------------------------------------------------------


def test_flow_mapping_edit_and_insert() -> None:
    text = "lora: {r: 8, alpha: 16}   # small\n"
    assert edit(text, "lora.r", 16) == "lora: {r: 16, alpha: 16}   # small\n"
    assert edit(text, "lora.dropout", 0.1) == "lora: {r: 8, alpha: 16, dropout: 0.1}   # small\n"
    assert edit("s: {}\n", "s.a", 1) == "s: {a: 1}\n"
    multi = "t: {a: 1,\n    b: 2,   # c\n    }\n"
    assert parse(edit(multi, "t.z", 3)) == {"t": {"a": 1, "b": 2, "z": 3}}


def test_flow_sequence_value_replaced() -> None:
    text = "m: [q_proj, k_proj]  # c\n"
    assert edit(text, "m", ["q_proj"]) == "m: [q_proj]          # c\n"  # comment keeps its column
    assert edit(text, "m", "all-linear") == "m: all-linear        # c\n"


# -- block collections -----------------------------------------------------------------------


def test_block_list_edit_keeps_kept_items_and_their_comments() -> None:
    text = "l:\n  - a   # first\n  # about b\n  - b\n  - c  # third\nnext: 1\n"
    out = edit(text, "l", ["a", "c", "d"])
    assert out == "l:\n  - a   # first\n  - c  # third\n  - d\nnext: 1\n"
    out = edit(text, "l", ["a", "B", "c"])
    assert out == "l:\n  - a   # first\n  # about b\n  - B\n  - c  # third\nnext: 1\n"


def test_block_collection_replaced_by_a_scalar() -> None:
    text = "l:    # which\n  - a\n  - b\nnext: 1\n"
    assert edit(text, "l", "all-linear") == "l: all-linear # which\nnext: 1\n"
    text = "m: &m\n  x: 1\nnext: 1"
    assert edit(text, "m", 3) == "m: &m 3\nnext: 1"


def test_mapping_value_sets_keys_and_keeps_others() -> None:
    text = "kw:\n  use_reentrant: true   # old\n  other: 1\n"
    out = edit(text, "kw", {"use_reentrant": False})
    assert out == "kw:\n  use_reentrant: false  # old\n  other: 1\n"


# -- insertion -------------------------------------------------------------------------------


def test_insert_lands_after_section_and_its_indented_comments() -> None:
    text = "a:\n    x: 1\n    # about a\n\n# about b\nb:\n    y: 2\n"
    out = edit(text, "a.z", 3, "added")
    assert out == "a:\n    x: 1\n    # about a\n    z: 3  # added\n\n# about b\nb:\n    y: 2\n"


def test_insert_nested_path_creates_block_sections() -> None:
    text = "fmllm:\n  attn_implementation: sdpa\nother: 1\n"
    out = edit(text, "fmllm.distributed.mode", "fsdp")
    assert out == "fmllm:\n  attn_implementation: sdpa\n  distributed:\n    mode: fsdp  # why\nother: 1\n"


def test_insert_into_empty_or_null_section() -> None:
    assert edit("s:\nt: 1\n", "s.a", 1) == "s:\n  a: 1  # why\nt: 1\n"
    assert edit("s: ~   # nothing\nt: 1\n", "s.a", 1) == "s:   # nothing\n  a: 1  # why\nt: 1\n"
    assert edit("s: &x null\n", "s.a", 1) == "s: &x\n  a: 1  # why\n"


def test_top_level_setting_goes_after_last_top_level_setting() -> None:
    text = "base_model_name: m\nlora:\n  r: 8\n"
    assert edit(text, "use_adapter", True) == "base_model_name: m\nuse_adapter: true  # why\nlora:\n  r: 8\n"


def test_new_section_goes_before_document_end_marker() -> None:
    text = "a: 1\n# tail\n...\n"
    assert edit(text, "fmllm.x", 1) == "a: 1\n# tail\n\n# fmllm: section added by fmllm-check --fix\nfmllm:\n  x: 1  # why\n...\n"


def test_inserted_comment_is_one_line() -> None:
    out = edit("a:\n  x: 1\n", "a.w", 1, "two\nlines\tand tab")
    assert out == "a:\n  x: 1\n  w: 1  # two lines and tab\n"


# -- anchors, aliases, merges ---------------------------------------------------------------


def test_alias_occurrence_is_replaced_alone() -> None:
    text = "x: &n 4\na: *n\nb: *n\n"
    out = edit(text, "a", 2)
    assert out == "x: &n 4\na: 2\nb: *n\n"
    assert parse(out) == {"x": 4, "a": 2, "b": 4}


def test_anchored_value_used_elsewhere_is_refused() -> None:
    with pytest.raises(FixError, match="anchored"):
        apply_change("x: &n 4\na: *n\n", "x", 2)


def test_key_inside_aliased_section_is_refused() -> None:
    text = "base: &b\n  r: 8\nlora: *b\n"
    with pytest.raises(FixError, match="alias"):
        apply_change(text, "lora.r", 4)
    with pytest.raises(FixError, match="anchored"):
        apply_change(text, "base.r", 4)


def test_merged_key_gets_a_local_override() -> None:
    text = "base: &b\n  r: 8\n  alpha: 16\nlora:\n  <<: *b\n  dropout: 0.1\n"
    out = edit(text, "lora.r", 4)
    assert parse(out)["lora"]["r"] == 4
    assert parse(out)["base"]["r"] == 8
    assert out.startswith("base: &b\n  r: 8\n  alpha: 16\nlora:\n  <<: *b\n  dropout: 0.1\n  r: 4")


def test_scalar_in_the_way_is_refused() -> None:
    with pytest.raises(FixError, match="single value"):
        apply_change("a: 5\n", "a.b", 1)


# -- rendering -------------------------------------------------------------------------------


@pytest.mark.parametrize("s", ["yes", "No", "on", "OFF", "null", "~", "1.5", "1e3", "0x1f", "2024-01-01", "12:30", "", "a b", "a#b", "[x]", "-x", "a: b"])
def test_plain_refused_for_ambiguous_text(s: str) -> None:
    assert not plain_ok(s)
    rendered = render_scalar(s)
    assert parse(f"k: {rendered}\n") == {"k": s}


@pytest.mark.parametrize("x", [1e-4, 2e-4, 3.5e-5, 1e-10, 0.5, 1.0, 123456.0, 1e20])
def test_floats_round_trip_and_have_a_dot(x: float) -> None:
    for exp in (True, False):
        text = render_scalar(x, None, "1e-4" if exp else "0.1")
        assert parse(f"k: {text}\n") == {"k": x}
        assert "." in text.split("e")[0]


def test_file_ending_in_a_block_scalar_without_final_newline() -> None:
    """Appending a line would add a line break to the scalar's value: insert before it instead."""
    text = "s:\n  a: 1\n  notes: |\n    x\n    y"
    out = edit(text, "s.b", 2)
    assert out == "s:\n  a: 1\n  b: 2  # why\n  notes: |\n    x\n    y"
    out = edit(text, "fmllm.x", 1)
    assert parse(out) == {"fmllm": {"x": 1}, "s": {"a": 1, "notes": "x\ny"}}
    assert out.endswith("s:\n  a: 1\n  notes: |\n    x\n    y")
