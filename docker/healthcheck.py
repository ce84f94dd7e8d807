"""Container health check: exit 0 when the worker's /healthz answers 200.

Docker's HEALTHCHECK runs it (``python /opt/recstream/healthcheck.py``); the
images carry no curl. The port comes from ``RECSTREAM_WEB_PORT`` like the worker's
own, so the two cannot disagree. ``--path /readyz`` checks readiness instead
(docker compose uses that to start the replay only once the worker serves).
Standard library only.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request


def check(path: str, port: int, timeout: float) -> bool:
    """True when ``http://127.0.0.1:{port}{path}`` answers 200 within ``timeout`` s."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed http URL)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", default="/healthz", choices=("/healthz", "/readyz"))
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    port = int(os.environ.get("RECSTREAM_WEB_PORT", "6066"))
    ok = check(args.path, port, args.timeout)
    if not ok:
        print(f"{args.path} on port {port}: not OK", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
