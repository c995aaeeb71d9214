"""A small MTProto proxy for tests, made of the project's sans-IO cores, on 127.0.0.1.

It stands in for the node's MTProto listener (another branch) so that the
probe, the registry's proof of control and the lab client can be tested on
real sockets against a server that speaks the protocol a Telegram app
speaks: for an ee secret it verifies the ClientHello against each user key
(``faketls.verify_hello``) and answers with ``faketls.build_server_answer``;
then it reads the obfuscated2 init with the user's key, opens its own
obfuscated2 connection (no secret) to the data centre and re-encrypts both
ways.  A hello that does not verify, or an init with no known tag, gets the
connection closed (the node fronts instead; that is its own test's matter).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Sequence

from resistance.errors import ProtocolError
from resistance.proto import faketls, obfuscated2


class MTProxyStandIn:
    """``with MTProxyStandIn(keys, dc_port, tls=True) as proxy: ... proxy.port``."""

    def __init__(self, keys: Sequence[bytes], dc: tuple[str, int], *, tls: bool) -> None:
        self.keys, self.dc, self.tls = list(keys), dc, tls
        self.served = 0
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> MTProxyStandIn:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self._ready.set()
        async with server:
            await self._stop.wait()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(10):
                key, records, rest = await self._handshake(reader, writer)
                data = rest
                while len(data) < obfuscated2.INIT_LEN:
                    more = await reader.read(4096)
                    if not more:
                        return
                    data += records.feed(more) if records else more
                init = obfuscated2.parse_init(data[: obfuscated2.INIT_LEN], key)
                dc_wire, dc_init = obfuscated2.generate_init(init.tag, init.dc)
                dc_reader, upstream = await asyncio.open_connection(*self.dc)
                first = init.decryptor.update(data[obfuscated2.INIT_LEN :])
                upstream.write(dc_wire + dc_init.encryptor.update(first))
                self.served += 1
                await asyncio.gather(
                    self._pump_up(reader, upstream, init, dc_init, records),
                    self._pump_down(dc_reader, writer, init, dc_init),
                )
        except (ProtocolError, TimeoutError, OSError):
            self.refused += 1
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[bytes, faketls.RecordReader | None, bytes]:
        if not self.tls:
            first = await reader.readexactly(obfuscated2.INIT_LEN)
            for key in self.keys:
                with contextlib.suppress(ProtocolError):
                    obfuscated2.parse_init(first, key)
                    return key, None, first
            raise ProtocolError("no user's key opens this init")
        hello_buffer = faketls.HelloBuffer()
        record = None
        while record is None:
            more = await reader.read(4096)
            if not more:
                raise ProtocolError("closed during the hello")
            record = hello_buffer.feed(more)
        hello = faketls.parse_client_hello(record)
        for key in self.keys:
            with contextlib.suppress(ProtocolError):
                faketls.verify_hello(key, hello, time.time())
                writer.write(faketls.build_server_answer(key, hello, payload_len=2000))
                records = faketls.RecordReader()
                return key, records, records.feed(hello_buffer.rest)
        raise ProtocolError("no user's key made this hello")

    async def _pump_up(
        self,
        reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        init: obfuscated2.Init,
        dc_init: obfuscated2.Init,
        records: faketls.RecordReader | None,
    ) -> None:
        while data := await reader.read(16384):
            plain = init.decryptor.update(records.feed(data) if records else data)
            upstream.write(dc_init.encryptor.update(plain))
            await upstream.drain()

    async def _pump_down(
        self,
        dc_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        init: obfuscated2.Init,
        dc_init: obfuscated2.Init,
    ) -> None:
        while data := await dc_reader.read(16384):
            out = init.encryptor.update(dc_init.decryptor.update(data))
            writer.write(faketls.encode_records(out) if self.tls else out)
            await writer.drain()
        writer.close()
