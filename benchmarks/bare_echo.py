"""The baseline: a bare Tornado websocket server that sends every message straight back.

`python -m benchmarks.bare_echo PORT` listens on 127.0.0.1:PORT: /ws echoes, /healthz answers
200. Same Tornado, same asyncio loop as servd; nothing else.
"""

from __future__ import annotations

import asyncio
import sys

from tornado.web import Application, RequestHandler
from tornado.websocket import WebSocketHandler


class Echo(WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


class Health(RequestHandler):
    def get(self) -> None:
        self.write("ok")


async def main(port: int) -> None:
    app = Application([(r"/ws", Echo), (r"/healthz", Health)])
    app.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
