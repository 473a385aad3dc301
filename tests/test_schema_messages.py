"""A value that doesn't match a key's pattern is explained in words, never shown the regex.

Each `pattern` in schemas/servd.schema.json has a `patternErrorMessage` beside it (declared once,
and shown by editors too); the config error puts the bad value in front of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.test_spec import only_problem, problems_of, write

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "schemas" / "servd.schema.json").read_text("utf-8"))


def patterned(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema of the schema that declares a pattern, with where it is."""
    if isinstance(node, dict):
        if "pattern" in node:
            yield path, node
        for key, sub in node.items():
            yield from patterned(sub, f"{path}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from patterned(sub, f"{path}/{i}")


def test_every_pattern_of_the_schema_says_what_it_wants():
    nodes = dict(patterned(SCHEMA))
    assert len(nodes) >= 3  # endpoint names, entrypoints, devices, and any added since
    assert {where for where, node in nodes.items() if not node.get("patternErrorMessage")} == set()


def test_an_entrypoint_without_a_colon_asks_for_module_attribute(tmp_path):
    """The issue's case: `entrypoint: foo` showed a raw regex ("foundations")."""
    problem = only_problem(write(tmp_path, "version: 1\nendpoints:\n  x:\n    entrypoint: foo\n"))
    assert str(problem) == (
        f"{tmp_path / 'servd.yaml'}:4:5: endpoints.x.entrypoint: "
        "'foo' is not an entrypoint; write module:attribute (e.g. examples.echo:echo)"
    )


def test_a_module_path_alone_is_not_an_entrypoint(tmp_path):
    problem = only_problem(write(tmp_path, "version: 1\nendpoints:\n  x:\n    entrypoint: examples.echo\n"))
    assert problem.message == "'examples.echo' is not an entrypoint; write module:attribute (e.g. examples.echo:echo)"


def test_an_unknown_device_lists_the_devices_in_a_list_too(tmp_path):
    """A device alone or inside a list of devices: the same words, at the bad item."""
    text = "version: 1\nendpoints:\n  a: {entrypoint: m:f, device: gpu}\n  b: {entrypoint: m:f, device: [cpu, tpu]}\n"
    problems = problems_of(write(tmp_path, text))
    assert [(p.path, p.message) for p in problems] == [
        ("endpoints.a.device", "'gpu' is not a device; write auto, cpu, cuda, cuda:N or mps"),
        ("endpoints.b.device.1", "'tpu' is not a device; write auto, cpu, cuda, cuda:N or mps"),
    ]


def test_a_bad_endpoint_name_says_which_characters_it_may_use(tmp_path):
    problem = only_problem(write(tmp_path, "version: 1\nendpoints:\n  'my model': {entrypoint: m:f}\n"))
    assert (problem.line, problem.col, problem.path) == (3, 3, "endpoints.my model")
    assert problem.message.startswith("key 'my model' is not an endpoint name; use up to 64 letters, digits,")
    assert "^" not in problem.message and "$" not in problem.message
