//! Every API failure has one shape, `{"error": {"code", "message"}}`: a
//! stable snake_case `code` for programs and a `message` for people. Client
//! mistakes are 4xx with a code that says which; anything else is a 500 with
//! code `internal`, logged here and never described to the client.
//!
//! Codes: `invalid_json`, `invalid_body`, `invalid_query`, `invalid_header`
//! (400); `unauthenticated` (401); `forbidden` (403); `not_found`,
//! `route_not_found` (404); `method_not_allowed` (405); `conflict`,
//! `quota_exceeded`, `subnet_full`, `subnet_has_vms`, `host_has_vms`, `host_destroyed`,
//! `vm_destroyed`, `vm_not_placed`, `vm_not_running` (409);
//! `body_too_large` (413); `unsupported_media_type` (415); `invalid_field`,
//! `idempotency_key_reused` (422); `internal` (500); `timeout` (503: not
//! answered within the server's request timeout, nothing committed),
//! `host_unreachable` (503: a VM's host does not answer, for its console).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use skein_progs::rules::{Invalid, Refusal};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    /// No such thing, or not the caller's: the two are never told apart.
    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"))
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    pub fn invalid_query(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
    }

    /// Logged with its causes; the client hears only that it was not its fault.
    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %error, "api request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; it has been logged")
    }

    /// A database error: a constraint a client's input broke is theirs
    /// (4xx), anything else is ours (500).
    pub fn from_db(e: sqlx::Error) -> ApiError {
        let constraint = match &e {
            sqlx::Error::Database(d) => d.constraint().map(str::to_string),
            _ => None,
        };
        match constraint.as_deref().and_then(skein_progs::rules::refusal) {
            Some(r) => r.into(),
            None => ApiError::internal(format!("{e:#}")),
        }
    }

    /// An error from a model or prog function: its database cause decides.
    pub fn from_anyhow(e: anyhow::Error) -> ApiError {
        match e.downcast::<sqlx::Error>() {
            Ok(db) => ApiError::from_db(db),
            Err(other) => ApiError::internal(format!("{other:#}")),
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(i: Invalid) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", i.message())
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        match r {
            Refusal::Conflict(why) => ApiError::conflict("conflict", why),
            Refusal::Invalid(i) => i.into(),
        }
    }
}

impl From<crate::signals::Refused> for ApiError {
    fn from(r: crate::signals::Refused) -> ApiError {
        use crate::signals::Refused;
        match r {
            Refused::NotFound(what) => ApiError::not_found(what),
            Refused::Conflict { code, message } => ApiError::conflict(code, message),
            Refused::Failed(e) => ApiError::from_anyhow(e),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        ApiError::from_db(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response()
    }
}

/// The router's fallback: no route has this path.
pub async fn route_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route; see GET /openapi.json")
}

/// A route with this path exists, but not for this method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method; see GET /openapi.json")
}
