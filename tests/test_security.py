"""Security defaults: token checks, nothing internal on the wire, insecure permissions warned about,
origins enforced, secrets kept out of the log (issue 7)."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from servd.daemon import auth
from tests.harness import serve

REPO = Path(__file__).resolve().parent.parent

# -- tokens --------------------------------------------------------------------------------------

SECRETS = (b"alpha-secret", b"beta-secret", b"gamma-secret")
TOKENS = tuple(auth.Token(secret) for secret in SECRETS)


@pytest.mark.parametrize("token", SECRETS)
def test_every_listed_token_is_valid(token):
    """Each token in the file lets its bearer in."""
    assert auth.is_valid(token, TOKENS)


@pytest.mark.parametrize(
    "token",
    [None, b"", b"alpha", b"alpha-secret ", b"ALPHA-SECRET", b"alpha-secretx", b"xalpha-secret", b"alpha-secret\0",
     b"alpha-secretbeta-secret", "alpha-secrét".encode()],
)  # fmt: skip
def test_wrong_empty_and_missing_tokens_are_refused(token):
    """No token, an empty one, prefixes, suffixes, case changes and concatenations are all refused."""
    assert not auth.is_valid(token, TOKENS)


def test_no_tokens_configured_means_auth_is_off():
    """tokens_file: null (no tokens): every request is let in, with or without a token."""
    assert auth.is_valid(None, ())
    assert auth.is_valid(b"anything", ())


@pytest.mark.parametrize("presented", [b"alpha-secret", b"gamma-secret", b"wrong", None])
def test_the_check_compares_against_every_token_in_constant_time(monkeypatch, presented):
    """Whether the token matches the first, the last or none, every listed token is compared, with
    hmac.compare_digest over SHA-256 digests: how long the check takes says nothing about which
    token matched, how much of it, or how long the tokens are."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    auth.is_valid(presented, TOKENS)
    # hashed first, so compare_digest never sees lengths that differ (which it leaks)
    assert [known for _, known in calls] == [hashlib.sha256(t).digest() for t in SECRETS]
    assert all(given == hashlib.sha256(presented or b"").digest() for given, _ in calls)


LOGGED = """
version: 1
server:
  tokens_file: tokens.txt
  log: {level: debug}
endpoints:
  echo:
    entrypoint: examples.echo:echo
"""


async def test_tokens_never_reach_the_log(tmp_path):
    """Right and wrong tokens, in the Authorization header or ?token=, over HTTP and websocket, with
    the log at debug: no token appears in any log line."""
    (tmp_path / "tokens.txt").write_text("alpha-secret\n")
    async with serve(tmp_path, LOGGED) as d:
        for token in ("alpha-secret", "wrong-secret"):
            await d.http("POST", "/v1/endpoints/echo", {"data": 1}, headers={"Authorization": f"Bearer {token}"})
            await d.http("POST", f"/v1/endpoints/echo?token={token}", {"data": 1})
            await d.http("GET", f"/v1/status?token={token}")
        ws = await d.ws("/v1/ws?token=alpha-secret")
        await ws.submit(1, "echo", 1)
        await ws.terminal(1)
        with pytest.raises(HTTPClientError):
            await d.ws("/v1/ws?token=wrong-secret")
        text = d.logs.getvalue()
        assert "http" in {e["event"] for e in d.log_events()}, "the access lines were logged"
        assert "secret" not in text


# -- nothing internal on the wire ----------------------------------------------------------------

FAILING = """
version: 1
endpoints:
  deep:
    entrypoint: examples.hazards:raise_deep
"""


def leaks(text: str) -> list[str]:
    """Traces of a traceback or of the machine's files in text sent to a client."""
    found = [marker for marker in ("Traceback", 'File "', "line ", ".py", str(REPO), "/tmp/venv") if marker in text]
    return found


async def test_a_deep_traceback_never_reaches_the_client(tmp_path):
    """An entrypoint failing 40 calls deep: the websocket error, the HTTP body and the SSE stream name
    the exception and its message, but carry no traceback, file name, line number or path; the log
    has the whole traceback."""
    async with serve(tmp_path, FAILING, expect_errors=True) as d:
        ws = await d.ws()
        await ws.submit(1, "deep", {"depth": 40})
        error = (await ws.terminal(1))["error"]
        reply = await d.post("deep", {"depth": 40})
        stream = await d.http("POST", "/v1/endpoints/deep", {"data": {"depth": 40}},
                              headers={"Accept": "text/event-stream"})  # fmt: skip
        for text in (error["message"], reply.body.decode(), stream.body.decode()):
            assert "ValueError: failed at the bottom of a deep call stack" in text
            assert leaks(text) == [], text
        assert reply.status == 500 and b"event: error" in stream.body
        logged = [e for e in d.log_events() if e["event"] == "entrypoint raised"]
        assert len(logged) == 3
        assert len(logged[0]["exception"][0]["frames"]) > 40


async def test_the_logged_traceback_does_not_copy_the_request_data(tmp_path):
    """The error log of a failed call names the exception and its frames, but not the request's
    inputs: clients' data (personal data, documents) stays out of log files, which are kept longer
    and read by more people than the request itself. (structlog's dict_tracebacks records every
    frame's local variables unless show_locals=False.)"""
    async with serve(tmp_path, FAILING, expect_errors=True) as d:
        ws = await d.ws()
        await ws.submit(1, "deep", {"depth": 3, "note": "private-payload-7f3a"})
        await ws.terminal(1)
        assert d.errors_logged(), "the failure was logged"
        assert "private-payload-7f3a" not in d.logs.getvalue()


