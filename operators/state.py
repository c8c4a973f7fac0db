"""State settings shared by Herald's operators."""
from __future__ import annotations

from pyflink.common import Time
from pyflink.datastream.state import StateTtlConfig


def ttl_config(ms: int) -> StateTtlConfig:
    """Expire state ``ms`` after its last write.

    Cleanup strategies are named explicitly: PyFlink's default one builds a java Duration
    through a py4j gateway that a TaskManager's embedded Python does not have. No incremental
    cleanup: Herald's map states are keyed by lane (a group of partitions), so it would copy a
    lane's whole map on every access; `sweep` applies the TTL instead.
    """
    return (StateTtlConfig.new_builder(Time.milliseconds(ms))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .cleanup_full_snapshot()
            .disable_cleanup_in_background()
            .build())


def sweep(map_state) -> set:
    """Walk a TTL'd MapState of the current key and return its live keys: Flink's TTL iterator
    removes every expired entry it meets (TtlMapState's EntriesIterator)."""
    return set(map_state.keys())
