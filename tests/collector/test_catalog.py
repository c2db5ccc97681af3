"""The event catalog: schema validation, unknown events (strict/lenient), PII hashing, the invalid topic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tripwire.collector.catalog import Catalog, resolve_salt
from tripwire.collector.errors import CatalogError

from .conftest import REPO_EXAMPLES, MakeCollector

SALT = "pepper"


def _config(strict: bool) -> dict:
    return {"collector": {"catalog": str(REPO_EXAMPLES / "catalog.json"), "strict": strict, "pii_salt": SALT}}


def h(value: str) -> str:
    return hashlib.sha256(SALT.encode() + value.encode()).hexdigest()


async def test_valid_event_goes_to_events(make_collector: MakeCollector) -> None:
    c = await make_collector(_config(strict=True))
    r = await c.client.post("/v1/track", json={"event": "Product Added", "userId": "u", "properties": {"sku": "A1", "quantity": 2}})
    assert r.status_code == 200 and r.json() == {"success": True}
    assert [e["event"] for e in await c.records()] == ["Product Added"]
    assert await c.invalid() == []


async def test_invalid_event_goes_to_invalid_with_reason_and_is_acknowledged(make_collector: MakeCollector) -> None:
    c = await make_collector(_config(strict=False))
    r = await c.client.post(
        "/v1/track",
        json={"event": "Product Added", "anonymousId": "a", "messageId": "m1", "properties": {"sku": "A1", "quantity": 0}},
    )
    assert r.status_code == 200  # accepted into the invalid topic: the SDK must not retry
    assert await c.records() == []
    (record,) = await c.invalid()
    assert record["reason"] == "schema"
    assert record["field"] == "properties.quantity"
    assert "properties.quantity" in record["message"]
    assert record["messageId"] == "m1" and record["source"] == "dev"
    assert record["event"]["properties"] == {"sku": "A1", "quantity": 0}  # the event as received
    ((key, _),) = await c.keyed("invalid")
    assert key == b"a"


async def test_missing_required_property_names_it(make_collector: MakeCollector) -> None:
    c = await make_collector(_config(strict=False))
    await c.client.post("/v1/track", json={"event": "Order Completed", "userId": "u", "properties": {"total": 5}})
    (record,) = await c.invalid()
    assert record["reason"] == "schema" and "order_id" in record["message"]


@pytest.mark.parametrize(("strict", "topic"), [(True, "invalid"), (False, "events")])
async def test_unknown_event_strict_and_lenient(make_collector: MakeCollector, strict: bool, topic: str) -> None:
    c = await make_collector(_config(strict=strict))
    r = await c.client.post("/v1/track", json={"event": "Something Else", "userId": "u"})
    assert r.status_code == 200
    if strict:
        (record,) = await c.invalid()
        assert record["reason"] == "unknown_event" and record["field"] == "event"
        assert await c.records() == []
    else:
        assert [e["event"] for e in await c.records()] == ["Something Else"]
        assert await c.invalid() == []


async def test_other_types_pass_a_strict_catalog(make_collector: MakeCollector) -> None:
    c = await make_collector(_config(strict=True))
    assert (await c.client.post("/v1/page", json={"userId": "u", "name": "Home"})).status_code == 200
    assert len(await c.records()) == 1


async def test_pii_is_hashed_in_valid_and_invalid_events(make_collector: MakeCollector) -> None:
    c = await make_collector(_config(strict=True))
    good = {"order_id": "o1", "total": 9.5, "email": " Ann@Example.COM ", "shipping": {"phone": "+49 30 1234"}}
    bad = {"total": 1, "email": "bob@example.com"}
    r = await c.client.post(
        "/v1/batch",
        json={"batch": [
            {"type": "track", "event": "Order Completed", "userId": "u", "properties": good},
            {"type": "track", "event": "Order Completed", "userId": "u", "properties": bad},
            {"type": "identify", "userId": "u", "traits": {"email": "ann@example.com", "plan": "pro"}},
        ]},
    )
    assert r.status_code == 200
    events = await c.records()
    order = next(e for e in events if e["type"] == "track")
    assert order["properties"]["email"] == h("ann@example.com")  # trimmed and lower-cased
    assert order["properties"]["shipping"]["phone"] == h("+49 30 1234")
    assert order["properties"]["order_id"] == "o1"
    ident = next(e for e in events if e["type"] == "identify")
    assert ident["traits"] == {"email": h("ann@example.com"), "plan": "pro"}
    (invalid,) = await c.invalid()
    assert invalid["event"]["properties"]["email"] == h("bob@example.com")
    assert "bob@example.com" not in json.dumps(invalid)


async def test_identify_traits_schema(make_collector: MakeCollector) -> None:
    c = await make_collector(_config(strict=False))
    await c.client.post("/v1/identify", json={"userId": "u", "traits": {"plan": "platinum"}})
    (record,) = await c.invalid()
    assert record["field"] == "traits.plan"


async def test_no_catalog_accepts_every_well_formed_event(make_collector: MakeCollector) -> None:
    c = await make_collector({})
    await c.client.post("/v1/track", json={"event": "Product Added", "userId": "u", "properties": {"quantity": "lots"}})
    assert len(await c.records()) == 1


def test_catalog_errors_name_the_file_and_entry(tmp_path: Path) -> None:
    cases = {
        "missing.json": None,
        "broken.json": "{",
        "shape.json": '{"events": []}',
        "extra.json": '{"events": {}, "rules": 1}',
        "schema.json": '{"events": {"A": {"schema": {"type": "nonsense"}}}}',
        "pii.json": '{"events": {"A": {"pii": "email"}}}',
        "key.json": '{"events": {"A": {"shcema": {}}}}',
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(CatalogError) as info:
            Catalog.load(path, strict=False, salt=b"s")
        assert str(path) in str(info.value), name
    with pytest.raises(CatalogError, match="'events.A.schema'"):
        Catalog.load(tmp_path / "schema.json", strict=False, salt=b"s")


def test_generated_salt_is_stable_and_private(tmp_path: Path) -> None:
    first = resolve_salt("", tmp_path)
    assert resolve_salt("", tmp_path) == first and len(first) == 64
    assert (tmp_path / "pii-salt").stat().st_mode & 0o077 == 0
    assert resolve_salt("configured", tmp_path) == b"configured"
