//! One request of a source check: the conditional GET of the page or feed (and of its
//! host's robots.txt), with redirects followed here rather than by the client, so that each
//! hop is checked by the SSRF guard and the source's credentials go only to its own origin.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, LOCATION,
    RETRY_AFTER,
};
use tokio::time::Instant;
use url::Url;

use super::credentials::{self, Credential};
use crate::guard;
use crate::hosts::HostLimiter;

/// The longest `Retry-After` honoured; a server asking for more is asked again after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What a request needs besides its URL.
#[derive(Debug)]
pub struct Request<'a> {
    pub client: &'a reqwest::Client,
    pub hosts: &'a HostLimiter,
    pub allow_private_addresses: bool,
    pub max_redirects: u32,
    pub accept: &'a str,
    /// The source's URL: credentials go only to its origin.
    pub origin_of: &'a Url,
    pub credentials: &'a [Credential],
    pub etag: Option<&'a str>,
    pub last_modified: Option<&'a str>,
    /// The body is read up to this many bytes; past it, `cut` decides.
    pub max_bytes: usize,
    /// Keep the first `max_bytes` of a longer body (robots.txt) instead of failing.
    pub cut: bool,
}

#[derive(Debug)]
pub enum Answer {
    NotModified,
    Body {
        bytes: Vec<u8>,
        /// After redirects: what relative links resolve against.
        url: Url,
        etag: Option<String>,
        last_modified: Option<String>,
        content_type: Option<String>,
    },
    /// 4xx other than 429.
    ClientError(StatusCode),
}

#[derive(Debug)]
pub enum FetchError {
    /// The request failed (a refused address, a timeout, 5xx): the check fails.
    Failed(String),
    /// 429 or 503 with (or without) `Retry-After`: the host is held and the check waits.
    Deferred { until: Instant, error: String },
}

/// `host:port`, the key of the per-host limits (the same as downloads use).
pub fn host_key(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(0)
    )
}

pub async fn get(request: &Request<'_>, url: &Url) -> Result<Answer, FetchError> {
    let mut url = url.clone();
    for _hop in 0..=request.max_redirects {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::Failed(format!(
                "redirect to {url} refused: only http and https are followed"
            )));
        }
        guard::check_target(&url, request.allow_private_addresses)
            .map_err(|refused| FetchError::Failed(refused.to_string()))?;
        let host = host_key(&url);
        let _slot = request.hosts.acquire(&host).await;
        let mut builder = request
            .client
            .get(url.clone())
            .header(ACCEPT, request.accept);
        if url.origin() == request.origin_of.origin() {
            builder = credentials::apply(builder, request.credentials);
        }
        if let Some(etag) = request.etag {
            builder = builder.header(IF_NONE_MATCH, etag);
        }
        if let Some(last_modified) = request.last_modified {
            builder = builder.header(IF_MODIFIED_SINCE, last_modified);
        }
        let response = builder.send().await.map_err(|error| {
            FetchError::Failed(match guard::refusal_in(&error) {
                Some(refused) => refused.to_string(),
                None => format!("GET {url}: {}", guard::describe_error(&error)),
            })
        })?;
        let status = response.status();
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            let Some(location) = response
                .headers()
                .get(LOCATION)
                .and_then(|value| value.to_str().ok())
            else {
                return Err(FetchError::Failed(format!(
                    "{status} from {url} without a Location"
                )));
            };
            url = url.join(location).map_err(|error| {
                FetchError::Failed(format!("bad redirect {location:?} from {url}: {error}"))
            })?;
            continue;
        }
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Answer::NotModified);
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            let wait = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(parse_retry_after)
                .unwrap_or(Duration::ZERO)
                .min(MAX_RETRY_AFTER);
            let until = Instant::now() + wait;
            request.hosts.hold(&host, until).await;
            return Err(FetchError::Deferred {
                until,
                error: format!(
                    "{status} from {url}; asked to retry after {} s",
                    wait.as_secs()
                ),
            });
        }
        if status.is_client_error() {
            return Ok(Answer::ClientError(status));
        }
        if !status.is_success() {
            return Err(FetchError::Failed(format!("{status} from {url}")));
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|value: &reqwest::header::HeaderValue| value.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header(ETAG);
        let last_modified = header(LAST_MODIFIED);
        let content_type = header(CONTENT_TYPE);
        let bytes = read_body(response, request.max_bytes, request.cut, &url).await?;
        return Ok(Answer::Body {
            bytes,
            url,
            etag,
            last_modified,
            content_type,
        });
    }
    Err(FetchError::Failed(format!(
        "more than {} redirects (scraper.max_redirects); last one to {url}",
        request.max_redirects
    )))
}

