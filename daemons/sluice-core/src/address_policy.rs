//! Which network addresses sluice may fetch from: the address half of the SSRF guard, shared
//! by everything that accepts a download URL (the web API, sluicectl, the scraper when it
//! connects). Loopback, private, link-local, cloud-metadata and reserved addresses are refused
//! unless `[scraper] allow_private_addresses` is set.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether a host name always means this machine (`localhost` and `*.localhost`, RFC 6761),
/// whatever DNS says. `name` is lower-case without a trailing dot.
pub fn is_local_name(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

/// Why an address may not be fetched, or `None` for a public one.
pub fn forbidden_reason(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(address) => forbidden_v4(address),
        IpAddr::V6(address) => {
            if let Some(mapped) = address.to_ipv4_mapped() {
                return forbidden_v4(mapped);
            }
            forbidden_v6(address)
        }
    }
}

fn forbidden_v4(address: Ipv4Addr) -> Option<&'static str> {
    let [first, second, ..] = address.octets();
    if address.is_loopback() {
        Some("points at a loopback address")
    } else if address.is_unspecified() || first == 0 {
        Some("points at an unspecified address")
    } else if address.is_private() {
        Some("points at a private address")
    } else if address.is_link_local() {
        Some("points at a link-local or cloud metadata address")
    } else if first == 100 && (64..128).contains(&second) {
        Some("points at a shared (carrier-grade NAT) address")
    } else if address.is_broadcast() || address.is_multicast() || first >= 240 {
        Some("points at a broadcast, multicast or reserved address")
    } else {
        None
    }
}

fn forbidden_v6(address: Ipv6Addr) -> Option<&'static str> {
    let first_segment = address.segments()[0];
    if address.is_loopback() {
        Some("points at a loopback address")
    } else if address.is_unspecified() {
        Some("points at an unspecified address")
    } else if (first_segment & 0xfe00) == 0xfc00 {
        Some("points at a private (unique local) address")
    } else if (first_segment & 0xffc0) == 0xfe80 {
        Some("points at a link-local address")
    } else if address.is_multicast() {
        Some("points at a multicast address")
    } else if address == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        Some("points at a cloud metadata address")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_and_public_ones_allowed() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            let address: IpAddr = refused.parse().unwrap();
            assert!(forbidden_reason(address).is_some(), "{refused}");
        }
        for allowed in ["93.184.216.34", "2606:2800:220:1::1", "1.1.1.1"] {
            let address: IpAddr = allowed.parse().unwrap();
            assert_eq!(forbidden_reason(address), None, "{allowed}");
        }
    }

    #[test]
    fn localhost_names_are_local() {
        assert!(is_local_name("localhost"));
        assert!(is_local_name("api.localhost"));
        assert!(!is_local_name("localhost.example.org"));
    }
}
