"""YAML text -> plain data with line:col of every key, checked against the JSON Schema.

`schemas/servd.schema.json` is the one place where keys, types, defaults and bounds are
declared; this module only reads it. Nothing here imports tornado or torch.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

Path_ = tuple[str | int, ...]

SCHEMA_FILE = "servd.schema.json"
# Beside a `pattern`, what a mismatch means and how to write it, so no one reads a regex. The
# keyword is VS Code's (its JSON and YAML language servers show it too); servd puts the bad
# value in front: "'foo' is not an entrypoint; write module:attribute (...)".
PATTERN_MESSAGE = "patternErrorMessage"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file, located as precisely as we can."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(Exception):
    """A config file that cannot be served; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON Schema of servd.yaml, from the installed package or the source tree."""
    try:
        text = resources.files("servd._schemas").joinpath(SCHEMA_FILE).read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        source_tree = Path(__file__).resolve().parent.parent / "schemas" / SCHEMA_FILE
        text = source_tree.read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)


class Located:
    """Plain data parsed from YAML plus the (line, col) of every mapping key and value."""

    def __init__(self, data: Any, marks: dict[Path_, tuple[int, int]], file: str) -> None:
        self.data = data
        self.marks = marks
        self.file = file

    def problem(self, path: Path_, message: str) -> Problem:
        """A Problem at the deepest known ancestor of `path` (a missing key points at its parent)."""
        probe = tuple(path)
        while probe not in self.marks and probe:
            probe = probe[:-1]
        line, col = self.marks.get(probe, (1, 1))
        return Problem(self.file, line, col, dotted(path), message)


def parse_yaml(text: str, file: str) -> Located:
    """Parse YAML keeping positions; duplicate keys and non-string keys are problems too."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = getattr(exc, "problem", None) or str(exc)
        raise SpecError([Problem(file, line, col, "", f"YAML syntax error: {reason}")]) from None
    if root is None:
        raise SpecError([Problem(file, 1, 1, "", "the file is empty; it needs at least 'version' and 'endpoints'")])
    marks: dict[Path_, tuple[int, int]] = {}
    problems: list[Problem] = []
    try:
        data = _to_python(root, (), marks, problems, file)
    finally:
        # the loader caches every node it built (with marks holding the whole file's text):
        # without this, each reload would keep its file in memory for good
        _SCALARS.constructed_objects.clear()
        _SCALARS.recursive_objects.clear()
    if problems:
        raise SpecError(problems)
    return Located(data, marks, file)


def _to_python(
    node: yaml.Node,
    path: Path_,
    marks: dict[Path_, tuple[int, int]],
    problems: list[Problem],
    file: str,
    inside: frozenset[int] = frozenset(),
) -> Any:
    here = (node.start_mark.line + 1, node.start_mark.column + 1)
    marks.setdefault(path, here)
    if id(node) in inside:
        problems.append(Problem(file, *here, dotted(path), "an alias refers to a node that contains it (recursive)"))
        return None
    if isinstance(node, yaml.MappingNode):
        inside = inside | {id(node)}
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            here = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            try:
                key = _scalar(key_node)
            except yaml.YAMLError as exc:
                problems.append(Problem(file, *here, dotted(path), _unreadable(key_node, exc)))
                continue
            if not isinstance(key, str):
                problems.append(Problem(file, *here, dotted(path), f"key {key!r} must be a string"))
                continue
            if key in out:
                problems.append(Problem(file, *here, dotted((*path, key)), "duplicate key"))
                continue
            marks[(*path, key)] = here
            out[key] = _to_python(value_node, (*path, key), marks, problems, file, inside)
        return out
    if isinstance(node, yaml.SequenceNode):
        inside = inside | {id(node)}
        return [_to_python(item, (*path, i), marks, problems, file, inside) for i, item in enumerate(node.value)]
    try:
        return _scalar(node)
    except yaml.YAMLError as exc:
        problems.append(Problem(file, *here, dotted(path), _unreadable(node, exc)))
        return None


def _unreadable(node: yaml.Node, exc: yaml.YAMLError) -> str:
    if node.tag == "tag:yaml.org,2002:merge":
        return "YAML merge keys ('<<') are not supported; write the keys out"
    return f"cannot read this value: {getattr(exc, 'problem', None) or exc}"


_SCALARS = yaml.SafeLoader("")


def _scalar(node: yaml.Node) -> Any:
    """A key or leaf value as YAML's safe loader would build it (int, float, bool, None, str).

    A date stays the text it was written as: the config is JSON data (YAML 1.2, as editors
    validating against the schema read it), and a date object could not be served as JSON.
    """
    if not isinstance(node, yaml.ScalarNode):
        return f"<{node.tag}>"
    if node.tag == "tag:yaml.org,2002:timestamp":
        return node.value
    return _SCALARS.construct_object(node, deep=True)


def _is_integer(checker: Any, instance: Any) -> bool:
    """YAML's `2.0` is a float: integer settings take only ints (JSON Schema alone would accept 2.0)."""
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


def validate(located: Located) -> list[Problem]:
    """Every schema violation as a Problem, in file order."""
    validator = _Validator(load_schema())
    problems = []
    for error in validator.iter_errors(located.data):
        for leaf in _leaves(error):
            problems.extend(_problems(located, leaf))
    return sorted(set(problems), key=lambda p: (p.line, p.col, p.path))


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """For oneOf/anyOf, report the closest branch's errors rather than 'is not valid under any'.

    A branch whose type, const or enum doesn't fit the value at all is the wrong branch, not the
    problem; what is left says what is wrong with the value in the branch that fits its kind.
    """
    if error.context:
        fitting = [e for e in error.context if e.relative_path or e.validator not in ("const", "type", "enum")]
        best = jsonschema.exceptions.best_match(fitting)
        if best is not None:
            return [best]
    return [error]


def _problems(located: Located, error: jsonschema.ValidationError) -> list[Problem]:
    """Problems for one error, located at the offending key itself for unknown or misnamed keys."""
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        declared = error.schema.get("properties", {})
        extra = [key for key in error.instance if key not in declared]
        return [located.problem((*path, key), _unknown_key(str(key), sorted(declared))) for key in extra]
    if "propertyNames" in error.absolute_schema_path and isinstance(error.instance, str):
        return [located.problem((*path, error.instance), f"key {_message(error)}")]
    return [located.problem(path, _message(error))]


def _unknown_key(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listed = f" (allowed: {', '.join(allowed)})" if allowed else " (this mapping takes no keys)"
    return f"unknown key {key!r}{listed}{hint}"


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "pattern" and isinstance(error.schema.get(PATTERN_MESSAGE), str):
        return f"{error.instance!r} is {error.schema[PATTERN_MESSAGE]}"
    if error.validator == "oneOf" and isinstance(error.instance, (str, int, float)):
        return f"{error.instance!r} is not valid here; see the schema's description of this key"
    return str(error.message)


def with_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of valid config data with every omitted key set to the schema's default."""
    schema = load_schema()
    filled: dict[str, Any] = _fill(copy.deepcopy(data), schema, schema)
    return filled


def _fill(value: Any, node: dict[str, Any], root: dict[str, Any]) -> Any:
    node = deref(node, root)
    if not isinstance(value, dict):
        return value
    for key, sub in node.get("properties", {}).items():
        sub = deref(sub, root)
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            value[key] = _fill(value[key], sub, root)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key in set(value) - set(node.get("properties", {})):
            value[key] = _fill(value[key], extra, root)
    return value


def deref(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """The schema node a local `$ref` ("#/$defs/...") points at, or `node` itself."""
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return dict(target)
    return node
