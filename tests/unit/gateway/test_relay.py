"""The JSON access log's way to the agent's standard output (drivers/logfile.py Relay): nginx
appends to a file, the agent copies the whole lines it holds to a real pipe or file, once each,
across rotations; an output that refuses them costs a count, not the agent."""

from __future__ import annotations

import os
import select
import threading
import time
from pathlib import Path

import pytest

from agent.gateway.drivers.logfile import LogFile, Relay
from tests.support.logwriter import NginxWriter


def line(i: int) -> bytes:
    return b'{"request_id":"%032x","uri":"/p?q=%d"}\n' % (i, i)


class Counts:
    def __init__(self) -> None:
        self.bytes = {"written": 0, "dropped": 0}

    def __call__(self, result: str, n: int) -> None:
        self.bytes[result] += n


def relay(nginx: NginxWriter, out: int, rotate_size: int = 16 << 20, backlog: int = 32 << 20,
          wait: float = 1.0) -> tuple[LogFile, Counts]:
    counts = Counts()
    return LogFile(nginx.path, Relay(out, counts, backlog=backlog, wait=wait),
                   nginx_pids=nginx.pids, reopen=nginx.reopen, rotate_size=rotate_size), counts


def test_whole_lines_reach_a_pipe_once_and_a_half_written_line_waits(
        nginx: NginxWriter) -> None:
    read_end, write_end = os.pipe()
    tail, counts = relay(nginx, write_end)
    lines = b"".join(line(i) for i in range(500))
    nginx.write(lines + line(500)[:10])  # nginx's write of the last line is half there
    tail.poll()
    assert os.read(read_end, 1 << 20) == lines
    tail.poll()  # nothing new: nothing twice
    nginx.write(line(500)[10:])
    tail.poll()
    assert os.read(read_end, 1 << 20) == line(500)
    assert counts.bytes == {"written": len(lines) + len(line(500)), "dropped": 0}
    tail.close()
    os.close(read_end)
    os.close(write_end)


def test_rotations_lose_and_repeat_no_line(nginx: NginxWriter, tmp_path: Path) -> None:
    out = tmp_path / "stdout"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)  # sendfile takes a plain file too
    tail, counts = relay(nginx, fd, rotate_size=4096)
    sent = []
    for batch in range(40):
        chunk = b"".join(line(batch * 50 + i) for i in range(50))
        nginx.write(chunk)
        sent.append(chunk)
        tail.poll()
    for _ in range(3):  # the last rotated file, once nginx let go of it
        tail.poll()
    assert tail.rotations >= 10
    assert out.read_bytes() == b"".join(sent)
    assert counts.bytes["dropped"] == 0
    tail.close()
    os.close(fd)


def test_an_output_opened_for_appending_gets_the_lines_read_and_written(
        nginx: NginxWriter, tmp_path: Path) -> None:
    """sendfile refuses an output opened with O_APPEND (a shell's `>>`, a test's log file)."""
    out = tmp_path / "stdout"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    tail, counts = relay(nginx, fd)
    lines = b"".join(line(i) for i in range(3000))
    nginx.write(lines)
    tail.poll()
    assert out.read_bytes() == lines
    assert isinstance(tail.sink, Relay)
    assert not tail.sink.sendfile, "sendfile refused once: read and written from then on"
    assert counts.bytes == {"written": len(lines), "dropped": 0}
    tail.close()
    os.close(fd)


def test_an_output_nobody_reads_any_more_drops_the_lines_and_counts_them(
        nginx: NginxWriter, caplog: pytest.LogCaptureFixture) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the container's runtime is gone
    tail, counts = relay(nginx, write_end)
    nginx.write(line(1))
    tail.poll()  # no exception: the agent and its nginx carry on
    nginx.write(line(2) + line(3))
    tail.poll()
    assert counts.bytes == {"written": 0, "dropped": len(line(1) + line(2) + line(3))}
    assert sum("access_log_output_failed" in r.message for r in caplog.records) == 1
    tail.close()
    os.close(write_end)