# -- permissions -----------------------------------------------------------------------------------

PERMISSIONS = """
version: 1
endpoints:
  echo:
    entrypoint: {module}:echo
"""


def code_tree(tmp_path: Path) -> tuple[Path, Path, str]:
    """A config directory holding a package with an entrypoint, all owner-writable only."""
    config_dir = tmp_path / "conf"
    package = f"perm_{uuid.uuid4().hex[:10]}"
    package_dir = config_dir / package
    package_dir.mkdir(parents=True)
    (package_dir / "__init__.py").write_text("")
    (package_dir / "model.py").write_text("def echo(data):\n    return data\n")
    for path in (tmp_path, config_dir, package_dir):
        path.chmod(0o755)
    for path in package_dir.iterdir():
        path.chmod(0o644)
    return config_dir, package_dir, f"{package}.model"


def insecure(d: Any) -> list[str]:
    return [e["detail"] for e in d.log_events() if e["event"] == "insecure permissions"]


async def test_no_permission_warning_when_only_the_owner_can_write(tmp_path):
    """Config file, its directory and the entrypoint's directory writable by their owner only: no warning."""
    config_dir, _, module = code_tree(tmp_path)
    config = config_dir / "servd.yaml"
    config.write_text("")
    config.chmod(0o644)
    async with serve(config_dir, PERMISSIONS.format(module=module)) as d:
        assert insecure(d) == []


@pytest.mark.parametrize(("mode", "who"), [(0o646, "everyone"), (0o664, "its group")])
async def test_a_config_file_others_can_write_is_warned_about_at_start(tmp_path, mode, who):
    """servd.yaml writable by others (it names the code servd runs): "insecure permissions" names it."""
    config_dir, _, module = code_tree(tmp_path)
    config = config_dir / "servd.yaml"
    config.write_text(PERMISSIONS.format(module=module))
    config.chmod(mode)
    async with serve(config_dir, PERMISSIONS.format(module=module)) as d:
        warnings = insecure(d)
    assert len(warnings) == 1 and warnings[0].startswith(f"{config} is writable by {who}"), warnings


async def test_an_entrypoint_directory_others_can_write_is_warned_about_at_start(tmp_path):
    """The directory of an entrypoint's module writable by everyone: "insecure permissions" names it."""
    config_dir, package_dir, module = code_tree(tmp_path)
    package_dir.chmod(0o757)
    async with serve(config_dir, PERMISSIONS.format(module=module)) as d:
        warnings = insecure(d)
    assert [w.split(" is writable")[0] for w in warnings] == [str(package_dir)], warnings


async def test_an_entrypoint_file_others_can_write_is_warned_about_at_start(tmp_path):
    """The entrypoint's module file itself writable by everyone (its directory is not): anyone can
    change the code servd runs, so "insecure permissions" names the file. Regression: hostcheck was given
    the module's directory only (daemon.py _check_host), never the file."""
    config_dir, package_dir, module = code_tree(tmp_path)
    (package_dir / "model.py").chmod(0o646)
    async with serve(config_dir, PERMISSIONS.format(module=module)) as d:
        warnings = insecure(d)
    assert any(w.startswith(str(package_dir / "model.py")) for w in warnings), warnings


async def test_a_sticky_world_writable_config_directory_is_warned_about(tmp_path):
    """A config directory like /tmp (world-writable, sticky): the sticky bit stops others replacing
    files, not adding them, and the config's directory goes first on sys.path, so anyone could plant a
    module that shadows an import of servd's models (torch.py, json.py). Regression: writable_by_others
    (hostcheck.py) exempted every sticky directory."""
    config_dir, _, module = code_tree(tmp_path)
    config_dir.chmod(0o1777)
    try:
        async with serve(config_dir, PERMISSIONS.format(module=module)) as d:
            warnings = insecure(d)
    finally:
        config_dir.chmod(0o755)
    assert any(w.startswith(str(config_dir) + " ") for w in warnings), warnings


# -- origins ---------------------------------------------------------------------------------------

ORIGINS = """
version: 1
server:
  allowed_origins: ["https://app.example", "http://localhost:3000"]
endpoints:
  echo:
    entrypoint: examples.echo:echo
"""


@pytest.mark.parametrize("path", ["/v1/ws", "/v1/endpoints/echo/ws"])
@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "null", "https://app.example.evil.example", "http://app.example",
     "https://app.example:443", "http://localhost:3001", "https://APP.example"],
)  # fmt: skip
async def test_a_websocket_from_an_origin_not_listed_is_refused_with_403(tmp_path, path, origin):
    """allowed_origins is an exact list: look-alike hosts, other schemes, ports, case or "null" (a
    sandboxed page) are refused with 403 before the upgrade; nothing from them is admitted."""
    async with serve(tmp_path, ORIGINS) as d:
        with pytest.raises(HTTPClientError) as refused:
            await d.ws(path, headers={"Origin": origin})
        assert refused.value.code == 403
        assert len(d.daemon.connections) == 0


@pytest.mark.parametrize("headers", [{"Origin": "https://app.example"}, {"Origin": "http://localhost:3000"}, {}])
async def test_a_websocket_from_a_listed_origin_or_none_is_served(tmp_path, headers):
    """Listed origins, and clients that send no Origin (not browsers), connect and are served."""
    async with serve(tmp_path, ORIGINS) as d:
        ws = await d.ws("/v1/ws", headers=headers)
        await ws.submit(1, "echo", "hi")
        assert (await ws.terminal(1))["data"] == "hi"
