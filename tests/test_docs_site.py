"""The documentation site (docs/, mkdocs.yml) builds strictly and says what the code does.

What a reader of the site sees is checked against its source: the generated settings and metrics
tables against the schema and the daemon's registry, the layout table against the package rules
of tests/test_layering.py, the default endpoints against servd.yaml, every whole servd.yaml in a
page against `servd check`, and every `servd/...` path and `servd.x.y` module a page names
against the tree. `make test` builds the site too; building it here as well means a plain
`pytest` run catches a broken link.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from servd.daemon.loading import load_checked
from servd.tools.docs import PAGES as TABLE_PAGES
from servd.tools.docs import metrics_table, settings_table, write_pages
from tests.harness import serve
from tests.test_layering import PACKAGES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))


def page(name: str) -> str:
    return (DOCS / name).read_text("utf-8")


def between(text: str, marker: str) -> str:
    """What stands between `<!-- marker -->` and `<!-- /marker -->`."""
    match = re.search(rf"<!-- {marker} -->\n(.*?)\n<!-- /{marker} -->", text, re.S)
    assert match, f"no <!-- {marker} --> block"
    return match.group(1)


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of one language, in page order."""
    return [m.group(1) for m in re.finditer(rf"^```{language}\n(.*?)^```$", text, re.S | re.M)]


def table_rows(text: str) -> list[list[str]]:
    """A markdown table's body rows as lists of cells (header and rule left out)."""
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")
    ]
    return rows[2:]


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict` passes: no broken link or anchor, no page left out of the nav."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr


def test_the_layout_table_lists_the_packages_of_the_layering_rules():
    """The Layout page's table names exactly the packages tests/test_layering.py enforces, lowest first."""
    listed = [row[0].strip("`") for row in table_rows(between(page("design/layout.md"), "layout-table"))]
    assert listed == [name for name, _ in PACKAGES]


def test_the_settings_table_is_generated_from_the_schema():
    """Every key of schemas/servd.schema.json, its default and description, as the Settings page shows it
    (`python -m servd.tools.docs --write` brings the page up to date)."""
    assert between(page("reference/settings.md"), "settings-table") == settings_table()


def test_the_metrics_table_is_generated_from_the_metrics():
    """The Metrics reference page holds the table the daemon's registry generates
    (`python -m servd.tools.docs --write` brings the page up to date)."""
    assert between(page("reference/metrics.md"), "metrics-table") == metrics_table()


def test_docs_write_brings_a_stale_table_up_to_date(tmp_path):
    """`python -m servd.tools.docs --write` (what the failing table tests ask for) replaces each
    table between its markers and leaves the rest of the page as it was."""
    for relative, marker in TABLE_PAGES.values():
        stale = (
            (ROOT / relative)
            .read_text("utf-8")
            .replace(between(page(relative.removeprefix("docs/")), marker), "| stale |")
        )
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(stale, "utf-8")
    assert sorted(write_pages(tmp_path)) == sorted(tmp_path / relative for relative, _ in TABLE_PAGES.values())
    for relative, _ in TABLE_PAGES.values():
        assert (tmp_path / relative).read_text("utf-8") == (ROOT / relative).read_text("utf-8")
    assert write_pages(tmp_path) == []


async def test_the_metrics_table_names_what_metrics_serves(tmp_path):
    """Each metric the Metrics reference lists is served by /metrics after a request, and nothing unlisted is."""
    config = "version: 1\nendpoints:\n  echo: {entrypoint: examples.echo:echo}\n"
    async with serve(tmp_path, config) as d:
        await d.post("echo", 1)
        text = (await d.http("GET", "/metrics")).body.decode()
    served = {re.sub(r"_total$", "", n) for n in re.findall(r"^# TYPE (servd_\w+) ", text, re.M)}
    table = between(page("reference/metrics.md"), "metrics-table")
    listed = {re.sub(r"_total$", "", name) for name in re.findall(r"^\| `(servd_\w+)`", table, re.M)}
    assert served == listed


def test_getting_started_lists_every_endpoint_of_the_shipped_config():
    """The default endpoints table names each endpoint of servd.yaml with its entrypoint, and the
    sentence above it counts them right (it said "four" when there were five)."""
    shipped = yaml.safe_load((ROOT / "servd.yaml").read_text("utf-8"))["endpoints"]
    text = page("getting-started.md")
    rows = table_rows(between(text, "default-endpoints"))
    assert {row[0].strip("`"): row[1].strip("`") for row in rows} == {
        name: endpoint["entrypoint"] for name, endpoint in shipped.items()
    }
    words = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
    assert f"`servd.yaml` serves {words[len(shipped)]} examples" in text


