"""The README's generated tables match their sources, and its set-up matches .ci/run."""

import re
from pathlib import Path

from servd.tools.docs import metrics_table, settings_table
from tests.harness import serve

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def between(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n(.*?)\n<!-- /{marker} -->", README, re.S)
    assert match, f"README has no {marker} block"
    return match.group(1)


def test_settings_table_is_generated_from_the_schema():
    """Every key of schemas/servd.schema.json, its default and description, as the README shows it."""
    assert between("settings-table") == settings_table()


def test_metrics_table_is_generated_from_the_metrics():
    assert between("metrics-table") == metrics_table()


async def test_metrics_table_names_what_metrics_serves(tmp_path):
    """Each metric the README lists is served by /metrics after a request, and nothing unlisted is."""
    config = "version: 1\nendpoints:\n  echo: {entrypoint: examples.echo:echo}\n"
    async with serve(tmp_path, config) as d:
        await d.post("echo", 1)
        text = (await d.http("GET", "/metrics")).body.decode()
    served = {re.sub(r"_total$", "", n) for n in re.findall(r"^# TYPE (servd_\w+) ", text, re.M)}
    listed = {re.sub(r"_total$", "", name) for name in re.findall(r"^\| `(servd_\w+)`", between("metrics-table"), re.M)}
    assert served == listed


def test_ci_runs_the_readme_test_command():
    """.ci/run ends in `make test`, the README's test command."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "make test" in README
