"""servd.config.spec.parse: a servd.yaml becomes a frozen Spec, or a SpecError listing every problem.

Every problem names the file, the line and column of the offending key and its dotted path.
The defaults and the allowed keys are read from schemas/servd.schema.json, never restated here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from servd.config.schema import SpecError
from servd.config.spec import BatchSpec, LogSpec, QueueSpec, ServerSpec, Spec, parse

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "schemas" / "servd.schema.json").read_text("utf-8"))
SERVER_PROPS = SCHEMA["properties"]["server"]["properties"]
ENDPOINT_PROPS = SCHEMA["$defs"]["endpoint"]["properties"]


def write(tmp_path: Path, text: str, name: str = "servd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def problems_of(path: Path) -> list[Any]:
    with pytest.raises(SpecError) as caught:
        parse(path)
    return caught.value.problems


def only_problem(path: Path) -> Any:
    problems = problems_of(path)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def defaults(node: dict[str, Any]) -> dict[str, Any]:
    """The schema's default for every property of an object, nested objects expanded."""
    out = {}
    for key, sub in node["properties"].items():
        if sub.get("type") == "object" and "properties" in sub:
            out[key] = defaults(sub)
        elif "default" in sub:
            out[key] = sub["default"]
    return out


def as_file_values(value: Any) -> Any:
    """A frozen spec value as the file would spell it: tuples as lists, mappings as dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_file_values(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [as_file_values(v) for v in value]
    if hasattr(value, "items"):
        return {k: as_file_values(v) for k, v in value.items()}
    return value


MINIMAL = """\
version: 1
endpoints:
  plain:
    entrypoint: examples.echo:echo
  batched:
    entrypoint: examples.echo:echo_batch
    batch: {}
"""


# -- the default file and defaults ---------------------------------------------------------


def test_the_repository_servd_yaml_parses():
    """The shipped ./servd.yaml is a valid config with its four endpoints."""
    spec = parse(REPO / "servd.yaml")
    assert isinstance(spec, Spec)
    assert list(spec.endpoints) == ["echo", "classify", "words", "chat", "simple"]
    classify = spec.endpoints["classify"]
    assert classify.batch == BatchSpec(max_size=32, max_delay_ms=5.0)
    assert classify.devices == ("cpu",)
    assert classify.input_schema is not None and classify.input_schema["type"] == "array"


def test_omitted_server_keys_take_the_schema_defaults(tmp_path):
    """A file without `server:` gets every server default the schema declares, log included."""
    spec = parse(write(tmp_path, MINIMAL))
    server = as_file_values(spec.server)
    server["torch_threads"] = "auto" if server["torch_threads"] is None else server["torch_threads"]
    assert server == defaults(SCHEMA["properties"]["server"])


def test_omitted_endpoint_keys_take_the_schema_defaults(tmp_path):
    """An endpoint with only an entrypoint gets each endpoint default the schema declares."""
    endpoint = parse(write(tmp_path, MINIMAL)).endpoints["plain"]
    expected = defaults(SCHEMA["$defs"]["endpoint"])
    assert set(expected) == {
        "options", "device", "concurrency", "queue", "batch", "api_open", "input_schema", "openai", "tensors",
        "replicas", "resources",
    }  # fmt: skip
    assert dict(endpoint.options) == expected["options"]
    assert endpoint.devices == (expected["device"],)
    assert endpoint.concurrency == expected["concurrency"]
    assert as_file_values(endpoint.queue) == expected["queue"]
    assert endpoint.batch is expected["batch"] is None
    assert endpoint.api_open is expected["api_open"]
    assert endpoint.input_schema is expected["input_schema"] is None
    assert endpoint.openai is expected["openai"] is None
    assert endpoint.tensors is expected["tensors"] is None
    assert endpoint.replicas == expected["replicas"] == 1
    assert dict(endpoint.resources) == {"num_cpus": 1, "num_gpus": 0}  # memory_gb: null reserves none


def test_an_empty_batch_block_takes_the_schema_batch_defaults(tmp_path):
    """`batch: {}` turns batching on with the schema's max_size and max_delay_ms."""
    endpoint = parse(write(tmp_path, MINIMAL)).endpoints["batched"]
    assert as_file_values(endpoint.batch) == defaults(ENDPOINT_PROPS["batch"])


