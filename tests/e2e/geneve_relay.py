#!/usr/bin/env python3
"""A UDP relay that re-sends VXLAN datagrams wrapped in Geneve the way AWS Gateway Load Balancer
(GWLB) delivers traffic to its appliances, for end-to-end tests of the receiver's Geneve input.

Usage: geneve_relay.py LISTEN_HOST:PORT TARGET_HOST:PORT [--mode nested|ethernet|ip]
                       [--endpoint-id N] [--attachment-id N]

Each datagram received on LISTEN (VXLAN, as the Linux kernel's vxlan device sends it: an 8-byte
VXLAN header, then an Ethernet frame) is sent to TARGET as one Geneve datagram (RFC 8926):
version 0, VNI 0, no flags, and the three options GWLB adds, of option class 0x0108: type 1 the
GWLB endpoint ID (8 bytes, --endpoint-id), type 2 the attachment ID (8 bytes, --attachment-id),
type 3 a flow cookie (4 bytes): the CRC-32 of the inner TCP/UDP 5-tuple, the same for both
directions of a flow. What follows the options depends on --mode:

  nested    (default) protocol 0x0800: an IPv4 header (checksum computed, DF, TTL 64) from the
            received datagram's source address to the listen address, a UDP header from the
            received datagram's source port to 4789 (checksum 0), then the VXLAN datagram as
            received. This is Traffic Mirroring whose target is a GWLB endpoint.
  ethernet  protocol 0x6558 (Transparent Ethernet Bridging): the inner Ethernet frame.
  ip        protocol 0x0800 or 0x86DD: the inner IP packet (802.1Q/802.1ad tags skipped); frames
            of another EtherType are dropped, as GWLB carries IP only.

  vxlan     the VXLAN datagram as received, unwrapped by nothing (a plain forwarder, for a
            receiver that serves VXLAN and Geneve at once).
Prints "ready, listening on ..." on stdout once listening; exits 0 on SIGTERM or SIGINT, printing to stderr how
many datagrams it relayed and dropped. Datagrams too short to be VXLAN are dropped. Standard
library only.
"""
import argparse
import signal
import socket
import struct
import sys
import zlib

GENEVE_OPTION_CLASS_AWS = 0x0108
VXLAN_PORT = 4789
VLAN_TAGS = (0x8100, 0x88A8, 0x9100)


def host_port(text):
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def ip_checksum(header):
    total = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def inner_ip(frame):
    """(EtherType, IP packet) of an Ethernet frame, VLAN tags skipped, or None."""
    if len(frame) < 14:
        return None
    off = 14
    ether_type = struct.unpack(">H", frame[12:14])[0]
    while ether_type in VLAN_TAGS and len(frame) >= off + 4:
        ether_type = struct.unpack(">H", frame[off + 2:off + 4])[0]
        off += 4
    if ether_type not in (0x0800, 0x86DD):
        return None
    return ether_type, frame[off:]


def five_tuple(ether_type, packet):
    """(protocol, (addr, port), (addr, port)) of an IP packet; ports 0 when not TCP/UDP or cut."""
    if ether_type == 0x0800 and len(packet) >= 20:
        ihl = (packet[0] & 0x0F) * 4
        proto, src, dst = packet[9], packet[12:16], packet[16:20]
        l4 = packet[ihl:]
    elif ether_type == 0x86DD and len(packet) >= 40:
        proto, src, dst = packet[6], packet[8:24], packet[24:40]
        l4 = packet[40:]
    else:
        return None
    sport = dport = 0
    if proto in (6, 17) and len(l4) >= 4:
        sport, dport = struct.unpack(">HH", l4[:4])
    return proto, (src, sport), (dst, dport)


def flow_cookie(frame):
    """A per-flow value, alike for both directions (GWLB keeps a flow's two directions on one
    appliance under one cookie)."""
    ip = inner_ip(frame)
    flow = ip and five_tuple(*ip)
    if not flow:
        return 0
    proto, a, b = flow
    lo, hi = sorted([a, b])
    return zlib.crc32(bytes([proto]) + lo[0] + struct.pack(">H", lo[1]) + hi[0]
                      + struct.pack(">H", hi[1]))


