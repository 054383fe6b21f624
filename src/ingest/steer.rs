//! Steering by inner flow: a classic BPF program on the SO_REUSEPORT group picks, for each
//! datagram, the socket of the worker that owns its inner TCP connection, so both directions of a
//! connection reach one worker whichever outer source ports they carry (AWS gives both
//! directions the same outer source port; the kernel's own VXLAN and other encapsulators do
//! not).
//!
//! A Geneve group's program first checks for the shape a Gateway Load Balancer gives a mirror
//! session's packets (AWS's three options, the mirror's IPv4/UDP 4789/VXLAN packet inside) and
//! then reads the same inner frame further on; other Geneve goes to the fallback.
//!
//! The kernel runs the program with the UDP header pulled (`run_bpf_filter` with
//! `sizeof(struct udphdr)`), so offset 0 is the VXLAN header and the inner Ethernet frame starts
//! at 8. The program reads IPv4 (any header length) and IPv6 without extension headers, each
//! bare or behind one 802.1Q tag, and answers `hash % shards` ([`shard`] computes the same hash
//! from a decoded segment). What it cannot classify (QinQ, IPv6 extension chains, fragments,
//! another protocol) it answers with `shards`, an index past the group, and the kernel falls
//! back to its own hash of the outer addresses; a load past the datagram's end ends the program
//! with 0, socket 0. Either way the receiving worker decodes the datagram, and hands what it
//! does not own to its owner ([`super::Inlet`]), counted.

use crate::wire::{Encapsulation, TcpSegment};
use libc::sock_filter;
use std::net::{IpAddr, UdpSocket};
use std::os::fd::AsRawFd;

/// Where the inner Ethernet frame starts: after the 8-byte VXLAN header.
const INNER: u32 = crate::wire::VXLAN_HEADER_LEN as u32;
/// Where it starts in Geneve as a Gateway Load Balancer sends a mirror session's packets: the
/// Geneve header (8 bytes), AWS's three options (32), then the mirror's own packet: IPv4 without
/// options (20), UDP (8), VXLAN (8). Other Geneve shapes (other options, an IP packet inside)
/// are left to the fallback.
const GWLB_INNER: u32 = 8 + 32 + 20 + 8 + 8;
/// Where that IPv4 header starts.
const GWLB_IP: u32 = 8 + 32;
/// Odd 32-bit multipliers: of the addresses' sum (the golden ratio's), and of the mix
/// (MurmurHash3's).
const SPREAD: u32 = 0x9E37_79B1;
const MIX: u32 = 0x85EB_CA6B;

/// The shard that owns `seg`'s connection among `shards`: the same answer as the kernel's
/// program for every datagram the program classifies.
///
/// Symmetric in the two endpoints because it adds them (addresses, then ports); the sum of the
/// addresses is multiplied before the ports join it, so that addresses and ports rising
/// together (one client address per port, as load generators do) do not cancel out.
pub fn shard(seg: &TcpSegment<'_>, shards: usize) -> usize {
    let fold = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.to_bits(),
        IpAddr::V6(a) => {
            let b = a.to_bits();
            ((b >> 96) as u32)
                .wrapping_add((b >> 64) as u32)
                .wrapping_add((b >> 32) as u32)
                .wrapping_add(b as u32)
        }
    };
    let addresses = fold(seg.src.ip()).wrapping_add(fold(seg.dst.ip()));
    let ports = u32::from(seg.src.port()) + u32::from(seg.dst.port());
    (mix(addresses.wrapping_mul(SPREAD) ^ ports) % shards.max(1) as u32) as usize
}

/// Spreads the combined fields over all 32 bits, so that taken modulo a small shard count the
/// answer depends on every bit of them.
fn mix(h: u32) -> u32 {
    let h = h.wrapping_mul(MIX);
    h ^ (h >> 16)
}

/// Attaches the steering program for `shards` sockets of VXLAN to the reuseport group of
/// `socket`. The group's sockets are numbered in the order they were bound, so socket `i` must
/// be shard `i`.
pub fn attach(socket: &UdpSocket, shards: usize) -> std::io::Result<()> {
    attach_for(socket, shards, Encapsulation::Vxlan)
}

/// [`attach`] for a group whose datagrams are in `encap`.
pub fn attach_for(socket: &UdpSocket, shards: usize, encap: Encapsulation) -> std::io::Result<()> {
    let mut program = program_for(shards, encap)?;
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: setsockopt on a socket we own, with a sock_fprog pointing at `program`, which
    // outlives the call (the kernel copies the program).
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Labels of the program's forward jumps.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Label {
    Next,
    Fallback,
    Mix,
    V4(u32),
    V6(u32),
    Vlan,
}

