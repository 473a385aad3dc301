"""servd.daemon.loading.load_checked: the file, then each entrypoint imports and is callable, each device exists.

Entrypoint modules are written next to the yaml (its directory goes on sys.path), each under a
name no other test uses, so a module cached in sys.modules by one test never answers another.
"""

from __future__ import annotations

import itertools
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from servd.config.schema import SpecError
from servd.daemon.loading import load_checked

_names = itertools.count()


@pytest.fixture(autouse=True)
def _isolated_imports(monkeypatch):
    """sys.path and sys.modules as they were before the test, whatever it imported."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("servd_check_test_"):
            del sys.modules[name]


def module(tmp_path: Path, source: str) -> str:
    """Write a module next to the yaml under a fresh name; returns the name."""
    name = f"servd_check_test_{os.getpid()}_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), "utf-8")
    return name


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "servd.yaml"
    path.write_text(text, "utf-8")
    return path


def one_endpoint(tmp_path: Path, entrypoint: str, *extra: str) -> Path:
    lines = ["version: 1", "endpoints:", "  e:", f"    entrypoint: {entrypoint}", *extra]
    return write(tmp_path, "\n".join(lines) + "\n")


def problems_of(path: Path) -> list[Any]:
    with pytest.raises(SpecError) as caught:
        load_checked(path)
    return caught.value.problems


def only_problem(path: Path) -> Any:
    problems = problems_of(path)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def test_a_function_next_to_the_yaml_passes(tmp_path):
    """A module beside servd.yaml imports from there, wherever the process was started."""
    name = module(tmp_path, "def double(x):\n    return 2 * x\n")
    spec = load_checked(one_endpoint(tmp_path, f"{name}:double")).spec
    assert list(spec.endpoints) == ["e"]


def test_a_class_and_a_generator_pass(tmp_path):
    """A class with __call__ and a generator function are both valid entrypoints."""
    name = module(
        tmp_path,
        """
        class Model:
            def __init__(self, device="cpu"):
                self.device = device

            def __call__(self, x):
                return x


        def stream(x):
            yield x
        """,
    )
    text = f"version: 1\nendpoints:\n  m:\n    entrypoint: {name}:Model\n  s:\n    entrypoint: {name}:stream\n"
    assert list(load_checked(write(tmp_path, text)).spec.endpoints) == ["m", "s"]


def test_the_repository_servd_yaml_passes():
    """The shipped config checks clean: examples import, devices exist."""
    spec = load_checked(Path(__file__).resolve().parent.parent / "servd.yaml").spec
    assert set(spec.endpoints) == {"echo", "classify", "words", "chat", "simple"}


def test_a_module_that_does_not_exist_is_an_error_at_the_entrypoint(tmp_path):
    """The error names the module, hints where it should be, and points at the entrypoint key."""
    path = one_endpoint(tmp_path, "servd_check_test_absent:fn")
    problem = only_problem(path)
    assert (problem.file, problem.line, problem.col, problem.path) == (str(path), 4, 5, "endpoints.e.entrypoint")
    assert "cannot import 'servd_check_test_absent'" in problem.message
    assert "next to servd.yaml" in problem.message


def test_an_attribute_that_does_not_exist_is_an_error(tmp_path):
    """`module:missing` names both the module and the attribute."""
    name = module(tmp_path, "def present(x):\n    return x\n")
    problem = only_problem(one_endpoint(tmp_path, f"{name}:absent"))
    assert (problem.line, problem.path) == (4, "endpoints.e.entrypoint")
    assert f"module {name!r} has no attribute 'absent'" in problem.message


def test_a_non_callable_is_an_error(tmp_path):
    """An entrypoint that names a number says what it is instead of a function or class."""
    name = module(tmp_path, "THRESHOLD = 3\n")
    problem = only_problem(one_endpoint(tmp_path, f"{name}:THRESHOLD"))
    assert problem.path == "endpoints.e.entrypoint"
    assert "is a int, not a function or class" in problem.message


def test_an_async_function_is_an_error(tmp_path):
    """Entrypoints run on worker threads; an async def is refused with that reason."""
    name = module(tmp_path, "async def predict(x):\n    return x\n")
    problem = only_problem(one_endpoint(tmp_path, f"{name}:predict"))
    assert problem.path == "endpoints.e.entrypoint"
    assert "is async" in problem.message and "plain def" in problem.message


def test_an_async_generator_is_an_error(tmp_path):
    """An async generator is refused like an async function."""
    name = module(tmp_path, "async def stream(x):\n    yield x\n")
    assert "is async" in only_problem(one_endpoint(tmp_path, f"{name}:stream")).message


def test_a_class_with_an_async_call_is_an_error(tmp_path):
    """A class whose __call__ is async is refused too."""
    name = module(tmp_path, "class Model:\n    async def __call__(self, x):\n        return x\n")
    assert "is async" in only_problem(one_endpoint(tmp_path, f"{name}:Model")).message


def test_a_class_without_call_is_an_error(tmp_path):
    """Instances of the class must be callable."""
    name = module(tmp_path, "class Model:\n    pass\n")
    assert "without __call__" in only_problem(one_endpoint(tmp_path, f"{name}:Model")).message


def test_a_module_that_raises_on_import_is_an_error(tmp_path):
    """An import-time exception is reported with its type and message, not as a traceback."""
    name = module(tmp_path, "raise RuntimeError('no weights here')\n")
    problem = only_problem(one_endpoint(tmp_path, f"{name}:fn"))
    assert problem.path == "endpoints.e.entrypoint"
    assert "raised RuntimeError: no weights here" in problem.message


def test_a_missing_cuda_device_is_an_error_at_the_device_key(tmp_path):
    """`device: cuda:N` past the GPUs torch sees is an error naming the device, at its key."""
    import torch

    device = f"cuda:{torch.cuda.device_count()}"
    name = module(tmp_path, "import torch\n\ndef predict(x):\n    return x\n")
    path = one_endpoint(tmp_path, f"{name}:predict", f"    device: '{device}'")
    problem = only_problem(path)
    assert (problem.file, problem.line, problem.col, problem.path) == (str(path), 5, 5, "endpoints.e.device")
    assert f"device {device!r} does not exist" in problem.message


def test_a_cuda_device_for_code_without_torch_is_an_error(tmp_path):
    """A GPU device for an entrypoint that doesn't import torch is refused, naming the device.

    (If another test already imported torch, the reason is the missing GPU instead; both name it.)
    """
    name = module(tmp_path, "def predict(x):\n    return x\n")
    problem = only_problem(one_endpoint(tmp_path, f"{name}:predict", "    device: 'cuda:4095'"))
    assert (problem.line, problem.path) == (5, "endpoints.e.device")
    assert "'cuda:4095'" in problem.message


def test_auto_and_cpu_devices_pass_on_any_machine(tmp_path):
    """auto falls back to cpu; cpu always exists."""
    name = module(tmp_path, "def predict(x):\n    return x\n")
    path = one_endpoint(tmp_path, f"{name}:predict", "    device: [auto, cpu]")
    assert load_checked(path).spec.endpoints["e"].devices == ("auto", "cpu")


def test_all_problems_are_reported_together(tmp_path):
    """Every endpoint's problem is in one SpecError, in file order, each at its own line."""
    name = module(tmp_path, "THRESHOLD = 3\n\nasync def predict(x):\n    return x\n\ndef ok(x):\n    return x\n")
    text = (
        "version: 1\n"  # 1
        "endpoints:\n"  # 2
        "  missing_module:\n"  # 3
        "    entrypoint: servd_check_test_absent:fn\n"  # 4
        "  missing_attr:\n"  # 5
        f"    entrypoint: {name}:absent\n"  # 6
        "  not_callable:\n"  # 7
        f"    entrypoint: {name}:THRESHOLD\n"  # 8
        "  is_async:\n"  # 9
        f"    entrypoint: {name}:predict\n"  # 10
        "  bad_device:\n"  # 11
        f"    entrypoint: {name}:ok\n"  # 12
        "    device: 'cuda:4095'\n"  # 13
        "  fine:\n"  # 14
        f"    entrypoint: {name}:ok\n"  # 15
    )
    problems = problems_of(write(tmp_path, text))
    assert [(p.line, p.path) for p in problems] == [
        (4, "endpoints.missing_module.entrypoint"),
        (6, "endpoints.missing_attr.entrypoint"),
        (8, "endpoints.not_callable.entrypoint"),
        (10, "endpoints.is_async.entrypoint"),
        (13, "endpoints.bad_device.device"),
    ]