def geneve_header(protocol, endpoint_id, attachment_id, cookie):
    options = struct.pack(">HBBQ", GENEVE_OPTION_CLASS_AWS, 1, 2, endpoint_id)
    options += struct.pack(">HBBQ", GENEVE_OPTION_CLASS_AWS, 2, 2, attachment_id)
    options += struct.pack(">HBBI", GENEVE_OPTION_CLASS_AWS, 3, 1, cookie)
    # Version 0 and Opt Len in the first byte; O, C and reserved bits 0; VNI 0.
    return struct.pack(">BBHI", len(options) // 4, 0, protocol, 0) + options


class Carrier:
    """The IPv4/UDP headers of nested mode: the mirror's own outer headers, rebuilt."""

    def __init__(self, listen_addr):
        self.dst = socket.inet_aton(listen_addr)
        self.ident = 0

    def wrap(self, datagram, src_addr, src_port):
        udp = struct.pack(">HHHH", src_port, VXLAN_PORT, 8 + len(datagram), 0) + datagram
        self.ident = (self.ident + 1) & 0xFFFF
        header = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), self.ident,
                                       0x4000, 64, 17, 0, socket.inet_aton(src_addr), self.dst))
        header[10:12] = struct.pack(">H", ip_checksum(bytes(header)))
        return bytes(header) + udp


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("listen", type=host_port, help="HOST:PORT to receive VXLAN on (IPv4)")
    ap.add_argument("target", type=host_port, help="HOST:PORT to send Geneve to")
    ap.add_argument("--mode", choices=("nested", "ethernet", "ip", "vxlan"), default="nested")
    ap.add_argument("--endpoint-id", type=lambda s: int(s, 0), default=0x0E3C5B1A2F47A901,
                    help="GWLB endpoint ID option value (64-bit; 0x.. accepted)")
    ap.add_argument("--attachment-id", type=lambda s: int(s, 0), default=0x12345678,
                    help="attachment ID option value (64-bit; 0x.. accepted)")
    args = ap.parse_args()
    for name in ("endpoint_id", "attachment_id"):
        if not 0 <= getattr(args, name) < 1 << 64:
            ap.error(f"--{name.replace('_', '-')} must fit in 64 bits")

    def stop(_signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relayed = dropped = 0
    try:
        rx.bind(args.listen)
        carrier = Carrier(rx.getsockname()[0])
        target = (socket.gethostbyname(args.target[0]), args.target[1])
        print(f"ready, listening on {args.listen[0]}:{args.listen[1]}", flush=True)
        while True:
            datagram, (src_addr, src_port) = rx.recvfrom(65535)
            if len(datagram) < 8:
                dropped += 1
                continue
            frame = datagram[8:]
            if args.mode == "vxlan":
                try:
                    tx.sendto(datagram, target)
                    relayed += 1
                except OSError as e:
                    print(f"geneve_relay: send: {e}", file=sys.stderr)
                    dropped += 1
                continue
            if args.mode == "nested":
                protocol, body = 0x0800, carrier.wrap(datagram, src_addr, src_port)
            elif args.mode == "ethernet":
                protocol, body = 0x6558, frame
            else:
                ip = inner_ip(frame)
                if ip is None:
                    dropped += 1
                    continue
                protocol, body = ip
            header = geneve_header(protocol, args.endpoint_id, args.attachment_id,
                                   flow_cookie(frame))
            try:
                tx.sendto(header + body, target)
                relayed += 1
            except OSError as e:  # too large, or nobody listening (ICMP refused): go on
                print(f"geneve_relay: send: {e}", file=sys.stderr)
                dropped += 1
    except SystemExit:
        pass
    finally:
        rx.close()
        tx.close()
        print(f"geneve_relay: relayed {relayed}, dropped {dropped}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
