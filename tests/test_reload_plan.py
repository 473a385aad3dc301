"""reload.plan(old, new) sorts every kind of config change into what the daemon must do with it.

Pure tests: both Specs come from servd.config.spec.parse on files in tmp_path; nothing is imported or
served. DESIGN.md §5 is the contract (issue #4).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import yaml

from servd.config.plan import Plan, plan
from servd.config.spec import Spec, parse

BASE: dict[str, Any] = {
    "version": 1,
    "server": {"host": "127.0.0.1", "port": 8700, "max_threads": 8, "log": {"format": "json", "level": "info"}},
    "endpoints": {
        "echo": {"entrypoint": "examples.echo:echo"},
        "tagged": {
            "entrypoint": "examples.versioned:Tagged",
            "options": {"tag": "v1", "load_s": 0},
            "device": "cpu",
            "concurrency": 2,
            "queue": {"max_size": 10, "timeout_s": 30, "max_per_client": 5},
            "batch": {"max_size": 4, "max_delay_ms": 5},
            "api_open": True,
            "input_schema": {"type": "object"},
        },
    },
}

_files = itertools.count()


def spec_from(tmp_path, data: dict[str, Any] | str) -> Spec:
    """Write `data` (a dict, or YAML text as an operator would write it) to a new file and parse it."""
    path = tmp_path / f"servd-{next(_files)}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return parse(path)


def edited(dotted: str, value: Any, base: dict[str, Any] = BASE) -> dict[str, Any]:
    """A deep copy of `base` with the key at `dotted` set to `value` (None for a removed batch block)."""
    data = copy.deepcopy(base)
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    return data


def only(result: Plan, **expected: Any) -> None:
    """`result` has exactly the non-empty fields given (names compared for endpoint specs)."""
    summary = result.summary()
    wanted = {key: [] for key in summary}
    field_names = {"server_changed": "server"}
    server_keys = {"server_changed", "needs_restart"}  # summarised as written in the file: server.port
    for field, names in expected.items():
        wanted[field_names.get(field, field)] = [f"server.{n}" if field in server_keys else n for n in names]
    assert summary == wanted


def test_the_same_file_parsed_twice_plans_nothing(tmp_path):
    """Loading an unchanged file again is an empty plan."""
    result = plan(spec_from(tmp_path, BASE), spec_from(tmp_path, BASE))
    assert result.empty
    assert result == Plan()


def test_comments_order_and_explicit_defaults_plan_nothing(tmp_path):
    """Comments, key order and writing a default out explicitly change no setting, so nothing to do."""
    old = spec_from(tmp_path, "version: 1\nendpoints:\n  echo:\n    entrypoint: examples.echo:echo\n")
    new = spec_from(
        tmp_path,
        "# edited by hand\nendpoints:\n  echo:\n    concurrency: 1   # the default\n"
        "    entrypoint: examples.echo:echo\n    queue: {max_size: null}\nversion: 1\n",
    )
    assert plan(old, new).empty


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("concurrency", 3),
        ("queue.max_size", 2),
        ("queue.max_size", None),
        ("queue.timeout_s", 5),
        ("queue.max_per_client", 1),
        ("batch.max_size", 16),
        ("batch.max_delay_ms", 50),
        ("batch", None),
        ("api_open", False),
        ("input_schema", {"type": "array"}),
        ("input_schema", None),
        ("openai", {"model": "tagged-chat"}),
    ],
)
def test_a_limit_change_retunes_the_endpoint_in_place(tmp_path, dotted, value):
    """concurrency, queue.*, batch.*, api_open, input_schema and openai are limits: applied in place."""
    old = spec_from(tmp_path, BASE)
    new = spec_from(tmp_path, edited(f"endpoints.tagged.{dotted}", value))
    result = plan(old, new)
    only(result, retuned=["tagged"])
    assert result.retuned == (new.endpoints["tagged"],)


def test_a_batch_block_added_to_an_endpoint_is_a_limit_change(tmp_path):
    """Adding a batch block where there was none retunes (the model stays)."""
    old = spec_from(tmp_path, BASE)
    new = spec_from(tmp_path, edited("endpoints.echo.batch", {"max_size": 8}))
    only(plan(old, new), retuned=["echo"])


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("entrypoint", "examples.faults:Counter"),
        ("options", {"tag": "v2", "load_s": 0}),
        ("options", {"tag": "v1"}),
        ("options", {"tag": "v1", "load_s": 0, "extra": [1, 2]}),
        ("device", "auto"),
        ("device", ["cpu", "cpu"]),
    ],
)
def test_a_model_change_loads_a_new_model(tmp_path, dotted, value):
    """entrypoint, options and device make the model: a change there remodels the endpoint."""
    old = spec_from(tmp_path, BASE)
    new = spec_from(tmp_path, edited(f"endpoints.tagged.{dotted}", value))
    result = plan(old, new)
    only(result, remodeled=["tagged"])
    assert result.remodeled == (new.endpoints["tagged"],)


def test_options_in_another_order_are_the_same_model(tmp_path):
    """Options are keyword arguments: their order in the file doesn't make a new model."""
    old = spec_from(tmp_path, BASE)
    new = spec_from(tmp_path, edited("endpoints.tagged.options", {"load_s": 0, "tag": "v1"}))
    assert plan(old, new).empty


