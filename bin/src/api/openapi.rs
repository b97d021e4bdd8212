//! The API's OpenAPI document, kept in the repo (`bin/openapi.json`) and
//! compiled in, so what is served is what is reviewed. A test checks that
//! its paths and methods are exactly the router's (`super::ROUTES`).

use axum::http::header;
use axum::response::IntoResponse;

pub const DOCUMENT: &str = include_str!("../../openapi.json");

/// `GET /openapi.json` (no token needed).
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
