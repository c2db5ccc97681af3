"""/openapi.json says what the collector does: schemathesis generates requests from it and checks the answers.

A real uvicorn on loopback serves a collector with a source (so the write key
matters) on a real SQLite log. For each operation schemathesis sends requests
that fit the description (which must then be accepted) and requests that break it
(which must be refused with a 4xx), and checks every answer against the documented
statuses, content types and schemas; no answer may be a 5xx. A fixed seed and a
bounded number of examples per operation keep it deterministic and quick.

Each operation's strategy (schemathesis' ``as_strategy``) runs under hypothesis here
rather than through ``schemathesis.pytest.from_fixture``, whose test wrapper reads
pytest's private ``Function._nodeid``, gone in pytest 9.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from tripwire.collector import create_app
from tripwire.config import from_dict
from tripwire.log.sqlite import SqliteLog

from ..fixtures.servers import run_server
from .conftest import SOURCES, WRITE_KEY, basic

EXAMPLES_PER_OPERATION = 40
SEED = 20261207


@pytest.fixture(scope="module")
def collector_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("openapi")
    config = from_dict({"data_dir": str(data), "sources": SOURCES})
    app = create_app(config, SqliteLog(data / "log.db", 4), own_log=True)
    with run_server(app) as server:
        yield server.url


def check_operation(operation: Any, mode: GenerationMode) -> None:
    """Hypothesis over one operation's generated cases; raises the (shrunk) first failure."""

    @seed(SEED)
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        excluded = []
        if isinstance(case.query, dict):  # the pixel: its write key travels in the query
            case.query["writeKey"] = WRITE_KEY
            if "data" in case.query:
                # data is a whole event in base64, checked by the server as a body is; a generator of
                # strings cannot aim at valid ones. Its refusals must still be documented 4xx.
                excluded.append(positive_data_acceptance)
        # The API's write key as the SDKs send it, unless the case is about the Authorization header.
        headers = None if "Authorization" in (case.headers or {}) else basic(WRITE_KEY)
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    run()


def test_every_answer_is_what_openapi_json_describes(collector_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{collector_url}/openapi.json")
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        has_input = any(len(part) for part in (operation.path_parameters, operation.headers, operation.query)) or bool(operation.body)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,):
            try:
                check_operation(operation, mode)
            except (Exception, BaseExceptionGroup) as exc:  # every operation's failure, reported together
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    assert not failures, "\n\n".join(failures)


def test_the_description_is_served_and_names_every_route(collector_url: str) -> None:
    doc = httpx.get(f"{collector_url}/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    assert {"/v1/track", "/v1/batch", "/v1/pixel", "/v1/pixel/{type}", "/t.js"} <= set(doc["paths"])