/// Reads the body chunk by chunk up to `max_bytes`: a stall longer than `request_timeout`
/// between two chunks ends it (the client's read timeout).
async fn read_body(
    mut response: reqwest::Response,
    max_bytes: usize,
    cut: bool,
    url: &Url,
) -> Result<Vec<u8>, FetchError> {
    let mut body = Vec::new();
    loop {
        let chunk = response.chunk().await.map_err(|error| {
            FetchError::Failed(format!("reading {url}: {}", guard::describe_error(&error)))
        })?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() + chunk.len() > max_bytes {
            if cut {
                let room = max_bytes - body.len();
                body.extend_from_slice(&chunk[..room]);
                return Ok(body);
            }
            return Err(FetchError::Failed(format!(
                "{url} is larger than the {} MiB a source check reads",
                max_bytes / (1024 * 1024)
            )));
        }
        body.extend_from_slice(&chunk);
    }
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate_to_system_time(value)?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The IMF-fixdate form of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), the one servers
/// send; other forms are treated as absent.
fn httpdate_to_system_time(value: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|name| name == month)? as i64
        + 1;
    let year: i64 = year.parse().ok()?;
    let mut clock = time.split(':').map(|part| part.parse::<i64>().ok());
    let (hours, minutes, seconds) = (clock.next()??, clock.next()??, clock.next()??);
    // Days since the epoch (Howard Hinnant's days_from_civil).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hours * 3600 + minutes * 60 + seconds;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            httpdate_to_system_time("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    /// A server on 127.0.0.1 whose `/start` redirects to `localhost` (a loopback name) and
    /// to another port; it records the Authorization header of each request.
    /// Each request's path and Authorization header.
    type Seen = Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

    fn server() -> (u16, Seen) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                let mut authorization = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("authorization")
                    {
                        authorization = Some(value.trim().to_owned());
                    }
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_owned();
                sink.lock().unwrap().push((path.clone(), authorization));
                let response = match path.as_str() {
                    "/same" => format!(
                        "HTTP/1.1 302 Found\r\nLocation: http://public.test:{port}/landed\r\n\
                         Content-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                    "/other" => format!(
                        "HTTP/1.1 302 Found\r\nLocation: http://other.test:{port}/landed\r\n\
                         Content-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                    "/private" => format!(
                        "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/landed\r\n\
                         Content-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                    _ => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        .to_owned(),
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        (port, seen)
    }

    #[tokio::test]
    async fn credentials_stay_on_the_origin_and_private_hops_are_refused() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (port, seen) = server();
        let mut config = sluice_core::config::defaults().scraper;
        config.allow_private_addresses = false;
        // `public.test` and `other.test` stand for public hosts (the builder's overrides skip
        // the guarded resolver for them); every other target goes through the guard.
        let client = guard::client_builder(&config)
            .redirect(reqwest::redirect::Policy::none())
            .resolve("public.test", SocketAddr::from(([127, 0, 0, 1], 0)))
            .resolve("other.test", SocketAddr::from(([127, 0, 0, 1], 0)))
            .build()
            .unwrap();
        let hosts = HostLimiter::new(2, Duration::ZERO);
        let origin = Url::parse(&format!("http://public.test:{port}/")).unwrap();
        let credentials = vec![Credential::Bearer("secret".into())];
        let request = Request {
            client: &client,
            hosts: &hosts,
            allow_private_addresses: false,
            max_redirects: 3,
            accept: "*/*",
            origin_of: &origin,
            credentials: &credentials,
            etag: None,
            last_modified: None,
            max_bytes: 1024,
            cut: false,
        };
        for path in ["/same", "/other"] {
            let answer = get(&request, &origin.join(path).unwrap()).await.unwrap();
            assert!(matches!(answer, Answer::Body { .. }), "{answer:?}");
        }
        let error = get(&request, &origin.join("/private").unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(&error, FetchError::Failed(message) if message.contains("loopback")),
            "{error:?}"
        );
        let seen = seen.lock().unwrap().clone();
        let bearer = Some("Bearer secret".to_owned());
        assert_eq!(
            seen,
            vec![
                ("/same".to_owned(), bearer.clone()),
                ("/landed".to_owned(), bearer.clone()),
                ("/other".to_owned(), bearer.clone()),
                ("/landed".to_owned(), None),
                ("/private".to_owned(), bearer),
            ],
            "the hop to other.test gets no credentials and the private hop is never made"
        );
    }
}
