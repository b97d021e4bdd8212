//! `Pages::Forward`: deliver one change of one page (raised or resolved) to
//! the hook that was set when it happened: POST it as JSON to a webhook URL,
//! or give it to a shell command on stdin. A refusal or a timeout fails the
//! step, and the engine retries it with backoff; once delivered, the strand
//! exits, so each change is delivered once. (A worker that dies between
//! the delivery and its commit delivers it again: the `Idempotency-Key`
//! header and `$SKEIN_PAGE_DELIVERY` name the change, for receivers that
//! must not see it twice.)

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use skein_engine::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Forward;

labels! {
    pub enum Label for Forward { Deliver }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Frame {
    /// The page as it was at the change.
    pub page: Value,
    /// `raised` or `resolved`.
    pub change: String,
    pub url: Option<String>,
    pub command: Option<String>,
}

/// What a delivery exits with: the change's delivery key.
#[derive(Debug, Serialize, Deserialize)]
pub struct Output {
    pub delivered: String,
}

/// How long a receiver gets to take a page.
const TIMEOUT: Duration = Duration::from_secs(10);

#[async_trait]
impl Prog for Forward {
    const NAME: &'static str = skein_models::page::FORWARD_PROG;
    type Label = Label;
    type Frame = Frame;
    type Sem = NoSems;
    type Output = Output;

    async fn run(cx: &mut Ctx<'_, Self>, label: Label) -> Step<Self> {
        match label {
            Label::Deliver => {
                let f = &cx.frame;
                let key = format!("{}-{}", f.page["id"].as_str().unwrap_or("?"), f.change);
                let body = serde_json::to_vec(&json!({"change": f.change, "page": f.page}))?;
                match (&f.url, &f.command) {
                    (Some(url), _) => post(url, &key, &body).await.with_context(|| format!("delivering to {url}"))?,
                    (None, Some(command)) => run(command, &key, &body).await.with_context(|| format!("delivering to `{command}`"))?,
                    (None, None) => bail!("no hook in the frame: nothing to deliver to"),
                }
                pop(Output { delivered: key })
            }
        }
    }
}

/// POST `body` to an `http://host[:port]/path` URL; any 2xx is taken.
/// (Plain HTTP, by hand: for HTTPS, set a command such as `curl`.)
async fn post(url: &str, key: &str, body: &[u8]) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").context("the URL must start with http:// (for https, use a command: curl)")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if host.contains(':') { host.to_string() } else { format!("{host}:80") };
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(&addr).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Idempotency-Key: {key}\r\nUser-Agent: skein\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(body).await?;
        let mut reply = Vec::new();
        conn.take(64 * 1024).read_to_end(&mut reply).await?;
        anyhow::Ok(reply)
    };
    let reply = tokio::time::timeout(TIMEOUT, exchange).await.context("no answer within 10 s")??;
    let status = String::from_utf8_lossy(&reply).lines().next().unwrap_or("").to_string();
    match status.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        _ => bail!("the webhook answered {status:?}"),
    }
}

/// Run `sh -c command` with the page on stdin; exit 0 is delivered.
async fn run(command: &str, key: &str, body: &[u8]) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", command])
        .env("SKEIN_PAGE_DELIVERY", key)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let body = body.to_vec();
    // A command that does not read its stdin must not block us.
    tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = tokio::time::timeout(TIMEOUT * 3, child.wait_with_output()).await.context("still running after 30 s")??;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("it ended with {}: {}", out.status, err.trim().lines().last().unwrap_or(""));
    }
    Ok(())
}
