//! The SSRF guard and the HTTP client built around it.
//!
//! Three places see a request's target, and each checks it:
//! - before the first request, an IP literal in the URL ([`check_target`]);
//! - the DNS resolver ([`GuardedResolver`]): it resolves the host, refuses it if *any* of its
//!   addresses is internal, and hands the connector exactly the addresses it checked, so the
//!   connection is pinned to them (no second lookup that a rebinding DNS server could answer
//!   differently);
//! - the redirect policy: every hop's scheme, count and IP literal; a hop to a host name goes
//!   through the resolver again when it connects.
//!
//! With `scraper.allow_private_addresses = true` only the scheme and redirect count are checked.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;
use sluice_core::config::ScraperConfig;
use sluice_core::policy::forbidden_address_reason;
use url::{Host, Url};

/// A target the guard refused; the download fails for good with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "{host} resolves to {address}, a {reason} address; refused because \
         scraper.allow_private_addresses is false"
    )]
    InternalAddress {
        host: String,
        address: IpAddr,
        reason: &'static str,
    },
    #[error("{host} did not resolve to any address")]
    NoAddress { host: String },
    #[error("redirect to {url} refused: only http and https are followed")]
    RedirectScheme { url: String },
    #[error(
        "redirect from https to {url} refused: it would send the request, and any credentials, in clear text"
    )]
    RedirectDowngrade { url: String },
    #[error("more than {max} redirects (scraper.max_redirects); last one to {url}")]
    TooManyRedirects { max: u32, url: String },
}

/// Checks the literal address of `url`'s host, if it has one (names go to the resolver).
pub fn check_target(url: &Url, allow_private_addresses: bool) -> Result<(), Refused> {
    if allow_private_addresses {
        return Ok(());
    }
    let address = match url.host() {
        Some(Host::Ipv4(address)) => IpAddr::V4(address),
        Some(Host::Ipv6(address)) => IpAddr::V6(address),
        _ => return Ok(()),
    };
    match forbidden_address_reason(address) {
        Some(reason) => Err(Refused::InternalAddress {
            host: url.host_str().unwrap_or_default().to_owned(),
            address,
            reason,
        }),
        None => Ok(()),
    }
}

/// Builds the client every download uses: the guarded resolver, the checking redirect
/// policy, no proxy (a proxy would connect where the guard never looked), no compression
/// (byte ranges must mean bytes of the file), and the configured timeouts.
pub fn build_client(config: &ScraperConfig) -> reqwest::Result<reqwest::Client> {
    client_builder(config).build()
}

/// The client of source checks: the same guard, but redirects are not followed by the
/// client; the check follows them itself, checking every hop, so that a source's
/// credentials go to its own origin only (see `sources::fetch`).
pub fn build_source_client(config: &ScraperConfig) -> reqwest::Result<reqwest::Client> {
    client_builder(config)
        .redirect(redirect::Policy::none())
        .build()
}

/// The builder behind [`build_client`], for tests that add to it.
pub fn client_builder(config: &ScraperConfig) -> reqwest::ClientBuilder {
    let allow_private_addresses = config.allow_private_addresses;
    let max_redirects = config.max_redirects;
    let policy = redirect::Policy::custom(move |attempt| {
        let url = attempt.url().clone();
        if attempt.previous().len() > max_redirects as usize {
            return attempt.error(Refused::TooManyRedirects {
                max: max_redirects,
                url: url.to_string(),
            });
        }
        if !matches!(url.scheme(), "http" | "https") {
            return attempt.error(Refused::RedirectScheme {
                url: url.to_string(),
            });
        }
        // reqwest keeps Authorization on a redirect to the same host and port, even from https
        // to http; no download follows a downgrade.
        let from_https = attempt
            .previous()
            .last()
            .is_some_and(|previous| previous.scheme() == "https");
        if from_https && url.scheme() == "http" {
            return attempt.error(Refused::RedirectDowngrade {
                url: url.to_string(),
            });
        }
        if let Err(refused) = check_target(&url, allow_private_addresses) {
            return attempt.error(refused);
        }
        attempt.follow()
    });
    reqwest::Client::builder()
        .user_agent(config.user_agent.clone())
        .no_proxy()
        .redirect(policy)
        .dns_resolver(Arc::new(GuardedResolver {
            allow_private_addresses,
        }))
        .connect_timeout(config.request_timeout)
        .read_timeout(config.request_timeout)
        .pool_idle_timeout(Duration::from_secs(30))
}

