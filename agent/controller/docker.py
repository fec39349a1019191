"""The Docker API as the controller reads it: services, their running tasks, service events."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.controller.labels import Service
from agent.core.aio import Backoff

if TYPE_CHECKING:
    from agent.controller.sync import Controller

DOCKER_API_VERSION = "1.41"  # Docker Engine 20.10; later engines answer it too
_BACKOFF_MAX = 10.0


class Docker:
    """The Docker API through the docker SDK (blocking: used from threads)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._closing = threading.Event()
        self._stream: Any = None
        self._api: Any = None  # for the lists: one connection, used by one thread at a time

    def client(self) -> Any:
        import docker  # only the controller needs the SDK

        return docker.APIClient(base_url=self.url, version=DOCKER_API_VERSION,
                                timeout=self.timeout)

    def _call(self, call: Callable[[Any], Any]) -> Any:
        if self._api is None:
            self._api = self.client()
        try:
            return call(self._api)
        except Exception:
            self._api.close()
            self._api = None
            raise

    def services(self) -> list[Service]:
        return [Service.from_api(doc) for doc in self._call(lambda api: api.services())]

    def running(self, service_ids: list[str]) -> set[str]:
        tasks = self._call(lambda api: api.tasks(filters={"service": service_ids,
                                                          "desired-state": "running"}))
        return {str(t.get("ServiceID")) for t in tasks
                if (t.get("Status") or {}).get("State") == "running"}

    async def list_services(self) -> list[Service]:
        return await asyncio.to_thread(self.services)

    async def list_running(self, service_ids: list[str]) -> set[str]:
        return await asyncio.to_thread(self.running, service_ids)

    def follow(self, loop: asyncio.AbstractEventLoop, controller: Controller) -> None:
        """In a thread: pass each service event to the controller; reconnect when the stream
        breaks (1 s, doubling to 10 s)."""
        backoff = Backoff(1.0, _BACKOFF_MAX)
        while not self._closing.is_set():
            try:
                client = self.client()
                self._stream = client.events(decode=True, filters={"type": "service"})
                loop.call_soon_threadsafe(controller.event, "connected")
                backoff.reset()
                for event in self._stream:
                    action = str(event.get("Action") or event.get("status") or "unknown")
                    loop.call_soon_threadsafe(controller.event, action[:32])
                error = "the event stream ended"
            except Exception as exc:  # the SDK raises many kinds; retry after any
                error = f"{type(exc).__name__}: {exc}"
            if self._closing.is_set():
                return
            loop.call_soon_threadsafe(controller.events_lost, error)
            self._closing.wait(backoff.failed())

    def close(self) -> None:
        self._closing.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
