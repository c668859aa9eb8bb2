//! The client address of a public request, for rate limits and the touchpoint record.
//!
//! Behind a load balancer every connection comes from the balancer, so its address would put
//! every visitor in one rate-limit bucket. Proxies listed in `AMBA_TRUSTED_PROXIES` are believed
//! about `X-Forwarded-For`: the client is the right-most address not itself a trusted proxy.
//! Nobody else is believed, so a client cannot pick its own bucket by sending the header.

use http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Comma-separated addresses or CIDR blocks: `10.0.0.0/8, 192.168.1.7`.
    pub fn parse(text: &str) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("{item:?} is not an IP address or CIDR block"))?,
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }

    fn trusts(&self, addr: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&addr))
    }

    /// The address the request came from: the peer, or what trusted proxies say it forwarded for.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        // A dual-stack listener sees IPv4 peers as `::ffff:a.b.c.d`; compare them as IPv4.
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        // Split the raw bytes: one bad byte must not hide a whole header line, or a client could
        // make its own line vanish and be taken for the proxy.
        let hops: Vec<&[u8]> = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .collect();
        // Walk back from the proxy nearest to us; the first hop we do not run is the client. A
        // hop that is not an address ends the walk: nothing left of it can be believed.
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            let Some(addr) = parse_hop(hop) else { break };
            client = addr;
            if !self.trusts(addr) {
                break;
            }
        }
        client
    }
}

/// `198.51.100.4`, `2001:db8::1`, and the `1.2.3.4:5678` / `[2001:db8::1]:443` forms some
/// proxies write.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hop).ok()?.trim();
    let addr = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| text.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(addr.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Result = std::result::Result<(), Box<dyn std::error::Error>>;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", http::HeaderValue::from_static(v));
        }
        headers
    }

    fn ip(text: &str) -> std::result::Result<IpAddr, std::net::AddrParseError> {
        text.parse()
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() -> Result {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("203.0.113.9")?, &headers(&["1.2.3.4"])),
            ip("203.0.113.9")?
        );
        Ok(())
    }

    #[test]
    fn an_untrusted_peer_cannot_claim_another_address() -> Result {
        let proxies = TrustedProxies::parse("10.0.0.0/8")?;
        assert_eq!(
            proxies.client_ip(ip("203.0.113.9")?, &headers(&["1.2.3.4"])),
            ip("203.0.113.9")?
        );
        Ok(())
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() -> Result {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 192.168.1.7")?;
        // The client forged "6.6.6.6"; the ingress (10.0.0.2) appended the real one.
        let forwarded = headers(&["6.6.6.6, 198.51.100.4", "10.0.0.2"]);
        assert_eq!(proxies.client_ip(ip("10.0.0.1")?, &forwarded), ip("198.51.100.4")?);
        assert_eq!(proxies.client_ip(ip("192.168.1.7")?, &forwarded), ip("198.51.100.4")?);
        Ok(())
    }

    #[test]
    fn a_trusted_peer_without_a_usable_header_is_the_client() -> Result {
        let proxies = TrustedProxies::parse("10.0.0.0/8")?;
        assert_eq!(proxies.client_ip(ip("10.0.0.1")?, &HeaderMap::new()), ip("10.0.0.1")?);
        assert_eq!(
            proxies.client_ip(ip("10.0.0.1")?, &headers(&["garbage"])),
            ip("10.0.0.1")?
        );
        assert_eq!(
            proxies.client_ip(ip("10.0.0.1")?, &headers(&["garbage, 198.51.100.4"])),
            ip("198.51.100.4")?
        );
        // Only trusted hops: the left-most one is as far as we can see.
        assert_eq!(
            proxies.client_ip(ip("10.0.0.1")?, &headers(&["10.0.0.5"])),
            ip("10.0.0.5")?
        );
        Ok(())
    }

    #[test]
    fn mapped_ports_and_bad_bytes_do_not_hide_the_client() -> Result {
        let proxies = TrustedProxies::parse("10.0.0.0/8")?;
        // A dual-stack listener's view of an IPv4 proxy.
        let mapped = ip("::ffff:10.0.0.1")?;
        assert_eq!(
            proxies.client_ip(mapped, &headers(&["198.51.100.4"])),
            ip("198.51.100.4")?
        );
        assert_eq!(proxies.client_ip(mapped, &HeaderMap::new()), ip("10.0.0.1")?);
        // Hops with ports or brackets.
        let ported = headers(&["198.51.100.4:5678, [2001:db8::1]:443, [2001:db8::2]"]);
        assert_eq!(proxies.client_ip(ip("10.0.0.1")?, &ported), ip("2001:db8::2")?);
        // A client's own line with a non-ASCII byte, the proxy's real address appended to it.
        let mut forged = HeaderMap::new();
        forged.append("x-forwarded-for", http::HeaderValue::from_bytes(b"\xff, 198.51.100.4")?);
        assert_eq!(proxies.client_ip(ip("10.0.0.1")?, &forged), ip("198.51.100.4")?);
        Ok(())
    }

    #[test]
    fn bad_entries_are_refused_with_their_text() -> Result {
        let refused = TrustedProxies::parse("10.0.0.0/8, proxy.local");
        assert!(refused.is_err_and(|e| e.contains("proxy.local")));
        assert_eq!(TrustedProxies::parse(" ")?, TrustedProxies::default());
        Ok(())
    }
}
