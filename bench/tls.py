"""9. TLS: what terminating HTTPS costs, the agent beside HAProxy and Caddy in one run (#28).

Each gateway in turn (two workers or threads, as in part 8) in front of one echo task, with an
ECDSA P-256 and then an RSA 2048 certificate:

- new TLS handshakes per second: h2load over HTTP/1.1, 1500 clients of one request each, each
  on a new connection with a full handshake (h2load's clients do not share sessions);
- kept-alive HTTPS requests per second, HTTP/1.1 and HTTP/2 (h2load, 32 clients);
- session resumption: `openssl s_client -reconnect` counts the reused sessions;
- the ceiling: `openssl speed` for the same key (signatures per second, one core).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from bench import net
from bench.capacity import SERVICE, TASK, start_gateway
from bench.dns import Dnsmasq
from bench.options import Options
from bench.procs import BenchError, Procs

KEYS = {"ecdsa-p256": None, "rsa-2048": 2048}
SPEED = {"ecdsa-p256": ["ecdsap256"], "rsa-2048": ["rsa2048"]}


def _h2load(https: int, args: list[str], timeout: float = 300) -> float:
    run = subprocess.run(["h2load", *args, f"--connect-to={net.GATEWAY}:{https}",
                          f"https://{net.HOST_HEADER}:{https}/"],
                         capture_output=True, text=True, timeout=timeout, check=False)
    found = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", run.stdout)
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed",
                     run.stdout)
    if found is None or done is None:
        raise BenchError(f"h2load said: {run.stdout[-500:]} {run.stderr[-500:]}")
    if int(done.group(2)):
        raise BenchError(f"h2load: {done.group(2)} requests failed: {run.stdout[-300:]}")
    return float(found.group(1))


def _resumed(https: int) -> int:
    """Of 5 reconnections, how many resumed the session."""
    run = subprocess.run(["openssl", "s_client", "-connect", f"{net.GATEWAY}:{https}",
                          "-servername", net.HOST_HEADER, "-reconnect", "-tls1_2"],
                         input="", capture_output=True, text=True, timeout=60, check=False)
    return len(re.findall(r"^Reused, ", run.stdout, re.M))


def speed(key: str, seconds: int = 3) -> float:
    """Signatures per second for the key, one core (`openssl speed`)."""
    run = subprocess.run(["openssl", "speed", "-seconds", str(seconds), *SPEED[key]],
                         capture_output=True, text=True, timeout=120, check=False)
    pattern = (r"^\s*256 bits ecdsa \(nistp256\)\s+[\d.]+s\s+[\d.]+s\s+([\d.]+)"
               if key.startswith("ecdsa") else r"^rsa 2048 bits\s+[\d.]+s\s+[\d.]+s\s+([\d.]+)")
    found = re.search(pattern, run.stdout, re.M)
    if found is None:
        raise BenchError(f"openssl speed said: {run.stdout[-500:]}")
    return float(found.group(1))


def one(kind: str, opts: Options, workdir: Path, certs: Path, bundle: Path) -> dict[str, Any]:
    seconds = max(2, round(opts.duration / 2))
    with Procs(workdir) as procs:
        if kind == "agent":
            Dnsmasq(procs, net.DNS_MAIN).set({f"tasks.{SERVICE}": [TASK]},
                                             confirm=f"tasks.{SERVICE}")
        gw, https = start_gateway(kind, procs, certs, bundle, alpn="h2,http/1.1")
        _h2load(https, ["--h1", "-n", "200", "-c", "8"])  # warm up
        result = {
            "detail": gw.detail,
            # one request per client, each on its own new connection (a full handshake)
            "handshakes_per_s": _h2load(https, ["--h1", "-n", "1500", "-c", "1500"]),
            "h1_keepalive_req_per_s": _h2load(https, ["--h1", "-D", str(seconds), "-c", "32"]),
            "h2_req_per_s": _h2load(https, ["-D", str(seconds), "-c", "32", "-m", "10"]),
            "resumed_of_5": _resumed(https),
        }
        gw.check_alive()
    return result


def run(opts: Options, workdir: Path) -> dict[str, Any]:
    from tests.support.load import EchoServer
    from tests.support.tlsca import TestCA

    ca = TestCA()
    bundle = ca.write_bundle(workdir / "roots.pem")
    echo = EchoServer(TASK, net.UPSTREAM_PORT)
    results: dict[str, Any] = {}
    try:
        for key, bits in KEYS.items():
            certs = workdir / key / "certs"
            certs.mkdir(parents=True)
            ca.issue(net.HOST_HEADER, rsa_bits=bits).write(certs, net.HOST_HEADER)
            results[key] = {"openssl_speed_sign_per_s": speed(key)}
            for kind in ("agent", "haproxy", "caddy"):
                sub = workdir / key / kind
                sub.mkdir()
                results[key][kind] = one(kind, opts, sub, certs, bundle)
    finally:
        echo.stop()
    goals = []
    for key, r in results.items():
        agent, haproxy = r["agent"], r["haproxy"]
        for figure in ("handshakes_per_s", "h1_keepalive_req_per_s", "h2_req_per_s"):
            ratio = agent[figure] / haproxy[figure] if haproxy[figure] else None
            goals.append({"goal": f"{key} {figure}: agent / HAProxy >= 1.0",
                          "measured": f"{ratio:.2f}" if ratio is not None else "-",
                          "met": ratio is not None and ratio >= 1.0})
        goals.append({"goal": f"{key}: sessions resumed", "measured":
                      f"{agent['resumed_of_5']} of 5", "met": agent["resumed_of_5"] == 5})
    return {"keys": results, "goals": goals}
