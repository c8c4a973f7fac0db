"""State settings shared by Herald's operators."""
from __future__ import annotations

from pyflink.common import Time
from pyflink.datastream.state import StateTtlConfig


def ttl_config(ms: int) -> StateTtlConfig:
    """Expire state ``ms`` after its last write.

    Cleanup strategies are named explicitly: PyFlink's default one builds a java Duration
    through a py4j gateway that a TaskManager's embedded Python does not have.
    """
    return (StateTtlConfig.new_builder(Time.milliseconds(ms))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .cleanup_incrementally(10, False)
            .cleanup_full_snapshot()
            .disable_cleanup_in_background()
            .build())
