#!/usr/bin/python3
"""Test HTTP server for spec/http_spec.lua (loopback only).

Usage: http_server.py PORTFILE [CERT KEY]
Listens on 127.0.0.1 on a free port (with TLS when CERT and KEY are given),
writes the port to PORTFILE once it accepts connections, and serves until
killed. /stats reports connections opened and closed, so a spec can see
that a cancelled request closed its connection (or that requests reused
one). /drop and /close end a connection after their answer.
"""
import json
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs

lock = threading.Lock()
stats = {"opened": 0, "closed": 0, "hanging": 0}


def bump(key, n=1):
    with lock:
        stats[key] += n


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        bump("opened")

    def finish(self):
        try:
            super().finish()
        finally:
            bump("closed")

    def send(self, status, body, ctype="text/plain", extra=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def chunk(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def wait_for_close(self):
        """Blocks until the client closes the connection."""
        bump("hanging")
        try:
            self.connection.settimeout(60)
            while self.connection.recv(1024):
                pass
        except OSError:
            pass
        finally:
            bump("hanging", -1)
        self.close_connection = True

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def handle_any(self):
        u = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        parts = u.path.strip("/").split("/")
        head = parts[0]
        if head == "stats":
            with lock:
                self.send(200, json.dumps(stats), "application/json")
        elif head == "bytes":
            n = int(parts[1])
            self.send(200, b"x" * n, "application/octet-stream")
        elif head == "echo":
            data = self.body()
            self.send(200, json.dumps({
                "method": self.command, "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": data.decode("latin-1")}), "application/json")
        elif head == "status":
            code = int(parts[1])
            self.send(code, "status %d" % code)
        elif head == "redirect":
            n = int(parts[1])
            if n == 0:
                self.send(200, "arrived")
            else:
                self.send(302, "", extra=[("Location", "/redirect/%d" % (n - 1))])
        elif head == "r307":
            # a 307: the client sends the same body again to /echo
            self.body()
            self.send(307, "", extra=[("Location", "/echo")])
        elif head == "headers":
            self.send(200, "ok", extra=[("Set-Cookie", "a=1"),
                                        ("Set-Cookie", "b=2"),
                                        ("X-Token", "t")])
        elif head == "bigheader":
            n = int(q.get("n", 2000))
            self.send(200, "ok", extra=[("X-Big", "b" * n), ("X-After", "z")])
        elif head == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(int(q.get("n", 5))):
                self.chunk("line %d\n" % i)
                time.sleep(float(q.get("delay", 0)))
            self.chunk("")
        elif head == "sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(int(q.get("n", 3))):
                self.chunk("data: event %d\n\n" % i)
                time.sleep(float(q.get("delay", 0.05)))
            self.chunk("")
        elif head == "stall":
            # headers and part of the body, then nothing until closed
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"y" * 10)
            self.wfile.flush()
            self.wait_for_close()
        elif head == "hang":
            self.wait_for_close()
        elif head == "drop":
            # a keep-alive answer, then the connection closes while idle
            self.send(200, "bye")
            self.wfile.flush()
            time.sleep(float(q.get("delay", 0.1)))
            self.close_connection = True
        elif head == "close":
            self.send(200, "closing", extra=[("Connection", "close")])
            self.close_connection = True
        elif head == "json":
            self.send(200, '{"name":"braid","list":[1,2,3],"none":null,'
                      '"empty":[]}', "application/json")
        else:
            self.send(404, "not found")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def main():
    srv = Server(("127.0.0.1", 0), Handler)
    if len(sys.argv) >= 4:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.rename(tmp, sys.argv[1])
    srv.serve_forever()


if __name__ == "__main__":
    main()
