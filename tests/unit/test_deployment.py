"""docker-compose.yml cannot be run here (no Docker engine): check what can be checked of it."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
FLINK_CONF = yaml.safe_load((ROOT / "flink-conf" / "config.yaml").read_text())
SERVICES = COMPOSE["services"]


def pinned(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found, pattern
    return found.group(1)


def test_every_part_of_herald_is_a_service():
    assert {"kafka", "topics", "redis", "jobmanager", "taskmanager", "delivery-job", "api",
            "audit", "webhooks"} <= set(SERVICES)


def test_images_match_the_versions_the_project_is_built_and_tested_with():
    requirements = (ROOT / "requirements.txt").read_text()
    pom = (ROOT / "herald_stack" / "pom.xml").read_text()
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    flink = pinned(r"apache-flink==([\d.]+)", requirements)
    assert pinned(r"FROM flink:([\d.]+)-", dockerfile) == flink
    assert f"flink-python-{flink}.jar" in dockerfile
    connector = pinned(r"<flink.kafka.connector.version>([^<]+)<", pom)
    assert pinned(r"KAFKA_CONNECTOR_VERSION=(\S+)", dockerfile) == connector
    assert connector.endswith("-" + ".".join(flink.split(".")[:2]))
    kafka = pinned(r"<kafka.version>([^<]+)<", pom)
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{kafka}"
    assert SERVICES["jobmanager"]["build"]["dockerfile"] == "deploy/Dockerfile"


def test_the_job_is_submitted_with_flink_run_py_to_the_jobmanager():
    command = SERVICES["delivery-job"]["command"]
    assert command[:2] == ["flink", "run"] and "-py" in command
    job_file = command[command.index("-py") + 1]
    assert job_file.startswith("/opt/herald/") and (ROOT / job_file.removeprefix("/opt/herald/")).is_file()
    assert f"jobmanager:{FLINK_CONF['rest']['port']}" in command


def test_ports_agree_with_flink_conf_and_the_kafka_listeners():
    rest = FLINK_CONF["rest"]["port"]
    assert f"{rest}:{rest}" in SERVICES["jobmanager"]["ports"]
    prom = FLINK_CONF["metrics"]["reporter"]["prom"]
    assert prom["factory.class"].endswith("PrometheusReporterFactory")
    assert "9249:9249" in SERVICES["jobmanager"]["ports"]
    env = SERVICES["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert SERVICES["api"]["environment"]["HERALD_KAFKA_BOOTSTRAP"] == env["KAFKA_ADVERTISED_LISTENERS"].split("//")[1]


def test_every_contract_topic_is_created():
    from herald.settings import Settings
    script = SERVICES["topics"]["command"][0]
    for topic in Settings().topics().values():
        assert topic in script


def test_flink_conf_keeps_checkpoints_and_thread_mode():
    assert FLINK_CONF["python"]["execution-mode"] == "thread"
    assert FLINK_CONF["state"]["backend"]["type"] == "hashmap"
    assert FLINK_CONF["execution"]["checkpointing"]["mode"] == "EXACTLY_ONCE"
    # a job keeps trying until a lost TaskManager (or Redis, or a broker) is back
    restart = FLINK_CONF["restart-strategy"]
    assert restart["type"] == "exponential-delay"
    assert "attempts-before-reset-backoff" not in restart["exponential-delay"]  # unbounded
    properties = SERVICES["jobmanager"]["environment"]["FLINK_PROPERTIES"]
    assert "jobmanager.rpc.address: jobmanager" in properties
    assert "python.executable: /opt/herald-venv/bin/python" in properties


def test_the_images_commands_exist_in_the_project():
    for service in ("api", "audit", "webhooks", "mocks"):
        module = SERVICES[service]["command"][2]
        path = ROOT / Path(*module.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), module
