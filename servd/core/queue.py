"""One endpoint's waiting requests, in the order they will run: priority levels, then fifo or fair.

Loop thread only; workers report back through the runner's wake-up of the loop (an eventfd,
runners.pool) and never touch a queue.
Only waiting requests live here: a request leaves the queue when its batch starts.

The schedule is: every request of level 1 before any of level 2, and so on (Triton's priority
levels; nothing running is pre-empted). Within a level, `fifo` is arrival order; `fair` serves
clients round-robin: each client's requests in arrival order, one per client per round, a
client that is served going to the back of the round, a new client joining at the back. So a
newcomer behind one client's 2,000-request burst has rank 1, not 2,000. Rank (0 = next to run)
is a position in this schedule, and `rank_if_pushed` gives a request's rank before it is
admitted, which admission by predicted wait needs.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from servd.config.spec import QueueSpec
from servd.core.request import Request
from servd.errors import ErrorCode, ServdError


class Level(Protocol):
    """The requests of one priority level, in the order they will run."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Request]: ...
    def push(self, request: Request) -> None: ...
    def pop(self) -> Request: ...
    def push_front(self, request: Request) -> None: ...
    def remove(self, request: Request) -> bool: ...
    def rank_if_pushed(self, client: str) -> int: ...
    def oldest_admitted_at(self) -> float: ...


class FifoLevel:
    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: deque[Request] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._waiting)

    def push(self, request: Request) -> None:
        self._waiting.append(request)

    def pop(self) -> Request:
        return self._waiting.popleft()

    def push_front(self, request: Request) -> None:
        self._waiting.appendleft(request)

    def remove(self, request: Request) -> bool:
        try:
            self._waiting.remove(request)
        except ValueError:
            return False
        return True

    def rank_if_pushed(self, client: str) -> int:
        return len(self._waiting)

    def oldest_admitted_at(self) -> float:
        return self._waiting[0].admitted_at


class FairLevel:
    """Clients round-robin. `_clients` is the round: dict order, the next client to serve first."""

    __slots__ = ("_clients", "_count")

    def __init__(self) -> None:
        self._clients: dict[str, deque[Request]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Request]:
        """Round by round: the k-th request of each client, clients in their turn's order."""
        turns = [iter(q) for q in self._clients.values()]
        while turns:
            still = []
            for turn in turns:
                request = next(turn, None)
                if request is not None:
                    still.append(turn)
                    yield request
            turns = still

    def push(self, request: Request) -> None:
        waiting = self._clients.get(request.client)
        if waiting is None:
            waiting = self._clients[request.client] = deque()
        waiting.append(request)
        self._count += 1

    def push_front(self, request: Request) -> None:
        """Back to the head of its client's line, that client first in the round."""
        waiting = self._clients.pop(request.client, None) or deque()
        waiting.appendleft(request)
        self._clients = {request.client: waiting, **self._clients}
        self._count += 1

    def pop(self) -> Request:
        client, waiting = next(iter(self._clients.items()))
        request = waiting.popleft()
        del self._clients[client]
        if waiting:
            self._clients[client] = waiting  # served: to the back of the round
        self._count -= 1
        return request

    def remove(self, request: Request) -> bool:
        waiting = self._clients.get(request.client)
        if waiting is None:
            return False
        try:
            waiting.remove(request)
        except ValueError:
            return False
        if not waiting:
            del self._clients[request.client]
        self._count -= 1
        return True

    def rank_if_pushed(self, client: str) -> int:
        """Requests of this level ahead of a new request from `client`: its round is the one after
        the client's last queued request; clients before it in the round get one more each."""
        mine = self._clients.get(client)
        if mine is None:
            return len(self._clients)  # one round: every waiting client's next request
        depth = len(mine)
        ahead, before = 0, True
        for other, waiting in self._clients.items():
            if other == client:
                before = False
                ahead += depth
                continue
            ahead += min(len(waiting), depth + 1 if before else depth)
        return ahead

    def oldest_admitted_at(self) -> float:
        return min(waiting[0].admitted_at for waiting in self._clients.values())


def _new_level(order: str) -> Level:
    return FairLevel() if order == "fair" else FifoLevel()


