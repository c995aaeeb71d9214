"""Signed batches of check results: what a probe uploads and the registry keeps.

File format (``resist-probe-batch/1``), a JSON object::

    {"format": "resist-probe-batch/1",
     "document": {"version": 1, "batch_id": HEX32, "vantage": NAME, "country": CC,
                  "probe_key": B64URL, "created_at": UNIX, "results": [RESULT, ...]},
     "signature": B64URL}

The signature is Ed25519 by the probe's own key (``probe_key``) over
``BATCH_CONTEXT + canonical_bytes(document)``.  A RESULT is::

    {"proxy_id": INT, "at": UNIX, "ok": BOOL,
     "step": STEP|null, "failure": FAILURE|null, "detail": TEXT,
     "tcp_us": INT|null, "connect_us": INT|null, "ttfb_us": INT|null,
     "throughput_kbps": INT|null,
     "canary": {"nonce": B64URL, "upload_sha256": B64URL, "download": INT,
                "signature": B64URL} | null}

A failed RESULT may add ``"diagnosis": {"mechanism": M, "frozen_at": N (frozen
only), "evidence": EVIDENCE}``: the mechanism the probe's control experiments
name and the evidence itself (:mod:`resistance.probe.diagnose`).  It is
checked here: the evidence must give that mechanism, and its main attempt
must agree with ``ok``.  Results without it (older probes) stay valid.
``canary`` is required when ``ok`` is true: it is the canary's signed answer
to a nonce bound to the probe's key, the proxy id and ``at``, which the
registry recomputes and checks (:mod:`resistance.probe.canary`).  A WireGuard check's RESULT adds
``"protocol": "wireguard"`` (absent means SOCKS5); its one step is
``handshake``, ``connect_us`` is the handshake's round trip, and it has no
canary (nothing goes through a probe peer); an AmneziaWG check's is the
same with ``"protocol": "amneziawg"``.  An MTProto check's RESULT adds
``"protocol": "mtproto"``; its steps are ``tcp``, ``handshake`` (fake-TLS)
and ``respq``, and it has no canary (the path ends at a data centre).
A check of a proxy registered by DNS name adds ``"address": IP``: the address
the probe resolved the name to and pinned for the whole measurement
(:mod:`resistance.net.resolve`).
:func:`parse_batch` accepts bytes from anywhere and either returns a checked
:class:`SignedBatch` or raises :class:`BatchError`; it never raises anything else.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from resistance.directory.canonical import CanonicalError, canonical_bytes, parse_strict
from resistance.directory.keys import b64url, b64url_decode, parse_public_key, verify_signature
from resistance.errors import ResistanceError
from resistance.net.resolve import is_ip_literal
from resistance.probe.check import Failure, Step
from resistance.probe.diagnose import Diagnosis, Evidence, diagnose
from resistance.probe.runner import CheckResult

FORMAT: Final = "resist-probe-batch/1"
VERSION: Final = 1
BATCH_CONTEXT: Final = b"resist-probe-batch/1\n"
MAX_RESULTS: Final = 50
MAX_BATCH_BYTES: Final = 60_000
MAX_DETAIL: Final = 120
#: The largest proxy id: the registry's id columns are 32-bit (PostgreSQL ``integer``).
PROXY_ID_MAX: Final = 2**31 - 1
BATCH_ID: Final = re.compile(r"[0-9a-f]{32}")
VANTAGE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
COUNTRY: Final = re.compile(r"[A-Z]{2}")
_STEPS = frozenset(s.value for s in Step)
_FAILURES = frozenset(f.value for f in Failure)
_RESULT_KEYS = frozenset(
    {
        "proxy_id",
        "at",
        "ok",
        "step",
        "failure",
        "detail",
        "tcp_us",
        "connect_us",
        "ttfb_us",
        "throughput_kbps",
        "canary",
    }
)
_DOC_KEYS = frozenset(
    {"version", "batch_id", "vantage", "country", "probe_key", "created_at", "results"}
)
_CANARY_KEYS = frozenset({"nonce", "upload_sha256", "download", "signature"})
PROTOCOLS: Final = ("socks5", "wireguard", "amneziawg", "mtproto")
#: Checked by one handshake, without a canary.
HANDSHAKE_PROTOCOLS: Final = ("wireguard", "amneziawg")
#: The steps an MTProto check may fail at.
MTPROTO_STEPS: Final = frozenset({Step.TCP.value, Step.HANDSHAKE.value, Step.RESPQ.value})


class BatchError(ResistanceError):
    """A batch was refused; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class CanaryEvidence:
    nonce: bytes
    upload_sha256: bytes
    download: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class ResultRecord:
    proxy_id: int
    at: int
    ok: bool
    step: str | None
    failure: str | None
    detail: str
    tcp_us: int | None
    connect_us: int | None
    ttfb_us: int | None
    throughput_kbps: int | None
    canary: CanaryEvidence | None
    protocol: str = "socks5"
    #: The mechanism a diagnosis named (None: no diagnosis recorded).
    mechanism: str | None = None
    #: Other transports of the node measured beside it: (name, ``ok`` or mechanism).
    transports: tuple[tuple[str, str], ...] = ()
    #: For a proxy registered by DNS name: the address this measurement pinned and dialled.
    address: str | None = None


