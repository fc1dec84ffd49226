"""Prometheus metrics of one app, in a registry of its own (so several apps can share a process).

Names follow vLLM's (`vllm:time_to_first_token_seconds` is `alpaca_time_to_first_token_seconds`
here) so existing dashboards carry over with a prefix change.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
)
TOKEN_LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
)

# What became of a request, the label of alpaca_requests_total.
OUTCOMES = (
    "success",
    "invalid",
    "blocked",
    "rejected",
    "client_disconnected",
    "timeout",
    "shutdown",
    "unavailable",
    "error",
)


class ServerMetrics:
    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}
        self.requests = Counter(
            "alpaca_requests",
            "Generation requests by outcome.",
            ["model_name", "outcome"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.requests.labels(model_name=model_name, outcome=outcome)
        self._model_name = model_name

        # The per-request families, kept unlabelled so that `for_model` can label them for an
        # adapter's requests.
        self._families: dict[str, Histogram | Counter] = {}

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            family = Histogram(name, doc, ["model_name"], buckets=buckets, registry=self.registry)
            self._families[name] = family
            return family.labels(**labels)

        def counter(name: str, doc: str) -> Counter:
            family = Counter(name, doc, ["model_name"], registry=self.registry)
            self._families[name] = family
            return family.labels(**labels)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["model_name"], registry=self.registry).labels(**labels)

        self.time_to_first_token = histogram(
            "alpaca_time_to_first_token_seconds",
            "From the request's arrival to its first generated text.",
            LATENCY_BUCKETS,
        )
        self.inter_token_latency = histogram(
            "alpaca_inter_token_latency_seconds",
            "Between two consecutive pieces of generated text of one request.",
            TOKEN_LATENCY_BUCKETS,
        )
        self.e2e_latency = histogram(
            "alpaca_e2e_request_latency_seconds",
            "From the request's arrival to its last generated text.",
            LATENCY_BUCKETS,
        )
        self.queue_time = histogram(
            "alpaca_request_queue_time_seconds",
            "Time a request waited in the engine's queue before it was scheduled.",
            LATENCY_BUCKETS,
        )
        self.prompt_tokens = counter("alpaca_prompt_tokens", "Prompt tokens processed.")
        self.generation_tokens = counter("alpaca_generation_tokens", "Tokens generated.")
        self.running = gauge("alpaca_num_requests_running", "Requests the engine is running.")
        self.waiting = gauge("alpaca_num_requests_waiting", "Requests waiting in the engine.")
        self.kv_cache_usage = gauge(
            "alpaca_kv_cache_usage_perc", "Share of the KV cache in use (1 = full)."
        )
        self.draft_tokens = Counter(
            "alpaca_spec_decode_num_draft_tokens",
            "Tokens proposed by speculative decoding (ALPACA_SPECULATIVE).",
            ["model_name"],
            registry=self.registry,
        ).labels(**labels)
        self.accepted_tokens = Counter(
            "alpaca_spec_decode_num_accepted_tokens",
            "Proposed tokens the model accepted (each saves one decoding step).",
            ["model_name"],
            registry=self.registry,
        ).labels(**labels)
        self._speculation_seen = (0, 0)
        self.filter_blocks = Counter(
            "alpaca_filter_blocks",
            "Requests blocked by a content filter, by hook and category.",
            ["model_name", "hook", "category"],
            registry=self.registry,
        )
        self.filter_failures = Counter(
            "alpaca_filter_failures",
            "Content filters that raised or timed out, by filter, hook and kind.",
            ["model_name", "filter", "hook", "kind"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "alpaca_feedback",
            "Feedback saved, by kind (rating or comparison).",
            ["model_name", "kind"],
            registry=self.registry,
        )
        self.feedback_refused = Counter(
            "alpaca_feedback_refused",
            "Feedback refused for going past a per-session or per-client limit, by limit.",
            ["model_name", "limit"],
            registry=self.registry,
        )
        self.admin_actions = Counter(
            "alpaca_admin_actions",
            "Admin actions done (the audit trail), by action and the key's name.",
            ["model_name", "action", "key"],
            registry=self.registry,
        )
        self.generations_purged = Counter(
            "alpaca_generations_purged",
            "Generations whose prompt and answer retention emptied (ALPACA_LOG_RETENTION_DAYS).",
            ["model_name"],
            registry=self.registry,
        ).labels(**labels)
        self.admission_queue = gauge(
            "alpaca_admission_queue", "Requests admitted and waiting for a generation slot."
        )
        self.engine_ready = gauge(
            "alpaca_engine_ready", "1 when the engine is loaded and answering, else 0."
        )
        self.store_full = gauge(
            "alpaca_feedback_store_full",
            "1 while the feedback store has no room for writes (a full disk), else 0.",
        )
        self.generation_log_backlog = gauge(
            "alpaca_generation_log_backlog",
            "Finished generations whose log entries wait in memory, not yet stored.",
        )
        self.generation_log_dropped = Counter(
            "alpaca_generation_log_dropped",
            "Generation log entries never stored: dropped from the full backlog, or unwritten "
            "at shutdown.",
            ["model_name"],
            registry=self.registry,
        ).labels(**labels)

    def for_model(self, model_name: str) -> ServerMetrics | ModelMetrics:
        """The per-request metrics labelled with `model_name` (a served adapter's name); the
        base model's are this object itself."""
        if model_name == self._model_name:
            return self
        return ModelMetrics(self, model_name)

    def count_speculation(self, draft_tokens: int, accepted_tokens: int) -> None:
        """Bring the speculation counters up to the engine's totals."""
        seen_drafts, seen_accepted = self._speculation_seen
        self.draft_tokens.inc(max(0, draft_tokens - seen_drafts))
        self.accepted_tokens.inc(max(0, accepted_tokens - seen_accepted))
        self._speculation_seen = (
            max(draft_tokens, seen_drafts),
            max(accepted_tokens, seen_accepted),
        )

    def count_block(self, hook: str, category: str) -> None:
        self.filter_blocks.labels(model_name=self._model_name, hook=hook, category=category).inc()

    def count_filter_failure(self, filter: str, hook: str, kind: str) -> None:
        self.filter_failures.labels(
            model_name=self._model_name, filter=filter, hook=hook, kind=kind
        ).inc()

    def count_feedback_refused(self, limit: str) -> None:
        self.feedback_refused.labels(model_name=self._model_name, limit=limit).inc()

    def count_admin_action(self, action: str, key: str) -> None:
        self.admin_actions.labels(model_name=self._model_name, action=action, key=key).inc()

    def count_feedback(self, kind: str) -> None:
        self.feedback.labels(model_name=self._model_name, kind=kind).inc()

    def count(self, outcome: str) -> None:
        self.requests.labels(model_name=self._model_name, outcome=outcome).inc()

    def render(self, refresh: Callable[[], None] | None = None) -> bytes:
        """The text exposition format, after `refresh` has updated the gauges."""
        if refresh is not None:
            refresh()
        return generate_latest(self.registry)


class ModelMetrics:
    """The per-request metrics of one more model (an adapter) of the same server: the same
    attributes as ServerMetrics uses for a request, labelled with that model's name."""

    def __init__(self, metrics: ServerMetrics, model_name: str):
        families = metrics._families

        def labelled(name: str):
            return families[name].labels(model_name=model_name)

        self._metrics = metrics
        self._model_name = model_name
        self.time_to_first_token = labelled("alpaca_time_to_first_token_seconds")
        self.inter_token_latency = labelled("alpaca_inter_token_latency_seconds")
        self.e2e_latency = labelled("alpaca_e2e_request_latency_seconds")
        self.prompt_tokens = labelled("alpaca_prompt_tokens")
        self.generation_tokens = labelled("alpaca_generation_tokens")

    def count(self, outcome: str) -> None:
        self._metrics.requests.labels(model_name=self._model_name, outcome=outcome).inc()
