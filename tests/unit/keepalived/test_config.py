"""The keepalived.conf reader: statements, blocks and the places they come from."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.keepalived.config import ConfigError, parse, read_config


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_blocks_comments_quotes_and_lines(tmp_path: Path) -> None:
    conf = write(tmp_path / "k.conf", """\
! a comment
global_defs {
    router_id n1   # trailing comment
}
vrrp_script chk {
    script "/usr/bin/check --flag value"
}
vrrp_instance VI
{
    priority 150
    virtual_ipaddress { 192.0.2.1/24 dev eth0 }
}
""")
    statements = parse(conf)
    assert [s.keyword for s in statements] == ["global_defs", "vrrp_script", "vrrp_instance"]
    router = statements[0].first("router_id")
    assert router is not None
    assert (router.args, router.line) == (["n1"], 3)
    script = statements[1].first("script")
    assert script is not None
    assert script.args == ["/usr/bin/check --flag value"]
    instance = statements[2]
    assert instance.line == 8
    assert instance.first("priority").args == ["150"]  # type: ignore[union-attr]
    vips = instance.first("virtual_ipaddress")
    assert vips is not None
    assert [(v.keyword, v.args) for v in vips.children or []] == [
        ("192.0.2.1/24", ["dev", "eth0"])]


def test_includes_definitions_continuations_and_config_ids(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    write(tmp_path / "conf.d" / "a.conf", "vrrp_instance A {\n    priority $PRIO\n}\n")
    write(tmp_path / "conf.d" / "b.conf", "vrrp_instance B {\n    priority ${PRIO}\n}\n")
    conf = write(tmp_path / "k.conf", """\
$PRIO=120
include conf.d/*.conf
vrrp_instance C {
    virtual_router_id \\
        51
@node1 priority 200
@^node1 priority 100
}
""")
    config = read_config(conf, config_id="node1")
    assert [(i.name, i.priority) for i in config.instances] == [("A", 120), ("B", 120),
                                                                 ("C", 200)]
    c = config.instances[2]
    assert c.virtual_router_id == 51
    assert c.statement.file == str(conf)
    assert config.instances[0].statement.file == str((tmp_path / "conf.d" / "a.conf").resolve())
    assert read_config(conf, config_id="node2").instances[2].priority == 100


def test_typed_view_defaults(tmp_path: Path) -> None:
    conf = write(tmp_path / "k.conf", """\
vrrp_script s { script /bin/true }
track_file f { file /run/x }
vrrp_instance I {
    state master
    track_script {
        s weight -20
    }
    track_file {
        f
    }
}
""")
    config = read_config(conf)
    assert config.scripts["s"].weight == 0  # keepalived's default: FAULT
    assert config.track_files["f"].weight == 1  # keepalived's default for track files
    instance = config.instances[0]
    assert (instance.state, instance.priority, instance.advert_int) == ("MASTER", 100, 1.0)
    assert config.version(instance) == 2
    [entry] = instance.tracked("track_script")
    assert (entry.name, entry.weight) == ("s", -20)


@pytest.mark.parametrize(("text", "line", "message"), [
    ("vrrp_instance A {\n  priority 1\n", 1, "never closed"),
    ("vrrp_instance A {\n}\n}\n", 3, "without a block"),
    ("{\n}\n", 1, "without a statement"),
    ('vrrp_script s {\n  script "/bin/true\n}\n', 2, "unclosed quote"),
])
def test_errors_name_the_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    conf = write(tmp_path / "k.conf", text)
    with pytest.raises(ConfigError) as caught:
        parse(conf)
    assert (caught.value.file, caught.value.line) == (str(conf), line)
    assert message in caught.value.message


def test_include_loop_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.conf", "include b.conf\n")
    write(tmp_path / "b.conf", "include a.conf\n")
    with pytest.raises(ConfigError, match="included twice"):
        parse(tmp_path / "a.conf")