@dataclass(frozen=True, slots=True)
class SignedBatch:
    batch_id: str
    vantage: str
    country: str
    probe_key: str
    created_at: int
    results: tuple[ResultRecord, ...]
    document: dict[str, Any]
    signature: bytes
    #: The document's canonical bytes (what the signature covers, without its context).
    canonical: bytes = b""

    def file_bytes(self, signature: str) -> bytes:
        """The canonical bytes of the whole batch file (``format``, ``document`` and
        ``signature`` as text), built around the document's canonical bytes already made
        for the signature check instead of encoding the document a second time."""
        return (
            b'{"document":'
            + self.canonical
            + b',"format":'
            + canonical_bytes(FORMAT)
            + b',"signature":'
            + canonical_bytes(signature)
            + b"}"
        )


def new_batch_id() -> str:
    return secrets.token_hex(16)


def result_json(result: CheckResult) -> dict[str, Any]:
    """A check result as a batch RESULT object."""
    v = result.verdict
    t = result.timings
    proof = result.proof
    protocol = result.target.protocol
    extra: dict[str, Any] = {"protocol": protocol} if protocol != "socks5" else {}
    if result.target.name is not None:  # registered by name: the address it pinned
        extra["address"] = result.target.host
    if result.diagnosis is not None and result.evidence is not None:
        extra["diagnosis"] = _diagnosis_json(result.diagnosis, result.evidence)
    if result.transports:
        extra["transports"] = {
            name: _diagnosis_json(diagnosis, evidence)
            for name, (evidence, diagnosis) in result.transports.items()
        }
    return {
        "proxy_id": result.target.proxy_id,
        "at": result.at,
        "ok": v.ok,
        "step": v.failed_step.value if v.failed_step else None,
        "failure": v.failure.value if v.failure else None,
        "detail": v.detail[:MAX_DETAIL],
        "tcp_us": t.tcp_us,
        "connect_us": t.connect_us,
        "ttfb_us": t.ttfb_us,
        "throughput_kbps": t.throughput_kbps,
        "canary": None
        if proof is None
        else {
            "nonce": b64url(proof.nonce),
            "upload_sha256": b64url(proof.upload_sha256),
            "download": proof.download,
            "signature": b64url(proof.signature),
        },
        **extra,
    }


def _diagnosis_json(diagnosis: Diagnosis, evidence: Evidence) -> dict[str, Any]:
    out: dict[str, Any] = {"mechanism": diagnosis.mechanism.value}
    if diagnosis.frozen_at is not None:
        out["frozen_at"] = diagnosis.frozen_at
    out["evidence"] = evidence.to_json()
    return out


def signed_message(document: Mapping[str, Any]) -> bytes:
    return BATCH_CONTEXT + canonical_bytes(document)


def sign_batch(
    *,
    key: Ed25519PrivateKey,
    probe_key: str,
    batch_id: str,
    vantage: str,
    country: str,
    created_at: int,
    results: Sequence[Mapping[str, Any]],
) -> bytes:
    """The canonical bytes of a signed batch file."""
    document = {
        "version": VERSION,
        "batch_id": batch_id,
        "vantage": vantage,
        "country": country,
        "probe_key": probe_key,
        "created_at": created_at,
        "results": [dict(r) for r in results],
    }
    signature = b64url(key.sign(signed_message(document)))
    return canonical_bytes({"format": FORMAT, "document": document, "signature": signature})


def _int(value: Any, name: str, *, low: int = 0, high: int = 2**62) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BatchError(f"{name} must be an integer in {low}..{high}")
    return value


def _opt_int(value: Any, name: str) -> int | None:
    return None if value is None else _int(value, name)


def _b64(value: Any, name: str, size: int) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * size:
        raise BatchError(f"{name} must be base64url of {size} bytes")
    try:
        raw = b64url_decode(value)
    except ValueError:
        raise BatchError(f"{name} must be base64url of {size} bytes") from None
    if len(raw) != size:
        raise BatchError(f"{name} must be base64url of {size} bytes")
    return raw


