#!/usr/bin/env python3
"""inject_frames.py DEV CAPTURE...: sends every Ethernet frame of each pcap CAPTURE, as it is
(802.1Q/802.1ad tags included), on DEV through an AF_PACKET socket, in bursts (a veth hands each
frame to a per-CPU backlog that drops past net.core.netdev_max_backlog). Prints how many frames.
Standard library only; classic pcap with link type Ethernet only."""
import socket
import struct
import sys
import time


def frames(path):
    data = open(path, "rb").read()
    magic = struct.unpack("<I", data[:4])[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        e = "<"
    elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
        e = ">"
    else:
        sys.exit(f"{path}: not a classic pcap")
    if struct.unpack(e + "I", data[20:24])[0] != 1:
        sys.exit(f"{path}: not Ethernet")
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack(e + "I", data[off + 8:off + 12])[0]
        yield data[off + 16:off + 16 + incl]
        off += 16 + incl


def main():
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((sys.argv[1], 0))
    n = 0
    for path in sys.argv[2:]:
        for f in frames(path):
            s.send(f)
            n += 1
            if n % 100 == 0:
                time.sleep(0.002)
    print(n)


if __name__ == "__main__":
    main()