/// A classic BPF program under construction: instructions, with jumps to labels resolved by
/// [`Asm::finish`].
#[derive(Default)]
struct Asm {
    code: Vec<(u16, Label, Label, u32)>,
    labels: Vec<(Label, usize)>,
}

// Opcodes: the kernel's constants are u32 in libc; instructions hold them as u16.
const fn op(parts: u32) -> u16 {
    parts as u16
}
const LD_B: u16 = op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS);
const LD_H: u16 = op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS);
const LD_W: u16 = op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS);
const LD_H_IND: u16 = op(libc::BPF_LD | libc::BPF_H | libc::BPF_IND);
const LDX_MSH: u16 = op(libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH);
const LD_MEM: u16 = op(libc::BPF_LD | libc::BPF_MEM);
const LDX_MEM: u16 = op(libc::BPF_LDX | libc::BPF_MEM);
const ST: u16 = op(libc::BPF_ST);
const TAX: u16 = op(libc::BPF_MISC | libc::BPF_TAX);
const AND: u16 = op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K);
const XOR_X: u16 = op(libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X);
const ADD_X: u16 = op(libc::BPF_ALU | libc::BPF_ADD | libc::BPF_X);
const MUL: u16 = op(libc::BPF_ALU | libc::BPF_MUL | libc::BPF_K);
const RSH: u16 = op(libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K);
const MOD: u16 = op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K);
const JEQ: u16 = op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K);
const JSET: u16 = op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K);
const JA: u16 = op(libc::BPF_JMP | libc::BPF_JA);
const RET_A: u16 = op(libc::BPF_RET | libc::BPF_A);
const RET_K: u16 = op(libc::BPF_RET | libc::BPF_K);

impl Asm {
    fn stmt(&mut self, code: u16, k: u32) {
        self.code.push((code, Label::Next, Label::Next, k));
    }
    /// `if A == k goto t else goto f` (and `JSET`: `if A & k`).
    fn jump(&mut self, code: u16, k: u32, t: Label, f: Label) {
        self.code.push((code, t, f, k));
    }
    fn goto(&mut self, to: Label) {
        // `ja` takes its offset in k: marked with the label in `jt`, resolved in `finish`.
        self.code.push((JA, to, Label::Next, 0));
    }
    fn label(&mut self, l: Label) {
        self.labels.push((l, self.code.len()));
    }

    fn finish(self) -> std::io::Result<Vec<sock_filter>> {
        let at = |l: Label, from: usize| -> std::io::Result<u32> {
            let to = match l {
                Label::Next => from + 1,
                l => self
                    .labels
                    .iter()
                    .find(|(m, _)| *m == l)
                    .map_or(0, |&(_, i)| i),
            };
            to.checked_sub(from + 1)
                .and_then(|d| u32::try_from(d).ok())
                .ok_or_else(|| std::io::Error::other(format!("steering program: bad jump {l:?}")))
        };
        let mut out = Vec::with_capacity(self.code.len());
        for (i, &(code, t, f, k)) in self.code.iter().enumerate() {
            let (jt, jf, k) = if code == JA {
                (0, 0, at(t, i)?)
            } else if code & 0x07 == op(libc::BPF_JMP) {
                let short = |d: u32| {
                    u8::try_from(d)
                        .map_err(|_| std::io::Error::other("steering program: jump too far"))
                };
                (short(at(t, i)?)?, short(at(f, i)?)?, k)
            } else {
                (0, 0, k)
            };
            out.push(sock_filter { code, jt, jf, k });
        }
        Ok(out)
    }
}

/// The steering program for `shards` sockets of VXLAN.
#[cfg(test)]
fn program(shards: usize) -> std::io::Result<Vec<sock_filter>> {
    program_for(shards, Encapsulation::Vxlan)
}

