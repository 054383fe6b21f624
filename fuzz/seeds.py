#!/usr/bin/env python3
"""Builds fuzz/corpus/<target>/ seed files from the project's capture corpus.

Usage: seeds.py CORPUS_DIR OUT_DIR

Reads every capture under CORPUS_DIR/{vxlan,pcap,real} with the corpus's own pcapio.py reader and
writes, one file per seed (named by content hash):
  decode/        UDP payloads of VXLAN datagrams, and raw frames of the plain captures
  pipeline/      runs of datagrams (and of capture frames) in the pipeline target's record format
  http_session/  client and server byte streams of TCP flows, in the http_session target's format
  reassembly/    one direction's captured segments, in the reassembly target's `arbitrary` layout
  geneve/        some of decode's VXLAN datagrams as AWS Gateway Load Balancer would carry them in
                 Geneve (three 0x0108 options): the whole VXLAN datagram in IPv4/UDP 4789, the
                 inner Ethernet frame (0x6558), the inner IP packet (0x0800/0x86DD)
  capture/       capture files: the first records of some captures (cut at a record boundary
                 and inside a record), and a few packets rewritten as pcap in both byte orders
                 and resolutions and as pcapng with nanosecond ticks, simple and obsolete packet
                 blocks, both byte orders
"""
import hashlib
import os
import struct
import sys

CORPUS, OUT = sys.argv[1], sys.argv[2]
sys.path.insert(0, CORPUS)
import pcapio  # noqa: E402

VXLAN_PORTS = (4789, 8472)
# LinkType order of the pipeline target: Ethernet, RawIp, Null, Loop, LinuxSll, LinuxSll2.
LINK_INDEX = {1: 0, 12: 1, 14: 1, 101: 1, 228: 1, 229: 1, 0: 2, 108: 3, 113: 4, 276: 5}

counts = {}


