"""Before any load: does the server have the endpoint? A misspelt name fails at once.

Without this, `servd bench --endpoint ecoh` ran every level for its whole duration, each
request answered `unknown_endpoint`, and only then failed. One GET /v1/endpoints (with the
run's token) answers it; a name it lacks ends the run with the names it has. Any other answer
(a token that may not list, a proxy that only passes the endpoint's own path, a server that
isn't servd) decides nothing, and the load goes ahead to show what happens. Loop thread only.
"""

from __future__ import annotations

import asyncio
import difflib
import json
from typing import Any

from servd.client._http import Pool, Target
from servd.client.errors import ConnectFailed, UnknownEndpoint
from servd.tools.bench.options import Options


async def probe(options: Options) -> None:
    """UnknownEndpoint naming the endpoints served, when the listing lacks `options.endpoint`;
    ConnectFailed when the server can't be reached."""
    target = Target.parse(options.url)
    names = await _listing(target, options)
    if names is None or options.endpoint in names:
        return
    guess = difflib.get_close_matches(options.endpoint, names, n=1)
    served = f"it serves {', '.join(names)}" if names else "it serves none"
    hint = f"; did you mean {guess[0]!r}?" if guess else ""
    raise UnknownEndpoint(f"no endpoint {options.endpoint!r} at {target.http_url('')} ({served}{hint})", status=404)


async def _listing(target: Target, options: Options) -> list[str] | None:
    """The served endpoints' names, or None when the server's answer doesn't say."""
    headers = {"Host": target.netloc, "Accept": "application/json"}
    if options.token:
        headers["Authorization"] = f"Bearer {options.token}"
    pool = Pool(target, options.connect_timeout_s)
    try:
        response = await pool.request("GET", f"{target.prefix}/v1/endpoints", headers, b"")
    except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError):
        return None  # it took the connection and dropped it: not for the probe to judge
    except (OSError, asyncio.TimeoutError) as exc:
        raise ConnectFailed(f"cannot connect to {target.http_url('')}: {exc or type(exc).__name__}") from None
    try:
        body = await response.read()
    except (OSError, asyncio.IncompleteReadError):
        return None
    finally:
        pool.release(response.connection)
        await pool.close()  # and wait for it to close: bench may run in a caller's loop
    if response.status != 200:
        return None
    try:
        listing: Any = json.loads(body)
        return [str(e["name"]) for e in listing["endpoints"]]
    except (ValueError, KeyError, TypeError):
        return None
