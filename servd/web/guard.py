"""Which web pages may call servd, and by which names: the Origin and Host checks, and CORS.

Two browser attacks reach a daemon that has no tokens:
- Cross-site requests: any web page can make its visitor's browser send requests to a servd it
  can reach. Browsers name that page in the Origin header (on every cross-origin request, and
  on websocket handshakes); `server.allowed_origins` lists the pages that may call, and only
  they get the CORS headers that let a page read the answer.
- DNS rebinding: a page whose own host name is made to resolve to 127.0.0.1 calls a loopback
  daemon as its own origin, so no Origin check sees it; its Host header still carries the
  page's name. `server.allowed_hosts` lists the names servd answers to; by default the names
  that `server.host` implies (`default_hosts`).

Pure functions of header values and settings: no Tornado, no I/O. They sit on every request's
path (about a microsecond): the Host check parses one header against a set built once per
setting (`_compiled`, cached on the settings' values), and a request without an Origin header
(every non-browser client) does no origin or CORS work at all.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from servd.config.spec import ServerSpec
from servd.errors import ErrorCode, ServdError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_ADDRESS = ("", "0.0.0.0", "::")  # listening on every interface: public names are unknowable
# What a CORS preflight is told; browsers cache the answer for MAX_AGE_S.
ALLOW_HEADERS = "Authorization, Content-Type, Accept"
EXPOSE_HEADERS = "Retry-After, WWW-Authenticate"
MAX_AGE_S = 600


@dataclass(frozen=True, slots=True)
class HostNames:
    """Allowed host names, lower-case, without port or brackets; `suffixes` from "*.example.com"."""

    exact: frozenset[str]
    suffixes: tuple[str, ...]


def default_hosts(listen_host: str) -> tuple[str, ...] | None:
    """The host names `server.host` implies; None (any name) when it listens on every interface.

    A loopback address answers to the loopback names; a specific address or name to itself and
    the loopback names (a local client may still say "localhost"). 0.0.0.0 and :: can't know the
    names they are reached by (DNS names, public and pod addresses), so they accept any: set
    `server.allowed_hosts` when browsers can reach such a daemon.
    """
    if hostname(listen_host) in ANY_ADDRESS:
        return None
    return tuple(dict.fromkeys((*LOOPBACK_NAMES, hostname(listen_host))))


def hostname(host_header: str) -> str:
    """The name in a Host header (or a configured name): lower-case, no port, no IPv6 brackets,
    no trailing dot. A bare IPv6 address (more than one colon) has no port to strip."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def host_allowed(host_header: str | None, allowed_hosts: tuple[str, ...] | None, listen_host: str) -> bool:
    """Whether servd answers to the Host header's name (any port).

    `allowed_hosts` holds names, IP addresses, "*.example.com" (any subdomain, not example.com
    itself) or "*" (any); None means `default_hosts(listen_host)`. A request without a Host
    header (HTTP/1.0) doesn't come from a browser and is allowed.
    """
    names = _compiled(allowed_hosts, listen_host)
    if names is None or host_header is None:
        return True
    host = hostname(host_header)
    return host in names.exact or (bool(names.suffixes) and host.endswith(names.suffixes))


def origin_allowed(origin: str, allowed: tuple[str, ...], host_header: str | None = None) -> bool:
    """Whether a page of `origin` may call: listed exactly (scheme, host and port), "*" is listed,
    or it is this server itself (its host and port are the Host header: a same-origin request)."""
    if origin in allowed or "*" in allowed:
        return True
    return host_header is not None and origin.partition("://")[2].lower() == host_header.lower()


def refusal(
    server: ServerSpec, host_header: str | None, origin: str | None, *, check_host: bool = True
) -> ServdError | None:
    """Why a request (or websocket handshake) is refused, or None: Host first, then Origin."""
    if check_host and not host_allowed(host_header, server.allowed_hosts, server.host):
        setting = "server.allowed_hosts" if server.allowed_hosts is not None else f"server.host={server.host}"
        return ServdError(
            ErrorCode.UNKNOWN_HOST,
            f"this server does not answer to host {host_header!r} ({setting}); "
            "add the name clients use to server.allowed_hosts",
        )
    if origin is not None and not origin_allowed(origin, server.allowed_origins, host_header):
        return ServdError(
            ErrorCode.FORBIDDEN_ORIGIN,
            f"origin {origin!r} is not in server.allowed_origins; add it there to let that page call servd",
        )
    return None


def allow_origin(origin: str, allowed: tuple[str, ...]) -> str:
    """The Access-Control-Allow-Origin value for an allowed origin: "*" when any may call (servd
    uses no cookies, so no credentials mode), else the origin itself (answers then vary by Origin)."""
    return "*" if "*" in allowed else origin


@functools.lru_cache(maxsize=16)
def _compiled(allowed_hosts: tuple[str, ...] | None, listen_host: str) -> HostNames | None:
    names = default_hosts(listen_host) if allowed_hosts is None else allowed_hosts
    if names is None or "*" in names:
        return None
    entries = [hostname(name) for name in names]
    return HostNames(
        exact=frozenset(e for e in entries if not e.startswith("*.")),
        suffixes=tuple(e[1:] for e in entries if e.startswith("*.")),
    )
