"""Payout lists other wallets take, and reports: Electrum pay-to-many, BIP21 URIs, CSV, JSON.

Amounts are written from integer satoshi as exact decimal strings; no float
ever touches them.
"""

from __future__ import annotations

import csv
import io
import json
from urllib.parse import quote

from resistance.grants.model import (
    AWARD_FIELDS,
    GrantRound,
    result_to_json,
    settings_to_json,
    state_to_json,
)
from resistance.grants.payout import sat_to_btc


def electrum_pay_to_many(round_: GrantRound) -> str:
    """Electrum's "pay to many" list: ``address, amount`` per line, amounts in BTC."""
    return "".join(
        f"{a.payout_address}, {sat_to_btc(a.amount_sat)}\n" for a in round_.result.payouts()
    )


def bip21_amount(sat: int) -> str:
    """BIP21 amount: decimal BTC without trailing zeros ('0.0001', '1')."""
    text = sat_to_btc(sat).rstrip("0")
    return text.rstrip(".")


def bip21_uris(round_: GrantRound) -> list[str]:
    """One ``bitcoin:`` URI (BIP21) per award paid now, labelled with the round and operator."""
    out = []
    for a in round_.result.payouts():
        label = quote(f"Digital Resistance grant {round_.settings.round_id}", safe="")
        message = quote(f"operator {a.operator_id}", safe="")
        out.append(
            f"bitcoin:{a.payout_address}?amount={bip21_amount(a.amount_sat)}"
            f"&label={label}&message={message}"
        )
    return out


def awards_csv(round_: GrantRound) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*AWARD_FIELDS, "amount_btc"])
    for a in round_.result.awards:
        writer.writerow([*(getattr(a, f) for f in AWARD_FIELDS), sat_to_btc(a.amount_sat)])
    return buf.getvalue()


def report_json(round_: GrantRound) -> str:
    """The round's settings, result and state (without the inputs), for people and scripts."""
    body = {
        "round_id": round_.settings.round_id,
        "settings": settings_to_json(round_.settings),
        "result": result_to_json(round_.result),
        "state": state_to_json(round_.state),
        "budget_check": {
            "budget_sat": round_.settings.budget_sat,
            "carried_in_sat": round_.result.carried_in_sat,
            "paid_sat": round_.result.paid_sat,
            "carried_out_sat": round_.result.carried_out_sat,
            "fee_reserve_sat": round_.settings.fee_reserve_sat,
            "returned_sat": round_.result.returned_sat,
        },
    }
    return json.dumps(body, indent=2, sort_keys=True) + "\n"
