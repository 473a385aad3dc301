"""Frozen, typed settings built from a validated servd.yaml.

After `parse()` nothing downstream sees a dict from the file or re-checks a value. This module
checks only what the file itself says (schema + cross-field rules); `servd.daemon.loading` adds the
checks that import code and probe devices.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema

from servd.config.schema import Located, Problem, SpecError, parse_yaml, validate, with_defaults
from servd.inputs.declared import TensorSpec, TensorsSpec  # what requests are checked against

__all__ = [
    "BatchSpec",
    "ClusterSpec",
    "EndpointSpec",
    "Location",
    "LogSpec",
    "OpenAISpec",
    "Problem",
    "QueueSpec",
    "ServerSpec",
    "Spec",
    "SpecError",
    "parse",
]


@dataclass(frozen=True)
class LogSpec:
    format: str = "auto"
    level: str = "info"


@dataclass(frozen=True)
class ServerSpec:
    host: str = "127.0.0.1"
    port: int = 8700
    max_threads: int = 40
    max_message_bytes: int = 16 * 1024 * 1024
    max_depth: int = 128
    max_client_buffer_bytes: int = 64 * 1024 * 1024
    max_connections: int = 10000
    allowed_origins: tuple[str, ...] = ()  # same origin only; ("*",) = any page
    allowed_hosts: tuple[str, ...] | None = None  # None = what `host` implies (webguard.default_hosts)
    tokens_file: Path | None = None
    drain_timeout_s: float = 30.0
    torch_threads: int | None = None  # None = auto
    ping_interval_s: float = 20.0
    body_timeout_s: float = 30.0  # headers to the end of an HTTP request's body
    console: bool = True  # the web console at / (handlers/console.py)
    log: LogSpec = field(default_factory=LogSpec)


@dataclass(frozen=True)
class ClusterSpec:
    """Where models run: servd's own process (local) or a Ray cluster's actors (runners.ray)."""

    engine: str = "local"  # local | ray
    address: str | None = None  # None = a private Ray instance on this machine; "auto"; host:port
    namespace: str = "servd"
    runtime_env: Mapping[str, Any] | None = None

    @property
    def on_ray(self) -> bool:
        return self.engine == "ray"


@dataclass(frozen=True)
class QueueSpec:
    max_size: int | None = None
    timeout_s: float | None = None
    max_per_client: int | None = None
    priority_levels: int = 1
    default_priority: int | None = None  # None = priority_levels, the lowest
    order: str = "fifo"  # fifo | fair
    admit: str = "always"  # always | predicted

    @property
    def default_level(self) -> int:
        return self.default_priority or self.priority_levels


@dataclass(frozen=True)
class BatchSpec:
    max_size: int = 4
    max_delay_ms: float = 5.0
    wait: str = "when_busy"  # when_busy | always


@dataclass(frozen=True)
class OpenAISpec:
    """The endpoint as an OpenAI-compatible chat model (handlers/openai.py)."""

    model: str  # the name clients pass as `model`


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    entrypoint: str
    options: Mapping[str, Any] = field(default_factory=dict)
    devices: tuple[str, ...] = ("auto",)
    concurrency: int = 1
    queue: QueueSpec = field(default_factory=QueueSpec)
    batch: BatchSpec | None = None
    api_open: bool = True
    input_schema: Mapping[str, Any] | None = None
    openai: OpenAISpec | None = None
    tensors: TensorsSpec | None = None
    replicas: int | str = 1  # engine ray: actors serving it, or "per_gpu"
    resources: Mapping[str, float] = field(default_factory=dict)  # engine ray: what each replica reserves

    @property
    def model_key(self) -> tuple[str, str, tuple[str, ...]]:
        """What a model instance is made from; a change here means loading a new model."""
        return (self.entrypoint, repr(sorted(self.options.items())), self.devices)

    @property
    def replica_shape(self) -> tuple[int | str, str, int]:
        """On a cluster, what its replicas are started with besides the model: how many, what each
        reserves, its threads (fixed when a Ray actor starts). Ignored on one machine."""
        return (self.replicas, repr(sorted(self.resources.items())), self.concurrency)


@dataclass(frozen=True)
class Location:
    """Where a key stands in the config file; printed only when a message is written."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def problem(self, dotted_path: str, message: str) -> Problem:
        return Problem(self.file, self.line, self.col, dotted_path, message)


