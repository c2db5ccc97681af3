"""The event catalog file format, read once in the spine for the collector and the sink."""

from __future__ import annotations

from pathlib import Path

import pytest

from tripwire.catalog import CatalogError, load_catalog
from tripwire.collector.catalog import Catalog
from tripwire.collector.errors import CollectorError
from tripwire.sinks.catalog import read_catalog
from tripwire.sinks.errors import SinkError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "catalog.json"


def test_the_example_catalog_reads_with_its_entries() -> None:
    catalog = load_catalog(EXAMPLE)
    assert "Product Added" in catalog.events
    entry = catalog.events["Product Added"]
    assert entry.where == "events.Product Added"
    assert isinstance(entry.schema, dict) and entry.schema["required"] == ["sku", "quantity"]
    assert catalog.traits is not None and "email" in catalog.traits.pii
    assert catalog.entries()[-1] is catalog.traits


@pytest.mark.parametrize(("text", "message"), [
    (None, "does not exist"),
    ("{", "is not valid JSON"),
    ('{"events": []}', "expected an object with an 'events' object"),
    ('{"events": {}, "rules": 1}', "unknown key(s) rules"),
    ('{"events": {"A": 1}}', "'events.A' must be an object"),
    ('{"events": {"A": {"shcema": {}}}}', "'events.A' has unknown key(s) shcema"),
    ('{"events": {"A": {"pii": "email"}}}', "'events.A.pii' must be a list of property paths"),
    ('{"events": {"A": {"pii": [""]}}}', "'events.A.pii' must be a list of property paths"),
    ('{"events": {}, "traits": {"schema": "string"}}', "'traits.schema' must be a JSON Schema"),
    ('{"events": {"A": {"schema": null}}}', "'events.A.schema' must be a JSON Schema"),
])
def test_every_room_refuses_a_bad_file_with_the_same_message(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "catalog.json"
    if text is not None:
        path.write_text(text)
    errors = []
    for read in (load_catalog, lambda p: Catalog.load(p, strict=False, salt=b"s"), read_catalog):
        with pytest.raises(CatalogError) as info:
            read(path)
        errors.append(info.value)
    assert len({str(e) for e in errors}) == 1, errors
    assert str(path) in str(errors[0]) and message in str(errors[0]), errors[0]
    # Each room's error is also its own root, so the room's callers keep catching what they caught.
    assert isinstance(errors[1], CollectorError) and isinstance(errors[2], SinkError)


def test_a_schema_that_does_not_compile_is_a_catalog_error_not_a_crash(tmp_path: Path) -> None:
    # fastjsonschema raises AttributeError, TypeError or re.error for some of these.
    for schema in ('{"properties": 1}', '{"pattern": "("}', '{"items": 3}', '{"type": 5}'):
        path = tmp_path / "catalog.json"
        path.write_text('{"events": {"A": {"schema": %s}}}' % schema)
        with pytest.raises(CatalogError, match="'events.A.schema' is not a valid JSON Schema"):
            Catalog.load(path, strict=False, salt=b"s")
