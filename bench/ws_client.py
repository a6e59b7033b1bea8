"""WebSocket echo load: `conns` connections, each sending a 5-byte text message and
waiting for its echo, for `duration` seconds; prints the messages echoed. Raw frames
through asyncio protocols (no streams, no per-message coroutine), so the client costs
as little as it can per message: on a 2-core machine it competes with the server."""

import asyncio
import sys
import time

MASK = b"\x01\x02\x03\x04"
MESSAGE = b"hello"
FRAME = bytes([0x81, 0x80 | len(MESSAGE)]) + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(MESSAGE))
# The server's echo: final, unmasked, uncompressed text (no extension is offered).
ECHO = bytes([0x81, len(MESSAGE)]) + MESSAGE
HANDSHAKE = (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class EchoClient(asyncio.Protocol):
    def __init__(self, deadline, finished):
        self.deadline = deadline
        self.finished = finished
        self.buf = b""
        self.open = False
        self.count = 0

    def connection_made(self, transport):
        self.transport = transport
        transport.write(HANDSHAKE)

    def data_received(self, data):
        self.buf += data
        if not self.open:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.done(RuntimeError(head[:80]))
                return
            self.open, self.buf = True, rest
            self.transport.write(FRAME)
            return
        while len(self.buf) >= len(ECHO):
            if not self.buf.startswith(ECHO):
                self.done(RuntimeError(f"unexpected frame {self.buf[:16]!r}"))
                return
            self.buf = self.buf[len(ECHO):]
            self.count += 1
            if time.monotonic() >= self.deadline:
                self.done(None)
                return
            self.transport.write(FRAME)

    def connection_lost(self, exc):
        self.done(exc or RuntimeError("closed by the server"))

    def done(self, error):
        if not self.finished.done():
            if error is None:
                self.finished.set_result(self.count)
            else:
                self.finished.set_exception(error)
            self.transport.close()


async def main(port, conns, duration):
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + duration
    waits = []
    for _ in range(conns):
        finished = loop.create_future()
        await loop.create_connection(lambda: EchoClient(deadline, finished), "127.0.0.1", port)
        waits.append(finished)
    print(sum(await asyncio.gather(*waits)))


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
