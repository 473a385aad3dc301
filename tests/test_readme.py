"""The README is a front page that works: its quick start runs as written, its links land.

The quick start (a module, the YAML that serves it, the curl that calls it) is read from the
README and from the docs' Getting started, written into a directory, served by a real
`servd run` on 127.0.0.1 and called with the page's own curl command; the answer must be the one
the page shows. Every relative link resolves to a file, and a link to a heading to that heading.
The README's set-up command is what CI runs.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from markdown.extensions.toc import slugify

from tests.procs import WAIT_S, env, kill_group, listening_url

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text("utf-8")
QUICK_STARTS = ["README.md", "docs/getting-started.md"]


def blocks(text: str, language: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf"^```{language}\n(.*?)^```$", text, re.S | re.M)]


def quick_start(text: str) -> tuple[dict[str, str], str, str, str]:
    """({file name: content} of the blocks headed `# NAME`, the servd command, the curl command,
    the answer the page shows for it)."""
    files = {}
    for language in ("python", "yaml"):
        for block in blocks(text, language):
            header = re.match(r"# (hello\.\w+)\n", block)
            if header:
                files[header.group(1)] = block
    shell = next(b for b in blocks(text, "sh") if "servd run hello.yaml" in b)
    run = next(line for line in shell.splitlines() if "servd run" in line).split("#")[0].strip()
    curl = next(line for line in shell.splitlines() if line.startswith("curl "))
    shown = next(line for line in shell.splitlines() if line.startswith("# {")).removeprefix("# ")
    return files, run, curl, shown


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("name", QUICK_STARTS)
def test_the_quick_start_serves_what_the_page_shows(tmp_path, name):
    """A newcomer who copies the three blocks and runs the two commands gets the answer shown:
    `{"data":"hello, world","timing":{...}}` from 127.0.0.1, on the port the page names."""
    files, run, curl, shown = quick_start((ROOT / name).read_text("utf-8"))
    assert set(files) == {"hello.py", "hello.yaml"}
    for file, content in files.items():
        (tmp_path / file).write_text(content, "utf-8")
    config = yaml.safe_load(files["hello.yaml"])
    port = str(config.get("server", {}).get("port", 8700))
    assert f"127.0.0.1:{port}" in curl, "the curl calls the address servd serves by default"
    command = shlex.split(run)
    assert command[0].endswith("servd") and command[1:] == ["run", "hello.yaml"], command
    log = tmp_path / "servd.log"
    with log.open("wb") as out:  # the page's command, on a free port instead of the default
        proc = subprocess.Popen(
            [sys.executable, "-m", "servd", *command[1:], "--port", "0"],
            cwd=tmp_path, env=env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        url = listening_url(proc, log)
        assert url.startswith("http://127.0.0.1:"), url
        actual = url.rsplit(":", 1)[1].rstrip("/")
        result = subprocess.run(
            ["sh", "-c", curl.replace(f"127.0.0.1:{port}", f"127.0.0.1:{actual}")],
            capture_output=True, text=True, timeout=WAIT_S, check=True,
        )  # fmt: skip
    finally:
        kill_group(proc)
    answer, expected = json.loads(result.stdout), json.loads(shown)
    assert answer["data"] == expected["data"] == "hello, world"
    assert set(answer["timing"]) == set(expected["timing"]) == {"queue_s", "run_s", "batch_size"}


def test_the_readme_is_a_front_page():
    """About 150 lines, with the quick start's YAML near the top (it used to be at line 372 of 1,847)."""
    lines = README.splitlines()
    assert len(lines) <= 180, f"the README is {len(lines)} lines: move the detail into docs/"
    first_yaml = next(i for i, line in enumerate(lines) if line == "```yaml")
    assert first_yaml < 40, f"the first YAML is at line {first_yaml + 1}"


def test_the_readme_names_the_shipped_examples():
    """The README's count and list of the default endpoints match servd.yaml."""
    shipped = list(yaml.safe_load((ROOT / "servd.yaml").read_text("utf-8"))["endpoints"])
    words = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
    match = re.search(r"serves (\w+) examples on\s+the CPU, none of which downloads anything \(([^)]*)\)", README)
    assert match, "the README says what the shipped servd.yaml serves"
    assert match.group(1) == words[len(shipped)]
    assert re.findall(r"`(\w+)`", match.group(2)) == shipped


def links(text: str) -> list[str]:
    """Relative link targets of a markdown text (web addresses and in-page anchors left out)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def anchors(markdown_file: Path) -> set[str]:
    """The ids MkDocs gives the headings of a page (the toc extension's slugify)."""
    text = re.sub(r"^```.*?^```$", "", markdown_file.read_text("utf-8"), flags=re.S | re.M)
    return {slugify(re.sub(r"[`*]", "", h), "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("target", links(README))
def test_every_link_of_the_readme_lands(target):
    """Each link on the front page opens a file of the repository (on GitHub, or `make docs` for
    the site), and a link to a heading finds it."""
    path, _, anchor = target.partition("#")
    file = ROOT / path
    assert file.exists(), f"README links to {path}, which does not exist"
    if anchor:
        assert anchor in anchors(file), f"README links to #{anchor}, which {path} has no heading for"


def test_ci_runs_the_readme_test_command():
    """.ci/run ends in `make test`, the README's test command."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "make test" in README
