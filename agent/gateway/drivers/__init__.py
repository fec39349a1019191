"""The edges: what touches the world (nginx, DNS, certificate and route files, the controller,
the access log, ports)."""
