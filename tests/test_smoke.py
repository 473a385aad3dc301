"""The daemon serves the three kinds of entrypoint end to end over both transports."""

from tests.harness import serve

CONFIG = """
version: 1
endpoints:
  echo:
    entrypoint: examples.echo:echo
  words:
    entrypoint: examples.stream:words
"""


async def test_echo_over_websocket_gets_queued_started_completed(tmp_path):
    """A websocket submit sees queued (rank 0), started, then completed with the data back."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.submit("a", "echo", {"x": [1, 2]})
        done = await ws.terminal("a")
        kinds = [m["type"] for m in ws.of("a")]
        assert kinds == ["queued", "started", "completed"]
        assert ws.of("a")[0]["rank"] == 0
        assert done["data"] == {"x": [1, 2]}
        assert done["timing"]["batch_size"] == 1


async def test_echo_over_http(tmp_path):
    """POST returns the data and the timing."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.post("echo", [1, "two"])
        assert reply.status == 200
        assert reply.json()["data"] == [1, "two"]


async def test_generator_streams_partials(tmp_path):
    """Each yielded value arrives as a partial; the last is also the completed data."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.submit(7, "words", {"text": "one two three", "delay_s": 0.001})
        done = await ws.terminal(7)
        partials = [m["data"] for m in ws.of(7) if m["type"] == "partial"]
        assert partials == ["one", "one two", "one two three"]
        assert done["data"] == "one two three"
