"""The data of a grant round: settings, inputs, awards and state, and their JSON form.

A round file is self-contained so that anyone can recompute it: it holds every
parameter of the award rule (``GrantSettings``), every input the rule reads
(``RoundInputs``: daily rollups, amounts carried from the operator's previous
round, prior service days for probation, and ``signatures``, the registry's signatures over
the exported inputs), the result (``RoundResult``)
and the state (``RoundState``: draft, approved with a digest, paid with a txid).

All amounts are integer satoshi; all weights are integers. The JSON form is
canonical (sorted keys, no floats), so the digest of a round is stable.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import ipaddress
import itertools
import json
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, get_type_hints

from resistance.grants.errors import InputError, SettingsError

FORMAT = "resistance.grants.round/1"
INPUTS_FORMAT = "resistance.grants.inputs/1"
#: Inputs grouped per proxy in chunks, each bound by its SHA-256 in a signed manifest
#: (see "Inputs /2" below). Both formats are read everywhere.
INPUTS_FORMAT_2 = "resistance.grants.inputs/2"
#: At most this many proxies (per-proxy groups) in one chunk of /2 inputs: a chunk of
#: 30 days is then about 1 MB, so no stored value or parse grows with the round.
CHUNK_PROXIES = 1_000
NETWORKS = ("bitcoin", "testnet", "testnet4", "signet", "regtest")
# Below 546 sat an output is dust for some standard address type (P2PKH), so no
# award may be that small: it would be unspendable or rejected by relay policy.
MIN_PAYOUT_FLOOR_SAT = 546
BASIS_POINTS = 10_000
MAX_SAT = 21_000_000 * 100_000_000
#: A cascade's split (issue 24): the exit's operator gets 40 % of its weight by
#: default, the bridge's 60 % (the domestic hop is the scarce one); a funder may set
#: anything from 10 % to 90 %, so neither volunteer of a cascade is left unpaid.
CASCADE_EXIT_DEFAULT_BP = 4_000
CASCADE_EXIT_MIN_BP = 1_000
CASCADE_EXIT_MAX_BP = 9_000


@dataclass(frozen=True, slots=True)
class GrantSettings:
    """Every parameter of the award rule, recorded in the round file.

    ``operator_cap_bp`` and ``network_cap_bp`` are caps in basis points of the
    pool (budget minus fee reserve); 10000 means no cap. ``capacity_reference_kbps``
    of 0 turns the capacity factor off.
    """

    round_id: str
    network: str
    target_country: str
    period_start: dt.date
    period_end: dt.date
    budget_sat: int
    fee_reserve_sat: int
    min_payout_sat: int = 10_000
    performance_exponent: int = 20
    min_attempts: int = 1
    capacity_reference_kbps: int = 0
    probation_days: int = 0
    operator_cap_bp: int = BASIS_POINTS
    network_cap_bp: int = BASIS_POINTS
    cascade_exit_bp: int = CASCADE_EXIT_DEFAULT_BP
    """A cascade's weight goes this many basis points to its exit's operator, the
    rest to its bridge's (see :mod:`resistance.grants.award`)."""

    def __post_init__(self) -> None:
        if not self.round_id:
            raise SettingsError("round_id must not be empty")
        if self.network not in NETWORKS:
            raise SettingsError(f"network must be one of {', '.join(NETWORKS)}: {self.network!r}")
        if len(self.target_country) != 2 or not self.target_country.isupper():
            raise SettingsError(f"target_country must be an ISO 3166 code: {self.target_country!r}")
        if self.period_end < self.period_start:
            raise SettingsError("period_end is before period_start")
        for name in ("budget_sat", "fee_reserve_sat", "min_payout_sat"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_SAT:
                raise SettingsError(f"{name} must be between 0 and 21e14 sat: {value}")
        if self.fee_reserve_sat > self.budget_sat:
            raise SettingsError(
                f"fee reserve {self.fee_reserve_sat} sat is larger than the budget "
                f"{self.budget_sat} sat"
            )
        if self.min_payout_sat < MIN_PAYOUT_FLOOR_SAT:
            raise SettingsError(
                f"min_payout_sat must be at least {MIN_PAYOUT_FLOOR_SAT} (dust limit): "
                f"{self.min_payout_sat}"
            )
        if not 1 <= self.performance_exponent <= 64:
            raise SettingsError("performance_exponent must be between 1 and 64")
        if self.min_attempts < 1:
            raise SettingsError("min_attempts must be at least 1")
        if self.capacity_reference_kbps < 0 or self.probation_days < 0:
            raise SettingsError("capacity_reference_kbps and probation_days must be >= 0")
        for name in ("operator_cap_bp", "network_cap_bp"):
            if not 1 <= getattr(self, name) <= BASIS_POINTS:
                raise SettingsError(f"{name} must be between 1 and {BASIS_POINTS}")
        if not CASCADE_EXIT_MIN_BP <= self.cascade_exit_bp <= CASCADE_EXIT_MAX_BP:
            raise SettingsError(
                f"cascade_exit_bp must be between {CASCADE_EXIT_MIN_BP} and "
                f"{CASCADE_EXIT_MAX_BP} (each operator of a cascade gets at least "
                f"{CASCADE_EXIT_MIN_BP / 100:g} %): {self.cascade_exit_bp}"
            )

    @property
    def pool_sat(self) -> int:
        """The amount shared out by weight: the budget minus the fee reserve."""
        return self.budget_sat - self.fee_reserve_sat

    @property
    def days(self) -> int:
        return (self.period_end - self.period_start).days + 1


@dataclass(frozen=True, slots=True)
class DailyRollup:
    """One proxy's measurements on one day: control vantages and vantages inside ``country``.

    ``network`` is the proxy's /24 (IPv4) or /48 (IPv6) as text, ``throughput_kbps``
    the measured median throughput that day (0 when not measured).
    """

    proxy_id: str
    operator_id: str
    network: str
    payout_address: str
    day: dt.date
    country: str
    control_attempts: int
    control_successes: int
    target_attempts: int
    target_successes: int
    throughput_kbps: int = 0
    #: A cascade (this proxy is a bridge relaying to an exit): the exit's operator,
    #: its /24 or /48 and its payout address; all empty for a proxy of one hop.
    exit_operator_id: str = ""
    exit_network: str = ""
    exit_payout_address: str = ""

    @property
    def cascade(self) -> bool:
        return bool(self.exit_operator_id)

    def __post_init__(self) -> None:
        ca, cs = self.control_attempts, self.control_successes
        ta, ts = self.target_attempts, self.target_successes
        tp = self.throughput_kbps
        if not (
            self.proxy_id
            and self.operator_id
            and self.payout_address
            and type(ca) is int
            and type(cs) is int
            and type(ta) is int
            and type(ts) is int
            and type(tp) is int
            and 0 <= cs <= ca
            and 0 <= ts <= ta
            and tp >= 0
        ):
            self._explain()
        check_network(self.network, f"rollup {self.proxy_id} {self.day}")
        exit_fields = (self.exit_operator_id, self.exit_network, self.exit_payout_address)
        if any(exit_fields):
            if not all(exit_fields):
                raise InputError(
                    f"rollup {self.proxy_id} {self.day}: a cascade needs exit_operator_id, "
                    "exit_network and exit_payout_address"
                )
            check_network(self.exit_network, f"rollup {self.proxy_id} {self.day} (exit)")

    def _explain(self) -> None:
        """Raise the error that says what is wrong with this row (the slow path)."""
        where = f"rollup {self.proxy_id or '?'} {self.day}"
        if not self.proxy_id or not self.operator_id or not self.payout_address:
            raise InputError(f"{where}: proxy_id, operator_id and payout_address are required")
        for name in (
            "control_attempts",
            "control_successes",
            "target_attempts",
            "target_successes",
            "throughput_kbps",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise InputError(f"{where}: {name} must be a non-negative integer: {value!r}")
        if self.control_successes > self.control_attempts:
            raise InputError(f"{where}: more control successes than attempts")
        raise InputError(f"{where}: more target-country successes than attempts")


def check_network(text: str, where: str) -> None:
    """Refuse anything but a /24 IPv4 or /48 IPv6 network in canonical form."""
    problem = _network_problem(text)
    if problem:
        raise InputError(f"{where}: {problem}")


@functools.lru_cache(maxsize=1 << 16)
def _network_problem(text: str) -> str:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        return f"network {text!r} is not a network: {exc}"
    want = 24 if net.version == 4 else 48
    if net.prefixlen != want or str(net) != text:
        return f"network must be written as a /{want}: {text!r}"
    return ""


@dataclass(frozen=True, slots=True)
class CarriedAmount:
    """What an operator was due in an earlier round but that was below the minimum payout."""

    operator_id: str
    payout_address: str
    amount_sat: int

    def __post_init__(self) -> None:
        if not 0 <= self.amount_sat <= MAX_SAT:
            raise InputError(f"carried amount of {self.operator_id}: bad amount {self.amount_sat}")


@dataclass(frozen=True, slots=True)
class InputSignature:
    """A registry key's signature over the canonical inputs (see grants.signing)."""

    key_id: str
    algorithm: str
    signature: str


@dataclass(frozen=True, slots=True)
class RoundInputs:
    rollups: tuple[DailyRollup, ...]
    carried_in: tuple[CarriedAmount, ...] = ()
    prior_service_days: Mapping[str, int] = field(default_factory=dict)
    signatures: tuple[InputSignature, ...] = ()
    #: /2 inputs: the rows as the chunks' exact JSON texts, which the signed manifest
    #: names by SHA-256 (in memory, or :class:`StoredChunks` read from a file as they
    #: are needed); None for /1 inputs. /2 inputs have no ``rollups``: the award rule
    #: reads the chunks' columns (:meth:`groups`), and :meth:`rows` gives /1 rows.
    chunks: tuple[str, ...] | StoredChunks | None = None

    def __post_init__(self) -> None:
        if self.chunks is not None and self.rollups:
            raise InputError("inputs in format /2 hold their rows in chunks, not as rollups")

    def groups(self) -> Iterator[ProxyDays]:
        """The per-proxy entries of /2 inputs, chunk by chunk (none for /1 inputs)."""
        for n, text in enumerate(self.chunks or ()):
            yield from proxy_days_from_chunk(text, n)

    def rows(self) -> Iterator[DailyRollup]:
        """Every row, in either format (/2: one object per proxy-day, made as read)."""
        if self.chunks is None:
            yield from self.rollups
            return
        for entry in self.groups():
            yield from entry.rows()

    def row_count(self) -> int:
        if self.chunks is None:
            return len(self.rollups)
        return sum(len(entry.day) for entry in self.groups())


@dataclass(frozen=True, slots=True)
class Award:
    """One operator's outcome.

    ``share_sat`` is this round's share of the pool, ``amount_sat`` what is paid now
    (share plus carried-in, or 0 when that is below the minimum payout), and
    ``carried_out_sat`` what moves to the operator's next round.
    """

    operator_id: str
    payout_address: str
    weight: int
    proxies: int
    service_days: int
    share_sat: int
    carried_in_sat: int
    amount_sat: int
    carried_out_sat: int


@dataclass(frozen=True, slots=True)
class RoundResult:
    awards: tuple[Award, ...]
    pool_sat: int
    distributed_sat: int
    returned_sat: int
    ignored_rollups: int

    @property
    def paid_sat(self) -> int:
        return sum(a.amount_sat for a in self.awards)

    @property
    def carried_in_sat(self) -> int:
        return sum(a.carried_in_sat for a in self.awards)

    @property
    def carried_out_sat(self) -> int:
        return sum(a.carried_out_sat for a in self.awards)

    def payouts(self) -> list[Award]:
        """The awards paid now, in the round's order (by operator id)."""
        return [a for a in self.awards if a.amount_sat > 0]


class RoundStatus(Enum):
    DRAFT = "draft"
    APPROVED = "approved"
    PAID = "paid"


@dataclass(frozen=True, slots=True)
class RoundState:
    status: RoundStatus = RoundStatus.DRAFT
    digest: str | None = None
    txid: str | None = None


@dataclass(frozen=True, slots=True)
class GrantRound:
    settings: GrantSettings
    inputs: RoundInputs
    result: RoundResult
    state: RoundState = RoundState()

    def digest(self) -> str:
        """SHA-256 of the canonical settings, inputs and result (not the state), hashed
        as it is written: a /2 round's chunks one at a time, never the whole text."""
        h = hashlib.sha256()
        for part in canonical_round_parts(self):
            h.update(part.encode())
        return h.hexdigest()


def canonical_round_parts(r: GrantRound) -> Iterator[str]:
    """``canonical_json({"settings", "inputs", "result"})`` of a round, in parts whose
    concatenation is exactly that text: a /2 round's chunks each its own part (so the
    digest of a round over 100,000 proxies holds one chunk at a time)."""
    settings = canonical_json(settings_to_json(r.settings))
    result = canonical_json(result_to_json(r.result))
    if r.inputs.chunks is None:
        yield '{"inputs":' + canonical_json(inputs_to_json(r.inputs)) + ","
    else:
        # Sorted keys put "chunks" second in the inputs, after "carried_in"; inside a
        # canonical string every quote is escaped, so this text is the key's only place.
        head = canonical_json(inputs_to_json(r.inputs, with_chunks=False) | {"chunks": []})
        before, after = head.split('"chunks":[]', 1)
        yield '{"inputs":' + before + '"chunks":['
        for n, text in enumerate(r.inputs.chunks):
            yield ("," if n else "") + canonical_json(text)
        yield "]" + after + ","
    yield '"result":' + result + ',"settings":' + settings + "}"


# --- JSON ------------------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def settings_to_json(s: GrantSettings) -> dict[str, Any]:
    return {
        "round_id": s.round_id,
        "network": s.network,
        "target_country": s.target_country,
        "period_start": s.period_start.isoformat(),
        "period_end": s.period_end.isoformat(),
        "budget_sat": s.budget_sat,
        "fee_reserve_sat": s.fee_reserve_sat,
        "min_payout_sat": s.min_payout_sat,
        "performance_exponent": s.performance_exponent,
        "min_attempts": s.min_attempts,
        "capacity_reference_kbps": s.capacity_reference_kbps,
        "probation_days": s.probation_days,
        "operator_cap_bp": s.operator_cap_bp,
        "network_cap_bp": s.network_cap_bp,
    } | (
        # Written when the funder changed it, so earlier round files read as they did.
        {"cascade_exit_bp": s.cascade_exit_bp}
        if s.cascade_exit_bp != CASCADE_EXIT_DEFAULT_BP
        else {}
    )


def _int(obj: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = obj.get(key, default)
    if type(value) is not int:
        raise InputError(f"{where}: {key} must be an integer: {value!r}")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise InputError(f"{where}: {key} must be a string: {value!r}")
    return value


def _date(obj: Mapping[str, Any], key: str, where: str) -> dt.date:
    text = _str(obj, key, where)
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{where}: {key} is not an ISO date: {text!r}") from None


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InputError(f"{where}: expected a JSON object")
    return value


def _list(value: Any, where: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise InputError(f"{where}: expected a JSON array")
    return value


def _require(o: Mapping[str, Any], names: Sequence[str], where: str) -> None:
    """Name every missing field at once, not one per attempt."""
    missing = [name for name in names if name not in o]
    if missing:
        raise InputError(
            f"{where}: missing {', '.join(missing)} (`resist grants compute --example` "
            "prints a complete inputs file)"
        )


#: The settings an inputs file must give (the rest have defaults).
REQUIRED_SETTINGS = (
    "round_id", "network", "target_country", "period_start", "period_end", "budget_sat",
    "fee_reserve_sat",
)  # fmt: skip
#: The fields every rollup must give (throughput_kbps defaults to 0).
REQUIRED_ROLLUP = (
    "proxy_id", "operator_id", "network", "payout_address", "day", "country",
    "control_attempts", "control_successes", "target_attempts", "target_successes",
)  # fmt: skip


def settings_from_json(obj: Any) -> GrantSettings:
    if obj is None:
        _require({}, REQUIRED_SETTINGS, "settings")
    o = _mapping(obj, "settings")
    w = "settings"
    known = set(GrantSettings.__dataclass_fields__)
    unknown = set(o) - known
    if unknown:
        raise InputError(f"settings: unknown fields {sorted(unknown)}")
    _require(o, REQUIRED_SETTINGS, w)
    d = GrantSettings.__dataclass_fields__
    kwargs: dict[str, Any] = {}
    for name in d:
        if name in ("round_id", "network", "target_country"):
            kwargs[name] = _str(o, name, w)
        elif name in ("period_start", "period_end"):
            kwargs[name] = _date(o, name, w)
        elif name in o or name in ("budget_sat", "fee_reserve_sat"):
            kwargs[name] = _int(o, name, w)
    return GrantSettings(**kwargs)


def rollup_to_json(r: DailyRollup) -> dict[str, Any]:
    return {
        "proxy_id": r.proxy_id,
        "operator_id": r.operator_id,
        "network": r.network,
        "payout_address": r.payout_address,
        "day": r.day.isoformat(),
        "country": r.country,
        "control_attempts": r.control_attempts,
        "control_successes": r.control_successes,
        "target_attempts": r.target_attempts,
        "target_successes": r.target_successes,
        "throughput_kbps": r.throughput_kbps,
    } | (
        {
            "exit_operator_id": r.exit_operator_id,
            "exit_network": r.exit_network,
            "exit_payout_address": r.exit_payout_address,
        }
        if r.cascade
        else {}  # a one-hop proxy's row reads as it always did
    )


def rollup_from_json(obj: Any, index: int) -> DailyRollup:
    w = f"rollups[{index}]"
    o = _mapping(obj, w)
    _require(o, REQUIRED_ROLLUP, w)
    return DailyRollup(
        proxy_id=_str(o, "proxy_id", w),
        operator_id=_str(o, "operator_id", w),
        network=_str(o, "network", w),
        payout_address=_str(o, "payout_address", w),
        day=_date(o, "day", w),
        country=_str(o, "country", w),
        control_attempts=_int(o, "control_attempts", w),
        control_successes=_int(o, "control_successes", w),
        target_attempts=_int(o, "target_attempts", w),
        target_successes=_int(o, "target_successes", w),
        throughput_kbps=_int(o, "throughput_kbps", w, 0),
        **{key: _str(o, key, w) for key in _EXIT_FIELDS if key in o},
    )


_EXIT_FIELDS = ("exit_operator_id", "exit_network", "exit_payout_address")


def inputs_to_json(i: RoundInputs, *, with_chunks: bool = True) -> dict[str, Any]:
    """The inputs' JSON; ``with_chunks=False`` leaves a /2 round's chunks out (the
    manifest stands for them: what is signed, and a head to stream the chunks into)."""
    rest = {
        "carried_in": [
            {
                "operator_id": c.operator_id,
                "payout_address": c.payout_address,
                "amount_sat": c.amount_sat,
            }
            for c in i.carried_in
        ],
        "prior_service_days": dict(sorted(i.prior_service_days.items())),
        "signatures": [
            {"key_id": s.key_id, "algorithm": s.algorithm, "signature": s.signature}
            for s in i.signatures
        ],
    }
    if i.chunks is not None:
        return {
            "format": INPUTS_FORMAT_2,
            "manifest": manifest(i.chunks),
            **({"chunks": list(i.chunks)} if with_chunks else {}),
            **rest,
        }
    return {"rollups": [rollup_to_json(r) for r in i.rollups], **rest}


def inputs_from_json(obj: Any, stored: StoredChunks | None = None) -> RoundInputs:
    """The inputs from their JSON, every chunk checked against the manifest and every
    entry checked; or, with ``stored`` (/2 only: ``obj`` without its chunks), the
    chunks read from a file and checked as they are read (:class:`StoredChunks`)."""
    o = _mapping(obj, "inputs")
    fmt = o.get("format", INPUTS_FORMAT)
    chunks: tuple[str, ...] | StoredChunks | None = None
    if stored is not None:
        if fmt != INPUTS_FORMAT_2:
            raise InputError(f"inputs: chunks read apart need format {INPUTS_FORMAT_2!r}")
        _require(o, ("manifest",), "inputs file")
        chunks = stored
        rollups: tuple[DailyRollup, ...] = ()
    elif fmt == INPUTS_FORMAT_2:
        _require(o, ("manifest", "chunks"), "inputs file")
        chunks = _checked_chunks(o.get("manifest"), o.get("chunks"))
        for n, text in enumerate(chunks):
            proxy_days_from_chunk(text, n)  # every entry checked now, kept as text
        rollups = ()
    elif fmt == INPUTS_FORMAT:
        _require(o, ("rollups",), "inputs file")
        rollups = tuple(
            rollup_from_json(r, n) for n, r in enumerate(_list(o.get("rollups"), "rollups"))
        )
    else:
        raise InputError(
            f"inputs: unknown format {fmt!r} (expected {INPUTS_FORMAT!r} or {INPUTS_FORMAT_2!r})"
        )
    carried = []
    for n, c in enumerate(_list(o.get("carried_in", []), "carried_in")):
        w = f"carried_in[{n}]"
        cm = _mapping(c, w)
        carried.append(
            CarriedAmount(
                operator_id=_str(cm, "operator_id", w),
                payout_address=_str(cm, "payout_address", w),
                amount_sat=_int(cm, "amount_sat", w),
            )
        )
    prior_raw = _mapping(o.get("prior_service_days", {}), "prior_service_days")
    prior: dict[str, int] = {}
    for proxy, days in prior_raw.items():
        if type(days) is not int or days < 0:
            raise InputError(f"prior_service_days[{proxy}]: must be a non-negative integer")
        prior[proxy] = days
    sigs = []
    for n, s in enumerate(_list(o.get("signatures", []), "signatures")):
        w = f"signatures[{n}]"
        sm = _mapping(s, w)
        sigs.append(
            InputSignature(
                key_id=_str(sm, "key_id", w),
                algorithm=_str(sm, "algorithm", w),
                signature=_str(sm, "signature", w),
            )
        )
    return RoundInputs(rollups, tuple(carried), prior, tuple(sigs), chunks)


# --- Inputs /2: chunks of per-proxy columns under a manifest of digests ----------------
#
# A /2 inputs value holds ``chunks``: JSON texts, each of at most CHUNK_PROXIES
# per-proxy groups::
#
#     {"first_day": "2026-10-01", "proxies": [
#        {"proxy_id", "operator_id", "network", "payout_address", "country",
#         ["exit_operator_id", "exit_network", "exit_payout_address"],  (a cascade)
#         "day": [0, 1, ...]  (days after first_day),
#         "control_attempts": [...], "control_successes": [...], "target_attempts": [...],
#         "target_successes": [...], "throughput_kbps": [...]}  (one integer per day)]}
#
# and ``manifest``: the SHA-256 (hex) of each chunk's UTF-8 bytes, in order. The
# registry signs the manifest (grants.signing, context ``resist-grant-inputs/2``), not
# the chunks, so a signature is checked by hashing the chunks, never by putting a
# canonical form on the whole input set; and a chunk is kept as the exact text that
# was hashed, so it needs no canonical form at all.

CHUNK_COLUMNS = _COLUMNS = (
    "control_attempts", "control_successes", "target_attempts", "target_successes",
    "throughput_kbps",
)  # fmt: skip
_GROUP_TEXT = ("proxy_id", "operator_id", "network", "payout_address", "country")


def chunk_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def manifest(chunks: Sequence[str] | StoredChunks) -> list[str]:
    """The SHA-256 of each chunk, in order: what the registry signs for /2 inputs."""
    if isinstance(chunks, StoredChunks):
        return chunks.digests()
    return [chunk_digest(text) for text in chunks]


class StoredChunks:
    """/2 chunks kept where they are (a round file), read one at a time each time they
    are iterated, each checked against its digest in the manifest as it is read: a
    round over 100,000 proxies is verified holding one chunk, not the file.

    ``read`` gives the chunk texts in order, afresh at each call; ``manifest`` is the
    file's list of digests (its length checked against the chunks' count by whoever
    counted them)."""

    __slots__ = ("_checked", "_manifest", "_read")

    def __init__(self, read: Callable[[], Iterable[Any]], manifest: Sequence[Any]) -> None:
        self._read = read
        self._manifest = list(manifest)
        self._checked = False

    def __len__(self) -> int:
        return len(self._manifest)

    def __iter__(self) -> Iterator[str]:
        listed = self._manifest
        count = 0
        for n, text in enumerate(self._read()):
            count = n + 1
            if n < len(listed):
                yield _checked_chunk(n, listed[n], text)
        if count != len(listed):
            raise InputError(
                f"inputs: the manifest names {len(listed)} chunk(s) but {count} are present"
            )
        self._checked = True

    def digests(self) -> list[str]:
        """The manifest, once every chunk was read and found to match it."""
        if not self._checked:
            for _ in self:
                pass
        return list(self._manifest)


def chunk_rollups(
    rollups: Iterable[DailyRollup], max_proxies: int = CHUNK_PROXIES
) -> tuple[str, ...]:
    """The rollups as /2 chunk texts: grouped per proxy (and its fields), by proxy id."""
    if max_proxies < 1:
        raise InputError(f"a chunk holds at least one proxy: {max_proxies}")
    groups: dict[tuple[str, ...], list[DailyRollup]] = {}
    for r in rollups:
        key = (
            r.proxy_id, r.operator_id, r.network, r.payout_address, r.country,
            r.exit_operator_id, r.exit_network, r.exit_payout_address,
        )  # fmt: skip
        groups.setdefault(key, []).append(r)
    ordered = sorted(groups.items())
    out = []
    for start in range(0, len(ordered), max_proxies):
        part = ordered[start : start + max_proxies]
        first = min(r.day for _, rows in part for r in rows)
        proxies = []
        for fields, rows in part:
            rows.sort(key=lambda r: r.day)
            entry: dict[str, Any] = dict(zip(_GROUP_TEXT, fields[:5], strict=True))
            if fields[5]:
                entry |= dict(zip(_EXIT_FIELDS, fields[5:], strict=True))
            entry["day"] = [(r.day - first).days for r in rows]
            for col in _COLUMNS:
                entry[col] = [getattr(r, col) for r in rows]
            proxies.append(entry)
        out.append(chunk_text(first, proxies))
    return tuple(out)


def chunk_text(first_day: dt.date, proxies: Sequence[Mapping[str, Any]]) -> str:
    """One chunk's text: its per-proxy entries (days counted from ``first_day``)."""
    return canonical_json({"first_day": first_day.isoformat(), "proxies": proxies})


def chunked(inputs: RoundInputs, max_proxies: int = CHUNK_PROXIES) -> RoundInputs:
    """The same inputs in format /2 (unsigned: a /1 signature does not cover them)."""
    texts = chunk_rollups(inputs.rows(), max_proxies)
    return dataclasses.replace(inputs, rollups=(), signatures=(), chunks=texts)


def _checked_chunks(manifest_value: Any, chunks_value: Any) -> tuple[str, ...]:
    """The chunk texts, after checking each against its digest in the manifest."""
    listed = _list(manifest_value, "manifest")
    chunks = _list(chunks_value, "chunks")
    if len(listed) != len(chunks):
        raise InputError(
            f"inputs: the manifest names {len(listed)} chunk(s) but {len(chunks)} are present"
        )
    return tuple(
        _checked_chunk(n, digest, text)
        for n, (digest, text) in enumerate(zip(listed, chunks, strict=True))
    )


def _checked_chunk(n: int, digest: Any, text: Any) -> str:
    if not isinstance(digest, str) or not isinstance(text, str):
        raise InputError(f"chunks[{n}]: the chunk and its manifest digest must be strings")
    if chunk_digest(text) != digest:
        raise InputError(
            f"chunks[{n}]: its SHA-256 does not match manifest[{n}] "
            "(the chunk was changed, truncated or reordered)"
        )
    return text


@dataclass(frozen=True, slots=True)
class ProxyDays:
    """One per-proxy entry of a /2 chunk: the proxy's fields once, its days as columns
    (``day[i]`` days after ``first_day``); checked as its rows would be."""

    proxy_id: str
    operator_id: str
    network: str
    payout_address: str
    country: str
    exit_operator_id: str
    exit_network: str
    exit_payout_address: str
    first_day: dt.date
    day: list[int]
    control_attempts: list[int]
    control_successes: list[int]
    target_attempts: list[int]
    target_successes: list[int]
    throughput_kbps: list[int]

    def rows(self) -> Iterator[DailyRollup]:
        """The entry as /1 rows (one object per day: for views and tests, not the rule)."""
        for n, d in enumerate(self.day):
            yield self._row(n, d)

    def _row(self, n: int, d: Any) -> DailyRollup:
        return DailyRollup(
            proxy_id=self.proxy_id,
            operator_id=self.operator_id,
            network=self.network,
            payout_address=self.payout_address,
            day=self.first_day + dt.timedelta(days=d),
            country=self.country,
            control_attempts=self.control_attempts[n],
            control_successes=self.control_successes[n],
            target_attempts=self.target_attempts[n],
            target_successes=self.target_successes[n],
            throughput_kbps=self.throughput_kbps[n],
            exit_operator_id=self.exit_operator_id,
            exit_network=self.exit_network,
            exit_payout_address=self.exit_payout_address,
        )

    def check(self, where: str) -> None:
        """Refuse what a /1 row of it would refuse, with the same message after ``where``;
        the values are checked a column at a time, and row by row only when one is bad."""
        try:
            self._check(where)
        except InputError as exc:
            if str(exc).startswith(where):
                raise
            raise InputError(f"{where}: {exc}") from None

    def _check(self, where: str) -> None:
        ca, cs = self.control_attempts, self.control_successes
        ta, ts = self.target_attempts, self.target_successes
        day, tp = self.day, self.throughput_kbps
        if not day:
            raise InputError(f"{where}: a proxy's entry has at least one day")
        # every check a C-level pass over a column (map, min, max), no Python loop
        if not (
            self.proxy_id
            and self.operator_id
            and self.payout_address
            and set(map(type, itertools.chain(day, ca, cs, ta, ts, tp))) == _INT
            and min(day) >= 0
            and max(day) <= _MAX_DAY_OFFSET
            and min(cs) >= 0
            and min(ts) >= 0
            and min(tp) >= 0
            and all(map(operator.le, cs, ca))
            and all(map(operator.le, ts, ta))
        ):
            for n, d in enumerate(self.day):
                if type(d) is not int or not 0 <= d <= _MAX_DAY_OFFSET:
                    raise InputError(f"{where}: a day must be a non-negative integer: {d!r}")
                self._row(n, d)  # raises the row's own error
            raise InputError(f"{where}: proxy_id, operator_id and payout_address are required")
        check_network(self.network, f"{where} ({self.proxy_id})")
        exit_fields = (self.exit_operator_id, self.exit_network, self.exit_payout_address)
        if any(exit_fields):
            self._row(0, self.day[0])  # a cascade's exit fields, checked as a row's


_MAX_DAY_OFFSET = 366_000
_INT = {int}


def proxy_days_from_chunk(text: str, index: int) -> list[ProxyDays]:
    """The per-proxy entries of one /2 chunk, each checked (one clear error if not)."""
    w = f"chunks[{index}]"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{w} is not JSON: {exc}") from None
    o = _mapping(obj, w)
    first = _date(o, "first_day", w)
    out = []
    for n, p in enumerate(_list(o.get("proxies"), f"{w}.proxies")):
        pw = f"{w}.proxies[{n}]"
        plain = _plain_entry(p, first)  # the usual shape, taken without a check per field
        if plain is not None:
            plain.check(pw)
            out.append(plain)
            continue
        pm = _mapping(p, pw)
        _require(pm, (*_GROUP_TEXT, "day", *_COLUMNS), pw)
        unknown = set(pm) - {*_GROUP_TEXT, *_EXIT_FIELDS, "day", *_COLUMNS}
        if unknown:
            raise InputError(f"{pw}: unknown fields {sorted(unknown)}")
        fields: dict[str, Any] = {k: _str(pm, k, pw) for k in _GROUP_TEXT}
        fields |= {k: _str(pm, k, pw) if k in pm else "" for k in _EXIT_FIELDS}
        days = _list(pm.get("day"), f"{pw}.day")
        fields |= {col: _list(pm.get(col), f"{pw}.{col}") for col in _COLUMNS}
        if any(len(fields[col]) != len(days) for col in _COLUMNS):
            raise InputError(f"{pw}: every column must have one value per day ({len(days)})")
        entry = ProxyDays(first_day=first, day=list(days), **fields)
        entry.check(pw)
        out.append(entry)
    return out


_ENTRY_KEYS = frozenset((*_GROUP_TEXT, "day", *_COLUMNS))
_CASCADE_KEYS = _ENTRY_KEYS | frozenset(_EXIT_FIELDS)
_NO_EXIT = ("", "", "")


def _plain_entry(p: Any, first: dt.date) -> ProxyDays | None:
    """An entry of exactly the expected fields, texts where texts go and lists of one
    length where columns go, as it stands (its values checked by ``ProxyDays.check``);
    None for anything else, which the field-by-field reading then explains."""
    if type(p) is not dict:
        return None
    keys = p.keys()
    cascade = keys == _CASCADE_KEYS
    if not cascade and keys != _ENTRY_KEYS:
        return None
    texts = [p[k] for k in _GROUP_TEXT]
    texts += [p[k] for k in _EXIT_FIELDS] if cascade else _NO_EXIT
    day, ca, cs, ta, ts, tp = columns = [p["day"], *(p[c] for c in _COLUMNS)]
    if not all(type(t) is str for t in texts) or not all(type(c) is list for c in columns):
        return None
    if len({len(c) for c in columns}) != 1:
        return None
    proxy_id, operator_id, network, payout, country, exit_op, exit_net, exit_payout = texts
    return ProxyDays(
        proxy_id, operator_id, network, payout, country, exit_op, exit_net, exit_payout,
        first, day, ca, cs, ta, ts, tp,
    )  # fmt: skip


def rollups_from_chunk(text: str, index: int) -> list[DailyRollup]:
    """The rows of one /2 chunk, as /1 rows."""
    return [r for entry in proxy_days_from_chunk(text, index) for r in entry.rows()]


AWARD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Award))
"""The award's fields in order: its JSON keys, CSV columns and API fields (one list)."""
_AWARD_TEXT = frozenset(f for f, t in get_type_hints(Award).items() if t is str)


def award_to_json(a: Award) -> dict[str, Any]:
    return {f: getattr(a, f) for f in AWARD_FIELDS}


def award_from_json(obj: Any, where: str) -> Award:
    o = _mapping(obj, where)
    values: dict[str, Any] = {
        f: (_str if f in _AWARD_TEXT else _int)(o, f, where) for f in AWARD_FIELDS
    }
    return Award(**values)


def result_to_json(r: RoundResult) -> dict[str, Any]:
    return {
        "awards": [award_to_json(a) for a in r.awards],
        "pool_sat": r.pool_sat,
        "distributed_sat": r.distributed_sat,
        "returned_sat": r.returned_sat,
        "ignored_rollups": r.ignored_rollups,
        "totals": {
            "paid_sat": r.paid_sat,
            "carried_in_sat": r.carried_in_sat,
            "carried_out_sat": r.carried_out_sat,
        },
    }


def result_from_json(obj: Any) -> RoundResult:
    o = _mapping(obj, "result")
    awards = _list(o.get("awards"), "result.awards")
    return RoundResult(
        awards=tuple(award_from_json(a, f"result.awards[{n}]") for n, a in enumerate(awards)),
        pool_sat=_int(o, "pool_sat", "result"),
        distributed_sat=_int(o, "distributed_sat", "result"),
        returned_sat=_int(o, "returned_sat", "result"),
        ignored_rollups=_int(o, "ignored_rollups", "result"),
    )


def state_to_json(s: RoundState) -> dict[str, Any]:
    out: dict[str, Any] = {"status": s.status.value}
    if s.digest is not None:
        out["digest"] = s.digest
    if s.txid is not None:
        out["txid"] = s.txid
    return out


def state_from_json(obj: Any) -> RoundState:
    o = _mapping(obj, "state")
    try:
        status = RoundStatus(o.get("status"))
    except ValueError:
        raise InputError(f"state: unknown status {o.get('status')!r}") from None
    digest = o.get("digest")
    txid = o.get("txid")
    if digest is not None and not isinstance(digest, str):
        raise InputError("state.digest must be a string")
    if txid is not None and not isinstance(txid, str):
        raise InputError("state.txid must be a string")
    return RoundState(status, digest, txid)


def round_to_json(r: GrantRound) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "settings": settings_to_json(r.settings),
        "inputs": inputs_to_json(r.inputs),
        "result": result_to_json(r.result),
        "state": state_to_json(r.state),
    }


def round_from_json(obj: Any, stored: StoredChunks | None = None) -> GrantRound:
    """The round from its JSON (``stored``: its /2 chunks read apart, see
    :func:`inputs_from_json`)."""
    o = _mapping(obj, "round")
    if o.get("format") != FORMAT:
        raise InputError(f"not a round file (format {o.get('format')!r}, expected {FORMAT!r})")
    return GrantRound(
        settings=settings_from_json(o.get("settings")),
        inputs=inputs_from_json(o.get("inputs"), stored),
        result=result_from_json(o.get("result")),
        state=state_from_json(o.get("state", {"status": "draft"})),
    )


def round_inputs_file_from_json(obj: Any) -> tuple[GrantSettings, RoundInputs]:
    """Parse the file ``resist grants compute`` reads: settings plus inputs in one object."""
    o = _mapping(obj, "inputs file")
    fmt = o.get("format", INPUTS_FORMAT)
    if fmt not in (INPUTS_FORMAT, INPUTS_FORMAT_2):
        raise InputError(
            f"not an inputs file (format {fmt!r}, expected {INPUTS_FORMAT!r} "
            f"or {INPUTS_FORMAT_2!r})"
        )
    need = ("rollups",) if fmt == INPUTS_FORMAT else ("manifest", "chunks")
    _require(o, ("settings", *need), "inputs file")
    return settings_from_json(o.get("settings")), inputs_from_json(o)


def round_inputs_file_to_json(settings: GrantSettings, inputs: RoundInputs) -> dict[str, Any]:
    return {
        "format": INPUTS_FORMAT,  # replaced by the inputs' own "format" when /2
        "settings": settings_to_json(settings),
        **inputs_to_json(inputs),
    }


def example_inputs_file() -> dict[str, Any]:
    """A complete inputs file for `resist grants compute --example`: two operators'
    proxies measured on two days from a control vantage and from inside RU, regtest
    addresses nobody holds a key for."""
    day = dt.date(2026, 10, 1)
    settings = GrantSettings(
        round_id="2026-10-RU", network="regtest", target_country="RU", period_start=day,
        period_end=day + dt.timedelta(days=1), budget_sat=1_000_000, fee_reserve_sat=10_000,
    )  # fmt: skip
    rollups = tuple(
        DailyRollup(
            proxy_id=proxy,
            operator_id=operator,
            network=network,
            payout_address=address,
            day=day + dt.timedelta(days=n),
            country="RU",
            control_attempts=24,
            control_successes=24,
            target_attempts=24,
            target_successes=reached,
            throughput_kbps=0,
        )
        for proxy, operator, network, address, reached in (
            ("1", "alice", "203.0.113.0/24", "bcrt1qelwna30f4qae2tlkfkx7kyfuxz9kqh7wf7u5l5", 24),
            ("2", "bob", "198.51.100.0/24", "bcrt1q6yejutxy0u2qkhhpgmzd6yllk4967ftarsaxkd", 20),
        )
        for n in range(2)
    )
    return round_inputs_file_to_json(settings, RoundInputs(rollups, (), {}, ()))
