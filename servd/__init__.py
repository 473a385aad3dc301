"""servd: a declarative serving daemon for Python and PyTorch models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Checked", "Spec", "SpecError", "__version__", "load_checked"]

if TYPE_CHECKING:
    from servd.config.spec import Spec, SpecError
    from servd.daemon.loading import Checked, load_checked


def __getattr__(name: str) -> Any:
    """Lazy public names, so `import servd.client`-style light imports don't pull in tornado."""
    if name in ("Checked", "load_checked"):
        from servd.daemon import loading as check

        return getattr(check, name)
    if name in ("Spec", "SpecError"):
        from servd.config import spec

        return getattr(spec, name)
    raise AttributeError(name)
