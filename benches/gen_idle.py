#!/usr/bin/env python3
"""Writes a VXLAN capture (as AWS Traffic Mirroring delivers it: outer Ethernet/IPv4/UDP 4789/VXLAN,
inner Ethernet/IPv4/TCP) of N TCP connections, each with a three-way handshake, one complete
HTTP/1.1 GET with a small JSON response, and the client's ACK of it -- and no FIN or RST: every
connection stays open, idle, mid-session. benches/line-rate.sh sends it to the daemon to measure
the memory an idle open connection costs.

Every connection has its own client address and port (10.64.0.0/10 clients, one server), so N
connections are N flows. With --close each connection also ends with FIN/FIN/ACK (a load capture of
N complete pairs: benches/line-rate.sh uses one for its Kafka measurement), and --body pads every
response body to about that many bytes.
Standard library only; deterministic output; reuses samples/make_sample.py's frame builders.

Usage: python3 benches/gen_idle.py [--conns N] [--close] [--body BYTES] OUT"""
import argparse
import os
import struct
import sys

sys.dont_write_bytecode = True  # no __pycache__ in samples/
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "samples"))
import make_sample as ms  # noqa: E402

SERVER = [10, 0, 2, 40]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=10_000)
    ap.add_argument("--close", action="store_true", help="end every connection with FIN")
    ap.add_argument("--body", type=int, default=0, help="response body of about this many bytes")
    ap.add_argument("out")
    a = ap.parse_args()

    frames = []
    body = b'{"id":%d,"ok":true}'
    for i in range(a.conns):
        j = i + 1
        client = [10, 64 + (j >> 16 & 0x3F), j >> 8 & 0xFF, j & 0xFF]
        c = ms.Conn(frames, client, 40000 + i % 20000, SERVER, 8080)
        c.handshake()
        c.send(True, b"GET /api/items/%d HTTP/1.1\r\nHost: shop.example\r\nAccept: application/json\r\n"
                     b"User-Agent: gen_idle\r\n\r\n" % i)
        b = body % i
        if a.body > len(b):
            b = b[:-1] + b',"pad":"' + b"x" * max(0, a.body - len(b) - 9) + b'"}'
        c.send(False, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (len(b), b))
        c.frame(True, 0x10)  # the client acknowledges the response; then nothing more
        if a.close:
            c.close()

    with open(a.out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, fr in enumerate(frames):
            ts = ms.T0 * 1_000_000 + i * 20
            f.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(fr), len(fr)))
            f.write(fr)


if __name__ == "__main__":
    main()
