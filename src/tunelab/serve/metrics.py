"""What `GET /metrics` tells Prometheus: requests by endpoint, model and status, latency histograms, batch sizes,
queue depth. Each server has its own registry, so two apps in one process (tests) count apart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("tunelab_requests", "Requests answered", ["endpoint", "model", "status"],
                                registry=self.registry)
        self.latency = Histogram("tunelab_request_seconds", "Time from request to full answer",
                                 ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("tunelab_batch_rows", "Rows per micro-batch", ["engine"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("tunelab_queue_depth", "Requests waiting for a batch", ["engine"],
                                 registry=self.registry)

    def observe(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, model, str(status)).inc()
        self.latency.labels(endpoint, model).observe(seconds)

    def batched(self, engine: str, rows: int, queued: int) -> None:
        self.batch_rows.labels(engine).observe(rows)
        self.queue_depth.labels(engine).set(queued)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