def test_a_schema_error_does_not_hide_a_broken_entrypoint_in_the_same_endpoint(tmp_path):
    """One pass, like a compiler: the schema error and the import error are both reported, in file order (#11)."""
    name = module(tmp_path, "def fn(x):\n    return x\n")
    path = one_endpoint(tmp_path, f"{name}:missing", "    concurrency: 0")
    assert [(p.line, p.path) for p in problems_of(path)] == [
        (4, "endpoints.e.entrypoint"),
        (5, "endpoints.e.concurrency"),
    ]


def test_a_schema_error_does_not_hide_a_broken_entrypoint_elsewhere(tmp_path):
    """A schema error in one endpoint, an unimportable module and a missing device in others: all three (#11)."""
    text = (
        "version: 1\nendpoints:\n"
        "  bad_limit:\n    entrypoint: examples.echo:echo\n    queue: {max_size: -1}\n"
        "  bad_module:\n    entrypoint: no_such_module_here:fn\n"
        "  bad_device:\n    entrypoint: examples.echo:echo\n    device: cuda:7\n"
    )
    assert [p.path for p in problems_of(write(tmp_path, text))] == [
        "endpoints.bad_limit.queue.max_size",
        "endpoints.bad_module.entrypoint",
        "endpoints.bad_device.device",
    ]


