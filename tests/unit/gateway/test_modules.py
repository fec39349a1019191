"""nginx's modules (gateway/modules.py): which the nginx in use has compiled in, which files the
main configuration loads, and what is missing, said with where it was looked for."""

from __future__ import annotations

from pathlib import Path

from agent.gateway.drivers import modules
from agent.gateway.plan.mainconf import render_main_conf
from tests.support import require_programs

OFFICIAL = """nginx version: nginx/1.28.0
built by gcc 12.2.0 (Debian 12.2.0-14)
configure arguments: --prefix=/etc/nginx --sbin-path=/usr/sbin/nginx \
--modules-path=/usr/lib/nginx/modules --with-compat --with-stream --with-stream_realip_module \
--with-stream_ssl_module --with-stream_ssl_preread_module --with-cc-opt='-g -O2 -fPIC'
"""
DEBIAN = """nginx version: nginx/1.30.6
configure arguments: --with-cc-opt='-g -O2' --prefix=/usr/share/nginx \
--modules-path=/usr/lib/nginx/modules --with-stream=dynamic --with-stream_ssl_preread_module
"""


def test_a_module_compiled_in_is_not_loaded() -> None:
    found = modules.detect(OFFICIAL, Path("/usr/sbin/nginx"))
    assert found.compiled_in == {"stream"}
    assert found.files == ()
    assert found.has("stream")


def test_a_dynamic_module_is_loaded_from_the_root_its_nginx_is_in(tmp_path: Path) -> None:
    directory = tmp_path / "usr/lib/nginx/modules"
    directory.mkdir(parents=True)
    (directory / "ngx_stream_module.so").write_bytes(b"")
    found = modules.detect(DEBIAN, tmp_path / "usr/sbin/nginx")
    assert found.files == (directory / "ngx_stream_module.so",)
    assert found.has("stream")
    # another module comes the same way (njs: only ever a file of its own)
    (directory / "ngx_http_js_module.so").write_bytes(b"")
    njs = modules.Module("njs", "ngx_http_js_module.so")
    both = modules.detect(DEBIAN, tmp_path / "usr/sbin/nginx", (modules.STREAM, njs))
    assert both.load == (("stream", directory / "ngx_stream_module.so"),
                         ("njs", directory / "ngx_http_js_module.so"))
    main = render_main_conf(prefix=Path("/p"), routes_conf=Path("/p/g.conf"),
                            worker_processes="1", modules=both.files,
                            stream_conf=Path("/p/s.conf"))
    assert main.splitlines()[2:4] == [f"load_module {directory}/ngx_stream_module.so;",
                                      f"load_module {directory}/ngx_http_js_module.so;"]
    assert "stream {\n    include /p/s.conf;\n}\n" in main


def test_a_missing_module_says_where_it_was_looked_for(tmp_path: Path) -> None:
    found = modules.detect(DEBIAN, tmp_path / "usr/sbin/nginx")
    assert not found.has("stream")
    assert found.missing == ("stream",)
    assert found.detail == (
        f"{tmp_path}/usr/sbin/nginx has no stream module: not compiled in, and no "
        f"ngx_stream_module.so in {tmp_path}/usr/lib/nginx/modules, /usr/lib/nginx/modules")
    plain = render_main_conf(prefix=Path("/p"), routes_conf=Path("/p/g.conf"),
                             worker_processes="1")
    assert "load_module" not in plain
    assert "stream {" not in plain
    assert "ngx_stream" not in plain
    assert modules.find(str(tmp_path / "none")).detail.startswith("cannot run")


def test_the_nginx_of_this_machine_has_the_stream_module_as_a_file() -> None:
    """scripts/setup.sh installs sid's nginx with libnginx-mod-stream in a private root."""
    found = modules.find(require_programs("nginx")["nginx"])
    assert found.has("stream"), found.detail
