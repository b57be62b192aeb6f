"""Turning a list of changes into new config text: edit, verify, validate, diff.

Every rendering is checked twice before anyone sees it:

* semantically: the new text parses to exactly the old data with the intended changes applied
  (type-strict: ``true`` is not ``1``), so an edit that reached an alias, a merge or a
  neighbouring key is caught here and refused;
* against the schema: the new text loads through ``fmllm_tui.config.load_config``.
"""

from __future__ import annotations

import copy
import difflib
import io
from typing import Any

from fmllm_tui.config import (
    ConfigError,
    LoadedConfig,
    load_config_text,
    make_yaml,
    to_plain,
)
from fmllm_tui.findings import Change
from fmllm_tui.redact import mask_text, secret_values

from .errors import FixError
from .schema import canonical_of
from .yamltext import Edit, YamlText, apply_edits, conflicts, plan_change

_MISSING = object()


def same(a: Any, b: Any) -> bool:
    """Type-strict equality: ``True`` is not ``1``; ``1`` equals ``1.0``; dicts and lists deep."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def get_path(data: Any, dotted: str) -> Any:
    """Value at a dotted path in plain data, or the module's _MISSING marker."""
    node = data
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def is_missing(value: Any) -> bool:
    return value is _MISSING


def already(data: Any, dotted: str, to: Any) -> bool:
    """Does the data already hold ``to`` at ``dotted``? (a mapping ``to`` sets only its keys)"""
    current = get_path(data, dotted)
    if current is _MISSING:
        return False
    if isinstance(to, dict) and isinstance(current, dict) and to:
        return all(already(data, f"{dotted}.{k}", v) for k, v in to.items())
    return same(current, to)


def set_path(data: dict[str, Any], dotted: str, to: Any) -> None:
    """The meaning of one change on plain data: what the edited text must parse to."""
    parts = dotted.split(".")
    node: Any = data
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = copy.deepcopy(to)
    elif isinstance(to, dict) and isinstance(node.get(last), dict) and to:
        for k, v in to.items():
            set_path(node, f"{last}.{k}", v)
    else:
        node[last] = copy.deepcopy(to)


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(key)
            else:
                out.extend(_differences(a[k], b[k], key))
        return out
    return [] if same(a, b) else [prefix or "(top level)"]


def parse_plain(text: str) -> Any:
    return to_plain(make_yaml().load(io.StringIO(text)))


def load_text(loaded: LoadedConfig, text: str) -> LoadedConfig:
    """Load and validate ``text`` as if it were ``loaded``'s file, without touching that file."""
    try:
        return load_config_text(loaded.path, text, _encode(loaded, text))
    except ConfigError as e:
        raise FixError.from_config_error(
            e,
            lead="the changed config would not be valid:",
            shown_path=str(loaded.path),
            hint="this is a bug in the fix or a conflict between fixes; apply them one at a time",
        ) from None


def _encode(loaded: LoadedConfig, text: str) -> bytes:
    """Text back to bytes the way the file had them (a UTF-8 byte order mark is kept)."""
    bom = b"\xef\xbb\xbf" if loaded.raw.startswith(b"\xef\xbb\xbf") else b""
    return bom + text.encode("utf-8")


def encode(loaded: LoadedConfig, text: str) -> bytes:
    """Public form of :func:`_encode`: the bytes a write of ``text`` puts in the file."""
    return _encode(loaded, text)


def edit_text(text: str, changes: list[Change], plain: Any = None) -> tuple[str, list[Change], Any]:
    """Apply changes in order to ``text``; skip those already in effect.

    Returns (new text, the changes applied, the data the new text must parse to). ``plain`` is
    the parsed ``text`` when the caller has it. Changes that do not touch each other are
    located on one parse and applied together (parsing is the slow part); a change that
    touches an earlier one waits for a fresh parse, so it sees that change's result.
    """
    expected = copy.deepcopy(plain) if plain is not None else parse_plain(text)
    applied: list[Change] = []
    pending = list(changes)
    while pending:
        yt = YamlText(text)
        batch: list[Edit] = []
        while pending:
            ch = pending[0]
            if not isinstance(ch.key, str) or not ch.key:
                raise FixError(f"a change has no key: {ch!r}")
            if already(expected, ch.key, ch.to):
                pending.pop(0)  # idempotent: re-applying a change edits nothing
                continue
            edits = plan_change(yt, ch.key, ch.to, ch.comment)
            if batch and conflicts(batch, edits):
                break
            batch.extend(edits)
            set_path(expected, ch.key, ch.to)
            applied.append(ch)
            pending.pop(0)
        text = apply_edits(text, batch)
    return text, applied, expected


def render_loaded(loaded: LoadedConfig, changes: list[Change]) -> tuple[str, list[Change], LoadedConfig]:
    """New text, the changes that were not already in effect, and the new text loaded."""
    for ch in changes:
        canonical_of(loaded, ch.key)  # only settings fmllm reads, in this file's layout
    new_text, applied, expected = edit_text(loaded.text, changes, to_plain(loaded.doc))
    if not applied:
        return loaded.text, [], loaded
    new_loaded = load_text(loaded, new_text)  # parses and validates against the schema
    got = to_plain(new_loaded.doc)
    if not same(got, expected):
        keys = ", ".join(_differences(expected, got)[:6])
        raise FixError(
            f"the edit would change more than intended (at: {keys}); nothing was applied",
            path=loaded.path,
            hint="please report this with your config; apply the change by hand meanwhile",
        )
    return new_text, applied, new_loaded


def render(loaded: LoadedConfig, changes: list[Change]) -> tuple[str, list[Change]]:
    """New text and the changes that were not already in effect; see :func:`render_changes`."""
    new_text, applied, _ = render_loaded(loaded, changes)
    return new_text, applied


def render_changes(loaded: LoadedConfig, changes: list[Change]) -> str:
    """The full new text of the config after ``changes`` (nothing is written).

    Raises FixError when an edit would change anything but the intended values, or when the
    result would not be a valid config.
    """
    return render(loaded, changes)[0]


def diff(loaded: LoadedConfig, new_text: str) -> str:
    """Unified diff of the config before and after, with secrets masked. Empty when equal."""
    if new_text == loaded.text:
        return ""
    name = loaded.path.name or "config.yaml"
    a = loaded.text.splitlines(keepends=True)
    b = new_text.splitlines(keepends=True)
    secrets = secret_values(to_plain(loaded.doc))
    try:
        secrets += secret_values(parse_plain(new_text))
    except Exception:  # a diff is still worth showing if the new text does not parse
        pass
    out: list[str] = []
    for line in difflib.unified_diff(a, b, fromfile=f"a/{name}", tofile=f"b/{name}"):
        if line.endswith("\r\n"):
            line = line[:-2] + "\n"
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        out.append(line)
    return mask_text("".join(out), secrets)
