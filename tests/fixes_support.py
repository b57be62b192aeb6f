"""What an edit of a config may change, for the fixes' golden and property tests: every other line
of the old text must appear, byte for byte and in order, in the new one."""

from __future__ import annotations

from fmllm_tui.fixes.yamltext import YamlText
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode


def changed_lines(text: str, keys: list[str]) -> set[int]:
    """0-based lines of ``text`` an edit of ``keys`` may rewrite: the keys' own value lines
    (a whole flow collection when the key sits inside one; the key line of a null section)."""
    yt = YamlText(text)
    out: set[int] = set()

    def lines(a: int, b: int) -> set[int]:
        return set(range(yt.line_of(a) - 1, yt.line_of(b)))

    for dotted in keys:
        node = yt.root
        for i, part in enumerate(dotted.split(".")):
            if isinstance(node, MappingNode) and node.flow_style:
                out |= lines(node.start_mark.index, node.end_mark.index)
                break
            if isinstance(node, SequenceNode):
                out |= lines(node.start_mark.index, yt.node_end(node))
                break
            if not isinstance(node, MappingNode):
                break
            pair = yt.find_pair(node, part)
            if pair is None:
                break  # inserted: no old line changes
            k, v = pair
            last = i == len(dotted.split(".")) - 1
            if last or yt.is_alias_here(k, v) or (isinstance(v, ScalarNode) and v.tag.endswith(":null")):
                out |= lines(k.start_mark.index, max(yt.entry_end(k, v), k.end_mark.index))
                break
            node = v
    return out


def assert_only_changed_lines(old: str, new: str, keys: list[str]) -> None:
    """Every old line outside the changed values appears, byte for byte and in order, in new."""
    allowed = changed_lines(old, keys)
    a = old.splitlines(keepends=True)
    if a and not a[-1].endswith("\n"):
        allowed.add(len(a) - 1)  # appending lines gives the last line its line break
    b = iter(new.splitlines(keepends=True))
    for i, line in enumerate(a):
        if i in allowed:
            continue
        assert any(line == other for other in b), f"line {i + 1} was changed or lost: {line!r}"
