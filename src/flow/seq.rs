//! TCP sequence numbers: 32-bit, wrapping, compared within a half-space window (RFC 1982).

use std::cmp::Ordering;

/// A TCP sequence number. Ordering is by wrapping distance, so `Seq(5) > Seq(u32::MAX)`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Seq(pub u32);

impl Seq {
    /// Signed distance from `other` to `self` (positive when `self` is later).
    pub fn diff(self, other: Seq) -> i64 {
        i64::from(self.0.wrapping_sub(other.0) as i32)
    }

    /// The sequence number `n` bytes later.
    pub fn wrapping_add(self, n: u64) -> Seq {
        // Truncation is the point: sequence space wraps at 2^32.
        Seq(self.0.wrapping_add(n as u32))
    }
}

impl PartialOrd for Seq {
    fn partial_cmp(&self, other: &Seq) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Seq {
    /// Not a total order over all of u32 (no wrapping order is), but consistent within any window
    /// smaller than 2^31, which is all TCP ever uses.
    fn cmp(&self, other: &Seq) -> Ordering {
        self.diff(*other).cmp(&0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_wraps_around_zero() {
        assert!(Seq(5) > Seq(u32::MAX));
        assert!(Seq(u32::MAX - 10) < Seq(3));
        assert_eq!(Seq(3).diff(Seq(u32::MAX)), 4);
        assert_eq!(Seq(u32::MAX).diff(Seq(3)), -4);
    }

    #[test]
    fn wrapping_add_wraps() {
        assert_eq!(Seq(u32::MAX - 1).wrapping_add(3), Seq(1));
        assert_eq!(Seq(7).wrapping_add(0), Seq(7));
    }
}
