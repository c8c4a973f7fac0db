"""Session fixtures: one real stack (Kafka, Redis, provider mocks) for the whole test run."""
from __future__ import annotations

import os
import uuid

import pytest

from herald.settings import Settings, load_settings


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def stack(base_settings):
    """Start what is not running yet; stop at the end only what this session started."""
    from herald_stack.components import Stack
    st = Stack(base_settings)
    before = st.status()
    st.up()
    yield st
    if os.environ.get("HERALD_KEEP_STACK") != "1":
        for managed in (st.mocks, st.kafka, st.redis):
            if not before.get(managed.name):
                managed.stop()


@pytest.fixture(scope="session")
def cluster(stack):
    """A standalone JobManager and TaskManager from PyFlink's distribution, started once for the
    tests that submit with `flink run -py`; stopped at the end if this session started them."""
    started = not stack.jobmanager.running()
    stack.start_flink_cluster()
    yield stack
    if started:
        stack.taskmanager.stop()
        stack.jobmanager.stop()


@pytest.fixture
def fcm(request):
    """A mock FCM of the test's own; a parametrized ``request.param`` holds its switches."""
    from tests.helpers_mocks import MockProcess
    mock = MockProcess("--provider", "fcm", *getattr(request, "param", ()))
    yield mock
    mock.stop()


@pytest.fixture(scope="module")
def fcm_module():
    """A mock FCM shared by one test module (tests keep apart by ids)."""
    from tests.helpers_mocks import MockProcess
    mock = MockProcess("--provider", "fcm")
    yield mock
    mock.stop()


@pytest.fixture(scope="module")
def redis_client(stack, base_settings):
    """A blocking Redis client on the session stack (bytes answers)."""
    import redis
    client = redis.Redis(host=base_settings.redis_host, port=base_settings.redis_port)
    yield client
    client.close()


@pytest.fixture
def tenant(unique) -> str:
    """A tenant of this test's own: its users, templates and quotas in Redis are apart."""
    return f"t{unique}"


@pytest.fixture
def unique() -> str:
    """A short id for this test: prefixes its topics, ids and consumer groups."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def test_settings(stack, base_settings, unique) -> Settings:
    """Settings whose topics and consumer group belong to this test alone (created here)."""
    topics = {f"topic_{role}": f"t{unique}.{name}" for role, name in base_settings.topics().items()}
    settings = base_settings.replace(consumer_group=f"herald-{unique}", flink_rest_port=0, **topics)
    stack.create_topics(list(settings.topics().values()))
    return settings


@pytest.fixture
def make_stage(stack, base_settings):
    """BatchCalls (the provider-call stage) on settings of this test's own (its own limiter
    namespace in Redis); every stage made is closed after the test."""
    from udfs.call_stage import BatchCalls
    stages = []

    def make(priority: str = "critical", **changes) -> BatchCalls:
        settings = base_settings.replace(**{"ratelimit_namespace": f"rl{uuid.uuid4().hex[:8]}",
                                            **changes})
        stage = BatchCalls(settings, priority)
        stages.append(stage)
        return stage
    yield make
    for stage in stages:
        stage.close()
