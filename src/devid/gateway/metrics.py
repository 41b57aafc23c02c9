"""What the gateway counts, and its Prometheus exposition (`devid gateway --metrics-port`).

The counters are plain integers bumped on the gateway's event loop (admission is its hot path);
a collector on the gateway's own registry turns them into metric families at scrape time, and the
scrape is answered on that same loop, so it never reads them mid-update.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from devid.errors import ConfigError
from devid.gateway.report import Reporter


@dataclass
class Counters:
    admitted: int = 0
    cut: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    refreshes: int = 0
    refresh_failures: int = 0


class GatewayCollector(Collector):
    """The gateway's counters, and its live sessions, as metric families."""

    def __init__(
        self, counters: Counters, sessions: Callable[[], int], reporter: Reporter | None = None
    ) -> None:
        self.counters = counters
        self.sessions = sessions
        self.reporter = reporter

    def collect(self) -> Iterable[Metric]:
        c = self.counters
        refused = CounterMetricFamily(
            "devid_gateway_refusals", "Device connections refused, by reason", labels=["reason"]
        )
        for reason, count in sorted(c.refused.items()):
            refused.add_metric([reason], count)
        reports: list[Metric] = []
        if self.reporter is not None:
            reports = [
                CounterMetricFamily(
                    "devid_gateway_sightings_reported",
                    "Certificate sightings reported to devid",
                    value=self.reporter.sent,
                ),
                CounterMetricFamily(
                    "devid_gateway_report_failures",
                    "Reports to devid that failed",
                    value=self.reporter.failures,
                ),
                GaugeMetricFamily(
                    "devid_gateway_sightings_pending",
                    "Sightings not yet reported",
                    value=self.reporter.pending,
                ),
            ]
        return [
            *reports,
            CounterMetricFamily("devid_gateway_admissions", "Device connections admitted", value=c.admitted),
            refused,
            CounterMetricFamily(
                "devid_gateway_sessions_cut", "Live sessions cut when their status turned bad", value=c.cut
            ),
            CounterMetricFamily("devid_gateway_status_refreshes", "Status refreshes", value=c.refreshes),
            CounterMetricFamily(
                "devid_gateway_status_refresh_failures",
                "Status refreshes that failed",
                value=c.refresh_failures,
            ),
            GaugeMetricFamily("devid_gateway_sessions", "Sessions open now", value=self.sessions()),
        ]


async def start_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve GET /metrics for `registry` on `host:port` (0: a free port); the runner and the port."""

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle, allow_head=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            "listen", f"cannot listen on {host}:{port} for metrics: {exc.strerror or exc}"
        ) from None
    bound: int = runner.addresses[0][1]
    return runner, bound
