"""Settings come from env vars and an optional TOML file, typed, with secrets hidden."""
from __future__ import annotations

import pytest

from herald.settings import load_settings, settings_env


def test_env_vars_override_defaults_with_types():
    s = load_settings({"HERALD_KAFKA_PARTITIONS": "8", "HERALD_FCM_URL": "https://fcm.googleapis.com"})
    assert s.kafka_partitions == 8 and s.fcm_url == "https://fcm.googleapis.com"


def test_config_file_is_read_and_env_wins(tmp_path):
    cfg = tmp_path / "herald.toml"
    cfg.write_text('kafka_partitions = 12\nredis_port = 7000\n')
    s = load_settings({"HERALD_CONFIG": str(cfg), "HERALD_REDIS_PORT": "7001"})
    assert (s.kafka_partitions, s.redis_port) == (12, 7001)


def test_unknown_and_mistyped_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown settings: kafka_partition"):
        load_settings({}, kafka_partition=3)
    with pytest.raises(ValueError, match="setting redis_port: cannot read 'abc' as int"):
        load_settings({"HERALD_REDIS_PORT": "abc"})


def test_secrets_are_masked_when_printed():
    s = load_settings({}, sendgrid_api_key="SG.very-secret", twilio_auth_token="tw-secret")
    assert "very-secret" not in repr(s) and "tw-secret" not in repr(s)
    assert "sendgrid_api_key=***" in repr(s)


def test_settings_env_rebuilds_the_same_settings():
    s = load_settings({}, topic_critical="t1.critical", kafka_partitions=2, fcm_access_token="x")
    assert load_settings(settings_env(s)) == s
