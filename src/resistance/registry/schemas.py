"""Request and response bodies of the HTTP API (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
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


class PayoutRequest(Strict):
    address: Annotated[str, Field(min_length=1, max_length=200)]


class PayoutView(BaseModel):
    address: str
    type: str
    network: str


class EndpointModel(Strict):
    host: Annotated[str, Field(min_length=1, max_length=64)]
    port: Annotated[int, Field(ge=1, le=65535)]


class NodeStatement(Strict):
    version: Literal[1]
    endpoint: EndpointModel
    protocols: Annotated[list[Literal["socks5"]], Field(min_length=1, max_length=4)]
    public_key: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$")]
    probe_user: Credential
    probe_password: Credential
    timestamp: Annotated[int, Field(ge=0, le=2**53)]
    nonce: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class UserCredential(Strict):
    username: Credential
    password: Credential


class RegistrationRequest(Strict):
    statement: NodeStatement
    signature: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{86}$")]
    public: bool = False
    users: Annotated[list[UserCredential], Field(max_length=16)] = []


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


class ProxyList(BaseModel):
    proxies: list[ProxyView]


class AssignedProxy(BaseModel):
    endpoint: dict[str, Any]
    protocols: list[str]
    credentials: list[dict[str, Any]]
    node_key: str


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


class ProbeAssignment(BaseModel):
    vantage: str
    country: str
    control: bool
    issued_at: int
    round_seconds: int
    canary: CanaryView | None
    proxies: list[ProbeTargetView]


class ProbeBatchBody(Strict):
    format: Literal["resist-probe-batch/1"]
    document: dict[str, Any]
    signature: Annotated[str, Field(min_length=1, max_length=100)]


class BatchReceipt(BaseModel):
    batch_id: str
    stored: bool = Field(description="False when this batch id was already stored (a retry).")
    results: int


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
