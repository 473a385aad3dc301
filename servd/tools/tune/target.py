"""The daemon `servd tune` measures, and the config file through which it changes it.

The tuner changes settings as a user would: it saves the config file (atomically, checked first)
and waits until /v1/status shows the reload applied (`last_reload` changes; `generation` goes
up). It either starts `servd run` itself, on a scratch copy of the file beside it (so relative
paths resolve the same and the user's file is untouched until `--write`), on 127.0.0.1 and a
port the kernel picks, in its own process group (a Ctrl-C at the terminal reaches the tuner,
which then stops the daemon in order); or it attaches to a running daemon (`--url`) and edits
the very file that daemon serves. `ConfigFile.restore` puts back what the file held, unless
someone else changed it meanwhile (then it is left alone, and said so).

Everything here runs on the tuner's asyncio loop; the blocking HTTP reads of servd.tools.status run on
a worker thread (asyncio.to_thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import servd
from servd.config.schema import SpecError
from servd.config.yamledit import save_atomically
from servd.tools import status

START_TIMEOUT_S = 300.0  # model loads at start (the systemd unit allows as much)
RELOAD_TIMEOUT_S = 120.0  # a `device` change loads new models
SIGHUP_AFTER_S = 5.0  # a started daemon whose watcher missed the save gets SIGHUP
STOP_TIMEOUT_S = 15.0
POLL_S = 0.02
LISTENING = re.compile(r"listening.*?(http://127\.0\.0\.1:\d+)|(http://127\.0\.0\.1:\d+).*?listening")


class TuneError(Exception):
    """Why the tune cannot go on, in words for the user."""


class ConfigFile:
    """A config file the tuner rewrites, and what it held before."""

    def __init__(self, path: Path, original: str) -> None:
        self.path = path
        self.original = original
        self.current = original

    def write(self, text: str, check: Callable[[Path], None] | None = None) -> bool:
        """Save `text` if it differs from what is there; False when it was already there."""
        if text == self.current:
            return False
        if read_text(self.path) != self.current:
            raise TuneError(f"{self.path} was changed by someone else while tuning; stopping without touching it")
        try:
            save_atomically(self.path, text, check)
        except SpecError as exc:
            named = [dataclasses.replace(p, file=str(self.path)) for p in exc.problems]
            raise TuneError("the tuned config does not check:\n" + "\n".join(map(str, named))) from None
        self.current = text
        return True

    def restore(self) -> str | None:
        """Put the original back; a warning (and the file left alone) if someone else changed it."""
        if self.current == self.original:
            return None
        try:
            on_disk = read_text(self.path)
        except OSError as exc:
            return f"could not restore {self.path}: {exc}"
        if on_disk != self.current:
            return f"{self.path} was changed by someone else while tuning; left as it is"
        save_atomically(self.path, self.original)
        self.current = self.original
        return None


def read_text(path: Path) -> str:
    """The file's text with its line endings as they are."""
    return path.read_bytes().decode("utf-8")


