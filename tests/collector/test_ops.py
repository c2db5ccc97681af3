"""Operations endpoints: /metrics, /healthz, /readyz, /openapi.json; source config errors."""

from __future__ import annotations

import re

import pytest

from tripwire.collector.config import load_sources
from tripwire.config import ConfigError, from_dict

from .conftest import SERVER_KEY, Collector, MakeCollector, basic


def sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def metrics_text(c: Collector) -> str:
    r = await c.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return r.text


async def test_metrics_count_requests_events_and_append_latency(make_collector: MakeCollector) -> None:
    c = await make_collector({"sources": {"s": {"write_key": SERVER_KEY}}})
    before = await metrics_text(c)
    await c.client.post("/v1/batch", json={"batch": [{"type": "track", "event": "E", "userId": "u"}] * 3}, headers=basic(SERVER_KEY))
    await c.client.post("/v1/track", content=b"{", headers=basic(SERVER_KEY))
    await c.client.post("/v1/track", json={"event": "E", "userId": "u"}, headers=basic("wrong"))
    after = await metrics_text(c)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("tripwire_collector_requests_total", route="/v1/batch", status="200") == 1
    assert delta("tripwire_collector_requests_total", route="/v1/track", status="400") == 1
    assert delta("tripwire_collector_requests_total", route="/v1/track", status="401") == 1
    assert delta("tripwire_collector_events_accepted_total") == 3
    assert delta("tripwire_collector_events_rejected_total", reason="invalid_json") == 1
    assert delta("tripwire_collector_events_rejected_total", reason="unknown_write_key") == 1
    assert delta("tripwire_log_append_seconds_count", topic="events") == 1
    assert "tripwire_log_spill_depth 0.0" in after


async def test_invalid_events_are_counted_by_reason(make_collector: MakeCollector, tmp_path) -> None:
    catalog = tmp_path / "c.json"
    catalog.write_text('{"events": {"A": {"schema": {"type": "object", "required": ["x"]}}}}')
    c = await make_collector({"collector": {"catalog": str(catalog), "strict": True, "pii_salt": "s"}})
    before = await metrics_text(c)
    await c.client.post("/v1/track", json={"event": "A", "userId": "u"})
    await c.client.post("/v1/track", json={"event": "B", "userId": "u"})
    after = await metrics_text(c)
    for reason in ("schema", "unknown_event"):
        name = "tripwire_collector_events_invalid_total"
        assert sample(after, name, reason=reason) - sample(before, name, reason=reason) == 1


async def test_health_and_readiness(make_collector: MakeCollector) -> None:
    c = await make_collector()
    assert (await c.client.get("/healthz")).json() == {"status": "ok"}
    assert (await c.client.get("/readyz")).status_code == 200
    await c.log.stop()
    r = await c.client.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"]
    assert (await c.client.get("/healthz")).status_code == 200  # alive, just not ready


async def test_openapi_describes_the_api(collector: Collector) -> None:
    r = await collector.client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    for path in ("/v1/track", "/v1/page", "/v1/screen", "/v1/identify", "/v1/alias", "/v1/group", "/v1/batch"):
        assert "post" in doc["paths"][path]
        assert "413" in doc["paths"][path]["post"]["responses"]
    assert "get" in doc["paths"]["/v1/pixel/{type}"]
    assert re.search(r"\b32768\b", doc["paths"]["/v1/track"]["post"]["requestBody"]["description"])


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ({"web": {"origins": ["https://a.example"]}}, "sources.web.write_key"),
        ({"a": {"write_key": "k"}, "b": {"write_key": "k"}}, "sources.b.write_key"),
        ({"web": {"write_key": "k", "origins": ["a.example"]}}, r"sources.web.origins\[0\]"),
        ({"web": {"write_key": "k", "colour": "red"}}, "sources.web.colour"),
        ({"web": "k"}, "sources.web"),
    ],
)
def test_source_config_errors_name_the_key(sources: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_sources(from_dict({"sources": sources}))


def test_sources_from_environment_overrides() -> None:
    from tripwire.config import load_config

    config = load_config(None, {"TRIPWIRE_SOURCES__SHOP__WRITE_KEY": "k1", "TRIPWIRE_SOURCES__SHOP__ORIGINS": '["https://shop.example/"]'})
    (source,) = load_sources(config).values()
    assert source.name == "shop" and source.write_key == "k1" and source.origins == ["https://shop.example"]


async def test_the_sample_config_and_catalog_load(tmp_path) -> None:
    from tripwire.collector import create_app
    from tests.collector.conftest import REPO_EXAMPLES
    from tripwire.config import load_config
    from tripwire.log.memory import MemoryLog

    config = load_config(REPO_EXAMPLES / "tripwire.toml", {"TRIPWIRE_DATA_DIR": str(tmp_path), "TRIPWIRE_COLLECTOR__PII_SALT": "s"})
    app = create_app(config, MemoryLog())
    assert {s.name for s in app.state.intake.sources.values()} >= {"shop", "backend"}
    assert "Product Added" in app.state.intake.catalog.event_names
