"""The gate's log clock (operators/gate.py): a seq hold runs on the log's time; a wait for input
counts only while the log has nothing newer than what was read (udfs/log_ends.py), so a broker
down or sources not yet reading after a restore never give up a hold early."""
from herald.gate import Gate
from operators.gate import GateFunction


class _Log:
    """A stand-in for LogEnds: which partitions hold records newer than read."""

    def __init__(self):
        self.newer: set[int] = set()

    def newer_than(self, partition: int, ts: int) -> bool:
        return partition in self.newer


def _gate(log: _Log) -> GateFunction:
    fn = GateFunction.__new__(GateFunction)
    fn.gate, fn.clocks, fn.log_ends = Gate(gap_timeout_ms=2_000), {}, log
    fn.idle_ms, fn.idle_since = 0, None
    return fn


def test_a_wait_counts_only_while_the_log_has_nothing_more():
    log = _Log()
    fn = _gate(log)
    assert fn._read_clock({"p": 0, "t": 50_000}, 100) == 50_000
    fn.idle_since = 1_000                       # waiting for input from here
    assert fn._log_clock(0, 1_500) == 50_500    # caught up: the wait is the log's time
    log.newer.add(0)                            # the log moved on without us (broker down)
    assert fn._log_clock(0, 3_000) == 50_500    # that wait does not count
    assert fn._log_clock(0, 9_000) == 50_500
    log.newer.clear()                           # read all again
    assert fn._log_clock(0, 9_400) == 50_900    # only the wait since the last look counts


def test_reading_moves_the_clock_and_work_never_counts():
    fn = _gate(_Log())
    fn._read_clock({"p": 1, "t": 10_000}, 0)
    fn._at_work(0)
    assert fn._log_clock(1, 5_000) == 10_000    # at work, not waiting: no time passes
    fn._read_clock({"p": 1, "t": 12_000}, 5_000)
    assert fn._log_clock(1, 5_000) == 12_000


def test_after_a_restore_a_partition_not_read_waits_while_the_log_holds_more():
    log = _Log()
    log.newer.add(2)
    fn = _gate(log)
    fn.idle_since = 0
    hold_ms = 70_000                            # the held record reached the log at 68,000
    assert fn._log_clock(2, 100, hold_ms) == 68_000
    assert fn._log_clock(2, 60_000, hold_ms) == 68_000  # sources not reading yet: it waits
    log.newer.clear()
    assert fn._log_clock(2, 62_000, hold_ms) == 70_000  # nothing more to read: the wait counts
