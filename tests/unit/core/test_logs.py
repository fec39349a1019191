"""The JSON log format: fields from the format string, typed; values that could forge a field or
break a line cannot. The text format is as it was."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import pytest

from agent.core import logs


class Capture(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, Capture, Capture]]:
    """The agent's logger with a JSON and a text handler; nothing reaches the root logger."""
    logger = logging.getLogger("agent.test_logs")
    as_json, as_text = Capture(logs.JsonFormatter()), Capture(logs.TextFormatter())
    logger.handlers[:] = [as_json, as_text]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, as_json, as_text
    finally:
        logger.handlers[:] = []
        logger.propagate = True


def one(handler: Capture) -> dict[str, object]:
    """The only line written, which must be one line of one JSON object."""
    assert len(handler.lines) == 1
    line = handler.lines[0]
    assert line.splitlines() == [line], "one event, one line"
    doc = json.loads(line)
    assert isinstance(doc, dict)
    return doc


def test_fields_with_their_types(capture: tuple[logging.Logger, Capture, Capture]) -> None:
    log, as_json, as_text = capture
    log.warning("reload_failed stage=%s routes=%d took=%.1fs ratio=%.3f ok=%s none=%s "
                "change=%r literal=on count=3 reason='a b c'",
                "validate", 4, 1.25, 2 / 3, True, None, "+1 endpoints for tasks.x")
    doc = one(as_json)
    assert doc["event"] == "reload_failed"
    assert doc["level"] == "warning"
    assert doc["logger"] == "agent.test_logs"
    assert isinstance(doc["ts"], float)
    fields = {k: v for k, v in doc.items() if k not in ("ts", "level", "logger", "event", "msg")}
    assert fields == {"stage": "validate", "routes": 4, "took": 1.2, "ratio": 0.667, "ok": True,
                      "none": None, "change": "+1 endpoints for tasks.x", "literal": "on",
                      "count": 3, "reason": "a b c"}
    assert doc["msg"] == as_text.lines[0].split(" agent.test_logs ", 1)[1]


@pytest.mark.parametrize("value", [
    "it's \"quoted\"",
    "two\nlines\r\nand more",
    "a=b c=d level=debug routes=99 event=forged",
    "x' routes=99 y='",
    "caf\u00e9 \u65e5\u672c \U0001f600",
    "line\u2028separator\u2029paragraph\x85next\x0bvt\x1cfs",
    "",
    "%s %d %%",
    "{\"json\": [1, 2]}",
])
def test_tricky_values_stay_one_field_on_one_line(
        capture: tuple[logging.Logger, Capture, Capture], value: str) -> None:
    log, as_json, as_text = capture
    log.error("routes_refused file=%s errors=%d detail=%r", value, 2, value)
    doc = one(as_json)
    assert set(doc) == {"ts", "level", "logger", "event", "msg", "file", "errors", "detail"}
    assert (doc["event"], doc["level"]) == ("routes_refused", "error")
    assert (doc["file"], doc["errors"], doc["detail"]) == (value, 2, value)
    assert doc["msg"] == f"routes_refused file={value} errors=2 detail={value!r}"
    assert as_text.lines[0].endswith(f" error agent.test_logs {doc['msg']}")


def test_a_field_named_like_the_formatters_own_does_not_replace_it(
        capture: tuple[logging.Logger, Capture, Capture]) -> None:
    log, as_json, _ = capture
    log.info("odd level=%s msg=%s ts=%d logger=%s", "forged", "forged", 1, "forged")
    doc = one(as_json)
    assert (doc["level"], doc["logger"], doc["event"]) == ("info", "agent.test_logs", "odd")
    assert isinstance(doc["ts"], float)
    assert doc["msg"] == "odd level=forged msg=forged ts=1 logger=forged"
    assert (doc["level_"], doc["msg_"], doc["ts_"], doc["logger_"]) == (
        "forged", "forged", 1, "forged")


