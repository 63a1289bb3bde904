"""What /metrics reports, in Prometheus' text format: request counts, errors, latency, batch sizes, where a
model call's time goes (queue, tokenization, inference), tokens computed and requests refused or dropped."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from ..meter import Meter
from .schemas import KNOWN_PATHS

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels) + "}" if labels else ""


class Histogram:
    def __init__(self, name: str, help: str, buckets: Sequence[float]):
        self.name, self.help, self.buckets = name, help, tuple(buckets)
        self.series: dict[tuple, list] = {}  # labels -> [bucket counts..., sum, count]

    def observe(self, value: float, **labels: str) -> None:
        s = self.series.setdefault(tuple(labels.items()), [0] * len(self.buckets) + [0.0, 0])
        for i, b in enumerate(self.buckets):
            if value <= b:
                s[i] += 1
        s[-2] += value
        s[-1] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, s in sorted(self.series.items()):
            for b, n in zip(self.buckets, s, strict=False):
                lines.append(f"{self.name}_bucket{_labels((*labels, ('le', f'{b:g}')))} {n}")
            lines.append(f"{self.name}_bucket{_labels((*labels, ('le', '+Inf')))} {s[-1]}")
            lines.append(f"{self.name}_sum{_labels(labels)} {s[-2]:.6f}")
            lines.append(f"{self.name}_count{_labels(labels)} {s[-1]}")
        return lines


class Metrics:
    """Counters, gauges and histograms, updated on the event loop's thread only (so no locks)."""

    def __init__(self, info: dict[str, str]):
        self.info = info
        self.started = time.monotonic()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.errors: dict[tuple[str, str], int] = defaultdict(int)
        self.model_errors = 0
        self.in_flight = 0
        self.calls_running = 0  # 1 while the model computes
        self.queue_depth: Callable[[], int] = lambda: 0
        self.latency = Histogram(
            "bertforge_request_duration_seconds", "Time from request to response.", LATENCY_BUCKETS
        )
        self.batch_size = Histogram(
            "bertforge_batch_size", "Inputs (texts, pairs' texts, documents, questions) per model call.", BATCH_BUCKETS
        )
        self.batch_requests = Histogram(
            "bertforge_batch_requests", "Requests merged into one model call.", BATCH_BUCKETS
        )
        self.queue_time = Histogram(
            "bertforge_queue_duration_seconds", "Time a request waited for its model call.", LATENCY_BUCKETS
        )
        self.tokenize_time = Histogram(
            "bertforge_tokenization_duration_seconds", "Time a model call spent in the tokenizer.", LATENCY_BUCKETS
        )
        self.inference_time = Histogram(
            "bertforge_inference_duration_seconds", "Time a model call spent past the tokenizer.", LATENCY_BUCKETS
        )
        self.tokens: dict[str, int] = defaultdict(int)
        # requests refused (queue_full) or dropped (disconnected, timeout_queued, timeout_running)
        self.rejected: dict[str, int] = defaultdict(int)

    def request(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in KNOWN_PATHS else "other"
        self.requests[endpoint, str(status)] += 1
        if status >= 400:
            self.errors[endpoint, str(status)] += 1
        self.latency.observe(seconds, endpoint=endpoint)

    def model_call(self, kind: str, items: int, requests: int, meter: Meter) -> None:
        self.batch_size.observe(items, kind=kind)
        self.batch_requests.observe(requests, kind=kind)
        self.tokenize_time.observe(meter.tokenize_s, kind=kind)
        self.inference_time.observe(meter.inference_s, kind=kind)
        self.tokens[kind] += meter.tokens

    def render(self) -> str:
        lines = [
            "# HELP bertforge_info The model served.",
            "# TYPE bertforge_info gauge",
            f"bertforge_info{_labels(tuple(self.info.items()))} 1",
            "# HELP bertforge_uptime_seconds Seconds since the server started.",
            "# TYPE bertforge_uptime_seconds gauge",
            f"bertforge_uptime_seconds {time.monotonic() - self.started:.3f}",
            "# HELP bertforge_requests_total Requests answered, by endpoint and status.",
            "# TYPE bertforge_requests_total counter",
            *(
                f"bertforge_requests_total{_labels((('endpoint', e), ('status', s)))} {n}"
                for (e, s), n in sorted(self.requests.items())
            ),
            "# HELP bertforge_errors_total Requests answered with an error (status >= 400).",
            "# TYPE bertforge_errors_total counter",
            *(
                f"bertforge_errors_total{_labels((('endpoint', e), ('status', s)))} {n}"
                for (e, s), n in sorted(self.errors.items())
            ),
            "# HELP bertforge_model_errors_total Model calls that raised.",
            "# TYPE bertforge_model_errors_total counter",
            f"bertforge_model_errors_total {self.model_errors}",
            "# HELP bertforge_queue_depth Requests waiting for the model.",
            "# TYPE bertforge_queue_depth gauge",
            f"bertforge_queue_depth {self.queue_depth()}",
            "# HELP bertforge_requests_in_flight Requests being answered.",
            "# TYPE bertforge_requests_in_flight gauge",
            f"bertforge_requests_in_flight {self.in_flight}",
            "# HELP bertforge_model_busy 1 while a model call runs.",
            "# TYPE bertforge_model_busy gauge",
            f"bertforge_model_busy {self.calls_running}",
            "# HELP bertforge_tokens_total Tokens the model computed (the tokenizer's output), by batch kind.",
            "# TYPE bertforge_tokens_total counter",
            *(f"bertforge_tokens_total{_labels((('kind', k),))} {n}" for k, n in sorted(self.tokens.items())),
            "# HELP bertforge_rejected_total Requests refused (queue_full) or dropped (disconnected, timeout_queued, "
            "timeout_running).",
            "# TYPE bertforge_rejected_total counter",
            *(f"bertforge_rejected_total{_labels((('reason', r),))} {n}" for r, n in sorted(self.rejected.items())),
            *self.latency.render(),
            *self.batch_size.render(),
            *self.batch_requests.render(),
            *self.queue_time.render(),
            *self.tokenize_time.render(),
            *self.inference_time.render(),
        ]
        return "\n".join(lines) + "\n"
