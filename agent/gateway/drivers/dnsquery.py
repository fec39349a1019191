"""dnspython's asynchronous queries, loaded without its DNS-over-QUIC support.

dns.asyncquery loads its DNS-over-QUIC client whenever aioquic is installed (the tests install
it as their HTTP/3 client; the image has none). The agent's DNS server forwards over UDP and
TCP only (drivers/dnsserver.py), and that client is 8 MiB of the agent's memory: the feature
is declared absent first, as dnspython's dns._features.force() is there for.
"""

from __future__ import annotations

import dns._features

dns._features.force("doq", False)

from dns.asyncquery import udp_with_fallback  # noqa: E402  (after the feature is declared absent)

__all__ = ["udp_with_fallback"]
