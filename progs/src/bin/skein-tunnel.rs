//! skein-tunnel: one userspace WireGuard interface on a host (the kernel has
//! no WireGuard module), shipped with the host agent and driven by its
//! `net-apply`. The crypto and the protocol are boringtun's (its `device`
//! module: a TUN interface plus the wg UAPI); this program only gives that
//! device a control socket under the agent's root instead of boringtun's
//! fixed `/var/run/wireguard/NAME.sock` (test hosts share one filesystem),
//! drops root once the device exists, and offers the few key and UAPI
//! operations the agent's bash needs, so hosts need no wireguard-tools.
//!
//!   skein-tunnel run IFACE SOCKET   create IFACE, serve the UAPI on SOCKET (foreground)
//!   skein-tunnel set SOCKET         send a UAPI `set` body (stdin) to the tunnel
//!   skein-tunnel show SOCKET        the tunnel's state as JSON, keys in base64
//!   skein-tunnel pubkey             base64 private key on stdin -> its public key
//!   skein-tunnel genkey             a new base64 private key
//!
//! Exit codes: 0 ok; 1 failed; 2 usage error. Key material is read from stdin
//! only and never printed, except by `genkey` and `pubkey`, which exist to.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use boringtun::device::{DeviceConfig, DeviceHandle};
use boringtun::x25519::{PublicKey, StaticSecret};
use serde_json::{json, Value};

/// The unprivileged identity the tunnel runs as once its device is open.
const NOBODY: u32 = 65534;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["run", iface, socket] => run(iface, Path::new(socket)),
        ["set", socket] => set(Path::new(socket)),
        ["show", socket] => show(Path::new(socket)),
        ["pubkey"] => pubkey(),
        ["genkey"] => genkey(),
        _ => {
            eprintln!("usage: skein-tunnel run IFACE SOCKET | set SOCKET | show SOCKET | pubkey | genkey");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skein-tunnel: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

/// Create the interface and serve its UAPI until the process is killed.
/// boringtun gets one end of a socket pair as its UAPI descriptor; requests
/// arriving on SOCKET are passed through it one at a time.
fn run(iface: &str, socket: &Path) -> Result<()> {
    if iface.is_empty() || iface.len() > 15 {
        return Err(format!("bad interface name {iface:?}"));
    }
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let config = DeviceConfig { n_threads: 2, use_connected_socket: true, use_multi_queue: false, uapi_fd: theirs.into_raw_fd() };
    let mut device = DeviceHandle::new(iface, config).map_err(|e| format!("creating {iface}: {e:?}"))?;

    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(|e| format!("bind {}: {e}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(|e| format!("chmod {}: {e}", socket.display()))?;
    drop_root()?;
    eprintln!("skein-tunnel: {iface} up, control socket {}", socket.display());

    std::thread::spawn(move || serve(listener, ours));
    device.wait();
    Err(format!("{iface} stopped"))
}

/// Give up root: the TUN device and the control socket are open already,
/// and everything the tunnel does from now on (UDP on a port above 1024,
/// reading and writing those descriptors) needs no privilege.
fn drop_root() -> Result<()> {
    // SAFETY: plain syscalls on this process's own credentials.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
            return Err(format!("dropping root: {}", std::io::Error::last_os_error()));
        }
        if libc::setuid(0) == 0 {
            return Err("dropping root: could regain it".into());
        }
    }
    Ok(())
}

/// One client at a time: read its request, pass it to boringtun, pass the
/// answer back. A client that misbehaves loses its connection only.
fn serve(listener: UnixListener, device: UnixStream) {
    let mut device_reader = BufReader::new(device.try_clone().expect("clone the UAPI socket"));
    let mut device = device;
    for client in listener.incoming().flatten() {
        let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
        let Ok(request) = read_request(&client) else { continue };
        if device.write_all(request.as_bytes()).is_err() {
            std::process::exit(1);
        }
        match read_answer(&mut device_reader) {
            Ok(answer) => {
                let _ = (&client).write_all(answer.as_bytes());
            }
            Err(_) => std::process::exit(1),
        }
    }
}

/// A UAPI request: `get=1` or `set=1` and its lines, up to a blank line.
/// boringtun reads `get=1` as one line (a blank line after it would be taken
/// for a second, bad request), so only `set` keeps its terminator.
fn read_request(client: &UnixStream) -> Result<String> {
    let mut reader = BufReader::new(client);
    let mut first = String::new();
    reader.read_line(&mut first).map_err(|e| e.to_string())?;
    match first.trim_end() {
        "get=1" => Ok("get=1\n".into()),
        "set=1" => {
            let mut request = first;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                    return Err("request ended early".into());
                }
                request.push_str(&line);
                if line.trim_end().is_empty() {
                    return Ok(request);
                }
            }
        }
        _ => Err("not a UAPI request".into()),
    }
}

