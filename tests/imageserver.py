"""A real HTTPS file server for image-fetch tests: TLS with a test CA
(``warmcache.testing.certs``), counts the GETs of each path, and can trickle its
replies (a slow image server) or hold them until released (to make
concurrent fetches overlap without sleeping in the test)."""

from __future__ import annotations

import ssl
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from warmcache.testing.certs import TestCA


class ImageServer:
    def __init__(self, root: Path, certs: Path) -> None:
        self.root = root
        self.ca = TestCA(certs, "images")
        issued = self.ca.issue("127.0.0.1", server=True)
        self.gets: Counter[str] = Counter()
        self.trickle_s = 0.0  # pause between 1 KiB pieces of a reply
        self.gate = threading.Event()  # replies wait for it (set: they go at once)
        self.gate.set()
        self.closed = threading.Event()  # set on exit: a trickling reply ends at once
        self.waiting = 0  # requests held at the gate
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                with server._lock:
                    server.gets[name] += 1
                    server.waiting += 1
                server.gate.wait(30)
                with server._lock:
                    server.waiting -= 1
                path = server.root / name
                if "/" in name or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    if not server.trickle_s:
                        self.wfile.write(data)
                        return
                    for at in range(0, len(data), 1024):
                        self.wfile.write(data[at : at + 1024])
                        self.wfile.flush()
                        if server.closed.wait(server.trickle_s):  # the slow server's pace
                            return
                except OSError:
                    return  # the client gave up

            def log_message(self, *_args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(issued.cert, issued.key)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        _t: type[BaseException] | None,
        _e: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.closed.set()
        self.gate.set()
        self._httpd.shutdown()
        self._httpd.server_close()
