//! What an IP address stands for: one client on the internet, a local or private network (or a
//! proxy in front of one), or somewhere nothing should ever be sent or attributed (link-local,
//! where cloud metadata endpoints live; multicast; broadcast; unspecified).

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A public address: it identifies one client.
    Public,
    /// Loopback, private (RFC 1918, unique local), shared (CGNAT 100.64/10).
    Private,
    /// Link-local (169.254/16, fe80::/10), multicast, broadcast, unspecified, 0/8.
    Never,
}

/// The reach of `address` (IPv4-mapped IPv6 addresses as their IPv4).
pub fn reach(address: IpAddr) -> Reach {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_link_local() || v4.is_multicast() || v4.is_broadcast() || v4.is_unspecified() || a == 0 {
                Reach::Never
            } else if v4.is_loopback() || v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                Reach::Private
            } else {
                Reach::Public
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return reach(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if first & 0xffc0 == 0xfe80 || v6.is_multicast() || v6.is_unspecified() {
                Reach::Never
            } else if v6.is_loopback() || first & 0xfe00 == 0xfc00 {
                Reach::Private
            } else {
                Reach::Public
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        for public in [
            "198.51.100.23",
            "8.8.8.8",
            "93.184.216.34",
            "2001:db8::7",
            "::ffff:203.0.113.9",
        ] {
            assert_eq!(reach(ip(public)), Reach::Public, "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.9",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(reach(ip(private)), Reach::Private, "{private}");
        }
        for never in [
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "::",
            "::ffff:169.254.169.254",
        ] {
            assert_eq!(reach(ip(never)), Reach::Never, "{never}");
        }
    }
}
