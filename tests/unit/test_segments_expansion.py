"""The expansion's decisions (herald.campaigns.Expander) and the recipient records, without a
stack: cursor, batches, send_at, expiry, cancel, progress events, replays, restore."""
from __future__ import annotations

import pickle

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.campaigns import (DONE, EXPIRED, AudienceSource, CancelCampaign, Expander,
                              campaign_from_dict, escape_json_text, recipient_id,
                              recipient_json, recipient_json_head, recipient_json_tail)
from herald.errors import ValidationError
from herald.models import parse_notification

NOW = 1_764_000_000_000


def campaign(**changes):
    base = {"campaign_id": "cmp-1", "tenant_id": "acme", "audience": {"segment": "buyers"},
            "channels": ["push", "email"], "content": {"title": "Sale", "body": "20% off",
                                                       "data": {"k": "v"}},
            "created_at": NOW - 1_000, "expires_at": NOW + 3_600_000}
    base.update(changes)
    return campaign_from_dict({k: v for k, v in base.items() if v is not None})


def audience(total: int, longest: int = 10):
    return lambda c: AudienceSource("/segments/buyers.parquet", total, longest)


def cancel(at: int = NOW, tenant: str = "acme", cid: str = "cmp-1") -> CancelCampaign:
    return CancelCampaign(campaign_id=cid, tenant_id=tenant, at=at)


def run(expander, state, step, total, clock=NOW, *, until=None):
    """Fire the expansion timers the steps ask for, in order; return batches, events, state."""
    batches, events = [], list(step.events)
    timers = sorted(t for t in step.timers if t != state.purge_at)
    while timers and state is not None:
        t = timers.pop(0)
        if until is not None and until(state):
            break
        state, step = expander.on_timer(state, t, max(clock, t), audience(total))
        if step.batch:
            batches.append(step.batch)
        events.extend(step.events)
        timers.extend(x for x in step.timers if x != state.purge_at)
    return batches, events, state


def details(events) -> list[tuple[str, str]]:
    return [(e["state"], e["detail"]) for e in events]


# ---------------------------------------------------------------- the happy path

def test_a_campaign_expands_in_batches_to_the_end():
    ex = Expander(batch_size=400, progress_interval_ms=0)
    state, step = ex.on_campaign(None, campaign(), NOW)
    assert NOW in step.timers and step.events[0]["detail"] == "queued for expansion"
    batches, events, state = run(ex, state, step, 1_000)
    assert batches == [(0, 400), (400, 400), (800, 200)]
    assert state.phase == DONE and state.cursor == 1_000
    assert details(events)[-1] == ("accepted", "expanded 1000/1000: expansion complete")
    assert "expanding 1000 recipients of segment 'buyers'" in [d for _, d in details(events)]


@settings(max_examples=60, deadline=None)
@given(total=st.integers(0, 5_000), batch=st.integers(1, 1_500))
def test_batches_cover_every_row_once_in_order(total, batch):
    ex = Expander(batch_size=batch)
    state, step = ex.on_campaign(None, campaign(), NOW)
    batches, _, state = run(ex, state, step, total)
    rows = [r for start, count in batches for r in range(start, start + count)]
    assert rows == list(range(total)) and state.phase == DONE


def test_campaign_level_events_are_about_the_campaign_and_never_share_an_at():
    ex = Expander(batch_size=10, progress_interval_ms=0)
    state, step = ex.on_campaign(None, campaign(), NOW)
    _, events, _ = run(ex, state, step, 100)  # every tick at the same clock reading
    assert {(e["id"], e["campaign_id"], e["tenant_id"], e["priority"]) for e in events} == {
        ("cmp-1", "cmp-1", "acme", "promotional")}
    ats = [e["at"] for e in events]
    assert ats == sorted(ats) and len(set(ats)) == len(ats)
    assert "user_id" not in events[0] and events[-1]["expanded"] == events[-1]["total"] == 100


def test_progress_events_are_at_most_one_per_interval():
    ex = Expander(batch_size=10, progress_interval_ms=1_000)
    state, step = ex.on_campaign(None, campaign(), NOW)
    events = []
    clock = NOW
    state, step = ex.on_timer(state, NOW, clock, audience(1_000))
    for _ in range(60):  # 100 ms per tick: a progress event every 10 ticks (610 rows in all)
        if state.phase == DONE:
            break
        clock += 100
        state, step = ex.on_timer(state, state.next_tick_at, clock, audience(1_000))
        events += [e["detail"] for e in step.events]
    progress = [d for d in events if d.startswith("expanded") and "complete" not in d]
    assert progress == [f"expanded {n}10/1000" for n in range(1, 7)]


