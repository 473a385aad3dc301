"""`module:attr` -> a callable model per device.

Importing runs user code, so it happens in `servd check`, at start and on reload, never per
request. The config file's directory goes first on sys.path, so `examples.echo:echo` next to
servd.yaml imports whatever directory the daemon was started from.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any


class EntrypointError(ValueError):
    """An entrypoint that cannot be imported, called or instantiated; the message says why."""


class OptionsError(EntrypointError):
    """`options` that the entrypoint's constructor won't take; `option` is the first bad key, if one is."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class Entrypoint:
    """A resolved `module:attr`: what it is and how to make a callable model from it."""

    ref: str
    target: Any
    is_class: bool
    streams: bool
    accepts_device: bool
    uses_torch: bool = False
    code_mtime: float = 0.0  # mtime of the module file when it was imported

    def instantiate(self, device: str, options: Mapping[str, Any]) -> Model:
        """One model for `device`: a class is constructed here (this may load weights)."""
        if not self.is_class:
            if options:
                raise EntrypointError(f"{self.ref} is a function; 'options' only apply to class entrypoints")
            return Model(self.target, device, self.streams, uses_torch=self.uses_torch, code_mtime=self.code_mtime)
        kwargs = dict(options)
        if self.accepts_device:
            kwargs["device"] = device
        try:
            instance = self.target(**kwargs)
        except (Exception, SystemExit) as exc:  # SystemExit: argparse in a constructor must not end servd
            raise EntrypointError(f"{self.ref}({_kwargs_text(kwargs)}) raised {type(exc).__name__}: {exc}") from exc
        close = getattr(instance, "close", None)
        return Model(instance, device, self.streams, close, uses_torch=self.uses_torch, code_mtime=self.code_mtime)

    def check_options(self, options: Mapping[str, Any]) -> None:
        """OptionsError unless `options` bind to what `instantiate` will call: the constructor's
        signature, with `device` passed by servd where the constructor takes it. Checked when the
        file is (servd check, start, reload), so a misspelt option is named there, not as a
        TypeError from the constructor when `servd run` loads the model."""
        if not self.is_class:
            if options:
                raise OptionsError(f"{self.ref} is a function; 'options' only apply to class entrypoints")
            return
        try:
            signature = inspect.signature(self.target)
        except (TypeError, ValueError):
            return  # a constructor Python can't describe (a C extension's): its call will say
        if "device" in options and self.accepts_device:
            raise OptionsError(
                f"{self.ref} gets its device from the endpoint's `device` key, not from options", "device"
            )
        kwargs = dict(options)
        if self.accepts_device:
            kwargs["device"] = "cpu"
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise _options_error(self.ref, signature, options, exc) from None


@dataclass(eq=False)
class Model:
    """A callable served on one device; `close()` releases it when it is retired."""

    call: Callable[[Any], Any]
    device: str
    streams: bool
    close: Callable[[], Any] | None = field(default=None)
    uses_torch: bool = False
    code_mtime: float = 0.0
    reachable: bool = True  # False while a cluster replica is starting, lost or restarting (runners.ray)


_imported_mtime: dict[str, float] = {}


def resolve(ref: str, search_dir: Path | None = None, *, fresh: bool = False) -> Entrypoint:
    """Import `module:attr`; with fresh=True a module whose file changed since import is re-imported."""
    module_name, _, attr_path = ref.partition(":")
    if search_dir is not None and str(search_dir) not in sys.path:
        sys.path.insert(0, str(search_dir))
    module = _import(module_name, ref, fresh)
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise EntrypointError(f"{ref}: module {module_name!r} has no attribute {attr_path!r}") from None
    entry = _classify(ref, target)
    return dataclasses.replace(entry, uses_torch=_imports_torch(module), code_mtime=_imported_mtime[module_name])


def _imports_torch(module: ModuleType) -> bool:
    """Whether the entrypoint's module uses torch (it names torch or a torch submodule)."""
    return any(isinstance(v, ModuleType) and v.__name__.split(".")[0] == "torch" for v in vars(module).values())


def _import(module_name: str, ref: str, fresh: bool) -> ModuleType:
    loaded = sys.modules.get(module_name)
    try:
        if loaded is not None and fresh and _changed_on_disk(loaded):
            _drop_bytecode(loaded)
            module = importlib.reload(loaded)
        else:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = "" if exc.name != module_name.split(".")[0] else " (is it next to servd.yaml or installed?)"
        raise EntrypointError(f"{ref}: cannot import {module_name!r}: {exc}{hint}") from None
    except Exception as exc:
        raise EntrypointError(f"{ref}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    _imported_mtime[module_name] = _mtime(module)
    return module


def module_file(ref: str) -> Path | None:
    """The source file of an imported entrypoint's module (None if not imported or built in)."""
    module = sys.modules.get(ref.partition(":")[0])
    file = getattr(module, "__file__", None)
    return Path(file) if file else None


def changed_since(ref: str, code_mtime: float) -> bool:
    """Whether the module file of `ref` differs from the one a served model was built from."""
    module = sys.modules.get(ref.partition(":")[0])
    return module is not None and _mtime(module) != code_mtime


def _changed_on_disk(module: ModuleType) -> bool:
    return _mtime(module) != _imported_mtime.get(module.__name__, _mtime(module))


def _drop_bytecode(module: ModuleType) -> None:
    """Python trusts a .pyc whose recorded mtime (whole seconds) and size match: an edit within the
    same second that keeps the size would be missed, so the stale .pyc goes."""
    cached = getattr(module, "__cached__", None)
    if cached:
        Path(cached).unlink(missing_ok=True)


def _mtime(module: ModuleType) -> float:
    file = getattr(module, "__file__", None)
    try:
        return Path(file).stat().st_mtime if file else 0.0
    except OSError:
        return 0.0


def _classify(ref: str, target: Any) -> Entrypoint:
    if inspect.isclass(target):
        # the class's own __call__ (getattr would find type.__call__, which makes instances)
        call = next((k.__dict__["__call__"] for k in target.__mro__ if "__call__" in k.__dict__), None)
        if call is None or call is object.__call__ or not callable(call):
            raise EntrypointError(f"{ref} is a class without __call__; instances must be callable")
        _reject_async(ref, call)
        params = inspect.signature(target).parameters
        accepts_device = "device" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        return Entrypoint(ref, target, True, inspect.isgeneratorfunction(call), accepts_device)
    if not callable(target):
        raise EntrypointError(f"{ref} is a {type(target).__name__}, not a function or class")
    _reject_async(ref, target)
    return Entrypoint(ref, target, False, inspect.isgeneratorfunction(target), False)


def _reject_async(ref: str, fn: Any) -> None:
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise EntrypointError(f"{ref} is async; servd runs entrypoints on worker threads, so make it a plain def")


def _options_error(ref: str, signature: inspect.Signature, options: Mapping[str, Any], exc: TypeError) -> OptionsError:
    """The binding failure in the file's words: the option it names and the ones the constructor takes."""
    params = signature.parameters
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "device"]
    accepts = f"it accepts {', '.join(named)}" if named else "it takes no options"
    unknown = [k for k in options if k not in named]
    if unknown:
        guess = difflib.get_close_matches(unknown[0], named, n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        return OptionsError(f"{ref} takes no option {unknown[0]!r}{hint}; {accepts}", unknown[0])
    required = [n for n in named if params[n].default is params[n].empty and n not in options]
    if required:
        return OptionsError(f"{ref} needs option {required[0]!r} (it has no default); {accepts}")
    return OptionsError(f"{ref}: options {dict(options)!r} don't fit its constructor ({exc}); {accepts}")


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
