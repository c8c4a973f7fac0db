"""How the gate cuts a batch into parts whose calls are under way together
(`udfs.call_stage.split_by_user`): no user in two parts (a user's calls are chained only within
one part), every notification in exactly one part, each user's order kept, parts near the size."""
from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from udfs.call_stage import split_by_user


def notes(users: list[str], tenant: str = "acme") -> list[SimpleNamespace]:
    return [SimpleNamespace(tenant_id=tenant, user_id=u, id=f"{u}-{i}")
            for i, u in enumerate(users)]


def test_a_batch_within_the_size_is_one_part_and_zero_means_whole():
    batch = notes(["a", "b", "a"])
    assert split_by_user(batch, 3) == [batch]
    assert split_by_user(batch * 100, 0) == [batch * 100]
    assert split_by_user([], 4) == []


def test_a_user_seen_again_joins_their_part_even_when_it_is_full():
    batch = notes(["a", "b", "c", "a", "d", "e", "a", "f"])
    parts = [[n.user_id for n in part] for part in split_by_user(batch, 3)]
    assert parts == [["a", "b", "c", "a", "a"], ["d", "e", "f"]]


def test_two_tenants_users_of_one_id_are_two_users():
    """Their parts are apart like any two users': one tenant's user never waits in another's
    chain, nor joins a part because a namesake is in it."""
    acme, globex = notes(["a", "b", "c"]), notes(["a", "d"], tenant="globex")
    parts = split_by_user(acme[:2] + acme[2:] + globex, 3)
    assert [[(n.tenant_id, n.user_id) for n in part] for part in parts] == [
        [("acme", "a"), ("acme", "b"), ("acme", "c")], [("globex", "a"), ("globex", "d")]]


@given(st.lists(st.sampled_from([f"u{i}" for i in range(12)]), max_size=200),
       st.integers(min_value=1, max_value=40))
def test_parts_keep_users_whole_and_in_order(users, size):
    batch = notes(users)
    parts = split_by_user(batch, size)
    assert sorted(n.id for part in parts for n in part) == sorted(n.id for n in batch)
    owner = {}
    for i, part in enumerate(parts):
        assert part, "no empty parts"
        for n in part:
            assert owner.setdefault(n.user_id, i) == i  # a user in one part only
    for part in parts:  # each part keeps the batch's order
        positions = [batch.index(n) for n in part]
        assert positions == sorted(positions)
    # A part only grows past the size through users it already holds.
    for part in parts:
        first_users = list(dict.fromkeys(n.user_id for n in part))
        newcomers_at = [next(j for j, n in enumerate(part) if n.user_id == u) for u in first_users]
        assert all(j < size for j in newcomers_at)
