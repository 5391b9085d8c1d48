//! Which addresses a download may reach: the SSRF guard's address classes, names that always
//! mean this machine, and the submit-time host check. The scraper applies the same classes
//! again when it connects (and at every redirect), which is the check that counts; the
//! submit-time checks give the person submitting a clear refusal at once instead of a job
//! that fails later.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use url::{Host, Url};

use super::PolicyError;

/// How long the submit-time lookup of a host name may take before the URL is accepted
/// unchecked (DNS may be down for a moment; the scraper's connect-time check still applies).
pub const HOST_RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Refuses a URL whose host is an IP literal in a range the SSRF guard denies, or a name that
/// always means this machine, unless `allow_private_addresses`. Other names pass here: see
/// [`resolve_download_host`] and the scraper's connect-time check.
///
/// The D-Bus object used to accept `localhost` and leave it to the connect-time check, while
/// the web API and sluicectl refused it at once; the stricter verdict now holds everywhere.
pub fn check_download_target(url: &Url, allow_private_addresses: bool) -> Result<(), PolicyError> {
    if allow_private_addresses {
        return Ok(());
    }
    let address = match url.host() {
        Some(Host::Ipv4(address)) => IpAddr::V4(address),
        Some(Host::Ipv6(address)) => IpAddr::V6(address),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if is_local_name(&name) {
                return Err(forbidden(url, "names the local machine"));
            }
            return Ok(());
        }
        None => return Ok(()),
    };
    match forbidden_address_reason(address) {
        Some(reason) => Err(forbidden(
            url,
            &format!("points at {address}, a {reason} address"),
        )),
        None => Ok(()),
    }
}

/// The submit-time lookup: resolves the URL's host name (within [`HOST_RESOLVE_TIMEOUT`])
/// and refuses it if any address it resolves to is one the guard denies. IP literals and
/// local names are [`check_download_target`]'s; a name that does not resolve in time is
/// accepted. Used by the web API and by sluicectl (on its tokio runtime).
pub async fn resolve_download_host(
    url: &Url,
    allow_private_addresses: bool,
) -> Result<(), PolicyError> {
    if allow_private_addresses {
        return Ok(());
    }
    let Some(Host::Domain(name)) = url.host() else {
        return Ok(());
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let port = url.port_or_known_default().unwrap_or(80);
    let resolved: Vec<IpAddr> = match tokio::time::timeout(
        HOST_RESOLVE_TIMEOUT,
        tokio::net::lookup_host((name.as_str(), port)),
    )
    .await
    {
        Ok(Ok(resolved)) => resolved.map(|socket| socket.ip()).collect(),
        _ => Vec::new(),
    };
    for address in resolved {
        if let Some(reason) = forbidden_address_reason(address) {
            return Err(forbidden(
                url,
                &format!("resolves to {address}, a {reason} address"),
            ));
        }
    }
    Ok(())
}

/// Whether a host name always means this machine (`localhost` and `*.localhost`, RFC 6761),
/// whatever DNS says. `name` is lower-case without a trailing dot.
pub fn is_local_name(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

/// Why the SSRF guard refuses `address` (loopback, private, link-local and cloud metadata,
/// shared CGNAT, unique-local, unspecified, multicast, reserved, documentation-adjacent
/// IETF and benchmarking ranges), or `None` for a public one. IPv6 forms that embed an IPv4
/// address (mapped, compatible, NAT64, 6to4) are judged by it.
pub fn forbidden_address_reason(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(address) => forbidden_ipv4_reason(address),
        IpAddr::V6(address) => forbidden_ipv6_reason(address),
    }
}

fn forbidden(url: &Url, reason: &str) -> PolicyError {
    PolicyError::ForbiddenAddress(format!(
        "url {url} {reason}; downloads may only reach public addresses, refused because \
         [scraper] allow_private_addresses is false"
    ))
}

fn forbidden_ipv4_reason(address: Ipv4Addr) -> Option<&'static str> {
    let [first, second, third, _] = address.octets();
    if address == Ipv4Addr::new(169, 254, 169, 254) {
        Some("cloud metadata")
    } else if address.is_loopback() {
        Some("loopback")
    } else if first == 0 {
        Some("unspecified (\"this network\")")
    } else if address.is_private() {
        Some("private")
    } else if address.is_link_local() {
        Some("link-local")
    } else if first == 100 && (64..128).contains(&second) {
        Some("shared (carrier-grade NAT)")
    } else if address.is_multicast() {
        Some("multicast")
    } else if address.is_broadcast() || first >= 240 {
        Some("reserved")
    } else if first == 192 && second == 0 && third == 0 {
        Some("IETF protocol assignment")
    } else if first == 198 && (18..20).contains(&second) {
        Some("benchmarking")
    } else {
        None
    }
}

