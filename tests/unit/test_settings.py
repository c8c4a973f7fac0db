"""Settings come from env vars and an optional TOML file, typed, with secrets hidden."""
from __future__ import annotations

import dataclasses
import pickle

import cloudpickle
import pytest

from herald.settings import Settings, SettingsError, load_settings, settings_env


def test_env_vars_override_defaults_with_types():
    s = load_settings({"HERALD_KAFKA_PARTITIONS": "8", "HERALD_FCM_URL": "https://fcm.googleapis.com",
                       "HERALD_REDIS_CLUSTER": "true", "HERALD_PROVIDER_TIMEOUT_S": "2.5"})
    assert (s.kafka_partitions, s.fcm_url, s.redis_cluster, s.provider_timeout_s) == \
        (8, "https://fcm.googleapis.com", True, 2.5)


def test_overrides_beat_env_which_beats_the_file_which_beats_defaults(tmp_path):
    cfg = tmp_path / "herald.toml"
    cfg.write_text('kafka_partitions = 12\nredis_port = 7000\napi_port = 9000\n'
                   'flink_prometheus_port = 9249\n')
    env = {"HERALD_CONFIG": str(cfg), "HERALD_REDIS_PORT": "7001", "HERALD_API_PORT": "9001"}
    s = load_settings(env, api_port=9002)
    assert (s.kafka_partitions, s.redis_port, s.api_port) == (12, 7001, 9002)
    assert s.flink_prometheus_port == "9249"  # a number in the file, for a string setting
    assert s.gap_timeout_ms == Settings().gap_timeout_ms


def test_a_named_config_file_must_exist(tmp_path):
    with pytest.raises(SettingsError, match="HERALD_CONFIG=.*no such file"):
        load_settings({"HERALD_CONFIG": str(tmp_path / "missing.toml")})


def test_settings_alone_read_no_environment(monkeypatch):
    monkeypatch.setenv("HERALD_KAFKA_PARTITIONS", "9")
    assert Settings().kafka_partitions == 4
    assert load_settings().kafka_partitions == 9


@pytest.mark.parametrize("env, named", [
    ({"HERALD_KAFKA_PARTITIONS": "abc"}, "HERALD_KAFKA_PARTITIONS='abc'"),
    ({"HERALD_REDIS_PORT": ""}, "HERALD_REDIS_PORT=''"),
    ({"HERALD_REDIS_CLUSTER": "maybe"}, "HERALD_REDIS_CLUSTER='maybe'"),
    ({"HERALD_WEBHOOK_ALLOW_PRIVATE": "2"}, "HERALD_WEBHOOK_ALLOW_PRIVATE='2'"),
    ({"HERALD_PROVIDER_TRANSPORT": "carrier-pigeon"}, "HERALD_PROVIDER_TRANSPORT='carrier-pigeon'"),
    ({"HERALD_FLINK_PYTHON_MODE": "threads"}, "HERALD_FLINK_PYTHON_MODE='threads'"),
    ({"HERALD_EXPANSION_DELIVERY_GUARANTEE": "once"}, "HERALD_EXPANSION_DELIVERY_GUARANTEE='once'"),
    ({"HERALD_DELIVERY_CLASSES": "critical,bulk"}, "HERALD_DELIVERY_CLASSES='critical,bulk'"),
])
def test_a_bad_value_is_an_error_naming_the_variable(env, named):
    with pytest.raises(SettingsError, match=f"^invalid settings: {named}: "):
        load_settings(env)


def test_a_bad_value_in_the_file_or_an_argument_is_named_so(tmp_path):
    cfg = tmp_path / "herald.toml"
    cfg.write_text('provider_transport = "smoke-signals"\n')
    with pytest.raises(SettingsError, match=f"provider_transport in {cfg}='smoke-signals': "
                                            "Input should be 'http' or 'null'"):
        load_settings({"HERALD_CONFIG": str(cfg)})
    with pytest.raises(SettingsError, match="argument retry_max_attempts='x'"):
        load_settings({}, retry_max_attempts="x")


def test_closed_sets_are_checked_in_code_too():
    with pytest.raises(ValueError, match="'thread' or 'process'"):
        Settings(flink_python_mode="embedded")
    with pytest.raises(ValueError, match="'exactly-once' or 'at-least-once'"):
        Settings().replace(expansion_delivery_guarantee="best-effort")


def test_unknown_settings_are_refused(tmp_path):
    with pytest.raises(SettingsError, match="unknown setting argument kafka_partition"):
        load_settings({}, kafka_partition=3)
    cfg = tmp_path / "herald.toml"
    cfg.write_text("redis_prot = 1\n")
    with pytest.raises(SettingsError, match=f"unknown setting redis_prot in {cfg}"):
        load_settings({"HERALD_CONFIG": str(cfg)})
    assert load_settings({"HERALD_NO_SUCH_THING": "1"}) == Settings()  # as before: not ours


def test_secrets_are_masked_in_repr_and_str_and_in_errors():
    s = load_settings({"HERALD_API_KEYS": "k1:acme"}, sendgrid_api_key="SG.very-secret",
                      twilio_auth_token="tw-secret")
    for shown in (repr(s), str(s)):
        assert "very-secret" not in shown and "tw-secret" not in shown and "k1:acme" not in shown
        assert "sendgrid_api_key=SecretStr('**********')" in shown
    assert s.sendgrid_api_key.get_secret_value() == "SG.very-secret"
    assert s.api_keys.get_secret_value() == "k1:acme"
    with pytest.raises(SettingsError) as caught:
        load_settings({}, api_keys=["k1:acme"])
    assert "k1:acme" not in str(caught.value) and "argument api_keys=***" in str(caught.value)


def test_settings_env_rebuilds_the_same_settings_secrets_included():
    s = load_settings({}, topic_critical="t1.critical", kafka_partitions=2, fcm_access_token="x",
                      redis_cluster=True, provider_transport="null", retry_multiplier=1.5)
    env = settings_env(s)
    assert env["HERALD_FCM_ACCESS_TOKEN"] == "x" and env["HERALD_KAFKA_PARTITIONS"] == "2"
    assert load_settings(env) == s


def test_settings_are_frozen_and_pickle_round_trip():
    s = Settings(api_keys="k1:acme", gap_timeout_ms=1234)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.gap_timeout_ms = 1  # type: ignore[misc]
    for dumps in (pickle.dumps, cloudpickle.dumps):  # cloudpickle: how Flink ships operators
        back = pickle.loads(dumps(s))
        assert back == s and back.gap_timeout_ms == 1234
        assert back.api_keys.get_secret_value() == "k1:acme"


def test_replace_checks_what_it_changes_and_keeps_the_rest():
    s = Settings(kafka_partitions=3)
    t = s.replace(gap_timeout_ms="500", fcm_access_token="tok")
    assert (t.gap_timeout_ms, t.kafka_partitions, s.gap_timeout_ms) == (500, 3, 2_000)
    assert t.fcm_access_token.get_secret_value() == "tok"
    with pytest.raises(ValueError, match="valid integer"):
        s.replace(gap_timeout_ms="soon")
    with pytest.raises(ValueError, match="no_such_setting"):
        s.replace(no_such_setting=1)


def test_properties_and_topics():
    s = Settings(stack_dir="/srv/herald", redis_host="r", redis_port=1)
    assert str(s.data_dir) == "/srv/herald/data" and str(s.segments_path) == "/srv/herald/data/segments"
    assert s.redis_url == "redis://r:1/0"
    assert s.topics()["critical"] == "herald.critical" and len(s.topics()) == 9