def test_the_dataclass_defaults_agree_with_the_schema():
    """Spec classes built in code (tests, tools) get the same defaults as an omitted key in the file."""
    server = as_file_values(ServerSpec())
    server["torch_threads"] = "auto" if server["torch_threads"] is None else server["torch_threads"]
    assert server == defaults(SCHEMA["properties"]["server"])
    assert as_file_values(LogSpec()) == defaults(SERVER_PROPS["log"])
    assert as_file_values(QueueSpec()) == defaults(ENDPOINT_PROPS["queue"])
    assert as_file_values(BatchSpec()) == defaults(ENDPOINT_PROPS["batch"])


def test_a_device_list_parses_into_a_tuple(tmp_path):
    """`device: [cpu, cuda:1]` keeps the order, one model instance per entry."""
    path = write(
        tmp_path,
        "version: 1\nendpoints:\n  e:\n    entrypoint: examples.echo:echo\n    device: [cpu, 'cuda:1']\n",
    )
    assert parse(path).endpoints["e"].devices == ("cpu", "cuda:1")


def test_a_single_device_parses_into_a_one_tuple(tmp_path):
    """`device: cpu` is the same as a list of one."""
    path = write(tmp_path, "version: 1\nendpoints:\n  e:\n    entrypoint: examples.echo:echo\n    device: cpu\n")
    assert parse(path).endpoints["e"].devices == ("cpu",)


def test_a_relative_tokens_file_is_relative_to_the_config_file(tmp_path):
    """tokens_file: tokens.txt means the file next to servd.yaml, whatever the working directory."""
    path = write(tmp_path, "version: 1\nserver: {tokens_file: tokens.txt}\nendpoints: {e: {entrypoint: a:b}}\n")
    assert parse(path).server.tokens_file == (tmp_path / "tokens.txt").resolve()


def test_torch_threads_auto_is_none_and_a_number_is_kept(tmp_path):
    """torch_threads: auto leaves the choice to the daemon (None); a number is used as is."""
    auto = write(tmp_path, "version: 1\nendpoints: {e: {entrypoint: a:b}}\n", "auto.yaml")
    fixed = write(tmp_path, "version: 1\nserver: {torch_threads: 3}\nendpoints: {e: {entrypoint: a:b}}\n")
    assert parse(auto).server.torch_threads is None
    assert parse(fixed).server.torch_threads == 3


def test_a_yaml_date_stays_the_text_written(tmp_path):
    """An unquoted date in options reaches the entrypoint as its text: config values are JSON."""
    path = write(tmp_path, "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    options: {since: 2024-01-31}\n")
    assert parse(path).endpoints["e"].options["since"] == "2024-01-31"


# -- frozen --------------------------------------------------------------------------------


def test_spec_objects_are_frozen(tmp_path):
    """Nothing downstream can change a parsed spec: attribute assignment raises."""
    spec = parse(write(tmp_path, MINIMAL))
    endpoint = spec.endpoints["batched"]
    assert endpoint.batch is not None
    for obj, attr, value in [
        (spec, "path", tmp_path),
        (spec.server, "port", 1),
        (spec.server.log, "level", "debug"),
        (endpoint, "concurrency", 9),
        (endpoint.queue, "max_size", 1),
        (endpoint.batch, "max_size", 1),
    ]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attr, value)