def test_a_malformed_entrypoint_is_reported_once(tmp_path):
    """An entrypoint the schema already refused (not module:attribute) is not also imported."""
    path = one_endpoint(tmp_path, "not an entrypoint")
    assert [p.path for p in problems_of(path)] == ["endpoints.e.entrypoint"]


def test_a_generator_cannot_serve_declared_tensors(tmp_path):
    """An endpoint with tensors: returns its outputs; a generator there is refused by the check (issue 18)."""
    text = """version: 1
endpoints:
  t:
    entrypoint: examples.stream:words
    tensors:
      inputs: [{name: x, datatype: FP32, shape: [2]}]
      outputs: [{name: y, datatype: FP32, shape: [2]}]
"""
    with pytest.raises(SpecError) as caught:
        load_checked(write(tmp_path, text))
    assert "endpoints.t.tensors: examples.stream:words is a generator" in str(caught.value)


# -- options bind to the constructor (issue 24: `options: {dimm: 3}` passed check, then `servd run` failed) --

MODEL_WITH_OPTIONS = """
class Model:
    def __init__(self, dim, scale=1.0, device="cpu"):
        self.dim = dim

    def __call__(self, x):
        return x
"""


def test_an_option_the_constructor_does_not_take_is_named_with_those_it_does(tmp_path):
    """`options: {dimm: 3}` is refused at the option's own line, with the accepted names and the likely
    one, instead of passing the check and failing when `servd run` builds the model."""
    name = module(tmp_path, MODEL_WITH_OPTIONS)
    problem = only_problem(one_endpoint(tmp_path, f"{name}:Model", "    options:", "      dimm: 3"))
    assert (problem.line, problem.path) == (6, "endpoints.e.options.dimm")
    assert problem.message == f"{name}:Model takes no option 'dimm' (did you mean 'dim'?); it accepts dim, scale"


def test_a_required_constructor_argument_left_out_of_options_is_named(tmp_path):
    """A constructor argument without a default must come from options; its name is in the problem."""
    name = module(tmp_path, MODEL_WITH_OPTIONS)
    problem = only_problem(one_endpoint(tmp_path, f"{name}:Model", "    options: {scale: 2}"))
    assert (problem.line, problem.path) == (5, "endpoints.e.options")
    assert problem.message == f"{name}:Model needs option 'dim' (it has no default); it accepts dim, scale"


def test_options_that_bind_pass_and_device_comes_from_the_device_key(tmp_path):
    """Options the constructor takes pass (servd adds `device` itself); `device` inside options is refused
    with the key that sets it, since servd would overwrite it."""
    name = module(tmp_path, MODEL_WITH_OPTIONS)
    assert load_checked(one_endpoint(tmp_path, f"{name}:Model", "    options: {dim: 3, scale: 2}")).spec
    problem = only_problem(one_endpoint(tmp_path, f"{name}:Model", "    options: {dim: 3, device: cpu}"))
    assert problem.path == "endpoints.e.options.device" and "the endpoint's `device` key" in problem.message


def test_a_constructor_taking_keyword_arguments_accepts_any_option(tmp_path):
    """`**kwargs` takes every name: nothing to refuse."""
    name = module(tmp_path, "class Model:\n    def __init__(self, **kw):\n        pass\n\n    def __call__(self, x):\n"
                            "        return x\n")  # fmt: skip
    assert load_checked(one_endpoint(tmp_path, f"{name}:Model", "    options: {anything: 1}")).spec


def test_options_for_a_function_entrypoint_are_refused_by_the_check(tmp_path):
    """Only a class is constructed with options; a function with options is a problem at check time."""
    name = module(tmp_path, "def fn(x):\n    return x\n")
    problem = only_problem(one_endpoint(tmp_path, f"{name}:fn", "    options: {dim: 3}"))
    assert problem.path == "endpoints.e.options" and "is a function; 'options' only apply" in problem.message


def test_a_bad_option_is_reported_beside_a_schema_error(tmp_path):
    """One pass: a schema error elsewhere in the endpoint doesn't hide a misspelt option."""
    name = module(tmp_path, MODEL_WITH_OPTIONS)
    path = one_endpoint(tmp_path, f"{name}:Model", "    options: {dimm: 3}", "    concurrency: 0")
    assert [(p.line, p.path) for p in problems_of(path)] == [
        (5, "endpoints.e.options.dimm"),
        (6, "endpoints.e.concurrency"),
    ]
