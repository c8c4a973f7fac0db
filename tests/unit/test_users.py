"""User records: the same id and contact rules as notifications, for the API and the CLI."""
from __future__ import annotations

import pytest

from herald.errors import ValidationError
from herald.users import check_user_id, user_from_dict
from herald_cli.segments import read_users


@pytest.mark.parametrize("contacts, field, words", [
    ({"phone": "notaphone"}, "contacts.phone", "E.164"),
    ({"phone": "555-1234"}, "contacts.phone", "E.164"),
    ({"email": "no-at"}, "contacts.email", "'@'"),
    ({"email": "a@localhost"}, "contacts.email", "'@'"),
])
def test_user_contacts_follow_the_notification_rules_named_as_contacts(contacts, field, words):
    with pytest.raises(ValidationError, match=words) as e:
        user_from_dict({"contacts": contacts}, "u-1")
    assert e.value.field == field
    assert e.value.message.startswith("'contacts.")


def test_a_valid_user_keeps_its_contacts():
    user = user_from_dict({"contacts": {"phone": "+15550100", "email": "a@example.com"}}, "u-1")
    assert (user.contacts.phone, user.contacts.email) == ("+15550100", "a@example.com")


@pytest.mark.parametrize("user_id", ["../../x", "a b", "nul\x00", "rtl\u202e", "", "x" * 257])
def test_user_ids_follow_the_id_rule(user_id):
    with pytest.raises(ValidationError) as e:
        check_user_id(user_id)
    assert e.value.field == "user_id"
    with pytest.raises(ValidationError):
        user_from_dict({}, user_id)


def test_the_cli_loader_refuses_rows_with_bad_contacts_and_ids(tmp_path):
    path = tmp_path / "users.csv"
    path.write_text("user_id,phone,email\n"
                    "u1,+15550100,a@example.com\n"
                    "u2,notaphone,\n"
                    "u3,,no-at\n"
                    "u/4,,\n")
    loaded = read_users(path)
    assert [u.user_id for u in loaded.users] == ["u1"]
    assert len(loaded.errors) == 3
    assert "row 2" in loaded.errors[0] and "contacts.phone" in loaded.errors[0]
    assert "row 3" in loaded.errors[1] and "contacts.email" in loaded.errors[1]
    assert "row 4" in loaded.errors[2] and "'/'" in loaded.errors[2]


@pytest.mark.parametrize("tenant", [5, "a:b", ".."])
def test_a_tenant_id_in_a_user_body_follows_the_tenant_rule(tenant):
    with pytest.raises(ValidationError) as e:
        user_from_dict({"tenant_id": tenant}, "u-1")
    assert e.value.field == "tenant_id"
