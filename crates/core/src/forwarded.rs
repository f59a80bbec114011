//! Trusted proxies (SPEC 2, `--trusted-proxies`): whose forwarding headers are
//! believed, and the client address they give.
//!
//! Only a peer inside a trusted range may say who the client is. Its
//! `X-Forwarded-For` is read from the right (each proxy appends the address it saw):
//! trusted hops are skipped and the first address outside the trusted ranges is
//! the client, so whatever a client wrote at the left cannot be chosen. A value that
//! is not an address stops the walk at the hop to its right.

use std::net::IpAddr;

use ipnet::IpNet;

/// The address a per-client budget or cap is kept under: an IPv4 address as it
/// is (an IPv4-mapped IPv6 one as IPv4), an IPv6 address as its /64 network,
/// since one subscriber is routinely given a whole /64 and could otherwise rotate
/// through unlimited addresses.
pub fn budget_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(std::net::Ipv6Addr::from(segments))
            }
        },
    }
}

/// The trusted ranges (none by default: nobody's forwarding headers are believed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses comma- or space-separated CIDRs or single addresses, reporting each
    /// that is not one.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, Vec<String>> {
        let mut nets = Vec::new();
        let mut problems = Vec::new();
        for entry in entries
            .into_iter()
            .flat_map(|e| e.split([',', ' ']))
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            match entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => problems.push(format!(
                    "--trusted-proxies: {entry:?} is not an address or CIDR range (e.g. 10.0.0.0/8, ::1)"
                )),
            }
        }
        if problems.is_empty() {
            Ok(Self { nets })
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address read as IPv4) is trusted.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request from `peer` carrying these `X-Forwarded-For` values.
    pub fn client<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> Client {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return Client {
                ip: peer,
                forwarded: false,
            };
        }
        let hops: Vec<&str> = forwarded_for
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        let mut forwarded = false;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            forwarded = true;
            if !self.contains(ip) {
                break;
            }
        }
        Client {
            ip: client,
            forwarded,
        }
    }
}

/// Who a request is from, as far as the gateway can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    /// The address came from a trusted proxy's `X-Forwarded-For`, not from the
    /// connection: it may say where the client is, never that it is on loopback.
    pub forwarded: bool,
}

/// IPv4-mapped IPv6 addresses as IPv4, so one range covers both spellings.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, optionally `[v6]:port` or `v4:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (v6, _) = rest.split_once(']')?;
        return v6.parse::<IpAddr>().ok().map(canonical);
    }
    let (v4, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn forwarded_for_rows() {
        let trusted = TrustedProxies::parse(["10.0.0.0/8, 127.0.0.1", "fd00::/8"])
            .unwrap_or_else(|e| panic!("{e:?}"));
        // (peer, X-Forwarded-For values, client, forwarded)
        let rows: Vec<(&str, Vec<&str>, &str, bool)> = vec![
            // Untrusted peers: their claims are ignored.
            ("203.0.113.9", vec!["1.2.3.4"], "203.0.113.9", false),
            ("203.0.113.9", vec![], "203.0.113.9", false),
            ("192.168.1.2", vec!["127.0.0.1"], "192.168.1.2", false),
            // A trusted proxy: the rightmost untrusted address.
            ("10.0.0.5", vec!["198.51.100.7"], "198.51.100.7", true),
            (
                "10.0.0.5",
                vec!["6.6.6.6, 198.51.100.7"],
                "198.51.100.7",
                true,
            ),
            (
                "10.0.0.5",
                vec!["6.6.6.6", "198.51.100.7"],
                "198.51.100.7",
                true,
            ),
            // Chains of trusted proxies are skipped.
            (
                "10.0.0.5",
                vec!["6.6.6.6, 198.51.100.7, 10.1.1.1"],
                "198.51.100.7",
                true,
            ),
            (
                "127.0.0.1",
                vec!["198.51.100.7, 10.1.1.1"],
                "198.51.100.7",
                true,
            ),
            // Nothing forwarded: the proxy itself.
            ("10.0.0.5", vec![], "10.0.0.5", false),
            // Every hop trusted: the leftmost.
            ("10.0.0.5", vec!["10.9.9.9, 10.1.1.1"], "10.9.9.9", true),
            // Malformed values stop the walk at the hop to their right.
            ("10.0.0.5", vec!["198.51.100.7, garbage"], "10.0.0.5", false),
            ("10.0.0.5", vec!["garbage, 10.1.1.1"], "10.1.1.1", true),
            ("10.0.0.5", vec!["unknown"], "10.0.0.5", false),
            ("10.0.0.5", vec![""], "10.0.0.5", false),
            ("10.0.0.5", vec!["1.2.3.4:5678"], "1.2.3.4", true),
            // IPv6, bracketed with a port, IPv4-mapped.
            ("fd00::1", vec!["2001:db8::7"], "2001:db8::7", true),
            ("fd00::1", vec!["[2001:db8::7]:443"], "2001:db8::7", true),
            (
                "::ffff:10.0.0.5",
                vec!["198.51.100.7"],
                "198.51.100.7",
                true,
            ),
            (
                "10.0.0.5",
                vec!["::ffff:198.51.100.7"],
                "198.51.100.7",
                true,
            ),
            ("2001:db8::1", vec!["1.2.3.4"], "2001:db8::1", false),
        ];
        for (peer, xff, want, forwarded) in rows {
            let got = trusted.client(ip(peer), xff.iter().copied());
            assert_eq!(
                got,
                Client {
                    ip: ip(want),
                    forwarded
                },
                "{peer} {xff:?}"
            );
        }
        // Nobody is trusted by default.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(ip("127.0.0.1"), ["1.2.3.4"]).ip,
            ip("127.0.0.1")
        );
    }

    #[test]
    fn bad_ranges_are_reported() {
        let problems = TrustedProxies::parse(["10.0.0.0/33", "example.com", "1.2.3.4"])
            .err()
            .unwrap_or_default();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().all(|p| p.contains("--trusted-proxies")));
    }

    #[test]
    fn budgets_are_kept_per_ipv4_address_and_per_ipv6_64() {
        let key = |s: &str| budget_key(s.parse().unwrap()).to_string();
        for (ip, expected) in [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
            ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::"),
            ("2001:db8:1:3::1", "2001:db8:1:3::"),
            ("::1", "::"),
        ] {
            assert_eq!(key(ip), expected, "{ip}");
        }
    }
}
