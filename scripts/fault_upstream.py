#!/usr/bin/env python3
"""Misbehaving HTTP/1.1 upstreams for scripts/faults (loopback only, stdlib only).

    fault_upstream.py ok NAME PORT      answers 200 with NAME, keep-alive
    fault_upstream.py slow MS PORT      answers 200 after MS milliseconds
    fault_upstream.py hang PORT         accepts, reads, never answers
    fault_upstream.py reset PORT        sends a head promising 1000 bytes, 10 of them, then resets
"""
import asyncio
import socket
import struct
import sys


async def read_head(reader):
    """Reads one request head (and skips a Content-Length body); None at EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1].strip() or 0)
    if length:
        await reader.readexactly(length)
    return head


def responder(mode, arg):
    async def handle(reader, writer):
        try:
            while True:
                try:
                    await read_head(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if mode == "hang":
                    await asyncio.sleep(3600)
                    return
                if mode == "reset":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                    await writer.drain()
                    sock = writer.get_extra_info("socket")
                    # SO_LINGER 0: close sends RST, not FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.close()
                    return
                if mode == "slow":
                    await asyncio.sleep(int(arg) / 1000)
                body = (arg if mode == "ok" else "slow").encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncache-control: max-age=2\r\n"
                    + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                await writer.drain()
        finally:
            writer.close()

    return handle


async def main():
    mode = sys.argv[1]
    arg = sys.argv[2] if mode in ("ok", "slow") else ""
    port = int(sys.argv[-1])
    server = await asyncio.start_server(responder(mode, arg), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
