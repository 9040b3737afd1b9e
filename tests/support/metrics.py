"""/metrics as Prometheus reads it: every sample by name, parsed by prometheus_client (which
refuses malformed exposition text)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import Api

Samples = dict[str, list[tuple[dict[str, str], float]]]


def metric_samples(api: Api) -> Samples:
    """Every sample of a real GET /metrics, by sample name."""
    response = api.get("/metrics")
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value_of(samples: Samples, name: str, queue: str) -> float:
    [value] = [value for labels, value in samples[name] if labels["queue"] == queue]
    return value
