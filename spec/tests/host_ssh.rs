//! The SSH client against a real sshd test host: commands, stdin, timeouts,
//! host key pinning, hostile parameters, and the host agent's daemonizer
//! driven over SSH as progs drive it.

use std::time::{Duration, Instant};

use skein_progs::cmd;
use skein_progs::host::agent;
use skein_progs::ssh::{SshError, SshPool, Target};
use skein_spec::local_host::{generate_keypair, LocalHost};

const T: Duration = Duration::from_secs(20);

fn setup() -> (LocalHost, Target) {
    let (private, public) = generate_keypair();
    let host = LocalHost::start(&public);
    let target = Target {
        host: host.addr().to_string(),
        port: host.port(),
        user: "root".into(),
        private_key: private,
        host_key: Some(host.host_public_key()),
    };
    (host, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_with_stdin_and_report_exit_status_and_output() {
    let (_host, t) = setup();
    let ssh = SshPool::new();
    let out = ssh.exec(&t, &cmd!("cat; echo err >&2").unwrap(), Some(b"hello\n".to_vec()), T).await.unwrap();
    assert_eq!(out.stdout, b"hello\n");
    assert_eq!(out.stderr, b"err\n");

    let err = ssh.exec(&t, &cmd!("echo {} >&2; exit 7", "it broke").unwrap(), None, T).await.unwrap_err();
    match &err {
        SshError::Exit { status, stderr, host, cmd, .. } => {
            assert_eq!(*status, 7);
            assert_eq!(stderr, "it broke\n");
            assert!(host.contains(&t.host) && cmd.contains("exit 7"), "{err}");
        }
        other => panic!("expected an exit error, got {other:?}"),
    }
    // The session survives a failed command's error and is reused.
    assert_eq!(ssh.exec(&t, &cmd!("echo again").unwrap(), None, T).await.unwrap().stdout, b"again\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_parameters_never_execute_on_a_real_host() {
    let (host, t) = setup();
    let ssh = SshPool::new();
    let marker = host.root_dir().join("pwned");
    let m = marker.display().to_string();
    let hostile: Vec<Vec<u8>> = vec![
        format!("x; touch {m}").into_bytes(),
        format!("$(touch {m})").into_bytes(),
        format!("`touch {m}`").into_bytes(),
        format!("'; touch {m}; echo '").into_bytes(),
        format!("a\ntouch {m}").into_bytes(),
        [b"\xff\xfe; touch ".as_slice(), m.as_bytes()].concat(),
    ];
    for h in &hostile {
        let out = ssh.exec(&t, &cmd!("printf '%s' {}", h).unwrap(), None, T).await.unwrap();
        assert_eq!(&out.stdout, h, "came back as one word, byte for byte");
    }
    assert!(!marker.exists(), "a hostile parameter ran a command on the host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_key_is_refused_before_authenticating() {
    let (mut host, t) = setup();
    let ssh = SshPool::new();
    ssh.exec(&t, &cmd!("true").unwrap(), None, T).await.unwrap();
    host.rotate_host_key();
    let err = ssh.exec(&t, &cmd!("true").unwrap(), None, T).await.unwrap_err();
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("host key of"), "{err}");
    // First contact learns the key to pin.
    let seen = ssh.host_key(&t.host, t.port, T).await.unwrap();
    assert_eq!(skein_progs::ssh::client::key_identity(&seen), skein_progs::ssh::client::key_identity(&host.host_public_key()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_command_times_out_and_the_next_one_reconnects() {
    let (_host, t) = setup();
    let ssh = SshPool::new();
    let began = Instant::now();
    let err = ssh.exec(&t, &cmd!("sleep 10").unwrap(), None, Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, SshError::Timeout { .. }), "{err:?}");
    assert!(began.elapsed() < Duration::from_secs(8), "gave up near its deadline");
    assert!(err.to_string().contains("sleep 10"), "{err}");
    assert_eq!(ssh.exec(&t, &cmd!("echo ok").unwrap(), None, T).await.unwrap().stdout, b"ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_host_is_a_connect_error_naming_it() {
    let (mut host, t) = setup();
    let ssh = SshPool::new();
    ssh.exec(&t, &cmd!("true").unwrap(), None, T).await.unwrap();
    host.kill_sshd();
    let err = ssh.exec(&t, &cmd!("true").unwrap(), None, Duration::from_secs(3)).await.unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    assert!(err.to_string().contains(&t.host), "{err}");
}

/// Install the agent bundle as InstallAgent does, and return a runner of its programs.
async fn with_agent(host: &LocalHost, t: &Target, ssh: &SshPool) -> impl Fn(&'static str, Vec<&str>) -> skein_progs::ssh::Cmd {
    let root = host.root_dir().display().to_string();
    ssh.exec(t, &cmd!("mkdir -p {}/agent && tar -x -C {}/agent", root, root).unwrap(), Some(agent::archive()), T).await.unwrap();
    move |sub: &'static str, args: Vec<&str>| match args.as_slice() {
        [] => cmd!("SKEIN_ROOT={} {}/agent/bin/daemonizer {}", root, root, sub).unwrap(),
        [a] => cmd!("SKEIN_ROOT={} {}/agent/bin/daemonizer {} {}", root, root, sub, a).unwrap(),
        [a, b] => cmd!("SKEIN_ROOT={} {}/agent/bin/daemonizer {} {} {}", root, root, sub, a, b).unwrap(),
        [a, b, c] => cmd!("SKEIN_ROOT={} {}/agent/bin/daemonizer {} {} {} {}", root, root, sub, a, b, c).unwrap(),
        _ => unreachable!(),
    }
}

async fn check(ssh: &SshPool, t: &Target, d: &impl Fn(&'static str, Vec<&str>) -> skein_progs::ssh::Cmd, name: &str) -> String {
    ssh.exec(t, &d("check", vec![name]), None, T).await.unwrap().stdout_str().trim().to_string()
}

async fn wait_state(ssh: &SshPool, t: &Target, d: &impl Fn(&'static str, Vec<&str>) -> skein_progs::ssh::Cmd, name: &str, want: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let got = check(ssh, t, d, name).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < until, "{name}: still {got}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemonizer_over_ssh_runs_checks_and_cleans() {
    let (host, t) = setup();
    let ssh = SshPool::new();
    let d = with_agent(&host, &t, &ssh).await;

    assert_eq!(check(&ssh, &t, &d, "job").await, "NotStarted");
    ssh.exec(&t, &d("run", vec!["job", "sleep", "2"]), None, T).await.unwrap();
    assert_eq!(check(&ssh, &t, &d, "job").await, "InProgress", "the SSH session ended; the command goes on");
    ssh.exec(&t, &d("run", vec!["job", "sleep", "2"]), None, T).await.unwrap();
    let refused = ssh.exec(&t, &d("clean", vec!["job"]), None, T).await.unwrap_err();
    assert!(matches!(refused, SshError::Exit { status: 1, .. }), "clean is refused while in progress: {refused:?}");
    wait_state(&ssh, &t, &d, "job", "Succeeded").await;
    ssh.exec(&t, &d("clean", vec!["job"]), None, T).await.unwrap();
    assert_eq!(check(&ssh, &t, &d, "job").await, "NotStarted");

    ssh.exec(&t, &d("run", vec!["bad", "false"]), None, T).await.unwrap();
    wait_state(&ssh, &t, &d, "bad", "Failed").await;

    // A detached command that dies (the host killed it) is Failed, not InProgress forever.
    ssh.exec(&t, &d("run", vec!["victim", "sleep", "60"]), None, T).await.unwrap();
    let pid = ssh
        .exec(&t, &cmd!("cat {}/daemonizer/victim/pid", host.root_dir().display().to_string()).unwrap(), None, T)
        .await
        .unwrap()
        .stdout_str();
    let pid = pid.split_whitespace().next().unwrap().to_string();
    ssh.exec(&t, &cmd!("kill -9 {}", pid).unwrap(), None, T).await.unwrap();
    wait_state(&ssh, &t, &d, "victim", "Failed").await;

    // Hostile names are refused by the agent and run nothing.
    let marker = host.root_dir().join("pwned");
    let touch = format!("touch {}", marker.display());
    for name in ["../x", "a b", "$(id)", "x;y"] {
        let err = ssh.exec(&t, &d("run", vec![name, "sh", &touch]), None, T).await.unwrap_err();
        assert!(matches!(err, SshError::Exit { status: 2, .. }), "{name}: {err:?}");
    }
    assert!(!marker.exists());
}
