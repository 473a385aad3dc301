"""servd.config.yamledit: `servd tune --write` changes the tuned values and leaves every other byte alone (#16)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import yaml

from servd.config.yamledit import EditError, edit, save_atomically

REPO = Path(__file__).resolve().parent.parent
CLASSIFY = ("endpoints", "classify")


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(old) == len(new), "lines were added or removed"
    return [(a, b) for a, b in zip(old, new, strict=True) if a != b]


def test_changing_values_keeps_every_other_byte_of_the_shipped_config():
    """Comments, order, flow mappings and blank lines of servd.yaml stay; only the three values change."""
    text = (REPO / "servd.yaml").read_text("utf-8")
    after = edit(text, {(*CLASSIFY, "concurrency"): 1, (*CLASSIFY, "batch", "max_size"): 128,
                        (*CLASSIFY, "batch", "max_delay_ms"): 0.5})  # fmt: skip
    changed = changed_lines(text, after)
    assert [(a.strip(), b.strip()) for a, b in changed] == [
        ("concurrency: 2", "concurrency: 1"),
        ("max_size: 32", "max_size: 128"),
        ("max_delay_ms: 5", "max_delay_ms: 0.5"),
    ]
    for a, b in changed:  # the indentation and everything around the value is as it was
        assert re.sub(r"[\d.]+$", "N", a.rstrip("\n")) == re.sub(r"[\d.]+$", "N", b.rstrip("\n"))
    assert yaml.safe_load(after)["endpoints"]["classify"]["batch"] == {"max_size": 128, "max_delay_ms": 0.5}


def test_a_trailing_comment_keeps_its_column():
    text = "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    concurrency: 12     # tuned\n"
    after = edit(text, {("endpoints", "e", "concurrency"): 3})
    assert after.splitlines()[-1] == "    concurrency: 3      # tuned"


def test_a_missing_key_goes_after_its_predecessor_in_the_schema_order():
    """concurrency follows device (not the end of the mapping); the blank line and comment stay where they were."""
    text = (
        "version: 1\nendpoints:\n    e:   # four-space indents\n        entrypoint: a:b\n"
        "        device:\n          - cpu\n\n        # batching\n        batch:\n            max_delay_ms: 3\n"
    )
    after = edit(text, {("endpoints", "e", "concurrency"): 4, ("endpoints", "e", "batch", "max_size"): 8})
    assert after == (
        "version: 1\nendpoints:\n    e:   # four-space indents\n        entrypoint: a:b\n"
        "        device:\n          - cpu\n        concurrency: 4\n\n        # batching\n        batch:\n"
        "            max_size: 8\n            max_delay_ms: 3\n"
    )


def test_flow_mappings_are_edited_in_place():
    text = (
        "version: 1\nendpoints:\n  e: {entrypoint: a:b, batch: {max_size: 4}}   # one line\n"
        "  f:\n    entrypoint: a:b\n    batch: {}\n"
    )
    after = edit(text, {("endpoints", "e", "batch", "max_size"): 16, ("endpoints", "e", "batch", "max_delay_ms"): 2,
                        ("endpoints", "f", "batch", "max_size"): 2})  # fmt: skip
    assert after.splitlines()[2] == "  e: {entrypoint: a:b, batch: {max_size: 16, max_delay_ms: 2}} # one line"
    assert after.splitlines()[5] == "    batch: {max_size: 2}"


def test_an_entry_added_to_a_flow_mapping_keeps_the_comment_column_where_it_fits():
    text = "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    batch: {}                 # defaults\n"
    after = edit(text, {("endpoints", "e", "batch", "max_size"): 8})
    assert after.splitlines()[-1] == "    batch: {max_size: 8}      # defaults"


@pytest.mark.parametrize(
    ("device", "shorter"),
    [("[cuda:0, cuda:1, cpu]  # all of them", "[cuda:0]               # all of them"),
     ("\n      - cuda:0\n      - cuda:1   # second\n      - cpu", "\n      - cuda:0")],
)  # fmt: skip
def test_a_device_list_is_cut_to_the_instance_count(device, shorter):
    text = f"version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    device: {device}\n    concurrency: 2\n"
    after = edit(text, {("endpoints", "e", "device"): ["cuda:0"]})
    assert after == f"version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    device: {shorter}\n    concurrency: 2\n"


def test_windows_line_endings_stay():
    text = "version: 1\r\nendpoints:\r\n  e:\r\n    entrypoint: a:b\r\n    batch:\r\n      max_size: 4\r\n"
    after = edit(text, {("endpoints", "e", "batch", "max_size"): 8, ("endpoints", "e", "concurrency"): 2})
    assert after == (
        "version: 1\r\nendpoints:\r\n  e:\r\n    entrypoint: a:b\r\n    concurrency: 2\r\n    batch:\r\n"
        "      max_size: 8\r\n"
    )


def test_a_layout_splicing_does_not_know_still_gets_the_intended_values():
    """A flow mapping over several lines falls back to ruamel's round-trip dump; comments survive it."""
    text = "version: 1\n# endpoints follow\nendpoints:\n  e: {entrypoint: a:b,\n      batch: {max_size: 4}}\n"
    after = edit(text, {("endpoints", "e", "concurrency"): 3})
    assert yaml.safe_load(after) == {"version": 1, "endpoints": {"e": {"entrypoint": "a:b", "batch": {"max_size": 4},
                                                                        "concurrency": 3}}}  # fmt: skip
    assert "# endpoints follow" in after


def test_a_value_shared_through_an_alias_is_refused():
    """Changing one endpoint's batch must not change another's: the edit is refused, naming the key."""
    text = (
        "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    batch: &b {max_size: 2}\n"
        "  f:\n    entrypoint: a:b\n    batch: *b\n"
    )
    with pytest.raises(EditError, match=r"endpoints\.e\.batch\.max_size"):
        edit(text, {("endpoints", "e", "batch", "max_size"): 4})


def test_save_atomically_keeps_the_file_when_the_check_fails(tmp_path):
    path = tmp_path / "servd.yaml"
    path.write_text("old\n")
    os.chmod(path, 0o640)

    def refuse(candidate: Path) -> None:
        assert candidate.read_text() == "new\n" and candidate.parent == tmp_path
        raise ValueError("no")

    with pytest.raises(ValueError):
        save_atomically(path, "new\n", refuse)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["servd.yaml"]
    save_atomically(path, "new\n", lambda candidate: None)
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
