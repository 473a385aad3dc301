"""A toy chat model for servd's OpenAI-compatible endpoint: CPU only, nothing to download.

It is a word bigram model (which word follows which) over a few sentences bundled below, so its
answers are fluent-ish nonsense about queues. What it shows is servd's chat contract: the
entrypoint gets the chat request as data (`messages`, `max_tokens`, `stop`, `temperature` and any
other field the client sent) and yields its answer a piece at a time; its last value reports the
token counts (`usage`) and why it stopped (`finish_reason`). servd builds OpenAI's shapes.

- `chat`: one request a call (a generator).
- `ToyChat`: batched (an endpoint with `batch:`), one step of every request of the batch a
  yield; `delay_s` makes each step that slow, as a real model's token time would.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

CORPUS = """
The queue holds every request until a worker is free. A worker takes the oldest request and runs
the model. The model answers one request at a time, or a whole batch when the queue is long.
Every waiting client sees its rank and the time it will wait. The rank falls as the queue moves.
A batch is faster than the same requests one by one, because the model does its work in one go.
The daemon reads its file again when the file changes, and the queue keeps every request.
A client that goes away cancels its request, and the worker takes the next one.
"""
DEFAULT_MAX_TOKENS = 64  # when the request sets no max_tokens
Step = str | dict[str, Any] | None


class BigramModel:
    """Tokens are the corpus's words (lower case, punctuation kept); "." ends an answer."""

    def __init__(self, corpus: str = CORPUS) -> None:
        words = corpus.lower().split()
        self.following: dict[str, Counter[str]] = {}
        for word, after in itertools.pairwise(words):
            self.following.setdefault(word, Counter())[after] += 1
        self.first = words[0]

    def reply(self, request: dict[str, Any]) -> Iterator[Step]:
        """The answer to one chat request, a word at a time, then usage and finish_reason."""
        prompt = _prompt_words(request.get("messages") or [])
        limit = request.get("max_tokens") or DEFAULT_MAX_TOKENS
        stops = request.get("stop") or []
        temperature = request.get("temperature")
        rng = random.Random(request.get("seed"))
        word, text, count, reason = self._start(prompt), "", 0, "length"
        used: set[tuple[str, str]] = set()  # word pairs said already: greedy answers don't loop
        while count < limit:
            piece = word.capitalize() if not text else " " + word
            cut = _first_stop(text + piece, stops)
            if cut is not None:
                yield piece[: max(0, cut - len(text))]
                reason = "stop"
                break
            yield piece
            text, count = text + piece, count + 1
            if word.endswith("."):
                reason = "stop"
                break
            word = self._next(word, 1.0 if temperature is None else temperature, rng, used)
        yield {"usage": {"prompt_tokens": len(prompt), "completion_tokens": count}, "finish_reason": reason}

    def _start(self, prompt: list[str]) -> str:
        """The word after the last prompt word the model knows, so the answer follows the question."""
        for word in reversed(prompt):
            if word in self.following:
                return self.following[word].most_common(1)[0][0]
        return self.first

    def _next(self, word: str, temperature: float, rng: random.Random, used: set[tuple[str, str]]) -> str:
        counts = self.following.get(word) or Counter([self.first])
        fresh = [w for w, _ in counts.most_common() if (word, w) not in used] or [counts.most_common(1)[0][0]]
        if temperature == 0:
            chosen = fresh[0]
        else:
            chosen = rng.choices(fresh, weights=[counts[w] ** (1 / temperature) for w in fresh])[0]
        used.add((word, chosen))
        return chosen


def _prompt_words(messages: list[Any]) -> list[str]:
    words: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if isinstance(content, str):
            words += [word.strip("?!,.;:'\"") for word in content.lower().split()]
    return words


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [index for index in (text.find(s) for s in stops) if index >= 0]
    return min(found) if found else None


MODEL = BigramModel()


def chat(request: dict[str, Any]) -> Iterator[Step]:
    """One chat request a call: yields the answer's pieces, then its usage and finish_reason."""
    yield from MODEL.reply(request)


class ToyChat:
    """Batched: called with a list of chat requests, yields one list of pieces a step (None for an
    answer that has ended), until every answer has ended."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.model = BigramModel()
        self.delay_s = delay_s

    def __call__(self, requests: list[dict[str, Any]]) -> Iterator[list[Step]]:
        answers: list[Iterator[Step] | None] = [self.model.reply(r) for r in requests]
        while True:
            step = [None if answer is None else next(answer, None) for answer in answers]
            if all(value is None for value in step):
                return
            answers = [None if value is None else answer for answer, value in zip(answers, step, strict=True)]
            time.sleep(self.delay_s)
            yield step
