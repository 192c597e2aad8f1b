"""Plots and tables of the benchmark results, for docs/benchmarks.md.

Run: ``python -m bench.plots`` (``make plots``; needs matplotlib, the ``bench`` extra):
renders one PNG per results file of bench/results/ into docs/img/ and rewrites the
generated tables of docs/benchmarks.md (between its ``<!-- tables:begin -->`` and
``<!-- tables:end -->`` markers) from the same files. ``python -m bench.plots --markdown``
only prints the tables (no matplotlib needed). A missing results file skips its plot and
table, saying so.

Every figure says what was measured, on what machine (as the results file records it)
and with which command.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT / "docs" / "img"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"
GIB = 1024**3

# The command that writes each file (cluster.json and publish.json name theirs).
COMMANDS = {
    "publish": "make bench (python -m bench.publish)",
    "consume": "make bench (python -m bench.consume)",
    "timing": "make bench (python -m bench.timing)",
    "memory": "make bench-full (python -m bench.memory)",
    "cluster": "make test-cluster",
}
# Publish series: JSON name -> label.
ONE_BY_ONE = {
    "raw": "raw aio-pika\n(plain quorum queue)",
    "raw_same_queue": "raw aio-pika\n(ladder queue)",
    "postdate": "postdate\nsend",
    "celery": "Celery apply_async\n(confirm_publish)",
    "celery_no_confirms": "Celery apply_async\n(default: no confirms)",
}
BULK = {
    "raw": "raw aio-pika,\npipelined\n(plain quorum queue)",
    "raw_same_queue": "raw aio-pika,\npipelined\n(ladder queue)",
    "postdate": "postdate\nsend_many",
    "celery_group": "Celery group\n(confirm_publish)",
    "celery_group_no_confirms": "Celery group\n(default: no confirms)",
}
BASELINES = ("raw", "raw_same_queue", "postdate")  # confirmed: returned = held by the broker
SEQUENTIAL_KEY = "sequential_send_vs_raw_confirmed_publish"
PIPELINED_KEY = "send_many_vs_raw_pipelined_confirmed_publish"


def load(name: str, results: Path = RESULTS) -> dict[str, Any] | None:
    """``results/<name>.json``, or ``None`` (saying so on stderr) when it is missing."""
    path = results / f"{name}.json"
    if not path.exists():
        print(f"{path} missing: skipping its plot and table", file=sys.stderr)
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def machine(data: dict[str, Any]) -> str:
    """The machine as the results file records it (fields differ between benchmarks)."""
    host = data.get("host") or {}
    cpus = host.get("cpus", data.get("cpus"))
    parts = [f"{cpus} CPUs" if cpus else "CPUs not recorded"]
    if memory := host.get("memory_bytes"):
        parts.append(f"{memory / GIB:.0f} GiB")
    if load_average := host.get("load_average_at_start"):
        parts.append(f"load {load_average[0]:.1f} at start")
    if python := host.get("python"):
        parts.append(f"Python {python}")
    version = data.get("rabbitmq_version", data.get("rabbitmq", "?"))
    return f"RabbitMQ {version}, " + ", ".join(parts)


def provenance(name: str, data: dict[str, Any]) -> str:
    """One line: when, on what, and the command that produced ``data``."""
    when = data.get("measured_at", data.get("when", "?"))
    command = data.get("command", COMMANDS[name])
    return f"{when} on a shared machine: {machine(data)}. Command: {command}"


def median(values: Iterable[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(list(values)))


def fmt(value: float | None, digits: int = 0) -> str:
    """``value`` with thousands separators, or a dash for ``None``."""
    return "-" if value is None else f"{value:,.{digits}f}"


# --- tables --------------------------------------------------------------------------------


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def publish_table(data: dict[str, Any]) -> str:
    """Scheduling throughput: medians of each series, one by one and in bulk."""
    celery = data.get("celery", {})
    in_broker = celery.get("until_in_queue_median_msg_per_s", {})
    rows = []
    for key, series, title in (
        (SEQUENTIAL_KEY, ONE_BY_ONE, "one by one"),
        (PIPELINED_KEY, BULK, "bulk"),
    ):
        part = data[key]
        postdate = part["postdate_median_msg_per_s"]
        for name, label in series.items():
            rate = part.get(f"{name}_median_msg_per_s")
            if rate is None:
                continue
            held = in_broker.get(name, rate if name in BASELINES else None)
            rows.append(
                [
                    title,
                    label.replace("\n", " "),
                    ", ".join(fmt(value) for value in part[f"{name}_msg_per_s"]),
                    fmt(rate),
                    fmt(held),
                    f"{postdate / rate:.2f}",
                    "-" if held is None else f"{postdate / held:.2f}",
                ]
            )
    header = [
        "mode",
        "series",
        "runs (msg/s)",
        "median msg/s (call returned)",
        "median msg/s (held by the broker)",
        "postdate / series",
        "postdate / series (held)",
    ]
    out = table(header, rows)
    if "skipped" in celery:
        out += f"\n\nCelery series not run: {celery['skipped']}"
    return out


def timing_table(data: dict[str, Any]) -> str:
    """Lateness under steady load and after a burst, against the goals."""
    goals = data["goals"]
    steady, burst = data["steady"], data["burst"]
    late_s, late_b = steady["lateness_s"], burst["lateness_s"]
    rows = [
        [
            f"steady: {steady['commands']:,} at {steady['rate_per_s']}/s, "
            f"delays {steady['delays_s']} s",
            f"{late_s['p50'] * 1000:.1f} ms",
            f"{late_s['p99'] * 1000:.1f} ms",
            f"{late_s['max'] * 1000:.0f} ms",
            str(late_s["early_count"]),
            f"p99 ≤ {goals['steady_p99_s'] * 1000:.0f} ms: "
            + ("met" if late_s["p99"] <= goals["steady_p99_s"] else "**not met**"),
        ],
        [
            f"burst: {burst['commands']:,} due within {burst['due_within_s']} s "
            f"(send_many took {burst['send_many_s']:.1f} s)",
            f"{late_b['p50']:.2f} s",
            f"{late_b['p99']:.2f} s",
            f"{late_b['max']:.2f} s",
            str(late_b["early_count"]),
            f"p99 ≤ {goals['burst_p99_s']} s: "
            + ("met" if late_b["p99"] <= goals["burst_p99_s"] else "**not met**")
            + f"; max ≤ {goals['burst_max_s']} s: "
            + ("met" if late_b["max"] <= goals["burst_max_s"] else "**not met**"),
        ],
    ]
    floor = data.get("burst_without_ladder")
    if floor is not None:
        late_f = floor["lateness_s"]
        rows.append(
            [
                f"the same burst due within the coming second: no ladder "
                f"(send_many took {floor['send_many_s']:.1f} s)",
                f"{late_f['p50']:.2f} s",
                f"{late_f['p99']:.2f} s",
                f"{late_f['max']:.2f} s",
                str(late_f["early_count"]),
                "no head start: publish, command queue and worker at once",
            ]
        )
    return table(["load", "p50", "p99", "max", "early", "goal"], rows)


def wal_size(data: dict[str, Any], config: str) -> str:
    """The WAL size limit of ``config``: in MiB when a whole number of them, else in MB."""
    size = int(data["configs"][config]["wal_max_size_bytes"])
    return f"{size // 2**20} MiB" if size % 2**20 == 0 else f"{size / 1e6:.0f} MB"


def memory_table(data: dict[str, Any]) -> str:
    """Broker memory and disk per pending command, per WAL setting and count."""
    rows = [
        [
            f"{row['config']} (WAL {wal_size(data, row['config'])})",
            f"{row['pending']:,}",
            fmt(row["rss_per_cmd_settled"]),
            fmt(row["erlang_per_cmd_settled"]),
            fmt(row["disk_per_cmd_settled"]),
            fmt(row["disk_per_cmd_deleted"]),
            fmt(row["publish_per_s"]),
            fmt(row["broker_cpu_us_per_cmd"]),
        ]
        for row in data["summary"]
    ]
    header = [
        "config",
        "pending",
        "RSS B/cmd",
        "Erlang B/cmd",
        "disk B/cmd",
        "disk B/cmd after delete",
        "publish/s",
        "broker CPU µs/cmd",
    ]
    return table(header, rows)


def cluster_table(data: dict[str, Any]) -> str:
    """Failover: what each kill did to the commands and the pauses clients saw."""
    rows = [
        [
            f"{scenario['name']} ({scenario['killed']}, {scenario['how']})",
            scenario["outcome"],
            f"{scenario['confirmed']:,} / {scenario['sent']:,}",
            str(scenario["lost"]),
            str(scenario["early"]),
            str(scenario["duplicated"]),
            f"{scenario['publish_gap_s']['via_killed_node']:.2f} / "
            f"{scenario['publish_gap_s']['via_surviving_node']:.2f} "
            f"(normal {scenario['publish_gap_s']['normal']:.2f})",
            f"{scenario['consume_gap_s']['worker_via_killed_node']:.2f} "
            f"(normal {scenario['consume_gap_s']['normal']:.2f})",
            f"{scenario['late_beyond_kill_s']['p99']:.2f} / "
            f"{scenario['late_beyond_kill_s']['max']:.2f}",
            f"{scenario['node_down_s']:.0f}",
        ]
        for scenario in data["scenarios"]
    ]
    header = [
        "node killed",
        "outcome",
        "confirmed / sent",
        "lost",
        "early",
        "dup.",
        "publish pause s (via killed / surviving)",
        "worker pause s",
        "late beyond kill p99 / max s",
        "node down s",
    ]
    return table(header, rows)


def consume_series(data: dict[str, Any]) -> list[tuple[str, list[float], float | None]]:
    """(label, rates per round, target ratio) of each consume series."""
    series: list[tuple[str, list[float], float | None]] = [
        ("raw aio-pika consume + ack", data["raw_aio_pika_consume_ack_per_s"], None),
        ("worker (INFO logging)", data["worker_noop_per_s"], data["target_ratio"]),
        ("worker (WARNING logging)", data["worker_at_warning_noop_per_s"], None),
    ]
    for store in data.get("worker_with_schedule_store", []):
        series.append((f"worker + schedule store ({store['database']})", store["noop_per_s"], None))
    return series


def consume_table(data: dict[str, Any]) -> str:
    """Worker throughput with and without the schedule store."""
    raw = median(data["raw_aio_pika_consume_ack_per_s"])
    worker = median(data["worker_noop_per_s"])
    stores = {
        f"worker + schedule store ({store['database']})": store
        for store in data.get("worker_with_schedule_store", [])
    }
    rows = []
    for label, rates, _ in consume_series(data):
        rate = median(rates)
        goal = ""
        if label == "worker (INFO logging)":
            goal = f"≥ {data['target_ratio']} x raw: " + (
                "met" if rate / raw >= data["target_ratio"] else "**not met**"
            )
        elif label in stores:
            target = stores[label]["target_ratio"]
            goal = f"≥ {target} x worker: " + ("met" if rate / worker >= target else "**not met**")
        rows.append(
            [
                label,
                ", ".join(fmt(value) for value in rates),
                fmt(rate),
                f"{rate / raw:.2f}",
                f"{rate / worker:.2f}",
                goal,
            ]
        )
    header = ["series", "runs (msg/s)", "median msg/s", "/ raw", "/ worker", "goal"]
    return table(header, rows)


@dataclass(frozen=True)
class Section:
    """One results file: its table and its plot."""

    name: str
    title: str
    image: str
    table: Callable[[dict[str, Any]], str]
    plot: Callable[[dict[str, Any]], Figure]


def markdown(results: Path = RESULTS) -> str:
    """The generated tables of every results file there is, each with its provenance."""
    parts = []
    for section in SECTIONS:
        data = load(section.name, results)
        if data is None:
            parts.append(f"### {section.title}\n\n_bench/results/{section.name}.json missing._")
            continue
        parts.append(
            f"### {section.title}\n\n{section.table(data)}\n\n"
            f"_{provenance(section.name, data)}._\n\n"
            f"![{section.title}](img/{section.image})"
        )
    return "\n\n".join(parts) + "\n"


def update_doc(doc: Path, tables: str) -> bool:
    """Replace what lies between the markers of ``doc`` with ``tables``; whether it did."""
    if not doc.exists():
        return False
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{tables}{END}{tail}")
    return True


# --- plots ---------------------------------------------------------------------------------


def caption(figure: Figure, name: str, data: dict[str, Any], what: str) -> None:
    """What was measured (under the title), then when, where and how (at the bottom)."""
    figure.text(0.5, 0.015, f"{what}\n{provenance(name, data)}", ha="center", fontsize=7.5)


def bars(
    axes: Axes, labels: list[str], runs: list[list[float]], colours: list[str], unit: str
) -> None:
    """Median bars with each run as a dot, the median written above its bar."""
    positions = list(range(len(labels)))
    medians = [median(values) for values in runs]
    axes.bar(positions, medians, color=colours, width=0.6)
    for position, values, value in zip(positions, runs, medians, strict=True):
        axes.scatter([position] * len(values), values, color="black", s=8, zorder=3)
        axes.annotate(
            f"{value:,.0f}",
            (position, max([*values, value])),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            fontsize=8,
        )
    axes.set_xticks(positions, labels, fontsize=7)
    axes.set_ylabel(unit)
    axes.grid(axis="y", alpha=0.3)


def colour(name: str) -> str:
    """One colour per kind of series."""
    if name.startswith("celery"):
        return "#d62728" if "no_confirms" not in name else "#ff9896"
    if name == "postdate":
        return "#1f77b4"
    return "#7f7f7f" if name == "raw" else "#c7c7c7"


def publish_plot(data: dict[str, Any]) -> Figure:
    """Scheduling throughput: postdate send/send_many vs raw aio-pika vs Celery."""
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(13, 5.8))
    for axes, key, series, title in (
        (left, SEQUENTIAL_KEY, ONE_BY_ONE, "one at a time (send, apply_async)"),
        (right, PIPELINED_KEY, BULK, "in bulk (send_many, group)"),
    ):
        part = data[key]
        names = [name for name in series if f"{name}_msg_per_s" in part]
        bars(
            axes,
            [series[name] for name in names],
            [part[f"{name}_msg_per_s"] for name in names],
            [colour(name) for name in names],
            "messages scheduled per second",
        )
        held = data.get("celery", {}).get("until_in_queue_median_msg_per_s", {})
        label = "median until the broker held them"
        for position, name in enumerate(names):
            if name in held:
                axes.hlines(held[name], position - 0.3, position + 0.3, "black", "--", label=label)
                label = "_nolegend_"
                if held[name] < 0.9 * part[f"{name}_median_msg_per_s"]:
                    axes.annotate(
                        f"{held[name]:,} held",
                        (position, held[name]),
                        textcoords="offset points",
                        xytext=(0, 4),
                        ha="center",
                        fontsize=8,
                    )
        axes.set_ylim(top=max(max(part[f"{name}_msg_per_s"]) for name in names) * 1.3)
        if any(name in held for name in names):
            axes.legend(fontsize=8, loc="upper center")
        axes.set_title(f"{title}: {part['messages_per_run']:,} per run", fontsize=10)
    figure.suptitle(
        "Scheduling throughput: commands due in 300 s, postdate vs raw aio-pika vs Celery "
        "\n(bars and numbers = medians of alternating runs, dots = runs)"
    )
    celery = data.get("celery", {})
    versions = celery.get("versions")
    what = (
        f"Celery {versions['celery']} (kombu {versions['kombu']}) native delayed delivery "
        "on quorum queues; "
        if versions
        else f"Celery not run ({celery.get('skipped', 'no Celery results')}); "
    )
    what += (
        "postdate and raw = confirmed, mandatory, persistent publishes (raw: a bare message "
        "of the same size); Celery with confirm_publish and with its default (no confirms)"
    )
    caption(figure, "publish", data, what)
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    return figure


def timing_plot(data: dict[str, Any]) -> Figure:
    """Lateness under steady load and after a burst, against the goals."""
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 5))
    quantiles = ["p50", "p99", "max"]
    steady, burst, goals = data["steady"], data["burst"], data["goals"]
    left.bar(quantiles, [steady["lateness_s"][q] * 1000 for q in quantiles], color="#1f77b4")
    left.axhline(goals["steady_p99_s"] * 1000, color="red", linestyle="--", label="goal: p99")
    left.set_ylabel("ms after due")
    left.set_title(
        f"steady: {steady['commands']:,} commands at {steady['rate_per_s']}/s, "
        f"delays {steady['delays_s']} s\nearly: {steady['lateness_s']['early_count']}",
        fontsize=9,
    )
    right.bar(quantiles, [burst["lateness_s"][q] for q in quantiles], color="#ff7f0e")
    right.axhline(goals["burst_p99_s"], color="red", linestyle="--", label="goal: p99")
    right.axhline(goals["burst_max_s"], color="darkred", linestyle=":", label="goal: max")
    right.set_ylabel("s after due")
    right.set_title(
        f"burst: {burst['commands']:,} commands due within {burst['due_within_s']} s\n"
        f"early: {burst['lateness_s']['early_count']}",
        fontsize=9,
    )
    for axes in (left, right):
        axes.legend(fontsize=8)
        axes.grid(axis="y", alpha=0.3)
        for patch in axes.patches:
            axes.annotate(
                f"{patch.get_height():.3g}",
                (patch.get_x() + patch.get_width() / 2, patch.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    figure.suptitle("Lateness: how long after its due time a worker handled each command")
    caption(figure, "timing", data, f"worker: {data.get('worker', '?')}")
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    return figure


MEMORY_LABELS = {
    "rss_per_cmd_settled": "node RSS",
    "erlang_per_cmd_settled": "Erlang VM memory",
    "disk_per_cmd_settled": "with the commands pending",
    "disk_per_cmd_deleted": "after their queues were deleted",
}


def memory_plot(data: dict[str, Any]) -> Figure:
    """Broker memory and disk per pending command."""
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(12, 5))
    rows = data["summary"]
    labels = [f"{row['config']}\n{row['pending']:,}" for row in rows]
    positions = list(range(len(rows)))
    width = 0.38
    for axes, keys, title in (
        (left, ("rss_per_cmd_settled", "erlang_per_cmd_settled"), "memory, settled"),
        (right, ("disk_per_cmd_settled", "disk_per_cmd_deleted"), "disk (node data directory)"),
    ):
        pairs = ((-width / 2, keys[0], "#1f77b4"), (width / 2, keys[1], "#aec7e8"))
        for offset, key, shade in pairs:
            values = [row[key] for row in rows]
            label = MEMORY_LABELS[key]
            axes.bar([p + offset for p in positions], values, width, label=label, color=shade)
            for position, value in zip(positions, values, strict=True):
                axes.annotate(
                    f"{value:,.0f}", (position + offset, value), ha="center", va="bottom", size=7
                )
        axes.set_xticks(positions, labels, fontsize=8)
        axes.set_ylim(top=max(max(row[key] for row in rows) for key in keys) * 1.25)
        axes.set_ylabel("bytes per pending command")
        axes.set_title(title, fontsize=10)
        axes.legend(fontsize=8)
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle(
        "Broker memory and disk per pending command (100-byte body, 1-day delay), "
        "stock WAL vs the shipped 64 MB WAL"
    )
    caption(figure, "memory", data, "each run on a fresh node (rabbit/node.sh); " + data["delay"])
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    return figure


def cluster_plot(data: dict[str, Any]) -> Figure:
    """The pauses publishers and the worker saw when a node was killed."""
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(11, 5.2))
    kinds = [  # label, field, key
        ("publisher via killed node", "publish_gap_s", "via_killed_node"),
        ("publisher via surviving node", "publish_gap_s", "via_surviving_node"),
        ("worker via killed node", "consume_gap_s", "worker_via_killed_node"),
        ("publisher, before the kill", "publish_gap_s", "normal"),
    ]
    scenarios = data["scenarios"]
    width = 0.2
    shades = ["#d62728", "#ff9896", "#1f77b4", "#c7c7c7"]
    for index, ((label, field, key), shade) in enumerate(zip(kinds, shades, strict=True)):
        positions = [p + (index - 1.5) * width for p in range(len(scenarios))]
        heights = [float(scenario[field][key]) for scenario in scenarios]
        axes.bar(positions, heights, width, label=label, color=shade)
        for position, height in zip(positions, heights, strict=True):
            axes.annotate(f"{height:.2f}", (position, height), ha="center", va="bottom", fontsize=8)
    axes.set_xticks(
        range(len(scenarios)),
        [
            f"{s['name']} killed ({s['killed']}, {s['how']})\n{s['outcome']}; "
            f"lost {s['lost']}, early {s['early']}"
            for s in scenarios
        ],
        fontsize=8,
    )
    axes.set_ylabel("longest pause between two handled / confirmed sends (s)")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.suptitle("Failover on a three-node cluster: the pause clients saw when a node died")
    caption(figure, "cluster", data, "three nodes on one machine (rabbit/cluster.sh)")
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    return figure


def consume_plot(data: dict[str, Any]) -> Figure:
    """Worker throughput with and without the schedule store."""
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(11, 5.2))
    series = consume_series(data)
    shades = ["#7f7f7f", "#1f77b4", "#aec7e8"] + ["#2ca02c"] * (len(series) - 3)
    bars(
        axes,
        [label.replace(" (", "\n(").replace(" + ", "\n+ ") for label, _, _ in series],
        [rates for _, rates, _ in series],
        shades,
        "messages handled per second",
    )
    figure.suptitle(
        f"Worker throughput: {data['messages_per_round']:,} ready no-op commands per round, "
        f"prefetch {data['prefetch']}\n(bars and numbers = medians of alternating rounds, "
        "dots = rounds)"
    )
    caption(
        figure,
        "consume",
        data,
        "the worker runs in its own process (postdate worker); the schedule store writes "
        "one history row per message",
    )
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    return figure


SECTIONS = (
    Section("publish", "Scheduling throughput", "publish.png", publish_table, publish_plot),
    Section("timing", "Lateness: steady load and burst", "timing.png", timing_table, timing_plot),
    Section(
        "memory",
        "Broker memory and disk per pending command",
        "memory.png",
        memory_table,
        memory_plot,
    ),
    Section(
        "cluster", "Failover on a three-node cluster", "cluster.png", cluster_table, cluster_plot
    ),
    Section("consume", "Worker throughput", "consume.png", consume_table, consume_plot),
)


def render(results: Path = RESULTS, images: Path = IMAGES) -> list[Path]:
    """Render every plot whose results file exists into ``images``; the files written."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    images.mkdir(parents=True, exist_ok=True)
    written = []
    for section in SECTIONS:
        data = load(section.name, results)
        if data is None:
            continue
        figure = section.plot(data)
        path = images / section.image
        figure.savefig(path, dpi=110)
        pyplot.close(figure)
        written.append(path)
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return written


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.plots``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--markdown", action="store_true", help="print the tables only")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--doc", type=Path, default=DOC, help="doc whose tables to rewrite")
    args = parser.parse_args(argv)
    tables = markdown(args.results)
    if args.markdown:
        print(tables, end="")
        return 0
    if importlib.util.find_spec("matplotlib") is None:
        print(
            "matplotlib is not installed: install the bench extra (pip install -e '.[bench]')",
            file=sys.stderr,
        )
        return 1
    render(args.results, args.images)
    if update_doc(args.doc, tables):
        print(f"rewrote the tables of {args.doc}")
    else:
        print(f"{args.doc}: no {BEGIN} ... {END} markers, tables not written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
