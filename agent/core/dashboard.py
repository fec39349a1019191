"""The dashboard: one page on the admin port (and on the controller's) that shows /status.

The page is three static files shipped in the package (agent/static/): no build step, no CDN,
nothing fetched from elsewhere. They hold no data: everything the page shows comes from the
/status of the server it was loaded from, polled by the page, so the page shows exactly what
/status shows to whoever may read /status, and nothing else. Names in it (hosts, services, DNS
errors, labels) come from users and DNS: the script puts them in the page as text only.

Also here: the VRRP state of the node, read from the textfile keepalived's notify hook writes
(agent/keepalived/notify.py), for /status.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

PREFIX = "/dashboard/"
FILES = {"": ("dashboard.html", "text/html"), "dashboard.js": ("dashboard.js", "text/javascript"),
         "dashboard.css": ("dashboard.css", "text/css")}
# Only the page's own files run and load; the page talks to its own server only.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_page(app: web.Application) -> None:
    """GET /dashboard/ (and / and /dashboard, which lead there) and the page's files."""
    static = resources.files("agent.core") / "static"
    bodies = {name: (static.joinpath(file).read_bytes(), kind)
              for name, (file, kind) in FILES.items()}

    async def page(request: web.Request) -> web.Response:
        found = bodies.get(request.match_info["file"])
        if found is None:
            raise web.HTTPNotFound(text="no such file\n")
        body, kind = found
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=HEADERS)

    async def to_page(_: web.Request) -> web.Response:
        raise web.HTTPFound(PREFIX)

    app.router.add_get(PREFIX + "{file:[a-z.]*}", page)
    app.router.add_get("/dashboard", to_page)
    app.router.add_get("/", to_page)
