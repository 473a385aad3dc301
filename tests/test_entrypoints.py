"""Entrypoint kinds end to end: classes per device with options, close(), load failures,
batched generators, and torch models (inference mode, a real trained classifier)."""

from __future__ import annotations

import pytest

from examples.faults import Counter
from examples.probes import RecordsInit, RecordsInitWithoutDevice
from servd.runners.entrypoints import EntrypointError
from tests.harness import eventually, serve


async def test_class_is_instantiated_once_per_device_with_device_and_options(tmp_path):
    """A class entrypoint is built once per listed device, as Class(device=..., **options)."""
    config = """
    version: 1
    endpoints:
      scaled:
        entrypoint: examples.probes:RecordsInit
        device: [cpu, cpu]
        options: {scale: 3}
    """
    RecordsInit.made.clear()
    async with serve(tmp_path, config) as d:
        assert RecordsInit.made == [{"device": "cpu", "scale": 3}] * 2
        assert (await d.post("scaled", 5)).json()["data"] == 15


async def test_class_without_device_parameter_gets_only_options(tmp_path):
    """A class whose __init__ has no `device` parameter is built with the options alone."""
    config = """
    version: 1
    endpoints:
      scaled:
        entrypoint: examples.probes:RecordsInitWithoutDevice
        options: {scale: 4}
    """
    RecordsInitWithoutDevice.made.clear()
    async with serve(tmp_path, config) as d:
        assert RecordsInitWithoutDevice.made == [{"scale": 4}]
        assert (await d.post("scaled", 2)).json()["data"] == 8


async def test_instances_are_closed_when_the_daemon_shuts_down(tmp_path):
    """Shutting the daemon down calls close() on every instance, once each."""
    config = """
    version: 1
    endpoints:
      counter:
        entrypoint: examples.faults:Counter
        device: [cpu, cpu]
    """
    Counter.closed.clear()
    async with serve(tmp_path, config) as d:
        assert (await d.post("counter", "x")).json()["data"]["count"] == 1
        assert Counter.closed == []
    await eventually(lambda: len(Counter.closed) >= 2, "both instances to be closed")
    assert Counter.closed == ["cpu", "cpu"]


async def test_class_whose_init_raises_fails_the_start_naming_it(tmp_path):
    """If a class entrypoint's constructor raises, daemon.start() raises an error naming the class and why."""
    config = """
    version: 1
    endpoints:
      broken:
        entrypoint: examples.faults:FailsToLoad
    """
    with pytest.raises(EntrypointError, match=r"examples\.faults:FailsToLoad.*RuntimeError.*weights file missing"):
        async with serve(tmp_path, config):
            pass


async def test_batched_generator_streams_each_request_its_own_partials(tmp_path):
    """A batched generator's yielded lists reach each request as its own partials; the last is its data."""
    config = """
    version: 1
    endpoints:
      steps:
        entrypoint: examples.probes:steps_batch
        batch: {max_size: 3, max_delay_ms: 5000, wait: always}
    """
    async with serve(tmp_path, config) as d:
        ws = await d.ws()
        for word in ("a", "b", "c"):
            await ws.submit(word, "steps", word)
        for word in ("a", "b", "c"):
            done = await ws.terminal(word)
            partials = [m["data"] for m in ws.of(word) if m["type"] == "partial"]
            assert partials == [f"{word}:0", f"{word}:1", f"{word}:2"]
            assert done["type"] == "completed"
            assert done["data"] == f"{word}:2"
            assert done["timing"]["batch_size"] == 3


async def test_calls_run_under_torch_inference_mode(tmp_path):
    """Entrypoint calls run inside torch.inference_mode()."""
    config = """
    version: 1
    endpoints:
      mode:
        entrypoint: examples.probes:inference_mode_enabled
    """
    async with serve(tmp_path, config) as d:
        assert (await d.post("mode", None)).json()["data"] is True


async def test_digits_classifier_labels_real_images(tmp_path):
    """The batched digits Classifier labels at least 8 of the first 10 real digit images correctly."""
    from sklearn.datasets import load_digits

    from examples.digits import sample_images

    config = """
    version: 1
    endpoints:
      classify:
        entrypoint: examples.digits:Classifier
        options: {hidden: 64}
        batch: {max_size: 16, max_delay_ms: 5}
    """
    async with serve(tmp_path, config) as d:
        ws = await d.ws()
        images = sample_images(10)
        for i, image in enumerate(images):
            await ws.submit(i, "classify", image, progress=False)
        terminals = [await ws.terminal(i) for i in range(10)]
        assert [t["type"] for t in terminals] == ["completed"] * 10
        labels = [t["data"]["label"] for t in terminals]
        correct = sum(label == int(target) for label, target in zip(labels, load_digits().target[:10], strict=True))
        assert correct >= 8, labels
        assert all(0.0 <= t["data"]["confidence"] <= 1.0 for t in terminals)
