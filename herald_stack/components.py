"""Each component of the local stack: how to install it, start it, check it and stop it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from herald.settings import PROJECT_ROOT, Settings
from herald_stack.processes import Managed, StackError, port_open, wait_until

HERE = Path(__file__).resolve().parent
# Every topic's record times are its append times: the gate's seq holds run on the log's clock
# (docs/CONTRACT.md), which a producer's own times do not keep in log order.
TOPIC_CONFIGS = {"message.timestamp.type": "LogAppendTime"}
PYFLINK_HOME = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" \
    / "site-packages" / "pyflink"


def _run(argv: list[str], what: str, **kw) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise StackError(f"{what} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


class Stack:
    """The whole local stack, rooted at ``settings.stack_dir``."""

    def __init__(self, settings: Settings, *, cluster: str = "flink",
                 cluster_rpc_port: int | None = None):
        """``cluster``: the name of its standalone Flink cluster's processes; another name
        (with ``settings.flink_rest_port`` and ``cluster_rpc_port`` of its own) runs a second
        cluster beside the default one on the same Kafka, Redis and jars."""
        self.s = settings
        self.root = Path(settings.stack_dir)
        self.run_dir = self.root / "run"
        self.kafka = Managed("kafka", self.run_dir)
        self.redis = Managed("redis", self.run_dir)
        self.mocks = Managed("mocks", self.run_dir)
        self.cluster = cluster
        self.cluster_rpc_port = cluster_rpc_port
        self.jobmanager = Managed(f"{cluster}-jobmanager", self.run_dir)
        self.taskmanager = Managed(f"{cluster}-taskmanager", self.run_dir)
        self.taskmanagers = [self.taskmanager]  # more when started with taskmanagers > 1

    # ------------------------------------------------------------------ install
    def install(self) -> None:
        """Fetch the Java parts from Maven Central and Debian's redis-server, if missing."""
        if not (self.root / "kafka-libs").is_dir() or not any((self.root / "flink-jars").glob("*.jar")):
            if shutil.which("mvn") is None:
                raise StackError("Maven (mvn) is needed to fetch Kafka and the Flink connector")
            for profile in ("kafka", "connector"):
                _run(["mvn", "-q", "-B", "-f", str(HERE / "pom.xml"), f"-P{profile}",
                      f"-Dout.dir={self.root}", "package"], f"mvn -P{profile}")
        if shutil.which("redis-server") is None:
            _run(["apt-get", "update", "-qq"], "apt-get update")
            _run(["apt-get", "install", "-y", "-qq", "redis-server"], "apt-get install redis-server",
                 env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})

    # ------------------------------------------------------------------ kafka
    def _kafka_properties(self) -> Path:
        host, port = self.s.kafka_bootstrap.rsplit(":", 1)
        cport = self.s.kafka_controller_port
        props = self.root / "kafka" / "server.properties"
        props.parent.mkdir(parents=True, exist_ok=True)
        props.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{cport}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={self.root / 'kafka' / 'data'}",
            f"num.partitions={self.s.kafka_partitions}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.hours=24",
            "",
        ]))
        return props

    def _kafka_java(self, main: str, *args: str) -> list[str]:
        return ["java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={HERE / 'log4j2.yaml'}",
                "-cp", str(self.root / "kafka-libs" / "*"), main, *args]

    def start_kafka(self) -> None:
        host, port = self.s.kafka_bootstrap.rsplit(":", 1)
        if self.kafka.running() and port_open(host, int(port)):
            self.create_topics()  # topics added since it started (e.g. the retry topics)
            return
        props = self._kafka_properties()
        if not (self.root / "kafka" / "data" / "meta.properties").exists():
            _run(self._kafka_java("kafka.tools.StorageTool", "format", "-t",
                                  uuid.uuid4().hex[:22], "-c", str(props)), "kafka storage format")
        proc = self.kafka.start(self._kafka_java("kafka.Kafka", str(props)))
        wait_until(lambda: port_open(host, int(port)), "kafka", 90, proc, self.kafka.log)
        self.create_topics()

    def create_topics(self, names: list[str] | None = None, partitions: int | None = None) -> None:
        """Create the contract's topics (or the given ones) with TOPIC_CONFIGS; existing topics
        are left alone."""
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        names = names or list(self.s.topics().values())
        admin = None
        wait_until(lambda: _admin_ready(self.s.kafka_bootstrap), "kafka admin", 60)
        admin = KafkaAdminClient(bootstrap_servers=self.s.kafka_bootstrap, client_id="herald-stack")
        try:
            existing = set(admin.list_topics())
            new = [NewTopic(n, partitions or self.s.kafka_partitions, 1,
                            topic_configs=dict(TOPIC_CONFIGS)) for n in names if n not in existing]
            if new:
                try:
                    admin.create_topics(new)
                except TopicAlreadyExistsError:
                    pass
        finally:
            admin.close()

    # ------------------------------------------------------------------ redis
    def start_redis(self) -> None:
        if self.redis.running() and port_open(self.s.redis_host, self.s.redis_port):
            return
        data = self.root / "redis"
        data.mkdir(parents=True, exist_ok=True)
        proc = self.redis.start(["redis-server", "--bind", self.s.redis_host,
                                 "--port", str(self.s.redis_port), "--dir", str(data),
                                 "--appendonly", "yes", "--appendfsync", "everysec",
                                 "--save", "", "--daemonize", "no"])
        wait_until(lambda: port_open(self.s.redis_host, self.s.redis_port), "redis", 30, proc,
                   self.redis.log)

    # ------------------------------------------------------------------ mocks
    def start_mocks(self) -> None:
        ports = [self.s.mock_fcm_port, self.s.mock_apns_port, self.s.mock_twilio_port,
                 self.s.mock_sendgrid_port]
        if self.mocks.running() and all(port_open("127.0.0.1", p) for p in ports):
            return
        logs = self.root / "mock-logs"
        logs.mkdir(parents=True, exist_ok=True)
        proc = self.mocks.start([sys.executable, "-m", "herald_mocks", "--all",
                                 "--log", str(logs / "{provider}.jsonl")], cwd=PROJECT_ROOT)
        wait_until(lambda: all(port_open("127.0.0.1", p) for p in ports), "provider mocks", 30,
                   proc, self.mocks.log)

    # ------------------------------------------------------------------ flink
    def flink_env(self) -> dict:
        env = dict(os.environ)
        env.update(FLINK_CONF_DIR=str(PROJECT_ROOT / "flink-conf"),
                   FLINK_LOG_DIR=str(self.flink_log_dir()),
                   FLINK_LIB_DIR=str(self.flink_lib_dir()),
                   PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
        env.pop("FLINK_HOME", None)
        return env

    def flink_log_dir(self) -> Path:
        return self.root / ("flink-log" if self.cluster == "flink" else f"{self.cluster}-log")

    def flink_lib_dir(self) -> Path:
        """The distribution's lib/ plus opt/flink-python, as a cluster for Python jobs needs."""
        lib = self.root / "flink-lib"
        lib.mkdir(parents=True, exist_ok=True)
        wanted = [*(PYFLINK_HOME / "lib").glob("*.jar"), *(PYFLINK_HOME / "opt").glob("flink-python-*.jar")]
        for jar in wanted:
            link = lib / jar.name
            if not link.exists():
                link.symlink_to(jar)
        return lib

    def flink_dynamic_props(self) -> list[str]:
        ck = self.root / "flink" / "checkpoints"
        sp = self.root / "flink" / "savepoints"
        return ["-D", f"execution.checkpointing.dir=file://{ck}",
                "-D", f"execution.checkpointing.savepoint-dir=file://{sp}",
                "-D", f"rest.port={self.s.flink_rest_port}",
                "-D", f"python.executable={sys.executable}",
                "-D", f"python.client.executable={sys.executable}",
                *(["-D", f"jobmanager.rpc.port={self.cluster_rpc_port}"]
                  if self.cluster_rpc_port else [])]

    def start_flink_cluster(self, taskmanagers: int = 1, slots: int | None = None) -> None:
        """A real standalone cluster from the Flink distribution that PyFlink ships:
        ``taskmanagers`` TaskManagers of ``slots`` slots each (default: flink-conf's)."""
        port = self.s.flink_rest_port
        if self.jobmanager.running() and port_open("127.0.0.1", port) and all(
                self.taskmanager_at(i).running() for i in range(taskmanagers)):
            return
        self.flink_log_dir().mkdir(parents=True, exist_ok=True)
        env = self.flink_env()
        bin_dir = PYFLINK_HOME / "bin"
        jm = self.jobmanager.start(["bash", str(bin_dir / "jobmanager.sh"), "start-foreground",
                                    *self.flink_dynamic_props()], env=env)
        wait_until(lambda: port_open("127.0.0.1", port), "flink jobmanager", 90, jm,
                   self.jobmanager.log)
        for index in range(taskmanagers):
            self.start_taskmanager(index, slots)

    def stop_flink_cluster(self) -> None:
        for managed in (*self.taskmanagers, self.jobmanager):
            managed.stop()

    def taskmanager_at(self, index: int) -> Managed:
        """The ``index``-th TaskManager's process (0: ``self.taskmanager``)."""
        while len(self.taskmanagers) <= index:
            name = f"{self.cluster}-taskmanager-{len(self.taskmanagers) + 1}"
            self.taskmanagers.append(Managed(name, self.run_dir))
        return self.taskmanagers[index]

    def start_taskmanager(self, index: int = 0, slots: int | None = None) -> None:
        """Start the ``index``-th TaskManager (again, after a kill) and wait until the
        JobManager lists as many as that."""
        port = self.s.flink_rest_port
        managed = self.taskmanager_at(index)
        extra = ["-D", f"taskmanager.numberOfTaskSlots={slots}"] if slots else []
        tm = managed.start(["bash", str(PYFLINK_HOME / "bin" / "taskmanager.sh"),
                            "start-foreground", *self.flink_dynamic_props(), *extra],
                           env=self.flink_env())
        wait_until(lambda: _flink_taskmanagers(port) > index, "flink taskmanager", 90, tm,
                   managed.log)

    def flink_cli(self) -> list[str]:
        return ["bash", str(PYFLINK_HOME / "bin" / "flink")]

    def submit(self, job_file: str, env: dict[str, str] | None = None,
               savepoint: str | None = None) -> str:
        """`flink run -d [-s SAVEPOINT] -py JOB` against the standalone cluster; the job id."""
        restore = ["-s", savepoint] if savepoint else []
        done = subprocess.run([*self.flink_cli(), "run", "-m", self.flink_address(), "-d",
                               *restore, "-py", job_file],
                              env={**self.flink_env(), **(env or {})}, cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=300)
        found = re.search(r"JobID ([0-9a-f]{32})", done.stdout)
        if done.returncode != 0 or not found:
            raise StackError(f"flink run -py {job_file} failed ({done.returncode}):\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return found.group(1)

    def stop_with_savepoint(self, job_id: str, directory: str) -> str:
        """`flink stop --savepointPath DIR JOB`: a savepoint, then the job ends; its path."""
        done = subprocess.run([*self.flink_cli(), "stop", "-m", self.flink_address(),
                               "--savepointPath", directory, job_id],
                              env=self.flink_env(), capture_output=True, text=True, timeout=300)
        found = re.search(r"Savepoint completed\. Path: (\S+)", done.stdout)
        if done.returncode != 0 or not found:
            raise StackError(f"flink stop {job_id} failed ({done.returncode}):\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return found.group(1)

    def cancel(self, job_id: str) -> None:
        _run([*self.flink_cli(), "cancel", "-m", self.flink_address(), job_id],
             f"flink cancel {job_id}", env=self.flink_env())

    def flink_address(self) -> str:
        return f"127.0.0.1:{self.s.flink_rest_port}"

    # ------------------------------------------------------------------ all
    def up(self, flink_cluster: bool = False, mocks: bool = True) -> None:
        self.install()
        self.start_redis()
        self.start_kafka()
        if mocks:
            self.start_mocks()
        if flink_cluster:
            self.start_flink_cluster()

    def down(self) -> list[str]:
        stopped = []
        jobs = [Managed(name, self.run_dir)  # what `make demo` starts beside the stack
                for name in ("delivery-job", "expansion-job", "api", "audit-consumer",
                             "webhook-dispatcher")]
        for m in (*jobs, *self.taskmanagers, self.jobmanager, self.mocks, self.kafka, self.redis):
            if m.stop():
                stopped.append(m.name)
        from herald_stack.redis_cluster import RedisClusterStack  # the tests' Redis Cluster
        return stopped + RedisClusterStack(self.root).stop()

    def status(self) -> dict[str, bool]:
        return {m.name: m.running() for m in (self.kafka, self.redis, self.mocks,
                                               self.jobmanager, self.taskmanager)}


def _admin_ready(bootstrap: str) -> bool:
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError
    try:
        KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000).close()
        return True
    except (KafkaError, OSError, ValueError):
        return False


def _flink_taskmanagers(port: int) -> int:
    """How many TaskManagers the JobManager lists (0 when it does not answer)."""
    import json
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/taskmanagers", timeout=2) as r:
            return len(json.load(r).get("taskmanagers") or [])
    except OSError:
        return 0
