"""Call servd from Python: `Client` (blocking) and `AsyncClient` (asyncio).

    from servd.client import Client, QueueFull

    with Client("ws://127.0.0.1:8700", token="...") as client:
        client.predict("classify", image)             # the result, or a typed error
        job = client.submit("classify", image)        # job.status(), job.result(), job.cancel()
        for text in client.stream("words", "a b c"):  # partial results of a generator endpoint
            print(text)

One multiplexed websocket per client object (`transport="http"` uses POST and server-sent
events instead). Needs only tornado besides the standard library: no torch, and none of the
daemon's modules but servd.errors (see docs/client.md for a light install).
"""

from __future__ import annotations

from servd.client.aio import AsyncClient
from servd.client.errors import (
    ApiClosed,
    BadRequest,
    Cancelled,
    ClientLimit,
    ConnectFailed,
    ConnectionLost,
    EndpointFailed,
    ForbiddenOrigin,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    QueueFull,
    ServdError,
    Timeout,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnknownEndpoint,
    UnknownHost,
)
from servd.client.job import AsyncJob, JobStatus
from servd.client.sync import Client, Job

__all__ = [
    "ApiClosed",
    "AsyncClient",
    "AsyncJob",
    "BadRequest",
    "Cancelled",
    "Client",
    "ClientLimit",
    "ConnectFailed",
    "ConnectionLost",
    "EndpointFailed",
    "ForbiddenOrigin",
    "InvalidInput",
    "Job",
    "JobStatus",
    "MethodNotAllowed",
    "NotFound",
    "QueueFull",
    "ServdError",
    "Timeout",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnknownEndpoint",
    "UnknownHost",
]
