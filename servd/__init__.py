"""servd: a declarative serving daemon for Python and PyTorch models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Daemon", "Spec", "SpecError", "__version__", "load_spec"]

if TYPE_CHECKING:
    from servd.check import load_checked as load_spec
    from servd.daemon import Daemon
    from servd.spec import Spec, SpecError


def __getattr__(name: str) -> Any:
    """Lazy public names, so `import servd.client`-style light imports don't pull in tornado."""
    if name == "Daemon":
        from servd.daemon import Daemon

        return Daemon
    if name == "load_spec":
        from servd.check import load_checked

        return load_checked
    if name in ("Spec", "SpecError"):
        from servd import spec

        return getattr(spec, name)
    raise AttributeError(name)
