"""Memory benchmark: broker memory and disk per pending command, stock WAL against shipped.

Run: ``python -m bench.memory`` (``make bench-full``; minutes: it publishes 100k and 1M
commands twice); writes ``bench/results/memory.json``. ``--counts 20000`` (or
``POSTDATE_BENCH_MEMORY_COUNTS=20000``) makes a quick run, ``--wal BYTES`` measures other
``raft.wal_max_size_bytes`` values than the one shipped in ``rabbit/rabbitmq.conf``.

RabbitMQ 3.10 keeps each quorum-queue log entry in memory (ETS mem tables) while it is in
the write-ahead log, and only writes it to the queue's segment files, and frees it, when
the WAL rolls over at ``raft.wal_max_size_bytes`` (512 MiB by default). For every
configuration (stock, then each WAL size) and every count N, on a fresh node of its own
(``rabbit/node.sh``, never the machine's broker) with the project's
``rabbit/advanced.config``:

1. baseline: the node with the ladder and one command queue declared, nothing pending;
2. published: N commands sent with a 1-day delay (ladder level 16) through
   ``Publisher.send_many``, ``CHUNK`` per call (the publish rate is timed here);
3. settled: after at least ``SETTLE_MIN_S``, once memory stopped changing;
4. deleted: the queues and exchanges deleted, ``AFTER_DELETE_S`` later;
5. collected: after a forced garbage collection of every Erlang process.

Memory per pending command is (phase - baseline) / N of the node's resident set size (the
OS figure, which the memory alarm compares to the watermark under the default ``rss``
strategy); the Erlang VM's own ``erlang:memory(total)`` and allocator figures are kept
beside it. Disk per pending command is the same for the node's data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika

from bench.common import server_version, write_results
from postdate._command import Command
from postdate._settings import Settings
from postdate.broker._connection import named_url
from postdate.broker._declare import declare_topology, delete_topology
from postdate.broker._topology import Topology, command_queue_topology, ladder_topology
from postdate.delay import _ladder as ladder
from postdate.delay._routing import When
from postdate.publish._publisher import Publisher

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "memory.json"
NODE_SCRIPT = ROOT / "rabbit" / "node.sh"
ADVANCED_CONFIG = ROOT / "rabbit" / "advanced.config"
SHIPPED_CONF = ROOT / "rabbit" / "rabbitmq.conf"
WAL_KEY = "raft.wal_max_size_bytes"
STOCK_WAL_BYTES = 512 * 1024 * 1024  # RabbitMQ 3.10.8's default (ra 2.2.0)
NODE_NAME = os.environ.get("POSTDATE_BENCH_MEMORY_NODE", "postdate-bench-mem")
NODE_PORT = int(os.environ.get("POSTDATE_BENCH_MEMORY_PORT", "5692"))
NODES_DIR = Path(os.environ.get("POSTDATE_BENCH_MEMORY_NODES_DIR", "/tmp/postdate-bench-mem"))
COUNTS_ENV = "POSTDATE_BENCH_MEMORY_COUNTS"
DEFAULT_COUNTS = (100_000, 1_000_000)
PREFIX = "benchmem"
QUEUE = f"{PREFIX}.expire_reservation"
DELAY = timedelta(days=1)
LEVEL = ladder.levels(int(DELAY.total_seconds()))[0]  # 16: every command waits there
CHUNK = 10_000  # commands per send_many call
SETTLE_MIN_S = 30.0
SETTLE_MAX_S = 300.0
SETTLE_POLL_S = 5.0
SETTLE_TOLERANCE = 2 * 1024 * 1024  # bytes of RSS change between polls that count as still
AFTER_DELETE_S = 10.0
GC_ALL = "[erlang:garbage_collect(P) || P <- erlang:processes()], ok."
# Parts of RabbitMQ's memory breakdown kept per phase (bytes).
BREAKDOWN = (
    "quorum_ets",
    "quorum_queue_procs",
    "quorum_queue_dlx_procs",
    "binary",
    "other_ets",
    "other_proc",
    "allocated_unused",
    "reserved_unallocated",
)


class Reminder(Command, queue=QUEUE):
    """A typical small pending command: an order id and a short note."""

    order_id: str
    note: str = "expire the reservation unless picked up"


@dataclass(frozen=True)
class Config:
    """A broker configuration to measure: a label and extra ``rabbitmq.conf`` lines."""

    label: str
    wal_max_size_bytes: int
    conf_lines: tuple[str, ...] = ()
    shipped: bool = False


@dataclass(frozen=True)
class Sample:
    """The node's memory (bytes, several views) and disk use (bytes) at one moment."""

    rss: int
    erlang: int
    allocated: int
    breakdown: dict[str, int]
    disk: int
    quorum_disk: int
    wal_files: int
    wal_bytes: int
    wal_number: int

    def as_json(self) -> dict[str, Any]:
        """The sample as the results file shows it."""
        return {
            "memory_rss": self.rss,
            "memory_erlang_total": self.erlang,
            "memory_allocated": self.allocated,
            "breakdown": self.breakdown,
            "disk_node_data": self.disk,
            "disk_quorum_dir": self.quorum_disk,
            "wal_files": self.wal_files,
            "wal_bytes": self.wal_bytes,
            "wal_number": self.wal_number,
        }


