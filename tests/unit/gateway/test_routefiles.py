"""The files routes name come from --route-files-dir and never are a secret of the gateway
(issue #24, finding 1): links, hard links, the folder itself, what is not a regular file.
Through the real agent and nginx: tests/integration/test_route_files.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.core.routes import RouteTable, parse_routes
from agent.gateway.drivers.routefiles import RouteFiles, Secrets, for_gateway
from agent.gateway.model import FilesPlan
from agent.gateway.settings import GatewaySettings

PAGE = "<h1>back soon</h1>\n"
TOKEN = "the-admin-token-0123456789abcdef\n"


def table(**files: str) -> RouteTable:
    return parse_routes({"routes": [{"hosts": [f"{name}.example.com"], "service": "svc",
                                     "port": 80, **({"basic_auth": value}
                                                    if value.endswith(".htpasswd")
                                                    else {"error_page": value})}
                                    for name, value in files.items()]})


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, RouteFiles]:
    """--certs-dir with the admin token and a key; --route-files-dir with a page."""
    certs, files_dir = tmp_path / "secrets", tmp_path / "files"
    certs.mkdir()
    files_dir.mkdir()
    (certs / "admin-token").write_text(TOKEN)
    (certs / "demo.key").write_text("-----BEGIN PRIVATE KEY-----\nsecret\n")
    (files_dir / "page.html").write_text(PAGE)
    store = RouteFiles(files_dir, tmp_path / "store",
                       Secrets(dirs=(certs,), files=(tmp_path / "controller-token",)))
    (tmp_path / "controller-token").write_text(TOKEN)
    return certs, files_dir, store


def errors(plan: FilesPlan | None) -> dict[str, str | None]:
    assert plan is not None
    return {f.name: f.error for f in plan.files}


def served(plan: FilesPlan | None) -> set[str]:
    """The contents of every copy nginx would read."""
    assert plan is not None
    return {f.path.read_text() for f in plan.files if f.path is not None}


def test_links_hard_links_and_what_is_not_a_file_are_refused(
        world: tuple[Path, Path, RouteFiles], tmp_path: Path) -> None:
    certs, files_dir, store = world
    (files_dir / "link.html").symlink_to(certs / "admin-token")
    (files_dir / "rel.htpasswd").symlink_to("../secrets/admin-token")
    os.link(certs / "demo.key", files_dir / "hard.html")
    os.link(tmp_path / "controller-token", files_dir / "token.html")
    os.mkfifo(files_dir / "fifo.html")
    (files_dir / "dir.html").mkdir()
    plan = store.plan(table(a="page.html", b="link.html", c="rel.htpasswd", d="hard.html",
                            e="token.html", f="fifo.html", g="dir.html"))
    assert errors(plan) == {
        "page.html": None,
        "link.html": f"link.html: a symbolic link: a route's file is read only as a file of "
                     f"{files_dir} itself, never through a link (error_page of b.example.com/)",
        "rel.htpasswd": f"rel.htpasswd: a symbolic link: a route's file is read only as a file "
                        f"of {files_dir} itself, never through a link (basic_auth of "
                        "c.example.com/)",
        "hard.html": f"hard.html: the same file as {certs / 'demo.key'}, a secret of the "
                     "gateway: no route reads it (error_page of d.example.com/)",
        "token.html": f"token.html: the same file as {tmp_path / 'controller-token'}, a secret "
                      "of the gateway: no route reads it (error_page of e.example.com/)",
        "fifo.html": "fifo.html: not a regular file (error_page of f.example.com/)",
        "dir.html": "dir.html: not a regular file (error_page of g.example.com/)",
    }
    assert served(plan) == {PAGE}


@pytest.mark.parametrize("where", ["same", "inside", "link"])
def test_the_secrets_folder_is_never_the_route_files_folder(tmp_path: Path, where: str) -> None:
    certs = tmp_path / "secrets"
    certs.mkdir()
    (certs / "token.html").write_text(TOKEN)
    files_dir = {"same": certs, "inside": certs / "files", "link": tmp_path / "files"}[where]
    if where == "inside":
        files_dir.mkdir()
        (files_dir / "token.html").write_text(TOKEN)
    if where == "link":
        files_dir.symlink_to(certs)
    store = RouteFiles(files_dir, tmp_path / "store", Secrets(dirs=(certs,)))
    (error,) = errors(store.plan(table(a="token.html"))).values()
    assert error == (f"token.html: --route-files-dir {files_dir} is (or is inside) {certs}, "
                     "where the gateway's secrets are: no route reads a file there "
                     "(error_page of a.example.com/)")
    assert not (tmp_path / "store").exists()


def test_a_gateway_s_secrets_are_what_its_settings_name(tmp_path: Path) -> None:
    settings = GatewaySettings(certs_dir=tmp_path / "certs", state_dir=tmp_path / "state",
                               admin_token_file=tmp_path / "a", route_files_dir=tmp_path / "f",
                               controller_token_file=tmp_path / "c", nginx_prefix=tmp_path)
    store = for_gateway(settings, tmp_path / "store")
    assert store.files_dir == tmp_path / "f"
    assert store.secrets == Secrets(dirs=(tmp_path / "certs", tmp_path / "state"),
                                    files=(tmp_path / "a", tmp_path / "c"))


def test_a_folder_gone_a_moment_is_read_again(
        world: tuple[Path, Path, RouteFiles]) -> None:
    _, files_dir, store = world
    routes = table(a="page.html")
    (files_dir / "page.html").write_bytes(b"\xff")
    assert "not UTF-8" in (errors(store.plan(routes))["page.html"] or "")
    (files_dir / "page.html").write_text(PAGE)
    # the folder gone a moment: said, and read again as soon as it is back
    files_dir.rename(files_dir.with_name("away"))
    assert "does not exist" in (errors(store.plan(routes))["page.html"] or "")
    files_dir.with_name("away").rename(files_dir)
    assert errors(store.plan(routes)) == {"page.html": None}
