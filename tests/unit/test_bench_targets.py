"""The result files' verdicts against issue 6's bars: met or missed from the runs' figures, and
for a missed ceiling the parts of the job that bound it, in µs per notification."""
from bench.delivery_throughput import against_targets, component_table
from bench.peers_compare import against_target


def null_run(per_core: int, parts: dict) -> dict:
    return {"mode": "null provider, backlog", "accepted": 200_000, "steady_from": 50_000,
            "steady_per_job_cpu_second": per_core, "steady_cpu_by_component": parts,
            "steady_job_cpu_s": round(sum(parts.values()), 1)}


PARTS = {"gate (Python: parse, state, Redis, calls)": 7.5, "JIT compilers": 3.0,
         "Kafka sources": 1.5, "SQL window (batches, JSON)": 0.9, "garbage collector": 0.15}


def test_a_missed_ceiling_says_which_parts_take_the_time():
    lines = against_targets([null_run(11_000, PARTS)])
    (line,) = [x for x in lines if "per Flink core" in x]
    assert "MISSED" in line and "allows 50 µs" in line
    # 150,000 notifications after the first quarter: 7.5 s of gate is 50 µs each
    assert "the job took 87" in line and "Python 50" in line
    assert "GC) 17" in line and "JIT compilers 20" in line


def test_met_bars_say_so():
    backlog = {"mode": "backlog", "exact": True, "calls_per_s_steady": 12_000}
    lines = against_targets([backlog, null_run(21_000, PARTS)])
    assert any("**12,000 calls/s** (met, stretch 10,000 met)" in x for x in lines)
    assert any("per Flink core" in x and "(met)" in x and "Bound" not in x for x in lines)


def test_a_backlog_run_that_lost_calls_is_not_counted():
    lossy = {"mode": "backlog", "exact": False, "calls_per_s_steady": 12_000}
    assert against_targets([lossy]) == []


def test_the_parts_table_puts_runs_side_by_side():
    http = dict(null_run(7_000, {**PARTS, "gate (Python: parse, state, Redis, calls)": 12.0}),
                mode="backlog", latency_ms=10)
    lines = component_table([null_run(11_000, PARTS), http])
    assert "| part of the job | null provider | 10 ms mock |" in lines
    assert "| gate (Python: parse, state, Redis, calls) | 50 (7.5) | 80 (12.0) |" in lines


def test_peers_verdict_is_missed_unless_ahead_of_every_peer():
    rows = [{"latency_ms": 0, "peer": "quix", "steady_calls_per_cpu_s": 1.2,
             "herald_steady_calls_per_cpu_s": 12_000, "peer_steady_calls_per_cpu_s": 10_000},
            {"latency_ms": 0, "peer": "confluent", "steady_calls_per_cpu_s": 0.5,
             "herald_steady_calls_per_cpu_s": 12_000, "peer_steady_calls_per_cpu_s": 24_000}]
    lines = against_target(rows)
    assert "**MISSED**" in lines[1]
    assert "- 0 ms, confluent: Herald 83 µs, confluent 42 µs per call (ratio 0.5)." in lines
    assert "**met**" in against_target(rows[:1])[1]
