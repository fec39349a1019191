"""A minimal HTTP/1.0 client: what `--http` needs, without http.client (which brings email.*
and ssl) or urllib. Standard library only."""

from __future__ import annotations

import socket

from agent.check.base import MAX_ANSWER, USER_AGENT, BadAnswer, remaining


def connect(host: str, port: int, deadline: float) -> socket.socket:
    """socket.create_connection, but an ASCII host goes to getaddrinfo() as bytes: a str is
    encoded with the `idna` codec, whose import (stringprep, unicodedata) would cost more than
    the rest of a run. Each address in turn, like create_connection."""
    addresses = socket.getaddrinfo(host.encode("ascii") if host.isascii() else host, port,
                                   0, socket.SOCK_STREAM)
    error: OSError | None = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(remaining(deadline))
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error if error is not None else OSError(f"no address for {host}")


def _dechunk(body: bytes) -> bytes | None:
    """A chunked body decoded, or None while it is incomplete. Raises BadAnswer if malformed."""
    out: list[bytes] = []
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = body[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadAnswer(f"bad chunk size {size_text[:20]!r}") from None
        if size < 0:
            raise BadAnswer(f"bad chunk size {size_text[:20]!r}")
        if size == 0:
            return b"".join(out)  # trailers, if any, are not needed
        start = eol + 2
        if len(body) < start + size + 2:
            return None
        out.append(body[start:start + size])
        if body[start + size:start + size + 2] != b"\r\n":
            raise BadAnswer("chunk not followed by CRLF")
        pos = start + size + 2


def _split_head(data: bytes) -> tuple[bytes, bytes] | None:
    """(head, rest) once the blank line after the headers has arrived."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        index = data.find(sep)
        if index >= 0:
            return data[:index], data[index + len(sep):]
    return None


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("iso-8859-1").splitlines()
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
        raise BadAnswer(f"not an HTTP status line: {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(code), reason.strip(), headers


def _body(headers: dict[str, str], rest: bytes, closed: bool) -> bytes | None:
    """The body once all of it is in (None: read on)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(rest)
        if body is None and closed:
            raise BadAnswer("connection closed in the middle of a chunked body")
        return body
    length_text = headers.get("content-length")
    if length_text is not None:
        if not length_text.isdigit():
            raise BadAnswer(f"bad Content-Length {length_text[:20]!r}")
        length = int(length_text)
        if len(rest) >= length:
            return rest[:length]
        if closed:
            raise BadAnswer(f"body cut short: {len(rest)} of {length} bytes")
        return None
    return rest if closed else None  # HTTP/1.0: the body ends with the connection


def http_exchange(sock: socket.socket, host_header: str, target: str, deadline: float,
                  want_body: bool = False) -> tuple[int, str, bytes]:
    """GET `target` on a connected socket; (status, reason, body). The body is read only with
    `want_body`: a health check needs the status line alone. Every read has the time left
    before `deadline` as its timeout, so a server dripping bytes cannot outlast it."""
    request = (f"GET {target} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
               "Connection: close\r\nAccept: */*\r\n\r\n")
    sock.settimeout(remaining(deadline))
    sock.sendall(request.encode("ascii"))
    data = b""
    closed = False
    while True:
        if not closed:
            sock.settimeout(remaining(deadline))
            chunk = sock.recv(65536)
            closed = not chunk
            data += chunk
            if len(data) > MAX_ANSWER:
                raise BadAnswer(f"answer larger than {MAX_ANSWER >> 20} MiB")
        parts = _split_head(data)
        while parts is not None:
            status, reason, headers = _parse_head(parts[0])
            if not 100 <= status < 200:  # skip an interim answer (100 Continue)
                break
            data = parts[1]
            parts = _split_head(data)
        if parts is None:
            if closed:
                raise BadAnswer("connection closed without an answer" if not data
                                else "connection closed in the middle of the headers")
            continue
        if not want_body:
            return status, reason, b""
        body = _body(headers, parts[1], closed)
        if body is not None:
            return status, reason, body
        if closed:  # pragma: no cover - _body raises for every incomplete body once closed
            raise BadAnswer("answer cut short")

