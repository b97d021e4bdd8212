//! Property test of the API's request parsing: whatever the method, path,
//! headers and body, the API answers (no panic), never with a 5xx, and every
//! error is in the one error shape.

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use serde_json::{json, Value};
use skein_engine::testing::TestDb;
use skein_models::{Ubid, UbidType};
use skein_spec::api::{vm_body, Api, PUBLIC_KEY};

/// Arbitrary JSON, a few levels deep, with the API's field names likely.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("name".to_string()),
        Just("cores".to_string()),
        Just("memory_mib".to_string()),
        Just("disk_mib".to_string()),
        Just("public_key".to_string()),
        Just("subnet".to_string()),
        Just("address".to_string()),
        Just("port".to_string()),
        Just("bootstrap_private_key".to_string()),
        ".{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        (-2i64..300_000).prop_map(|n| json!(n)),
        ".{0,40}".prop_map(Value::String),
        Just(json!(PUBLIC_KEY)),
        Just(json!("web-1")),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies: valid creates with one field changed, arbitrary JSON, or raw bytes.
fn any_body() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        1 => Just(None),
        4 => (any_json(), prop::sample::select(vec!["name", "cores", "memory_mib", "disk_mib", "public_key", "subnet", "extra"]))
            .prop_map(|(v, field)| {
                let mut b = vm_body("web");
                b[field] = v;
                Some(b.to_string().into_bytes())
            }),
        1 => any_json().prop_map(|v| Some(v.to_string().into_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Some),
    ]
}

/// Mostly the API's own routes (with ids of every kind, and queries), sometimes anything.
fn any_request_line() -> impl Strategy<Value = (String, String)> {
    let id = prop_oneof![
        Just(Ubid::generate(UbidType::Vm).to_string()),
        Just(Ubid::generate(UbidType::VmHost).to_string()),
        Just(Ubid::generate(UbidType::Strand).to_string()),
        "[a-z0-9%.]{0,30}",
    ];
    let query = prop_oneof![
        2 => Just(String::new()),
        1 => "\\?(limit|after|project|x)=[a-z0-9%-]{0,30}(&limit=-?[0-9]{0,4})?",
    ];
    let route = (prop::sample::select(skein_bin::api::ROUTES.to_vec()), id.clone(), query, prop::bool::weighted(0.1)).prop_map(|((m, p), id, q, other_method)| {
        let method = if other_method { "PUT" } else { m };
        (method.to_string(), format!("{}{q}", p.replace("{id}", &id)))
    });
    let method = prop::sample::select(vec!["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"]);
    let anything = (method, prop::sample::select(vec!["/v1/vms/", "/v1/hosts/", "/v1/strands/", "/", "/v2/"]), id, "[a-z/]{0,10}")
        .prop_map(|(m, b, id, rest)| (m.to_string(), format!("{b}{id}{rest}")));
    prop_oneof![4 => route, 1 => anything]
}

#[derive(Clone, Debug)]
enum Who {
    Nobody,
    Project,
    Operator,
    Garbage(String),
}