def test_spec_mappings_are_read_only(tmp_path):
    """The endpoints table and an endpoint's options can't be changed in place either."""
    path = write(tmp_path, "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    options: {hidden: 64}\n")
    spec = parse(path)
    with pytest.raises(TypeError):
        spec.endpoints["other"] = spec.endpoints["e"]  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.endpoints["e"].options["hidden"] = 1  # type: ignore[index]


# -- unknown keys --------------------------------------------------------------------------

UNKNOWN_KEY_CASES = {
    # level: (file text, line, col, dotted path, the schema properties allowed there)
    "top": (
        "version: 1\nendpoint: {}\nendpoints: {e: {entrypoint: a:b}}\n",
        2,
        1,
        "endpoint",
        SCHEMA["properties"],
    ),
    "server": (
        "version: 1\nserver:\n  host: 127.0.0.1\n  threads: 4\nendpoints: {e: {entrypoint: a:b}}\n",
        4,
        3,
        "server.threads",
        SERVER_PROPS,
    ),
    "log": (
        "version: 1\nserver:\n  log:\n    format: json\n    lvl: info\nendpoints: {e: {entrypoint: a:b}}\n",
        5,
        5,
        "server.log.lvl",
        SERVER_PROPS["log"]["properties"],
    ),
    "endpoint": (
        "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    workers: 2\n",
        5,
        5,
        "endpoints.e.workers",
        ENDPOINT_PROPS,
    ),
    "queue": (
        "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    queue:\n      size: 3\n",
        6,
        7,
        "endpoints.e.queue.size",
        ENDPOINT_PROPS["queue"]["properties"],
    ),
    "batch": (
        "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    batch:\n      max_size: 8\n      delay_ms: 3\n",
        7,
        7,
        "endpoints.e.batch.delay_ms",
        ENDPOINT_PROPS["batch"]["properties"],
    ),
}


@pytest.mark.parametrize("level", list(UNKNOWN_KEY_CASES))
def test_an_unknown_key_is_an_error_at_the_key_listing_the_allowed_keys(tmp_path, level):
    """A misspelt key at any level is reported where it is written, with every key allowed there."""
    text, line, col, dotted, allowed = UNKNOWN_KEY_CASES[level]
    path = write(tmp_path, text)
    problem = only_problem(path)
    key = dotted.rsplit(".", 1)[-1]
    assert (problem.file, problem.line, problem.col, problem.path) == (str(path), line, col, dotted)
    assert f"unknown key '{key}'" in problem.message
    for name in allowed:
        assert name in problem.message


def test_an_unknown_key_close_to_a_real_one_suggests_it(tmp_path):
    """`max_sise` gets a "did you mean 'max_size'?" hint."""
    path = write(tmp_path, "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    batch: {max_sise: 8}\n")
    assert "did you mean 'max_size'?" in only_problem(path).message


# -- locations -----------------------------------------------------------------------------

CLASSIFY = """\
# yaml-language-server: $schema=schemas/servd.schema.json
version: 1
endpoints:
  classify:
    entrypoint: examples.digits:Classifier
    batch:
      max_size: -1
      max_delay_ms: 5
"""


def test_an_out_of_range_value_is_reported_at_its_key_with_the_dotted_path(tmp_path):
    """The design's own example, to the character: file:line:col: path: message."""
    path = write(tmp_path, CLASSIFY)
    problem = only_problem(path)
    assert str(problem) == f"{path}:7:7: endpoints.classify.batch.max_size: -1 is less than the minimum of 1"


def test_a_wrong_type_is_reported_at_its_key(tmp_path):
    """`port: "80"` (a string) is a type error at the port key."""
    path = write(tmp_path, 'version: 1\nserver:\n  host: 0.0.0.0\n  port: "80"\nendpoints: {e: {entrypoint: a:b}}\n')
    problem = only_problem(path)
    assert (problem.line, problem.col, problem.path) == (4, 3, "server.port")
    assert "'80' is not of type 'integer'" in problem.message