def test_ticks_are_paced_by_tick_ms():
    ex = Expander(batch_size=10, tick_ms=250)
    state, step = ex.on_campaign(None, campaign(), NOW)
    state, step = ex.on_timer(state, NOW, NOW + 3, audience(100))
    assert step.timers == [NOW + 253] and state.next_tick_at == NOW + 253
    state, step = ex.on_timer(state, NOW + 100, NOW + 100, audience(100))  # a stale timer
    assert step.batch is None and state.cursor == 10


# ---------------------------------------------------------------- send_at and expiry

def test_a_future_send_at_waits_for_its_timer():
    ex = Expander(batch_size=100)
    send_at = NOW + 60_000
    state, step = ex.on_campaign(None, campaign(send_at=send_at), NOW)
    assert send_at in step.timers and state.next_tick_at == send_at
    assert "waits for send_at" in step.events[0]["detail"]
    state, early = ex.on_timer(state, NOW + 1_000, NOW + 1_000, audience(50))
    assert early.batch is None and state.cursor == 0
    state, due = ex.on_timer(state, send_at, send_at, audience(50))
    assert due.batch == (0, 50) and state.phase == DONE


def test_an_expired_campaign_gets_one_expired_event_and_no_expansion():
    ex = Expander()
    c = campaign(created_at=NOW - 7_200_000, expires_at=NOW - 1)
    state, step = ex.on_campaign(None, c, NOW)
    assert [e["state"] for e in step.events] == ["expired"] and state.phase == EXPIRED
    assert step.events[0]["id"] == "cmp-1" and step.timers == [state.purge_at]
    _, replay = ex.on_campaign(state, c, NOW + 5)
    assert replay.events == [] and replay.timers == []


def test_a_campaign_expiring_mid_expansion_stops_with_one_expired_event():
    ex = Expander(batch_size=10)
    c = campaign(expires_at=NOW + 1_000)
    state, step = ex.on_campaign(None, c, NOW)
    state, step = ex.on_timer(state, NOW, NOW, audience(100))
    state, step = ex.on_timer(state, state.next_tick_at, NOW + 1_000, audience(100))
    assert step.batch is None and [e["state"] for e in step.events] == ["expired"]
    assert "after expanding 10/100" in step.events[0]["detail"]
    state, step = ex.on_timer(state, NOW + 1_001, NOW + 1_001, audience(100))
    assert step.events == [] and step.batch is None


# ---------------------------------------------------------------- cancel

def test_a_cancel_stops_the_expansion_at_once():
    ex = Expander(batch_size=10)
    state, step = ex.on_campaign(None, campaign(), NOW)
    state, step = ex.on_timer(state, NOW, NOW, audience(100))
    pending = state.next_tick_at
    state, step = ex.on_cancel(state, cancel(), NOW + 1)
    assert details(step.events) == [("cancelled", "cancelled after expanding 10/100: "
                                                  "expansion stopped")]
    state, step = ex.on_timer(state, pending, NOW + 2, audience(100))
    assert step.batch is None and step.events == [] and state.cursor == 10
    state, again = ex.on_cancel(state, cancel(), NOW + 3)
    assert again.events == []


def test_a_cancel_before_the_campaign_record_drops_the_campaign():
    ex = Expander()
    state, step = ex.on_cancel(None, cancel(), NOW)
    assert step.events == [] and step.timers == [state.purge_at]
    state, step = ex.on_campaign(state, campaign(), NOW + 5)
    assert details(step.events) == [("cancelled", "cancelled before its expansion started")]
    assert state.next_tick_at is None and all(t == state.purge_at for t in step.timers)


def test_a_cancel_after_the_expansion_is_still_reported_for_delivery():
    ex = Expander(batch_size=100)
    state, step = ex.on_campaign(None, campaign(), NOW)
    _, _, state = run(ex, state, step, 50)
    state, step = ex.on_cancel(state, cancel(), NOW + 10)
    assert step.events[0]["state"] == "cancelled"
    assert "after its expansion completed (50/50)" in step.events[0]["detail"]


def test_a_cancel_from_another_tenant_is_dead_lettered_and_ignored():
    ex = Expander(batch_size=10)
    state, step = ex.on_campaign(None, campaign(), NOW)
    state, step = ex.on_cancel(state, cancel(tenant="globex"), NOW)
    assert step.events == [] and "belongs to another tenant" in step.dead_letters[0][1]
    assert step.dead_letters[0][0]["kind"] == "cancel_campaign"
    state, step = ex.on_timer(state, NOW, NOW, audience(20))
    assert step.batch == (0, 10)


