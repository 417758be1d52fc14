#!/usr/bin/env python3
"""Misbehaving HTTP/1.1 upstreams for scripts/faults (loopback only, stdlib only).

    fault_upstream.py ok NAME PORT      answers 200 with NAME, keep-alive
    fault_upstream.py slow MS PORT      answers 200 after MS milliseconds
    fault_upstream.py hang PORT         accepts, reads, never answers
    fault_upstream.py reset PORT        sends a head promising 1000 bytes, 10 of them, then resets
    fault_upstream.py switch NAME PORT  as `ok NAME`; SIGUSR1 starts or ends a hang (requests
                                        wait until it ends), SIGUSR2 starts or ends a slowdown
                                        (each request answered after 1 s)
"""
import asyncio
import signal
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


class Switch:
    """The `switch` mode's state, flipped by signals."""

    def __init__(self):
        self.running = asyncio.Event()
        self.running.set()
        self.slow = False

    def toggle_hang(self):
        if self.running.is_set():
            self.running.clear()
        else:
            self.running.set()

    def toggle_slow(self):
        self.slow = not self.slow


def responder(mode, arg, switch):
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
                if mode == "switch":
                    await switch.running.wait()
                    if switch.slow:
                        await asyncio.sleep(1)
                body = (arg if mode in ("ok", "switch") else "slow").encode()
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
    arg = sys.argv[2] if mode in ("ok", "slow", "switch") else ""
    port = int(sys.argv[-1])
    switch = Switch()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, switch.toggle_hang)
    loop.add_signal_handler(signal.SIGUSR2, switch.toggle_slow)
    server = await asyncio.start_server(responder(mode, arg, switch), "127.0.0.1", port,
                                        backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
