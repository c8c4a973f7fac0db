"""What every Herald job shares: the execution environment, its configuration and the SQL tables."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from herald.settings import PROJECT_ROOT, Settings

SQL_DIR = PROJECT_ROOT / "sql"
# A plugin: PyFlink ships it in pyflink/plugins/metrics-prometheus, the Flink image in plugins/.
PROMETHEUS_REPORTER = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"


def python_env_ready() -> None:
    """Thread mode embeds the interpreter found on PATH: make it this venv's, with pemja in it."""
    bin_dir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def prometheus_on_classpath() -> None:
    """The embedded MiniCluster has no plugin manager: it finds reporters on its JVM's classpath
    only. PyFlink's gateway launcher appends HADOOP_CLASSPATH to that classpath, so the
    Prometheus plugin jar PyFlink ships goes there (before the gateway starts)."""
    import pyflink
    jars = [str(p) for p in (Path(pyflink.__file__).parent / "plugins" / "metrics-prometheus")
            .glob("flink-metrics-prometheus-*.jar")]
    present = os.environ.get("HADOOP_CLASSPATH", "")
    missing = [j for j in jars if j not in present.split(os.pathsep)]
    if missing:
        os.environ["HADOOP_CLASSPATH"] = os.pathsep.join(filter(None, [present, *missing]))


def connector_jars(settings: Settings) -> list[str]:
    jars_dir = Path(settings.flink_jars_dir)
    return sorted(f"file://{p}" for p in jars_dir.glob("*.jar")) if jars_dir.is_dir() else []


def checkpoint_dir(settings: Settings) -> Path:
    return Path(settings.flink_checkpoint_dir or Path(settings.stack_dir) / "flink" / "checkpoints")


def latest_checkpoint(settings: Settings) -> str | None:
    """The newest completed checkpoint (one with _metadata) of any earlier run, or None."""
    done = sorted(checkpoint_dir(settings).glob("*/chk-*/_metadata"), key=lambda p: p.stat().st_mtime)
    return str(done[-1].parent) if done else None


def make_environments(settings: Settings, job_name: str, *, restore_from: str | None = None,
                      parallelism: int | None = None, skip_unmapped_state: bool = False):
    """A StreamExecutionEnvironment and its StreamTableEnvironment, configured from settings.

    Embedded (MiniCluster) and cluster submissions (`flink run -py`) use the same code: options
    set here override the cluster's flink-conf for this job only.
    """
    python_env_ready()
    if settings.flink_prometheus_port:
        prometheus_on_classpath()
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    conf = Configuration()
    conf.set_string("pipeline.name", job_name)
    conf.set_string("python.execution-mode", settings.flink_python_mode)
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    jars = connector_jars(settings)
    if jars:
        conf.set_string("pipeline.jars", ";".join(jars))
    conf.set_string("execution.checkpointing.interval", f"{settings.flink_checkpoint_interval_ms} ms")
    conf.set_string("execution.checkpointing.mode", "EXACTLY_ONCE")
    conf.set_string("execution.checkpointing.externalized-checkpoint-retention",
                    "RETAIN_ON_CANCELLATION")
    conf.set_string("state.backend.type", "hashmap")
    conf.set_string("execution.checkpointing.dir", f"file://{checkpoint_dir(settings)}")
    if restore_from:
        conf.set_string("execution.state-recovery.path", restore_from)
        if skip_unmapped_state:  # Flink's --allowNonRestoredState (docs/OPERATIONS.md: when)
            conf.set_string("execution.state-recovery.ignore-unclaimed-state", "true")
    conf.set_string("execution.buffer-timeout", "5 ms")
    conf.set_string("pipeline.object-reuse", str(settings.flink_object_reuse).lower())
    if settings.flink_buffer_debloat_target_ms:
        # The windows emit one small row per lane every window; with full-size network
        # buffers hundreds of them queue in front of a gate that needs a provider round trip
        # per batch (seconds of latency at a few hundred notifications/s). Debloated buffers
        # hold ≈ this much time of data, so backpressure reaches the window at once and its
        # batches grow instead (bench/results/isolation.md).
        conf.set_string("taskmanager.network.memory.buffer-debloat.enabled", "true")
        conf.set_string("taskmanager.network.memory.buffer-debloat.target",
                        f"{settings.flink_buffer_debloat_target_ms} ms")
    conf.set_string("rest.bind-port", str(settings.flink_rest_port))
    # The embedded MiniCluster: a slot per slot sharing group (sources, critical, promotional).
    conf.set_string("taskmanager.numberOfTaskSlots", "8")
    if settings.flink_prometheus_port:  # reporters are per cluster: only the embedded one's
        conf.set_string("metrics.reporters", "prom")
        conf.set_string("metrics.reporter.prom.factory.class", PROMETHEUS_REPORTER)
        conf.set_string("metrics.reporter.prom.port", settings.flink_prometheus_port)
    conf.set_string("table.exec.source.idle-timeout", f"{settings.flink_watermark_idle_ms} ms")
    # Python bundles. Process mode: small, so a critical record never waits for a bundle to
    # fill. Thread mode runs each record through Python at once and finishing a bundle does
    # nothing, but a timer every bundle.time ms per Python operator still checks for one: at
    # 5 ms that was a third of the idle job's CPU (0.08 of 0.34 cores), so Flink's default.
    conf.set_string("python.fn-execution.bundle.size", "1000")
    conf.set_string("python.fn-execution.bundle.time",
                    "1000" if settings.flink_python_mode == "thread" else "5")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(parallelism or settings.flink_parallelism)
    env.set_max_parallelism(settings.flink_max_parallelism)
    t_env = StreamTableEnvironment.create(env)
    return env, t_env