def put(target, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    path = os.path.join(d, name)
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(data)
        counts[target] = counts.get(target, 0) + 1


# --- minimal decoding: link layer -> IP -> TCP / UDP(VXLAN) -> inner Ethernet ...

def ip_layer(data, ts, out, depth):
    if not data:
        return
    v = data[0] >> 4
    if v == 4 and len(data) >= 20:
        ihl = (data[0] & 0x0F) * 4
        total = struct.unpack(">H", data[2:4])[0]
        frag = struct.unpack(">H", data[6:8])[0]
        if frag & 0x3FFF:
            return
        proto = data[9]
        src, dst = data[12:16], data[16:20]
        payload = data[ihl:max(ihl, min(total, len(data)))]
    elif v == 6 and len(data) >= 40:
        proto = data[6]
        src, dst = data[8:24], data[24:40]
        plen = struct.unpack(">H", data[4:6])[0]
        payload = data[40:40 + plen]
        while proto in (0, 43, 60, 44) and len(payload) >= 8:
            if proto == 44:
                return
            proto, hl = payload[0], (payload[1] + 1) * 8
            payload = payload[hl:]
    else:
        return
    if proto == 6 and len(payload) >= 20:
        sport, dport, seq, ack = struct.unpack(">HHII", payload[:12])
        off = (payload[12] >> 4) * 4
        flags = payload[13]
        out.append(("tcp", (src, sport), (dst, dport), seq,
                    ack if flags & 0x10 else None, flags, payload[off:], ts))
    elif proto == 17 and len(payload) >= 8:
        dport = struct.unpack(">H", payload[2:4])[0]
        udp = payload[8:]
        if dport in VXLAN_PORTS and len(udp) >= 8 and depth < 4:
            out.append(("vxlan", udp, ts))
            ether(udp[8:], ts, out, depth + 1)


def ether(data, ts, out, depth):
    if len(data) < 14:
        return
    et = struct.unpack(">H", data[12:14])[0]
    off = 14
    while et in (0x8100, 0x88A8, 0x9100) and len(data) >= off + 4:
        et = struct.unpack(">H", data[off + 2:off + 4])[0]
        off += 4
    if et in (0x0800, 0x86DD):
        ip_layer(data[off:], ts, out, depth)


def frame(linktype, data, ts):
    out = []
    if linktype == 1:
        ether(data, ts, out, 0)
    elif linktype in (12, 14, 101, 228, 229):
        ip_layer(data, ts, out, 0)
    elif linktype in (0, 108):
        ip_layer(data[4:], ts, out, 0)
    elif linktype == 113:
        ip_layer(data[16:], ts, out, 0)
    elif linktype == 276:
        ip_layer(data[20:], ts, out, 0)
    return out


def captures():
    for sub in ("vxlan", "pcap", "real"):
        d = os.path.join(CORPUS, sub)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if name.endswith((".pcap", ".pcapng")):
                yield sub, os.path.join(d, name)


def spread(items, n):
    """At most n items: the first half in order, the rest evenly spaced."""
    if len(items) <= n:
        return items
    head = items[: n // 2]
    rest = items[n // 2:]
    step = len(rest) / (n - len(head))
    return head + [rest[int(i * step)] for i in range(n - len(head))]


# --- targets

def seeds_decode(packets, decoded):
    vx = [e[1] for evs in decoded for e in evs if e[0] == "vxlan"]
    for p in spread(list(dict.fromkeys(vx)), 25):
        put("decode", p)
    raw = [p.data for p in packets]
    for p in spread(list(dict.fromkeys(raw)), 10):
        put("decode", p)


def ip_checksum(header):
    total = sum(struct.unpack(">%dH" % (len(header) // 2), header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def geneve_header(protocol, cookie):
    opts = struct.pack(">HBBQ", 0x0108, 1, 2, 0x0E3C5B1A2F47A901)
    opts += struct.pack(">HBBQ", 0x0108, 2, 2, 0x12345678)
    opts += struct.pack(">HBBI", 0x0108, 3, 1, cookie)
    return struct.pack(">BBHI", len(opts) // 4, 0, protocol, 0) + opts


def seeds_geneve(decoded):
    vx = [e[1] for evs in decoded for e in evs if e[0] == "vxlan"]
    for i, d in enumerate(spread(list(dict.fromkeys(vx)), 8)):
        udp = struct.pack(">HHHH", 40000 + i, 4789, 8 + len(d), 0) + d
        ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0x4000, 64, 17, 0,
                                   bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])))
        ip[10:12] = struct.pack(">H", ip_checksum(bytes(ip)))
        put("geneve", geneve_header(0x0800, i) + bytes(ip) + udp)
        inner = d[8:]
        put("geneve", geneve_header(0x6558, i) + inner)
        off = 14
        while len(inner) >= off + 4 and inner[off - 2:off] in (b"\x81\x00", b"\x88\xa8", b"\x91\x00"):
            off += 4
        if len(inner) >= off and inner[off - 2:off] in (b"\x08\x00", b"\x86\xdd"):
            put("geneve", geneve_header(struct.unpack(">H", inner[off - 2:off])[0], i) + inner[off:])


def seeds_pipeline(packets, decoded, is_vxlan):
    recs = []
    prev = None
    for p, evs in zip(packets, decoded):
        us = p.ts_ns // 1000
        dt = 0 if prev is None else max(0, us - prev)
        prev = us
        e = min(31, dt.bit_length())
        expire = 0x20 if dt > 1_000_000 else 0
        outer = [ev for ev in evs if ev[0] == "vxlan"]
        if is_vxlan and outer:
            body = outer[0][1]
            recs.append(bytes([e | expire]) + struct.pack(">H", len(body)) + body)
        elif not is_vxlan and p.linktype in LINK_INDEX:
            idx = LINK_INDEX[p.linktype]
            body = p.data[:65535]
            if idx == 0:
                recs.append(bytes([0x80 | e | expire]) + struct.pack(">H", len(body)) + body)
            else:
                recs.append(bytes([0xC0 | e | expire, idx]) + struct.pack(">H", len(body)) + body)
    # Windows of at most 48 KiB, at most 3 per capture, in both configurations.
    chunks, cur = [], b""
    for r in recs:
        if cur and len(cur) + len(r) > 48 * 1024:
            chunks.append(cur)
            cur = b""
            if len(chunks) == 3:
                break
        cur += r
    if cur and len(chunks) < 3:
        chunks.append(cur)
    for i, c in enumerate(chunks):
        put("pipeline", b"\x00" + c)
        if i == 0:
            put("pipeline", b"\x01" + c)


def directions(decoded):
    """Per TCP flow, per direction: the segments, in capture order."""
    flows = {}
    for evs in decoded:
        tcps = [e for e in evs if e[0] == "tcp"]
        if not tcps:
            continue
        _, src, dst, seq, ack, flags, payload, ts = tcps[-1]  # innermost
        key = tuple(sorted([src, dst]))
        flows.setdefault(key, {}).setdefault(src, []).append((seq, ack, flags, payload, ts))
    return flows


def isn_of(segs):
    for seq, _ack, flags, _p, _ts in segs:
        if flags & 0x02:
            return (seq + 1) & 0xFFFFFFFF
    first = segs[0][0]
    # The lowest sequence number, compared relative to the first one (wrapping).
    rel = min(((s[0] - first + 2**31) % 2**32) - 2**31 for s in segs)
    return (first + rel) & 0xFFFFFFFF


def stream_of(segs, cap):
    isn = isn_of(segs)
    data = {}
    for seq, _ack, _flags, payload, _ts in segs:
        off = ((seq - isn + 2**31) % 2**32) - 2**31
        if payload and 0 <= off < cap:
            for i, b in enumerate(payload[: cap - off]):
                data.setdefault(off + i, b)
    out = bytearray()
    off = 0
    while off in data:
        out.append(data[off])
        off += 1
    return bytes(out), isn


def looks_request(b):
    sp = b.find(b" ")
    return 0 < sp <= 20 and b[:sp].isupper() and b[:sp].isalpha()


def seeds_http(flows, budget):
    n = 0
    for key, dirs in flows.items():
        if n >= budget:
            return
        sides = list(dirs.keys())
        if not sides:
            continue
        streams = {s: stream_of(dirs[s], 16 * 1024)[0] for s in sides}
        if not any(b"HTTP/1." in streams[s] for s in sides):
            continue
        client = None
        for s in sides:
            if any(f & 0x12 == 0x02 for _q, _a, f, _p, _t in dirs[s]):
                client = s
        if client is None:
            for s in sides:
                if looks_request(streams[s]):
                    client = s
        if client is None:
            client = max(sides, key=lambda s: s[1])
        server = next((s for s in sides if s != client), None)
        c = streams[client]
        s = streams.get(server, b"")
        body = struct.pack(">HH", len(c), len(s)) + c + s
        put("http_session", b"\x00" + body)
        if n % 3 == 0:
            put("http_session", b"\x18" + body)  # SYN handshake, small limits
        if n % 3 == 1:
            put("http_session", b"\x03" + body)  # IPv6, swapped key order
        n += 1


def seeds_reassembly(flows, budget):
    n = 0
    for key, dirs in flows.items():
        for side, segs in dirs.items():
            if n >= budget:
                return
            segs = segs[:64]
            stream, isn = stream_of(segs, 2048)
            if not stream:
                continue
            b = bytearray(struct.pack("<HBHI", 4096, 8, 50000, isn))
            for x in stream:
                b += bytes([1, x])
            b.append(0)
            prev = None
            for i, (seq, ack, flags, payload, ts) in enumerate(segs):
                syn = 1 if flags & 0x02 else 0
                off = (((seq + syn - isn + 2**31) % 2**32) - 2**31) & 0xFFFFFFFF
                us = ts // 1000
                dt = 0 if prev is None else min(65535, max(0, us - prev))
                prev = us
                b.append(1)
                b += struct.pack("<IHH", off, min(len(payload), 4096), 0)
                b += bytes([syn, 1 if flags & 0x01 else 0, 0])
                b += (b"\x01" + struct.pack("<I", ack)) if ack is not None else b"\x00"
                b += struct.pack("<H", dt) + b"\x00"
                # guess_start: on the first segment of every other seed, at the stream's start.
                b += b"\x01\x00\x00\x00\x00" if (n % 2 and i == 0) else b"\x00"
            put("reassembly", bytes(b))
            n += 1


# --- capture: whole records of the files themselves, and rewritten variants

def records_end(raw, n):
    """The offset after the first n records (pcap) or blocks (pcapng) of raw, or None."""
    if raw[:4] == b"\x0a\x0d\x0d\x0a":
        e = "<" if raw[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        off = 0
        for _ in range(n):
            if off + 12 > len(raw):
                return None
            off += struct.unpack(e + "I", raw[off + 4:off + 8])[0]
        return off if off <= len(raw) else None
    e = "<" if raw[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    off = 24
    for _ in range(n):
        if off + 16 > len(raw):
            return None
        off += 16 + struct.unpack(e + "I", raw[off + 8:off + 12])[0]
    return off if off <= len(raw) else None


def pcap_bytes(packets, e, ns, linktype, snaplen=65535):
    magic = 0xA1B23C4D if ns else 0xA1B2C3D4
    out = bytearray(struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
    for p in packets:
        sec, frac = divmod(p.ts_ns, 1_000_000_000)
        frac = frac if ns else frac // 1000
        data = p.data[:snaplen]
        out += struct.pack(e + "IIII", sec & 0xFFFFFFFF, frac, len(data), p.orig_len) + data
    return bytes(out)


def ng_block(e, ty, body):
    body = body + b"\x00" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", ty, n) + body + struct.pack(e + "I", n)


def pcapng_bytes(packets, e, linktype, tsresol):
    """SHB, an IDB (if_tsresol when tsresol), then one EPB per packet except the second (a
    simple packet block) and the third (an obsolete packet block), then a statistics block."""
    per_second = 10 ** (tsresol or 6)
    out = ng_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = b""
    if tsresol:
        opts = struct.pack(e + "HH", 9, 1) + bytes([tsresol]) + b"\x00" * 3 + b"\x00" * 4
    out += ng_block(e, 1, struct.pack(e + "HHI", linktype, 0, 0) + opts)
    for i, p in enumerate(packets):
        ticks = p.ts_ns * per_second // 1_000_000_000
        hi, lo = ticks >> 32, ticks & 0xFFFFFFFF
        if i == 1:
            out += ng_block(e, 3, struct.pack(e + "I", p.orig_len) + p.data)
        elif i == 2:
            out += ng_block(e, 2, struct.pack(e + "HHIIII", 0, 0, hi, lo, len(p.data), p.orig_len) + p.data)
        else:
            out += ng_block(e, 6, struct.pack(e + "IIIII", 0, hi, lo, len(p.data), p.orig_len) + p.data)
    out += ng_block(e, 5, struct.pack(e + "III", 0, hi, lo))
    return out


capture_files = 0


def seeds_capture(path, packets):
    global capture_files
    with open(path, "rb") as f:
        raw = f.read(64 * 1024)
    small = [p for p in packets if len(p.data) <= 600][:6]
    # Every capture of another link type or format; every fourth of the rest.
    kind = raw[:4] == b"\x0a\x0d\x0d\x0a" or (packets and packets[0].linktype != 1)
    if kind or capture_files % 4 == 0:
        end = records_end(raw, 6)
        if end is not None and end <= 8192:
            put("capture", raw[:end])
            put("capture", raw[:end - 5])  # ends inside a record
    capture_files += 1
    if small and (kind or capture_files % 8 == 1):
        lt = small[0].linktype
        same = [p for p in small if p.linktype == lt]
        for e in "<>":
            for ns in (False, True):
                put("capture", pcap_bytes(same, e, ns, lt, 65535 if ns else 96))
            put("capture", pcapng_bytes(same, e, lt, 9 if e == ">" else None))


def main():
    for sub, path in captures():
        try:
            packets = list(pcapio.read_packets(path))
        except Exception as e:  # a capture the reader does not take: skip it
            print(f"skip {path}: {e}", file=sys.stderr)
            continue
        decoded = [frame(p.linktype, p.data, p.ts_ns) for p in packets]
        is_vxlan = sub == "vxlan" or os.path.basename(path).startswith("vxlan-")
        seeds_decode(packets, decoded)
        seeds_geneve(decoded)
        seeds_pipeline(packets, decoded, is_vxlan)
        flows = directions(decoded)
        seeds_http(flows, 6)
        seeds_reassembly(flows, 4)
        seeds_capture(path, packets)
    for t in sorted(counts):
        print(f"{t}: {counts[t]} new seed files")


main()