def test_a_model_and_a_limit_change_together_remodel_once_with_the_new_limits(tmp_path):
    """One endpoint lands in one list: remodeled, carrying its new limits too."""
    old = spec_from(tmp_path, BASE)
    both = edited("endpoints.tagged.concurrency", 4, edited("endpoints.tagged.options", {"tag": "v2"}))
    new = spec_from(tmp_path, both)
    result = plan(old, new)
    only(result, remodeled=["tagged"])
    assert result.remodeled[0].concurrency == 4


def test_an_entrypoint_whose_module_changed_on_disk_is_remodeled(tmp_path):
    """Same file, but the entrypoint's code changed: the model is rebuilt from the new code."""
    spec = spec_from(tmp_path, BASE)
    result = plan(spec, spec_from(tmp_path, BASE), stale_entrypoints={"examples.echo:echo"})
    only(result, remodeled=["echo"])


def test_a_stale_module_remodels_every_endpoint_that_serves_it(tmp_path):
    """Two endpoints on the same entrypoint both get the new code."""
    data = edited("endpoints.echo2", {"entrypoint": "examples.echo:echo", "concurrency": 2})
    old, new = spec_from(tmp_path, data), spec_from(tmp_path, data)
    only(plan(old, new, stale_entrypoints={"examples.echo:echo"}), remodeled=["echo", "echo2"])


def test_a_stale_module_that_no_endpoint_serves_changes_nothing(tmp_path):
    """Staleness only matters for entrypoints in the new file."""
    old, new = spec_from(tmp_path, BASE), spec_from(tmp_path, BASE)
    assert plan(old, new, stale_entrypoints={"examples.faults:sleep"}).empty


def test_a_stale_module_and_a_limit_change_remodel(tmp_path):
    """New code wins over a limits-only change: the endpoint gets a new model with the new limits."""
    old = spec_from(tmp_path, BASE)
    new = spec_from(tmp_path, edited("endpoints.echo.concurrency", 3))
    result = plan(old, new, stale_entrypoints={"examples.echo:echo"})
    only(result, remodeled=["echo"])
    assert result.remodeled[0].concurrency == 3


def test_a_new_endpoint_is_added(tmp_path):
    """An endpoint only in the new file is added; the others are untouched."""
    old = spec_from(tmp_path, BASE)
    new = spec_from(tmp_path, edited("endpoints.words", {"entrypoint": "examples.stream:words"}))
    result = plan(old, new)
    only(result, added=["words"])
    assert result.added == (new.endpoints["words"],)


