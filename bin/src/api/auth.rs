//! Who is calling: `Authorization: Bearer skein_<64 hex>`. Only the sha256
//! of a token's secret is stored, and a presented token is looked up by its
//! hash. A token belongs to a project (it sees and touches only that
//! project's VMs) or to an operator (everything, and hosts and strands).

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use skein_models::{api_token, Ubid};
use uuid::Uuid;

use super::error::ApiError;
use super::ApiState;

pub const TOKEN_PREFIX: &str = "skein_";
const TOKEN_HEX_LEN: usize = 64;

/// A new token's secret: shown once, stored only as [`hash`].
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Project(Ubid),
    Operator,
}

/// An authenticated request's caller and the token it used (its id and
/// name, never its secret: events and logs name it).
#[derive(Clone, Debug)]
pub struct Auth {
    pub token: Ubid,
    pub token_name: String,
    pub caller: Caller,
}

impl Auth {
    /// Hosts and strands are operators' business.
    pub fn operator(&self) -> Result<(), ApiError> {
        match self.caller {
            Caller::Operator => Ok(()),
            Caller::Project(_) => Err(ApiError::forbidden("this needs an operator token")),
        }
    }

    /// The project a project token acts for (creating a VM needs one).
    pub fn project(&self) -> Result<Ubid, ApiError> {
        match self.caller {
            Caller::Project(p) => Ok(p),
            Caller::Operator => Err(ApiError::forbidden("this needs a project token: a VM is created in the token's project")),
        }
    }

    /// Whether a resource of `project` is visible to this caller.
    pub fn sees(&self, project: Uuid) -> bool {
        match self.caller {
            Caller::Operator => true,
            Caller::Project(p) => p.uuid() == project,
        }
    }

    /// Whose idempotency keys these are: the project's, or the operators' (nil).
    pub fn scope(&self) -> Uuid {
        match self.caller {
            Caller::Project(p) => p.uuid(),
            Caller::Operator => Uuid::nil(),
        }
    }

    /// The `actor` of events this caller causes: which kind of caller.
    pub fn actor(&self) -> &'static str {
        match self.caller {
            Caller::Project(_) => "user",
            Caller::Operator => "operator",
        }
    }

    /// Which token caused an event, for its `detail`: `{"token": {"id", "name"}}`.
    /// Structured, so a reader need not parse it out of a string.
    pub fn by(&self) -> Value {
        json!({"token": {"id": self.token, "name": self.token_name}})
    }
}

impl FromRequestParts<ApiState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthenticated("no token: send Authorization: Bearer <token>"))?;
        let text = value.to_str().unwrap_or("");
        let secret = match text.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => return Err(ApiError::unauthenticated("the Authorization header must be `Bearer <token>`")),
        };
        let well_formed = secret.strip_prefix(TOKEN_PREFIX).is_some_and(|h| h.len() == TOKEN_HEX_LEN && h.bytes().all(|c| c.is_ascii_hexdigit()));
        if !well_formed {
            return Err(ApiError::unauthenticated("that is not a skein API token"));
        }
        let mut conn = state.pool.acquire().await.map_err(ApiError::internal)?;
        let token = api_token::by_hash(&mut conn, &hash(secret))
            .await?
            .ok_or_else(|| ApiError::unauthenticated("unknown or revoked token"))?;
        let caller = match token.project_id {
            Some(p) => Caller::Project(Ubid::from_uuid(p)),
            None => Caller::Operator,
        };
        let id = Ubid::from_uuid(token.id);
        if let Some(notes) = parts.extensions.get::<super::Notes>() {
            notes.token(id); // for the access log
        }
        Ok(Auth { token: id, token_name: token.name, caller })
    }
}
