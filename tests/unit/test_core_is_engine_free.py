"""The ``herald`` package is the engine-free core: importing all of it pulls in no stream
engine, no Kafka client and no HTTP server, so its rules stay unit-testable without a stack."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = ("pyflink", "kafka", "confluent_kafka", "aiokafka", "aiohttp.web", "http.server")

# Runs in a fresh interpreter: this test process may already have imported anything.
PROBE = r"""
import importlib, json, pkgutil, sys
import herald
names = ["herald"]
for info in pkgutil.walk_packages(herald.__path__, prefix="herald."):
    names.append(info.name)
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
forbidden = %r
leaked = sorted(m for m in sys.modules
                if any(m == f or m.startswith(f + ".") for f in forbidden))
print(json.dumps({"modules": names, "failed": failed, "leaked": leaked}))
""" % (FORBIDDEN,)


def probe() -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_core_module_imports_without_an_engine_kafka_or_http_server():
    result = probe()
    assert result["failed"] == {}
    assert result["leaked"] == [], (
        f"the core imported {result['leaked']}; keep engine, Kafka and HTTP-server code in "
        f"jobs/, operators/, udfs/ or the API package")
    # the walk really covered the core (subpackages such as herald.providers included if any)
    expected = {"herald.models", "herald.states", "herald.errors", "herald.gate",
                "herald.retry", "herald.ratelimit", "herald.breaker"}
    assert expected <= set(result["modules"])
    on_disk = {p.stem for p in (ROOT / "herald").glob("*.py") if p.stem != "__init__"}
    assert {f"herald.{m}" for m in on_disk} <= set(result["modules"])
