"""``python -m falcon_oauth.healthcheck``: exit 0 when ``GET /health`` on this container's PORT answers 2xx.
The standard library only, so the image's HEALTHCHECK needs nothing else."""

import os
import sys
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8080')}/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:  # noqa: S310 (a fixed loopback URL)
            return 0 if 200 <= answer.status < 300 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
