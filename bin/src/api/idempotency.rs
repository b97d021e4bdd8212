//! `Idempotency-Key` on creates: the same key with the same request answers
//! what the first answered (and creates nothing); the same key with another
//! request is refused. The key is claimed first in the create's own
//! transaction, so one key makes one resource even under concurrent retries
//! (see `skein_models::idempotency`).

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use sha2::{Digest, Sha256};
use skein_models::idempotency::{self, Claim};
use sqlx::PgConnection;
use uuid::Uuid;

use super::auth::Auth;
use super::error::ApiError;

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED: &str = "idempotent-replayed";

/// A create's key (if it sent one) and the hash of what it asked.
pub struct Key {
    scope: Uuid,
    key: String,
    request_hash: [u8; 32],
}

/// Read the header: 1-255 visible ASCII characters.
pub fn from_headers(headers: &HeaderMap, auth: &Auth, route: &str, body: &Value) -> Result<Option<Key>, ApiError> {
    let Some(value) = headers.get(HEADER) else { return Ok(None) };
    let key = value.to_str().ok().filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|c| c.is_ascii_graphic()));
    let key = key.ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "invalid_header", "Idempotency-Key must be 1-255 visible ASCII characters"))?;
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update(b"\n");
    // serde_json's maps are sorted, so the same fields in another order hash the same.
    h.update(body.to_string().as_bytes());
    Ok(Some(Key { scope: auth.scope(), key: key.to_string(), request_hash: h.finalize().into() }))
}

/// Claim the key in `conn`'s transaction. `Some(response)`: it was used
/// before; answer that and write nothing. `None`: go ahead, then [`finish`].
pub async fn claim(conn: &mut PgConnection, key: Option<&Key>) -> Result<Option<Response>, ApiError> {
    let Some(k) = key else { return Ok(None) };
    match idempotency::claim(conn, k.scope, &k.key, &k.request_hash).await? {
        Claim::New => Ok(None),
        Claim::Used { request_hash, status, response } if request_hash == k.request_hash => {
            let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
            let mut reply = (status, Json(response)).into_response();
            reply.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
            Ok(Some(reply))
        }
        Claim::Used { .. } => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request; use a new key",
        )),
    }
}

/// Record what the create made, in its transaction.
pub async fn finish(conn: &mut PgConnection, key: Option<&Key>, resource: Uuid, status: StatusCode, response: &Value) -> Result<(), ApiError> {
    if let Some(k) = key {
        idempotency::complete(conn, k.scope, &k.key, resource, status.as_u16() as i16, response).await?;
    }
    Ok(())
}
