"""The award's fields are defined once: the model's JSON, CSV and the API all follow them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.grants.errors import InputError
from resistance.grants.model import AWARD_FIELDS, Award, award_from_json, award_to_json
from resistance.registry.schemas import AwardView, RoundView

AWARD = Award("op-1", "bc1qexample", 10, 2, 30, 1000, 5, 1005, 0)


def test_every_form_uses_the_model_fields_in_order() -> None:
    assert tuple(f.name for f in dataclasses.fields(Award)) == AWARD_FIELDS
    assert list(award_to_json(AWARD)) == list(AWARD_FIELDS)
    assert award_from_json(award_to_json(AWARD), "a") == AWARD
    schema = RoundView.model_json_schema()["$defs"]["AwardView"]
    assert schema["required"] == list(AWARD_FIELDS)
    assert schema["properties"]["operator_id"] == {"title": "Operator Id", "type": "string"}
    assert schema["properties"]["amount_sat"] == {"title": "Amount Sat", "type": "integer"}


def test_the_api_shows_an_award_as_the_round_file_holds_it() -> None:
    view = RoundView.model_validate(
        {
            **dict.fromkeys(RoundView.model_fields, None),
            "round_id": "r",
            "status": "draft",
            "network": "regtest",
            "target_country": "IR",
            "period_start": "2026-01-01",
            "period_end": "2026-01-31",
            **dict.fromkeys(("budget_sat", "paid_sat", "payouts", "created_at", "updated_at"), 0),
            **dict.fromkeys(
                (
                    "pool_sat",
                    "distributed_sat",
                    "returned_sat",
                    "ignored_rollups",
                    "carried_in_sat",
                    "carried_out_sat",
                    "rollups",
                ),
                0,
            ),
            "settings": {},
            "signatures": [],
            "skipped_operators": [],
            "awards": [award_to_json(AWARD)],
        }
    )
    assert isinstance(view.awards[0], AwardView)
    assert view.model_dump(mode="json")["awards"] == [award_to_json(AWARD)]


@given(
    st.dictionaries(
        st.sampled_from(AWARD_FIELDS),
        st.one_of(st.integers(), st.text(max_size=5), st.none(), st.booleans()),
    )
)
def test_a_bad_award_is_an_input_error(obj: dict[str, Any]) -> None:
    try:
        award = award_from_json(obj, "result.awards[0]")
    except InputError as exc:
        assert str(exc).startswith("result.awards[0]: ")
        return
    assert award_to_json(award) == obj


def test_a_missing_field_is_named() -> None:
    obj = award_to_json(AWARD)
    del obj["share_sat"]
    with pytest.raises(InputError, match="share_sat must be an integer"):
        award_from_json(obj, "w")
