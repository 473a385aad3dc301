"""Every config in the repo passes `servd check` as it is, and the instances example serves on two devices."""

from pathlib import Path

import pytest

from examples.digits import sample_images
from servd.daemon.loading import load_checked
from tests.harness import serve

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [ROOT / "servd.yaml", *sorted((ROOT / "examples").glob("*.yaml"))]
SERVD_CONFIGS = [p for p in CONFIGS if "endpoints:" in p.read_text()]


@pytest.mark.parametrize("path", SERVD_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_passes_servd_check(path):
    checked = load_checked(path)
    assert checked.spec.endpoints


async def test_instances_example_serves_on_two_cpu_instances(tmp_path):
    """examples/instances.yaml: two model instances, and a real digit classified."""
    text = (ROOT / "examples" / "instances.yaml").read_text().replace("port: 8701", "port: 0")
    async with serve(tmp_path, text) as d:
        endpoint = (await d.http("GET", "/v1/endpoints/classify")).json()
        assert endpoint["devices"] == ["cpu", "cpu"]
        reply = await d.post("classify", sample_images(1)[0])
        assert reply.status == 200
        assert reply.json()["data"]["label"] == 0
