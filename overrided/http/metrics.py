"""``/metrics``: Prometheus text exposition, fed by an ``EventHub`` listener.

prometheus-client writes the exposition format (escaping, histogram buckets, ``# TYPE`` lines);
each app gets its own registry so two apps in one process never share counters.
"""

from __future__ import annotations

import re
from typing import TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from overrided.state import Event

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\d+")
_FAILED = ("failed", "not-found", "refused", "aborted")
_M = TypeVar("_M", Counter, Gauge)


def reason_label(outcome: str, reason: str) -> str:
    """A bounded label for a failure reason: quoted names and numbers dropped, 60 characters.

    Reasons name files and clients; the label keeps their shape so a dashboard groups them.
    """
    text = _NUMBER.sub("N", _QUOTED.sub("…", reason)).strip() or outcome
    return text[:60]


class Metrics:
    """Counters of transfers, bytes, failures, render and index times, from the event stream."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._open: set[tuple[object, ...]] = set()
        self._children: dict[tuple[int, tuple[str, ...]], Counter | Gauge] = {}
        r = self.registry
        self.transfers = Counter(
            "overrided_transfers",
            "Transfers ended, by protocol and outcome",
            ["protocol", "outcome"],
            registry=r,
        )
        self.bytes = Counter(
            "overrided_transfer_bytes", "Payload bytes sent", ["protocol"], registry=r
        )
        self.failures = Counter(
            "overrided_transfer_failures",
            "Failed transfers by reason",
            ["protocol", "outcome", "reason"],
            registry=r,
        )
        self.active = Gauge(
            "overrided_active_transfers", "Transfers in progress", ["protocol"], registry=r
        )
        self.render = Histogram(
            "overrided_render_seconds",
            "Time to render one board",
            registry=r,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.index = Histogram(
            "overrided_index_seconds",
            "Time to index one build",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.builds = Counter(
            "overrided_builds", "Builds indexed or refused", ["outcome"], registry=r
        )
        self.boards = Counter(
            "overrided_board_renders", "Board renders by outcome", ["outcome"], registry=r
        )

    def observe(self, event: Event) -> None:
        """The ``EventHub`` listener: update the counters for one event."""
        data = event.data
        if event.kind.startswith("transfer-"):
            protocol = str(data.get("protocol", "unknown"))
            key = _transfer_key(data)
            if event.kind == "transfer-started":
                self._open.add(key)
                self._child(self.active, protocol).inc()
                return
            if event.kind == "transfer-progress":
                return  # still running: counted once it ends
            outcome = str(data.get("outcome", "ok"))
            if key in self._open:  # refusals and misses end without having started
                self._open.discard(key)
                self._child(self.active, protocol).dec()
            self._child(self.transfers, protocol, outcome).inc()
            self._child(self.bytes, protocol).inc(float(data.get("sent", 0) or 0))
            if outcome in _FAILED:
                label = reason_label(outcome, str(data.get("reason", "")))
                self.failures.labels(protocol, outcome, label).inc()
        elif event.kind in ("build-indexed", "build-failed"):
            self.builds.labels("indexed" if event.kind == "build-indexed" else "failed").inc()
            if "duration" in data:
                self.index.observe(float(data["duration"]))
        elif event.kind in ("board-rendered", "board-failed"):
            self.boards.labels("rendered" if event.kind == "board-rendered" else "failed").inc()
            if "duration" in data:
                self.render.observe(float(data["duration"]))

    def _child(self, metric: _M, *labels: str) -> _M:
        """``metric.labels(*labels)``, remembered: two lookups per HTTP request otherwise cost
        more than the counting."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found  # type: ignore[return-value]

    def exposition(self) -> bytes:
        """The current values in the Prometheus text format."""
        return generate_latest(self.registry)


def _transfer_key(data: dict[str, object]) -> tuple[object, ...]:
    # A transfer's start and end events carry the same protocol, client, name and start time.
    return (data.get("protocol"), data.get("client"), data.get("name"), data.get("started"))


METRICS = web.AppKey("metrics", Metrics)


async def serve_metrics(request: web.Request) -> web.Response:
    """GET ``/metrics``."""
    body = request.app[METRICS].exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
