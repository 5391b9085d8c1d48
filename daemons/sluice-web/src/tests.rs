//! The HTTP application driven in-process with `actix_web::test` (no socket, no bus): the
//! request checks and error shapes that do not need a running daemon.

use actix_web::http::StatusCode;
use actix_web::test::{TestRequest, call_service, init_service, read_body_json};
use serde_json::Value;
use sluice_core::store::jobs::NewJob;
use tokio::sync::{broadcast, watch};

use crate::app::app;
use crate::state::{AccessRules, ApiToken, AppState, Settings, StorePool};

const TOKEN: &str = "in-process-token-0123456789";

fn state(directory: &std::path::Path) -> AppState {
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
            token: ApiToken::new(TOKEN).expect("token"),
            allowed_hosts: vec!["localhost".into()],
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
                .insert_header(("Host", "localhost")),
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