def sql_statements(filename: str, settings: Settings, **extra: str) -> list[str]:
    """The statements of one file under sql/, with ${...} filled from settings and ``extra``."""
    text = re.sub(r"--[^\n]*", "", (SQL_DIR / filename).read_text())
    values = {f.name: str(getattr(settings, f.name)) for f in settings.__dataclass_fields__.values()}
    values.update(max_out_of_orderness_s=f"{settings.flink_max_out_of_orderness_ms / 1000:.3f}",
                  watermark_idle_ms=str(settings.flink_watermark_idle_ms),
                  startup_mode="group-offsets")
    values.update(extra)
    missing = sorted(set(re.findall(r"\$\{(\w+)\}", text)) - set(values))
    if missing:
        raise KeyError(f"sql/{filename}: no value for {', '.join(missing)}")
    text = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)
    return [s.strip() for s in text.split(";") if s.strip()]


def register_tables(t_env, filename: str, settings: Settings, **extra: str) -> None:
    for statement in sql_statements(filename, settings, **extra):
        t_env.execute_sql(statement)


def register_kafka_sources(t_env, settings: Settings,
                           sources: dict[str, tuple[str, str]]) -> None:
    """One sql/kafka_source.sql table per name → (topic, consumer group suffix)."""
    for table, (topic, group) in sources.items():
        register_tables(t_env, "kafka_source.sql", settings, table=table, topic=topic,
                        group=group)


def register_payload_sinks(t_env, settings: Settings, sinks: dict[str, str]) -> None:
    """One sql/payload_sink.sql table per name → topic."""
    for sink, topic in sinks.items():
        register_tables(t_env, "payload_sink.sql", settings, sink=sink, topic=topic)


def run_job(job_name: str, build_pipeline, settings: Settings, argv: list[str] | None = None,
            description: str = "") -> None:
    """A job's main(): `--parallelism N`, `--restore PATH|latest`, build, execute."""
    import argparse
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--parallelism", type=int, default=None)
    parser.add_argument("--restore", metavar="PATH", default=None,
                        help="a checkpoint or savepoint to start from ('latest': the newest"
                             " retained checkpoint of an earlier run of this job)")
    parser.add_argument("--allow-non-restored-state", action="store_true",
                        help="start even if some of the snapshot's state has no operator in this"
                             " version (Flink's --allowNonRestoredState; docs/OPERATIONS.md)")
    args, _ = parser.parse_known_args(argv)
    restore = latest_checkpoint(settings) if args.restore == "latest" else args.restore
    if restore:
        print(f"{job_name}: restoring from {restore}", flush=True)
    env, t_env = make_environments(settings, job_name, restore_from=restore,
                                   parallelism=args.parallelism,
                                   skip_unmapped_state=args.allow_non_restored_state)
    build_pipeline(env, t_env, settings)
    env.execute(job_name)