@pytest.mark.parametrize(("fmt", "args", "fields"), [
    ("routes_%s version=%s routes=%d", ("listed", "v1", 2),
     {"event": "routes_listed", "version": "v1", "routes": 2}),
    ("stopping: nginx finishes the requests in flight", (), {"event": "stopping"}),
    ("labels_refused %s", ("service web: x=1 level=debug",), {"event": "labels_refused"}),
    ("done certificates=%d%s", (2, " (saved)"), {"event": "done", "certificates": "2 (saved)"}),
    ("mapped host=%(host)s n=%(n)d", ({"host": "h", "n": 3},),
     {"event": "mapped", "host": "h", "n": 3}),
    ("nan value=%f", (float("nan"),), {"event": "nan", "value": "nan"}),
    ("path file=%s", (os.sep,), {"event": "path", "file": os.sep}),
])
def test_shapes_of_the_code_base(capture: tuple[logging.Logger, Capture, Capture], fmt: str,
                                 args: tuple[object, ...], fields: dict[str, object]) -> None:
    log, as_json, as_text = capture
    log.info(fmt, *args)
    doc = one(as_json)
    assert {k: v for k, v in doc.items() if k not in ("ts", "level", "logger", "msg")} == fields
    assert as_text.lines[0].endswith(str(doc["msg"]))


def test_other_loggers_and_odd_messages_carry_msg_only() -> None:
    formatter = logs.JsonFormatter()
    for name, msg, args in [("aiohttp.server", "Error handling request %s", ("x",)),
                            ("agent", "Not an event=%s", ("x",)),
                            ("agent", "too_few a=%s b=%s", ("x", "y", "z"))]:
        record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
        if msg.startswith("too_few"):  # arguments that do not fit: logging's own error
            assert logs.fields(record) == {}
            continue
        doc = json.loads(formatter.format(record))
        assert set(doc) == {"ts", "level", "logger", "msg"}
        assert doc["msg"] == msg % args


def test_a_traceback_is_one_field(capture: tuple[logging.Logger, Capture, Capture]) -> None:
    log, as_json, as_text = capture
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("cycle_failed")
    doc = one(as_json)
    assert doc["event"] == "cycle_failed"
    assert isinstance(doc["exc"], str)
    assert doc["exc"].startswith("Traceback")
    assert "ValueError: bad\nthing" in doc["exc"]
    # the text format keeps its traceback on the lines after the event, as before
    assert as_text.lines[0].split("\n")[0].endswith(" error agent.test_logs cycle_failed")


def test_the_text_format_is_as_it_was() -> None:
    record = logging.LogRecord("agent.gateway.reconciler", logging.INFO, __file__, 1,
                               "routes_loaded file=%s routes=%d", ("/r.yaml", 3), None)
    record.created, record.msecs = 1_700_000_000.25, 250.0
    assert logs.TextFormatter().format(record) == (
        "2023-11-14T22:13:20.250Z info agent.gateway.reconciler routes_loaded file=/r.yaml "
        "routes=3")


def test_nginx_lines_are_relayed_as_events(capture: tuple[logging.Logger, Capture, Capture],
                                           ) -> None:
    log, as_json, _ = capture
    read_end, write_end = os.pipe()
    thread = logs.relay_nginx(read_end, log)
    os.write(write_end, b'2026/12/02 15:33:04 [notice] 27538#27538: using the "epoll" event '
                        b"method\n2026/12/02 15:33:05 [emerg] 27538#27538: *12 bind() to "
                        b"127.0.0.1:80 failed (98: Address in use)\nnot an nginx line\n")
    os.close(write_end)
    thread.join(10)
    assert not thread.is_alive(), "the relay ends when nginx closes its stderr"
    docs = [json.loads(line) for line in as_json.lines]
    assert [(d["level"], d["event"], d["nginx_level"], d.get("pid"), d["text"])
            for d in docs] == [
        ("info", "nginx_log", "notice", 27538, 'using the "epoll" event method'),
        ("critical", "nginx_log", "emerg", 27538,
         "bind() to 127.0.0.1:80 failed (98: Address in use)"),
        ("info", "nginx_log", "unknown", None, "not an nginx line")]


def test_a_url_in_a_log_line_keeps_no_credentials() -> None:
    from agent.core.settings import redacted_url

    assert redacted_url("https://user:s3cret@otel.example:4318/v1/traces") == \
        "https://***@otel.example:4318/v1/traces"
    assert redacted_url("http://token@collector/v1/traces") == "http://***@collector/v1/traces"
    assert redacted_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"
