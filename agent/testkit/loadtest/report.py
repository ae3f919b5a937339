"""A self-contained HTML report of a load test: tables plus plots, one file to attach to a ticket or a CI run.

Figures are drawn with matplotlib (Agg, no display needed) and embedded as base64 PNGs, so the report opens
anywhere without the result file or network access.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend must be chosen before pyplot loads
from jinja2 import Environment

from agent.stats import percentile
from agent.testkit.analysis.call import CallMetrics
from agent.testkit.loadtest.results import (
    AGENT_KEYS,
    CAMPAIGN_KEYS,
    COUNTS,
    DISTRIBUTIONS,
    RESPONSE_MEASURED_AT,
    STATS,
    LoadTestResults,
    samples,
)

__all__ = ["render_report", "write_report"]

MAX_TIMELINES = 24
MAX_FAILURE_ROWS = 100
CALLER_COLOR, BOT_COLOR, CLEAR_COLOR = "#1f77b4", "#ff7f0e", "#d62728"


def _png(fig: Any) -> str:
    """Fixed margins per figure instead of tight_layout: that alone took half the rendering time."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def latency_histograms(calls: Sequence[CallMetrics]) -> str:
    names = list(DISTRIBUTIONS)
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(names) / cols), cols, figsize=(16, 7))
    for ax, name in zip(axes.flat, names, strict=False):
        values = samples(calls, name)
        ax.set_title(f"{name.replace('_', ' ')} (ms)", fontsize=10)
        ax.set_xlabel(DISTRIBUTIONS[name], fontsize=8)
        if not values:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_yticks([])
            continue
        ax.hist(values, bins=min(40, max(5, len(values) // 2)), color=BOT_COLOR if "queue" in name else CALLER_COLOR)
        for q, style in ((50, "--"), (95, ":")):
            v = percentile(values, q) or 0.0
            ax.axvline(v, color="black", linestyle=style, linewidth=1, label=f"p{q} {v:.0f}")
        ax.legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.subplots_adjust(left=0.04, right=0.99, top=0.95, bottom=0.09, wspace=0.22, hspace=0.42)
    return _png(fig)


def _run_start(results: LoadTestResults) -> float:
    return min((r.started_at for r in results.runs), default=0.0)


def latency_over_time(results: LoadTestResults) -> str:
    """Response and barge-in times against when they happened, with how many calls were live."""
    t0 = _run_start(results)
    fig, ax = plt.subplots(figsize=(16, 4))
    for name, color in (("response", CALLER_COLOR), ("barge_in", CLEAR_COLOR)):
        xs: list[float] = []
        ys: list[float] = []
        points: list[tuple[float | None, float | None]]
        for c in results.calls:
            if c.started_at is None:
                continue
            base = c.started_at - t0 + (c.answer_ms or 0) / 1000
            if name == "response":
                points = [(a.start_ms, a.response_ms) for a in c.answers if a.response_ms is not None]
            else:
                points = [(b.clear_ms, b.time_to_silence_ms) for b in c.barge_ins if b.clear_ms is not None]
            for at, value in points:
                if at is not None and value is not None:
                    xs.append(base + at / 1000)
                    ys.append(value)
        ax.scatter(xs, ys, s=10, color=color, label=f"{name.replace('_', ' ')} (ms)")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("ms")
    live = ax.twinx()
    edges = sorted(
        [(c.started_at - t0, 1) for c in results.calls if c.started_at is not None]
        + [(c.started_at - t0 + c.duration_ms / 1000, -1) for c in results.calls if c.started_at is not None]
    )
    level, steps_x, steps_y = 0, [0.0], [0]
    for x, d in edges:
        level += d
        steps_x.append(x)
        steps_y.append(level)
    live.step(steps_x, steps_y, where="post", color="grey", alpha=0.6, label="live calls (generator)")
    live.set_ylabel("live calls")
    handles = ax.get_legend_handles_labels()[0] + live.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    fig.subplots_adjust(left=0.05, right=0.95, top=0.96, bottom=0.13)
    return _png(fig)


def agent_resources(results: LoadTestResults) -> str | None:
    sources = [a for a in results.agent if len(a.samples) >= 2]
    if not sources:
        return None
    t0 = _run_start(results)
    fig, (cpu_ax, mem_ax, calls_ax) = plt.subplots(1, 3, figsize=(16, 3.5))
    for stats in sources:
        cpu = [(t - t0, pct) for t, pct in stats.cpu_percent()]
        if cpu:
            cpu_ax.plot(*zip(*cpu, strict=True), label=stats.source)
        rss = [(s.t - t0, s.rss_bytes / 2**20) for s in stats.samples if s.rss_bytes is not None]
        if rss:
            mem_ax.plot(*zip(*rss, strict=True), label=stats.source)
        live = [(s.t - t0, s.active_calls) for s in stats.samples if s.active_calls is not None]
        if live:
            calls_ax.step(*zip(*live, strict=True), where="post", label=stats.source)
    for ax, title in ((cpu_ax, "agent CPU (%)"), (mem_ax, "agent RSS (MiB)"), (calls_ax, "agent_active_calls")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds since the run started")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper right")
    fig.subplots_adjust(left=0.04, right=0.99, top=0.9, bottom=0.16, wspace=0.18)
    return _png(fig)


def failures_chart(results: LoadTestResults) -> str | None:
    if not results.failures_by_cause:
        return None
    causes = list(results.failures_by_cause)
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.4 * len(causes)))
    ax.barh(causes, [results.failures_by_cause[c] for c in causes], color=CLEAR_COLOR)
    ax.invert_yaxis()
    ax.set_xlabel("calls")
    fig.subplots_adjust(left=0.25, right=0.97, top=0.95, bottom=0.2)
    return _png(fig)


def call_timelines(calls: Sequence[CallMetrics]) -> str | None:
    """Caller speech, bot audio and clears per call: failed calls first, then in order."""
    chosen = sorted(calls, key=lambda c: (c.ok, c.index if c.index is not None else 0))[:MAX_TIMELINES]
    chosen = [c for c in chosen if c.caller or c.answers or not c.ok]
    if not chosen:
        return None
    fig, ax = plt.subplots(figsize=(16, 0.9 + 0.42 * len(chosen)))
    labels = []
    for row, c in enumerate(chosen):
        y = len(chosen) - 1 - row
        ax.broken_barh(
            [(u.start_ms / 1000, u.duration_ms / 1000) for u in c.caller], (y + 0.05, 0.4), color=CALLER_COLOR
        )
        ax.broken_barh(
            [(a.start_ms / 1000, (a.end_ms - a.start_ms) / 1000) for a in c.answers], (y - 0.45, 0.4), color=BOT_COLOR
        )
        for clear in c.clears_ms:
            ax.plot([clear / 1000], [y], marker="x", color=CLEAR_COLOR, markersize=7)
        if c.end_ms is not None:
            ax.plot([c.end_ms / 1000, c.end_ms / 1000], [y - 0.45, y + 0.45], color="black", linewidth=1)
        name = f"#{c.index}" if c.index is not None else c.call_uuid[:8]
        labels.append(name if c.ok else f"{name} {c.failure}")
    ax.set_yticks(range(len(chosen)))
    ax.set_yticklabels(list(reversed(labels)), fontsize=8)
    for tick in ax.get_yticklabels():
        if " " in tick.get_text():
            tick.set_color(CLEAR_COLOR)
    ax.set_xlabel("seconds after the stream started   (blue: caller speech, orange: bot audio, x: clearAudio)")
    ax.grid(axis="x", alpha=0.3)
    fig.subplots_adjust(left=0.08, right=0.99, top=0.98, bottom=max(0.05, 0.6 / (0.9 + 0.42 * len(chosen))))
    return _png(fig)


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Load test: {{ scenario }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
.ok { color: #2a7a2a; font-weight: bold; } .missed { color: #c62828; font-weight: bold; }
img { max-width: 100%; } h2 { margin-top: 1.5em; border-bottom: 1px solid #ddd; }
</style></head><body>
<h1>Load test: {{ scenario }}</h1>
<p>{{ summary.calls }} calls, {{ summary.failed }} failed ({{ pct(summary.failure_rate) }}), {{ summary.wall_s }} s wall
time, {{ runs|length }} generator run(s), generated {{ generated }}.</p>
{% if slo %}<h2>SLOs</h2>
<table><tr><th>objective</th><th>value</th><th>result</th></tr>
{% for s in slo %}<tr><td>{{ s.key }} {{ s.op }} {{ s.threshold }}</td><td>{{ num(s.value) }}</td>
<td class="{{ 'ok' if s.ok else 'missed' }}">{{ 'met' if s.ok else 'MISSED' }}</td></tr>{% endfor %}</table>{% endif %}
<h2>Latency (ms)</h2>
<table><tr><th>measure</th>{% for st in stats %}<th>{{ st }}</th>{% endfor %}<th>samples</th></tr>
{% for name, what in distributions.items() %}<tr><td>{{ name }} <small>({{ what }})</small></td>
{% for st in stats %}<td>{{ num(summary[name ~ '_' ~ st ~ '_ms']) }}</td>{% endfor %}
<td>{{ summary[name ~ '_count'] }}</td></tr>{% endfor %}</table>
<p id="response-definition"><small>response: {{ response_definition }}</small></p>
<img alt="latency histograms" src="data:image/png;base64,{{ figures.histograms }}">
<h2>Over the run</h2>
<img alt="latency over time" src="data:image/png;base64,{{ figures.over_time }}">
<h2>Agent</h2>
{% if figures.agent %}<img alt="agent resources" src="data:image/png;base64,{{ figures.agent }}">{% endif %}
<table>{% for key in agent_keys %}<tr><td>{{ key }}</td><td>{{ num(summary[key]) }}</td></tr>{% endfor %}</table>
{% for a in agent %}{% for e in a.errors %}<p class="missed">{{ a.source }}: {{ e }}</p>{% endfor %}{% endfor %}
{% if campaign %}<h2>Campaign (outbound)</h2>
<table id="campaign">
{% for key in campaign_keys %}<tr><td>{{ key }}</td><td>{{ num(summary[key]) }}</td></tr>{% endfor %}
{% for outcome, n in campaign.outcomes.items() %}<tr><td>outcome {{ outcome }}</td><td>{{ n }}</td></tr>{% endfor %}
</table>
{% endif %}<h2>Calls</h2>
<table>{% for key in count_keys %}<tr><td>{{ key }}</td><td>{{ num(summary[key]) }}</td></tr>{% endfor %}</table>
{% if figures.timelines %}<h3>Per-call timelines</h3>
<img alt="call timelines" src="data:image/png;base64,{{ figures.timelines }}">{% endif %}
<h2>Failures</h2>
{% if figures.failures %}<img alt="failures by cause" src="data:image/png;base64,{{ figures.failures }}">
<table><tr><th>call</th><th>cause</th><th>detail</th></tr>
{% for c in failed %}<tr><td>#{{ c.index }} {{ c.call_uuid[:8] }}</td><td class="text">{{ c.failure }}</td>
<td class="text">{{ c.failure_detail }}</td></tr>{% endfor %}</table>
{% else %}<p class="ok">No failures.</p>{% endif %}
{% if webhook_errors %}<h3>Webhook errors</h3><p>The agent answered these webhooks with an error (the calls
themselves may have gone fine); {{ summary.webhook_errors }} in all, the first few:</p>
<table>{% for e in webhook_errors %}<tr><td class="text">{{ e }}</td></tr>{% endfor %}</table>{% endif %}
<h2>Configuration</h2>
<table><tr><th>host</th><th>started</th><th>seconds</th><th>config</th></tr>
{% for r in runs %}<tr><td class="text">{{ r.host }}</td><td>{{ when(r.started_at) }}</td>
<td>{{ '%.1f' % (r.ended_at - r.started_at) }}</td>
<td class="text"><code>{{ r.config | tojson }}</code></td></tr>{% endfor %}</table>
</body></html>
"""


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:.3g}"


def render_report(results: LoadTestResults) -> str:
    figures = {
        "histograms": latency_histograms(results.calls),
        "over_time": latency_over_time(results),
        "agent": agent_resources(results),
        "failures": failures_chart(results),
        "timelines": call_timelines(results.calls),
    }
    env = Environment(autoescape=True)
    return env.from_string(_TEMPLATE).render(
        scenario=results.scenario,
        summary=results.summary,
        slo=results.slo,
        runs=results.runs,
        agent=results.agent,
        stats=STATS,
        distributions=DISTRIBUTIONS,
        response_definition=RESPONSE_MEASURED_AT,
        agent_keys=AGENT_KEYS,
        count_keys=COUNTS,
        campaign=results.campaign,
        campaign_keys=CAMPAIGN_KEYS,
        failed=[c for c in results.calls if not c.ok][:MAX_FAILURE_ROWS],
        webhook_errors=[e for c in results.calls for e in c.webhook_errors][:20],
        figures=figures,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        num=_num,
        pct=lambda v: "-" if v is None else f"{100 * v:.1f}%",
        when=lambda t: datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )


def write_report(results: LoadTestResults, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(results))
