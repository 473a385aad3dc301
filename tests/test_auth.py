"""Bearer tokens (server.tokens_file): who is let in, on which routes (DESIGN.md §4)."""

from __future__ import annotations

import pytest
from tornado.httpclient import HTTPClientError

from tests.harness import serve

CONFIG = """
version: 1
server:
  tokens_file: tokens.txt
endpoints:
  echo:
    entrypoint: examples.echo:echo
"""

TOKENS = "# one token a line\nalpha-secret\n\n  beta-secret  \n"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def config(tmp_path):
    (tmp_path / "tokens.txt").write_text(TOKENS)
    return CONFIG


async def test_post_without_token_is_401_with_www_authenticate(tmp_path, config):
    """Without a token a POST gets 401 unauthorized and a WWW-Authenticate: Bearer challenge."""
    async with serve(tmp_path, config) as d:
        reply = await d.post("echo", 1)
        assert reply.status == 401
        assert reply.json()["error"]["code"] == "unauthorized"
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")


async def test_post_with_wrong_token_is_401(tmp_path, config):
    """A token not in the file gets 401 unauthorized, as does a comment line or a non-Bearer scheme."""
    async with serve(tmp_path, config) as d:
        for headers in (bearer("gamma-secret"), bearer("# one token a line"), {"Authorization": "Basic alpha-secret"}):
            reply = await d.post("echo", 1, headers=headers)
            assert reply.status == 401, headers
            assert reply.json()["error"]["code"] == "unauthorized"


async def test_post_with_a_listed_token_is_served(tmp_path, config):
    """Each token in the file (surrounding spaces trimmed) is accepted as Authorization: Bearer."""
    async with serve(tmp_path, config) as d:
        for token in ("alpha-secret", "beta-secret"):
            reply = await d.post("echo", token, headers=bearer(token))
            assert reply.status == 200
            assert reply.json()["data"] == token


async def test_websocket_without_token_is_refused_with_401(tmp_path, config):
    """A websocket opened without a token (or with a wrong one) is refused before the upgrade with 401
    and a WWW-Authenticate: Bearer challenge."""
    async with serve(tmp_path, config) as d:
        for path, headers in (("/v1/ws", {}), ("/v1/ws?token=nope", {}), ("/v1/endpoints/echo/ws", bearer("nope"))):
            with pytest.raises(HTTPClientError) as refused:
                await d.ws(path, headers=headers)
            assert refused.value.code == 401, path
            assert refused.value.response is not None
            assert refused.value.response.headers["WWW-Authenticate"].startswith("Bearer"), path


async def test_websocket_with_token_in_query_is_served(tmp_path, config):
    """?token= (for browsers, which can't set websocket headers) opens the socket and requests are served."""
    async with serve(tmp_path, config) as d:
        ws = await d.ws("/v1/ws?token=alpha-secret")
        await ws.submit(1, "echo", "via query")
        assert (await ws.terminal(1))["data"] == "via query"


async def test_websocket_with_token_in_header_is_served(tmp_path, config):
    """Authorization: Bearer opens both websocket routes and requests are served."""
    async with serve(tmp_path, config) as d:
        for path in ("/v1/ws", "/v1/endpoints/echo/ws"):
            ws = await d.ws(path, headers=bearer("beta-secret"))
            await ws.submit(1, "echo", path)
            assert (await ws.terminal(1))["data"] == path


async def test_probes_stay_open_without_a_token(tmp_path, config):
    """/healthz and /readyz answer without a token, so load balancers and systemd probes work."""
    async with serve(tmp_path, config) as d:
        assert (await d.http("GET", "/healthz")).status == 200
        assert (await d.http("GET", "/readyz")).status == 200


@pytest.mark.parametrize("path", ["/metrics", "/v1/status", "/v1/endpoints", "/v1/endpoints/echo"])
async def test_operator_routes_need_a_token(tmp_path, config, path):
    """/metrics, /v1/status and /v1/endpoints show the config: 401 without a token, 200 with one."""
    async with serve(tmp_path, config) as d:
        refused = await d.http("GET", path)
        assert refused.status == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert "WWW-Authenticate" in refused.headers
        assert (await d.http("GET", path, headers=bearer("alpha-secret"))).status == 200


async def test_unauthorized_body_does_not_echo_the_token(tmp_path, config):
    """A refused token is not reflected back in the 401 body."""
    async with serve(tmp_path, config) as d:
        reply = await d.post("echo", 1, headers=bearer("leaky-guess"))
        assert b"leaky-guess" not in reply.body