class RequestQueue:
    def __init__(self, limits: QueueSpec) -> None:
        self.limits = limits
        self._levels: list[Level] = [_new_level(limits.order) for _ in range(limits.priority_levels)]
        self._count = 0
        self._per_client: dict[str, int] = {}

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[Request]:
        """Every waiting request in the order it will run (rank 0 first)."""
        return itertools.chain.from_iterable(self._levels)

    def depth_by_level(self) -> dict[str, int]:
        """Requests waiting at each level ("1" the highest), for /v1/endpoints."""
        return {str(i): len(level) for i, level in enumerate(self._levels, 1)}

    def check_room(self, client: str) -> None:
        """Raise queue_full or client_limit if a new request from `client` can't be admitted."""
        max_size = self.limits.max_size
        if max_size is not None and self._count >= max_size:
            raise ServdError(ErrorCode.QUEUE_FULL, f"queue.max_size={max_size} reached; retry later")
        per_client = self.limits.max_per_client
        if per_client is not None and self._per_client.get(client, 0) >= per_client:
            raise ServdError(
                ErrorCode.CLIENT_LIMIT,
                f"queue.max_per_client={per_client} reached: this client already has {per_client} waiting",
            )

    def rank_if_pushed(self, client: str, priority: int) -> int:
        """The rank a request from `client` at level `priority` would have if it were pushed now."""
        ahead = sum(len(level) for level in self._levels[: priority - 1])
        return ahead + self._levels[priority - 1].rank_if_pushed(client)

    def push(self, request: Request) -> int:
        """Add `request` at its level (`request.priority`, 1-based); returns its rank (0 = next to run)."""
        rank = self.rank_if_pushed(request.client, request.priority)
        self._levels[request.priority - 1].push(request)
        self._count += 1
        self._per_client[request.client] = self._per_client.get(request.client, 0) + 1
        return rank

    def push_front(self, requests: list[Request]) -> None:
        """Put taken requests back at the head of their levels, in the order given (a lost batch
        runs again before anything that arrived after it)."""
        for request in reversed(requests):
            self._levels[request.priority - 1].push_front(request)
            self._count += 1
            self._per_client[request.client] = self._per_client.get(request.client, 0) + 1

    def pushes_back_others(self, priority: int) -> bool:
        """Whether a request just pushed at `priority` may have moved others back (a higher level,
        or fair order): their ranks need telling again."""
        return self.limits.order == "fair" or any(len(level) for level in self._levels[priority:])

    def oldest_admitted_at(self) -> float:
        """When the longest-waiting request was admitted (batch.max_delay_ms counts from it)."""
        return min(level.oldest_admitted_at() for level in self._levels if len(level))

    def pop(self, count: int) -> list[Request]:
        """Take the next `count` requests in schedule order (fewer if fewer wait)."""
        taken: list[Request] = []
        for level in self._levels:
            while len(level) and len(taken) < count:
                taken.append(level.pop())
            if len(taken) == count:
                break
        self._count -= len(taken)
        for request in taken:
            self._forget_client(request.client)
        return taken

    def remove(self, request: Request) -> bool:
        """Take out a waiting request (cancel, timeout); False if it isn't waiting here."""
        level = request.priority - 1
        if not 0 <= level < len(self._levels) or not self._levels[level].remove(request):
            return False
        self._count -= 1
        self._forget_client(request.client)
        return True

    def drain(self) -> list[Request]:
        """Take every waiting request out, in schedule order."""
        return self.pop(self._count)

    def reconfigure(self, limits: QueueSpec) -> None:
        """New limits; a change of order or levels re-sorts what waits, by arrival (a level past the
        new lowest one joins the lowest). Re-pushing in arrival order keeps every level's (and every
        client's) head its oldest request, which `oldest_admitted_at` relies on."""
        old, self.limits = self.limits, limits
        if (old.order, old.priority_levels) == (limits.order, limits.priority_levels):
            return
        waiting = sorted(self, key=lambda request: request.admitted_at)  # stable: ties keep their order
        self._levels = [_new_level(limits.order) for _ in range(limits.priority_levels)]
        for request in waiting:
            request.priority = min(request.priority, limits.priority_levels)
            self._levels[request.priority - 1].push(request)

    def _forget_client(self, client: str) -> None:
        left = self._per_client[client] - 1
        if left:
            self._per_client[client] = left
        else:
            del self._per_client[client]