/// The steering program for `shards` sockets whose datagrams are in `encap`.
fn program_for(shards: usize, encap: Encapsulation) -> std::io::Result<Vec<sock_filter>> {
    let shards = u32::try_from(shards.max(1)).unwrap_or(u32::MAX);
    let mut a = Asm::default();
    let inner = match encap {
        Encapsulation::Vxlan => INNER,
        Encapsulation::Geneve => {
            // Version 0 with 32 bytes of options (AWS's three), IPv4 inside; it has no
            // options, carries UDP to 4789 and is not a fragment.
            a.stmt(LD_B, 0);
            a.jump(JEQ, 0x08, Label::Next, Label::Fallback);
            a.stmt(LD_H, 2);
            a.jump(JEQ, 0x0800, Label::Next, Label::Fallback);
            a.stmt(LD_B, GWLB_IP);
            a.jump(JEQ, 0x45, Label::Next, Label::Fallback);
            a.stmt(LD_B, GWLB_IP + 9);
            a.jump(JEQ, 17, Label::Next, Label::Fallback);
            a.stmt(LD_H, GWLB_IP + 6);
            a.jump(JSET, 0x3fff, Label::Fallback, Label::Next);
            a.stmt(LD_H, GWLB_IP + 20 + 2);
            a.jump(
                JEQ,
                u32::from(crate::wire::VXLAN_PORT),
                Label::Next,
                Label::Fallback,
            );
            GWLB_INNER
        }
    };
    // The Ethernet type, then behind one 802.1Q tag.
    let (bare, tagged) = (inner + 14, inner + 18);
    a.stmt(LD_H, inner + 12);
    a.jump(JEQ, 0x0800, Label::V4(bare), Label::Next);
    a.jump(JEQ, 0x86dd, Label::V6(bare), Label::Next);
    a.jump(JEQ, 0x8100, Label::Vlan, Label::Fallback);
    a.label(Label::Vlan);
    a.stmt(LD_H, inner + 16);
    a.jump(JEQ, 0x0800, Label::V4(tagged), Label::Next);
    a.jump(JEQ, 0x86dd, Label::V6(tagged), Label::Fallback);
    for ip in [bare, tagged] {
        ipv4(&mut a, ip);
        ipv6(&mut a, ip);
    }
    // h ^= ...; A = mix(h) % shards.
    a.label(Label::Mix);
    a.stmt(MUL, MIX);
    a.stmt(ST, 0);
    a.stmt(RSH, 16);
    a.stmt(TAX, 0);
    a.stmt(LD_MEM, 0);
    a.stmt(XOR_X, 0);
    a.stmt(MOD, shards);
    a.stmt(RET_A, 0);
    a.label(Label::Fallback);
    a.stmt(RET_K, shards);
    a.finish()
}

/// To the fallback unless the header at `ip` is of IP `version` and its protocol (or next
/// header) byte at `protocol` is TCP.
fn ip_carrying_tcp(a: &mut Asm, ip: u32, version: u32, protocol: u32) {
    a.stmt(LD_B, ip);
    a.stmt(AND, 0xf0);
    a.jump(JEQ, version << 4, Label::Next, Label::Fallback);
    a.stmt(LD_B, protocol);
    a.jump(JEQ, 6, Label::Next, Label::Fallback);
}

/// IPv4 at `ip`: TCP, not a fragment; A = (src + dst) * SPREAD ^ (sport + dport), then to
/// the mix.
fn ipv4(a: &mut Asm, ip: u32) {
    a.label(Label::V4(ip));
    ip_carrying_tcp(a, ip, 4, ip + 9);
    // More fragments, or a fragment offset.
    a.stmt(LD_H, ip + 6);
    a.jump(JSET, 0x3fff, Label::Fallback, Label::Next);
    a.stmt(LD_W, ip + 12);
    a.stmt(TAX, 0);
    a.stmt(LD_W, ip + 16);
    a.stmt(ADD_X, 0);
    a.stmt(MUL, SPREAD);
    a.stmt(ST, 1);
    // X = the header's length; the ports follow it.
    a.stmt(LDX_MSH, ip);
    a.stmt(LD_H_IND, ip);
    a.stmt(ST, 2);
    a.stmt(LD_H_IND, ip + 2);
    a.stmt(LDX_MEM, 2);
    a.stmt(ADD_X, 0);
    a.stmt(LDX_MEM, 1);
    a.stmt(XOR_X, 0);
    a.goto(Label::Mix);
}

/// IPv6 at `ip` with TCP as its next header (no extension headers): A = (the sum of the
/// addresses' eight words) * SPREAD ^ (sport + dport), then to the mix.
fn ipv6(a: &mut Asm, ip: u32) {
    a.label(Label::V6(ip));
    ip_carrying_tcp(a, ip, 6, ip + 6);
    a.stmt(LD_W, ip + 8);
    for word in 1..8 {
        a.stmt(TAX, 0);
        a.stmt(LD_W, ip + 8 + 4 * word);
        a.stmt(ADD_X, 0);
    }
    a.stmt(MUL, SPREAD);
    a.stmt(ST, 1);
    a.stmt(LD_H, ip + 40);
    a.stmt(TAX, 0);
    a.stmt(LD_H, ip + 42);
    a.stmt(ADD_X, 0);
    a.stmt(LDX_MEM, 1);
    a.stmt(XOR_X, 0);
    a.goto(Label::Mix);
}

#[cfg(test)]
mod tests;
