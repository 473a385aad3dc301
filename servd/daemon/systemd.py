"""sd_notify without a dependency: one datagram to $NOTIFY_SOCKET per state change.

A no-op when the variable is unset (not under systemd, or Type= isn't notify). The STATUS=
texts are what `systemctl status servd` shows on its "Status:" line, so they are written for a
person: what the daemon is doing, which config generation it serves, how much is queued.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1") to systemd; False when not under a notify-type unit."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto("\n".join(fields).encode(), address)
        except OSError:
            return False
    return True


def ready(status: str) -> bool:
    """READY=1: serving (after start, and after each reload, whatever its result)."""
    return notify("READY=1", f"STATUS=serving: {status}")


def serving(status: str) -> bool:
    """Refresh the STATUS= text between state changes (e.g. the queue depth), in ready()'s words."""
    return notify(f"STATUS=serving: {status}")


def reloading() -> bool:
    """RELOADING=1 with MONOTONIC_USEC, which systemd 253+ requires for Type=notify-reload."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the config")


def stopping(status: str) -> bool:
    """STOPPING=1: draining; systemd stops expecting watchdog pings."""
    return notify("STOPPING=1", f"STATUS=stopping: {status}")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog_interval_s() -> float | None:
    """Half of $WATCHDOG_USEC (systemd's advice), or None when no watchdog is set for us."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # the variables were meant for another process (we were started by it)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


def watchdog() -> bool:
    return notify("WATCHDOG=1")