def test_a_float_where_an_integer_is_expected_is_an_error(tmp_path):
    """`concurrency: 2.0` is rejected rather than served as a float."""
    path = write(tmp_path, "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    concurrency: 2.0\n")
    problem = only_problem(path)
    assert (problem.line, problem.col, problem.path) == (5, 5, "endpoints.e.concurrency")
    assert "2.0 is not of type 'integer'" in problem.message


def test_a_missing_entrypoint_is_reported_at_the_endpoint_name(tmp_path):
    """A required key that is absent points at the mapping that lacks it."""
    path = write(tmp_path, "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n  broken:\n    concurrency: 2\n")
    problem = only_problem(path)
    assert (problem.line, problem.col, problem.path) == (5, 3, "endpoints.broken")
    assert "'entrypoint' is a required property" in problem.message


def test_a_bad_device_in_a_list_is_reported_at_that_item(tmp_path):
    """`device: [cpu, tpu]` names the second item and what a device may be."""
    path = write(tmp_path, "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    device: [cpu, tpu]\n")
    problem = only_problem(path)
    assert (problem.line, problem.col, problem.path) == (5, 19, "endpoints.e.device.1")
    assert "'tpu'" in problem.message and "cuda" in problem.message


def test_a_bad_torch_threads_says_the_minimum(tmp_path):
    """For a one-of key (auto or a number) the error is the fitting branch's: the minimum of 1."""
    path = write(tmp_path, "version: 1\nserver: {torch_threads: 0}\nendpoints: {e: {entrypoint: a:b}}\n")
    problem = only_problem(path)
    assert problem.path == "server.torch_threads"
    assert problem.message == "0 is less than the minimum of 1"


def test_a_bad_endpoint_name_is_reported_at_the_name(tmp_path):
    """An endpoint name that can't be a URL segment is an error at that name."""
    path = write(tmp_path, "version: 1\nendpoints:\n  good:\n    entrypoint: a:b\n  bad name:\n    entrypoint: a:b\n")
    problem = only_problem(path)
    assert (problem.line, problem.col, problem.path) == (5, 3, "endpoints.bad name")


def test_several_problems_are_all_reported_in_file_order(tmp_path):
    """One SpecError carries every schema problem of the file, sorted by position."""
    text = (
        "version: 1\n"  # 1
        "server:\n"  # 2
        "  port: 70000\n"  # 3
        "  colour: red\n"  # 4
        "endpoints:\n"  # 5
        "  e:\n"  # 6
        "    entrypoint: not-a-ref\n"  # 7
        "    queue: {max_size: 0}\n"  # 8
        "    api_open: maybe\n"  # 9
    )
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert [(p.line, p.path) for p in problems] == [
        (3, "server.port"),
        (4, "server.colour"),
        (7, "endpoints.e.entrypoint"),
        (8, "endpoints.e.queue.max_size"),
        (9, "endpoints.e.api_open"),
    ]
    assert all(p.file == str(path) for p in problems)