@dataclass(frozen=True)
class Spec:
    path: Path
    server: ServerSpec
    endpoints: Mapping[str, EndpointSpec]
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    # "endpoints.x.entrypoint" -> Location; not part of equality, lines move freely.
    locations: Mapping[str, Location] = field(default_factory=dict, compare=False, repr=False)

    def where(self, dotted_path: str) -> Location:
        return self.locations.get(dotted_path, Location(str(self.path), 1, 1))

    def problem(self, dotted_path: str, message: str) -> Problem:
        """A problem with the key at `dotted_path`, located in this spec's file."""
        return self.where(dotted_path).problem(dotted_path, message)


def parse(path: str | os.PathLike[str]) -> Spec:
    """Read, validate and freeze a config file; raises SpecError listing every problem."""
    file = Path(path)
    try:
        text = file.read_text("utf-8")
    except OSError as exc:
        raise SpecError([Problem(str(file), 1, 1, "", f"cannot read the file: {exc.strerror}")]) from None
    located = parse_yaml(text, str(file))
    problems = validate(located)
    if problems:
        raise SpecError(problems)
    data = with_defaults(located.data)
    problems = _cross_field_problems(data, located)
    if problems:
        raise SpecError(problems)
    return _freeze(data, file, located)


def _cross_field_problems(data: dict[str, Any], located: Located) -> list[Problem]:
    problems = _model_name_problems(data, located) + _cluster_problems(data, located)
    max_threads = data["server"]["max_threads"]
    for name, ep in data["endpoints"].items():
        devices = ep["device"] if isinstance(ep["device"], list) else [ep["device"]]
        total = ep["concurrency"] * len(devices)
        if total > max_threads:
            per = f" ({ep['concurrency']} x {len(devices)} devices)" if len(devices) > 1 else ""
            problems.append(
                located.problem(
                    ("endpoints", name, "concurrency"),
                    f"{total}{per} calls at once exceed server.max_threads={max_threads}; "
                    "raise server.max_threads or lower concurrency",
                )
            )
        queue = ep["queue"]
        if queue["default_priority"] is not None and queue["default_priority"] > queue["priority_levels"]:
            problems.append(
                located.problem(
                    ("endpoints", name, "queue", "default_priority"),
                    f"{queue['default_priority']} is not a level: queue.priority_levels={queue['priority_levels']} "
                    "(1 is the highest level, priority_levels the lowest)",
                )
            )
        if ep["input_schema"] is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(ep["input_schema"])
            except jsonschema.SchemaError as exc:
                problems.append(
                    located.problem(("endpoints", name, "input_schema"), f"not a valid JSON Schema: {exc.message}")
                )
        if ep["tensors"] is not None:
            problems += _tensor_problems(name, ep, located)
    return problems


def _tensor_problems(name: str, ep: dict[str, Any], located: Located) -> list[Problem]:
    """Names unique per side; no input_schema beside tensors; with batch:, every first dimension -1."""
    problems: list[Problem] = []
    if ep["input_schema"] is not None:
        message = "an endpoint with tensors: has its inputs declared there; remove input_schema (or tensors)"
        problems.append(located.problem(("endpoints", name, "input_schema"), message))
    for side in ("inputs", "outputs"):
        seen: set[str] = set()
        for index, tensor in enumerate(ep["tensors"][side]):
            at = ("endpoints", name, "tensors", side, index)
            if tensor["name"] in seen:
                problems.append(located.problem((*at, "name"), f"{side[:-1]} {tensor['name']!r} is declared twice"))
            seen.add(tensor["name"])
            if ep["batch"] is not None and tensor["shape"][0] != -1:
                message = (
                    f"{tensor['shape']}: with batch:, the first dimension is the rows, stacked across requests; "
                    f"write -1 first (e.g. {[-1, *tensor['shape'][1:]]})"
                )
                problems.append(located.problem((*at, "shape"), message))
    return problems


