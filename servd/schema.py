"""YAML text -> plain data with line:col of every key, checked against the JSON Schema.

`schemas/servd.schema.json` is the one place where keys, types, defaults and bounds are
declared; this module only reads it. Nothing here imports tornado or torch.
"""

from __future__ import annotations

import copy
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
    data = _to_python(root, (), marks, problems, file)
    if problems:
        raise SpecError(problems)
    return Located(data, marks, file)


def _to_python(
    node: yaml.Node, path: Path_, marks: dict[Path_, tuple[int, int]], problems: list[Problem], file: str
) -> Any:
    marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            here = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if not isinstance(key, str):
                problems.append(Problem(file, *here, dotted(path), f"key {key!r} must be a string"))
                continue
            if key in out:
                problems.append(Problem(file, *here, dotted((*path, key)), "duplicate key"))
                continue
            marks[(*path, key)] = here
            out[key] = _to_python(value_node, (*path, key), marks, problems, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*path, i), marks, problems, file) for i, item in enumerate(node.value)]
    return _scalar(node)


_SCALARS = yaml.SafeLoader("")


def _scalar(node: yaml.Node) -> Any:
    """A key or leaf value as YAML's safe loader would build it (int, float, bool, None, str)."""
    if not isinstance(node, yaml.ScalarNode):
        return f"<{node.tag}>"
    return _SCALARS.construct_object(node, deep=True)


def validate(located: Located) -> list[Problem]:
    """Every schema violation as a Problem, in file order."""
    validator = jsonschema.Draft202012Validator(load_schema())
    problems = []
    for error in validator.iter_errors(located.data):
        for leaf in _leaves(error):
            problems.append(located.problem(tuple(leaf.absolute_path), _message(leaf)))
    return sorted(set(problems), key=lambda p: (p.line, p.col, p.path))


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """For oneOf/anyOf, report the closest branch's errors rather than 'is not valid under any'."""
    if error.context:
        best = jsonschema.exceptions.best_match(error.context)
        if best is not None and best.validator not in ("const", "type", "enum"):
            return [best]
    return [error]


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{error.message}{hint}"
    if error.validator == "oneOf" and isinstance(error.instance, (str, int, float)):
        return f"{error.instance!r} is not valid here; see the schema's description of this key"
    return str(error.message)


def with_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of valid config data with every omitted key set to the schema's default."""
    schema = load_schema()
    filled: dict[str, Any] = _fill(copy.deepcopy(data), schema, schema)
    return filled


def _fill(value: Any, node: dict[str, Any], root: dict[str, Any]) -> Any:
    node = _deref(node, root)
    if not isinstance(value, dict):
        return value
    for key, sub in node.get("properties", {}).items():
        sub = _deref(sub, root)
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            value[key] = _fill(value[key], sub, root)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key in set(value) - set(node.get("properties", {})):
            value[key] = _fill(value[key], extra, root)
    return value


def _deref(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return dict(target)
    return node
