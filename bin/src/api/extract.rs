//! Reading requests strictly, with every refusal in the API's error shape:
//! a JSON body (content type, size, syntax, then shape: unknown fields are
//! refused by the request types), a path id, a query string, and the
//! pagination parameters every list takes.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use skein_models::{Ubid, UbidType};
use uuid::Uuid;

use super::error::ApiError;

/// A JSON body parsed into `T`, and the body as a JSON value (what an
/// idempotency key's request hash is taken over).
pub struct JsonBody<T> {
    pub value: T,
    pub json: Value,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "send the body as Content-Type: application/json"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body is larger than {} bytes", super::BODY_LIMIT))
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("could not read the body: {r}"))
            }
        })?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not JSON: {e}")))?;
        let value = T::deserialize(&json).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("{e}")))?;
        Ok(JsonBody { value, json })
    }
}

/// The `{id}` of a path, as sent. A path that cannot even be decoded names
/// nothing: 404, like an id of nothing.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state).await.map_err(|_| ApiError::not_found("resource"))?;
        Ok(PathId(id))
    }
}

impl PathId {
    /// The id as a UBID of type `ty`. Anything else (malformed, bad
    /// checksum, another type) names nothing: 404 `not_found`.
    pub fn parse(&self, ty: UbidType) -> Result<Ubid, ApiError> {
        Ubid::parse_as(&self.0, ty).map_err(|_| ApiError::not_found(ty.describe()))
    }
}

/// A query string parsed into `T` (which refuses unknown parameters).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(q) = Query::<T>::from_request_parts(parts, state).await.map_err(|e| ApiError::invalid_query(e.body_text()))?;
        Ok(ApiQuery(q))
    }
}

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

/// `?limit=` (1..=100, default 20) and `?after=<id>`: where a page starts and how long it is.
#[derive(Clone, Copy, Debug)]
pub struct PageReq {
    pub limit: i64,
    pub after: Option<Uuid>,
}

impl PageReq {
    pub fn new(limit: Option<i64>, after: Option<&str>, ty: UbidType) -> Result<PageReq, ApiError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::invalid_query(format!("limit must be between 1 and {MAX_LIMIT}")));
        }
        let after = match after {
            Some(a) => Some(Ubid::parse_as(a, ty).map_err(|e| ApiError::invalid_query(format!("after must be a {} id: {e}", ty.describe())))?.uuid()),
            None => None,
        };
        Ok(PageReq { limit, after })
    }

    /// How many rows to fetch: one more than asked, to know whether there is a next page.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }
}

/// A page of a list: its items and the cursor of the next page (absent on the last).
#[derive(Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Ubid>,
}

impl<T> Page<T> {
    /// From rows fetched with [`PageReq::fetch`], in id order.
    pub fn of<R>(mut rows: Vec<R>, req: PageReq, id: impl Fn(&R) -> Uuid, view: impl FnMut(R) -> T) -> Page<T> {
        let more = rows.len() as i64 > req.limit;
        rows.truncate(req.limit as usize);
        let next = if more { rows.last().map(|r| Ubid::from_uuid(id(r))) } else { None };
        Page { items: rows.into_iter().map(view).collect(), next }
    }
}
