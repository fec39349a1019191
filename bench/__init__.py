"""`python -m bench` (`make bench`): swarm-gateway against the alternatives, side by side, on
this machine, with real nginx, HAProxy, Caddy, dnsmasq, keepalived and wrk. See
docs/benchmarks.md."""
