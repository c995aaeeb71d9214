"""Errors of ``resist grants``: each says what is wrong with which input, in one line."""

from __future__ import annotations

from resistance.errors import ResistanceError


class GrantsError(ResistanceError):
    """Base class of every grants error."""


class SettingsError(GrantsError):
    """A round's settings are inconsistent (e.g. a fee reserve larger than the budget)."""


class InputError(GrantsError):
    """A rollup, carried amount or input file is malformed or contradicts another."""


class AddressError(GrantsError):
    """A payout address is not a valid address for the round's Bitcoin network."""


class RoundStateError(GrantsError):
    """An illegal transition: approving twice, changing an approved round, paying twice."""


class PayoutError(GrantsError):
    """A payout cannot be built; nothing is written."""


class DescriptorError(PayoutError):
    """The funder's descriptor is unusable (syntax, network, missing key origin)."""


class UtxoError(PayoutError):
    """A UTXO in the funder's file does not match its previous transaction or descriptor."""


class InsufficientFundsError(PayoutError):
    """The funder's UTXOs do not cover the awards plus the fee."""


class FeeExceedsReserveError(PayoutError):
    """The fee at the chosen rate is larger than the round's fee reserve."""


class PaymentMismatchError(GrantsError):
    """A signed transaction does not pay exactly the approved awards."""


class RegistryError(GrantsError):
    """The registry cannot be reached or refused a request; the message is its own."""
