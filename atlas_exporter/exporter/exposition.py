"""The Prometheus text exposition of a registry, byte-for-byte what prometheus_client writes.

`render_text(registry)` formats counters and gauges itself, with the label part of each
series cached between scrapes (the same apps come back every scrape); any other metric type
is handed to prometheus_client's `generate_latest`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

MAX_CACHED_LABELS = 50_000
_go_float: Callable[[float], str] = floatToGoString  # a float as Go formats it: "+Inf", "1e+06", "0.5"


class _One:
    """A registry of one metric, for prometheus_client's generic formatter."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterable[Metric]:
        return [self.metric]


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class TextRenderer:
    """Formats a registry's metrics in the text format (version 0.0.4)."""

    def __init__(self) -> None:
        self._labels: dict[tuple[tuple[str, str], ...], str] = {}

    def _label_text(self, labels: dict[str, str]) -> str:
        key = tuple(labels.items())
        text = self._labels.get(key)
        if text is None:
            if len(self._labels) >= MAX_CACHED_LABELS:
                self._labels.clear()
            text = "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(labels.items())) + "}"
            self._labels[key] = text
        return text

    def render(self, metrics: Iterable[Metric]) -> bytes:
        out: list[str] = []
        append = out.append
        label_text = self._label_text
        for metric in metrics:
            mtype = metric.type
            if mtype not in ("counter", "gauge") or any(s.timestamp is not None for s in metric.samples):
                append(generate_latest(_One(metric)).decode("utf-8"))
                continue
            name = metric.name + "_total" if mtype == "counter" else metric.name
            doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            append(f"# HELP {name} {doc}\n# TYPE {name} {mtype}\n")
            created = metric.name + "_created"
            late: list[str] = []
            for s in metric.samples:
                line = f"{s.name}{label_text(s.labels) if s.labels else ''} {_go_float(s.value)}\n"
                (late if s.name == created else out).append(line)
            if late:
                append(f"# HELP {created} {doc}\n# TYPE {created} gauge\n")
                out.extend(late)
        # label values are made valid UTF-8 where they enter; should one slip through, it costs a
        # replacement character, not the whole scrape
        return "".join(out).encode("utf-8", "replace")
