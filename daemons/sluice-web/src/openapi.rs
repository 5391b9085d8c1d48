//! The OpenAPI 3.1 document of the HTTP API, `GET {base}/api/openapi.json`, derived by utoipa
//! from the handlers' own `#[utoipa::path]` attributes and their request and response types,
//! so the document changes when a handler does. Who may call it: like every read under
//! `/api`, the read or the admin token, or anyone with `[web] public_reads = true`.
//!
//! Every operation also lists the errors any request may get (a Host that is not served,
//! the store unavailable, an internal failure), and under `/api` the token errors; the
//! document's one server is the configured base path, so its paths are the routes as written.

use actix_web::HttpResponse;
use actix_web::web::Data;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sluice",
        description = "sluice's HTTP API: jobs, downloads, bundles, sources, documents, events, status \
                       and metrics. Reads need the read or the admin token as a bearer token \
                       (unless `[web] public_reads = true`); changes need the admin token.",
    ),
    paths(
        crate::status::healthz,
        crate::status::readyz,
        crate::metrics::metrics,
        crate::status::api_status,
        crate::events::event_stream,
        crate::api::list_jobs,
        crate::job_stream::get_job,
        crate::job_stream::job_events,
        crate::api::job_history,
        crate::api::retry_job,
        crate::api::cancel_job,
        crate::api::create_download,
        crate::api::list_downloads,
        crate::api::get_download,
        crate::api::delete_download,
        crate::bundles::create_bundle,
        crate::bundles::list_bundles,
        crate::bundles::get_bundle,
        crate::bundles::cancel_bundle,
        crate::bundles::delete_bundle,
        crate::api::list_sources,
        crate::api::get_source,
        crate::api::list_documents,
        crate::upload::upload,
        crate::api::get_document,
        crate::content::document_content,
        crate::content::document_thumbnail,
        crate::content::document_derived,
        openapi_json,
    ),
    modifiers(&CommonResponses),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// `GET {base}/api/openapi.json`.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content((Object = "application/json")))))]
pub async fn openapi_json(state: Data<AppState>) -> HttpResponse {
    let mut document = ApiDoc::openapi();
    let base_path = &state.settings().base_path;
    document.servers = Some(vec![Server::new(if base_path.is_empty() {
        "/"
    } else {
        base_path
    })]);
    HttpResponse::Ok().json(document)
}

/// The bearer scheme, and on every operation the errors any request may get.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, document: &mut Document) {
        let components = document.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (path, item) in document.paths.paths.iter_mut() {
            let public = matches!(path.as_str(), "/healthz" | "/readyz");
            let operations = [
                (&mut item.get, false),
                (&mut item.head, false),
                (&mut item.post, true),
                (&mut item.delete, true),
            ];
            for (operation, changes) in operations {
                if let Some(operation) = operation {
                    add_errors(operation, public, changes);
                }
            }
        }
    }
}

fn add_errors(operation: &mut Operation, public: bool, changes: bool) {
    let mut errors = vec![
        (
            "421",
            "The Host header names a host not in `[web] allowed_hosts`",
        ),
        (
            "500",
            "An unexpected failure; details are in the sluice-web log",
        ),
        (
            "503",
            "The store is busy or unreachable, or a daemon is not running",
        ),
    ];
    if !public {
        errors.push((
            "401",
            "No bearer token, or a wrong one (`WWW-Authenticate: Bearer`)",
        ));
    }
    if changes {
        errors.push(("403", "The read token may not change anything"));
    }
    for (status, description) in errors {
        if operation.responses.responses.contains_key(status) {
            continue;
        }
        let response = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        operation
            .responses
            .responses
            .insert(status.to_owned(), response.into());
    }
}