@dataclass
class Node:
    """A RabbitMQ node of the benchmark's own, run by ``rabbit/node.sh``."""

    name: str = NODE_NAME
    port: int = NODE_PORT
    base: Path = NODES_DIR
    extra_conf: Path | None = None
    started: bool = field(default=False, init=False)

    @property
    def url(self) -> str:
        """The node's AMQP URL (guest/guest, loopback users allowed)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def data_dir(self) -> Path:
        """The node's mnesia directory (everything it stores)."""
        return self.base / self.name / "mnesia"

    @property
    def quorum_dir(self) -> Path:
        """The node's Raft data: the WAL and one directory per quorum queue."""
        node = f"{self.name}@localhost"
        return self.data_dir / node / "quorum" / node

    def script(self, *args: str, timeout: float = 180) -> str:
        """Run ``rabbit/node.sh ARGS`` for this node; its standard output.

        Raises:
            RuntimeError: the script failed.
        """
        env = {**os.environ, "POSTDATE_NODES_DIR": str(self.base)}
        done = subprocess.run(
            [str(NODE_SCRIPT), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
        if done.returncode != 0:
            raise RuntimeError(f"node.sh {' '.join(args)} failed: {done.stderr or done.stdout}")
        return done.stdout

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl -n NAME@localhost ARGS``; its standard output."""
        return self.script("ctl", self.name, *args)

    def start(self, config: Config) -> None:
        """Start the node afresh (empty data directory) with ``config``."""
        self.script("stop", self.name)  # left over by an interrupted run
        shutil.rmtree(self.base / self.name, ignore_errors=True)
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)  # the rabbitmq user walks through it to its own directory
        extra = self.base / "extra.conf"
        extra.write_text("".join(f"{line}\n" for line in config.conf_lines))
        self.started = True
        self.script("start", self.name, str(self.port), str(ADVANCED_CONFIG), str(extra))
        wal = self.ctl("eval", "application:get_env(ra, wal_max_size_bytes).")
        if str(config.wal_max_size_bytes) not in wal:
            raise RuntimeError(f"{config.label}: the node runs with wal_max_size_bytes {wal}")

    def stop(self) -> None:
        """Stop the node (if this object started it) and remove its data."""
        if self.started:
            self.script("stop", self.name)
            self.started = False
        shutil.rmtree(self.base / self.name, ignore_errors=True)

    def sample(self) -> Sample:
        """Measure the node's memory and disk use now."""
        memory = json.loads(self.ctl("status", "--formatter", "json"))["memory"]
        total = memory["total"]
        wal = list(self.quorum_dir.glob("*.wal"))
        return Sample(
            rss=int(total["rss"]),
            erlang=int(total["erlang"]),
            allocated=int(total["allocated"]),
            breakdown={key: int(memory.get(key, 0)) for key in BREAKDOWN},
            disk=disk_usage(self.data_dir),
            quorum_disk=disk_usage(self.quorum_dir),
            wal_files=len(wal),
            wal_bytes=sum(file_disk_usage(path) for path in wal),
            wal_number=max((int(path.stem) for path in wal if path.stem.isdigit()), default=0),
        )

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the node's Erlang VM has used so far."""
        pid = (self.base / self.name / "pid").read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def collect_garbage(self) -> None:
        """Force a garbage collection of every Erlang process on the node."""
        self.ctl("eval", GC_ALL)


def file_disk_usage(path: Path) -> int:
    """Bytes ``path`` occupies on disk (allocated blocks, as ``du`` counts them)."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:  # removed while we looked
        return 0


def disk_usage(directory: Path) -> int:
    """Bytes everything under ``directory`` occupies on disk (``du -s --block-size=1``)."""
    return sum(file_disk_usage(path) for path in walk(directory))


def walk(directory: Path) -> Iterator[Path]:
    """Every file under ``directory`` (none when it does not exist)."""
    for parent, _, files in os.walk(directory):
        for name in files:
            yield Path(parent) / name


def shipped_wal_bytes(conf: Path = SHIPPED_CONF) -> int | None:
    """The ``raft.wal_max_size_bytes`` value set in ``rabbit/rabbitmq.conf``, if any."""
    for line in conf.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == WAL_KEY:
            return int(value.strip())
    return None


def configs(wal_values: Sequence[int]) -> list[Config]:
    """Stock settings first, then one configuration per WAL size."""
    shipped = shipped_wal_bytes()
    return [Config("stock", STOCK_WAL_BYTES)] + [
        Config(
            "shipped" if value == shipped else f"wal_{value}",
            value,
            (f"{WAL_KEY} = {value}",),
            shipped=value == shipped,
        )
        for value in wal_values
    ]


def topology() -> Topology:
    """What the benchmark declares: the ladder and one command queue (no retry tiers)."""
    return ladder_topology(PREFIX) + command_queue_topology(PREFIX, QUEUE, retry_tiers=())


async def publish(node: Node, count: int) -> float:
    """Send ``count`` commands due in ``DELAY``, ``CHUNK`` per ``send_many``; seconds taken."""
    settings = Settings.load(prefix=PREFIX, rabbitmq_url=node.url)
    elapsed = 0.0
    async with Publisher(settings=settings, connection_name="bench.memory") as publisher:
        for start in range(0, count, CHUNK):
            items: list[tuple[Command, When]] = [
                (Reminder(order_id=str(uuid.uuid4())), DELAY)
                for _ in range(min(CHUNK, count - start))
            ]
            started = time.perf_counter()
            await publisher.send_many(items)
            elapsed += time.perf_counter() - started
    return elapsed


async def settle(node: Node) -> tuple[Sample, float]:
    """Wait at least ``SETTLE_MIN_S``, then until memory stops changing (or
    ``SETTLE_MAX_S``); the last sample and the seconds waited."""
    started = time.monotonic()
    previous: Sample | None = None
    while True:
        await asyncio.sleep(SETTLE_POLL_S)
        current = node.sample()
        waited = time.monotonic() - started
        steady = previous is not None and abs(current.rss - previous.rss) < SETTLE_TOLERANCE
        if waited >= SETTLE_MAX_S or (waited >= SETTLE_MIN_S and steady):
            return current, waited
        previous = current


async def measure(node: Node, count: int) -> dict[str, Any]:
    """One run on a started node: the five phases for ``count`` pending commands."""
    connection = await aio_pika.connect(named_url(node.url, "bench.memory"))
    try:
        await declare_topology(connection, topology())
        samples = {"baseline": node.sample()}
        cpu_before = node.cpu_seconds()
        publish_s = await publish(node, count)
        cpu_published = node.cpu_seconds()
        samples["published"] = node.sample()
        samples["settled"], settle_s = await settle(node)
        cpu_settled = node.cpu_seconds()
        deleted = await delete_topology(connection, topology())
        version = server_version(connection)
    finally:
        await connection.close()
    await asyncio.sleep(AFTER_DELETE_S)
    samples["deleted"] = node.sample()
    node.collect_garbage()
    samples["collected"] = node.sample()
    return {
        "pending": count,
        "messages_deleted": deleted.messages,
        "rabbitmq_version": version,
        "publish_s": round(publish_s, 1),
        "publish_per_s": round(count / publish_s),
        "broker_cpu_us_per_cmd": {
            "publish": round((cpu_published - cpu_before) / count * 1e6, 1),
            "publish_and_settle": round((cpu_settled - cpu_before) / count * 1e6, 1),
        },
        "settle_s": round(settle_s),
        "per_command_bytes": per_command(samples, count),
        "samples": {phase: sample.as_json() for phase, sample in samples.items()},
    }


def per_command(samples: dict[str, Sample], count: int) -> dict[str, dict[str, float]]:
    """(phase - baseline) / count for each phase and figure."""
    base = samples["baseline"]
    figures: dict[str, Callable[[Sample], int]] = {
        "memory_rss": lambda sample: sample.rss,
        "memory_erlang_total": lambda sample: sample.erlang,
        "quorum_ets": lambda sample: sample.breakdown["quorum_ets"],
        "disk_node_data": lambda sample: sample.disk,
    }
    return {
        name: {
            phase: round((value(sample) - value(base)) / count, 1)
            for phase, sample in samples.items()
            if phase != "baseline"
        }
        for name, value in figures.items()
    }


async def run_one(config: Config, count: int) -> dict[str, Any]:
    """Measure ``count`` pending commands under ``config`` on a fresh node."""
    node = Node()
    print(f"bench.memory: {config.label}, {count:,} pending", flush=True)
    try:
        node.start(config)
        result = {"config": config.label, **await measure(node, count)}
    finally:
        node.stop()
    print(json.dumps(summary_row(result)), flush=True)
    return result


def summary_row(run: dict[str, Any]) -> dict[str, Any]:
    """One line of the summary table: a run's per-command figures and publish rate."""
    rss = run["per_command_bytes"]["memory_rss"]
    erlang = run["per_command_bytes"]["memory_erlang_total"]
    disk = run["per_command_bytes"]["disk_node_data"]
    return {
        "config": run["config"],
        "pending": run["pending"],
        "publish_per_s": run["publish_per_s"],
        "broker_cpu_us_per_cmd": run["broker_cpu_us_per_cmd"]["publish_and_settle"],
        "rss_per_cmd_published": rss["published"],
        "rss_per_cmd_settled": rss["settled"],
        "rss_per_cmd_deleted": rss["deleted"],
        "rss_per_cmd_collected": rss["collected"],
        "erlang_per_cmd_settled": erlang["settled"],
        "erlang_per_cmd_collected": erlang["collected"],
        "disk_per_cmd_settled": disk["settled"],
        "disk_per_cmd_deleted": disk["deleted"],
    }


async def main(counts: Sequence[int], wal_values: Sequence[int]) -> dict[str, Any]:
    """Run the memory benchmark; returns the results."""
    started = time.perf_counter()
    measured = configs(wal_values)
    runs: list[dict[str, Any]] = []
    try:
        # Configurations alternate per count: the machine is shared, so the publish rates
        # compared are measured close together.
        for count in counts:
            for config in measured:
                runs.append(await run_one(config, count))
    finally:
        shutil.rmtree(NODES_DIR, ignore_errors=True)
    body = Reminder(order_id=str(uuid.uuid4())).model_dump_json()
    return {
        "benchmark": "memory",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rabbitmq_version": runs[0]["rabbitmq_version"] if runs else "unknown",
        "host": {
            "cpus": os.cpu_count(),
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "python": platform.python_version(),
        },
        "what": "broker memory and disk per pending command at each count, per WAL setting",
        "delay": f"{DELAY} (ladder level {LEVEL}: every command waits in one queue)",
        "body_bytes": len(body),
        "send_many_chunk": CHUNK,
        "configs": {
            config.label: {
                "wal_max_size_bytes": config.wal_max_size_bytes,
                "rabbitmq_conf_lines": list(config.conf_lines),
                "shipped": config.shipped,
            }
            for config in measured
        },
        "summary": [summary_row(run) for run in runs],
        "runs": runs,
        "duration_s": round(time.perf_counter() - started),
        "note": NOTE,
    }


NOTE = (
    "Each run on a fresh node of the benchmark's own (rabbit/node.sh, the project's "
    "advanced.config, the configuration's rabbitmq.conf lines). per_command_bytes = "
    "(phase - baseline) / pending, baseline = ladder and command queue declared and empty. "
    "memory_rss is the node's resident set size (the OS figure, and what the memory alarm "
    "compares to the watermark under the default 'rss' strategy); memory_erlang_total is "
    "erlang:memory(total), what the VM has in use (allocator carriers it keeps are not "
    "counted); quorum_ets is the Raft mem tables (log entries still in the WAL). "
    "disk_node_data is the node's mnesia directory as du counts it; wal_number is the "
    "current WAL file's number (1 + roll-overs so far). Phases: published = "
    "right after the last confirm; settled = at least 30 s later, once RSS changed by "
    "under 2 MiB in 5 s; deleted = 10 s after the queues and exchanges were deleted; "
    "collected = after erlang:garbage_collect() of every process. publish_per_s = "
    "pending / time inside send_many calls of 10,000 commands (client and broker share "
    "2 cores with whatever else runs: compare rates of neighbouring runs only); "
    "broker_cpu_us_per_cmd = CPU time of the node's VM (user + system, /proc) from the "
    "first publish to the end of the publish or of the settle (segment flushes included), "
    "per command: the steadier figure on a shared machine."
)


def parse_counts(text: str) -> tuple[int, ...]:
    """``100000,1000000`` (underscores allowed) as counts."""
    return tuple(int(part) for part in text.replace("_", "").split(",") if part.strip())


def arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: counts, WAL sizes to compare with stock, output file."""
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument(
        "--counts",
        type=parse_counts,
        default=parse_counts(os.environ.get(COUNTS_ENV, "")) or DEFAULT_COUNTS,
        help=f"pending commands per run, comma-separated (default: ${COUNTS_ENV} or "
        "100000,1000000)",
    )
    parser.add_argument(
        "--wal",
        type=int,
        action="append",
        help=f"a {WAL_KEY} value to measure besides stock (repeatable; default: the "
        "value in rabbit/rabbitmq.conf)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="results file")
    return parser.parse_args(argv)


def run(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m bench.memory``: run the benchmark, write the results."""
    args = arguments(argv)
    wal_values = args.wal
    if wal_values is None:
        shipped = shipped_wal_bytes()
        wal_values = [] if shipped is None else [shipped]
    results = asyncio.run(main(args.counts, wal_values))
    write_results(args.output, results)


if __name__ == "__main__":
    run()
