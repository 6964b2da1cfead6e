"""Prometheus, Alertmanager, a webhook receiver and a static ``/metrics`` target.

Prometheus applies targets in 5 s batches, so the first scrape comes ~5.5 s after start even
with a 1 s interval (TEST-SERVERS.md §8): :meth:`PrometheusServer.wait_for_query` polls.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .common import (
    DEFAULT_TIMEOUT,
    LOCALHOST,
    ServerProcess,
    free_port,
    http_get,
    require_binary,
    service_dir,
    started,
    wait_for_http,
    write_file,
)

JSON = dict[str, Any]


class _Store:
    """Thread-safe state shared by the tiny HTTP servers and the test."""

    def __init__(self, metrics: str) -> None:
        self.cond = threading.Condition()
        self.posts: list[tuple[str, bytes]] = []
        self.metrics = metrics


def _handler(store: _Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            with store.cond:
                body = store.metrics.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with store.cond:
                store.posts.append((self.path, body))
                store.cond.notify_all()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@dataclass(frozen=True)
class TinyHTTPServer:
    """A threaded stdlib HTTP server: ``GET /metrics`` serves settable text, POSTs are kept."""

    host: str
    port: int
    _store: _Store = field(repr=False)

    @property
    def address(self) -> str:
        """``host:port`` (a Prometheus static target)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """Webhook URL (``/hook``)."""
        return f"http://{self.host}:{self.port}/hook"

    def set_metrics(self, text: str) -> None:
        with self._store.cond:
            self._store.metrics = text

    def messages(self) -> list[JSON]:
        """JSON bodies POSTed so far, oldest first."""
        with self._store.cond:
            posts = list(self._store.posts)
        return [json.loads(body) for _, body in posts]

    def wait_for_message(
        self, predicate: Callable[[JSON], bool] = lambda _m: True, timeout: float = DEFAULT_TIMEOUT
    ) -> JSON:
        """First POSTed JSON body satisfying ``predicate``; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._store.cond:
            while True:
                for _, body in self._store.posts:
                    message: JSON = json.loads(body)
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = [body[:200] for _, body in self._store.posts]
                    raise TimeoutError(f"no matching webhook message in {timeout:.0f} s; got {got}")
                self._store.cond.wait(remaining)


@contextlib.contextmanager
def run_tiny_http(metrics: str = "") -> Iterator[TinyHTTPServer]:
    """Start a :class:`TinyHTTPServer` on 127.0.0.1 (webhook receiver and/or metrics target)."""
    store = _Store(metrics)
    server = ThreadingHTTPServer((LOCALHOST, 0), _handler(store))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="tiny-http", daemon=True)
    thread.start()
    try:
        yield TinyHTTPServer(host=LOCALHOST, port=int(server.server_address[1]), _store=store)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


run_webhook_receiver = run_tiny_http
"""Alias: the webhook receiver is a :class:`TinyHTTPServer` (POSTs to any path are kept)."""


DEFAULT_METRICS = (
    "# HELP probed_fixture_up A constant gauge served by the test fixture.\n"
    "# TYPE probed_fixture_up gauge\n"
    "probed_fixture_up 1\n"
)


@dataclass(frozen=True)
class AlertmanagerServer:
    host: str
    port: int
    url: str
    webhook_url: str | None
    data_dir: Path
    config_path: Path
    pid: int
    log_path: Path


@contextlib.contextmanager
def run_alertmanager(
    *, webhook_url: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> Iterator[AlertmanagerServer]:
    """Start Alertmanager on 127.0.0.1 (clustering off) routing everything to ``webhook_url``.

    group_wait 0 s, group_interval 1 s, resolved notifications on. Health: ``/-/ready``.
    """
    alertmanager = require_binary("prometheus-alertmanager", "prometheus-alertmanager")
    with service_dir("alertmanager") as data:
        port = free_port()
        receiver: JSON = {"name": "hook"}
        if webhook_url is not None:
            receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
        config = {
            "route": {
                "receiver": "hook",
                "group_by": ["alertname"],
                "group_wait": "0s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [receiver],
        }
        conf = write_file(data / "am.yml", json.dumps(config) + "\n")  # JSON is YAML
        log = data / "server.log"
        proc = ServerProcess(
            "alertmanager",
            [
                alertmanager,
                f"--config.file={conf}",
                f"--storage.path={data / 'am'}",
                f"--web.listen-address={LOCALHOST}:{port}",
                "--cluster.listen-address=",
            ],
            log_path=log,
        )
        url = f"http://{LOCALHOST}:{port}"
        with started(proc):
            wait_for_http(proc, f"{url}/-/ready", timeout=timeout)
            yield AlertmanagerServer(
                host=LOCALHOST,
                port=port,
                url=url,
                webhook_url=webhook_url,
                data_dir=data,
                config_path=conf,
                pid=proc.pid,
                log_path=log,
            )


@dataclass(frozen=True)
class PrometheusServer:
    host: str
    port: int
    url: str
    data_dir: Path
    config_path: Path
    rules_path: Path | None
    scrape_targets: tuple[str, ...]
    pid: int
    log_path: Path

    def api(self, path: str, **params: str) -> JSON:
        """GET ``/api/v1/<path>``; the decoded JSON (raises on a non-200 answer)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"{self.url}/api/v1/{path}{query}")
        if status != 200:
            raise RuntimeError(f"Prometheus /api/v1/{path}: HTTP {status}: {body[:300]!r}")
        result: JSON = json.loads(body)
        return result

    def query(self, expr: str) -> list[JSON]:
        """Instant query; the ``result`` list."""
        result: list[JSON] = self.api("query", query=expr)["data"]["result"]
        return result

    def wait_for_query(self, expr: str, timeout: float = DEFAULT_TIMEOUT) -> list[JSON]:
        """Poll ``expr`` until it returns samples (first scrape takes ~5.5 s)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Prometheus query {expr!r} still empty after {timeout:.0f} s")
            time.sleep(0.2)


@contextlib.contextmanager
def run_prometheus(
    *,
    scrape_targets: Sequence[str] = (),
    job_name: str = "probed",
    alertmanager: str | None = None,
    rules: str | None = None,
    scrape_interval: str = "1s",
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[PrometheusServer]:
    """Start Prometheus on 127.0.0.1 scraping ``scrape_targets`` (``host:port``, ``/metrics``).

    ``alertmanager`` is ``host:port``; ``rules`` is the YAML text of a rule file
    (``groups: [...]``). Health: ``/-/ready``.
    """
    prometheus = require_binary("prometheus", "prometheus")
    with service_dir("prometheus") as data:
        port = free_port()
        config: JSON = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": [
                {"job_name": job_name, "static_configs": [{"targets": list(scrape_targets)}]}
            ],
        }
        rules_path: Path | None = None
        if rules is not None:
            rules_path = write_file(data / "rules.yml", rules)
            config["rule_files"] = [str(rules_path)]
        if alertmanager is not None:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]
            }
        conf = write_file(data / "prometheus.yml", json.dumps(config, indent=1) + "\n")
        log = data / "server.log"
        proc = ServerProcess(
            "prometheus",
            [
                prometheus,
                f"--config.file={conf}",
                f"--storage.tsdb.path={data / 'tsdb'}",
                f"--web.listen-address={LOCALHOST}:{port}",
            ],
            log_path=log,
        )
        url = f"http://{LOCALHOST}:{port}"
        with started(proc):
            wait_for_http(proc, f"{url}/-/ready", timeout=timeout)
            yield PrometheusServer(
                host=LOCALHOST,
                port=port,
                url=url,
                data_dir=data,
                config_path=conf,
                rules_path=rules_path,
                scrape_targets=tuple(scrape_targets),
                pid=proc.pid,
                log_path=log,
            )


@dataclass(frozen=True)
class PrometheusStack:
    prometheus: PrometheusServer
    alertmanager: AlertmanagerServer
    webhook: TinyHTTPServer
    target: TinyHTTPServer
    """Serves ``/metrics`` (:data:`DEFAULT_METRICS` unless changed with ``set_metrics``)."""


@contextlib.contextmanager
def run_prometheus_stack(
    *,
    rules: str | None = None,
    metrics: str = DEFAULT_METRICS,
    extra_targets: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[PrometheusStack]:
    """Webhook receiver <- Alertmanager <- Prometheus -> metrics target, all on 127.0.0.1."""
    with (
        run_tiny_http() as webhook,
        run_tiny_http(metrics) as target,
        run_alertmanager(webhook_url=webhook.url, timeout=timeout) as am,
        run_prometheus(
            scrape_targets=[target.address, *extra_targets],
            alertmanager=f"{am.host}:{am.port}",
            rules=rules,
            timeout=timeout,
        ) as prom,
    ):
        yield PrometheusStack(prometheus=prom, alertmanager=am, webhook=webhook, target=target)
