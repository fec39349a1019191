"""`retry`, `max_conns`, `fail_timeout`: when nginx tries a request again on another task, how
many requests a task gets at once, and how long a task that failed is left out.

nginx tries the next task on what `on` names (proxy_next_upstream), at most `tries` tasks in all
and within `timeout`; a request that is not idempotent (POST, PATCH, LOCK) is tried again only
with `non_idempotent`, as a task may have acted on it already. A task that failed once is left
out for `fail_timeout` (max_fails=1); with `max_conns` a task gets at most that many requests at
once, and one more waits for none: it goes to another task or is answered 502."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from agent.core.errors import shown as _shown
from agent.core.fields import Seconds

# nginx's proxy_next_upstream conditions (besides `off`, which is `tries: 1`)
RetryOn = Literal["error", "timeout", "invalid_header", "http_500", "http_502", "http_503",
                  "http_504", "http_403", "http_404", "http_429"]
DEFAULT_ON: tuple[str, ...] = ("error", "timeout")
DEFAULT_TRIES = 3
DEFAULT_FAIL_TIMEOUT = 5.0


def _on(value: object) -> object:
    if isinstance(value, str):  # `on: error` where a list belongs
        value = [value]
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("an empty list: give `tries: 1` for no retry")
        if len(set(value)) != len(value):
            raise ValueError(f"{_shown(value)}: a condition is given twice")
        return tuple(value)
    raise ValueError(f"{_shown(value)}: give a list of conditions (error, timeout, "
                     "invalid_header, http_500, http_502, http_503, http_504, http_403, "
                     "http_404, http_429)")


class Retry(BaseModel):
    """When and how often a request is tried on another task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    on: Annotated[tuple[RetryOn, ...], BeforeValidator(_on)] = DEFAULT_ON  # type: ignore[assignment]
    tries: int = Field(default=DEFAULT_TRIES, ge=1, le=20, strict=True)  # 1: no retry
    timeout: Seconds | None = None  # for all tries together; none: no limit but the tries
    non_idempotent: bool = Field(default=False, strict=True)

    @property
    def directive(self) -> tuple[str, ...]:
        """proxy_next_upstream's arguments."""
        return (*sorted(self.on), *(("non_idempotent",) if self.non_idempotent else ()))


def as_retry(value: object) -> object:
    if value is False:  # `retry: false`: one try only
        return {"tries": 1}
    if isinstance(value, int) and not isinstance(value, bool):  # `retry: 2`: the tries
        return {"tries": value}
    if isinstance(value, dict) and True in value and "on" not in value:
        # YAML 1.1 (the routes file's loader) reads the key `on` as true: it is this field
        return {("on" if key is True else key): v for key, v in value.items()}
    if value is None or isinstance(value, dict | Retry):
        return value
    raise ValueError(f"{_shown(value)}: give the number of tries, false, or a mapping with "
                     "'on', 'tries', 'timeout', 'non_idempotent'")


MaxConns = Annotated[int, Field(ge=0, le=1_000_000, strict=True)]  # 0: no limit
