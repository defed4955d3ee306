"""`metadata:` and quota mode through the real service over gRPC: with
--response-dynamic-metadata the answer carries the request and the passed descriptors' metadata
(as the reference's RESPONSE_DYNAMIC_METADATA); without it, nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.processes import Launcher
from fixtures.rls import OK, OVER_LIMIT, RlsClient, descriptor
from google.protobuf.json_format import MessageToDict

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

CONFIG = """
domain: meta
descriptors:
  - key: plan
    value: gold
    quota_mode: true
    metadata: {tier: {name: gold, weight: 3}}
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: plan
    value: silver
    quota_mode: true
    metadata: {tier: {backup: silver}, other: [1, 2]}
    rate_limit: {unit: minute, requests_per_unit: 2}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "meta.yaml"
    path.write_text(CONFIG)
    return path


def test_dynamic_metadata_and_quota_mode_over_grpc(launch: Launcher, config: Path) -> None:
    service = launch.ratelimit(config, extra_args=["--response-dynamic-metadata"])
    request = [descriptor([("plan", "gold")]), descriptor([("plan", "silver")], hits_addend=1)]
    with RlsClient(service.address) as client:
        client.wait_ready()
        answers = [client.should("meta", request, hits_addend=1) for _ in range(3)]
    assert [a.overall_code for a in answers] == [
        OK,
        OK,
        OVER_LIMIT,
    ]  # over only once both quota descriptors are
    first = MessageToDict(answers[0].dynamic_metadata)
    assert first["domain"] == "meta" and first["hitsAddend"] == 1
    assert first["descriptors"] == [{"entries": ["plan=gold"]}, {"entries": ["plan=silver"], "hitsAddend": 1}]
    assert first["metadata"] == {"tier": {"name": "gold", "weight": 3, "backup": "silver"}, "other": [1, 2]}
    # gold is over from the second call on: only silver's metadata passes
    assert MessageToDict(answers[1].dynamic_metadata)["metadata"] == {
        "tier": {"backup": "silver"},
        "other": [1, 2],
    }
    assert "metadata" not in MessageToDict(answers[2].dynamic_metadata)


def test_no_dynamic_metadata_without_the_flag(launch: Launcher, config: Path) -> None:
    service = launch.ratelimit(config)
    with RlsClient(service.address) as client:
        client.wait_ready()
        answer = client.should("meta", [descriptor([("plan", "gold")])])
    assert answer.overall_code == OK and not answer.HasField("dynamic_metadata")