# ---------------------------------------------------------------- replays, failures, purge

def test_a_replayed_campaign_record_is_not_expanded_again():
    ex = Expander(batch_size=10)
    c = campaign()
    state, step = ex.on_campaign(None, c, NOW)
    state, step = ex.on_timer(state, NOW, NOW, audience(100))
    state, replay = ex.on_campaign(state, c, NOW + 1)
    assert replay.events == replay.timers == replay.dead_letters == [] and state.cursor == 10
    state, other = ex.on_campaign(state, campaign(content={"body": "different"}), NOW + 2)
    assert "already taken by a different campaign" in other.dead_letters[0][1]


def test_an_unknown_segment_fails_the_campaign_once_with_a_dead_letter():
    ex = Expander()
    state, step = ex.on_campaign(None, campaign(), NOW)

    def missing(c):
        raise ValidationError("segment 'buyers' of tenant 'acme' does not exist",
                              "audience.segment")
    state, step = ex.on_timer(state, NOW, NOW, missing)
    assert details(step.events) == [("failed", "segment 'buyers' of tenant 'acme' does not "
                                               "exist")]
    record, reason = step.dead_letters[0]
    assert record["campaign_id"] == "cmp-1" and "does not exist" in reason
    assert step.batch is None and step.timers == []


def test_ids_too_long_for_the_recipient_id_fail_the_campaign():
    ex = Expander(max_id_length=20)
    state, step = ex.on_campaign(None, campaign(), NOW)  # "cmp-1:" leaves 14 characters
    state, step = ex.on_timer(state, NOW, NOW, audience(10, longest=15))
    assert step.events[0]["state"] == "failed" and "at most 14" in step.events[0]["detail"]


def test_state_is_purged_after_expiry_plus_retention():
    ex = Expander(retention_ms=1_000)
    c = campaign()
    state, step = ex.on_campaign(None, c, NOW)
    assert state.purge_at == c.expires_at + 1_000 and state.purge_at in step.timers
    gone, step = ex.on_timer(state, state.purge_at, state.purge_at, audience(1))
    assert gone is None and step.clear


def test_the_state_survives_a_checkpoint_and_resumes_at_its_cursor():
    ex = Expander(batch_size=7)
    state, step = ex.on_campaign(None, campaign(), NOW)
    state, step = ex.on_timer(state, NOW, NOW, audience(50))
    state, step = ex.on_timer(state, state.next_tick_at, NOW + 1, audience(50))
    checkpoint = pickle.dumps(state)
    # the run goes on past the checkpoint, then dies; its later batches are lost with it
    state, _ = ex.on_timer(state, state.next_tick_at, NOW + 2, audience(50))
    restored = pickle.loads(checkpoint)
    assert restored.cursor == 14 and restored.campaign == campaign()
    batches, _, restored = run(ex, restored, type(step)(timers=[restored.next_tick_at]), 50)
    assert batches[0] == (14, 7) and restored.cursor == 50


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"tick_ms": -1},
                                    {"progress_interval_ms": -5}])
def test_the_expander_checks_its_settings(kwargs):
    with pytest.raises(ValueError):
        Expander(**kwargs)


# ---------------------------------------------------------------- the recipient records

def test_a_recipient_record_is_a_valid_promotional_notification():
    c = campaign(send_at=NOW + 10_000)
    n = parse_notification(recipient_json(c, "u-7"), expected_priority="promotional")
    assert n.id == recipient_id("cmp-1", "u-7") == c.recipient_id("u-7") == "cmp-1:u-7"
    assert (n.user_id, n.tenant_id, n.campaign_id) == ("u-7", "acme", "cmp-1")
    assert n.channels == ("push", "email") and n.content == c.content
    assert (n.created_at, n.expires_at, n.send_at) == (c.created_at, c.expires_at, c.send_at)
    assert "to" not in orjson.loads(recipient_json(c, "u-7"))


@pytest.mark.parametrize("user_id", ["u-1", 'quo"te', "back\\slash", '\\"', "ünï", "🎉",
                                     "a/b", "\u2028"])
def test_the_sql_shape_head_id_user_id_tail_is_the_same_record(user_id):
    c = campaign(campaign_id='c"1\\')  # even a campaign id that needs escaping
    e = escape_json_text(user_id)
    built = recipient_json_head(c) + e + '","user_id":"' + e + '",' + recipient_json_tail(c)
    assert orjson.loads(built) == orjson.loads(recipient_json(c, user_id))
    assert orjson.loads(built)["id"] == f'c"1\\:{user_id}'
