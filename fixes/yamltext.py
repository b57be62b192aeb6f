"""Minimal textual edits of a YAML document, located through ruamel's composed node graph.

Why text splicing and not a ruamel dump: a round-trip dump re-emits the whole file and makes
indentation, line endings, trailing newlines and some spacing "consistent", so lines fmllm never
meant to touch can change. Here ruamel only *locates* things: ``YAML.compose`` gives every node
its exact start/end offsets in the original text, and each edit replaces just the characters of
one value (or inserts whole new lines). Everything else in the file stays byte for byte.

One call to :func:`apply_change` makes one change; callers chain them, so a later change sees
the text an earlier one produced. Semantic checking (the result parses to exactly the intended
data) is the caller's job (``fixes.engine``).
"""

from __future__ import annotations

import difflib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from fmllm_tui.config import make_yaml

from .errors import FixError

MERGE_TAG = "tag:yaml.org,2002:merge"
NULL_TAG = "tag:yaml.org,2002:null"
# Keys that name sections: when one has to be created it is written in block style.
SECTION_NAMES = frozenset({"fine_tuning", "lora", "quantization", "training", "paths", "fmllm", "distributed"})

# Plain (unquoted) text is used only for this conservative alphabet, so it means the same in
# block and flow context and in YAML 1.1 readers (PyYAML) as in ruamel's YAML 1.2.
_PLAIN_SAFE = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./@+=-]*$|^[0-9][A-Za-z0-9_./@+=-]*[A-Za-z_/@][A-Za-z0-9_./@+=-]*$")
# Words YAML 1.1 (PyYAML, which many training scripts use) reads as booleans or null.
_YAML11_SPECIAL = re.compile(r"^(y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF|null|Null|NULL|~)$")
# Text that some YAML reader would take for a number, a date or a time.
_NUMBERISH = re.compile(
    r"^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$|^0[xob]|^[-+]?\.(inf|nan)$|"
    r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}|^[0-9]+(:[0-9]+)+",
    re.IGNORECASE,
)


