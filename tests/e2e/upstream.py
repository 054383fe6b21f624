#!/usr/bin/env python3
"""JSON upstream behind nginx for tests/e2e_netns.rs.

Usage: upstream.py HOST:PORT

GET and HEAD answer a small JSON document naming the request; POST, PUT and PATCH echo the
request body back byte for byte (it must be JSON, else 400); DELETE reads any body and answers
204. Request bodies may come with Content-Length or chunked (nginx normally de-chunks them
before they get here). Prints "listening HOST:PORT" on stdout once the socket is bound.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "e2e-upstream/1"

    def log_message(self, fmt, *args):
        sys.stderr.write("upstream: %s %s\n" % (self.address_string(), fmt % args))
        sys.stderr.flush()

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = bytearray()
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailer section, up to the empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send(self, code, body=b"", content_type="application/json"):
        self.send_response(code)
        if code not in (204, 304):
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD" and code not in (204, 304):
            self.wfile.write(body)

    def do_GET(self):
        doc = {"method": self.command, "path": self.path, "upstream": True}
        self.send(200, json.dumps(doc, sort_keys=True).encode())

    do_HEAD = do_GET

    def echo(self):
        body = self.read_body()
        try:
            json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self.send(400, b'{"error":"request body is not JSON"}')
            return
        self.send(200, body)

    do_POST = echo
    do_PUT = echo
    do_PATCH = echo

    def do_DELETE(self):
        self.read_body()
        self.send(204)


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    print("listening %s:%s" % (host, port), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
