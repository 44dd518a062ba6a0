"""Statistics and the markdown report: paired per-round deltas against bare, their median and interquartile range.

On a noisy machine the bare call's median drifts 20–70 % between rounds, so a variant is only ever compared with
the bare batch of the same round; the report gives the median of those deltas over rounds and their IQR.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench import spread
from bench.transport import STREAM_CHUNKS
from bench.variants import BARE, CONTROL, FLOOR, PEERS, SPENDWATCH, VARIANTS, WORK_FLOOR

__all__ = ["Run", "markdown", "ratio", "rows", "versions_line"]

_PER_CHUNK = "stream, per chunk"


@dataclass
class Run:
    """What the workers reported: per variant, per kind, one median (ns) per round, and whatever else they said."""

    meta: dict[str, str]
    versions: dict[str, dict[str, str]]
    unavailable: dict[str, str]
    kinds: list[str]
    median_ns: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    spans_per_call: dict[str, dict[str, float]] = field(default_factory=dict)
    memory: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    deferred_ns: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    baseline: str | None = None  # spendwatch at an earlier revision (--against), a variant of this run


def _instruments(run: Run, variant: str, kind: str) -> bool:
    return variant == CONTROL or run.spans_per_call[variant][kind] > 0


def _overheads(
    run: Run, variant: str, kind: str, scale: float = 1.0, reference: str = BARE
) -> tuple[float, float, float] | None:
    """Median and IQR, in µs, of the per-round paired delta variant − reference (bare unless told); None if the
    variant made no span."""
    if not _instruments(run, variant, kind):
        return None
    paired = zip(run.median_ns[variant][kind], run.median_ns[reference][kind], strict=True)
    return spread([(v - r) / 1000 / scale for v, r in paired])


def _cell(stats: tuple[float, float, float] | None) -> str:
    if stats is None:
        return "n/a"
    median, q1, q3 = stats
    return f"{median:.1f} ({q1:.1f}–{q3:.1f})"


def ratio(ours: float | tuple | None, theirs: float | tuple | None) -> str:
    """``ours ÷ theirs`` to two places, each a number or a ``(median, q1, q3)``; "—" when there is none."""
    ours, theirs = (value[0] if isinstance(value, tuple) else value for value in (ours, theirs))
    if ours is None or theirs is None or theirs <= 0:
        return "—"
    return f"{ours / theirs:.2f}"


def rows(kinds: list[str]) -> list[tuple[str, str, float]]:
    """(label, kind, scale): every kind, plus the stream's cost per chunk right after the stream."""
    labelled = []
    for kind in kinds:
        labelled.append((kind, kind, 1.0))
        if kind == "chat stream":
            labelled.append((_PER_CHUNK, kind, float(STREAM_CHUNKS)))
    return labelled


