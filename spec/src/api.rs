//! Driving the HTTP API in-process (`tower::ServiceExt::oneshot` on the
//! router, no sockets), with tokens made straight in the test database.

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use skein_bin::api::{self, auth, ApiState};
use skein_models::{api_token, project, Ubid, UbidType};
use skein_progs::ssh::keys::SecretKey;
use sqlx::PgPool;
use tower::ServiceExt;

/// An answer: status, headers, and the body as JSON (Null if empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Reply {
    /// The error code of an error reply ("" if none).
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    #[track_caller]
    pub fn assert(&self, status: u16, code: &str) -> &Self {
        assert_eq!((self.status.as_u16(), self.code()), (status, code), "{}", String::from_utf8_lossy(&self.raw));
        self
    }

    /// The `id` of the resource in the body.
    pub fn id(&self) -> String {
        self.body["id"].as_str().unwrap_or_else(|| panic!("no id in {}", self.body)).to_string()
    }
}

#[derive(Clone)]
pub struct Api {
    pub pool: PgPool,
    pub router: Router,
}

impl Api {
    pub fn new(pool: PgPool) -> Api {
        Api::with_secret(pool, SecretKey::random())
    }

    pub fn with_secret(pool: PgPool, secret: SecretKey) -> Api {
        let router = api::router(ApiState { pool: pool.clone(), secret });
        Api { pool, router }
    }

    /// A project with `quota` VMs and a token for it.
    pub async fn project(&self, name: &str, quota: i32) -> (Ubid, String) {
        let id = Ubid::generate(UbidType::Project);
        project::insert(&mut self.pool.acquire().await.unwrap(), id.uuid(), name, quota).await.unwrap();
        (id, self.token(Some(id)).await)
    }

    /// A token of `project`, or an operator token.
    pub async fn token(&self, project: Option<Ubid>) -> String {
        let secret = auth::new_secret();
        let id = Ubid::generate(UbidType::Token).uuid();
        api_token::insert(&mut self.pool.acquire().await.unwrap(), id, "test", project.map(|p| p.uuid()), &auth::hash(&secret))
            .await
            .unwrap();
        secret
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.router.clone().oneshot(req).await.expect("the router is infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let raw = resp.into_body().collect().await.expect("body").to_bytes().to_vec();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Reply { status, headers, body, raw }
    }

    /// `method path` with `token` and a JSON `body`.
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
        self.call_with(method, path, token, body, &[]).await
    }

    pub async fn call_with(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>, headers: &[(&str, &str)]) -> Reply {
        let mut req = Request::builder().method(Method::from_bytes(method.as_bytes()).unwrap()).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = match body {
            Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.send(req.unwrap()).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call("GET", path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.call("POST", path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.call("DELETE", path, Some(token), None).await
    }
}

/// A valid-looking OpenSSH public key line.
pub const PUBLIC_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@spec";

/// A VM create body.
pub fn vm_body(name: &str) -> Value {
    serde_json::json!({"name": name, "cores": 1, "memory_mib": 256, "disk_mib": 64, "public_key": PUBLIC_KEY})
}
