"""Change a few values of a YAML file and leave every other byte as it was.

servd.yaml is the user's file: its comments, key order, quoting, indentation, blank lines and
line endings are theirs. ruamel.yaml (a round-trip parser) says where each key and value
stands; each change is spliced into the text at that spot, so a line that holds no changed value
stays byte for byte, and a changed value keeps its line's trailing comment in its column. A key
that is absent is added on a line of its own after its predecessor in the schema's key order
(inside `{...}` when its mapping is written that way); a shorter list drops its last items.

The result is parsed again (servd's own YAML reader) and must equal the original data with the
changes made. A layout the splicing doesn't know falls back to ruamel's round-trip dump, which
keeps comments and order but may re-indent; if that doesn't give the intended data either (an
alias shared with other keys, say), `EditError` says so and nothing is written. Pure functions
of text, plus `save_atomically` for the one write.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.util import load_yaml_guess_indent

from servd.config.schema import SpecError, deref, load_schema, parse_yaml

KeyPath = tuple[str, ...]
PLAIN = re.compile(r"[A-Za-z0-9_.:+-]+")  # device names and numbers: written without quotes
SCALAR_END = re.compile(r"[^\s,}\]#]*(?:[ \t]+[^\s,}\]#]+)*")  # a plain scalar, up to a comment or flow end


class EditError(ValueError):
    """The file can't be given the values asked for without changing something else."""


class _Unspliceable(Exception):
    """This layout is beyond splicing; the round-trip dump gets a try."""


def edit(text: str, changes: Mapping[KeyPath, Any]) -> str:
    """`text` with each key path set to its value (the parent mappings must exist)."""
    expected = _expected(text, changes)
    try:
        spliced = text
        for path, value in changes.items():
            spliced = _splice(spliced, path, value)
        if _data(spliced) == expected:
            return spliced
    except (_Unspliceable, YAMLError, SpecError):
        pass
    dumped = _round_trip(text, changes)
    if _data(dumped) != expected:
        keys = ", ".join(".".join(p) for p in changes)
        raise EditError(f"cannot set {keys} without changing other values (is one of them a YAML alias?)")
    return dumped


def scalar_text(value: Any) -> str:
    """A value as it is written in YAML: numbers and device names bare, other strings quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)  # 2.5; but 1e-05 would read back as a string in YAML 1.1
        return text if "e" not in text else f"{value:.12f}".rstrip("0")
    if isinstance(value, str) and PLAIN.fullmatch(value) and not _resolves_otherwise(value):
        return value
    return json.dumps(value)


def save_atomically(path: Path, text: str, check: Callable[[Path], None] | None = None) -> None:
    """Write `text` to a temporary file beside `path`, `check` it, then rename it over `path`.

    A reader (the daemon's watcher) sees the old file or the new one, never half of one; a
    failing `check` raises and leaves `path` untouched. The file keeps its permission bits.
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- splicing ------------------------------------------------------------------------------------


def _splice(text: str, path: KeyPath, value: Any) -> str:
    doc = _ruamel().load(text)
    parent = _node(doc, path[:-1])
    key = path[-1]
    if key not in parent:
        if len(path) < 2:
            raise _Unspliceable
        return _insert(text, parent, _node(doc, path[:-2]).lc.value(path[-2]), path, value)
    current = parent[key]
    if isinstance(current, CommentedSeq) and isinstance(value, list):
        return _set_list(text, parent, key, current, value)
    if isinstance(current, (CommentedMap, CommentedSeq)) or isinstance(value, (dict, list)):
        raise _Unspliceable
    line, col = parent.lc.value(key)
    return _replace_scalar(text, line, col, scalar_text(value))


def _replace_scalar(text: str, line: int, col: int, new: str) -> str:
    lines = text.splitlines(keepends=True)
    row = lines[line]
    match = SCALAR_END.match(row, col)
    if match is None or not match.group() or row[col] in "\"'[{|>&*!":
        raise _Unspliceable
    lines[line] = _realigned(row, row[:col] + new + row[match.end() :])
    return "".join(lines)


def _realigned(old: str, new: str) -> str:
    """`new`, an edit of the line `old`, with its trailing comment back in old's column (one space
    before it at least), so aligned comments stay aligned."""
    was, now = _comment_at(old), _comment_at(new)
    if was is None or now is None or old[was:] != new[now:]:
        return new
    gap = len(new[:now]) - len(new[:now].rstrip(" \t"))
    start = now - gap
    return new[:start] + " " * max(1, was - start) + new[now:]


def _comment_at(row: str) -> int | None:
    """The column of the line's comment `#` (outside quotes, after whitespace), or None."""
    quote = ""
    for i, char in enumerate(row):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or row[i - 1] in " \t"):
            return i
    return None


def _set_list(text: str, parent: CommentedMap, key: str, current: CommentedSeq, value: list[Any]) -> str:
    if current.fa.flow_style():
        line, col = parent.lc.value(key)
        lines = text.splitlines(keepends=True)
        close = lines[line].find("]", col)
        if close < 0 or "[" in lines[line][col + 1 : close]:
            raise _Unspliceable
        items = ", ".join(scalar_text(v) for v in value)
        lines[line] = _realigned(lines[line], lines[line][:col] + f"[{items}]" + lines[line][close + 1 :])
        return "".join(lines)
    old = list(current)
    rows = [current.lc.item(i)[0] for i in range(len(old))]
    if old[: len(value)] != value or len(set(rows)) != len(rows) or not value:
        raise _Unspliceable  # only a shorter block list of the same first items is spliced
    lines = text.splitlines(keepends=True)
    return "".join(row for i, row in enumerate(lines) if i not in rows[len(value) :])


