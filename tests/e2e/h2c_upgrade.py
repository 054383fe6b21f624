"""An HTTP/2 server for tests/e2e_netns.rs that takes `Upgrade: h2c` (RFC 7540 section 3.2),
written with the h2 library (python-hyper): nginx and nghttpd answer HTTP/2 in clear text only
with prior knowledge.

  h2c_upgrade.py ADDR:PORT LOG

Answers every request with 200 and the body "h2c:" + its path; the upgraded request is stream 1.
Appends "METHOD PATH STATUS" to LOG per request answered; prints "listening" when ready.
"""
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events

LOCK = threading.Lock()


def respond(conn, log, stream_id, method, path):
    body = b"h2c:" + path
    conn.send_headers(stream_id, [(":status", "200"), ("content-type", "text/plain"),
                                  ("content-length", str(len(body)))])
    conn.send_data(stream_id, body, end_stream=True)
    with LOCK, open(log, "a") as f:
        f.write(f"{method.decode()} {path.decode()} 200\n")


def serve(sock, log):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65535)
        if not chunk:
            return
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    method, path, _ = lines[0].split(b" ", 2)
    fields = {}
    for line in lines[1:]:
        name, value = line.split(b":", 1)
        fields[name.strip().lower()] = value.strip()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    if fields.get(b"upgrade", b"").lower() != b"h2c":
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        return
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    conn.initiate_upgrade_connection(fields[b"http2-settings"])
    respond(conn, log, 1, method, path)
    sock.sendall(conn.data_to_send())
    requests = {}
    data = rest
    while True:
        for ev in conn.receive_data(data) if data else []:
            if isinstance(ev, h2.events.RequestReceived):
                h = dict(ev.headers)
                requests[ev.stream_id] = (h[b":method"], h[b":path"])
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in requests:
                respond(conn, log, ev.stream_id, *requests.pop(ev.stream_id))
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
        data = sock.recv(65535)
        if not data:
            return


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(16)
    print("listening", flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve, args=(sock, sys.argv[2]), daemon=True).start()


if __name__ == "__main__":
    main()
