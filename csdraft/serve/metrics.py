"""The server's Prometheus metrics: the ``csdraft`` records of every request summed, the queue,
latencies, and the process's own (``process_resident_memory_bytes``...)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


class Metrics:
    """Counters of one server (its own registry, so several apps in one process never mix)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"csdraft_{name}", doc, labels, registry=registry)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(f"csdraft_{name}", doc, buckets=LATENCY_BUCKETS, registry=registry)

        self.requests = counter(
            "requests", "Requests answered, by endpoint and status", ("endpoint", "status")
        )
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of generations")
        self.tokens = counter("generated_tokens", "Tokens generated (target tokens)")
        self.target_forwards = counter("target_forwards", "The target's forward passes")
        self.proposed = counter("proposed_tokens", "Draft tokens scored, by reviewer", ("rung",))
        self.accepted = counter("accepted_tokens", "Draft tokens kept, by reviewer", ("rung",))
        self.cancelled = counter("cancelled", "Generations cancelled (client gone)")
        self.queue = Gauge(
            "csdraft_queue_length", "Requests waiting for the ladder", registry=registry
        )
        self.running = Gauge("csdraft_running", "Generations running", registry=registry)
        self.latency = histogram("request_seconds", "Wall time of a generation request")
        self.queue_wait = histogram("queue_seconds", "Time waiting for the ladder")
        self.prompt_phase = histogram("prompt_phase_seconds", "Time to the first commit")
        self.decode = histogram("decode_seconds", "Time after the prompt phase")

    def generation(self, record: dict[str, Any], prompt_tokens: int, seconds: float) -> None:
        """Fold one finished (or cancelled) generation's ``csdraft`` record in."""
        self.prompt_tokens.inc(prompt_tokens)
        self.tokens.inc(record["new_tokens"])
        self.target_forwards.inc(record["target_forwards"])
        for rung, review in record["reviews"].items():
            self.proposed.labels(rung).inc(review["proposed"])
            self.accepted.labels(rung).inc(review["accepted"])
        self.latency.observe(seconds)
        self.queue_wait.observe(record["queue_s"])
        self.prompt_phase.observe(record["prompt_s"])
        self.decode.observe(record["decode_s"])

    def text(self, waiting: int, running: int) -> bytes:
        """The exposition text, the queue gauges read now."""
        self.queue.set(waiting)
        self.running.set(running)
        return generate_latest(self.registry)
