"""A stand-in lab process for the backend's own tests (the end-to-end tests run
the real jupyterhub-singleuser).

It serves HTTP at the address in JUPYTERHUB_SERVICE_URL, like the real one,
answering 200 on every GET, and behaves as FAKELAB_MODE says:
``serve`` (default), ``crash`` (print some lines and exit 3 at once),
``exit-later`` (serve, then exit 0 after FAKELAB_SECONDS), ``never-ready``
(run without listening). ``--start-delay=S`` on its command line (or FAKELAB_START_DELAY)
makes it wait S seconds before it listens (a lab that is slow to start), and
FAKELAB_IGNORE_TERM=1 makes it ignore SIGTERM (a lab that is slow to stop: the backend
kills it after its system's stop_grace).
"""

import http.server
import os
import signal
import sys
import time
from urllib.parse import urlparse


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"version": "fake"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        print("fakelab:", fmt % args, flush=True)


def main() -> None:
    mode = os.environ.get("FAKELAB_MODE", "serve")
    print(f"fakelab starting in mode {mode}; args {sys.argv[1:]}", flush=True)
    if mode == "crash":
        for i in range(30):
            print(f"fakelab line {i}", flush=True)
        print("fakelab: ModuleNotFoundError: no module named 'jupyterlab'", flush=True)
        sys.exit(3)
    if mode == "never-ready":
        time.sleep(3600)
    if os.environ.get("FAKELAB_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    delays = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--start-delay=")]
    delay = float(delays[-1] if delays else os.environ.get("FAKELAB_START_DELAY", "0"))
    if delay > 0:
        time.sleep(delay)
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    server = http.server.ThreadingHTTPServer((url.hostname or "127.0.0.1", url.port or 80), Handler)
    if mode == "exit-later":
        server.timeout = 0.1
        end = time.monotonic() + float(os.environ.get("FAKELAB_SECONDS", "1"))
        while time.monotonic() < end:
            server.handle_request()
        print("fakelab: done, exiting", flush=True)
        sys.exit(0)
    server.serve_forever()


if __name__ == "__main__":
    main()
