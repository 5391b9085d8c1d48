//! The route table and the request checks every route shares: the Host check (DNS-rebinding
//! protection), the bearer tokens on the API, and JSON errors for bodies, queries and paths
//! that do not parse.
//!
//! Who may call what:
//! - the dashboard page and its script, `/healthz` and `/readyz`: anyone who can reach the
//!   socket (they show no data: the page fetches its data from the API with the token it is
//!   given);
//! - `GET`/`HEAD` under `/api`: the read token or the admin token, or anyone when
//!   `[web] public_reads = true`;
//! - every other method under `/api`: the admin token only;
//! - `GET /api/openapi.json` (the API's OpenAPI document) is a read like the others;
//! - `GET /metrics`: `[web] metrics_access`: `token` is the rule of `GET` under `/api`,
//!   `loopback` is any client connecting from a loopback address, without a token.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::{Next, from_fn};
use actix_web::web::{self, Data};
use actix_web::{App, Error, HttpRequest, HttpResponse, guard};

use crate::error::{ApiError, json_error, path_error, query_error};
use crate::state::{AppState, Grant};
use crate::{
    api, bundles, content, dashboard, events, job_stream, metrics, openapi, status, upload,
};

/// The whole HTTP application for `state`; `HttpServer` calls this once per worker, tests call
/// it directly with `actix_web::test`.
pub fn app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = Error,
        InitError = (),
    >,
> {
    let settings = state.settings().clone();
    let json_config = web::JsonConfig::default()
        .limit(settings.max_request_body)
        .error_handler(json_error);
    let payload_config = web::PayloadConfig::new(settings.max_request_body);
    App::new()
        .app_data(Data::new(state))
        .app_data(json_config)
        .app_data(payload_config)
        .app_data(web::QueryConfig::default().error_handler(query_error))
        .app_data(web::PathConfig::default().error_handler(path_error))
        .wrap(from_fn(check_host))
        .wrap(from_fn(metrics::count_requests))
        .service(
            web::scope(&settings.base_path)
                .route("/", web::get().to(dashboard::dashboard))
                .route("/dashboard.js", web::get().to(dashboard::script))
                .route("/dashboard.css", web::get().to(dashboard::stylesheet))
                .service(resource("/healthz", "GET").route(web::get().to(status::healthz)))
                .service(resource("/readyz", "GET").route(web::get().to(status::readyz)))
                .service(
                    resource("/metrics", "GET")
                        .wrap(from_fn(metrics::require_metrics_access))
                        .route(web::get().to(metrics::metrics)),
                )
                .service(
                    web::scope("/api")
                        .wrap(from_fn(require_token))
                        .service(
                            resource("/status", "GET").route(web::get().to(status::api_status)),
                        )
                        .service(
                            resource("/openapi.json", "GET")
                                .route(web::get().to(openapi::openapi_json)),
                        )
                        .service(
                            resource("/events", "GET").route(web::get().to(events::event_stream)),
                        )
                        .service(resource("/jobs", "GET").route(web::get().to(api::list_jobs)))
                        .service(
                            resource("/jobs/{id}", "GET").route(web::get().to(job_stream::get_job)),
                        )
                        .service(
                            resource("/jobs/{id}/events", "GET")
                                .route(web::get().to(job_stream::job_events)),
                        )
                        .service(
                            resource("/jobs/{id}/history", "GET")
                                .route(web::get().to(api::job_history)),
                        )
                        .service(
                            resource("/jobs/{id}/retry", "POST")
                                .route(web::post().to(api::retry_job)),
                        )
                        .service(
                            resource("/jobs/{id}/cancel", "POST")
                                .route(web::post().to(api::cancel_job)),
                        )
                        .service(
                            resource("/downloads", "GET, POST")
                                .route(web::post().to(api::create_download))
                                .route(web::get().to(api::list_downloads)),
                        )
                        .service(
                            resource("/downloads/{id}", "GET, DELETE")
                                .route(web::get().to(api::get_download))
                                .route(web::delete().to(api::delete_download)),
                        )
                        .service(
                            resource("/bundles", "GET, POST")
                                .route(web::post().to(bundles::create_bundle))
                                .route(web::get().to(bundles::list_bundles)),
                        )
                        .service(
                            resource("/bundles/{id}", "GET, DELETE")
                                .route(web::get().to(bundles::get_bundle))
                                .route(web::delete().to(bundles::delete_bundle)),
                        )
                        .service(
                            resource("/bundles/{id}/cancel", "POST")
                                .route(web::post().to(bundles::cancel_bundle)),
                        )
                        .service(
                            resource("/sources", "GET").route(web::get().to(api::list_sources)),
                        )
                        .service(
                            resource("/sources/{name}", "GET")
                                .route(web::get().to(api::get_source)),
                        )
                        .service(
                            resource("/documents", "GET, POST")
                                .route(web::get().to(api::list_documents))
                                .route(web::post().to(upload::upload)),
                        )
                        .service(
                            resource("/documents/{id}", "GET")
                                .route(web::get().to(api::get_document)),
                        )
                        .service(
                            resource("/documents/{id}/content", "GET, HEAD").route(
                                web::route()
                                    .guard(guard::Any(guard::Get()).or(guard::Head()))
                                    .to(content::document_content),
                            ),
                        )
                        .service(
                            resource("/documents/{id}/thumbnail", "GET, HEAD").route(
                                web::route()
                                    .guard(guard::Any(guard::Get()).or(guard::Head()))
                                    .to(content::document_thumbnail),
                            ),
                        )
                        .service(
                            resource("/documents/{id}/derived/{processor}/{name}", "GET, HEAD")
                                .route(
                                    web::route()
                                        .guard(guard::Any(guard::Get()).or(guard::Head()))
                                        .to(content::document_derived),
                                ),
                        )
                        .default_service(web::to(not_found)),
                ),
        )
        .default_service(web::to(not_found))
}

