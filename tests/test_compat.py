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