def test_the_digit_json_the_tools_pages_use_is_made_as_getting_started_says(tmp_path):
    """The command on Getting started writes a digit.json that classify's input_schema accepts, and
    every page that passes digit.json to a tool points there."""
    command = blocks(between(page("getting-started.md"), "digit-json"), "sh")[0]
    subprocess.run(["sh", "-c", command], cwd=tmp_path, check=True, timeout=30)
    data = json.loads((tmp_path / "digit.json").read_text("utf-8"))
    schema = yaml.safe_load((ROOT / "servd.yaml").read_text("utf-8"))["endpoints"]["classify"]["input_schema"]
    jsonschema.validate(data, schema)
    for path in PAGES:
        text = path.read_text("utf-8")
        if "--data-file digit.json" in text and path.name != "getting-started.md":
            assert "getting-started.md#calling-the-default-endpoints" in text, f"{path} uses digit.json unexplained"


def test_more_than_one_machine_starts_with_one_machine():
    """The one-box Ray path (a private instance, nothing to set up) comes before the multi-node one."""
    text = page("operations/cluster.md")
    assert text.index("## On one machine") < text.index("## On a cluster") < text.index("ray start --head")


def whole_configs() -> list[tuple[str, int, str]]:
    """(page, block number, text) of each YAML block that is a whole servd.yaml (or one missing only
    `version: 1`); `endpoints:` fragments of one endpoint are left out."""
    found = []
    for path in PAGES:
        for number, block in enumerate(blocks(path.read_text("utf-8"), "yaml")):
            first = next(line for line in block.splitlines() if line.strip() and not line.startswith("#"))
            if first in ("version: 1", "server:", "endpoints:", "cluster:"):
                found.append((str(path.relative_to(DOCS)), number, block))
    return found


@pytest.mark.parametrize(("name", "number", "block"), whole_configs(), ids=lambda v: str(v)[:40])
def test_every_whole_config_in_the_docs_passes_servd_check(tmp_path, name, number, block):
    """A servd.yaml shown whole is one `servd check` accepts: with the modules the same page
    defines (a python block headed `# NAME.py`) and any tokens file it names."""
    text = block if re.search(r"^version: 1$", block, re.M) else "version: 1\n" + block
    for code in blocks(page(name), "python"):
        header = re.match(r"# (\w+\.py)\n", code)
        if header:
            (tmp_path / header.group(1)).write_text(code, "utf-8")
    tokens = re.search(r"tokens_file: (\S+)", text)
    if tokens:
        (tmp_path / tokens.group(1)).write_text("a-token\n", "utf-8")
    (tmp_path / "servd.yaml").write_text(text, "utf-8")
    if "engine: ray" in text:
        pytest.importorskip("ray")
    load_checked(tmp_path / "servd.yaml")  # raises with every problem, file:line:col


def named_paths() -> list[tuple[str, str]]:
    """(page, name) of each path into the repository (`servd/...`, `tests/...`, ...) and `servd.x.y`
    dotted name the pages mention."""
    found = set()
    for path in PAGES:
        text = path.read_text("utf-8")
        for match in re.finditer(r"`((?:servd|tests|examples|benchmarks|schemas)/[\w/.-]*)`", text):
            found.add((str(path.relative_to(DOCS)), match.group(1)))
        for match in re.finditer(r"`(servd(?:\.[A-Za-z_]\w*)+)`", text):
            top = ROOT / "servd" / match.group(1).split(".")[1]
            if top.is_dir() or top.with_suffix(".py").exists():  # not servd.yaml, nor a JSON field servd.timing
                found.add((str(path.relative_to(DOCS)), match.group(1)))
    return sorted(found)


@pytest.mark.parametrize(("name", "named"), named_paths())
def test_every_module_and_path_a_page_names_exists(name, named):
    """A page that points into the code points at something there (the package was reorganised once)."""
    if "/" in named:
        assert (ROOT / named).exists(), f"{name} names {named}, which does not exist"
        return
    parts = named.split(".")
    for split in range(len(parts), 0, -1):  # the longest prefix that is a module or package
        base = ROOT.joinpath(*parts[:split])
        module = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        if module.exists():
            rest = parts[split:]
            source = module.read_text("utf-8")
            assert len(rest) <= 1, f"{name} names {named}: only one attribute below a module is checked"
            if rest:
                assert re.search(rf"^(?:def |class |async def )?{rest[0]}\b", source, re.M), (
                    f"{name} names {named}, but {module.relative_to(ROOT)} defines no {rest[0]}"
                )
            return
    raise AssertionError(f"{name} names {named}, which is no module of servd")
