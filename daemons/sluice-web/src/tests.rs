//! The HTTP application driven in-process with `actix_web::test` (no socket, no bus): the
//! request checks and error shapes that do not need a running daemon.

use actix_web::http::StatusCode;
use actix_web::test::{TestRequest, call_service, init_service, read_body_json};
use serde_json::Value;
use sluice_core::store::jobs::NewJob;
use tokio::sync::{broadcast, watch};

use crate::app::app;
use crate::state::{
    AccessRules, ApiToken, AppState, ReadAccess, Settings, StorePool, TokenCredentials, TokenError,
};

const TOKEN: &str = "in-process-token-0123456789";
const READ_TOKEN: &str = "in-process-read-token-9876543210";

fn state(directory: &std::path::Path) -> AppState {
    state_with_reads(
        directory,
        ReadAccess::Token(ApiToken::new(READ_TOKEN).expect("read token")),
    )
}

fn state_with_reads(directory: &std::path::Path, reads: ReadAccess) -> AppState {
    let config = sluice_core::config::defaults();
    let mut settings = Settings::from_config(&config);
    settings.max_request_body = 1024;
    let database = directory.join("sluice.db");
    let stores = StorePool::new(database, config.store_options());
    stores.check().expect("open the store");
    let (events, _) = broadcast::channel(16);
    let (_shutdown_sender, shutdown) = watch::channel(false);
    AppState::new(
        settings,
        AccessRules {
            admin_token: ApiToken::new(TOKEN).expect("token"),
            reads,
            allowed_hosts: vec!["localhost".into()],
            metrics: sluice_core::config::MetricsAccess::Token,
        },
        stores,
        None,
        events,
        shutdown,
    )
}

