"""fixed_thresholds() (agent/gateway/drivers/memory.py) sets glibc's mmap and trim thresholds
once, unless the operator set glibc's own."""

from __future__ import annotations

import pytest

from agent.gateway.drivers import memory


@pytest.mark.parametrize(("environ", "set_here"), [
    ({}, True),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, False),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, False),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, False),
    ({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=1"}, True),
])
def test_the_thresholds_are_fixed_unless_the_operator_set_them(
        monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], set_here: bool) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(memory, "_mallopt", lambda param, value: calls.append((param, value)) or 1)
    memory.fixed_thresholds(environ)
    want = [(memory.M_MMAP_THRESHOLD, memory.MMAP_THRESHOLD),
            (memory.M_TRIM_THRESHOLD, memory.MMAP_THRESHOLD)] if set_here else []
    assert calls == want