fn any_caller() -> impl Strategy<Value = Who> {
    prop_oneof![1 => Just(Who::Nobody), 4 => Just(Who::Project), 2 => Just(Who::Operator), 1 => "[ -~]{0,80}".prop_map(Who::Garbage)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_request_makes_the_api_panic_or_answer_5xx(
        (method, path) in any_request_line(),
        who in any_caller(),
        body in any_body(),
        content_type in prop::sample::select(vec!["application/json", "application/json", "application/json; charset=utf-8", "text/plain", ""]),
        key in prop::option::weighted(0.3, "[ -~]{0,300}"),
    ) {
        let (rt, api, project, operator) = world();
        let reply = rt.block_on(async {
            let mut req = Request::builder().method(method.as_str()).uri(&path);
            let token = match &who {
                Who::Nobody => None,
                Who::Project => Some(format!("Bearer {project}")),
                Who::Operator => Some(format!("Bearer {operator}")),
                Who::Garbage(g) => Some(g.clone()),
            };
            if let Some(t) = token {
                req = req.header("authorization", t);
            }
            if !content_type.is_empty() {
                req = req.header("content-type", content_type);
            }
            if let Some(k) = &key {
                req = req.header("idempotency-key", k);
            }
            let req = req.body(body.clone().map(Body::from).unwrap_or_else(Body::empty));
            match req {
                Ok(req) => Some(api.send(req).await),
                Err(_) => None, // not even a valid HTTP request: nothing to send
            }
        });
        if let Some(r) = reply {
            prop_assert!(r.status.as_u16() < 500, "{method} {path} -> {}: {}", r.status, String::from_utf8_lossy(&r.raw));
            if r.status.as_u16() >= 400 && method != "HEAD" {
                prop_assert!(!r.code().is_empty(), "{method} {path} -> {}: not the error shape: {}", r.status, String::from_utf8_lossy(&r.raw));
            }
        }
    }
}

/// A valid host add.
fn host_body() -> Value {
    json!({"name": "h", "address": "192.0.2.1", "bootstrap_private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----"})
}

const INT_FIELDS: [&str; 5] = ["cores", "memory_mib", "disk_mib", "port", "checkup_secs"];

/// Integers at, inside and past the fields' limits.
fn int_value() -> impl Strategy<Value = Value> {
    prop_oneof![-5i64..70, 0i64..2_000_000, any::<i64>(), Just(i64::from(i32::MAX) + 1)].prop_map(|n| json!(n))
}

/// Strings shaped like names, keys, paths and addresses, and anything.
fn str_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z0-9-]{0,70}",
        "(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ssh-dss) [A-Za-z0-9+/=]{0,40}( [ -~\\n\\t]{0,20})?",
        "(/|[a-z]|\\.\\.)[ -~]{0,30}",
        "[0-9a-f.:]{0,20}",
        ".{0,40}",
    ]
    .prop_map(Value::String)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// The creates, where parsing and validation do the most: every body
    /// gets a 2xx or a 4xx in the error shape, and a 4xx writes no VM.
    #[test]
    fn no_create_body_makes_the_api_panic_or_answer_5xx(
        vm in any::<bool>(),
        field in prop::sample::select(vec!["name", "cores", "memory_mib", "disk_mib", "public_key", "subnet", "address", "port", "user", "root_dir", "checkup_secs", "bootstrap_private_key", "extra"]),
        int in int_value(),
        text in str_value(),
        wild in any_json(),
        pick in 0u8..10,
        name in "[a-z]{1,10}",
        raw in prop::option::weighted(0.2, prop::collection::vec(any::<u8>(), 0..300)),
    ) {
        let (rt, api, project, operator) = world();
        let r = rt.block_on(async {
            let (path, token, body) = if vm {
                ("/v1/vms", project, vm_body("web"))
            } else {
                ("/v1/hosts", operator, host_body())
            };
            let mut body = body;
            body["name"] = json!(name);
            body[field] = match pick {
                0 => wild.clone(),
                _ if INT_FIELDS.contains(&field) => int.clone(),
                _ => text.clone(),
            };
            let bytes = raw.clone().unwrap_or_else(|| body.to_string().into_bytes());
            let vms_before: i64 = sqlx::query_scalar("SELECT count(*) FROM vm").fetch_one(&api.pool).await.unwrap();
            let req = Request::post(path)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(bytes))
                .unwrap();
            let r = api.send(req).await;
            let vms_after: i64 = sqlx::query_scalar("SELECT count(*) FROM vm").fetch_one(&api.pool).await.unwrap();
            (r, vms_after - vms_before)
        });
        let (r, made) = r;
        prop_assert!(r.status.as_u16() < 500, "{} -> {}", field, String::from_utf8_lossy(&r.raw));
        if r.status.is_success() {
            prop_assert!(r.status.as_u16() == 201, "{}", r.status);
        } else {
            prop_assert!(!r.code().is_empty(), "not the error shape: {}", String::from_utf8_lossy(&r.raw));
            prop_assert_eq!(made, 0, "a refused create made a VM");
        }
    }
}

/// One runtime, database and pair of tokens for all cases (a database per
/// case would be slow); quota is large so creates keep being exercised.
fn world() -> &'static (tokio::runtime::Runtime, Api, String, String) {
    static WORLD: std::sync::OnceLock<(tokio::runtime::Runtime, Api, String, String)> = std::sync::OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (api, project, operator) = rt.block_on(async {
            let db = Box::leak(Box::new(TestDb::new().await));
            let api = Api::new(db.pool.clone());
            let (_, project) = api.project("fuzz", 100_000).await;
            let operator = api.token(None).await;
            (api, project, operator)
        });
        (rt, api, project, operator)
    })
}
