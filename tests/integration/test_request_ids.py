"""Request ids, traceparent and the JSON access log end to end (docs/logs.md): real requests
through a real nginx to a task that echoes the headers it got; the id the client gets back is
the one the task saw and the one the log line names."""

from __future__ import annotations

import fcntl
import json
import os
import re
import termios
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.integration.conftest import TASK_ADDRESSES
from tests.support import wait_until
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get

T1 = TASK_ADDRESSES[0]
PROXY = "127.0.0.5"  # a client address the test connects from, trusted with --trusted-proxies
StartAgent = Callable[..., Agent]
HEX32 = re.compile(r"[0-9a-f]{32}")
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def start(dns: Dnsmasq, start_agent: StartAgent, upstream_port: int, *extra: str,
          **options: object) -> Agent:
    dns.set("tasks.managerhttp", [T1])
    return start_agent([{"hosts": ["managerhttp"], "service": "managerhttp",
                         "port": upstream_port}], "--trusted-proxies", f"{PROXY}/32", *extra,
                       **options)


def seen(agent: Agent, headers: dict[str, str] | None = None, source: str | None = None,
         ) -> tuple[dict[str, str], dict[str, str]]:
    """(the headers the task got, the headers the client got back)."""
    status, body, got = http_get(agent.port, "managerhttp", "/headers", headers=headers,
                                 source=source)
    assert status == 200, body
    return json.loads(body), got


