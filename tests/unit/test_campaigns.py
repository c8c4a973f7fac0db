"""Campaign and cancel-control validation without a stack: every rule, with its precise reason."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald.campaigns import (CANCEL_CAMPAIGN, AudienceSource, CancelCampaign, Expander,
                              campaign_from_dict, campaign_status, cancel_from_dict,
                              check_campaign_fields, check_segment_name, check_user_ids,
                              parse_campaign, phase_of)
from herald.errors import ValidationError

NOW = 1_764_000_000_000


def campaign(**changes) -> dict:
    base = {"campaign_id": "cmp-spring-sale", "tenant_id": "acme",
            "audience": {"segment": "spring-buyers"}, "channels": ["push", "email"],
            "content": {"title": "Sale", "body": "20% off"},
            "created_at": NOW, "expires_at": NOW + 3_600_000, "send_at": NOW + 600_000}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def reason(obj, **kw) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        campaign_from_dict(obj, **kw)
    return e.value


def test_the_contract_example_parses_to_every_field():
    c = campaign_from_dict(campaign(), now_ms=NOW)
    assert (c.campaign_id, c.tenant_id, c.audience.segment) == ("cmp-spring-sale", "acme",
                                                                 "spring-buyers")
    assert c.audience.user_ids is None and c.channels == ("push", "email")
    assert (c.created_at, c.expires_at, c.send_at) == (NOW, NOW + 3_600_000, NOW + 600_000)
    assert c.content.title == "Sale" and c.content.body == "20% off"


def test_inline_user_ids_and_the_derived_recipient_id():
    c = campaign_from_dict(campaign(audience={"user_ids": ["u-1", "u-2"]}))
    assert c.audience.user_ids == ("u-1", "u-2") and c.audience.segment is None
    assert c.recipient_id("u-2") == "cmp-spring-sale:u-2"


def test_to_json_round_trips_through_the_parser():
    for audience in ({"segment": "s1"}, {"user_ids": ["a", "b"]}):
        c = campaign_from_dict(campaign(audience=audience, send_at=None))
        again = parse_campaign(c.to_json())
        assert again == c
        assert "send_at" not in orjson.loads(c.to_json())


def test_send_at_is_optional():
    assert campaign_from_dict(campaign(send_at=None)).send_at is None


@pytest.mark.parametrize("field", ["campaign_id", "tenant_id", "audience", "channels", "content",
                                   "created_at", "expires_at"])
def test_each_required_field_is_named_when_missing(field):
    e = reason(campaign(**{field: None}))
    assert e.code == "missing_field" and e.field == field
    assert f"'{field}'" in e.message


def test_an_already_expired_campaign_is_refused_with_both_times():
    e = reason(campaign(), now_ms=NOW + 3_600_000)
    assert (e.code, e.field) == ("expired", "expires_at")
    assert "already expired" in e.message
    assert "2025-11-24T17:00:00.000Z" in e.message  # expires_at, readable


def test_a_campaign_in_the_future_is_not_expired():
    campaign_from_dict(campaign(), now_ms=NOW + 3_599_999)


@pytest.mark.parametrize("changes, field, words", [
    ({"send_at": NOW + 3_600_000}, "send_at", "must be earlier than 'expires_at'"),
    ({"expires_at": NOW}, "expires_at", "later than 'created_at'"),
    ({"created_at": 1_764_000_000}, "created_at", "looks like seconds"),
    ({"expires_at": "tomorrow"}, "expires_at", "integer epoch"),
    ({"send_at": True}, "send_at", "integer epoch"),
    ({"campaign_id": "a:b"}, "campaign_id", "must not contain ':'"),
    ({"campaign_id": ""}, "campaign_id", "must not be empty"),
    ({"campaign_id": 7}, "campaign_id", "must be a string"),
    ({"campaign_id": "c" * 257}, "campaign_id", "longer than 256"),
    ({"tenant_id": ["acme"]}, "tenant_id", "must be a string"),
    ({"channels": []}, "channels", "non-empty list"),
    ({"channels": ["fax"]}, "channels", "unknown channel 'fax'"),
    ({"channels": ["push", "push"]}, "channels", "twice"),
    ({"channels": [{}]}, "channels", "channel names (strings), got dict"),
    ({"expires_at": 2**64 - 1}, "expires_at", "beyond the year 2286"),
    ({"send_at": 10**13}, "send_at", "beyond the year 2286"),
    ({"channels": [["push"]]}, "channels", "channel names (strings), got list"),
    ({"content": {"title": "no body"}}, "content.body", "needs a 'body' or a 'template'"),
    ({"content": "hello"}, "content", "must be an object"),
    ({"audience": "everyone"}, "audience", "must be an object"),
    ({"audience": {}}, "audience", "exactly one of"),
    ({"audience": {"segment": "s", "user_ids": ["u"]}}, "audience", "exactly one of"),
    ({"audience": {"segmnt": "s"}}, "audience.segmnt", "unknown field(s) 'segmnt'"),
    ({"audience": {"segment": "../etc"}}, "audience.segment", "1-128 characters"),
    ({"audience": {"segment": 3}}, "audience.segment", "must be a string"),
    ({"audience": {"user_ids": []}}, "audience.user_ids", "must not be empty"),
    ({"audience": {"user_ids": "u-1"}}, "audience.user_ids", "must be a list"),
    ({"audience": {"user_ids": ["u-1", 2]}}, "audience.user_ids", "'audience.user_ids[1]' must be a string"),
    ({"audience": {"user_ids": ["u-1", " "]}}, "audience.user_ids", "contains whitespace"),
    ({"audience": {"user_ids": ["u-1", "u-1"]}}, "audience.user_ids", "lists user 'u-1' twice"),
])
def test_contract_violations_name_the_field_and_the_rule(changes, field, words):
    e = reason(campaign(**changes))
    assert e.field == field
    assert words in e.message


def test_derived_recipient_ids_must_fit_the_id_length():
    cid = "c" * 200
    campaign_from_dict(campaign(campaign_id=cid, audience={"user_ids": ["u" * 55]}))
    e = reason(campaign(campaign_id=cid, audience={"user_ids": ["u" * 56]}))
    assert e.field == "audience.user_ids" and "longer than 55" in e.message


def test_undecodable_campaign_records_say_why():
    with pytest.raises(ValidationError, match="malformed JSON"):
        parse_campaign(b"{")
    with pytest.raises(ValidationError, match="expected a JSON object"):
        parse_campaign(b"[]")


def test_cancel_control_record_round_trips():
    cancel = CancelCampaign(campaign_id="cmp-1", tenant_id="acme", at=NOW)
    doc = orjson.loads(cancel.to_json())
    assert doc == {"kind": CANCEL_CAMPAIGN, "campaign_id": "cmp-1", "tenant_id": "acme", "at": NOW}
    assert cancel_from_dict(doc) == cancel


@pytest.mark.parametrize("changes, field", [
    ({"kind": "quota"}, "kind"), ({"campaign_id": None}, "campaign_id"),
    ({"tenant_id": ""}, "tenant_id"), ({"at": "now"}, "at"),
    ({"tenant_id": "acme:x"}, "tenant_id"), ({"campaign_id": "c/../x"}, "campaign_id"),
])
def test_cancel_control_violations(changes, field):
    doc = {"kind": CANCEL_CAMPAIGN, "campaign_id": "cmp-1", "tenant_id": "acme", "at": NOW}
    doc.update(changes)
    with pytest.raises(ValidationError) as e:
        cancel_from_dict({k: v for k, v in doc.items() if v is not None})
    assert e.value.field == field


@given(st.text(max_size=140))
def test_segment_names_are_safe_for_keys_and_paths(name):
    try:
        check_segment_name(name)
    except ValidationError:
        return
    assert "/" not in name and ":" not in name and not name.startswith(".")
    assert 1 <= len(name) <= 128


@given(st.dictionaries(st.sampled_from(["campaign_id", "tenant_id", "audience", "channels",
                                        "content", "created_at", "expires_at", "send_at"]),
                       st.none() | st.booleans() | st.integers() | st.text(max_size=5)
                       | st.lists(st.text(max_size=3), max_size=3)
                       | st.dictionaries(st.text(max_size=8), st.text(max_size=3), max_size=2)))
def test_any_shape_either_parses_or_raises_validation_error(obj):
    try:
        campaign_from_dict(campaign(**obj), now_ms=NOW)
    except ValidationError as e:
        assert e.message and e.code


# ---------------------------------------------------------------- ids and fields

@pytest.mark.parametrize("changes, field, words", [
    ({"campaign_id": "c\x00"}, "campaign_id", "non-printable character U+0000"),
    ({"campaign_id": "../../x"}, "campaign_id", "contains '/'"),
    ({"campaign_id": "spring sale"}, "campaign_id", "contains whitespace"),
    ({"campaign_id": "c\u200b"}, "campaign_id", "non-printable character U+200B"),
    ({"tenant_id": "acme:eu"}, "tenant_id", "A-Z a-z 0-9 . _ -"),
    ({"tenant_id": ".."}, "tenant_id", "starting with a letter or digit"),
    ({"audience": {"user_ids": ["u-1", "u\n2"]}}, "audience.user_ids",
     "'audience.user_ids[1]' contains whitespace"),
    ({"audience": {"user_ids": ["u/1"]}}, "audience.user_ids", "contains '/'"),
    ({"audience": {"user_ids": ["u\u202e1"]}}, "audience.user_ids", "U+202E"),
])
def test_campaign_ids_tenants_and_recipients_follow_the_id_rules(changes, field, words):
    e = reason(campaign(**changes))
    assert e.field == field
    assert words in e.message


def test_a_user_id_list_names_the_first_repeat_after_checking_every_id():
    assert check_user_ids(["a", "b"]) == ("a", "b")
    with pytest.raises(ValidationError, match="lists user 'b' twice") as e:
        check_user_ids(["a", "b", "c", "b", "a"])
    assert e.value.code == "duplicate"


def test_the_kafka_path_ignores_extra_campaign_fields_and_the_api_check_names_them():
    doc = campaign(source="crm", content={"body": "b", "html": "<b>"})
    assert campaign_from_dict(doc, now_ms=NOW).campaign_id == "cmp-spring-sale"
    with pytest.raises(ValidationError, match="unknown field") as e:
        check_campaign_fields(doc)
    assert e.value.field == "source"  # the top level first
    with pytest.raises(ValidationError) as e:
        check_campaign_fields(campaign(content={"body": "b", "html": "<b>"}))
    assert e.value.field == "content.html"
    check_campaign_fields(campaign())  # every contract field passes


# ---------------------------------------------------------------- status

NO_FINALS: dict = {}


def status(**kw):
    base = dict(phase=None, expansion_done=False, expanded=0, recipients=0, finals=NO_FINALS)
    return campaign_status(**{**base, **kw})


def test_a_campaign_moves_accepted_expanding_sending_completed():
    assert status(phase="waiting")[0] == "accepted"
    assert status(phase="running", expanded=0)[0] == "expanding"
    assert status(phase="running", expanded=400, recipients=10,
                  finals={"delivered": 10})[0] == "expanding"
    assert status(phase="done", expansion_done=True, expanded=1000,
                  finals={"delivered": 900, "failed": 50})[0] == "sending"
    state, progress = status(phase="done", expansion_done=True, expanded=1000, recipients=1000,
                             finals={"delivered": 900, "failed": 50, "expired": 20,
                                     "cancelled": 0, "opted_out": 30})
    assert state == "completed"
    assert progress == {"expanded": 1000, "total": 1000, "delivered": 900, "failed": 50,
                        "expired": 20, "cancelled": 0, "opted_out": 30, "pending": 0,
                        "sent": 900}


def test_expanded_is_the_expansions_count_not_the_recipients_with_a_status():
    # the case: expansion 200,000/200,000 done, 23,560 recipients with an event
    state, progress = status(phase="done", expansion_done=True, expanded=200_000,
                             recipients=23_560, finals={"delivered": 23_000}, total=200_000)
    assert (state, progress["expanded"], progress["pending"]) == ("sending", 200_000, 177_000)


def test_a_recipients_event_filed_before_the_expansions_progress_still_counts():
    _, progress = status(phase="running", expanded=100, recipients=130, finals={"delivered": 120})
    assert progress["expanded"] == 130 and progress["pending"] == 10


def test_an_empty_audience_is_completed_once_expanded():
    assert status(phase="done", expansion_done=True)[0] == "completed"


@pytest.mark.parametrize("kw, state", [
    (dict(phase="failed"), "failed"),
    (dict(phase="failed", cancel_requested=True), "failed"),
    (dict(phase="expired", expanded=300, recipients=300,
          finals={"delivered": 300}), "expired"),   # stopped before the end of the audience
    (dict(phase="cancelled", expanded=300, finals={"delivered": 10}), "cancelled"),
    (dict(phase="running", expanded=300, cancel_requested=True), "cancelled"),
    (dict(phase="cancelled", expansion_done=True, expanded=10, recipients=10,
          finals={"delivered": 6, "cancelled": 4}), "cancelled"),
    # cancelled after every recipient already had its final state: nothing was cancelled
    (dict(phase="cancelled", expansion_done=True, expanded=10, recipients=10,
          finals={"delivered": 10}), "completed"),
])
def test_final_campaign_states(kw, state):
    assert status(**kw)[0] == state


def test_pending_never_goes_below_zero_and_bad_counts_do_not_either():
    _, progress = status(expanded=5, finals={"delivered": 7, "failed": -1})
    assert progress["pending"] == 0 and progress["failed"] == 0


def test_every_expansion_event_says_its_phase_and_old_events_are_read_from_their_detail():
    ex = Expander(batch_size=2, progress_interval_ms=0)
    c = campaign_from_dict(campaign(audience={"user_ids": ["a", "b", "c"]}, send_at=None),
                           now_ms=NOW)
    state, step = ex.on_campaign(None, c, NOW)
    phases = [e["expansion"] for e in step.events]
    for t in range(1, 4):
        state, step = ex.on_timer(state, state.next_tick_at or NOW + t, NOW + t,
                                  lambda c: AudienceSource(None, 3, 1))
        phases += [e["expansion"] for e in step.events]
        if state.next_tick_at is None:
            break
    assert phases[0] == "waiting" and phases[-1] == "done" and "running" in phases
    last = step.events[-1]
    assert (last["expanded"], last["total"]) == (3, 3)
    assert phase_of(last) == "done"
    old = {k: v for k, v in last.items() if k != "expansion"}
    assert phase_of(old) == "done"
    assert phase_of({"state": "accepted", "detail": "queued for expansion"}) == "waiting"
    assert phase_of({"state": "accepted", "detail": "expanded 10/20"}) == "running"
    assert phase_of({"state": "cancelled", "detail": "x"}) == "cancelled"
    assert phase_of({"state": "delivered"}) is None


def test_the_api_document_lists_every_campaign_state_and_progress_field():
    from herald.campaigns import CAMPAIGN_STATES, PROGRESS_FIELDS
    from herald_api.schemas import CampaignProgress, Progress
    seen = set()
    for phase in (None, "waiting", "running", "done", "cancelled", "expired", "failed"):
        for done in (False, True):
            for expanded, finals in ((0, {}), (1, {}), (1, {"cancelled": 1})):
                state, progress = status(phase=phase, expansion_done=done, expanded=expanded,
                                         recipients=expanded, finals=finals)
                seen.add(state)
                assert tuple(progress) == PROGRESS_FIELDS == tuple(Progress.model_fields)
    assert seen == set(CAMPAIGN_STATES)
    assert set(CampaignProgress.model_json_schema()["properties"]["state"]["enum"]) == seen
