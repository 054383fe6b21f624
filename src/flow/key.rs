//! Flow identity: the VNI plus the canonical (sorted) pair of TCP endpoints, so both directions of a
//! connection map to one key whatever outer addresses and ports carried them.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;

/// Which endpoint of a flow sent a segment: the lower-sorting (`Lo`) or the higher (`Hi`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Lo,
    Hi,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Lo => Side::Hi,
            Side::Hi => Side::Lo,
        }
    }

    pub fn index(self) -> usize {
        match self {
            Side::Lo => 0,
            Side::Hi => 1,
        }
    }
}

/// A bidirectional TCP flow inside one mirror session.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub vni: u32,
    pub lo: SocketAddr,
    pub hi: SocketAddr,
}

impl FlowKey {
    /// The key of a segment from `src` to `dst`, and which side sent it.
    pub fn new(vni: u32, src: SocketAddr, dst: SocketAddr) -> (FlowKey, Side) {
        if src <= dst {
            (
                FlowKey {
                    vni,
                    lo: src,
                    hi: dst,
                },
                Side::Lo,
            )
        } else {
            (
                FlowKey {
                    vni,
                    lo: dst,
                    hi: src,
                },
                Side::Hi,
            )
        }
    }

    pub fn addr(&self, side: Side) -> SocketAddr {
        match side {
            Side::Lo => self.lo,
            Side::Hi => self.hi,
        }
    }

    /// A stable, direction-independent 64-bit id: the same in every process and run, so it can
    /// pick a worker shard and serve as the Kafka message key of the connection's records.
    pub fn stable_hash(&self) -> u64 {
        StableHasher.hash_one(self)
    }
}

/// FNV-1a: deterministic across processes (unlike `RandomState`), cheap, and good enough to
/// spread flows over shards and partitions.
#[derive(Default, Clone, Copy)]
struct StableHasher;

impl BuildHasher for StableHasher {
    type Hasher = Fnv1a;
    fn build_hasher(&self) -> Fnv1a {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

struct Fnv1a(u64);

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_share_one_key() {
        let a: SocketAddr = "10.0.0.2:51000".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let (k1, s1) = FlowKey::new(7, a, b);
        let (k2, s2) = FlowKey::new(7, b, a);
        assert_eq!(k1, k2);
        assert_eq!(s1, Side::Hi);
        assert_eq!(s2, Side::Lo);
        assert_eq!(k1.stable_hash(), k2.stable_hash());
        assert_eq!(k1.addr(s1), a);
    }

    #[test]
    fn vni_separates_flows() {
        let a: SocketAddr = "10.0.0.2:51000".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert_ne!(FlowKey::new(1, a, b).0, FlowKey::new(2, a, b).0);
        assert_ne!(
            FlowKey::new(1, a, b).0.stable_hash(),
            FlowKey::new(2, a, b).0.stable_hash()
        );
    }
}
