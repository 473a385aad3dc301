"""Start-up checks of the host: the open-files limit and who can change the code servd runs.

Warnings, not errors: the daemon still starts, and the operator reads why in the log.
"""

from __future__ import annotations

import stat
from pathlib import Path

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]


def raise_open_files_limit(wanted: int) -> tuple[int, str | None]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns it and a warning if below `wanted`.

    Each websocket holds a file descriptor; a soft limit of 1024 (a common default) would cap
    clients far below server.max_connections, with 'Too many open files' as the only clue.
    """
    if resource is None:
        return 0, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted + 1024)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < wanted + 64:
        return soft, (
            f"open-files limit is {soft}, below server.max_connections={wanted} (+ some for models and logs); "
            "raise it (systemd: LimitNOFILE=) or lower max_connections"
        )
    return soft, None


def writable_by_others(paths: list[Path]) -> list[str]:
    """Warnings for files or directories that users other than the owner may write.

    servd.yaml names code that the daemon imports and runs, and the entrypoints' directories hold
    that code: anyone who can write either can run code as the daemon's user.
    """
    warnings = []
    for path in dict.fromkeys(paths):
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        # a sticky directory (/tmp) still lets others add files: a planted module shadows an import
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            who = "everyone" if mode & stat.S_IWOTH else "its group"
            warnings.append(f"{path} is writable by {who}; it decides what code servd runs (chmod go-w)")
    return warnings
