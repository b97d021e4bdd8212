//! Reading requests strictly, with every refusal in the API's error shape:
//! a JSON body (content type, size, syntax, one object with each key once,
//! then shape: unknown fields are refused by the request types), a path id,
//! a query string, and the pagination parameters every list takes.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::{DeserializeOwned, Error as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
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
        let json = strict_json(&bytes).map_err(|e| match e.to_string().starts_with(DUPLICATE) {
            true => ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("the body has a {e}: send each key once")),
            false => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not JSON: {e}")),
        })?;
        if !json.is_object() {
            // serde would take an array for a struct, field by position.
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", "the body must be a JSON object ({...})"));
        }
        let value = T::deserialize(&json).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("{e}")))?;
        Ok(JsonBody { value, json })
    }
}

const DUPLICATE: &str = "duplicate key";

/// JSON as a value, refusing an object that has a key twice (anywhere):
/// serde_json would keep the last, so a body could say two things at once.
pub fn strict_json(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict::deserialize(&mut de)?.0;
    de.end()?;
    Ok(value)
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(A::Error::custom(format!("{DUPLICATE} {key:?}")));
            }
            let Strict(v) = map.next_value()?;
            object.insert(key, v);
        }
        Ok(Value::Object(object))
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
