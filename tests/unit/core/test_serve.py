"""The admin servers' limits (agent/core/serve.py) on a real aiohttp app over loopback: which
connection is closed when, seen from the clients."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from agent.core.serve import AdminServer, connection_limit

Open = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@pytest.fixture
def release() -> asyncio.Event:
    return asyncio.Event()


def app(release: asyncio.Event) -> web.Application:
    async def fast(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def slow(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="slow")

    application = web.Application()
    application.router.add_get("/", fast)
    application.router.add_get("/slow", slow)
    return application


async def serve(release: asyncio.Event, limit: int | None = None, header_timeout: float = 10.0,
                idle_timeout: float = 60.0) -> AsyncIterator[Open]:
    """An AdminServer on a free port, for one `async for`: a function that connects to it."""
    server = AdminServer(app(release), "127.0.0.1", 0, limit=limit,
                         header_timeout=header_timeout, idle_timeout=idle_timeout)
    await server.start()
    assert server.server is not None
    port = server.server.sockets[0].getsockname()[1]
    yield lambda: asyncio.open_connection("127.0.0.1", port)
    release.set()
    await server.close()


async def get(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str = "/") -> str:
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return (await asyncio.wait_for(reader.readexactly(length), 5)).decode()


async def closed(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 within: float = 5.0) -> bool:
    """Whether the server closed the connection (EOF) within `within` seconds."""
    try:
        return await asyncio.wait_for(conn[0].read(1), within) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_a_new_connection_beyond_the_limit_closes_the_one_idle_the_longest(
        release: asyncio.Event) -> None:
    async for connect in serve(release, limit=3):
        first, second, third = [await connect() for _ in range(3)]
        assert await get(second) == "ok"  # idle again since its request: younger than first
        fourth = await connect()
        assert await get(fourth) == "ok"
        assert await closed(first)
        assert await get(second) == "ok"
        assert await get(third) == "ok"


async def test_a_connection_in_a_request_is_never_closed_for_a_new_one(
        release: asyncio.Event) -> None:
    async for connect in serve(release, limit=2):
        busy = await connect()
        busy[1].write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        idle = await connect()
        await asyncio.sleep(0.2)  # the slow request is being answered
        third = await connect()
        assert await get(third) == "ok"
        assert await closed(idle)
        # every connection in a request: the new one is closed, the requests go on
        third[1].write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.2)
        refused = await connect()
        assert await closed(refused)
        release.set()
        head = await asyncio.wait_for(busy[0].readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")


async def test_headers_sent_a_byte_at_a_time_do_not_keep_a_connection(
        release: asyncio.Event) -> None:
    async for connect in serve(release, header_timeout=0.5, idle_timeout=30):
        slow = await connect()
        kept = await connect()
        assert await get(kept) == "ok"  # then idle: 30 s before it is closed
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ":
            slow[1].write(bytes([byte]))
            await asyncio.sleep(0.05)
            if slow[0].at_eof():
                break
        assert await closed(slow)
        assert not await closed(kept, within=0.5)
        assert await get(kept) == "ok"


def test_the_connection_limit_keeps_files_for_the_program() -> None:
    assert connection_limit(1024) == 768
    assert connection_limit(1_048_576) == 1024
    assert connection_limit(100) == 16


def test_the_open_files_limit_is_raised_to_the_hard_one() -> None:
    code = ("import resource; from agent.core.serve import raise_open_files; "
            "print(raise_open_files(), *resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run(["prlimit", "--nofile=512:2048", "--", sys.executable, "-c", code],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2048", "2048", "2048"]
