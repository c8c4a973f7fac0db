"""A user's calls go out in their order whatever the channel (`udfs.call_stage.in_turn`): a
call behind one of the same user that waits for a later round waits too, and a user's calls
take one protocol per round."""
from __future__ import annotations

import random
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from udfs.call_stage import in_turn


def task(order: int, user: str = "u", http2: bool = False, tenant: str = "acme"):
    return SimpleNamespace(order=order, chain=(tenant, user),
                           request=SimpleNamespace(http2=http2))


def orders(tasks) -> list[int]:
    return [t.order for t in tasks]


def test_a_call_behind_a_waiting_one_of_the_same_user_waits():
    later = [task(0)]  # e.g. falling back to sms, or waiting for tokens
    go = in_turn([task(1), task(2, "v"), task(3)], later)
    assert orders(go) == [2] and sorted(orders(later)) == [0, 1, 3]


def test_another_tenants_user_of_the_same_id_does_not_wait():
    later = [task(0)]
    assert orders(in_turn([task(1, tenant="globex")], later)) == [1]


def test_a_users_calls_take_one_protocol_per_round():
    later: list = []
    go = in_turn([task(0, http2=True), task(1), task(2, http2=True), task(3, "v")], later)
    assert orders(go) == [0, 3] and orders(later) == [1, 2]


@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans(), st.booleans()), max_size=30),
       st.randoms())
def test_no_call_goes_before_an_earlier_one_of_its_user(spec, rng: random.Random):
    """Whatever waits and whatever the protocols: what goes is, per user, a prefix of the
    user's calls not yet decided, over one protocol."""
    tasks = [task(i, user, http2) for i, (user, http2, _) in enumerate(spec)]
    waiting = [t for t, (_, _, waits) in zip(tasks, spec) if waits]
    offered = [t for t, (_, _, waits) in zip(tasks, spec) if not waits]
    rng.shuffle(offered)
    later = list(waiting)
    go = in_turn(offered, later)
    assert sorted(orders(go + later)) == list(range(len(tasks)))
    assert orders(go) == sorted(orders(go))
    for user in "abc":
        mine = [t for t in tasks if t.chain[1] == user]
        sent = [t for t in go if t.chain[1] == user]
        assert orders(sent) == orders(mine[:len(sent)])
        assert len({t.request.http2 for t in sent}) <= 1
