"""Serving the built tracker: content type, ETag / 304, Cache-Control, gzip, 404 when missing."""

from __future__ import annotations

import gzip
from pathlib import Path

from .conftest import MakeCollector

JS = b"!function(w){(w.tripwire=w.tripwire||{}).q=[]}(window);\n" * 20


async def test_snippet_is_served_with_caching_headers(make_collector: MakeCollector, tmp_path: Path) -> None:
    path = tmp_path / "t.js"
    path.write_bytes(JS)
    c = await make_collector({"collector": {"snippet_file": str(path), "snippet_path": "/js/t.js"}})
    r = await c.client.get("/js/t.js", headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200
    assert r.content == JS
    assert r.headers["content-type"].startswith("text/javascript")
    assert "max-age=3600" in r.headers["cache-control"]
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')

    again = await c.client.get("/js/t.js", headers={"If-None-Match": etag, "Accept-Encoding": "identity"})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag

    zipped = await c.client.get("/js/t.js", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == JS  # httpx inflates
    assert int(zipped.headers["content-length"]) < len(JS)
    assert gzip.decompress(gzip.compress(JS)) == JS
    # A strong ETag names one representation: the gzipped bytes have their own, each revalidates itself.
    gz_etag = zipped.headers["etag"]
    assert gz_etag != etag and gz_etag.startswith('"') and gz_etag.endswith('"')
    again = await c.client.get("/js/t.js", headers={"If-None-Match": gz_etag, "Accept-Encoding": "gzip"})
    assert again.status_code == 304 and again.headers["etag"] == gz_etag
    other = await c.client.get("/js/t.js", headers={"If-None-Match": gz_etag, "Accept-Encoding": "identity"})
    assert other.status_code == 200 and other.content == JS and other.headers["etag"] == etag

    head = await c.client.head("/js/t.js", headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200 and head.headers["etag"] == etag


async def test_rebuilt_snippet_gets_a_new_etag_without_restart(make_collector: MakeCollector, tmp_path: Path) -> None:
    path = tmp_path / "t.js"
    path.write_bytes(JS)
    c = await make_collector({"collector": {"snippet_file": str(path)}})
    first = (await c.client.get("/t.js")).headers["etag"]
    path.write_bytes(JS + b"// v2\n")
    r = await c.client.get("/t.js", headers={"If-None-Match": first})
    assert r.status_code == 200 and r.content.endswith(b"// v2\n")
    assert r.headers["etag"] != first


async def test_missing_snippet_is_a_404_naming_the_file(make_collector: MakeCollector, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "t.js"
    c = await make_collector({"collector": {"snippet_file": str(missing)}})
    r = await c.client.get("/t.js")
    assert r.status_code == 404
    assert r.json()["error"] == "snippet_not_built"
    assert str(missing) in r.json()["message"]


async def test_the_packaged_tracker_is_served_by_default(make_collector: MakeCollector) -> None:
    from tripwire.collector.snippet import PACKAGED

    c = await make_collector()
    r = await c.client.get("/t.js", headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200, r.text  # js-snippet's build output is committed with the package
    assert r.content == PACKAGED.read_bytes()
