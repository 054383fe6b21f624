//! Flow identity: the VNI plus the canonical (sorted) pair of TCP endpoints, so both directions of a
//! connection map to one key whatever outer addresses and ports carried them.

use std::hash::{BuildHasher, Hash, Hasher};
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
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
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
    /// pick a worker shard and serve as the Kafka message key of the connection's records. (The
    /// fields hashed in turn, as `derive(Hash)` would: the ids of earlier releases.)
    pub fn stable_hash(&self) -> u64 {
        let mut h = StableHasher.build_hasher();
        self.vni.hash(&mut h);
        self.lo.hash(&mut h);
        self.hi.hash(&mut h);
        h.finish()
    }
}

/// For the flow table, looked up twice per segment: an IPv4 flow (nearly all) goes to the hasher
/// as two words, where the fields one by one (`SocketAddr`'s own `Hash`) took a dozen writes.
impl Hash for FlowKey {
    fn hash<S: Hasher>(&self, state: &mut S) {
        match (self.lo, self.hi) {
            (SocketAddr::V4(lo), SocketAddr::V4(hi)) => {
                state.write_u64(u64::from(lo.ip().to_bits()) << 32 | u64::from(hi.ip().to_bits()));
                state.write_u64(
                    u64::from(self.vni) << 32 | u64::from(lo.port()) << 16 | u64::from(hi.port()),
                );
            }
            _ => {
                self.vni.hash(state);
                self.lo.hash(state);
                self.hi.hash(state);
            }
        }
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

    /// The ids are Kafka message keys: a release must not change them.
    #[test]
    fn stable_hash_is_the_same_as_in_earlier_releases() {
        let key =
            |vni, a: &str, b: &str| FlowKey::new(vni, a.parse().unwrap(), b.parse().unwrap()).0;
        let v4 = key(7, "10.0.0.2:51000", "10.0.0.1:80");
        let v6 = key(9, "[2001:db8::1]:443", "[2001:db8::2]:50000");
        let mixed = key(3, "10.0.0.1:80", "[::1]:8080");
        assert_eq!(v4.stable_hash(), 0x81ab_f0be_e02a_4402);
        assert_eq!(v6.stable_hash(), 0x5c60_38ec_7193_a474);
        assert_eq!(mixed.stable_hash(), 0x8530_de1a_f16c_24dc);
    }

    /// What the flow table needs of its key's hash: equal keys hash alike, and keys differing in
    /// any one field (address, port, VNI) rarely do.
    #[test]
    fn table_hash_separates_every_field() {
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        let key =
            |vni, a: &str, b: &str| FlowKey::new(vni, a.parse().unwrap(), b.parse().unwrap()).0;
        let base = key(7, "10.0.0.2:51000", "10.0.0.1:80");
        let h = |k: &FlowKey| state.hash_one(k);
        assert_eq!(h(&base), h(&key(7, "10.0.0.1:80", "10.0.0.2:51000")));
        for other in [
            key(8, "10.0.0.2:51000", "10.0.0.1:80"),
            key(7, "10.0.0.3:51000", "10.0.0.1:80"),
            key(7, "10.0.0.2:51001", "10.0.0.1:80"),
            key(7, "10.0.0.2:51000", "10.0.0.9:80"),
            key(7, "10.0.0.2:51000", "10.0.0.1:81"),
            key(7, "[::ffff:10.0.0.2]:51000", "10.0.0.1:80"),
        ] {
            assert_ne!(other, base);
            assert_ne!(h(&other), h(&base), "{other:?}");
        }
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