class Target:
    """The daemon under tune: its URL, token and config file, and the process if the tuner started it."""

    def __init__(self, url: str, token: str | None, config: ConfigFile) -> None:
        self.url = url
        self.token = token
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None
        self.scratch: Path | None = None  # the copy a started daemon serves

    @classmethod
    def start(cls, user_file: Path, token: str | None) -> Target:
        """A scratch copy of `user_file` beside it, and `servd run` on it (call `wait_ready` next)."""
        original = read_text(user_file)
        prefix = f".{user_file.stem}.tune-"
        try:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=user_file.suffix, dir=user_file.parent)
        except OSError as exc:
            raise TuneError(
                f"cannot write a scratch copy beside {user_file} ({exc}): tune where you can write"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            out.write(original)
        scratch = Path(name)
        target = cls("", token, ConfigFile(scratch, original))
        target.scratch = scratch
        log_fd, log_name = tempfile.mkstemp(prefix="servd-tune-", suffix=".log")
        target.log = Path(log_name)
        with os.fdopen(log_fd, "wb") as log:
            target.proc = subprocess.Popen(
                [*servd_command(), "run", str(scratch), "--host", "127.0.0.1", "--port", "0"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        return target

    async def wait_ready(self) -> None:
        """Until the started daemon listens and /readyz answers 200; TuneError with its log if it exits."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.url:
            self._check_alive()
            self.url = self._listening_url() or ""
            await self._pause(deadline, "to listen")
        while not await self._ready():
            self._check_alive()
            await self._pause(deadline, "to load its models (/readyz)")

    def _listening_url(self) -> str | None:
        assert self.log is not None
        for line in self.log.read_text("utf-8", errors="replace").splitlines():
            match = LISTENING.search(line)
            if match:
                return match.group(1) or match.group(2)
        return None

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise TuneError(f"servd run exited with status {self.proc.returncode}:\n{self.log_tail()}")

    async def _ready(self) -> bool:
        try:
            await asyncio.to_thread(status.fetch, self.url, "/readyz", None, 5.0)
        except status.Unreachable:
            return False
        return True

    async def _pause(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise TuneError(f"servd run did not get ready within {START_TIMEOUT_S:.0f} s waiting {what}")
        await asyncio.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text("utf-8", errors="replace").splitlines()[-lines:])

    async def get(self, path: str) -> Any:
        try:
            return await asyncio.to_thread(status.fetch, self.url, path, self.token, 10.0)
        except status.Unreachable as exc:
            raise TuneError(str(exc)) from None

    async def endpoint(self, name: str) -> dict[str, Any]:
        listing = (await self.get("/v1/endpoints"))["endpoints"]
        found = next((e for e in listing if e.get("name") == name), None)
        if found is None:
            raise TuneError(f"the daemon at {self.url} serves no endpoint {name!r}")
        return dict(found)

    async def apply(self, text: str, check: Callable[[Path], None]) -> None:
        """Save `text` and wait until the daemon has reloaded it (no wait if it is already there)."""
        before = (await self.get("/v1/status")).get("last_reload")
        if not self.config.write(text, check):
            return
        started = time.monotonic()
        hupped = False
        while True:
            last = (await self.get("/v1/status")).get("last_reload")
            if last != before and last is not None:
                if last.get("result") != "applied":
                    why = f"{last.get('result')}: {last.get('error')}"
                    raise TuneError(f"the daemon did not apply the tuned config ({why})")
                return
            waited = time.monotonic() - started
            if self.proc is not None and waited > SIGHUP_AFTER_S and not hupped:
                os.kill(self.proc.pid, signal.SIGHUP)  # its watcher missed the save; a reload is a reload
                hupped = True
            if waited > RELOAD_TIMEOUT_S:
                raise TuneError(f"the daemon at {self.url} did not reload {self.config.path} within "
                                f"{RELOAD_TIMEOUT_S:.0f} s; is it serving and watching that file?")  # fmt: skip
            await asyncio.sleep(POLL_S)

    def close(self) -> list[str]:
        """Restore the file, stop the daemon the tuner started and remove its scratch copy; warnings."""
        warnings = []
        if self.scratch is None:
            try:
                warning = self.config.restore()
            except OSError as exc:
                warning = f"could not restore {self.config.path}: {exc}"
            if warning:
                warnings.append(warning)
        if self.proc is not None:
            stop(self.proc)
        if self.scratch is not None:
            self.scratch.unlink(missing_ok=True)
        if self.log is not None:
            self.log.unlink(missing_ok=True)
        return warnings


def servd_command() -> list[str]:
    """`servd` as this very process runs it, whatever the current directory holds.

    Not `python -m servd`: -m puts the current directory first on sys.path, so a `servd` folder
    there (another clone, an old checkout) would be imported instead, and fail
    (`ImportError: cannot import name '__version__'`). Here the child's sys.path[0] is the
    directory this servd package was imported from, nothing else moves (PYTHONPATH, site-packages
    stay), and the user's entrypoints are found as `servd run` finds them: beside the config file
    (servd.runners.entrypoints puts its directory first), and the scratch copy sits beside the
    user's file, so that directory is the same.
    """
    root = str(Path(servd.__file__).resolve().parent.parent)
    code = f"import sys; sys.path[0] = {root!r}; from servd.cli import main; sys.argv[0] = 'servd'; sys.exit(main())"
    return [sys.executable, "-c", code]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the daemon's process group (it drains and exits), SIGKILL if it takes too long."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