/// Resolves with the system resolver (getaddrinfo, on a blocking thread), then applies the
/// guard to every address.
#[derive(Debug)]
pub struct GuardedResolver {
    allow_private_addresses: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allow_private_addresses = self.allow_private_addresses;
        Box::pin(async move {
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addresses = guard_addresses(&host, addresses, allow_private_addresses)?;
            let addresses: Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// The resolver's decision: every address must pass, or the host is refused.
pub fn guard_addresses(
    host: &str,
    addresses: Vec<SocketAddr>,
    allow_private_addresses: bool,
) -> Result<Vec<SocketAddr>, Refused> {
    if addresses.is_empty() {
        return Err(Refused::NoAddress {
            host: host.to_owned(),
        });
    }
    if !allow_private_addresses {
        for address in &addresses {
            if let Some(reason) = forbidden_address_reason(address.ip()) {
                return Err(Refused::InternalAddress {
                    host: host.to_owned(),
                    address: address.ip(),
                    reason,
                });
            }
        }
    }
    Ok(addresses)
}

/// The guard's refusal inside a client error, if that is what stopped the request.
pub fn refusal_in(error: &(dyn StdError + 'static)) -> Option<Refused> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(refused) = error.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        current = error.source();
    }
    None
}

/// The whole chain of a client error in one line ("error sending request: connection
/// refused"), since reqwest's own message names only the outermost layer.
pub fn describe_error(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        current = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn any_internal_address_refuses_the_host() {
        let public: SocketAddr = "93.184.215.14:0".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let metadata: SocketAddr = "169.254.169.254:0".parse().unwrap();
        assert_eq!(
            guard_addresses("example.org", vec![public], false).unwrap(),
            vec![public]
        );
        let refused = guard_addresses("mixed.example", vec![public, loopback], false).unwrap_err();
        assert!(
            matches!(
                refused,
                Refused::InternalAddress {
                    reason: "loopback",
                    ..
                }
            ),
            "{refused:?}"
        );
        let refused = guard_addresses("meta.example", vec![metadata], false).unwrap_err();
        assert!(refused.to_string().contains("cloud metadata"), "{refused}");
        assert_eq!(
            guard_addresses("mixed.example", vec![public, loopback], true).unwrap(),
            vec![public, loopback]
        );
        assert!(matches!(
            guard_addresses("nothing.example", Vec::new(), true),
            Err(Refused::NoAddress { .. })
        ));
    }

    #[test]
    fn literal_targets_are_checked_before_any_request() {
        let url = |text: &str| Url::parse(text).unwrap();
        assert!(check_target(&url("http://127.0.0.1:9/x"), false).is_err());
        assert!(check_target(&url("http://[::1]:9/x"), false).is_err());
        assert!(check_target(&url("http://169.254.169.254/"), false).is_err());
        assert!(check_target(&url("http://127.0.0.1:9/x"), true).is_ok());
        assert!(check_target(&url("http://example.org/x"), false).is_ok());
    }

    /// A server on 127.0.0.1 answering `/to-literal` and `/to-name` with redirects back to
    /// itself (by address and by the name `localhost`), and `/landed` with content. Returns
    /// its port and the paths it was asked for.
    fn redirecting_server() -> (u16, Arc<Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&paths);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_owned();
                seen.lock().unwrap().push(path.clone());
                let response = match path.as_str() {
                    "/to-literal" => format!(
                        "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/landed\r\n\
                         Content-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                    "/to-name" => format!(
                        "HTTP/1.1 302 Found\r\nLocation: http://localhost:{port}/landed\r\n\
                         Content-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                    _ => "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecret"
                        .to_owned(),
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        (port, paths)
    }

    #[tokio::test]
    async fn a_redirect_to_an_internal_address_is_refused_before_connecting() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (port, paths) = redirecting_server();
        let mut config = sluice_core::config::defaults().scraper;
        config.allow_private_addresses = false;
        // `public.test` stands for a public host: the builder's override skips the guarded
        // resolver for that one name, so the first hop reaches the local server; every other
        // target goes through the guard as in production.
        let client = client_builder(&config)
            .resolve("public.test", SocketAddr::from(([127, 0, 0, 1], 0)))
            .build()
            .unwrap();
        for (path, expected) in [
            ("/to-literal", "127.0.0.1, a loopback address"),
            (
                "/to-name",
                "localhost resolves to 127.0.0.1, a loopback address",
            ),
        ] {
            let error = client
                .get(format!("http://public.test:{port}{path}"))
                .send()
                .await
                .expect_err("the redirect must be refused");
            let refused = refusal_in(&error).unwrap_or_else(|| panic!("{path}: {error:?}"));
            assert!(refused.to_string().contains(expected), "{path}: {refused}");
        }
        assert_eq!(
            *paths.lock().unwrap(),
            vec!["/to-literal", "/to-name"],
            "never landed"
        );

        // The same chain is followed when private addresses are allowed.
        config.allow_private_addresses = true;
        let client = client_builder(&config)
            .resolve("public.test", SocketAddr::from(([127, 0, 0, 1], 0)))
            .build()
            .unwrap();
        let response = client
            .get(format!("http://public.test:{port}/to-name"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.text().await.unwrap(), "secret");
    }

    #[test]
    fn refusals_are_found_inside_wrapped_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error")]
        struct Outer(#[source] Box<dyn StdError + Send + Sync>);
        let refused = Refused::NoAddress {
            host: "x.example".into(),
        };
        let outer = Outer(Box::new(refused.clone()));
        assert_eq!(refusal_in(&outer), Some(refused));
        assert_eq!(
            describe_error(&outer),
            "client error: x.example did not resolve to any address"
        );
    }
}
