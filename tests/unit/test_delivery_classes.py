"""Which classes a delivery job runs, and what a one-class job changes in its settings."""
import pytest

from herald.settings import Settings
from jobs.delivery import job_classes, job_settings


def test_both_classes_by_default_in_one_job_with_the_shared_settings():
    s = Settings()
    assert job_classes(s) == ("critical", "promotional")
    assert job_settings(s) == ("herald-delivery", s)


def test_order_and_spaces_do_not_matter():
    assert job_classes(Settings(delivery_classes=" promotional , critical")) == \
        ("critical", "promotional")


def test_a_promotional_job_has_its_own_checkpoints_and_dashboard_port(tmp_path):
    s = Settings(delivery_classes="promotional", flink_checkpoint_dir=str(tmp_path),
                 promo_job_rest_port=9999)
    name, own = job_settings(s)
    assert name == "herald-delivery-promotional"
    assert own.flink_checkpoint_dir == str(tmp_path / name)
    assert own.flink_rest_port == 9999


def test_a_critical_job_keeps_the_dashboard_port(tmp_path):
    s = Settings(delivery_classes="critical", flink_checkpoint_dir=str(tmp_path))
    name, own = job_settings(s)
    assert (name, own.flink_rest_port) == ("herald-delivery-critical", s.flink_rest_port)
    assert own.flink_checkpoint_dir == str(tmp_path / name)


@pytest.mark.parametrize("value", ["", "urgent", "critical,bulk"])
def test_unknown_classes_are_refused(value):
    with pytest.raises(ValueError, match="delivery_classes must name critical and/or promotional"):
        job_classes(Settings(delivery_classes=value))
