"""The one place that creates the Logger, Metrics and Tracer; everything else imports them.

Outcomes are published as CloudWatch metrics in Embedded Metric Format. Powertools' ``Metrics``
keeps one dimension set per flush, and a batch mixes providers and runs in threads, so outcomes
are recorded here (thread-safe) and flushed by the handler at the end of each invocation, one
EMF line per dimension set, from the handler's own thread.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections import defaultdict
from typing import Literal

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

# The template sets POWERTOOLS_METRICS_NAMESPACE; the same default serves local runs and tests.
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "WebhookRelay"

logger = Logger(service="webhook-relay")
metrics = Metrics(namespace=NAMESPACE)  # carries the ColdStart metric
# Only botocore is patched: patching httplib would record each provider URL, and Lancepilot's
# holds the recipient's number. Provider sends get their own subsegment (delivery.py).
# A no-op when POWERTOOLS_TRACE_DISABLED is set (locally, in tests).
tracer = Tracer(patch_modules=["botocore"])


def _parse_trace_header_once() -> None:
    """Have the X-Ray SDK parse Lambda's trace header once per invocation, not per lookup.

    Its LambdaContext parses ``_X_AMZN_TRACE_ID`` afresh on every lookup of the current entity:
    26 times a webhook message, a quarter of what tracing costs (docs/performance.md).
    This subclass skips the parse while the header and the thread's segment are the ones it
    last checked, which is when the SDK's own check would keep the segment anyway.
    """
    if tracer.disabled:
        return
    from aws_xray_sdk.core import xray_recorder
    from aws_xray_sdk.core.lambda_launcher import LAMBDA_TRACE_HEADER_KEY, LambdaContext

    if type(xray_recorder.context) is not LambdaContext:
        return  # not in Lambda (or already replaced): nothing to speed up

    class HeaderOnceContext(LambdaContext):  # type: ignore[misc]
        def _refresh_context(self) -> None:
            header = os.environ.get(LAMBDA_TRACE_HEADER_KEY)
            local = self._local
            checked = getattr(local, "checked", None)
            segment = getattr(local, "segment", None)
            if checked and segment is not None and checked[1] is segment and checked[0] == header:
                return
            super()._refresh_context()
            local.checked = (header, getattr(local, "segment", None))

    xray_recorder.context = HeaderOnceContext()


_parse_trace_header_once()

# urllib3 logs retried URLs at WARNING, and Lancepilot's URL holds the recipient's number.
# The relay logs its own retries, masked, instead.
logging.getLogger("urllib3").setLevel(logging.ERROR)
# The handlers' Metrics object carries only the cold start metric; outcomes go separately.
warnings.filterwarnings("ignore", message="No application metrics to publish")

UNKNOWN = "unknown"  # the Provider of a message that could not be read

Counter = Literal[
    "MessagesDelivered",
    "MessagesFailed",
    "MessagesRetried",
    "MessagesQueued",
    "ProviderErrors",
    "RequestsRefused",
    "DuplicatesSuppressed",
    "AmbiguousSends",
]


class Outcomes:
    """Metric data points of one invocation, grouped by dimension set until ``flush``.

    Every metric has the dimension set ``{Provider}``; a ``breakdown`` (``Reason`` or
    ``StatusClass``) adds a second set ``{Provider, <breakdown>}`` to the same data point, so
    per-provider totals stay whole while the detail is there too. Values are bounded sets
    (providers, a few reasons, status classes): no cardinality surprises.
    """

    def __init__(self, namespace: str | None = None) -> None:
        self._namespace = namespace or os.environ.get(
            "POWERTOOLS_METRICS_NAMESPACE", "WebhookRelay"
        )
        self._lock = threading.Lock()
        self._points: dict[tuple[str, tuple[str, str] | None], list[tuple[str, str, float]]]
        self._points = defaultdict(list)

    def count(
        self, name: Counter, provider: str | None, breakdown: tuple[str, str] | None = None
    ) -> None:
        self._add(name, MetricUnit.Count, 1, provider, breakdown)

    def latency(self, provider: str, milliseconds: float) -> None:
        self._add("DeliveryLatency", MetricUnit.Milliseconds, milliseconds, provider, None)

    def _add(
        self,
        name: str,
        unit: MetricUnit,
        value: float,
        provider: str | None,
        breakdown: tuple[str, str] | None,
    ) -> None:
        with self._lock:
            self._points[(provider or UNKNOWN, breakdown)].append((name, unit.value, value))

    def flush(self) -> None:
        """Publish what was recorded (one EMF line per dimension set) and start afresh."""
        with self._lock:
            points, self._points = self._points, defaultdict(list)
        for (provider, breakdown), values in points.items():
            # service="" keeps Powertools from adding a "service" dimension: the metrics'
            # identity is {Provider} (and the breakdown), which dashboards and alarms query.
            emf = EphemeralMetrics(namespace=self._namespace, service="")
            emf.add_dimension(name="Provider", value=provider)
            if breakdown is not None:
                emf.add_dimensions(Provider=provider, **{breakdown[0]: breakdown[1]})
            counts: dict[str, float] = defaultdict(float)
            for name, unit, value in values:
                if unit == MetricUnit.Count.value:
                    counts[name] += value  # one summed value per count, not one per event
                else:
                    emf.add_metric(name=name, unit=unit, value=value)
            for name, total in counts.items():
                emf.add_metric(name=name, unit=MetricUnit.Count, value=total)
            emf.flush_metrics()


def status_class(status: int | None, failure: str = "connection") -> str:
    """A failed provider attempt's class for ProviderErrors.

    "4xx" (refused), "5xx", "throttled" (429), "timeout" (408, or no answer in time), or
    "connection" (could not connect).
    """
    if status == 429:
        return "throttled"
    if status == 408:
        return "timeout"
    if status is not None:
        return f"{status // 100}xx"
    return failure


outcomes = Outcomes()
