"""One endpoint's FIFO of waiting requests: admission limits, rank, removal.

Loop thread only; workers report back through IOLoop.add_callback and never touch a queue.
Only waiting requests live here: a request leaves the queue when its batch starts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from servd.errors import ErrorCode, ServdError
from servd.request import Request
from servd.spec import QueueSpec


class RequestQueue:
    def __init__(self, limits: QueueSpec) -> None:
        self.limits = limits
        self._waiting: deque[Request] = deque()
        self._per_client: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._waiting)

    def check_room(self, client: str) -> None:
        """Raise queue_full or client_limit if a new request from `client` can't be admitted."""
        max_size = self.limits.max_size
        if max_size is not None and len(self._waiting) >= max_size:
            raise ServdError(ErrorCode.QUEUE_FULL, f"queue.max_size={max_size} reached; retry later")
        per_client = self.limits.max_per_client
        if per_client is not None and self._per_client.get(client, 0) >= per_client:
            raise ServdError(
                ErrorCode.CLIENT_LIMIT,
                f"queue.max_per_client={per_client} reached: this client already has {per_client} waiting",
            )

    def push(self, request: Request) -> int:
        """Append; returns the request's rank (0 = next to run)."""
        self._waiting.append(request)
        self._per_client[request.client] = self._per_client.get(request.client, 0) + 1
        return len(self._waiting) - 1

    def oldest(self) -> Request:
        return self._waiting[0]

    def pop(self, count: int) -> list[Request]:
        """Take the `count` oldest requests (fewer if fewer wait)."""
        taken = [self._waiting.popleft() for _ in range(min(count, len(self._waiting)))]
        for request in taken:
            self._forget_client(request.client)
        return taken

    def remove(self, request: Request) -> bool:
        """Take out a waiting request (cancel, timeout); False if it isn't waiting here."""
        try:
            self._waiting.remove(request)
        except ValueError:
            return False
        self._forget_client(request.client)
        return True

    def drain(self) -> list[Request]:
        """Take every waiting request out, oldest first."""
        return self.pop(len(self._waiting))

    def _forget_client(self, client: str) -> None:
        left = self._per_client[client] - 1
        if left:
            self._per_client[client] = left
        else:
            del self._per_client[client]