def _insert(text: str, parent: CommentedMap, at: tuple[int, int], path: KeyPath, value: Any) -> str:
    """Add `path` to the mapping `parent`, whose value starts at `at` (line, column)."""
    if isinstance(value, (dict, list)):
        raise _Unspliceable
    entry = f"{path[-1]}: {scalar_text(value)}"
    lines = text.splitlines(keepends=True)
    if lines[at[0]][at[1] : at[1] + 1] == "{":
        return _insert_in_flow(lines, at, entry)
    if not parent:
        raise _Unspliceable
    preceding = _preceding(parent, path)
    first_line, col = parent.lc.key(next(iter(parent)))
    indent = lines[first_line][:col]
    if indent.strip():
        raise _Unspliceable
    row = _end_of_entry(lines, parent.lc.key(preceding[-1]), col) if preceding else first_line
    newline = _newline(lines[row - 1] if row else lines[0])
    if row == len(lines) and lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += newline
    lines.insert(row, indent + entry + newline)
    return "".join(lines)


def _insert_in_flow(lines: list[str], at: tuple[int, int], entry: str) -> str:
    line, col = at
    row = lines[line]
    close = _matching_brace(row, col)
    inner = row[col + 1 : close]
    if inner.strip():
        stripped = inner.rstrip()
        new_inner = f"{stripped}, {entry}{inner[len(stripped) :]}"
    else:
        new_inner = entry
    lines[line] = _realigned(row, row[: col + 1] + new_inner + row[close:])
    return "".join(lines)


def _matching_brace(row: str, start: int) -> int:
    depth, quote = 0, ""
    for i in range(start, len(row)):
        char = row[i]
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return i
    raise _Unspliceable  # a flow mapping over several lines


def _end_of_entry(lines: list[str], key_at: tuple[int, int], col: int) -> int:
    """The index of the line after the last content line of the entry whose key is at `key_at`:
    its value may go on in deeper-indented lines; comments and blank lines after it stay after."""
    end = key_at[0] + 1
    for i in range(key_at[0] + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            continue
        if len(lines[i]) - len(lines[i].lstrip(" ")) <= col:
            break
        end = i + 1
    return end


def _newline(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n"


# -- the round-trip fallback and the check ------------------------------------------------------


def _round_trip(text: str, changes: Mapping[KeyPath, Any]) -> str:
    _, indent, offset = load_yaml_guess_indent(text)
    yaml = _ruamel()
    yaml.indent(mapping=indent or 2, sequence=(indent or 2) + (offset or 0), offset=offset or 0)
    doc = yaml.load(text)
    for path, value in changes.items():
        parent = _node(doc, path[:-1])
        key = path[-1]
        if isinstance(parent.get(key), CommentedSeq) and isinstance(value, list):
            del parent[key][len(value) :]
            parent[key][:] = value
        elif key in parent:
            parent[key] = value
        else:
            preceding = _preceding(parent, path)
            parent.insert(list(parent).index(preceding[-1]) + 1 if preceding else 0, key, value)
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def _expected(text: str, changes: Mapping[KeyPath, Any]) -> Any:
    data = copy.deepcopy(_data(text))
    for path, value in changes.items():
        parent = data
        for key in path[:-1]:
            if not isinstance(parent, dict) or not isinstance(parent.get(key), dict):
                raise EditError(f"{'.'.join(path[:-1])} is not a mapping in the file; cannot set {'.'.join(path)}")
            parent = parent[key]
        parent[path[-1]] = value
    return data


def _data(text: str) -> Any:
    return parse_yaml(text, "<edited>").data


def _node(doc: Any, path: KeyPath) -> CommentedMap:
    node = doc
    for key in path:
        node = node[key]
    if not isinstance(node, CommentedMap):
        raise _Unspliceable
    return node


def _ruamel() -> YAML:
    yaml = YAML()  # round-trip mode
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # never fold a long line
    return yaml


def _resolves_otherwise(text: str) -> bool:
    """True when YAML would read the bare word as something other than this string (a number, true)."""
    try:
        return not isinstance(parse_yaml(f"v: {text}\n", "<value>").data.get("v"), str)
    except SpecError:
        return True


def _preceding(parent: CommentedMap, path: KeyPath) -> list[str]:
    """The keys present in `parent` that the schema puts before path[-1] (all of them for an undeclared key)."""
    order = _declared_order(path[:-1])
    key = path[-1]
    return [k for k in order[: order.index(key)] if k in parent] if key in order else list(parent)


def _declared_order(path: KeyPath) -> list[str]:
    """The keys of the mapping at `path` in the schema's order (where a missing key is inserted)."""
    root = load_schema()
    node: dict[str, Any] = root
    for key in path:
        node = deref(node, root)
        properties = node.get("properties", {})
        extra = node.get("additionalProperties")
        node = properties.get(key) or (extra if isinstance(extra, dict) else {})
    node = deref(node, root)
    for choice in node.get("oneOf", node.get("anyOf", [])):
        if "properties" in deref(choice, root):
            node = deref(choice, root)
    return list(node.get("properties", {}))
