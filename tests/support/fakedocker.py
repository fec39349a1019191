"""A stand-in for the Docker Engine API, enough for the controller: GET /v1.41/services,
/v1.41/tasks and the chunked event stream GET /v1.41/events, over real HTTP on loopback. The
docker SDK talks to it as to Docker (`--docker-url tcp://127.0.0.1:PORT`), so the controller is
tested without dockerd.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support import free_port

_ids = itertools.count(1)


def service_doc(name: str, labels: dict[str, str], created: str | None = None,
                container_labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A service as GET /services returns it (the fields the controller reads, and a few more)."""
    number = next(_ids)
    stamp = created or time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{number:06d}Z"
    return {
        "ID": f"svc{number:022d}",
        "Version": {"Index": number},
        "CreatedAt": stamp,
        "UpdatedAt": stamp,
        "Spec": {
            "Name": name,
            "Labels": labels,
            "TaskTemplate": {"ContainerSpec": {"Image": "app:1",
                                               "Labels": container_labels or {}}},
            "Mode": {"Replicated": {"Replicas": 1}},
        },
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        self.server.requests.append(f"GET {self.path}")
        if path.endswith("/services"):
            if self.server.failing:
                self._send(500, {"message": "the fake docker is failing"})
                return
            with self.server.lock:
                body = list(self.server.services.values())
            self._send(200, body)
        elif path.endswith("/tasks"):
            self._send(200, self._tasks())
        elif path.endswith("/events"):
            self._events()
        elif path.endswith("/_ping"):
            self._send(200, "OK")
        else:
            self._send(404, {"message": f"page not found: {path}"})

    def _tasks(self) -> list[dict[str, Any]]:
        """One running task per service marked running, filtered by service ID as Docker does."""
        query = parse_qs(urlsplit(self.path).query)
        filters = json.loads(query["filters"][0]) if "filters" in query else {}
        wanted = set(filters.get("service", []))
        with self.server.lock:
            return [{"ID": f"task-{doc['ID']}", "ServiceID": doc["ID"],
                     "DesiredState": "running", "Status": {"State": "running"}}
                    for doc in self.server.services.values()
                    if doc["ID"] in self.server.running and (not wanted or doc["ID"] in wanted)]

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _events(self) -> None:
        feed: queue.Queue[dict[str, Any] | None] = queue.Queue()
        with self.server.lock:
            self.server.feeds.append(feed)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            while (event := feed.get()) is not None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        finally:
            with self.server.lock:
                self.server.feeds.remove(feed)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    services: dict[str, dict[str, Any]]
    running: set[str]  # IDs of the services that have a running task
    feeds: list[queue.Queue[dict[str, Any] | None]]
    lock: threading.Lock
    failing: bool
    requests: list[str]


class FakeDocker:
    """Services to list, and events to stream; `url` is what --docker-url takes."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.server = _Server((address, free_port(address)), _Handler)
        self.server.services = {}
        self.server.running = set()
        self.server.feeds = []
        self.server.lock = threading.Lock()
        self.server.failing = False
        self.server.requests = []
        self.url = f"tcp://{address}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def listeners(self) -> int:
        with self.server.lock:
            return len(self.server.feeds)

    def _emit(self, action: str, doc: dict[str, Any]) -> None:
        event = {"Type": "service", "Action": action, "Actor": {
            "ID": doc["ID"], "Attributes": {"name": doc["Spec"]["Name"]}},
            "scope": "swarm", "time": int(time.time()), "timeNano": time.time_ns()}
        with self.server.lock:
            for feed in self.server.feeds:
                feed.put(event)

    def create(self, name: str, labels: dict[str, str], running: bool = True,
               **kw: Any) -> dict[str, Any]:
        """A new service; `running`: its task runs already (else see start_task)."""
        doc = service_doc(name, labels, **kw)
        with self.server.lock:
            self.server.services[name] = doc
            if running:
                self.server.running.add(doc["ID"])
        self._emit("create", doc)
        return doc

    def start_task(self, name: str) -> None:
        """The service's first task runs (Docker sends no service event for that)."""
        with self.server.lock:
            self.server.running.add(self.server.services[name]["ID"])

    def update(self, name: str, labels: dict[str, str]) -> None:
        with self.server.lock:
            doc = self.server.services[name]
            doc["Spec"]["Labels"] = labels
            doc["Version"]["Index"] += 1
        self._emit("update", doc)

    def remove(self, name: str) -> None:
        with self.server.lock:
            doc = self.server.services.pop(name)
        self._emit("remove", doc)

    def set_failing(self, failing: bool) -> None:
        self.server.failing = failing

    def drop_event_streams(self) -> None:
        """End every open event stream, as a restarting dockerd would."""
        with self.server.lock:
            for feed in self.server.feeds:
                feed.put(None)

    def stop(self) -> None:
        self.drop_event_streams()
        self.server.shutdown()
        self.server.server_close()