def test_an_added_endpoint_on_a_stale_module_is_only_added(tmp_path):
    """A new endpoint loads fresh anyway; it is not also remodeled."""
    old = spec_from(tmp_path, BASE)
    new = spec_from(tmp_path, edited("endpoints.words", {"entrypoint": "examples.stream:words"}))
    only(plan(old, new, stale_entrypoints={"examples.stream:words"}), added=["words"])


def test_a_missing_endpoint_is_removed(tmp_path):
    """An endpoint only in the old file is removed, by name."""
    data = copy.deepcopy(BASE)
    del data["endpoints"]["echo"]
    result = plan(spec_from(tmp_path, BASE), spec_from(tmp_path, data))
    only(result, removed=["echo"])
    assert result.removed == ("echo",)


def test_a_renamed_endpoint_is_one_removed_and_one_added(tmp_path):
    """Names identify endpoints: a rename drains the old name and starts the new one."""
    data = copy.deepcopy(BASE)
    data["endpoints"]["echo_v2"] = data["endpoints"].pop("echo")
    only(plan(spec_from(tmp_path, BASE), spec_from(tmp_path, data)), added=["echo_v2"], removed=["echo"])


@pytest.mark.parametrize(
    ("dotted", "value", "key"),
    [
        ("server.max_threads", 16, "max_threads"),
        ("server.log", {"format": "json", "level": "debug"}, "log"),
        ("server.drain_timeout_s", 5, "drain_timeout_s"),
        ("server.allowed_origins", ["http://example.test"], "allowed_origins"),
        ("server.max_message_bytes", 4096, "max_message_bytes"),
    ],
)
def test_a_live_server_setting_is_listed_as_server_changed(tmp_path, dotted, value, key):
    """Server keys other than host and port apply live; the plan names the key."""
    result = plan(spec_from(tmp_path, BASE), spec_from(tmp_path, edited(dotted, value)))
    only(result, server_changed=[key])
    assert result.server_changed == (key,)


@pytest.mark.parametrize(("dotted", "value"), [("server.host", "0.0.0.0"), ("server.port", 8701)])
def test_host_or_port_needs_a_restart(tmp_path, dotted, value):
    """The listener's address can't change live: the plan says a restart is needed, and nothing else."""
    result = plan(spec_from(tmp_path, BASE), spec_from(tmp_path, edited(dotted, value)))
    only(result, needs_restart=[dotted.split(".")[1]])


def test_every_kind_of_change_at_once_lands_in_its_own_list(tmp_path):
    """One edit touching everything is split per endpoint and per server key."""
    data = edited("server.port", 9000, edited("server.max_threads", 16))
    data = edited("endpoints.tagged.options", {"tag": "v9"}, data)
    data = edited("endpoints.new", {"entrypoint": "examples.echo:echo_batch", "batch": {"max_size": 2}}, data)
    data = edited("endpoints.limits", {"entrypoint": "examples.echo:echo", "concurrency": 2}, data)
    old_data = edited("endpoints.limits", {"entrypoint": "examples.echo:echo"})
    del data["endpoints"]["echo"]
    result = plan(spec_from(tmp_path, old_data), spec_from(tmp_path, data))
    only(
        result,
        added=["new"],
        removed=["echo"],
        retuned=["limits"],
        remodeled=["tagged"],
        server_changed=["max_threads"],
        needs_restart=["port"],
    )


@pytest.mark.parametrize(
    ("dotted", "value"),
    [("endpoints.tagged.concurrency", 3), ("endpoints.tagged.options", {"tag": "v2"}), ("server.port", 1)],
)
def test_a_plan_with_any_change_is_not_empty(tmp_path, dotted, value):
    """Plan.empty tells "nothing to do" from a real change (endpoint specs from a parsed file included)."""
    assert not plan(spec_from(tmp_path, BASE), spec_from(tmp_path, edited(dotted, value))).empty
