"""Tensors as binary websocket frames on servd's own protocol, and servd.client's numpy arrays (issue 18)."""

from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
import pytest

from servd.client import AsyncClient, BadRequest, Client
from servd.client import _tensors as client_tensors
from servd.protocols import frames
from servd.protocols import ws_messages as protocol
from servd.tools import bench
from tests.harness import serve

CONFIG = """
version: 1
server:
  max_message_bytes: 65536
endpoints:
  simple:
    entrypoint: examples.tensors:add_sub
    batch: {max_size: 16, max_delay_ms: 2}
    tensors:
      inputs: [{name: INPUT0, datatype: INT32, shape: [-1, 4]}, {name: INPUT1, datatype: INT32, shape: [-1, 4]}]
      outputs: [{name: OUTPUT0, datatype: INT32, shape: [-1, 4]}, {name: OUTPUT1, datatype: INT32, shape: [-1, 4]}]
  upper:
    entrypoint: examples.tensors:upper
    tensors:
      inputs: [{name: text, datatype: BYTES, shape: [-1]}]
      outputs: [{name: text, datatype: BYTES, shape: [-1]}]
  echo:
    entrypoint: examples.echo:echo
"""


def pair(rows: int) -> dict[str, np.ndarray]:
    a = np.arange(4 * rows, dtype=np.int32).reshape(rows, 4)
    return {"INPUT0": a, "INPUT1": np.full_like(a, 10)}


def frame_of(header: dict[str, object], raw: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<I", len(text)) + text + raw


def test_a_client_frame_parses_into_arrays_and_outputs_encode_into_a_completed_frame():
    arrays = pair(2)
    submit = frames.parse(client_tensors.submit_frame(7, "simple", arrays, ',"priority":1'))
    assert submit.id == 7 and submit.endpoint == "simple" and submit.priority == 1
    assert all(np.array_equal(submit.data.arrays[k], v) for k, v in arrays.items())
    encoded = frames.encode_outputs({"y": np.ones((2, 2), np.float16)}, datatypes={"y": "FP16"})
    message = client_tensors.read_frame(frames.completed(7, encoded, protocol.timing(0.1, 0.2, 2)))
    assert message["type"] == "completed" and message["id"] == 7 and message["timing"]["batch_size"] == 2
    assert message["data"]["y"].dtype == np.float16 and message["data"]["y"].tolist() == [[1, 1], [1, 1]]


@pytest.mark.parametrize(
    ("frame", "words", "has_id"),
    [
        (b"\x01\x00", "starts with a 4-byte", False),
        (struct.pack("<I", 500) + b"{}", "past the end of the frame", False),
        (frame_of({"type": "cancel", "id": 1}, b""), "carries a submit", False),
        (frame_of({"type": "submit", "id": 3, "endpoint": "simple", "data": 5}, b""), "data must be", True),
        (frame_of({"type": "submit", "id": 3, "endpoint": "simple",
                   "data": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 4], "size": 16}]}, b"\x00" * 12),
         "size 16 runs past the end", True),
        (frame_of({"type": "submit", "id": 3, "endpoint": "simple",
                   "data": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 4], "size": 12}]}, b"\x00" * 12),
         "12 bytes of binary data, but INT32 of shape [1, 4] is 16 bytes", True),
        (frame_of({"type": "submit", "id": 3, "endpoint": "simple",
                   "data": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 4], "size": 16}]}, b"\x00" * 20),
         "4 bytes after the inputs", True),
    ],
)  # fmt: skip
def test_malformed_binary_frames_are_protocol_errors_naming_the_problem(frame, words, has_id):
    with pytest.raises(protocol.ProtocolError) as caught:
        frames.parse(frame)
    assert words in caught.value.message
    assert (caught.value.id == 3) is has_id


async def test_the_client_sends_numpy_arrays_as_binary_frames_and_gets_arrays_back(tmp_path):
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url) as client:
        sent = [pair(rows) for rows in (1, 3, 2)]
        results = await asyncio.gather(*(client.predict("simple", arrays) for arrays in sent))
        text = await client.predict("upper", {"text": np.array([b"abc", "d\u00e9".encode()], dtype=object)})
    for arrays, result in zip(sent, results, strict=True):
        assert result["OUTPUT0"].dtype == np.int32
        assert np.array_equal(result["OUTPUT0"], arrays["INPUT0"] + 10)
        assert np.array_equal(result["OUTPUT1"], arrays["INPUT0"] - 10)
    assert text["text"].tolist() == [b"ABC", "D\u00e9".encode()]


async def test_the_sync_client_and_the_http_transport_take_arrays_too(tmp_path):
    async with serve(tmp_path, CONFIG) as d:

        def call() -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
            with Client(d.ws_url) as ws, Client(d.url, transport="http") as http:
                return ws.predict("simple", pair(2)), http.predict("simple", pair(1))

        binary, as_json = await asyncio.to_thread(call)
    assert np.array_equal(binary["OUTPUT0"], pair(2)["INPUT0"] + 10)
    assert as_json == {"OUTPUT0": [[10, 11, 12, 13]], "OUTPUT1": [[-10, -9, -8, -7]]}, "HTTP sends and gets JSON"


async def test_bad_binary_frames_get_bad_request_and_the_socket_serves_on(tmp_path):
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url) as client:
        ws = await d.ws()
        await ws.send(struct.pack("<I", 500) + b"{}")
        first = await ws.wait_for(lambda m: m["type"] == "error")
        described = [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 4], "size": 12}]
        wrong = frame_of({"type": "submit", "id": "t", "endpoint": "simple", "data": described}, b"\x00" * 12)
        await ws.send(wrong)
        second = await ws.terminal("t")
        await ws.send(client_tensors.submit_frame(9, "echo", pair(1)))
        third = await ws.terminal(9)
        with pytest.raises(BadRequest, match="declares no tensors"):
            await client.predict("echo", pair(1))
        after = await client.predict("simple", pair(1))
        assert not ws.closed  # while the daemon runs (leaving `serve` closes every client)
    assert first["id"] is None and "past the end of the frame" in first["error"]["message"]
    assert second["error"]["code"] == "bad_request" and "is 16 bytes" in second["error"]["message"]
    assert third["error"]["code"] == "bad_request"
    assert after["OUTPUT0"].shape == (1, 4)


async def test_servd_bench_loads_a_tensor_workload_from_an_npz_file(tmp_path, capsys):
    """`servd bench --data-file x.npz` sends each request as one binary frame; every one completes."""
    path = tmp_path / "pair.npz"
    np.savez(path, **pair(2))
    async with serve(tmp_path, CONFIG) as d:
        argv = [d.ws_url, "--endpoint", "simple", "--data-file", str(path), "--clients", "2",
                "--duration", "0.5", "--warmup", "0", "--requests", "200", "--json"]  # fmt: skip
        code = await asyncio.to_thread(bench.cli, argv)
        served = d.daemon.endpoints["simple"].stats.completed
    level = json.loads(capsys.readouterr().out)["levels"][0]
    assert code == 0 and level["errors"] == {} and level["lost"] == 0
    assert level["completed"] > 0 and served >= level["completed"]