def _cluster_problems(data: dict[str, Any], located: Located) -> list[Problem]:
    """A Ray client address can't carry servd's per-batch calls; on Ray a replica is one device."""
    cluster = data["cluster"]
    problems: list[Problem] = []
    address = cluster["address"]
    if isinstance(address, str) and address.startswith("ray://"):
        message = (
            f"{address!r}: Ray Client (ray://) addresses are refused: every batch would cross the client's "
            "proxy, and its connection failing ends the session. Run servd on a node of the cluster and write "
            "the head's GCS address (host:6379) or auto"
        )
        problems.append(located.problem(("cluster", "address"), message))
    if cluster["engine"] != "ray":
        return problems
    for name, ep in data["endpoints"].items():
        if isinstance(ep["device"], list):
            message = (
                "with cluster.engine: ray each replica holds one model on one device; "
                "write one device and set replicas (and resources.num_gpus) instead of a list"
            )
            problems.append(located.problem(("endpoints", name, "device"), message))
        if ep["tensors"] is not None:
            message = "declared tensors are not served through cluster.engine: ray yet; use engine: local"
            problems.append(located.problem(("endpoints", name, "tensors"), message))
    return problems


def _model_name_problems(data: dict[str, Any], located: Located) -> list[Problem]:
    """Each OpenAI model name names one endpoint: a request's `model` must find exactly one."""
    problems: list[Problem] = []
    served_by: dict[str, str] = {}
    for name, ep in data["endpoints"].items():
        if ep["openai"] is None:
            continue
        model = ep["openai"]["model"] or name
        if model in served_by:
            message = f"model {model!r} is served by endpoint {served_by[model]!r} already; give each its own"
            problems.append(located.problem(("endpoints", name, "openai", "model"), message))
        served_by.setdefault(model, name)
    return problems


def _freeze(data: dict[str, Any], file: Path, located: Located) -> Spec:
    server = dict(data["server"])
    log = LogSpec(**server.pop("log"))
    tokens = server.pop("tokens_file")
    torch_threads = server.pop("torch_threads")
    server_spec = ServerSpec(
        host=server["host"],
        port=server["port"],
        max_threads=server["max_threads"],
        max_message_bytes=server["max_message_bytes"],
        max_depth=server["max_depth"],
        max_client_buffer_bytes=server["max_client_buffer_bytes"],
        max_connections=server["max_connections"],
        allowed_origins=tuple(server["allowed_origins"]),
        allowed_hosts=None if server["allowed_hosts"] is None else tuple(server["allowed_hosts"]),
        tokens_file=(file.parent / tokens).resolve() if tokens else None,
        drain_timeout_s=float(server["drain_timeout_s"]),
        torch_threads=None if torch_threads == "auto" else torch_threads,
        ping_interval_s=float(server["ping_interval_s"]),
        body_timeout_s=float(server["body_timeout_s"]),
        console=server["console"],
        log=log,
    )
    endpoints = {name: _endpoint(name, ep) for name, ep in data["endpoints"].items()}
    cluster = data["cluster"]
    cluster_spec = ClusterSpec(
        engine=cluster["engine"],
        address=cluster["address"],
        namespace=cluster["namespace"],
        runtime_env=None if cluster["runtime_env"] is None else MappingProxyType(dict(cluster["runtime_env"])),
    )
    locations = {
        ".".join(str(p) for p in path): Location(str(file), line, col) for path, (line, col) in located.marks.items()
    }
    return Spec(
        path=Path(os.path.abspath(file)),  # not resolve(): a symlink swapped later must still be followed
        server=server_spec,
        endpoints=MappingProxyType(endpoints),
        cluster=cluster_spec,
        locations=MappingProxyType(locations),
    )


def _endpoint(name: str, ep: dict[str, Any]) -> EndpointSpec:
    device = ep["device"]
    batch = ep["batch"]
    return EndpointSpec(
        name=name,
        entrypoint=ep["entrypoint"],
        options=MappingProxyType(dict(ep["options"])),
        devices=tuple(device) if isinstance(device, list) else (device,),
        concurrency=ep["concurrency"],
        queue=QueueSpec(**ep["queue"]),
        batch=BatchSpec(max_size=batch["max_size"], max_delay_ms=float(batch["max_delay_ms"]), wait=batch["wait"])
        if batch
        else None,
        api_open=ep["api_open"],
        input_schema=MappingProxyType(ep["input_schema"]) if ep["input_schema"] is not None else None,
        openai=None if ep["openai"] is None else OpenAISpec(model=ep["openai"]["model"] or name),
        tensors=_tensors(ep["tensors"]),
        replicas=ep["replicas"],
        resources=MappingProxyType({k: float(v) for k, v in ep["resources"].items() if v is not None}),
    )


def _tensors(block: dict[str, Any] | None) -> TensorsSpec | None:
    if block is None:
        return None

    def side(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in items)

    return TensorsSpec(side(block["inputs"]), side(block["outputs"]), block["as"])
