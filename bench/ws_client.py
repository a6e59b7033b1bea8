"""WebSocket echo load: `conns` connections, each sending a 5-byte text message and
waiting for its echo, for `duration` seconds; prints the messages echoed. Raw frames
over asyncio streams, so the client costs little per message."""

import asyncio
import os
import sys
import time

MASK = b"\x01\x02\x03\x04"
MESSAGE = b"hello"
FRAME = bytes([0x81, 0x80 | len(MESSAGE)]) + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(MESSAGE))


async def client(port, deadline, counts):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:80])
    n = 0
    while time.monotonic() < deadline:
        writer.write(FRAME)
        h = await reader.readexactly(2)
        await reader.readexactly(h[1] & 0x7F)
        n += 1
    counts.append(n)
    writer.close()


async def main(port, conns, duration):
    counts = []
    deadline = time.monotonic() + duration
    await asyncio.gather(*(client(port, deadline, counts) for _ in range(conns)))
    print(sum(counts))


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