def test_an_output_too_far_behind_loses_whole_lines_and_the_file_still_rotates(
        nginx: NginxWriter) -> None:
    """A reader that stalls for good: each poll copies what the pipe takes and returns (it
    does not wait for the reader); once the output is more than `backlog` behind, the lines in
    between are dropped and counted, the line the pipe holds half of is finished first, and
    the file rotates as usual."""
    read_end, write_end = os.pipe()
    tail, counts = relay(nginx, write_end, rotate_size=8192, backlog=16384, wait=0.05)
    sent = b""
    for batch in range(60):  # 60 x 50 lines, about 150 KB: twice what the pipe holds
        chunk = b"".join(line(batch * 50 + i) for i in range(50))
        nginx.write(chunk)
        sent += chunk
        tail.poll()
    assert counts.bytes["dropped"] > 0
    assert tail.rotations >= 5
    got = b""
    while len(got) < counts.bytes["written"]:
        got += os.read(read_end, 1 << 16)
        tail.poll()
    for _ in range(3):
        tail.poll()
    while True:  # what the last polls copied
        os.set_blocking(read_end, False)
        try:
            got += os.read(read_end, 1 << 16)
        except BlockingIOError:
            break
    assert got.endswith(b"\n")
    lines = got.splitlines(keepends=True)
    assert all(one in sent for one in lines), "every line whole"
    assert len(set(lines)) == len(lines), "none twice"
    assert counts.bytes["written"] + counts.bytes["dropped"] == len(sent)
    tail.close()
    os.close(read_end)
    os.close(write_end)


def test_a_deadline_ends_the_copy_into_a_full_pipe(nginx: NginxWriter) -> None:
    """The agent's last copy as it stops: bounded, whatever the reader does (without the
    deadline this poll would wait 30 s for a reader)."""
    read_end, write_end = os.pipe()
    sink = Relay(write_end, Counts(), wait=30)
    tail = LogFile(nginx.path, sink, nginx_pids=nginx.pids, reopen=nginx.reopen)
    nginx.write(b"".join(line(i) for i in range(3000)))  # about 150 KB
    sink.deadline = time.monotonic() + 0.3
    started = time.monotonic()
    tail.poll()
    assert time.monotonic() - started < 2
    tail.close()
    os.close(read_end)
    os.close(write_end)


def drain(read_end: int) -> bytes:
    """What the pipe holds now, without waiting."""
    os.set_blocking(read_end, False)
    got = b""
    try:
        while chunk := os.read(read_end, 1 << 16):
            got += chunk
    except BlockingIOError:
        pass
    return got


def test_across_rotations_a_slow_reader_gets_every_line_whole_and_in_order(
        nginx: NginxWriter) -> None:
    """A reader that takes 4 KiB at a time, while the agent copies: each poll copies less than
    nginx wrote, a copy stops in the middle of a line, the file rotates. A rotated file's lines
    go out before the new file's, and the line the pipe took half of is finished first."""
    read_end, write_end = os.pipe()
    tail, counts = relay(nginx, write_end, rotate_size=8192, wait=0.01)
    got: list[bytes] = []
    done = threading.Event()

    def slow_reader() -> None:
        while not done.is_set() or select.select([read_end], [], [], 0.2)[0]:
            if select.select([read_end], [], [], 0.05)[0]:
                got.append(os.read(read_end, 4096))
                time.sleep(0.0005)

    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    total = 0
    for batch in range(12):  # 12 x 1000 lines, about 800 KB
        chunk = b"".join(line(batch * 1000 + i) for i in range(1000))
        nginx.write(chunk)
        total += len(chunk)
        tail.poll()
    deadline = time.monotonic() + 30
    while counts.bytes["written"] < total and time.monotonic() < deadline:
        tail.poll()
    for _ in range(3):
        tail.poll()
    done.set()
    reader.join(10)
    lines = b"".join(got).splitlines()
    assert all(one.startswith(b'{"request_id":"') and one.endswith(b'"}') for one in lines), \
        "no line cut or glued to another"
    assert [int(one[15:47], 16) for one in lines] == list(range(12_000)), "all, in order"
    assert counts.bytes == {"written": total, "dropped": 0}
    assert tail.rotations >= 10
    tail.close()
    os.close(read_end)
    os.close(write_end)


def test_a_reader_stalled_for_good_keeps_the_files_small(nginx: NginxWriter) -> None:
    """The pipe takes part of a line, then nothing more: the files still rotate and stay
    within the backlog, and what the pipe got is whole lines."""
    read_end, write_end = os.pipe()
    tail, counts = relay(nginx, write_end, rotate_size=8192, backlog=65536, wait=0.02)
    for batch in range(60):  # 500 lines, about 34 KB, a poll: 2 MB in all
        nginx.write(b"".join(line(batch * 500 + i) for i in range(500)))
        tail.poll()
        held = sum(p.stat().st_size for p in (nginx.path, tail.rotated) if p.exists())
        assert held <= 65536 + 8192 + 34_000, f"{held} bytes held after poll {batch}"
    assert counts.bytes["dropped"] > 1_000_000
    got = drain(read_end)
    os.set_blocking(read_end, True)
    tail.poll()  # the end of the half line it owes, now that the pipe takes it
    got += drain(read_end)
    assert got.endswith(b"\n")
    assert all(one.startswith(b'{"request_id":"') and one.endswith(b'"}')
               for one in got.splitlines()), "no line cut or glued to another"
    tail.close()
    os.close(read_end)
    os.close(write_end)