def _is_null_node(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


class Located:
    """Where a key's value sits in the text."""

    def __init__(self, start: int, end: int, prefix: str, kind: str):
        self.start = start  # the region a new value replaces
        self.end = end
        self.prefix = prefix  # text to keep in front of the new value (an anchor)
        self.kind = kind  # "scalar" | "empty" | "flow" | "block" | "alias"


class YamlText:
    """One parsed version of the text, with the helpers that turn nodes into offsets."""

    def __init__(self, text: str):
        self.text = text
        try:
            self.root = make_yaml().compose(io.StringIO(text))
        except YAMLError as e:  # the caller loaded this text before, so this is unexpected
            raise FixError(f"cannot parse the config to edit it: {e}") from None
        if not isinstance(self.root, MappingNode):
            raise FixError("the top level of the config is not a mapping of sections")
        self.refs: Counter[int] = Counter()
        self._count(self.root)
        self.step = self._indent_step()
        self.term = "\r\n" if text.count("\r\n") > text.count("\n") - text.count("\r\n") else "\n"

    # -- graph facts --------------------------------------------------------------------------

    def _count(self, node: Node) -> None:
        self.refs[id(node)] += 1
        if self.refs[id(node)] > 1:
            return  # an alias: its children were counted at the anchor
        if isinstance(node, MappingNode):
            for k, v in node.value:
                self._count(k)
                self._count(v)
        elif isinstance(node, SequenceNode):
            for item in node.value:
                self._count(item)

    def shared(self, node: Node) -> bool:
        return self.refs[id(node)] > 1

    def _indent_step(self) -> int:
        steps: Counter[int] = Counter()

        def walk(node: Node) -> None:
            if isinstance(node, MappingNode) and not node.flow_style:
                col = node.value[0][0].start_mark.column if node.value else 0
                for _k, v in node.value:
                    if isinstance(v, MappingNode) and not v.flow_style and v.value:
                        diff = v.value[0][0].start_mark.column - col
                        if diff > 0:
                            steps[diff] += 1
                        walk(v)
                    elif isinstance(v, SequenceNode):
                        walk(v)
            elif isinstance(node, SequenceNode):
                for item in node.value:
                    walk(item)

        walk(self.root)
        return steps.most_common(1)[0][0] if steps else 2

    def line_of(self, index: int) -> int:
        return self.text.count("\n", 0, index) + 1

    # -- finding things -----------------------------------------------------------------------

    @staticmethod
    def find_pair(mapping: MappingNode, name: str) -> tuple[ScalarNode, Node] | None:
        for k, v in mapping.value:
            if isinstance(k, ScalarNode) and k.tag != MERGE_TAG and k.value == name:
                return k, v
        return None

    def merged_has(self, mapping: MappingNode, name: str) -> bool:
        """True when ``name`` reaches this mapping only through a ``<<:`` merge."""
        for k, v in mapping.value:
            if isinstance(k, ScalarNode) and k.tag == MERGE_TAG:
                sources = v.value if isinstance(v, SequenceNode) else [v]
                for src in sources:
                    if isinstance(src, MappingNode) and (self.find_pair(src, name) or self.merged_has(src, name)):
                        return True
        return False

    def is_alias_here(self, key: ScalarNode, value: Node) -> bool:
        """An alias occurrence (``key: *a``): the node's own text starts before this key."""
        return self.shared(value) and value.start_mark.index < key.end_mark.index

    def colon_after(self, key: ScalarNode) -> int:
        i = key.end_mark.index
        t = self.text
        while i < len(t) and t[i] in " \t\r\n":
            i += 1
        if i >= len(t) or t[i] != ":":
            raise FixError(
                f"cannot find the ':' after key {key.value!r} on line {key.start_mark.line + 1}",
                hint="fmllm edits plain 'key: value' entries; edit this one by hand",
            )
        return i

    def _skip_props(self, i: int, end: int) -> tuple[int, str]:
        """Skip an anchor and/or tag at i; return the new index and the anchor text to keep."""
        t = self.text
        keep = ""
        while i < end and t[i] in "&!":
            j = i
            while j < end and t[j] not in " \t\r\n":
                j += 1
            if t[i] == "&":
                keep = t[i:j] + " "
            i = j
            while i < end and t[i] in " \t\r\n":
                i += 1
        return i, keep

    def _alias_token(self, start: int, anchor: str) -> tuple[int, int]:
        m = re.compile(r"\*" + re.escape(anchor) + r"(?=[\s,\]}]|$)").search(self.text, start)
        if not m:
            raise FixError(f"cannot find the alias *{anchor} in the text")
        return m.start(), m.end()

    def _trim_end(self, start: int, end: int) -> int:
        while end > start and self.text[end - 1] in " \t\r\n":
            end -= 1
        return end

    def locate(self, key: ScalarNode, value: Node) -> Located:
        """The text region holding ``value`` as the value of ``key``."""
        colon = self.colon_after(key)
        if self.is_alias_here(key, value):
            s, e = self._alias_token(colon + 1, value.anchor)
            return Located(s, e, "", "alias")
        s, e = value.start_mark.index, value.end_mark.index
        if isinstance(value, ScalarNode):
            if s == e or s < colon:
                return Located(colon + 1, colon + 1, "", "empty")
            body, keep = self._skip_props(s, e)
            if body >= e or not self.text[body:e].strip():
                # `key: &a` with no value: only the anchor is there
                return Located(s, self._trim_end(s, e), keep.rstrip() + " " if keep else "", "empty")
            if value.style in ("|", ">"):
                e = self._trim_end(body, e)
            return Located(s, e, keep, "scalar")
        body, keep = self._skip_props(s, e)
        if getattr(value, "flow_style", False):
            return Located(s, e, keep, "flow")
        return Located(body, e, keep, "block")

    def item_ends(self, seq: SequenceNode) -> list[int]:
        """End offset of each item of a sequence (for block sequences: their last character)."""
        ends: list[int] = []
        prev = seq.start_mark.index
        high = prev
        for item in seq.value:
            if self.shared(item) and (item.start_mark.index < seq.start_mark.index or item.start_mark.index < high):
                s, e = self._alias_token(prev, item.anchor)
            elif isinstance(item, ScalarNode) and item.start_mark.index == item.end_mark.index:
                dash = self.text.find("-", prev)
                e = dash + 1 if dash >= 0 else prev
            else:
                e = self.node_end(item)
            ends.append(e)
            prev = e
            high = max(high, e)
        return ends

    def node_end(self, node: Node) -> int:
        """Offset just after the last character that belongs to ``node`` (not a comment)."""
        s, e = node.start_mark.index, node.end_mark.index
        if isinstance(node, ScalarNode):
            return self._trim_end(s, e) if node.style in ("|", ">") or s == e else e
        if getattr(node, "flow_style", False):
            return e
        if isinstance(node, MappingNode):
            k, v = node.value[-1]
            return self.entry_end(k, v)
        if isinstance(node, SequenceNode):
            ends = self.item_ends(node)
            return ends[-1] if ends else s
        return e

    def entry_end(self, key: ScalarNode, value: Node) -> int:
        loc = self.locate(key, value)
        if loc.kind in ("alias", "empty", "scalar", "flow"):
            return loc.end
        return self.node_end(value)

    def line_end(self, index: int) -> tuple[int, str]:
        """Offset after the line break of the line holding ``index``, and that line break."""
        j = self.text.find("\n", index)
        if j < 0:
            return len(self.text), ""
        return j + 1, "\r\n" if j > 0 and self.text[j - 1] == "\r" else "\n"

    def line_start(self, index: int) -> int:
        return self.text.rfind("\n", 0, index) + 1

    def key_column(self, mapping: MappingNode) -> int:
        return mapping.value[0][0].start_mark.column if mapping.value else 0


# --------------------------------------------------------------------------------------------
# Rendering values
# --------------------------------------------------------------------------------------------


def _float_text(x: float, exp_style: bool) -> str:
    if x != x:
        return ".nan"
    if x in (float("inf"), float("-inf")):
        return ".inf" if x > 0 else "-.inf"
    if exp_style or (x != 0 and (abs(x) < 1e-4 or abs(x) >= 1e16)):
        for p in range(0, 18):
            s = f"{x:.{p}e}"
            if float(s) == x:
                break
        mant, ex = s.split("e")
        if "." not in mant:
            mant += ".0"
        n = int(ex)
        # A dot in the mantissa and a signed exponent: read as a float by YAML 1.1 and 1.2.
        return f"{mant}e{'-' if n < 0 else '+'}{abs(n)}"
    r = repr(float(x))
    return r if "." in r else r + ".0"


def _quoted_double(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def plain_ok(s: str) -> bool:
    """Can ``s`` be written without quotes and still read back as the same text everywhere?"""
    return bool(_PLAIN_SAFE.match(s)) and not _YAML11_SPECIAL.match(s) and not _NUMBERISH.match(s)


def render_scalar(value: Any, old_style: str | None = None, old_text: str = "") -> str:
    """YAML text for a scalar, following the old value's style where it is still correct."""
    if value is None:
        return "~" if old_text.strip() == "~" else "null"
    if isinstance(value, bool):
        word = "true" if value else "false"
        old = old_text.strip()
        if old[:1].isupper():
            return word.upper() if old.isupper() and len(old) > 1 else word.capitalize()
        return word
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value, "e" in old_text.lower() and old_style is None and not old_text.strip().startswith("."))
    if isinstance(value, str):
        printable = all(c >= " " or c == "\t" for c in value) and "\x7f" not in value
        if old_style == '"' or not printable:
            return _quoted_double(value)
        if old_style == "'":
            return "'" + value.replace("'", "''") + "'"
        if plain_ok(value):
            return value
        return "'" + value.replace("'", "''") + "'"
    raise FixError(f"fmllm cannot write a value of type {type(value).__name__} into YAML: {value!r}")


def render_key(key: str) -> str:
    return key if plain_ok(key) else _quoted_double(key)


def render_inline(value: Any, old_style: str | None = None, old_text: str = "") -> str:
    """Single-line YAML for any value: scalars, and flow style for mappings and lists."""
    if isinstance(value, dict):
        inner = ", ".join(f"{render_key(str(k))}: {render_inline(v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render_inline(v) for v in value) + "]"
    return render_scalar(value, old_style, old_text)


def _comment_text(comment: str | None) -> str:
    if not comment:
        return ""
    one = " ".join(comment.split())  # one line: no line breaks or tabs in what fmllm adds
    if len(one) > 100:
        one = one[:97].rstrip() + "..."
    return "  # " + one


def _block_lines(key: str, value: Any, indent: int, step: int, comment: str | None) -> list[str]:
    """Lines (without line breaks) writing ``key: value`` in block style at ``indent``."""
    pad = " " * indent
    if isinstance(value, dict) and value and (key in SECTION_NAMES or len(render_inline(value)) > 60 or any(isinstance(v, dict) for v in value.values())):
        lines = [f"{pad}{render_key(key)}:{_comment_text(comment)}"]
        for k, v in value.items():
            lines.extend(_block_lines(str(k), v, indent + step, step, None))
        return lines
    return [f"{pad}{render_key(key)}: {render_inline(value)}{_comment_text(comment)}"]


def _nest(parts: list[str], value: Any) -> Any:
    for part in reversed(parts):
        value = {part: value}
    return value


def _path_lines(parts: list[str], value: Any, indent: int, step: int, comment: str | None) -> list[str]:
    """Block lines for a missing path: section headers, then the leaf with its comment."""
    lines: list[str] = []
    for depth, part in enumerate(parts[:-1]):
        lines.append(f"{' ' * (indent + depth * step)}{render_key(part)}:")
    lines.extend(_block_lines(parts[-1], value, indent + (len(parts) - 1) * step, step, comment))
    return lines


# --------------------------------------------------------------------------------------------
# Edits
# --------------------------------------------------------------------------------------------
#
# Every edit is a splice (start, end, new text) of the text one YamlText was parsed from, so
# several independent changes can be located with one parse and applied together, last first.


@dataclass(frozen=True)
class Edit:
    start: int
    end: int
    new: str
    scope: str  # the dotted path this edit rewrites (a key, or the first key it inserts)
    container: str | None = None  # for inserted lines: the section they go into


def _value_edit(text: str, start: int, end: int, new: str, scope: str) -> Edit:
    """Replace a one-line value and keep the end-of-line comment after it in its column."""
    j = end
    while j < len(text) and text[j] == " ":
        j += 1
    if j > end and j < len(text) and text[j] == "#" and "\n" not in text[start:end] and "\n" not in new:
        gap = max(1, (j - start) - len(new))
        return Edit(start, j, new + " " * gap, scope)
    return Edit(start, end, new, scope)


def _lines_edit(yt: YamlText, pos: int, prev_term: str, lines: list[str], scope: str, container: str, *, blank_before: bool = False) -> Edit:
    """Insert whole lines at ``pos`` (a line start, or the end of a file without a final break)."""
    term = prev_term or yt.term
    text = yt.text
    block = term.join(lines)
    if pos == len(text) and text and not text.endswith("\n"):
        # Keep the file's missing final line break: the break goes before the new lines.
        return Edit(pos, pos, term + (term if blank_before else "") + block, scope, container)
    return Edit(pos, pos, (term if blank_before else "") + block + term, scope, container)


def _insert_into(yt: YamlText, mapping: MappingNode, path: list[str], parts: list[str], value: Any, comment: str | None) -> Edit:
    """Insert the missing ``parts`` path (with ``value`` at its end) into ``mapping`` at ``path``."""
    text = yt.text
    scope = ".".join([*path, parts[0]])
    container = ".".join(path)
    if mapping.flow_style:
        entry = f"{render_key(parts[0])}: {render_inline(_nest(parts[1:], value))}"
        if not mapping.value:
            s, _keep = yt._skip_props(mapping.start_mark.index, mapping.end_mark.index)
            return Edit(s + 1, s + 1, entry, scope, container)
        k, v = mapping.value[-1]
        e = yt.entry_end(k, v)
        return Edit(e, e, ", " + entry, scope, container)
    is_section = len(parts) > 1 or isinstance(value, dict)
    if mapping is yt.root and not is_section:
        # A top-level setting (flat layout) goes after the last top-level setting, not a section.
        settings = [(k, v) for k, v in mapping.value if isinstance(v, ScalarNode) and k.tag != MERGE_TAG]
        if settings:
            pos, term = yt.line_end(yt.entry_end(*settings[-1]))
            return _lines_edit(yt, pos, term, _path_lines(parts, value, yt.key_column(mapping), yt.step, comment), scope, container)
    if mapping.value and _ends_in_open_block_scalar(yt, mapping):
        # The file ends inside a block scalar with no final line break: a line after it would
        # add a break to that scalar's value. The new key goes before the last entry instead.
        k, _v = mapping.value[-1]
        pos = yt.line_start(k.start_mark.index)
        lines = _path_lines(parts, value, yt.key_column(mapping), yt.step, comment)
        return _lines_edit(yt, pos, yt.term, lines, scope, container)
    if mapping is yt.root:
        # New top-level sections go at the end of the file (before a `...` end marker).
        pos = len(text)
        m = re.compile(r"^\.\.\.[ \t]*(#.*)?$", re.M).search(text, yt.node_end(mapping) if mapping.value else 0)
        if m:
            pos = m.start()
        lines = _path_lines(parts, value, 0, yt.step, comment)
        if is_section:
            lines.insert(0, f"# {parts[0]}: section added by fmllm-check --fix")
        prev_line = text[:pos].rstrip("\r\n").rsplit("\n", 1)[-1]
        return _lines_edit(yt, pos, yt.term, lines, scope, container, blank_before=is_section and bool(prev_line.strip()))
    col = yt.key_column(mapping)
    k, v = mapping.value[-1]
    pos, term = yt.line_end(yt.entry_end(k, v))
    # Comment lines right after the last entry, indented into this section, stay above the new key.
    while pos < len(text):
        nxt, nterm = yt.line_end(pos)
        line = text[pos:nxt].rstrip("\r\n")
        body = line.lstrip(" \t")
        if body.startswith("#") and len(line) - len(body) >= col:
            pos, term = nxt, nterm or term
        else:
            break
    return _lines_edit(yt, pos, term, _path_lines(parts, value, col, yt.step, comment), scope, container)


def _ends_in_open_block_scalar(yt: YamlText, node: Node) -> bool:
    """Is the last thing in ``node`` a | or > scalar that runs to the end of a file that has no
    final line break? (Appending a line there would change that scalar's value.)"""
    if yt.text.endswith("\n"):
        return False
    while True:
        if isinstance(node, MappingNode) and node.value and not node.flow_style:
            node = node.value[-1][1]
        elif isinstance(node, SequenceNode) and node.value and not node.flow_style:
            node = node.value[-1]
        else:
            break
    return isinstance(node, ScalarNode) and node.style in ("|", ">") and not yt.text[node.end_mark.index :].strip()


def _fill_null(yt: YamlText, key: ScalarNode, null: Node, container: MappingNode, scope: str, parts: list[str], value: Any, comment: str | None) -> Edit:
    """``key:`` holds nothing (or null): give it a mapping holding the ``parts`` path."""
    loc = yt.locate(key, null)
    text = yt.text
    if container.flow_style:
        new = render_inline(_nest(parts, value))
        if loc.kind == "empty":
            return Edit(loc.end, loc.end, " " + loc.prefix + new, scope, scope)
        return Edit(loc.start, loc.end, loc.prefix + new, scope, scope)
    # Block: drop an explicit `null`/`~` (keeping an anchor), then add lines under the key's line.
    colon = yt.colon_after(key)
    pos, term = yt.line_end(colon)
    lines = _path_lines(parts, value, key.start_mark.column + yt.step, yt.step, comment)
    block = (term or yt.term).join(lines)
    if loc.kind == "empty":
        if not term:  # the key is on the last line and the file has no final line break
            return Edit(pos, pos, yt.term + block, scope, scope)
        return Edit(pos, pos, block + term, scope, scope)
    anchor = loc.prefix.rstrip()
    rest = text[loc.end : pos]  # the rest of the key's line: spaces, a comment, the line break
    if not term:
        return Edit(colon + 1, pos, (" " + anchor if anchor else "") + rest + yt.term + block, scope, scope)
    return Edit(colon + 1, pos, (" " + anchor if anchor else "") + rest + block + term, scope, scope)


def _scalar_value(fragment: str) -> Any:
    return make_yaml().load(io.StringIO(fragment))


def _edit_block_list(yt: YamlText, seq: SequenceNode, to: list[Any], first_line: int, col: int, term: str) -> str | None:
    """Minimal edit of a block list of scalars: kept items keep their lines (and comments).

    Returns the new text of the list's lines (each ending in ``term``), or None when the list
    holds anything but plain scalar items (the caller rewrites it whole then).
    """
    text = yt.text
    items = seq.value
    if any(yt.shared(i) or not isinstance(i, ScalarNode) or i.style in ("|", ">") for i in items):
        return None
    if any(isinstance(v, (dict, list, tuple)) for v in to):
        return None
    ends = yt.item_ends(seq)
    try:
        old = [_scalar_value(text[i.start_mark.index : e]) for i, e in zip(items, ends, strict=True)]
    except YAMLError:
        return None
    starts = [first_line] + [yt.line_end(e)[0] for e in ends[:-1]]
    stops = [yt.line_end(e)[0] for e in ends]

    def chunk(i: int) -> str:
        c = text[starts[i] : stops[i]]
        return c if c.endswith("\n") else c + term

    def key(v: Any) -> tuple[str, str]:
        return type(v).__name__, repr(v)

    out: list[str] = []
    sm = difflib.SequenceMatcher(a=[key(v) for v in old], b=[key(v) for v in to], autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            out.extend(chunk(i) for i in range(i1, i2))
        elif tag == "replace" and i2 - i1 == j2 - j1:
            for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                c = chunk(i)
                s0 = items[i].start_mark.index - starts[i]
                e0 = ends[i] - starts[i]
                style = items[i].style if items[i].style in ('"', "'") else None
                ed = _value_edit(c, s0, e0, render_inline(to[j], style, c[s0:e0]), "")
                out.append(c[: ed.start] + ed.new + c[ed.end :])
        elif tag in ("replace", "insert"):
            out.extend(f"{' ' * col}- {render_inline(v)}{term}" for v in to[j1:j2])
        # "delete": the old item's lines are dropped
    return "".join(out)


def _replace(yt: YamlText, key: ScalarNode, value: Node, to: Any, scope: str) -> Edit:
    """Replace the value of an existing ``key`` with ``to``, keeping the old scalar style."""
    text = yt.text
    loc = yt.locate(key, value)
    if loc.kind == "empty":
        return _value_edit(text, loc.start, loc.end, (" " if not loc.prefix else "") + loc.prefix + render_inline(to), scope)
    if loc.kind == "alias":
        return _value_edit(text, loc.start, loc.end, render_inline(to), scope)
    if loc.kind == "scalar":
        assert isinstance(value, ScalarNode)
        body, _keep = yt._skip_props(loc.start, loc.end)
        style = value.style if value.style in ('"', "'") else None
        return _value_edit(text, loc.start, loc.end, loc.prefix + render_inline(to, style, text[body : loc.end]), scope)
    if loc.kind == "flow":
        return _value_edit(text, loc.start, loc.end, loc.prefix + render_inline(to), scope)
    # A block collection: its lines run from its first child's line to its last leaf's line.
    end = yt.node_end(value)
    first = value.value[0][0] if isinstance(value, MappingNode) else value.value[0]
    first_line = yt.line_start(first.start_mark.index)
    stop, term = yt.line_end(end)
    if isinstance(value, SequenceNode) and isinstance(to, (list, tuple)) and to:
        dash = text.rfind("-", first_line, first.start_mark.index + 1)
        col = dash - first_line if dash >= 0 else yt.step
        kept = _edit_block_list(yt, value, list(to), first_line, col, term or yt.term)
        if kept is None:
            kept = "".join(f"{' ' * col}- {render_inline(item)}{term or yt.term}" for item in to)
        return Edit(first_line, stop, kept if term else kept.rstrip("\r\n"), scope)
    # Anything else: drop the block's lines and write one inline value after `key:` (and an
    # anchor; a tag goes), keeping the rest of the key's line and any lines before the block.
    props = value.start_mark.index
    if props < first_line:
        _props_end, keep = yt._skip_props(props, first_line)
        at = props
        j = props
        while j < len(text) and text[j] not in "\r\n#":
            j += 1
        while j > props and text[j - 1] in " \t":
            j -= 1
        new = keep + render_inline(to)
    else:
        at = j = yt.colon_after(key) + 1
        new = " " + render_inline(to)
    ed = _value_edit(text[:first_line], at, j, new, scope)
    between = text[ed.end : first_line]
    if not term and between.endswith("\n"):
        between = between[: -2 if between.endswith("\r\n") else -1]  # keep no final line break
    return Edit(ed.start, stop, ed.new + between, scope)


def plan_change(yt: YamlText, dotted: str, to: Any, comment: str | None = None) -> list[Edit]:
    """The edits that set the value at dotted path ``dotted`` to ``to`` in ``yt``'s text.

    A missing key is inserted (with missing sections) at the end of the deepest existing
    section, with ``comment`` as its end-of-line comment. A mapping ``to`` given for an existing
    mapping sets those keys one by one and leaves the others. Raises FixError when the edit
    would reach through an alias or a merge and so change other keys too.
    """
    parts = dotted.split(".")
    if not all(parts):
        raise FixError(f"bad key {dotted!r}: empty part in the dotted path")
    node: Node = yt.root
    for i in range(len(parts)):
        step: Node | list[Edit]
        if isinstance(node, MappingNode):
            step = _mapping_step(yt, node, parts, i, to, comment)
        elif isinstance(node, SequenceNode):
            step = _sequence_step(yt, node, parts, i, to)
        else:
            prev = ".".join(parts[:i]) or "(top level)"
            raise FixError(
                f"{prev} holds a single value, not a section, so {dotted} cannot be set",
                hint=f"make {prev} a section (indented key: value lines) or fix the key name",
            )
        if isinstance(step, list):
            return step
        node = step
    raise FixError(f"bad key {dotted!r}")  # unreachable: the loop returns at the last part


def _mapping_step(yt: YamlText, node: MappingNode, parts: list[str], i: int, to: Any,
                  comment: str | None) -> Node | list[Edit]:
    """plan_change's step into mapping ``node`` by ``parts[i]``: the edits when the path ends or
    stops here, else the node to go on into."""
    part, last, here = parts[i], i == len(parts) - 1, ".".join(parts[: i + 1])
    pair = yt.find_pair(node, part)
    if pair is None:
        if yt.merged_has(node, part) and not last:
            raise FixError(
                f"{here} comes from a '<<:' merge of another section; changing a key inside it "
                "would change every section that merges it",
                hint=f"copy {here} into this section by hand, then run the fix again",
            )
        # Missing (or only merged in): a local key; YAML lets local keys override merges.
        return [_insert_into(yt, node, parts[:i], parts[i:], to, comment)]
    k, v = pair
    if yt.is_alias_here(k, v):
        if last:
            return [_replace(yt, k, v, to, here)]
        raise FixError(
            f"{here} is an alias (*{v.anchor}) of a section defined on line {v.start_mark.line + 1}; "
            "changing a key inside it would change that section too",
            hint=f"replace *{v.anchor} with its own copy of the section by hand, then run the fix again",
        )
    if last:
        if isinstance(to, dict) and isinstance(v, MappingNode) and to and not yt.shared(v):
            return [e for kk, vv in to.items() for e in plan_change(yt, f"{here}.{kk}", vv, comment)]
        if yt.shared(v):
            raise FixError(
                f"{here} is anchored (&{v.anchor}, line {v.start_mark.line + 1}) and reused elsewhere with "
                f"*{v.anchor}; changing it would change those keys too",
                hint=f"give {here} its own value by hand (remove &{v.anchor} or the aliases), then run the fix again",
            )
        return [_replace(yt, k, v, to, here)]
    if _is_null_node(v):
        return [_fill_null(yt, k, v, node, here, parts[i + 1 :], to, comment)]
    if yt.shared(v):
        raise FixError(
            f"{here} is anchored (&{v.anchor}) and reused elsewhere; changing a key inside it would change "
            "every place that uses it",
            hint="give this section its own copy by hand, then run the fix again",
        )
    return v


def _sequence_step(yt: YamlText, node: SequenceNode, parts: list[str], i: int, to: Any) -> Node | list[Edit]:
    """plan_change's step into list ``node`` by index ``parts[i]``: the edit of a plain item at the
    path's end, else the item to go on into."""
    part, here = parts[i], ".".join(parts[: i + 1])
    if not part.isdigit() or int(part) >= len(node.value):
        raise FixError(f"{here}: no item {part} in the list at line {node.start_mark.line + 1}")
    item = node.value[int(part)]
    if i < len(parts) - 1:
        if yt.shared(item):
            raise FixError(f"{here} is an alias or anchored item; edit it by hand")
        return item
    if yt.shared(item) or not (isinstance(item, ScalarNode) or item.flow_style):
        raise FixError(f"{here}: fmllm only replaces plain list items; edit this one by hand")
    s, e = item.start_mark.index, yt.item_ends(node)[int(part)]
    body, keep = yt._skip_props(s, e)
    style = item.style if isinstance(item, ScalarNode) and item.style in ('"', "'") else None
    return [_value_edit(yt.text, s, e, keep + render_inline(to, style, yt.text[body:e]), here)]


def _scopes_overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def conflicts(batch: list[Edit], new: list[Edit]) -> bool:
    """Would ``new`` interfere with edits already planned on the same parse?"""
    for n in new:
        for b in batch:
            if _scopes_overlap(n.scope, b.scope):
                return True
            if n.start == n.end and b.start == b.end:
                # Insertions at one point land in change order, which is right only when they
                # go into the same section (not e.g. a key of `training` and a new sibling).
                if n.start == b.start and n.container != b.container:
                    return True
                continue
            if n.start < b.end and b.start < n.end:
                return True
            if (n.start == n.end and b.start <= n.start <= b.end) or (b.start == b.end and n.start <= b.start <= n.end):
                return True
    return False


def apply_edits(text: str, edits: list[Edit]) -> str:
    """Apply edits planned on one parse of ``text``; at one point, earlier edits come first."""
    order = sorted(range(len(edits)), key=lambda i: (edits[i].start, i), reverse=True)
    for i in order:  # last in the text first, and at one point the later edit first
        ed = edits[i]
        text = text[: ed.start] + ed.new + text[ed.end :]
    return text


def apply_change(text: str, dotted: str, to: Any, comment: str | None = None) -> str:
    """Return ``text`` with the value at ``dotted`` set to ``to`` (see :func:`plan_change`)."""
    return apply_edits(text, plan_change(YamlText(text), dotted, to, comment))