fn forbidden_ipv6_reason(address: Ipv6Addr) -> Option<&'static str> {
    let segments = address.segments();
    if let Some(mapped) = address.to_ipv4_mapped() {
        return forbidden_ipv4_reason(mapped);
    }
    if address.is_loopback() {
        return Some("loopback");
    }
    if address.is_unspecified() {
        return Some("unspecified");
    }
    let embedded_ipv4 = |high: u16, low: u16| {
        Ipv4Addr::new((high >> 8) as u8, high as u8, (low >> 8) as u8, low as u8)
    };
    // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::/96) reach the IPv4
    // address inside them.
    if segments[..6] == [0, 0, 0, 0, 0, 0] || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_ipv4_reason(embedded_ipv4(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        // 6to4 carries the IPv4 address of its relay in the second and third segments.
        return forbidden_ipv4_reason(embedded_ipv4(segments[1], segments[2]));
    }
    match segments[0] {
        first if first & 0xfe00 == 0xfc00 => Some("unique-local"),
        first if first & 0xffc0 == 0xfe80 => Some("link-local"),
        first if first & 0xffc0 == 0xfec0 => Some("site-local"),
        first if first & 0xff00 == 0xff00 => Some("multicast"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_download_url;
    use super::*;

    #[test]
    fn the_guard_refuses_internal_addresses_and_allows_public_ones() {
        let reason = |text: &str| forbidden_address_reason(text.parse().unwrap());
        for (address, expected) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("100.127.255.255", "shared (carrier-grade NAT)"),
            ("0.0.0.0", "unspecified (\"this network\")"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "unique-local"),
            ("fd00:ec2::254", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("64:ff9b::a00:1", "private"),
            ("2002:c0a8:101::1", "private"),
        ] {
            assert_eq!(reason(address), Some(expected), "{address}");
        }
        for address in [
            "93.184.215.14",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(reason(address), None, "{address}");
        }
    }

    #[test]
    fn literal_internal_addresses_and_local_names_are_refused_unless_allowed() {
        for text in [
            "http://127.0.0.1:8080/x",
            "http://[::1]/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://localhost/x",
            "http://LOCALHOST./x",
            "http://api.localhost/x",
        ] {
            let url = parse_download_url(text).unwrap();
            let error = check_download_target(&url, false).unwrap_err();
            assert_eq!(error.code(), "forbidden_address");
            assert!(
                error.to_string().contains("allow_private_addresses"),
                "{error}"
            );
            check_download_target(&url, true).unwrap();
        }
        // Other names are checked when resolved.
        check_download_target(&parse_download_url("http://example.org/").unwrap(), false).unwrap();
        check_download_target(&parse_download_url("http://8.8.8.8/").unwrap(), false).unwrap();
    }

    #[tokio::test]
    async fn the_lookup_refuses_names_of_internal_addresses_and_skips_literals() {
        let literal = parse_download_url("https://93.184.216.34/x").unwrap();
        resolve_download_host(&literal, false).await.unwrap();
        // "localhost" resolves from /etc/hosts without a network; the lookup judges what it
        // resolves to (the name check is check_download_target's).
        let by_name = parse_download_url("http://localhost/x").unwrap();
        let error = resolve_download_host(&by_name, false).await.unwrap_err();
        assert_eq!(error.code(), "forbidden_address");
        resolve_download_host(&by_name, true).await.unwrap();
    }
}
