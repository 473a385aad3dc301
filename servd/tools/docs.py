"""Tables for the README, generated from their sources so the docs can't drift.

`python -m servd.tools.docs settings` prints the settings table from the JSON Schema;
`python -m servd.tools.docs metrics` prints the metrics table from the daemon's registry.
tests/test_readme.py checks that the README holds exactly these tables.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from servd.config.schema import deref, load_schema


def settings_table() -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    schema = load_schema()
    for key, node in _walk(schema, schema, ""):
        default = (
            json.dumps(node["default"]) if "default" in node else "required" if key.endswith("entrypoint") else "—"
        )
        rows.append(f"| `{key}` | {_type(node, schema)} | `{default}` | {node.get('description', '')} |")
    return "\n".join(rows)


def _walk(node: dict[str, Any], root: dict[str, Any], prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, sub in node.get("properties", {}).items():
        sub = deref(sub, root)
        path = f"{prefix}{key}"
        if key == "endpoints":
            yield path, sub
            endpoint = deref(sub["additionalProperties"], root)
            yield from _walk(endpoint, root, "endpoints.NAME.")
            continue
        yield path, sub
        if "properties" in sub:
            yield from _walk(sub, root, path + ".")


def _type(node: dict[str, Any], root: dict[str, Any]) -> str:
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(_type(deref(branch, root), root) for branch in node["oneOf"])
    kind = node.get("type", "any")
    return " \\| ".join(kind if isinstance(kind, list) else [kind])


def metrics_table() -> str:
    from servd.obs.metrics import METRICS

    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for d in METRICS:
        labels = ", ".join(f"`{n}`" for n in d.labels) or "—"
        rows.append(f"| `{d.exposed_name}` | {d.type_name} | {labels} | {d.help} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    tables = {"settings": settings_table, "metrics": metrics_table}
    if len(argv) != 1 or argv[0] not in tables:
        print("usage: python -m servd.tools.docs settings|metrics", file=sys.stderr)
        return 2
    print(tables[argv[0]]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
