"""A local Redis Cluster of three masters from Debian's ``redis-server``, beside the stack's
single server (which stays the default): for the tests and for trying Herald on a cluster
(``HERALD_REDIS_ADDRESS=redis+cluster://127.0.0.1:17001``). Its data is scratch: a start that
finds the cluster not running wipes the nodes' directories and creates it anew.

Ports 17001-17003, their cluster buses 27001-27003 (port + 10000): apart from the stack's
(Redis 16379, mocks 18101-18104, Kafka 9092/19093, Flink 8081-8084, 9249).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable

from herald_stack.processes import Managed, StackError, port_open, wait_until

CLUSTER_PORTS = (17001, 17002, 17003)
SLOTS = 16384


class RedisClusterStack:
    def __init__(self, root: Path, host: str = "127.0.0.1",
                 ports: tuple[int, ...] = CLUSTER_PORTS):
        self.root = Path(root)
        self.host = host
        self.ports = ports
        run_dir = self.root / "run"
        self.nodes = [Managed(f"redis-cluster-{port}", run_dir) for port in ports]

    @property
    def address(self) -> str:
        """The ``redis_address`` setting that points Herald at this cluster."""
        return f"redis+cluster://{self.host}:{self.ports[0]}"

    def node(self, port: int):
        import redis
        return redis.Redis(host=self.host, port=port, socket_timeout=10)

    def ready(self) -> bool:
        """Every node up and agreeing that all slots are served."""
        if not all(n.running() and port_open(self.host, p) for n, p in zip(self.nodes, self.ports)):
            return False
        try:
            for port in self.ports:
                with self.node(port) as client:
                    info = client.cluster("info")
                    if info.get("cluster_state") != "ok" or \
                            int(info.get("cluster_slots_ok", 0)) != SLOTS:
                        return False
        except Exception:  # noqa: BLE001 (a node still starting answers errors of any kind)
            return False
        return True

    def start(self) -> None:
        if self.ready():
            return
        self.stop()
        for managed, port in zip(self.nodes, self.ports):
            data = self.root / "redis-cluster" / str(port)
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            proc = managed.start(["redis-server", "--bind", self.host, "--port", str(port),
                                  "--cluster-enabled", "yes",
                                  "--cluster-config-file", "nodes.conf",
                                  "--cluster-node-timeout", "5000", "--dir", str(data),
                                  "--appendonly", "yes", "--save", "", "--daemonize", "no"])
            wait_until(lambda p=port: port_open(self.host, p), f"redis cluster node {port}", 30,
                       proc, managed.log)
        done = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"{self.host}:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise StackError(f"redis-cli --cluster create: {done.stdout[-2000:]}{done.stderr}")
        wait_until(self.ready, "redis cluster: every node sees all slots served", 60)

    def stop(self) -> list[str]:
        return [n.name for n in self.nodes if n.stop()]

    # ------------------------------------------------------------ resharding

    def node_ids(self) -> dict[int, str]:
        out = {}
        for port in self.ports:
            with self.node(port) as client:
                out[port] = client.execute_command("CLUSTER", "MYID").decode()
        return out

    def owner(self, slot: int) -> int:
        """The port of the master serving ``slot``."""
        with self.node(self.ports[0]) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise StackError(f"slot {slot} is served by no node")

    def migrate_slot(self, slot: int, to_port: int, *, batch: int = 10,
                     midway: Callable[[], None] | None = None) -> int:
        """Move ``slot`` and its keys to the node on ``to_port`` the way ``redis-cli --cluster
        reshard`` does (SETSLOT IMPORTING/MIGRATING, MIGRATE in batches, SETSLOT NODE), with
        ``midway`` called once after the first batch moved (clients then meet ASK and
        TRYAGAIN). Returns the number of keys moved."""
        from_port = self.owner(slot)
        if from_port == to_port:
            raise ValueError(f"slot {slot} is already on {to_port}")
        ids = self.node_ids()
        src, dst = self.node(from_port), self.node(to_port)
        moved = 0
        done = False
        try:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[from_port])
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to_port])
            while True:
                keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                src.execute_command("MIGRATE", self.host, to_port, "", 0, 10_000,
                                    "REPLACE", "KEYS", *keys)
                moved += len(keys)
                if midway is not None:
                    midway()
                    midway = None
            if midway is not None:
                midway()
            for port in (to_port, from_port, *(p for p in self.ports
                                               if p not in (to_port, from_port))):
                with self.node(port) as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to_port])
            done = True
        finally:
            if not done:  # leave no slot open (redis-cli would refuse the next reshard)
                for client in (src, dst):
                    client.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
            src.close()
            dst.close()
        return moved

    def reshard(self, from_port: int, to_port: int, slots: int) -> None:
        """``redis-cli --cluster reshard``: move ``slots`` slots and their keys."""
        ids = self.node_ids()
        done = subprocess.run(
            ["redis-cli", "--cluster", "reshard", f"{self.host}:{self.ports[0]}",
             "--cluster-from", ids[from_port], "--cluster-to", ids[to_port],
             "--cluster-slots", str(slots), "--cluster-yes"],
            capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise StackError(f"redis-cli --cluster reshard: {done.stdout[-2000:]}{done.stderr}")

    def slots_of(self, port: int) -> set[int]:
        with self.node(self.ports[0]) as client:
            return {slot for start, end, master, *_ in
                    client.execute_command("CLUSTER", "SLOTS") if int(master[1]) == port
                    for slot in range(start, end + 1)}