def test_the_error_text_is_one_line_per_problem(tmp_path):
    """str(SpecError) is what the CLI prints: one file:line:col line per problem."""
    path = write(tmp_path, "version: 1\nserver: {port: -1, host: ''}\nendpoints: {e: {entrypoint: a:b}}\n")
    with pytest.raises(SpecError) as caught:
        parse(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == len(caught.value.problems) == 2
    assert all(line.startswith(f"{path}:2:") for line in lines)


# -- the file as a whole -------------------------------------------------------------------


def test_a_yaml_syntax_error_reports_its_line(tmp_path):
    """An unclosed flow list is a YAML error at the line where the parser gave up."""
    path = write(tmp_path, "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    device: [cpu\n  f: {}\n")
    problem = only_problem(path)
    assert problem.line == 6
    assert problem.message.startswith("YAML syntax error:")


def test_a_duplicate_key_is_an_error_at_its_second_occurrence(tmp_path):
    """YAML would silently keep the last of two keys; servd refuses the file instead."""
    text = "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    concurrency: 1\n    concurrency: 2\n"
    path = write(tmp_path, text)
    problem = only_problem(path)
    assert (problem.line, problem.col, problem.path, problem.message) == (
        6,
        5,
        "endpoints.e.concurrency",
        "duplicate key",
    )


def test_a_duplicate_endpoint_is_an_error(tmp_path):
    """Two endpoints of the same name are a duplicate key, not the second one winning."""
    path = write(tmp_path, "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n  e:\n    entrypoint: c:d\n")
    problem = only_problem(path)
    assert (problem.line, problem.path, problem.message) == (5, "endpoints.e", "duplicate key")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_file_is_an_error_saying_what_it_needs(tmp_path, text):
    """A file with no content says that version and endpoints are needed."""
    problem = only_problem(write(tmp_path, text))
    assert (problem.line, problem.col) == (1, 1)
    assert "empty" in problem.message and "version" in problem.message and "endpoints" in problem.message


def test_a_file_that_is_not_a_mapping_is_an_error(tmp_path):
    """A top-level list is a type error at 1:1."""
    problem = only_problem(write(tmp_path, "- version: 1\n"))
    assert (problem.line, problem.col) == (1, 1)
    assert "is not of type 'object'" in problem.message


def test_missing_version_and_endpoints_are_both_reported(tmp_path):
    """A file with only `server:` lacks both required keys, and says so twice."""
    problems = problems_of(write(tmp_path, "server: {port: 8000}\n"))
    messages = sorted(p.message for p in problems)
    assert messages == ["'endpoints' is a required property", "'version' is a required property"]


def test_an_unknown_version_is_an_error(tmp_path):
    """version: 2 does not exist yet."""
    problem = only_problem(write(tmp_path, "version: 2\nendpoints: {e: {entrypoint: a:b}}\n"))
    assert (problem.line, problem.path) == (1, "version")


def test_no_endpoints_is_an_error(tmp_path):
    """`endpoints: {}` would serve nothing."""
    problem = only_problem(write(tmp_path, "version: 1\nendpoints: {}\n"))
    assert (problem.line, problem.path) == (2, "endpoints")


def test_a_missing_file_is_a_spec_error(tmp_path):
    """A path that doesn't exist is reported as a problem, not a traceback."""
    problem = only_problem(tmp_path / "nope.yaml")
    assert problem.message.startswith("cannot read the file")


def test_a_non_string_key_is_an_error(tmp_path):
    """`1: x` is a key YAML allows and servd doesn't."""
    problem = only_problem(write(tmp_path, "version: 1\n1: x\nendpoints: {e: {entrypoint: a:b}}\n"))
    assert (problem.line, problem.col) == (2, 1)
    assert "must be a string" in problem.message


def test_a_merge_key_is_an_error_not_a_traceback(tmp_path):
    """YAML merge keys aren't supported; the file is refused with a message at the `<<`."""
    text = "version: 1\nendpoints:\n  e: &base\n    entrypoint: a:b\n  f:\n    <<: *base\n    concurrency: 2\n"
    problem = only_problem(write(tmp_path, text))
    assert (problem.line, problem.col, problem.path) == (6, 5, "endpoints.f")
    assert "merge keys" in problem.message


def test_a_python_tag_is_an_error_not_a_traceback(tmp_path):
    """The safe loader refuses python/* tags; that is a problem in the file, reported at the value."""
    text = "version: 1\nendpoints:\n  e:\n    entrypoint: !!python/name:os.system\n"
    problem = only_problem(write(tmp_path, text))
    assert (problem.line, problem.path) == (4, "endpoints.e.entrypoint")
    assert "cannot read this value" in problem.message


def test_a_recursive_alias_is_an_error_not_a_traceback(tmp_path):
    """An anchor that contains its own alias can't become data."""
    text = "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    options: &o {inner: *o}\n"
    problem = only_problem(write(tmp_path, text))
    assert problem.path == "endpoints.e.options.inner"
    assert "recursive" in problem.message


# -- cross-field rules ---------------------------------------------------------------------


def test_concurrency_above_max_threads_is_an_error_at_concurrency(tmp_path):
    """An endpoint can't run more calls at once than the shared pool has threads."""
    text = "version: 1\nserver:\n  max_threads: 4\nendpoints:\n  e:\n    entrypoint: a:b\n    concurrency: 5\n"
    problem = only_problem(write(tmp_path, text))
    assert (problem.line, problem.col, problem.path) == (7, 5, "endpoints.e.concurrency")
    assert "max_threads=4" in problem.message


def test_concurrency_equal_to_max_threads_is_fine(tmp_path):
    """The limit is inclusive."""
    text = "version: 1\nserver:\n  max_threads: 4\nendpoints:\n  e:\n    entrypoint: a:b\n    concurrency: 4\n"
    assert parse(write(tmp_path, text)).endpoints["e"].concurrency == 4


def test_concurrency_times_devices_above_max_threads_is_an_error(tmp_path):
    """concurrency is per device: 2 x 2 devices needs 4 threads, and 3 are not enough."""
    text = (
        "version: 1\nserver:\n  max_threads: 3\nendpoints:\n  e:\n    entrypoint: a:b\n"
        "    device: [cpu, cpu]\n    concurrency: 2\n"
    )
    problem = only_problem(write(tmp_path, text))
    assert (problem.line, problem.path) == (8, "endpoints.e.concurrency")
    assert "2 x 2 devices" in problem.message and "max_threads=3" in problem.message


def test_concurrency_times_devices_within_max_threads_is_fine(tmp_path):
    """2 x 2 devices fits in 4 threads."""
    text = (
        "version: 1\nserver:\n  max_threads: 4\nendpoints:\n  e:\n    entrypoint: a:b\n"
        "    device: [cpu, cpu]\n    concurrency: 2\n"
    )
    assert parse(write(tmp_path, text)).endpoints["e"].devices == ("cpu", "cpu")


def test_the_default_max_threads_applies_to_the_concurrency_check(tmp_path):
    """Without server.max_threads the schema's default is the limit."""
    limit = SERVER_PROPS["max_threads"]["default"]
    ok = write(tmp_path, f"version: 1\nendpoints: {{e: {{entrypoint: a:b, concurrency: {limit}}}}}\n", "ok.yaml")
    over = write(tmp_path, f"version: 1\nendpoints: {{e: {{entrypoint: a:b, concurrency: {limit + 1}}}}}\n")
    assert parse(ok).endpoints["e"].concurrency == limit
    assert only_problem(over).path == "endpoints.e.concurrency"


def test_an_invalid_input_schema_is_an_error_at_input_schema(tmp_path):
    """input_schema must itself be a valid JSON Schema; `type: 12` is not."""
    text = "version: 1\nendpoints:\n  e:\n    entrypoint: a:b\n    input_schema:\n      type: 12\n"
    problem = only_problem(write(tmp_path, text))
    assert (problem.line, problem.col, problem.path) == (5, 5, "endpoints.e.input_schema")
    assert problem.message.startswith("not a valid JSON Schema")


def test_cross_field_problems_of_several_endpoints_are_reported_together(tmp_path):
    """Both the thread limit and the bad input_schema are in the same SpecError."""
    text = (
        "version: 1\nserver: {max_threads: 2}\nendpoints:\n"
        "  a:\n    entrypoint: a:b\n    concurrency: 3\n"
        "  b:\n    entrypoint: a:b\n    input_schema: {minimum: one}\n"
    )
    problems = problems_of(write(tmp_path, text))
    assert [(p.line, p.path) for p in problems] == [(6, "endpoints.a.concurrency"), (9, "endpoints.b.input_schema")]