def _canary(value: Any, where: str) -> CanaryEvidence | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != _CANARY_KEYS:
        raise BatchError(f"{where}.canary must have exactly {sorted(_CANARY_KEYS)}")
    return CanaryEvidence(
        nonce=_b64(value["nonce"], f"{where}.canary.nonce", 16),
        upload_sha256=_b64(value["upload_sha256"], f"{where}.canary.upload_sha256", 32),
        download=_int(value["download"], f"{where}.canary.download", high=4 << 20),
        signature=_b64(value["signature"], f"{where}.canary.signature", 64),
    )


def _result(value: Any, index: int) -> ResultRecord:
    where = f"results[{index}]"
    if not isinstance(value, dict) or set(value) - _OPTIONAL_KEYS != _RESULT_KEYS:
        raise BatchError(f"{where} must be an object with exactly {sorted(_RESULT_KEYS)}")
    protocol = value.get("protocol", "socks5")
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise BatchError(f"{where}.protocol must be one of {', '.join(PROTOCOLS)}")
    ok = value["ok"]
    if not isinstance(ok, bool):
        raise BatchError(f"{where}.ok must be true or false")
    step, failure, detail = value["step"], value["failure"], value["detail"]
    if not isinstance(detail, str) or len(detail) > MAX_DETAIL:
        raise BatchError(f"{where}.detail must be text of at most {MAX_DETAIL} characters")
    if ok:
        if step is not None or failure is not None:
            raise BatchError(f"{where}: a successful result has no failed step")
    elif not (isinstance(step, str) and step in _STEPS) or not (
        isinstance(failure, str) and failure in _FAILURES
    ):
        raise BatchError(f"{where}: a failed result names its step and failure kind")
    record = ResultRecord(
        proxy_id=_int(value["proxy_id"], f"{where}.proxy_id", low=1, high=PROXY_ID_MAX),
        at=_int(value["at"], f"{where}.at"),
        ok=ok,
        step=step,
        failure=failure,
        detail=detail,
        tcp_us=_opt_int(value["tcp_us"], f"{where}.tcp_us"),
        connect_us=_opt_int(value["connect_us"], f"{where}.connect_us"),
        ttfb_us=_opt_int(value["ttfb_us"], f"{where}.ttfb_us"),
        throughput_kbps=_opt_int(value["throughput_kbps"], f"{where}.throughput_kbps"),
        canary=_canary(value["canary"], where),
        protocol=protocol,
        mechanism=_diagnosis(value["diagnosis"], ok, where) if "diagnosis" in value else None,
        transports=_transports(value.get("transports"), where),
        address=_address(value.get("address"), where),
    )
    if protocol in HANDSHAKE_PROTOCOLS:
        if record.canary is not None:
            raise BatchError(f"{where}: a WireGuard result has no canary")
        if step not in (None, Step.HANDSHAKE.value):
            raise BatchError(f"{where}: a WireGuard check has one step, handshake")
    elif protocol == "mtproto":
        if record.canary is not None:
            raise BatchError(f"{where}: an MTProto result has no canary")
        if step is not None and step not in MTPROTO_STEPS:
            raise BatchError(f"{where}: an MTProto check's steps are tcp, handshake and respq")
    elif step in (Step.HANDSHAKE.value, Step.RESPQ.value):
        raise BatchError(f"{where}: only WireGuard and MTProto checks have a {step} step")
    elif ok and record.canary is None:
        raise BatchError(f"{where}: a successful result must carry the canary's proof")
    return record


#: Transports a result may report beside its own (a node's TLS listener).
TRANSPORTS: Final = ("tls",)
_OPTIONAL_KEYS = frozenset({"protocol", "diagnosis", "transports", "address"})


