# `helm test`: NATS answers and every service answers /healthz and /readyz. Run as
#   python -c "$(cat helm-test.py)" NATS_URLS http://SERVICE:PORT ...
# Standard library only (it runs in the arena image, read-only root, no token). Exits 1 naming
# every failure; prints each service's /statusz (degraded models are reported, not failures).
import json
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT_S = 5
failures = []
nats_urls, *services = sys.argv[1:]

for url in nats_urls.split(","):
    parts = urllib.parse.urlsplit(url.strip())
    try:
        # A NATS server greets every client with its INFO line, before any auth (and before TLS).
        with socket.create_connection((parts.hostname, parts.port or 4222), TIMEOUT_S) as sock:
            sock.settimeout(TIMEOUT_S)
            greeting = sock.makefile("rb").readline(65536)
    except OSError as exc:
        greeting = repr(exc).encode()
    if greeting.startswith(b"INFO "):
        print(f"ok   nats {url.strip()}")
    else:
        failures.append(f"nats {url.strip()}: no INFO greeting ({greeting[:200]!r})")

for base in services:
    for path in ("/healthz", "/readyz", "/statusz"):
        try:
            with urllib.request.urlopen(base + path, timeout=TIMEOUT_S) as resp:
                code, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            code, body = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            code, body = 0, repr(exc).encode()
        text = body.decode(errors="replace")[:500]
        if code != 200:
            failures.append(f"{base}{path}: {code} {text}")
        elif path == "/statusz":
            degraded = json.loads(body).get("degraded") or []
            print(f"ok   {base}: " + ("degraded: " + "; ".join(degraded) if degraded else "ok"))

for failure in failures:
    print(f"FAIL {failure}")
sys.exit(1 if failures else 0)