def _overhead_table(run: Run, instrumented: list[str], peers: list[str], ours: list[str]) -> list[str]:
    header = ["kind", "bare median µs", *(f"{v} overhead µs" for v in instrumented)]
    header += [f"{v} ÷ lightest peer" for v in ours]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, kind, scale in rows(run.kinds):
        bare = spread([ns / 1000 / scale for ns in run.median_ns[BARE][kind]])
        stats = {v: _overheads(run, v, kind, scale) for v in instrumented}
        peer_stats = [stats[p] for p in peers if stats[p] is not None]
        lightest = min(peer_stats, key=lambda s: s[0]) if peer_stats else None
        cells = [label, _cell(bare), *(_cell(stats[v]) for v in instrumented)]
        cells += [ratio(stats[v], lightest) for v in ours]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ratio_table(run: Run, peers: list[str], ours: list[str]) -> list[str]:
    pairs = [(o, p) for o in ours for p in peers]
    header = ["kind", *(f"{o} ÷ {p}" for o, p in pairs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, kind, scale in rows(run.kinds):
        if scale != 1.0:
            continue
        cells = [ratio(_overheads(run, o, kind), _overheads(run, p, kind)) for o, p in pairs]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return lines


def _deferred_table(run: Run, peers: list[str], ours: list[str]) -> list[str]:
    """Per kind, each of our variants' deferred CPU per call, and its overhead with that CPU added ÷ lightest peer."""
    deferring = [v for v in ours if v in run.deferred_ns]
    header = ["kind", *(f"{v} deferred µs" for v in deferring)]
    header += [f"{v} overhead + deferred ÷ lightest peer" for v in deferring]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind in run.kinds:
        deferred = {v: spread([ns / 1000 for ns in run.deferred_ns[v].get(kind, [0])]) for v in deferring}
        peer_stats = [s for s in (_overheads(run, p, kind) for p in peers) if s is not None]
        lightest = min(peer_stats, key=lambda s: s[0]) if peer_stats else None
        cells = [kind, *(_cell(deferred[v]) for v in deferring)]
        for v in deferring:
            overhead = _overheads(run, v, kind)
            total = None if overhead is None else (overhead[0] + deferred[v][0],)
            cells.append(ratio(total, lightest))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _memory_table(run: Run, instrumented: list[str]) -> list[str]:
    header = ["kind", "bare peak KiB", *(f"{v} peak / kept" for v in instrumented)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    bare = run.memory[BARE]
    for kind in run.kinds:
        cells = [kind, f"{bare['peak_bytes'][kind] / 1024:.1f}"]
        for v in instrumented:
            if not _instruments(run, v, kind):
                cells.append("n/a")
                continue
            mem = run.memory[v]
            peak = (mem["peak_bytes"][kind] - bare["peak_bytes"][kind]) / 1024
            kept = mem["retained_bytes"][kind] - bare["retained_bytes"][kind]
            cells.append(f"{peak:+.1f} KiB / {kept:+d} B")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _against_table(run: Run, ours: str) -> list[str]:
    """``ours`` against the baseline revision: the median and IQR of their per-round paired difference."""
    header = ["kind", f"{ours} − {run.baseline} µs", f"{ours} ÷ {run.baseline}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, kind, scale in rows(run.kinds):
        difference = _overheads(run, ours, kind, scale, reference=run.baseline)
        against = ratio(_overheads(run, ours, kind, scale), _overheads(run, run.baseline, kind, scale))
        lines.append(f"| {label} | {_cell(difference)} | {against} |")
    return lines


def versions_line(versions: dict[str, dict[str, str]]) -> str:
    """``Versions: python …, openai …; <variant> <its version>, …`` from each variant's worker's versions."""
    common = ", ".join(f"{k} {x}" for k, x in versions[BARE].items() if k != "variant")
    return (
        f"Versions: {common}; "
        + ", ".join(f"{v} {vs['variant']}" for v, vs in versions.items() if v not in (BARE, CONTROL))
        + "."
    )


def markdown(run: Run) -> str:
    instrumented = [v for v in VARIANTS if v != BARE and v in run.median_ns]
    peers = [v for v in PEERS if v in run.median_ns]
    ours = [v for v in SPENDWATCH if v in run.median_ns]
    if run.baseline in run.median_ns:
        instrumented.append(run.baseline)
        ours.append(run.baseline)
    references = [v for v in (FLOOR, WORK_FLOOR) if v in run.median_ns]  # what any instrumentation must spend
    meta = run.meta
    lines = [
        "# spendwatch: per-call overhead over the bare OpenAI SDK",
        "",
        f"`{meta['command']}` — {meta['date']}, {meta['machine']}; {meta['config']}.",
        "",
        "Overhead = median over rounds of (variant's median call − bare's median call in the same round), µs, "
        "with the interquartile range over rounds in brackets. n/a: the variant made no span for that kind. "
        f"{CONTROL} is a second uninstrumented process: its column is the noise floor between processes. "
        f"The stream has {STREAM_CHUNKS} chunks (stream_options.include_usage) and is consumed fully.",
        "",
        *_overhead_table(run, instrumented, peers, ours + references),
    ]
    if run.baseline in run.median_ns and SPENDWATCH[0] in run.median_ns:
        lines += [
            "",
            f"Against the baseline revision (`--against`): the median over rounds of the paired per-round difference "
            f"of median calls, {SPENDWATCH[0]} − {run.baseline} (negative: the working tree is faster), and the ratio "
            "of their overheads.",
            "",
            *_against_table(run, SPENDWATCH[0]),
        ]
    if peers and ours:
        lines += ["", "Ratio of overheads (median deltas):", "", *_ratio_table(run, peers, ours)]
    if run.deferred_ns and peers:
        lines += [
            "",
            "Work deferred off the caller's path: CPU per call that a background thread spends later (spendwatch "
            "records the semantic-convention histograms once a second, not during the call; the peers record them "
            "inside it). Not part of the overheads above; timed right after each batch, median over rounds, µs.",
            "",
            *_deferred_table(run, peers, ours),
        ]
    if run.memory:
        lines += [
            "",
            "Memory per call over bare (tracemalloc): peak during one call / bytes still held per call after many.",
            "",
            *_memory_table(run, instrumented),
        ]
    lines += ["", versions_line(run.versions)]
    if run.unavailable:
        lines += ["", "Not available in this run:", ""]
        lines += [f"- {v}: {why}" for v, why in run.unavailable.items()]
    lines += [
        "",
        "Every variant runs in its own worker process, a fresh one each round, over an in-process mock transport on "
        "the SDK's "
        "own HTTP client, with the same OpenTelemetry SDK (SimpleSpanProcessor into a counting no-op exporter, "
        "InMemoryMetricReader). Each instrumentation runs with its defaults; OpenLLMetry's default records prompts "
        "and completions on spans, so openllmetry-nocontent sets TRACELOOP_TRACE_CONTENT=false, as the others "
        "default. OpenLIT is not measured: it requires openai<3 and fetches prices from the internet at start-up. "
        f"{FLOOR} is a reference, not a peer: one CLIENT span made current around each call with the attributes "
        "DESIGN.md requires and nothing else (bench/span_floor.py), the OpenTelemetry SDK's share of any overhead. "
        f"{WORK_FLOOR} is a reference too: {FLOOR} plus the least per-call work spendwatch's job needs (the "
        "suppression check, the category, the usage read, the price looked up and multiplied out, the cost "
        "attributes, the metrics' values queued) and nothing else (bench/work_floor.py): no instrumentation doing "
        "spendwatch's job can cost less.",
    ]
    return "\n".join(lines) + "\n"
