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
