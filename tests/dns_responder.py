"""A DNS server for tests on 127.0.0.1: answers A and AAAA from a table the test edits.

Names absent from the table get NXDOMAIN; a name mapped to ``None`` gets no
answer at all (a resolver that times out).  CNAMEs: a table value that is a
name (no address) is answered as a CNAME to it plus that name's addresses.
One thread, one UDP socket, stopped by ``close()``; nothing leaves loopback.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DnsResponder:
    def __init__(self, table: dict[str, list[str] | str | None]) -> None:
        self.table = table
        self.asked: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="dns-responder", daemon=True)
        self.thread.start()

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            answer = self._answer(query)
            if answer is not None:
                self.sock.sendto(answer.to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        (question,) = query.question
        name = question.name.to_text(omit_final_dot=True).lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        self.asked.append((name, kind))
        response = dns.message.make_response(query)
        if name not in self.table:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        value = self.table[name]
        if value is None:
            return None
        owner = question.name
        for target, addresses in self._chain(value):
            if target:
                response.answer.append(dns.rrset.from_text(owner, 60, "IN", "CNAME", target + "."))
                owner = dns.name.from_text(target)
            wanted = [a for a in addresses if _kind(a) == kind]
            if wanted:
                response.answer.append(dns.rrset.from_text_list(owner, 60, "IN", kind, wanted))
        return response

    def _chain(self, value: list[str] | str) -> Iterator[tuple[str | None, list[str]]]:
        if isinstance(value, str):  # a CNAME
            target = self.table.get(value)
            yield value, target if isinstance(target, list) else []
        else:
            yield None, value

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


def _kind(address: str) -> str:
    return "A" if ipaddress.ip_address(address).version == 4 else "AAAA"
