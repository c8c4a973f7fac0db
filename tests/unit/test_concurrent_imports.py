"""A TaskManager in PyFlink's thread mode opens every operator of a job on its own thread of
one interpreter: each thread unpickles its function (importing its ``operators`` module) and
runs its ``open()`` (importing the clients it needs) at the same moment. CPython hands a thread
a half-initialised module when two threads meet in an import cycle (redis-py has several), and
the broken module stays in ``sys.modules`` for every restart after it, so a job could fail to
open forever. These tests open the operators that way, in fresh interpreters, and ask that every
thread sees whole modules."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Each thread: the module its function is unpickled from, then what its open() imports.
OPENS = [
    ("operators.control", "herald.ratelimit", "udfs.quotas", "herald.redis_conn",
     "herald.campaigns"),
    ("operators.calls", "udfs.call_stage", "udfs.requeue"),
    ("operators.gate", "udfs.call_stage", "udfs.log_ends"),
    ("operators.retries",),
    ("operators.expansion",),
    ("operators.control", "herald.redis_conn", "herald.ratelimit"),
]

PROBE = r"""
import importlib, sys, threading
opens = %r
barrier = threading.Barrier(len(opens))
errors = []
def open_operator(names):
    barrier.wait()
    try:
        for name in names:
            importlib.import_module(name)
        importlib.import_module("redis.exceptions").ConnectionError
        importlib.import_module("redis.cluster").RedisCluster
        importlib.import_module("redis.asyncio").Redis
    except BaseException as e:
        errors.append("%%s: %%r" %% (names[0], e))
threads = [threading.Thread(target=open_operator, args=(names,)) for names in opens]
for t in threads: t.start()
for t in threads: t.join()
print("\n".join(errors))
sys.exit(1 if errors else 0)
"""


def test_operators_opened_on_concurrent_threads_see_whole_modules():
    failures = []
    for attempt in range(12):
        done = subprocess.run([sys.executable, "-c", PROBE % (OPENS,)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        if done.returncode:
            failures.append(f"attempt {attempt}: {done.stdout.strip() or done.stderr[-400:]}")
    assert not failures, "\n".join(failures)
