"""Prometheus metrics and probes for the standalone services (``engine``, ``dispatcher``, ``sink``).

The collector serves ``/metrics``, ``/healthz`` and ``/readyz`` on its own port.
The other services have no HTTP port, so ``tripwire --metrics-port PORT <command>``
(or ``[metrics] port = PORT``, ``TRIPWIRE_METRICS__PORT``) starts this small
server next to them, in a daemon thread::

    [metrics]
    host = "127.0.0.1"   # 0.0.0.0 in a container
    port = 9464          # 0 = no metrics server (default)

* ``/metrics``: the process-wide default registry (every room's ``tripwire_*``
  metrics, plus process and Python collectors; no ``_created`` series);
* ``/healthz``: 200 while the process runs;
* ``/readyz``: 200 when every registered readiness check passes, else 503 with
  the failing names. :func:`tripwire.log.open_log` registers the event log
  (SQLite writer alive; Kafka reachable and nothing spilled), and
  :func:`tripwire.service.run_services` registers each service that has an
  ``async ready() -> bool`` and fails readiness when a service has ``failed``
  (a supervised service: while it is down, waiting to be restarted).

Supervised services (:class:`tripwire.service.Supervisor`) also export
``tripwire_service_up{service}`` (1 running, 0 down) and
``tripwire_service_restarts_total{service}``.

Checks are coroutines of the service's event loop: :func:`bind_loop` (called
by ``run_services``) names that loop, and the HTTP thread runs each check there
with a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, disable_created_metrics, generate_latest

from tripwire.config import Config, ConfigError

logger = logging.getLogger(__name__)

# No '<name>_created' gauge next to every counter and histogram: one more series per label set,
# holding a start timestamp that no dashboard or alert uses. Every service imports this module.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

CHECK_TIMEOUT_S = 5.0

SERVICE_UP = Gauge("tripwire_service_up", "1 while the service runs; 0 while it is down, waiting to be restarted",
                   ["service"])
SERVICE_RESTARTS = Counter("tripwire_service_restarts", "Restarts of the service after a failure", ["service"])
Check = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"Config 'metrics.port' has value {self.port!r}. Must be 0-65535 (0 = no metrics server).")


def metrics_config(config: Config) -> MetricsConfig:
    return config.section("metrics", MetricsConfig)


class Readiness:
    """Named async checks, held weakly through their owners so a stopped log drops out."""

    def __init__(self) -> None:
        self._checks: dict[str, tuple[weakref.ref[Any] | None, Callable[[Any], Awaitable[bool]]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def add(self, name: str, owner: object, method: str = "ready") -> None:
        """Check ``owner.<method>()`` under ``name`` while ``owner`` lives."""
        with self._lock:
            self._checks[name] = (weakref.ref(owner), lambda o: getattr(o, method)())

    def add_check(self, name: str, check: Check) -> None:
        with self._lock:
            self._checks[name] = (None, lambda _o: check())

    def remove(self, name: str) -> None:
        with self._lock:
            self._checks.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._checks)

    async def check(self, prefix: str = "") -> dict[str, bool]:
        """Run every check named ``prefix...`` (in the current loop); an exception or timeout is not ready."""
        with self._lock:
            items = [(k, v) for k, v in self._checks.items() if k.startswith(prefix)]
        out: dict[str, bool] = {}
        for name, (ref, call) in items:
            owner = ref() if ref is not None else None
            if ref is not None and owner is None:
                continue
            try:
                out[name] = bool(await asyncio.wait_for(call(owner), CHECK_TIMEOUT_S))
            except Exception:
                logger.warning("readiness check %s failed", name, exc_info=True)
                out[name] = False
        return out

    def check_from_thread(self) -> dict[str, bool]:
        loop = self._loop
        if loop is None or loop.is_closed():
            return {"running": False}
        try:
            return asyncio.run_coroutine_threadsafe(self.check(), loop).result(CHECK_TIMEOUT_S + 1)
        except Exception:
            return {"running": False}


READINESS = Readiness()


class MetricsServer:
    """``/metrics``, ``/healthz``, ``/readyz`` on ``host:port`` in a daemon thread (port 0 = any free port)."""

    def __init__(self, host: str, port: int, readiness: Readiness = READINESS) -> None:
        self.readiness = readiness
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server._get(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-server", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        host = f"[{self.host}]" if ":" in self.host else self.host
        logger.info("metrics on http://%s:%d/metrics (also /healthz, /readyz)", host, self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _get(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(req, 200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(req, 200, b'{"status":"ok"}')
        elif path == "/readyz":
            checks = self.readiness.check_from_thread()
            ok = bool(checks) and all(checks.values())
            doc = {"status": "ready" if ok else "unavailable", "checks": checks}
            self._send(req, 200 if ok else 503, orjson.dumps(doc))
        else:
            self._send(req, 404, b'{"error":"not_found"}')

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str = "application/json") -> None:
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)


async def exposition() -> bytes:
    """This process's metrics, and those of its child processes (``tripwire run``'s engines and sinks:
    :mod:`tripwire.children`), each of their samples labelled ``process="<name>"``."""
    from tripwire.children import scrape

    own = generate_latest(REGISTRY)
    children = await scrape()
    if not children:
        return own
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import CollectorRegistry
    from prometheus_client.samples import Sample

    families: dict[str, Any] = {}
    for name, text in [("", own.decode()), *children]:
        for fam in text_string_to_metric_families(text):
            if name and (fam.name.startswith("process_") or fam.name.startswith("python_")):
                continue  # the parent's own process figures stand for the process
            samples = [Sample(s.name, {**s.labels, "process": name} if name else s.labels, s.value,
                              s.timestamp, s.exemplar) for s in fam.samples]
            merged = families.setdefault(fam.name, fam)
            if merged is fam:
                fam.samples = samples
            else:
                merged.samples += samples

    class _Merged:
        def collect(self) -> Any:
            return iter(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)


def serve(host: str, port: int) -> MetricsServer:
    """Start the metrics server; errors name the address."""
    try:
        return MetricsServer(host, port).start()
    except OverflowError:  # the socket module's word for a port outside 0-65535
        raise ConfigError(f"Config 'metrics.port' has value {port!r}. Must be 0-65535.") from None
    except OSError as exc:
        raise ConfigError(f"Config 'metrics.port': cannot listen on {host}:{port}: {exc.strerror}") from None
