//! Which datagrams the daemon takes at all: `--allow-source` (the outer sender's address, e.g. the
//! NLB's subnets) and `--allow-vni` (the mirror sessions expected). Everything else is dropped and
//! counted before the pipeline sees it (only the 8-byte VXLAN header is read, for the VNI), so
//! nobody can inject fake traffic by sending VXLAN to the listener. Pure; the receive loop asks
//! it about every datagram.

use crate::wire;
use ipnet::IpNet;
use std::net::IpAddr;
use std::ops::RangeInclusive;

/// The verdict on one datagram.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    SourceNotAllowed,
    VniNotAllowed,
}

/// Allowed sources and VNIs; empty lists allow everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    sources: Vec<IpNet>,
    vnis: Vec<RangeInclusive<u32>>,
}

impl Admission {
    /// `sources` are CIDRs or single addresses; `vnis` is a list like `5569041,100-200`.
    pub fn new(sources: &[String], vnis: &[String]) -> Result<Admission, String> {
        let sources = sources
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                let s = s.trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{s:?} is not a CIDR or an IP address"))
            })
            .collect::<Result<_, _>>()?;
        let vnis = vnis
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_vni_range(s.trim()))
            .collect::<Result<_, _>>()?;
        Ok(Admission { sources, vnis })
    }

    /// Whether [`Admission::check`] looks at the source at all (a source allow-list is set).
    pub fn reads_source(&self) -> bool {
        !self.sources.is_empty()
    }

    pub fn check(&self, source: IpAddr, datagram: &[u8]) -> Verdict {
        let source = source.to_canonical();
        if !self.sources.is_empty() && !self.sources.iter().any(|n| n.contains(&source)) {
            return Verdict::SourceNotAllowed;
        }
        if !self.vnis.is_empty() {
            // Undecodable datagrams pass here and are counted by the decoder.
            if let Ok(v) = wire::decode_vxlan(datagram)
                && !self.vnis.iter().any(|r| r.contains(&v.vni))
            {
                return Verdict::VniNotAllowed;
            }
        }
        Verdict::Accept
    }
}

fn parse_vni_range(s: &str) -> Result<RangeInclusive<u32>, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<u32>()
            .ok()
            .filter(|v| *v < 1 << 24)
            .ok_or_else(|| format!("{t:?} is not a VNI (0 to 16777215)"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("{s:?}: range is backwards"));
            }
            Ok(a..=b)
        }
        None => num(s).map(|v| v..=v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxlan(vni: u32) -> Vec<u8> {
        crate::testkit::vxlan_header(vni).to_vec()
    }

    #[test]
    fn empty_lists_allow_everything() {
        let a = Admission::new(&[], &[]).unwrap();
        assert_eq!(
            a.check("203.0.113.9".parse().unwrap(), b"x"),
            Verdict::Accept
        );
    }

    #[test]
    fn sources_are_checked_by_cidr() {
        let a = Admission::new(
            &["10.0.0.0/16".into(), "192.0.2.7".into(), "fd00::/8".into()],
            &[],
        )
        .unwrap();
        let d = vxlan(1);
        assert_eq!(a.check("10.0.200.1".parse().unwrap(), &d), Verdict::Accept);
        assert_eq!(a.check("192.0.2.7".parse().unwrap(), &d), Verdict::Accept);
        assert_eq!(
            a.check("::ffff:10.0.0.1".parse().unwrap(), &d),
            Verdict::Accept
        );
        assert_eq!(a.check("fd12::1".parse().unwrap(), &d), Verdict::Accept);
        assert_eq!(
            a.check("10.1.0.1".parse().unwrap(), &d),
            Verdict::SourceNotAllowed
        );
        assert_eq!(
            a.check("192.0.2.8".parse().unwrap(), &d),
            Verdict::SourceNotAllowed
        );
    }

    #[test]
    fn vnis_are_checked_by_list_and_range() {
        let a = Admission::new(&[], &["5569041".into(), "100-200".into()]).unwrap();
        let src = "10.0.0.1".parse().unwrap();
        assert_eq!(a.check(src, &vxlan(5569041)), Verdict::Accept);
        assert_eq!(a.check(src, &vxlan(150)), Verdict::Accept);
        assert_eq!(a.check(src, &vxlan(201)), Verdict::VniNotAllowed);
        // Not VXLAN at all: left to the decoder, which counts it.
        assert_eq!(a.check(src, b"\x00"), Verdict::Accept);
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        assert!(
            Admission::new(&["10.0.0.0/33".into()], &[])
                .unwrap_err()
                .contains("CIDR")
        );
        assert!(
            Admission::new(&[], &["x".into()])
                .unwrap_err()
                .contains("VNI")
        );
        assert!(
            Admission::new(&[], &["20000000".into()])
                .unwrap_err()
                .contains("VNI")
        );
        assert!(
            Admission::new(&[], &["9-3".into()])
                .unwrap_err()
                .contains("backwards")
        );
    }
}
