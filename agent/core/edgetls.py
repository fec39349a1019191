"""TLS at the edge beyond the server certificate (docs/tls.md): client certificates on a route's
hosts (`tls.client_ca`, `tls.client_verify`) and TLS to the tasks (`upstream_tls`).

The CA files are files of --route-files-dir, named like every file a route names (core/fields.py:
a plain name, here ending in .pem), never a path: a label's owner must not make the gateway read
a file they could not read themselves (gateway/drivers/routefiles.py checks them).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from agent.core.errors import shown as _shown
from agent.core.fields import CaFile, DnsName

# What the task is told about the client's certificate, always set by the gateway on every
# proxied request (a client's own header of these names never reaches a task): nginx's
# $ssl_client_verify (SUCCESS, NONE, FAILED:reason; empty over plain HTTP) and the verified
# certificate's subject as RFC 2253 text ($ssl_client_s_dn).
CLIENT_VERIFY_HEADER = "X-Client-Verify"
CLIENT_SUBJECT_HEADER = "X-Client-Subject"
CLIENT_HEADERS = frozenset({CLIENT_VERIFY_HEADER.lower(), CLIENT_SUBJECT_HEADER.lower()})

class UpstreamTls(BaseModel):
    """TLS from the gateway to the route's tasks: their certificate verified against `ca` (a
    file of --route-files-dir) for `server_name` (default: the route's service or host)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    verify: bool = Field(default=True, strict=True)
    ca: CaFile | None = None
    server_name: DnsName | None = None

    @model_validator(mode="after")
    def _ca_to_verify(self) -> UpstreamTls:
        if self.verify and self.ca is None:
            raise ValueError("verify is on: give 'ca', the CA file (in --route-files-dir) the "
                             "tasks' certificates are issued by (or verify: false)")
        return self


def as_upstream_tls(value: object) -> object:
    if value is True:  # `upstream_tls: true`: TLS, verified, which needs a CA: said by the model
        return {}
    if value is False:
        return None
    if value is None or isinstance(value, dict | UpstreamTls):
        return value
    raise ValueError(f"{_shown(value)}: give the upstream_tls options as a mapping "
                     "(verify, ca, server_name)")


UpstreamTlsField = Annotated[UpstreamTls | None, BeforeValidator(as_upstream_tls)]
