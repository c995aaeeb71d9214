"""The probe's side of one check, sans-IO: bytes in, step progress out, bytes to send.

Theory of operation: unlike :class:`resistance.proto.socks5.ClientConnection`,
which pipelines everything to save round trips for users, the probe sends one
step at a time, so the step that failed is known exactly.  The machine starts
in GREETING; :meth:`ProbeExchange.start` returns the greeting.  Each call of
:meth:`ProbeExchange.receive` consumes bytes and returns the steps completed
(each with the bytes to send next); the current step is :attr:`step`.  A step
fails by raising :class:`StepFailed` with the step and how.  In TRANSFER the
downloaded bytes are compared with the expected stream as they arrive and
then dropped, so nothing bigger than a reply header is ever buffered.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from resistance.errors import ProtocolError
from resistance.probe import canary
from resistance.probe.check import Failure, Step
from resistance.proto.socks5 import (
    Address,
    AddressType,
    Command,
    Reply,
    client_auth,
    client_greeting,
    client_request,
    parse_reply,
)

MAX_HEADER_BUFFER = 1024


class StepFailed(Exception):
    def __init__(self, step: Step, failure: Failure, detail: str) -> None:
        super().__init__(f"{step.value}: {failure.value}: {detail}")
        self.step = step
        self.failure = failure
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Passed:
    """``step`` is complete; send ``send`` (maybe empty) and go on."""

    step: Step
    send: bytes = b""


@dataclass(frozen=True, slots=True)
class CanaryProof:
    nonce: bytes
    upload_sha256: bytes
    download: int
    signature: bytes


def target_address(host: str, port: int) -> Address:
    if ":" in host:
        return Address(AddressType.IPV6, host, port)
    if host.replace(".", "").isdigit():
        return Address(AddressType.IPV4, host, port)
    return Address(AddressType.DOMAIN, host, port)


class ProbeExchange:
    __slots__ = (
        "_buf",
        "_expected",
        "_got",
        "at",
        "canary_key",
        "download",
        "nonce",
        "password",
        "proof",
        "step",
        "target",
        "upload",
        "username",
    )

    def __init__(
        self,
        *,
        username: str | None,
        password: str | None,
        canary_host: str | None,
        canary_port: int,
        canary_key: Ed25519PublicKey | None,
        nonce: bytes,
        upload: bytes,
        download: int,
        at: int,
    ) -> None:
        self.username = username
        self.password = password or ""
        self.target = None if canary_host is None else target_address(canary_host, canary_port)
        self.canary_key = canary_key
        self.nonce = nonce
        #: When the check began (unix seconds): the canary's signed window must be near it.
        self.at = at
        self.upload = upload
        self.download = download
        self.step = Step.GREETING
        self.proof: CanaryProof | None = None
        self._buf = bytearray()
        self._expected = b""
        self._got = 0

    def start(self) -> bytes:
        return client_greeting(auth=self.username is not None)

    @property
    def done(self) -> bool:
        return self.step is Step.TRANSFER and self._got >= self.download and self.proof is not None

    def receive(self, data: bytes | bytearray | memoryview) -> list[Passed]:
        if self.step is Step.TRANSFER and self.proof is not None:
            return self._transfer(memoryview(data))
        self._buf += data
        passed: list[Passed] = []
        while True:
            before = self.step
            event = self._advance()
            if event is None:
                if len(self._buf) > MAX_HEADER_BUFFER:
                    raise StepFailed(self.step, Failure.WRONG_ANSWER, "answer too long")
                return passed
            passed.append(event)
            if self.step is Step.TRANSFER and self.proof is not None:
                rest = bytes(self._buf)
                self._buf.clear()
                if self.download == 0:
                    passed.append(Passed(Step.TRANSFER))
                passed.extend(self._transfer(memoryview(rest)))
                return passed
            if self.step is before:  # pragma: no cover - defensive
                return passed

    def _request(self) -> bytes:
        assert self.target is not None
        return client_request(Command.CONNECT, self.target)

    def _advance(self) -> Passed | None:
        buf = self._buf
        step = self.step
        if step is Step.GREETING:
            if len(buf) < 2:
                return None
            if buf[0] != 5:
                raise StepFailed(step, Failure.WRONG_ANSWER, f"not SOCKS5 (version {buf[0]})")
            wanted = 0 if self.username is None else 2
            if buf[1] == 0xFF:
                raise StepFailed(step, Failure.REFUSED, "no acceptable authentication method")
            if buf[1] != wanted:
                raise StepFailed(step, Failure.WRONG_ANSWER, f"method {buf[1]} not offered")
            del buf[:2]
            if self.username is None:
                self.step = Step.AUTH
                return self._after_auth(Step.GREETING)
            self.step = Step.AUTH
            return Passed(
                Step.GREETING, client_auth(self.username.encode(), self.password.encode())
            )
        if step is Step.AUTH:
            if len(buf) < 2:
                return None
            if buf[0] != 1:
                raise StepFailed(step, Failure.WRONG_ANSWER, "bad authentication answer")
            if buf[1] != 0:
                raise StepFailed(step, Failure.REFUSED, "credentials refused")
            del buf[:2]
            return self._after_auth(Step.AUTH)
        if step is Step.CONNECT:
            try:
                parsed = parse_reply(buf)
            except ProtocolError as exc:
                raise StepFailed(step, Failure.WRONG_ANSWER, str(exc)) from None
            if parsed is None:
                return None
            code, _bound, end = parsed
            del buf[:end]
            if code is not Reply.SUCCEEDED:
                raise StepFailed(step, Failure.REFUSED, f"proxy answered {code.name}")
            self.step = Step.CANARY
            return Passed(
                Step.CONNECT, canary.request_bytes(self.nonce, self.upload, self.download)
            )
        if step is Step.CANARY:
            if len(buf) < canary.SIGNATURE_BYTES:
                return None
            signature = bytes(buf[: canary.SIGNATURE_BYTES])
            del buf[: canary.SIGNATURE_BYTES]
            digest = hashlib.sha256(self.upload).digest()
            if self.canary_key is not None and not canary.verify_proof(
                self.canary_key, self.nonce, digest, self.download, signature, around=self.at
            ):
                raise StepFailed(step, Failure.WRONG_ANSWER, "canary signature does not verify")
            self.proof = CanaryProof(self.nonce, digest, self.download, signature)
            self._expected = canary.download_stream(self.nonce, signature, self.download)
            self.step = Step.TRANSFER
            return Passed(Step.CANARY)
        return None

    def _after_auth(self, step: Step) -> Passed:
        if self.target is None:  # no canary: the check ends after authentication
            self.step = Step.CONNECT
            return Passed(step)
        self.step = Step.CONNECT
        return Passed(step, self._request())

    def _transfer(self, view: memoryview) -> list[Passed]:
        if not view:
            return []
        end = self._got + len(view)
        if end > self.download:
            raise StepFailed(Step.TRANSFER, Failure.WRONG_ANSWER, "more bytes than asked for")
        if view != memoryview(self._expected)[self._got : end]:
            raise StepFailed(Step.TRANSFER, Failure.WRONG_ANSWER, "download is not the canary's")
        self._got = end
        return [Passed(Step.TRANSFER)] if end == self.download else []

    @property
    def received(self) -> int:
        return self._got