#[actix_web::test]
async fn requests_are_checked_before_any_handler_runs() {
    let directory = tempfile::tempdir().unwrap();
    let state = state(directory.path());
    let job = sluice_core::store::Store::open(
        &directory.path().join("sluice.db"),
        &sluice_core::config::defaults().store_options(),
    )
    .unwrap()
    .enqueue(&NewJob::new("noop", serde_json::json!({})))
    .unwrap()
    .id;
    let service = init_service(app(state)).await;

    let cases = [
        (
            TestRequest::get()
                .uri("/api/jobs")
                .insert_header(("Host", "evil.example")),
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
        ),
        (
            TestRequest::post()
                .uri(&format!("/api/jobs/{job}/cancel"))
                .insert_header(("Host", "localhost")),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            TestRequest::get()
                .uri("/api/jobs/abc")
                .insert_header(("Host", "localhost"))
                .insert_header(("Authorization", format!("Bearer {READ_TOKEN}"))),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            TestRequest::get()
                .uri("/nowhere")
                .insert_header(("Host", "localhost:80")),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            TestRequest::post()
                .uri("/api/downloads")
                .insert_header(("Host", "localhost"))
                .insert_header(("Authorization", format!("Bearer {TOKEN}")))
                .insert_header(("Content-Type", "application/json"))
                .set_payload(format!(
                    r#"{{"url": "https://93.184.216.34/{}"}}"#,
                    "a".repeat(2048)
                )),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let response = call_service(&service, request.to_request()).await;
        assert_eq!(response.status(), status);
        let body: Value = read_body_json(response).await;
        assert_eq!(body["error"]["code"], code, "{body}");
    }

    let request = TestRequest::post()
        .uri(&format!("/api/jobs/{job}/cancel"))
        .insert_header(("Host", "localhost"))
        .insert_header(("Authorization", format!("Bearer {TOKEN}")));
    let response = call_service(&service, request.to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = read_body_json(response).await;
    assert_eq!(body["state"], "cancelled");
}

#[test]
fn tokens_compare_whole_and_short_ones_are_refused() {
    let token = ApiToken::new(TOKEN).unwrap();
    assert!(token.matches(TOKEN));
    assert!(!token.matches(&TOKEN[..TOKEN.len() - 1]));
    assert!(!token.matches(""));
    assert!(ApiToken::new("short").is_none());
    assert!(ApiToken::new("has a space in it, long enough").is_none());
    assert_eq!(format!("{token:?}"), "ApiToken(<redacted>)");
}

/// Every combination of who calls (nobody, the read token, the admin token, a wrong token) and
/// what (a read, a change, a public page), with reads private and public: each answer, and
/// that a refused change changed nothing.
#[actix_web::test]
async fn reads_need_the_read_or_admin_token_and_changes_the_admin_token() {
    const NONE: Option<&str> = None;
    const WRONG: &str = "wrong-token-but-long-enough-0123";
    let directory = tempfile::tempdir().unwrap();
    let mut store = sluice_core::store::Store::open(
        &directory.path().join("sluice.db"),
        &sluice_core::config::defaults().store_options(),
    )
    .unwrap();
    let job = store
        .enqueue(&NewJob::new("secret-kind-in-a-job", serde_json::json!({})))
        .unwrap()
        .id;
    let cancel = format!("/api/jobs/{job}/cancel");
    let read = format!("/api/jobs/{job}");

    for public_reads in [false, true] {
        let reads = if public_reads {
            ReadAccess::Public
        } else {
            ReadAccess::Token(ApiToken::new(READ_TOKEN).unwrap())
        };
        let service = init_service(app(state_with_reads(directory.path(), reads))).await;
        let anonymous_read = if public_reads {
            (StatusCode::OK, None)
        } else {
            (StatusCode::UNAUTHORIZED, Some("unauthorized"))
        };
        let read_token_read = if public_reads {
            // With public reads there is no read token: it is just a wrong token.
            (StatusCode::UNAUTHORIZED, Some("unauthorized"))
        } else {
            (StatusCode::OK, None)
        };
        let read_token_change = if public_reads {
            (StatusCode::UNAUTHORIZED, Some("unauthorized"))
        } else {
            (StatusCode::FORBIDDEN, Some("forbidden"))
        };
        let cases = [
            ("GET", read.as_str(), NONE, anonymous_read),
            ("GET", "/api/status", NONE, anonymous_read),
            ("GET", "/api/events", NONE, anonymous_read),
            ("GET", "/api/documents?q=root", NONE, anonymous_read),
            ("GET", read.as_str(), Some(READ_TOKEN), read_token_read),
            ("GET", read.as_str(), Some(TOKEN), (StatusCode::OK, None)),
            (
                "GET",
                read.as_str(),
                Some(WRONG),
                (StatusCode::UNAUTHORIZED, Some("unauthorized")),
            ),
            (
                "POST",
                cancel.as_str(),
                NONE,
                (StatusCode::UNAUTHORIZED, Some("unauthorized")),
            ),
            (
                "POST",
                cancel.as_str(),
                Some(WRONG),
                (StatusCode::UNAUTHORIZED, Some("unauthorized")),
            ),
            ("POST", cancel.as_str(), Some(READ_TOKEN), read_token_change),
            ("GET", "/", NONE, (StatusCode::OK, None)),
            ("GET", "/dashboard.js", NONE, (StatusCode::OK, None)),
            ("GET", "/dashboard.css", NONE, (StatusCode::OK, None)),
            ("GET", "/healthz", NONE, (StatusCode::OK, None)),
            ("GET", "/readyz", NONE, (StatusCode::OK, None)),
        ];
        for (method, uri, token, (status, code)) in cases {
            let mut request = match method {
                "GET" => TestRequest::get(),
                _ => TestRequest::post(),
            }
            .uri(uri)
            .insert_header(("Host", "localhost"));
            if let Some(token) = token {
                request = request.insert_header(("Authorization", format!("Bearer {token}")));
            }
            let response = call_service(&service, request.to_request()).await;
            let what = format!("{method} {uri} with {token:?}, public reads {public_reads}");
            assert_eq!(response.status(), status, "{what}");
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(
                    response.headers().get("WWW-Authenticate").unwrap(),
                    "Bearer realm=\"sluice\"",
                    "{what}"
                );
            }
            if let Some(code) = code {
                let body: Value = read_body_json(response).await;
                assert_eq!(body["error"]["code"], code, "{what}: {body}");
            } else if uri == "/" {
                let page = actix_web::test::read_body(response).await;
                let page = String::from_utf8(page.to_vec()).unwrap();
                assert!(
                    !page.contains("secret-kind-in-a-job"),
                    "the page itself shows no data: {page}"
                );
                assert!(page.contains("dashboard.js"), "{page}");
            }
        }
        let job_now = store.get_job(job).unwrap();
        assert_eq!(
            job_now.state.as_str(),
            "queued",
            "no refused change touched the job"
        );
    }
}

/// The access rules a config describes: both token files are read, a read token equal to the
/// admin token is refused, and with public reads the read token file is not needed.
#[test]
fn access_rules_come_from_the_two_token_files() {
    let directory = tempfile::tempdir().unwrap();
    let admin = directory.path().join("api-token");
    let read = directory.path().join("read-token");
    std::fs::write(&admin, format!("{TOKEN}\n")).unwrap();
    let mut web = sluice_core::config::defaults().web;
    web.token_file = admin.clone();
    web.read_token_file = read.clone();

    match AccessRules::from_config(&web, &TokenCredentials::none()) {
        Err(TokenError::Read { key, path, .. }) => {
            assert_eq!((key, path.as_path()), ("read_token_file", read.as_path()));
        }
        other => panic!("a missing read token file must be refused, got {other:?}"),
    }
    std::fs::write(&read, format!("{TOKEN}\n")).unwrap();
    let error = AccessRules::from_config(&web, &TokenCredentials::none()).unwrap_err();
    assert!(matches!(error, TokenError::SameToken { .. }), "{error}");
    assert!(error.to_string().contains("read_token_file"), "{error}");
    std::fs::write(&read, "short\n").unwrap();
    assert!(matches!(
        AccessRules::from_config(&web, &TokenCredentials::none()),
        Err(TokenError::Malformed {
            key: "read_token_file",
            ..
        })
    ));

    std::fs::write(&read, format!("{READ_TOKEN}\n")).unwrap();
    let rules = AccessRules::from_config(&web, &TokenCredentials::none()).unwrap();
    assert_eq!(rules.grant(READ_TOKEN), Some(crate::state::Grant::Read));
    assert_eq!(rules.grant(TOKEN), Some(crate::state::Grant::Admin));
    assert_eq!(rules.grant("something-else-entirely"), None);
    assert!(!rules.reads_are_public());

    std::fs::remove_file(&read).unwrap();
    web.public_reads = true;
    let rules = AccessRules::from_config(&web, &TokenCredentials::none()).unwrap();
    assert!(rules.reads_are_public());
    assert_eq!(rules.grant(READ_TOKEN), None);
}

/// Under systemd the tokens come from the service's credentials (LoadCredential=), which win
/// over the configured files: the package makes those files root-only, so sluice-web could
/// not read them itself. A credential that is missing falls back to the configured file.
#[test]
fn tokens_passed_as_systemd_credentials_win_over_the_configured_files() {
    let directory = tempfile::tempdir().unwrap();
    let configured = directory.path().join("etc");
    let credentials = directory.path().join("credentials");
    std::fs::create_dir_all(&configured).unwrap();
    std::fs::create_dir_all(&credentials).unwrap();
    let mut web = sluice_core::config::defaults().web;
    web.token_file = configured.join("api-token");
    web.read_token_file = configured.join("read-token");
    std::fs::write(&web.token_file, "configured-admin-token-0123456789\n").unwrap();
    std::fs::write(&web.read_token_file, "configured-read-token-0123456789\n").unwrap();
    std::fs::write(credentials.join("api-token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(credentials.join("read-token"), format!("{READ_TOKEN}\n")).unwrap();

    let passed = TokenCredentials::in_directory(&credentials);
    let rules = AccessRules::from_config(&web, &passed).unwrap();
    assert_eq!(rules.grant(TOKEN), Some(crate::state::Grant::Admin));
    assert_eq!(rules.grant(READ_TOKEN), Some(crate::state::Grant::Read));
    assert_eq!(rules.grant("configured-admin-token-0123456789"), None);
    assert!(passed.describe(&web).contains("systemd credentials"));
    // The configured files are not the package's, and are not read: said, for each token.
    let overridden = passed.overridden(&web);
    assert_eq!(overridden.len(), 2, "{overridden:?}");
    assert!(
        overridden[0].contains("[web] token_file names")
            && overridden[0].contains("credential api-token"),
        "{overridden:?}"
    );
    // With the package's paths, nothing to say.
    let packaged = sluice_core::config::defaults().web;
    assert!(passed.overridden(&packaged).is_empty());

    // Only the admin token passed: the read token comes from its configured file.
    std::fs::remove_file(credentials.join("read-token")).unwrap();
    let rules = AccessRules::from_config(&web, &passed).unwrap();
    assert_eq!(rules.grant(TOKEN), Some(crate::state::Grant::Admin));
    assert_eq!(
        rules.grant("configured-read-token-0123456789"),
        Some(crate::state::Grant::Read)
    );

    // A malformed credential is refused with the credential's path, not the configured one.
    std::fs::write(credentials.join("api-token"), "short\n").unwrap();
    match AccessRules::from_config(&web, &passed) {
        Err(TokenError::Malformed { key, path }) => {
            assert_eq!(key, "token_file");
            assert_eq!(path, credentials.join("api-token"));
        }
        other => panic!("a malformed credential must be refused, got {other:?}"),
    }

    let rules = AccessRules::from_config(&web, &TokenCredentials::none()).unwrap();
    assert_eq!(
        rules.grant("configured-admin-token-0123456789"),
        Some(crate::state::Grant::Admin)
    );
}

#[actix_web::test]
async fn event_streams_beyond_the_limit_get_503_until_one_closes() {
    let directory = tempfile::tempdir().unwrap();
    let state = state(directory.path());
    state.event_streams().set_limit(2);
    let service = init_service(app(state.clone())).await;
    let open_stream = || {
        TestRequest::get()
            .uri("/api/events")
            .insert_header(("Host", "localhost"))
            .insert_header(("Authorization", format!("Bearer {READ_TOKEN}")))
            .to_request()
    };

    let first = call_service(&service, open_stream()).await;
    let second = call_service(&service, open_stream()).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(state.event_streams().open(), 2);

    let refused = call_service(&service, open_stream()).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers().get("Retry-After").unwrap(), "15");
    let body: Value = read_body_json(refused).await;
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[web] max_event_streams"),
        "{body}"
    );
    assert_eq!(state.event_streams().refused(), 1);

    // The client of the first stream leaves: its slot is free again.
    drop(first);
    assert_eq!(state.event_streams().open(), 1);
    let again = call_service(&service, open_stream()).await;
    assert_eq!(again.status(), StatusCode::OK);

    // A lower limit (a reload) refuses new streams but leaves the open ones.
    state.event_streams().set_limit(1);
    let refused = call_service(&service, open_stream()).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(state.event_streams().open(), 2);
    drop((second, again));
    assert_eq!(state.event_streams().open(), 0);
}

/// `/metrics` follows `[web] metrics_access`: with `token`, the API's read rule; with
/// `loopback`, the client's address and nothing else. Requests count by route pattern, not by
/// raw path.
#[actix_web::test]
async fn metrics_answer_whom_metrics_access_allows_and_count_routes_by_pattern() {
    use sluice_core::config::MetricsAccess;
    let directory = tempfile::tempdir().unwrap();
    let loopback: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mapped_loopback: std::net::SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
    let remote: std::net::SocketAddr = "192.0.2.7:40000".parse().unwrap();
    for access in [MetricsAccess::Token, MetricsAccess::Loopback] {
        let state = state(directory.path());
        let mut rules = state.access();
        rules.metrics = access;
        state.replace_access(rules);
        let service = init_service(app(state)).await;
        // Two raw paths of one route, and a path of no route.
        for uri in ["/api/jobs/1", "/api/jobs/2", "/no/such/page"] {
            let request = TestRequest::get()
                .uri(uri)
                .insert_header(("Host", "localhost"))
                .insert_header(("Authorization", format!("Bearer {TOKEN}")));
            call_service(&service, request.to_request()).await;
        }
        let cases = match access {
            MetricsAccess::Token => vec![
                (None, loopback, StatusCode::UNAUTHORIZED),
                (
                    Some("wrong-token-but-long-enough-0123"),
                    loopback,
                    StatusCode::UNAUTHORIZED,
                ),
                (Some(READ_TOKEN), remote, StatusCode::OK),
                (Some(TOKEN), remote, StatusCode::OK),
            ],
            MetricsAccess::Loopback => vec![
                (None, loopback, StatusCode::OK),
                (None, mapped_loopback, StatusCode::OK),
                (None, remote, StatusCode::FORBIDDEN),
                (Some(TOKEN), remote, StatusCode::FORBIDDEN),
            ],
        };
        for (token, peer, status) in cases {
            let mut request = TestRequest::get()
                .uri("/metrics")
                .peer_addr(peer)
                .insert_header(("Host", "localhost"));
            if let Some(token) = token {
                request = request.insert_header(("Authorization", format!("Bearer {token}")));
            }
            let response = call_service(&service, request.to_request()).await;
            let what = format!("{access:?}: token {token:?} from {peer}");
            assert_eq!(response.status(), status, "{what}");
            if status != StatusCode::OK {
                let body: Value = read_body_json(response).await;
                assert!(body["error"]["message"].is_string(), "{what}: {body}");
                continue;
            }
            let body = actix_web::test::read_body(response).await;
            let text = std::str::from_utf8(&body).unwrap();
            assert!(
                text.contains(
                    "sluice_http_requests_total{method=\"GET\",route=\"/api/jobs/{id}\",status=\"404\"} 2"
                ),
                "{what}: {text}"
            );
            assert!(
                text.contains("route=\"unmatched\",status=\"404\"} 1"),
                "{what}: {text}"
            );
            assert!(!text.contains("/api/jobs/1"), "{what}: {text}");
            assert!(
                text.contains("sluice_daemon_up{daemon=\"sluice-web\"} 1"),
                "{what}: {text}"
            );
        }
    }
}

/// The OpenAPI document is 3.1, is a read like the others, and documents every route the app
/// serves with each method.
#[actix_web::test]
async fn the_openapi_document_is_3_1_and_lists_every_route() {
    let directory = tempfile::tempdir().unwrap();
    let service = init_service(app(state(directory.path()))).await;
    let anonymous = TestRequest::get()
        .uri("/api/openapi.json")
        .insert_header(("Host", "localhost"))
        .to_request();
    assert_eq!(
        call_service(&service, anonymous).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let request = TestRequest::get()
        .uri("/api/openapi.json")
        .insert_header(("Host", "localhost"))
        .insert_header(("Authorization", format!("Bearer {READ_TOKEN}")))
        .to_request();
    let response = call_service(&service, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = read_body_json(response).await;
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["servers"][0]["url"], "/");
    let routes = [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/api/openapi.json", "get"),
        ("/api/status", "get"),
        ("/api/events", "get"),
        ("/api/jobs", "get"),
        ("/api/jobs/{id}", "get"),
        ("/api/jobs/{id}/events", "get"),
        ("/api/jobs/{id}/history", "get"),
        ("/api/jobs/{id}/retry", "post"),
        ("/api/jobs/{id}/cancel", "post"),
        ("/api/downloads", "get"),
        ("/api/downloads", "post"),
        ("/api/downloads/{id}", "get"),
        ("/api/downloads/{id}", "delete"),
        ("/api/bundles", "get"),
        ("/api/bundles", "post"),
        ("/api/bundles/{id}", "get"),
        ("/api/bundles/{id}", "delete"),
        ("/api/bundles/{id}/cancel", "post"),
        ("/api/sources", "get"),
        ("/api/sources/{name}", "get"),
        ("/api/documents", "get"),
        ("/api/documents", "post"),
        ("/api/documents/{id}", "get"),
        ("/api/documents/{id}/content", "get"),
        ("/api/documents/{id}/thumbnail", "get"),
        ("/api/documents/{id}/derived/{processor}/{name}", "get"),
    ];
    for (path, method) in routes {
        let operation = &document["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let responses = operation["responses"].as_object().unwrap();
        assert!(
            responses.contains_key("503"),
            "{method} {path}: {responses:?}"
        );
        if path.starts_with("/api") {
            assert!(responses.contains_key("401"), "{method} {path}");
        }
    }
    let documented: usize = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        routes.len(),
        "an operation the list above lacks"
    );
    let error = &document["components"]["schemas"]["ErrorBody"];
    assert!(error.is_object(), "{document}");
}

/// Regression (found by schemathesis): a known path asked with a method it does not have was
/// a 404 "no route"; it is a 405 with `Allow`, and an unknown path stays a 404.
#[actix_web::test]
async fn a_method_a_path_does_not_have_is_405_with_allow() {
    let directory = tempfile::tempdir().unwrap();
    let service = init_service(app(state(directory.path()))).await;
    for (method, uri, allow) in [
        ("TRACE", "/api/status", "GET"),
        ("PUT", "/api/downloads", "GET, POST"),
        ("PATCH", "/api/downloads/1", "GET, DELETE"),
        ("DELETE", "/healthz", "GET"),
    ] {
        let request = TestRequest::default()
            .method(actix_web::http::Method::from_bytes(method.as_bytes()).unwrap())
            .uri(uri)
            .insert_header(("Host", "localhost"))
            .insert_header(("Authorization", format!("Bearer {TOKEN}")))
            .to_request();
        let response = call_service(&service, request).await;
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}"
        );
        assert_eq!(
            response.headers().get("allow").unwrap(),
            allow,
            "{method} {uri}"
        );
        let body: Value = read_body_json(response).await;
        assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    }
    let request = TestRequest::get()
        .uri("/api/no-such-thing")
        .insert_header(("Host", "localhost"))
        .insert_header(("Authorization", format!("Bearer {TOKEN}")))
        .to_request();
    assert_eq!(
        call_service(&service, request).await.status(),
        StatusCode::NOT_FOUND
    );
}

