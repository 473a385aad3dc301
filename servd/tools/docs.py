"""Tables for the documentation site, generated from their sources so the docs can't drift.

`python -m servd.tools.docs settings` prints the settings table from the JSON Schema;
`python -m servd.tools.docs metrics` prints the metrics table from the daemon's registry.
`python -m servd.tools.docs --write` puts both into their pages in a checkout
(docs/reference/settings.md and metrics.md, between their `<!-- NAME-table -->` markers);
tests/test_docs_site.py checks that the pages hold exactly these tables.

Runs in the caller's thread; nothing here starts a loop or a daemon.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
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


# Each table's generator, and where it lives in a checkout with the name of its markers.
TABLES: dict[str, Callable[[], str]] = {"settings": settings_table, "metrics": metrics_table}
PAGES: dict[str, tuple[str, str]] = {
    "settings": ("docs/reference/settings.md", "settings-table"),
    "metrics": ("docs/reference/metrics.md", "metrics-table"),
}


def replace_block(text: str, marker: str, table: str) -> str:
    """`text` with what stands between `<!-- marker -->` and `<!-- /marker -->` replaced by `table`."""
    pattern = re.compile(rf"(<!-- {marker} -->\n).*?(\n<!-- /{marker} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no <!-- {marker} --> ... <!-- /{marker} --> block")
    return pattern.sub(lambda m: m.group(1) + table + m.group(2), text, count=1)


def write_pages(root: Path) -> list[Path]:
    """Rewrite each table in its page under `root` (a checkout); the pages that changed."""
    changed = []
    for name, (relative, marker) in PAGES.items():
        path = root / relative
        text = path.read_text("utf-8")
        new = replace_block(text, marker, TABLES[name]())
        if new != text:
            path.write_text(new, "utf-8")
            changed.append(path)
    return changed


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        root = Path.cwd()
        if not (root / "mkdocs.yml").exists():
            print("servd.tools.docs: --write runs at the root of a checkout (where mkdocs.yml is)", file=sys.stderr)
            return 1
        for path in write_pages(root):
            print(f"wrote {path.relative_to(root)}")
        return 0
    if len(argv) != 1 or argv[0] not in TABLES:
        print("usage: python -m servd.tools.docs settings|metrics|--write", file=sys.stderr)
        return 2
    print(TABLES[argv[0]]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
