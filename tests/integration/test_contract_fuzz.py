"""The randomized contract test, one seeded scenario: tenants reusing ids and user ids, shuffled
`seq`, replays, expiries a few seconds out, and provider mocks made slow, failing, throttling
and down at random moments (`bench/contract_fuzz.py` draws and checks it; the bench runs it
longer with fresh seeds). Judged at the mocks' logs and on herald.status read to its end.

    HERALD_FUZZ_SEED=<seed> .venv/bin/python -m pytest tests/integration/test_contract_fuzz.py -s
replays another seed (a failure prints its own).
"""
from __future__ import annotations

import os

from bench.contract_fuzz import KINDS, check, make_scenario, run_scenario

SEED = int(os.environ.get("HERALD_FUZZ_SEED", "20261205"))
NOTIFICATIONS = 500
SPAN_S = 30.0


def test_every_promise_holds_in_a_random_scenario(test_settings, unique, tmp_path):
    scenario = make_scenario(SEED, unique[:6], NOTIFICATIONS, SPAN_S)
    data = run_scenario(scenario, test_settings, tmp_path)
    report = check(data)
    print(report.summary())
    # The scenario did what it is for: every kind of disturbance, replays, expiries.
    modes = {mode for _, mode, _, _, _ in data.switch_log}
    assert modes >= {"slow", "failing", "throttling", "down"}, modes
    assert report.info["duplicate_events"] > 0 and report.info.get("final_expired", 0) > 0
    assert report.info.get("final_delivered", 0) > NOTIFICATIONS // 3, report.info
    assert set(report.counts) == set(KINDS)
    assert report.total == 0, report.summary()