/// A resource at `path` that answers a method it does not have with 405 and `Allow: allow`.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |request: HttpRequest| async move {
        Err::<HttpResponse, ApiError>(ApiError::MethodNotAllowed {
            message: format!(
                "{} is not a method of {}; it takes {allow}",
                request.method(),
                request.path()
            ),
            allow,
        })
    }))
}

async fn not_found(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.path()
    )))
}

/// Methods that only read: the read token is enough for them.
fn only_reads(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// Refuses an API request whose bearer token does not allow its method, before its body is
/// read.
async fn require_token<B: MessageBody>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    if let Err(refusal) = check_token(&request) {
        return Ok(request.error_response(refusal).map_into_right_body());
    }
    Ok(next.call(request).await?.map_into_left_body())
}

pub(crate) fn check_token(request: &ServiceRequest) -> Result<(), ApiError> {
    let state = app_state(request)?;
    let access = state.access();
    let reading = only_reads(request.method());
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let grant = match presented {
        None if reading && access.reads_are_public() => Grant::Anonymous,
        None if reading => {
            return Err(ApiError::Unauthorized(
                "reading the API needs an Authorization: Bearer <token> header with the read \
                 token ([web] read_token_file) or the admin token ([web] token_file)"
                    .into(),
            ));
        }
        None => {
            return Err(ApiError::Unauthorized(
                "this request changes something and needs an Authorization: Bearer <token> \
                 header with the admin token from [web] token_file"
                    .into(),
            ));
        }
        Some(token) => match access.grant(token) {
            Some(grant) => grant,
            None => {
                tracing::warn!(
                    method = %request.method(),
                    path = request.path(),
                    "refused {} {}: wrong API token",
                    request.method(),
                    request.path()
                );
                return Err(ApiError::Unauthorized("the bearer token is wrong".into()));
            }
        },
    };
    if !reading && grant != Grant::Admin {
        tracing::warn!(
            method = %request.method(),
            path = request.path(),
            "refused {} {}: a change made with the read token",
            request.method(),
            request.path()
        );
        return Err(ApiError::Forbidden(
            "the read token may only read; changes need the admin token from [web] token_file"
                .into(),
        ));
    }
    Ok(())
}

/// Refuses requests whose Host is not one of `[web] allowed_hosts`: a page on another site
/// whose name was re-pointed at 127.0.0.1 (DNS rebinding) sends its own name as Host.
async fn check_host<B: MessageBody>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    if let Err(refusal) = check_host_header(&request) {
        return Ok(request.error_response(refusal).map_into_right_body());
    }
    Ok(next.call(request).await?.map_into_left_body())
}

fn check_host_header(request: &ServiceRequest) -> Result<(), ApiError> {
    let state = app_state(request)?;
    state.count_request();
    // A second Host header never gets here: actix-http's parser refuses the request.
    let header = match request
        .headers()
        .get(header::HOST)
        .map(|value| value.to_str())
    {
        Some(Ok(value)) => Some(value),
        Some(Err(_)) => {
            return Err(ApiError::InvalidArgument(
                "the Host header is not plain text".into(),
            ));
        }
        None => None,
    };
    // An absolute-form request target (`GET http://evil.example/api/jobs`) names the host the
    // request is for, whatever the Host header says (RFC 9112, 3.2.2), so both are checked.
    let names: Vec<&str> = [request.uri().host(), header]
        .into_iter()
        .flatten()
        .map(host_name)
        .collect();
    if names.is_empty() {
        return Err(ApiError::InvalidArgument(
            "the request has no Host header".into(),
        ));
    }
    for name in names {
        let allowed = state
            .access()
            .allowed_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name));
        if !allowed {
            return Err(ApiError::MisdirectedRequest(format!(
                "host {name:?} is not served here; add it to [web] allowed_hosts if it should be"
            )));
        }
    }
    Ok(())
}

fn app_state(request: &ServiceRequest) -> Result<&Data<AppState>, ApiError> {
    request
        .app_data::<Data<AppState>>()
        .ok_or_else(|| ApiError::Internal("the app has no state".into()))
}

/// `example.org:8080` → `example.org`, `[::1]:8080` → `::1`, `[::1]` → `::1`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("localhost:8080"), "localhost");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
        assert_eq!(host_name("evil.example"), "evil.example");
    }
}