def json_lines(text: str) -> list[dict[str, Any]]:
    """The access log's lines among the agent's output (its own log lines are text here)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{") and '"request_id"' in line:
            out.append(json.loads(line))
    return out


def log_line(agent: Agent, request_id: str, path: Path | None = None) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def there() -> bool:
        text = (path or agent.log_file).read_text(errors="replace") \
            if (path or agent.log_file).exists() else ""
        found[:] = [r for r in json_lines(text) if r["request_id"] == request_id]
        return bool(found)

    # nginx writes its buffer within a second, the agent copies it to stdout every second
    wait_until(there, 10, f"the access-log line of request {request_id}")
    assert len(found) == 1, found
    return found[0]


def test_each_request_has_an_id_the_task_the_client_and_the_log_share(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    agent = start(dns, start_agent, upstream_port)
    task, client = seen(agent, {"X-Request-Id": "chosen-by-a-client", "User-Agent": 'a"b\\c'})
    rid = task["x-request-id"]
    assert HEX32.fullmatch(rid), "a client that is no trusted proxy does not choose the id"
    assert client["x-request-id"] == rid
    # no traceparent from the client: a trace starts here, its id the request's id
    m = TRACEPARENT.fullmatch(task["traceparent"])
    assert m is not None, task["traceparent"]
    assert m.group(1) == rid
    assert m.group(3) == "01"
    line = log_line(agent, rid)
    assert line["trace_id"] == rid
    assert line["span_id"] == m.group(2)
    assert line["parent_span_id"] == ""
    assert (line["route"], line["service"], line["status"]) == ("managerhttp/", "managerhttp",
                                                                 200)
    assert line["upstream_addr"] == f"{T1}:{upstream_port}"
    assert line["upstream_status"] == "200"
    assert line["method"] == "GET"
    assert line["uri"] == "/headers"
    assert line["client"] == "127.0.0.1"
    assert isinstance(line["request_time"], float)
    assert line["request_time"] >= 0
    assert line["bytes_sent"] > 0
    assert line["request_length"] > 0
    assert line["user_agent"] == 'a"b\\c'  # escaped: the line stays one JSON document

    # a trusted proxy's id and client address are kept; a malformed id is replaced
    task, client = seen(agent, {"X-Request-Id": "edge-42.a:b", "X-Forwarded-For":
                                "198.51.100.7, 203.0.113.9"}, source=PROXY)
    assert task["x-request-id"] == client["x-request-id"] == "edge-42.a:b"
    line = log_line(agent, "edge-42.a:b")
    assert line["client"] == "203.0.113.9"
    task, _ = seen(agent, {"X-Request-Id": "x" * 129}, source=PROXY)
    assert HEX32.fullmatch(task["x-request-id"])
    # a request no route takes is logged too, as unrouted
    assert http_get(agent.port, "nobody.example", "/unrouted-probe")[0] == 404
    wait_until(lambda: any(r["uri"] == "/unrouted-probe" and r["route"] == "unrouted"
                           and r["status"] == 404 and r["service"] == ""
                           for r in json_lines(agent.log_file.read_text(errors="replace"))),
               10, "the unrouted request's line")


def test_a_clients_traceparent_is_continued_and_a_malformed_one_replaced(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    agent = start(dns, start_agent, upstream_port, "--access-log", "off")
    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    task, client = seen(agent, {"traceparent": f"00-{trace}-{parent}-00"})
    m = TRACEPARENT.fullmatch(task["traceparent"])
    assert m is not None
    # the same trace, the gateway's own span as the task's parent, the caller's decision kept
    assert m.group(1) == trace
    assert m.group(2) != parent
    assert m.group(3) == "00"
    for bad in (f"00-{'0' * 32}-{parent}-01", f"00-{trace.upper()}-{parent}-01",
                f"00-{trace}-{'0' * 16}-01", "garbage", f"00-{trace}-{parent}-01;x"):
        task, client = seen(agent, {"traceparent": bad})
        m = TRACEPARENT.fullmatch(task["traceparent"])
        assert m is not None, bad
        assert m.group(1) == client["x-request-id"] != trace, bad
    # a trace started here is the gateway's to decide (sampled: --trace-sample-ratio is 1), not
    # the flags of a traceparent it refused (an all-zero parent span once kept them)
    for bad in (f"00-{trace}-{'0' * 16}-00", f"00-{'0' * 32}-{parent}-00"):
        task, client = seen(agent, {"traceparent": bad})
        m = TRACEPARENT.fullmatch(task["traceparent"])
        assert m is not None, bad
        assert (m.group(1), m.group(3)) == (client["x-request-id"], "01"), bad
    # --access-log off: nothing in the output
    assert json_lines(agent.log_file.read_text(errors="replace")) == []


def test_the_access_log_goes_to_a_file_when_asked(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, tmp_path: Path) -> None:
    path = tmp_path / "access.json"
    agent = start(dns, start_agent, upstream_port, "--access-log", str(path))
    _, client = seen(agent)
    line = log_line(agent, client["x-request-id"], path)
    assert line["route"] == "managerhttp/"
    assert json_lines(agent.log_file.read_text(errors="replace")) == []


def test_the_access_log_does_not_need_the_metrics(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    """Per-route metrics off, the JSON log on: nginx.conf's `access_log off` (nginx's default
    log, which only the metrics' line once replaced) silenced the routes file's JSON log too."""
    agent = start(dns, start_agent, upstream_port, "--access-log-metrics", "off")
    _, client = seen(agent)
    line = log_line(agent, client["x-request-id"])
    assert (line["route"], line["status"]) == ("managerhttp/", 200)
    held = agent.logs_nginx_holds()
    assert "gateway-access.log" in held, held
    assert "access.log" not in held, "nginx's default access log stays off"


def test_with_both_logs_off_nginx_writes_no_access_log(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    """Neither log: nginx.conf says `access_log off`, or nginx would write its default log
    (format combined, to its compiled-in path, outside the agent's folder)."""
    agent = start(dns, start_agent, upstream_port, "--access-log", "off",
                  "--access-log-metrics", "off")
    seen(agent)
    held = agent.logs_nginx_holds()
    assert not held & {"access.log", "gateway-access.log", "gateway-metrics.log"}, held
    assert json_lines(agent.log_file.read_text(errors="replace")) == []


def test_a_reader_of_stdout_that_stalls_costs_no_request_and_no_line(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    """A container's standard output is a pipe of 64 KiB that the runtime reads; when the
    reader stalls (a log driver writing to a slow disk, a shipper behind), whatever writes into
    the full pipe waits. nginx writing its JSON lines there itself would stop answering; through
    the agent's file (drivers/logfile.py) every request is answered, and every line arrives,
    whole, once the reader reads again."""
    read_end, write_end = os.pipe()
    try:
        agent = start(dns, start_agent, upstream_port, stdout=write_end)
    finally:
        os.close(write_end)
    user_agent = "stalled-reader-" + "u" * 4000  # about 4.6 KB a line: 3.7 MB in all
    count = 800

    def one(number: int) -> str:
        status, _, got = http_get(agent.port, "managerhttp", "/", timeout=10,
                                  headers={"User-Agent": user_agent})
        assert status == 200
        return got["x-request-id"]

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(one, range(count)))
    # the agent had written until the pipe was full: its reader was in the way of the lines
    capacity = fcntl.fcntl(read_end, 1032)  # F_GETPIPE_SZ
    held = bytearray(4)

    def unread() -> int:
        fcntl.ioctl(read_end, termios.FIONREAD, held)
        return int.from_bytes(held, "little")

    # full as a pipe gets (the kernel's page slots of a spliced copy may leave some bytes
    # free): more than half of it, and no more taken over two of the agent's polls
    unread_before = [-2]

    def settled() -> bool:
        now = unread()
        same = now > capacity // 2 and now == unread_before[0]
        unread_before[0] = now
        return same

    wait_until(settled, 20, f"the pipe ({capacity} bytes) to take no more", interval=2.5)
    waiting = agent.metrics()['gateway_json_log_bytes_total{result="written"}']
    assert waiting < count * len(user_agent), "the agent had more lines than the pipe took"
    # still answering with the pipe full
    assert agent.get("managerhttp")[0] == 200

    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(
        lambda: os.read(read_end, 1 << 16), b"")), daemon=True)
    reader.start()
    wait_until(lambda: b"".join(list(chunks)).count(user_agent.encode()) >= count, 20,
               "every line once the pipe is read")
    copied = agent.metrics()
    assert copied['gateway_json_log_bytes_total{result="dropped"}'] == 0
    assert copied['gateway_json_log_bytes_total{result="written"}'] >= count * len(user_agent)
    agent.stop()
    reader.join(10)
    os.close(read_end)
    lines = b"".join(chunks).decode().splitlines()
    docs = [json.loads(line) for line in lines]  # each line one whole JSON document
    assert sorted(d["request_id"] for d in docs if d["user_agent"] == user_agent) == sorted(ids)