/// boringtun's answer: lines up to `errno=N` and the blank line after it.
fn read_answer(reader: &mut impl BufRead) -> Result<String> {
    let mut answer = String::new();
    let mut seen_errno = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("the tunnel closed its UAPI".into());
        }
        answer.push_str(&line);
        if seen_errno && line.trim_end().is_empty() {
            return Ok(answer);
        }
        seen_errno |= line.starts_with("errno=");
    }
}

/// Send one request to a running tunnel; its answer's lines and errno.
fn ask(socket: &Path, request: &str) -> Result<Vec<(String, String)>> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    stream.write_all(request.as_bytes()).map_err(|e| format!("write {}: {e}", socket.display()))?;
    let answer = read_answer(&mut BufReader::new(&stream))?;
    let pairs: Vec<(String, String)> =
        answer.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    match pairs.iter().rev().find(|(k, _)| k == "errno") {
        Some((_, errno)) if errno == "0" => Ok(pairs),
        Some((_, errno)) => Err(format!("the tunnel refused the request (errno {errno})")),
        None => Err("the tunnel gave no errno".into()),
    }
}

/// stdin holds the lines of a UAPI `set` (keys in base64 or hex); they are
/// passed on (keys as hex) and never echoed.
fn set(socket: &Path) -> Result<()> {
    let mut body = String::new();
    std::io::stdin().read_to_string(&mut body).map_err(|e| format!("reading stdin: {e}"))?;
    let mut lines = Vec::new();
    for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once('=').ok_or("stdin must hold key=value lines of a UAPI set")?;
        // boringtun splits a line on every '=', so base64 padding must go: keys in hex.
        let value = match key {
            "private_key" | "public_key" | "preshared_key" if value.len() == 44 => {
                hex::encode(base64_decode(value).ok_or_else(|| format!("{key} is not base64"))?)
            }
            _ => value.to_string(),
        };
        lines.push(format!("{key}={value}"));
    }
    let request = format!("set=1\n{}\n\n", lines.join("\n"));
    ask(socket, &request).map(|_| ())
}

fn show(socket: &Path) -> Result<()> {
    let pairs = ask(socket, "get=1\n\n")?;
    let mut out = json!({"public_key": null, "listen_port": null, "peers": []});
    let mut peers: Vec<Value> = Vec::new();
    for (key, value) in pairs {
        match key.as_str() {
            "own_public_key" => out["public_key"] = json!(hex_to_base64(&value)?),
            "listen_port" => out["listen_port"] = json!(value.parse::<u16>().ok()),
            "public_key" => peers.push(json!({
                "public_key": hex_to_base64(&value)?, "endpoint": null, "allowed_ips": [],
                "last_handshake_secs": null, "rx_bytes": 0, "tx_bytes": 0
            })),
            _ => {
                let Some(peer) = peers.last_mut() else { continue };
                match key.as_str() {
                    "endpoint" => peer["endpoint"] = json!(value),
                    "allowed_ip" => peer["allowed_ips"].as_array_mut().expect("array").push(json!(value)),
                    // boringtun reports the time since the handshake, not its time.
                    "last_handshake_time_sec" => peer["last_handshake_secs"] = json!(value.parse::<u64>().ok()),
                    "rx_bytes" | "tx_bytes" => peer[key.as_str()] = json!(value.parse::<u64>().unwrap_or(0)),
                    _ => {}
                }
            }
        }
    }
    out["peers"] = Value::Array(peers);
    println!("{out}");
    Ok(())
}

fn pubkey() -> Result<()> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).map_err(|e| format!("reading stdin: {e}"))?;
    let bytes: [u8; 32] = base64_decode(text.trim()).and_then(|b| b.try_into().ok()).ok_or("stdin must hold a base64 WireGuard private key")?;
    let public = PublicKey::from(&StaticSecret::from(bytes));
    println!("{}", base64_encode(public.as_bytes()));
    Ok(())
}

fn genkey() -> Result<()> {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    // Clamped as WireGuard keys are written (x25519 clamps on use anyway).
    bytes[0] &= 248;
    bytes[31] = (bytes[31] & 127) | 64;
    println!("{}", base64_encode(&bytes));
    Ok(())
}

fn hex_to_base64(hex_text: &str) -> Result<String> {
    let bytes = hex::decode(hex_text).map_err(|_| "the tunnel sent a bad key".to_string())?;
    Ok(base64_encode(&bytes))
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}
