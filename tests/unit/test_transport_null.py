"""The null transport: the pipeline's ceiling without a provider; every adapter reads its
answer as accepted, and an unknown transport name is refused."""
from __future__ import annotations

import pytest

from herald.providers.base import Kind, ProviderRequest, clock_ms
from herald.providers.registry import Registry
from herald.settings import Settings
from udfs.http_client import BEFORE_WRITE, DeadlinePassed
from udfs.transport import NULL_ANSWER, NullTransport, ProviderTransport, make_transport


@pytest.mark.parametrize("channel, platform", [("push", "android"), ("push", "ios"),
                                               ("sms", None), ("email", None)])
def test_every_adapter_reads_the_null_answer_as_accepted(channel, platform):
    adapter = Registry().for_channel(channel, platform)
    outcome = adapter.classify(NULL_ANSWER.status, NULL_ANSWER.headers, NULL_ANSWER.body)
    assert outcome.kind is Kind.OK


def test_the_transport_is_chosen_by_setting():
    assert isinstance(make_transport(Settings(provider_transport="null")), NullTransport)
    http = make_transport(Settings())
    assert isinstance(http, ProviderTransport)
    http.close()
    with pytest.raises(ValueError, match="'http' or 'null'"):
        make_transport(Settings(provider_transport="carrier-pigeon"))


def request(deadline=None) -> ProviderRequest:
    return ProviderRequest("POST", "http://127.0.0.1:1/x", {}, b"{}", deadline=deadline)


def test_the_null_transport_answers_each_request_in_order():
    assert NullTransport().send_batch([request()] * 3) == [NULL_ANSWER] * 3


def test_the_null_transport_never_accepts_a_request_past_its_deadline():
    """Like the real clients: at or after the request's deadline it is not "sent"."""
    now = clock_ms()
    answers = NullTransport().send_batch([request(now + 60_000), request(now - 1), request(),
                                          request(now - 60_000)])
    assert answers[0] == answers[2] == NULL_ANSWER
    for late in (answers[1], answers[3]):
        assert isinstance(late, DeadlinePassed) and late.stage == BEFORE_WRITE
