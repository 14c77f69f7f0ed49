"""Job script for tests: report progress N times over the socket, then emit.

Usage: rpc_client_script.py [SOCKET] COUNT — the socket comes from
SOONER_SOCKET or argv[1], as Sooner passes it.
"""

from __future__ import annotations

import sys

from sooner.api_client import connect_from_env


def main() -> int:
    count = int(sys.argv[-1])
    client = connect_from_env()
    if client is None:
        print("no socket", file=sys.stderr)
        return 2
    with client:
        for i in range(1, count + 1):
            client.progress(i, max=count)
        client.emit("rpc-script:done", {"count": count})
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