/// Thumbnails are made by a job of their own after the ingest: until it has run, `/thumbnail`
/// says so (404 with reason `thumbnail_pending` and `Retry-After`), and once it recorded why
/// there is none, the 404 says that instead.
#[actix_web::test]
async fn a_thumbnail_still_being_made_is_a_404_that_says_so_and_when_to_ask_again() {
    use sluice_core::ingest::THUMBNAIL_JOB_KIND;
    use sluice_core::store::{IngestRecord, NewDocument, Store};

    let directory = tempfile::tempdir().unwrap();
    let state = state(directory.path());
    let mut store = Store::open(
        &directory.path().join("sluice.db"),
        &sluice_core::config::defaults().store_options(),
    )
    .unwrap();
    store
        .enqueue(&NewJob::new(
            "ingest",
            serde_json::json!({"path": "/in/a.png", "watch_root": "/in", "mode": "index"}),
        ))
        .unwrap();
    let lease = std::time::Duration::from_secs(30);
    let ingest = store
        .claim_jobs(&"test".into(), &["ingest"], 1, lease)
        .unwrap()
        .pop()
        .unwrap();
    let document_id = store
        .finish_ingest(&IngestRecord {
            job_id: ingest.id,
            lease_token: ingest.lease_token,
            file_id: None,
            document: NewDocument {
                blake3: "a".repeat(64),
                sha256: "b".repeat(64),
                size: 3,
                mime: "image/png".into(),
                original_name: "a.png".into(),
                library_path: None,
                metadata: serde_json::json!({}),
                text: None,
                pages: Vec::new(),
                wants_thumbnail: true,
            },
        })
        .unwrap()
        .document_id;
    let service = init_service(app(state)).await;
    let ask = || {
        TestRequest::get()
            .uri(&format!("/api/documents/{document_id}/thumbnail"))
            .insert_header(("Host", "localhost"))
            .insert_header(("Authorization", format!("Bearer {READ_TOKEN}")))
            .to_request()
    };

    let response = call_service(&service, ask()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers().get("retry-after").unwrap(), "1");
    let body: Value = read_body_json(response).await;
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    assert_eq!(body["error"]["reason"], "thumbnail_pending", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not made yet"),
        "{body}"
    );

    let thumbnail_job = store
        .claim_jobs(&"test".into(), &[THUMBNAIL_JOB_KIND], 1, lease)
        .unwrap()
        .pop()
        .unwrap();
    store
        .finish_thumbnail(
            thumbnail_job.id,
            &thumbnail_job.lease_token,
            document_id,
            Err("the image is beyond the decoding limits"),
        )
        .unwrap();
    let response = call_service(&service, ask()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.headers().get("retry-after").is_none());
    let body: Value = read_body_json(response).await;
    assert!(body["error"].get("reason").is_none(), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("beyond the decoding limits"),
        "{body}"
    );
}