def _address(value: Any, where: str) -> str | None:
    """The address a name's measurement pinned: an IP literal in its canonical form."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 45 or not is_ip_literal(value):
        raise BatchError(f"{where}.address must be an IP address")
    if str(ipaddress.ip_address(value)) != value:
        raise BatchError(f"{where}.address must be written as {ipaddress.ip_address(value)}")
    return value


def _transports(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not set(value) <= set(TRANSPORTS):
        raise BatchError(f"{where}.transports names only {', '.join(TRANSPORTS)}")
    found = []
    for name in sorted(value):
        item = value[name]
        if not isinstance(item, dict) or not isinstance(item.get("evidence"), dict):
            raise BatchError(f"{where}.transports.{name} must carry its evidence")
        main = item["evidence"].get("main")
        ok = isinstance(main, dict) and main.get("ok") is True
        found.append((name, _diagnosis(item, ok, f"{where}.transports.{name}")))
    return tuple(found)


def _diagnosis(value: Any, ok: bool, where: str) -> str:
    """The mechanism of a recorded diagnosis, once its evidence is shown to give it."""
    if not isinstance(value, dict) or not {"mechanism", "evidence"} <= set(value) <= {
        "mechanism",
        "frozen_at",
        "evidence",
    }:
        raise BatchError(f"{where}.diagnosis must have mechanism, evidence (and frozen_at)")
    try:
        evidence = Evidence.from_json(value["evidence"])
    except ValueError as exc:
        raise BatchError(f"{where}.diagnosis.evidence: {exc}") from None
    if evidence.main.ok != ok:
        raise BatchError(f"{where}.diagnosis: the evidence's main attempt contradicts ok")
    found = diagnose(evidence)
    if value["mechanism"] != found.mechanism.value or value.get("frozen_at") != found.frozen_at:
        raise BatchError(f"{where}.diagnosis: the evidence gives {found.mechanism.value}")
    return found.mechanism.value


def check_document(document: Any, signature: Any) -> SignedBatch:
    """Check a batch's shape and its signature by its own ``probe_key``."""
    if not isinstance(document, dict) or set(document) != _DOC_KEYS:
        raise BatchError(f"document must have exactly {sorted(_DOC_KEYS)}")
    if document["version"] != VERSION:
        raise BatchError(f"unsupported batch version {document['version']!r}")
    batch_id, vantage, country = document["batch_id"], document["vantage"], document["country"]
    if not isinstance(batch_id, str) or not BATCH_ID.fullmatch(batch_id):
        raise BatchError("batch_id must be 32 lowercase hex digits")
    if not isinstance(vantage, str) or not VANTAGE.fullmatch(vantage):
        raise BatchError("vantage must be a name of 1-64 letters, digits, '.', '_' or '-'")
    if not isinstance(country, str) or not COUNTRY.fullmatch(country):
        raise BatchError("country must be two capital letters (ISO 3166-1 alpha-2)")
    created_at = _int(document["created_at"], "created_at")
    results = document["results"]
    if not isinstance(results, list) or not 1 <= len(results) <= MAX_RESULTS:
        raise BatchError(f"results must be a list of 1-{MAX_RESULTS} results")
    records = tuple(_result(r, i) for i, r in enumerate(results))
    probe_key = document["probe_key"]
    try:
        if not isinstance(probe_key, str):
            raise ValueError("not text")
        key = parse_public_key(probe_key)
    except ValueError as exc:
        raise BatchError(f"probe_key is not an Ed25519 public key: {exc}") from None
    raw_signature = _b64(signature, "signature", 64)
    try:
        canonical = canonical_bytes(document)
    except CanonicalError as exc:
        raise BatchError(f"document has no canonical form: {exc}") from None
    if not verify_signature(key, raw_signature, BATCH_CONTEXT + canonical):
        raise BatchError("batch signature does not verify with its probe_key")
    return SignedBatch(
        batch_id, vantage, country, probe_key, created_at, records, document, raw_signature,
        canonical,
    )  # fmt: skip


def parse_batch(data: bytes) -> SignedBatch:
    """Parse and check a signed batch file (see the module docstring)."""
    if len(data) > MAX_BATCH_BYTES:
        raise BatchError(f"batch is larger than {MAX_BATCH_BYTES} bytes")
    try:
        outer = parse_strict(data)
    except CanonicalError as exc:
        raise BatchError(f"batch is not valid JSON: {exc}") from None
    if not isinstance(outer, dict) or set(outer) != {"format", "document", "signature"}:
        raise BatchError("batch must be an object with format, document and signature")
    if outer["format"] != FORMAT:
        raise BatchError(f"batch format must be {FORMAT!r}")
    return check_document(outer["document"], outer["signature"])


def verify_canary(record: ResultRecord, key: Ed25519PublicKey, *, probe_key: str) -> bool:
    """Whether the result's canary proof is the answer to ``probe_key``'s check of its proxy
    at its time (see :mod:`resistance.probe.canary`, "What a proof backs")."""
    from resistance.probe.canary import verify_bound

    c = record.canary
    return c is not None and verify_bound(
        key, probe_key=probe_key, proxy_id=record.proxy_id, at=record.at, nonce=c.nonce,
        upload_sha256=c.upload_sha256, download=c.download, signature=c.signature,
    )  # fmt: skip
