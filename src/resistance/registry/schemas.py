"""Request and response bodies of the HTTP API (they make the OpenAPI document)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from resistance.grants.model import (
    CASCADE_EXIT_DEFAULT_BP,
    CASCADE_EXIT_MAX_BP,
    CASCADE_EXIT_MIN_BP,
    MAX_SAT,
    Award,
)
from resistance.probe.batch import PROXY_ID_MAX

#: A row id in a path: the id columns are 32-bit, so larger ids are refused (422)
#: before a query could overflow the column (PostgreSQL answers that with an error).
RowIdPath = Annotated[int, Path(ge=1, le=PROXY_ID_MAX)]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)]
#: An account name in a path, held to the same rule as in a body (422, never a 5xx).
NamePath = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]
Credential = Annotated[str, Field(min_length=1, max_length=255)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    error: str


class Health(BaseModel):
    status: Literal["ok"]


class SignupRequest(Strict):
    name: Name


class SignupResponse(BaseModel):
    operator_id: int
    name: str
    token: str = Field(description="Shown once; the registry keeps only its hash.")


class OperatorView(BaseModel):
    operator_id: int
    name: str
    created_at: int
    payout_address: str | None
    payout_type: str | None


class OperatorSummary(OperatorView):
    proxies: int = Field(description="How many proxies the operator has registered.")


class OperatorList(BaseModel):
    operators: list[OperatorSummary]


class PayoutRequest(Strict):
    address: Annotated[str, Field(min_length=1, max_length=200)]


class PayoutView(BaseModel):
    address: str
    type: str
    network: str


class EndpointModel(Strict):
    host: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        description="An IP literal, or a DNS name: the registry resolves it, checks every "
        "address and proves control at them; the directory carries the name."
    )
    port: Annotated[int, Field(ge=1, le=65535)]


class NodeStatement(Strict):
    version: Literal[2]
    operator_id: Annotated[int, Field(ge=1, le=PROXY_ID_MAX)] = Field(
        description="The operator account the statement is for: posted with another "
        "account's token it is refused."
    )
    endpoint: EndpointModel
    protocols: Annotated[list[Literal["socks5"]], Field(min_length=1, max_length=4)]
    public_key: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$")]
    probe_user: Credential
    probe_password: Credential
    timestamp: Annotated[int, Field(ge=0, le=2**53)]
    nonce: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    tls_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        default=None,
        description="The node's SOCKS5-inside-TLS port: challenged inside TLS, its "
        "certificate's SHA-256 recorded and published as the clients' pin.",
    )


class UserCredential(Strict):
    username: Credential
    password: Credential


class HopCredential(Strict):
    """A bridge's own user on its exit: proves the exit's operator agreed to the
    cascade (the registry logs in with it once); never stored nor published."""

    exit_id: int = Field(
        ge=1, le=PROXY_ID_MAX, description="The exit's proxy_id (registered with role exit)."
    )
    username: Credential
    password: Credential


class RegistrationRequest(Strict):
    statement: NodeStatement
    signature: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{86}$")]
    public: bool = False
    users: Annotated[list[UserCredential], Field(max_length=16)] = []
    #: "exit": a node bridges relay to, never published (issue 24).
    role: Literal["proxy", "exit"] = "proxy"
    #: Set for a bridge: the exit it relays to, and its credential there.
    exit: HopCredential | None = None


class TlsListenerView(BaseModel):
    port: int
    sha256: str = Field(description="SHA-256 (hex) of the DER certificate: the clients' pin.")


class ProxyView(BaseModel):
    proxy_id: int
    endpoint: dict[str, Any]
    network: str
    public_key: str
    protocols: list[str]
    public: bool
    status: str
    registered_at: int
    verified_at: int
    tls: TlsListenerView | None = None
    #: A WireGuard endpoint's server key (``protocols`` is ["wireguard"]).
    wg_public_key: str | None = None
    #: An MTProto proxy's mode and fake-TLS domain (``protocols`` is ["mtproto"]).
    mtproto: dict[str, Any] | None = None
    #: "exit" or "bridge" in a cascade, else absent.
    cascade_role: str | None = None
    #: A bridge's exit (its proxy_id; the exit's address is never published).
    exit_id: int | None = None
    #: A bridge's per-hop verdict: works, bridge-unreachable, hop-blocked, exit-down, unknown.
    hop: str | None = None
    #: When the endpoint is a DNS name: the addresses control was proven at.
    addresses: list[str] | None = None


class ProxyList(BaseModel):
    proxies: list[ProxyView]


class AssignedProxy(BaseModel):
    endpoint: dict[str, Any]
    protocols: list[str]
    credentials: list[dict[str, Any]]
    node_key: str
    tls: TlsListenerView | None = None


class Assignment(BaseModel):
    day: str
    proxies: list[AssignedProxy]


class SignatureEntry(BaseModel):
    key_id: str
    signature: str


class SignedDirectoryBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: str
    document: dict[str, Any]
    signatures: list[SignatureEntry]


class KeyView(BaseModel):
    key_id: str
    public_key: str
    algorithm: Literal["ed25519"]


class KeyList(BaseModel):
    keys: list[KeyView]


class Published(BaseModel):
    serial: int
    proxies: int


# --- probes ---------------------------------------------------------------------------

Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


class ProbeCreateRequest(Strict):
    name: Name
    country: Country
    control: bool = False
    public_key: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$")]


class ProbeView(BaseModel):
    probe_id: int
    name: str
    country: str
    control: bool
    public_key: str
    created_at: int


class ProbeCreated(ProbeView):
    token: str = Field(description="Shown once; the registry keeps only its hash.")


class ProbeList(BaseModel):
    probes: list[ProbeView]


class ProbePage(BaseModel):
    """Which probes of the fleet status to show (unknown query parameters are refused)."""

    model_config = ConfigDict(extra="forbid")
    offset: int = Field(0, ge=0, le=2**31, description="Skip this many probes (by id).")
    limit: int = Field(100, ge=1, le=500, description="Show at most this many.")


class ProbeStatusView(BaseModel):
    probe_id: int
    name: str
    country: str
    control: bool
    network: str = Field(description='Its vantage network: "control", or its country.')
    live: bool = Field(description="Its last batch is at most 1.5 rounds old.")
    share: int = Field(description="Active proxies it measures now (0 while silent).")
    last_batch_at: int | None
    last_assignment_at: int | None
    compared: int = Field(description="Proxies where its peers' latest results had a majority.")
    disagreed: int = Field(description="Of those, where its own latest result went against it.")
    disagreement: float | None = Field(description="disagreed / compared; null if none.")
    flagged: bool = Field(
        description="Outvoted too often: lying or broken; its evidence does not vote while flagged."
    )


class ProbeFleetStatus(BaseModel):
    now: int
    round_seconds: int
    replicas: int = Field(description="Probes of each vantage network per proxy.")
    active_proxies: int
    total: int = Field(description="Probe accounts in all; `probes` is one page of them.")
    offset: int
    limit: int
    probes: list[ProbeStatusView]


class CanaryView(BaseModel):
    host: str
    port: int
    public_key: str


class ProbeTargetView(BaseModel):
    proxy_id: int
    host: str
    port: int
    username: str
    password: str
    due_ms: int = Field(description="When to check it, in ms after the round starts.")
    protocol: Literal["socks5", "wireguard", "amneziawg", "mtproto"] = "socks5"
    wg_public_key: str | None = Field(
        default=None, description="For WireGuard and AmneziaWG: the server key to handshake with."
    )
    amnezia: dict[str, Any] | None = Field(
        default=None,
        description="For AmneziaWG: the obfuscation parameters (jc..h4, i1..i5). Only probes "
        "see them; the directory never carries them.",
    )
    mtproto_secret: str | None = Field(
        default=None,
        description="For MTProto: the secret (hex, with its dd/ee prefix and domain) to "
        "connect with. Only probes see it; the directory never carries it.",
    )
    control_ports: list[int] | None = Field(
        default=None, description="Other listeners of the same host, for a failed check's controls."
    )
    addresses: list[str] | None = Field(
        default=None,
        description="When host is a DNS name: the addresses control was proven at. The probe "
        "resolves the name per measurement and dials the first of these it resolves to.",
    )
    outside_ok: bool | None = Field(
        default=None, description="Whether the control vantages' latest check of it worked."
    )


class ControlProxyView(BaseModel):
    host: str
    port: int
    username: str
    password: str


class ProbeAssignment(BaseModel):
    vantage: str
    country: str
    control: bool
    issued_at: int
    round_seconds: int
    canary: CanaryView | None
    proxies: list[ProbeTargetView]
    control_proxy: ControlProxyView | None = Field(
        default=None, description="A proxy up and on no censor's list, for control checks."
    )


class ProbeBatchBody(Strict):
    format: Literal["resist-probe-batch/1"]
    document: dict[str, Any]
    signature: Annotated[str, Field(min_length=1, max_length=100)]


class BatchReceipt(BaseModel):
    batch_id: str
    stored: bool = Field(description="False when this batch id was already stored (a retry).")
    results: int = Field(description="Results counted.")
    not_counted: list[int] = Field(
        default=[],
        description="Proxies some or all of whose results are kept in the signed batch "
        "but count for nothing (listed on the first upload only).",
    )
    why_not_counted: dict[str, str] = Field(
        default={},
        description="Why, per proxy id of `not_counted`: outside this probe's share, not in "
        "its assignment, or measured at an address the proxy was not proven at.",
    )


class VerdictChange(BaseModel):
    at: int
    status: str
    blocked_in: list[str]
    previous: str


class ProxyStatusView(BaseModel):
    proxy_id: int
    status: str
    blocked_in: list[str]
    since: int | None
    history: list[VerdictChange]


# --- grant rounds ---------------------------------------------------------------------

ROUND_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
RoundId = Annotated[str, Field(min_length=1, max_length=64, pattern=ROUND_ID_PATTERN)]
#: The same in a path (the body's round id always had a pattern; the path's now too).
RoundIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=ROUND_ID_PATTERN)]
IsoDate = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
Sat = Annotated[int, Field(ge=0, le=MAX_SAT)]
BasisPoints = Annotated[int, Field(ge=1, le=10_000)]
#: A cascade's part for its exit's operator (the rest to its bridge's), issue 24.
CascadeExitBp = Annotated[int, Field(ge=CASCADE_EXIT_MIN_BP, le=CASCADE_EXIT_MAX_BP)]
Exponent = Annotated[int, Field(ge=1, le=64)]
Attempts = Annotated[int, Field(ge=1, le=1_000_000)]
Kbps = Annotated[int, Field(ge=0, le=1_000_000_000)]
Days = Annotated[int, Field(ge=0, le=36_600)]


class RoundCreateRequest(Strict):
    """A round for a period; the registry builds its inputs from its own rollups."""

    round_id: RoundId | None = Field(None, description="Default: 2026-11-RU for a month.")
    period_start: IsoDate
    period_end: IsoDate = Field(description="Included.")
    target_country: Country = "RU"
    budget_sat: Sat
    fee_reserve_sat: Sat = 50_000
    min_payout_sat: Sat = 10_000
    performance_exponent: Exponent = 20
    min_attempts: Attempts = 1
    capacity_reference_kbps: Kbps = 0
    probation_days: Days = 0
    operator_cap_bp: BasisPoints = 10_000
    network_cap_bp: BasisPoints = 10_000
    cascade_exit_bp: CascadeExitBp = CASCADE_EXIT_DEFAULT_BP


class RoundRecomputeRequest(Strict):
    """New settings for a draft (each optional); the inputs are always built afresh."""

    budget_sat: Sat | None = None
    fee_reserve_sat: Sat | None = None
    min_payout_sat: Sat | None = None
    performance_exponent: Exponent | None = None
    min_attempts: Attempts | None = None
    capacity_reference_kbps: Kbps | None = None
    probation_days: Days | None = None
    operator_cap_bp: BasisPoints | None = None
    network_cap_bp: BasisPoints | None = None
    cascade_exit_bp: CascadeExitBp | None = None


class MarkPaidRequest(Strict):
    tx_hex: Annotated[str, Field(min_length=2, max_length=800_000, pattern=r"^[0-9a-fA-F]+$")]
    change_descriptor: Annotated[str, Field(min_length=1, max_length=2000)]


@dataclass(frozen=True, slots=True)
class AwardView(Award):
    """One award as the API shows it: the grants model's own fields, in order."""


