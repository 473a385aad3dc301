"""The private APIs servd uses (servd/web/compat.py) exist in the installed tornado and prometheus_client (#11).

An upgrade that removes one fails here, loudly, before it can slow the per-request path or break
the listener in production; setup.cfg pins the versions this was tested with.
"""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from tornado.websocket import WebSocketProtocol13

from servd.web import compat

ROOT = Path(__file__).resolve().parent.parent


def test_every_private_name_servd_uses_is_there():
    assert compat.missing() == []


def test_a_name_an_upgrade_removed_is_reported(monkeypatch):
    """The check can fail: without Tornado's frame-field reader, it names it."""
    monkeypatch.delattr(WebSocketProtocol13, "_read_bytes")
    assert compat.missing() == ["tornado: WebSocketProtocol13._read_bytes"]


@pytest.mark.parametrize("library", ["tornado", "prometheus-client"])
def test_setup_cfg_caps_each_library_whose_internals_servd_uses(library):
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requirement = next(
        line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip().startswith(library)
    )
    assert "<" in requirement, f"{requirement}: pin the tested upper bound"


def test_the_check_lists_exactly_the_private_names_compat_uses():
    """The check stays true to the code: every `._name` of another library that web/compat.py reads
    or writes is in REQUIRED (and nothing listed there is unused), so an upgrade can't slip past it."""
    import ast

    source = (ROOT / "servd" / "web" / "compat.py").read_text("utf-8")
    own = {"_buffer", "_offset", "_Handler", "_Params", "_Conn", "_sample", "_has_class_attr"}
    used = {
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
    }
    used |= {  # private methods servd overrides or looks up by name
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("_")
        and not node.value.startswith("__")
    }
    listed = {name for _, _, name in compat.REQUIRED} | {
        name for _, _, names in compat.REQUIRED_ON_INSTANCES for name in names if name.startswith("_")
    }
    assert (used - own) - listed == set(), "a private name is used but not checked"
    assert listed - used == set(), "a checked private name is no longer used"
