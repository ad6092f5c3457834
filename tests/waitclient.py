"""A tiny asyncio HTTP/1.1 client for holding thousands of long polls and streams open at once."""

from __future__ import annotations

import asyncio
import json
import resource
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Reply:
    """What one request got back: its status and its whole body (raw, chunk markers included)."""

    status: int
    body: str

    def json(self) -> dict:
        """Parse a plain (not chunked) body as JSON."""
        return json.loads(self.body)


def raise_open_files() -> int:
    """Raise the soft open-files limit to the hard one (each waiter is a socket); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def connect(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TCP connection to the API's host and port."""
    url = urlsplit(base)
    return await asyncio.open_connection(url.hostname, url.port)


async def send(writer: asyncio.StreamWriter, method: str, path: str, body: dict | None = None) -> None:
    """Write one request that asks the server to close the connection after its answer."""
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: genq\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    writer.write(head.encode() + b"\r\n" + data)
    await writer.drain()


async def receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Reply:
    """Read the answer to its end (the server closes the connection) and close our side."""
    try:
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return Reply(status, body.decode(errors="replace"))


async def request(base: str, method: str, path: str, body: dict | None = None) -> Reply:
    """Send one request on a new connection and return its reply."""
    reader, writer = await connect(base)
    await send(writer, method, path, body)
    return await receive(reader, writer)
