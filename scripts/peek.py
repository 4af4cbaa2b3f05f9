"""Print (and consume) the messages waiting on a broker destination: a look at what the
gateway published.

    .venv/bin/python scripts/peek.py [/queue/SmileSubscription] [--count N] [--wait S]
"""

from __future__ import annotations

import argparse
import threading
import time

import stomp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("destination", nargs="?", default="/queue/SmileSubscription")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=61613)
    ap.add_argument("--count", type=int, default=100, help="stop after this many")
    ap.add_argument("--wait", type=float, default=3.0, help="stop after this many idle seconds")
    args = ap.parse_args()
    seen = []
    last = [time.monotonic()]
    lock = threading.Lock()

    class Printer(stomp.ConnectionListener):  # type: ignore[misc]
        def on_message(self, frame: stomp.utils.Frame) -> None:
            with lock:
                seen.append(frame)
                last[0] = time.monotonic()
                print(f"--- message {len(seen)}")
                for key, value in sorted(frame.headers.items()):
                    print(f"{key}: {value}")
                print()
                print(frame.body if isinstance(frame.body, str) else frame.body.decode())

    conn = stomp.Connection12([(args.host, args.port)], vhost="/")
    conn.set_listener("printer", Printer())
    conn.connect("peek", "peek", wait=True)
    conn.subscribe(args.destination, id="peek", ack="auto")
    while len(seen) < args.count and time.monotonic() - last[0] < args.wait:
        time.sleep(0.1)
    conn.disconnect()
    print(f"--- {len(seen)} message(s) from {args.destination}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
