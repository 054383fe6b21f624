#!/usr/bin/env python3
"""Writes samples/sample.vxlan.pcap: a small capture as an AWS Traffic Mirroring target receives it
(outer Ethernet/IPv4/UDP 4789/VXLAN VNI 1234, inner Ethernet/IPv4/TCP), with a few HTTP/1.1
exchanges a user would recognise: a JSON GET, a JSON POST, a gzip response, a chunked response,
keep-alive on one connection, and a request whose response never comes (is_pending "true").
Standard library only; deterministic output. Usage: python3 samples/make_sample.py [OUT]"""
import gzip
import struct
import sys

VNI = 1234
T0 = 1_763_900_000  # capture start, epoch seconds


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data)//2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, proto, payload, ident=0, ttl=64):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, ttl, proto, 0,
                      bytes(src), bytes(dst))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def tcp(sport, dport, seq, ack, flags, payload=b""):
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload


def eth(payload, src=b"\x02\0\0\0\0\x01", dst=b"\x02\0\0\0\0\x02", ethertype=0x0800):
    return dst + src + struct.pack("!H", ethertype) + payload


def vxlan_frame(inner, sport):
    vx = struct.pack("!B3xI", 0x08, VNI << 8) + inner
    udp = struct.pack("!HHHH", sport, 4789, 8 + len(vx), 0) + vx
    outer_ip = ipv4([10, 99, 0, 10], [10, 99, 0, 20], 17, udp, ttl=255)
    return eth(outer_ip, b"\x06\0\0\0\0\x0a", b"\x06\0\0\0\0\x14")


class Conn:
    """One TCP connection; records frames with advancing time."""

    def __init__(self, cap, client, cport, server, sport):
        self.cap, self.c, self.cp, self.s, self.sp = cap, client, cport, server, sport
        self.cseq, self.sseq = 1000, 500000
        self.outer_sport = 65280 + (cport % 255)

    def frame(self, from_client, flags, payload=b""):
        if from_client:
            seg = tcp(self.cp, self.sp, self.cseq, self.sseq, flags, payload)
            ip = ipv4(self.c, self.s, 6, seg)
            self.cseq += len(payload) + (1 if flags & 0x03 else 0)
        else:
            seg = tcp(self.sp, self.cp, self.sseq, self.cseq, flags, payload)
            ip = ipv4(self.s, self.c, 6, seg)
            self.sseq += len(payload) + (1 if flags & 0x03 else 0)
        self.cap.append(vxlan_frame(eth(ip), self.outer_sport))

    def handshake(self):
        self.frame(True, 0x02)
        self.frame(False, 0x12)
        self.frame(True, 0x10)

    def send(self, from_client, data, mss=1448):
        for i in range(0, len(data), mss):
            self.frame(from_client, 0x18, data[i:i + mss])

    def close(self):
        self.frame(True, 0x11)
        self.frame(False, 0x11)
        self.frame(True, 0x10)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "samples/sample.vxlan.pcap"
    frames = []
    client, server = [10, 0, 1, 15], [10, 0, 2, 40]

    a = Conn(frames, client, 51514, server, 8080)
    a.handshake()
    a.send(True, b"GET /api/users/42?fields=name HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: curl/8.5.0\r\n"
                 b"Accept: application/json\r\nAuthorization: Bearer eyJhbGciOi.sample\r\n\r\n")
    body = b'{"id":42,"name":"Ada Lovelace","email":"ada@example.com"}'
    a.send(False, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
           % (len(body), body))
    post = b'{"sku":"A-100","quantity":2}'
    a.send(True, b"POST /api/cart HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(post), post))
    made = b'{"cart":"c-7","items":1}'
    a.send(False, b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nLocation: /api/cart/c-7\r\n"
                  b"Set-Cookie: cart=c-7; Path=/\r\nContent-Length: %d\r\n\r\n%s" % (len(made), made))
    a.close()

    b = Conn(frames, client, 51516, server, 8080)
    b.handshake()
    b.send(True, b"GET /api/catalog HTTP/1.1\r\nHost: shop.example\r\nAccept-Encoding: gzip\r\n\r\n")
    catalog = b'{"items":[' + b",".join(b'{"sku":"A-%d","price":%d}' % (i, 100 + i) for i in range(60)) + b"]}"
    gz = gzip.compress(catalog, mtime=0)
    b.send(False, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(gz), gz))
    b.send(True, b"GET /api/stream HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    chunks = [b'{"event":1}\n', b'{"event":2}\n']
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    b.send(False, b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
           + chunked)
    b.send(True, b"DELETE /api/cart/c-7 HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    b.send(False, b"HTTP/1.1 204 No Content\r\n\r\n")
    # A request whose response is never captured.
    b.send(True, b"GET /api/slow-report HTTP/1.1\r\nHost: shop.example\r\n\r\n")

    with open(out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, fr in enumerate(frames):
            ts = T0 * 1_000_000 + i * 1500
            f.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(fr), len(fr)))
            f.write(fr)


if __name__ == "__main__":
    main()
