"""tritonclient.http's gevent client against a real `servd run`, and clients that write a request in two parts (#24).

A new user found that tritonclient's gevent `async_infer` got about one request in flight: 48
requests with concurrency=8 to a 10 ms model took 0.52 s in batches of one row. The cause is
the client's own pacing: `async_infer` ends with `gevent.sleep(0.01)` (tritonclient/http/_client.py),
so it hands out one request per 10 ms whatever the server does, and a 10 ms model then sees them
one at a time. Used concurrently (greenlets calling `infer`), the same client fills servd's
batches; that is the first test, and the docs say so.

What was servd's: a client that writes its headers and then its body in a second write, with Nagle
on (geventhttpclient posting a file or a stream), has the body held by its own Nagle until
servd acknowledges the headers, and servd's kernel delayed that ACK by up to 40 ms on a kept-alive
connection. The listener now acknowledges at once when headers arrive ahead of their body
(servd/web/listener.py, TCP_QUICKACK); the second test measures that client.
"""

from __future__ import annotations

import io
import json
import re
import statistics
import time
from contextlib import AbstractContextManager
from pathlib import Path

import gevent
import gevent.pool
import numpy as np
import tritonclient.http as httpclient
from geventhttpclient import HTTPClient

from tests.procs import Running, http, running

MODEL = '''\
import time


def add_sub(inputs):
    """Triton's "simple" model at 10 ms a call, whatever the rows: batching is what makes it fast."""
    time.sleep(0.01)
    a, b = inputs["INPUT0"], inputs["INPUT1"]
    return {"OUTPUT0": a + b, "OUTPUT1": a - b}
'''
CONFIG = """\
version: 1
endpoints:
  simple:
    entrypoint: triton_simple_10ms:add_sub
    batch: {max_size: 64, max_delay_ms: 2}
    tensors:
      inputs:
        - {name: INPUT0, datatype: INT32, shape: [-1, 16]}
        - {name: INPUT1, datatype: INT32, shape: [-1, 16]}
      outputs:
        - {name: OUTPUT0, datatype: INT32, shape: [-1, 16]}
        - {name: OUTPUT1, datatype: INT32, shape: [-1, 16]}
  echo: {entrypoint: examples.echo:echo}
"""
REQUESTS = 48
CONCURRENCY = 8
DELAYED_ACK_S = 0.040  # Linux's least delayed-ACK time: what a held body used to add to each request


def serving(tmp_path: Path) -> AbstractContextManager[Running]:
    """`servd run` of CONFIG, with the 10 ms model beside its servd.yaml."""
    (tmp_path / "triton_simple_10ms.py").write_text(MODEL)
    return running(tmp_path, CONFIG)


def inputs() -> list[httpclient.InferInput]:
    values = np.arange(16, dtype=np.int32).reshape(1, 16)
    pair = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    for each in pair:
        each.set_data_from_numpy(values)
    return pair


def calls_and_rows(port: int) -> tuple[int, int]:
    """(entrypoint calls, rows served) of `simple`, from servd's batch-size histogram in /metrics."""
    text = http(port, "GET", "/metrics").body
    found = {
        kind: int(float(m.group(1)))
        for kind in ("count", "sum")
        if (m := re.search(rf'^servd_batch_size_{kind}{{endpoint="simple"}} (\S+)$', text, re.M))
    }
    return found.get("count", 0), found.get("sum", 0)


def test_tritonclients_gevent_client_used_concurrently_fills_servds_batches(tmp_path):
    """Eight greenlets calling `infer` on a client with concurrency=8: servd sees them together, so the 48
    requests are served in batches of several rows (not one by one), each answer right."""
    with serving(tmp_path) as daemon:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{daemon.port}", concurrency=CONCURRENCY)
        try:
            pool = gevent.pool.Pool(CONCURRENCY)
            jobs = [pool.spawn(client.infer, "simple", inputs()) for _ in range(REQUESTS)]
            gevent.joinall(jobs, raise_error=True)
        finally:
            client.close()
        calls, rows = calls_and_rows(daemon.port)
    expected = np.arange(16, dtype=np.int32).reshape(1, 16) * 2
    assert all((job.value.as_numpy("OUTPUT0") == expected).all() for job in jobs)
    assert rows == REQUESTS
    assert rows / calls >= 2, f"{calls} calls for {rows} rows: the requests reached servd one at a time"


def test_a_body_written_after_its_headers_is_not_held_for_a_delayed_ack(tmp_path):
    """geventhttpclient (tritonclient's HTTP library) sends a file body in a write of its own after the
    headers, with Nagle on, so that write waits until the headers are acknowledged: servd acknowledges at
    once, and sequential requests on one kept-alive connection take a few ms, not 40 ms (a delayed ACK) each."""
    body = b'{"data": 1}'
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    took = []
    with serving(tmp_path) as daemon:
        client = HTTPClient("127.0.0.1", daemon.port, concurrency=1, network_timeout=30)
        try:
            for _ in range(20):
                began = time.perf_counter()
                answer = client.post("/v1/endpoints/echo", body=io.BytesIO(body), headers=headers)
                assert answer.status_code == 200 and json.loads(answer.read())["data"] == 1
                took.append(time.perf_counter() - began)
        finally:
            client.close()
    assert statistics.median(took) < DELAYED_ACK_S / 2, [f"{t * 1e3:.1f} ms" for t in took]