class RoundSummary(BaseModel):
    round_id: str
    status: Literal["draft", "approved", "paid"]
    network: str
    target_country: str
    period_start: str
    period_end: str
    budget_sat: int
    paid_sat: int
    payouts: int
    digest: str | None
    txid: str | None
    created_at: int
    updated_at: int
    approved_at: int | None
    paid_at: int | None


class RoundView(RoundSummary):
    settings: dict[str, Any]
    pool_sat: int
    distributed_sat: int
    returned_sat: int
    ignored_rollups: int
    carried_in_sat: int
    carried_out_sat: int
    rollups: int
    signatures: list[str] = Field(description="Key ids of the registry keys that signed.")
    skipped_operators: list[str] = Field(description="Left out: no payout address.")
    awards: list[AwardView]


class RoundList(BaseModel):
    rounds: list[RoundSummary]


class RoundFileBody(BaseModel):
    """A round file (``resistance.grants.round/1``), as ``resist grants`` reads it."""

    model_config = ConfigDict(extra="allow")
    format: str
    settings: dict[str, Any]
    inputs: dict[str, Any]
    result: dict[str, Any]
    state: dict[str, Any]


# --- the censor's registry, version by version (issue 25) ------------------------------


class BlocklistVersion(BaseModel):
    import_id: int
    source: str
    kind: str
    updated: str | None
    imported_at: int
    prefixes: int
    ranges: int = Field(description="Merged ranges in this version: its size.")
    added: int = Field(description="Ranges it has that the version before it had not.")
    removed: int = Field(description="Ranges the version before it had that it has not.")
    skipped: int


class BlocklistVersionList(BaseModel):
    versions: list[BlocklistVersion]
    next_before: int | None = Field(description="Pass as ?before= for older versions.")


class BlocklistDiff(BaseModel):
    version: BlocklistVersion
    change: Literal["added", "removed"]
    ranges: list[str] = Field(description="Prefixes (or first-last ranges), by start address.")
    next_after: str | None = Field(description="Pass as ?after= for the next page.")
