//! `ferry-host --config FILE`: a server configured by a TOML file, merged with flags, checked
//! by `--check-config`; and the sample in packaging/.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{
    Need, TOKEN, agent_command, bins, require, stderr_of, terminate, wait_mounted, wait_until,
};

/// A temporary directory with exports `a/`, `b/`, `c/`, a socket path and a config file.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        for e in ["a", "b", "c"] {
            fs::create_dir(dir.path().join(e)).unwrap();
            fs::write(dir.path().join(e).join("name"), e).unwrap();
        }
        Setup { dir }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn sock(&self) -> PathBuf {
        self.path("ferry.sock")
    }

    pub fn config(&self) -> PathBuf {
        self.path("host.toml")
    }

    /// The token file the config names: the harness's token, which agents present.
    pub fn token(&self) -> PathBuf {
        self.path("token")
    }

    /// Writes the config file: a Unix listener, the token file and `exports` (name, TOML
    /// lines) as `[[export]]` tables whose path is the directory of the same name.
    pub fn write_config(&self, exports: &[(&str, &str)]) {
        fs::write(self.token(), format!("{TOKEN}\n")).unwrap();
        let mut text = format!(
            "listen = [\"unix:{}\"]\ntoken-file = \"{}\"\n",
            self.sock().display(),
            self.token().display()
        );
        for (name, extra) in exports {
            text += &format!(
                "\n[[export]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n",
                self.path(name).display()
            );
        }
        fs::write(self.config(), text).unwrap();
    }

    /// `ferry-host --config FILE ARGS`, logging to `host.log`; waits until it listens.
    pub fn start_host(&self, args: &[&str]) -> Child {
        let log = self.path("host.log");
        let mut child = Command::new(&bins().host)
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let sock = self.sock();
        let listening = wait_until(Duration::from_secs(20), || {
            UnixStream::connect(&sock).is_ok() || child.try_wait().unwrap().is_some()
        });
        assert!(
            listening && child.try_wait().unwrap().is_none(),
            "ferry-host did not listen:\n{}",
            self.host_log()
        );
        child
    }

    pub fn host_log(&self) -> String {
        fs::read_to_string(self.path("host.log")).unwrap_or_default()
    }

    /// `ferry-agent` mounting each (export, mount point) pair, logging to `agent.log`;
    /// waits for every mount.
    pub fn start_agent(&self, mounts: &[(&str, &Path)]) -> Child {
        let mut args = vec![
            "--connect".to_string(),
            format!("unix:{}", self.sock().display()),
        ];
        for (name, mnt) in mounts {
            args.push("--mount".into());
            args.push(format!("{name}={}", mnt.display()));
        }
        let mut agent = agent_command(&args)
            .env("RUST_LOG", "info")
            .stderr(fs::File::create(self.path("agent.log")).unwrap())
            .spawn()
            .unwrap();
        for (_, mnt) in mounts {
            wait_mounted(mnt, &mut agent);
        }
        agent
    }

    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }
}

/// `ferry-host --check-config ARGS`: (success, stdout, stderr).
fn check(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(&bins().host)
        .arg("--check-config")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_config_file_serves_its_exports_with_their_options() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Setup::new();
    s.write_config(&[("a", ""), ("b", "read-only = true")]);
    let mut host = s.start_host(&[]);
    let (ma, mb) = (s.path("mnt-a"), s.path("mnt-b"));
    fs::create_dir(&ma).unwrap();
    fs::create_dir(&mb).unwrap();
    let mut agent = s.start_agent(&[("a", &ma), ("b", &mb)]);
    assert_eq!(fs::read(ma.join("name")).unwrap(), b"a");
    assert_eq!(fs::read(mb.join("name")).unwrap(), b"b");
    fs::write(ma.join("new"), b"x").unwrap();
    assert_eq!(fs::read(s.path("a/new")).unwrap(), b"x");
    let e = fs::write(mb.join("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "b is read-only: {e}");
    assert!(terminate(&mut agent).success(), "{}", stderr_of(&mut agent));
    assert!(terminate(&mut host).success(), "{}", s.host_log());
}

#[test]
fn the_file_sets_tokens_allow_lists_socket_mode_and_limits() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    fs::write(s.path("ci-token"), "ci-secret\n").unwrap();
    // SAFETY: plain getter.
    let me = unsafe { libc::geteuid() };
    s.write_config(&[
        ("a", ""),
        ("b", "allow = [\"token:ci\"]"),
        ("c", &format!("allow = [\"uid:{}\", \"cid:3\"]", me + 1)),
    ]);
    let mut text = fs::read_to_string(s.config()).unwrap();
    text = text.replacen("\n", "\nsocket-mode = \"640\"\n", 1);
    text += &format!(
        "\n[client-tokens]\nci = \"{}\"\n\n[limits]\nmax-connections = 50\n",
        s.path("ci-token").display()
    );
    fs::write(s.config(), text).unwrap();
    let mut host = s.start_host(&[]);
    let mode = fs::metadata(s.sock()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "socket-mode");
    // The file's token: only the open export; the client token also opens b; c is for
    // another uid.
    let w = crate::auth::hello(&s.sock(), Some(TOKEN)).unwrap();
    assert_eq!(crate::auth::names(&w), ["a"]);
    let w = crate::auth::hello(&s.sock(), Some("ci-secret")).unwrap();
    assert_eq!(crate::auth::names(&w), ["a", "b"]);
    // No token: refused.
    assert!(crate::auth::hello(&s.sock(), None).is_err());
    let log = s.host_log();
    assert!(log.contains("max_connections=50"), "{log}");
    assert!(
        log.contains("export allow-list") && log.contains("token:ci"),
        "{log}"
    );
    // A reload applies new allow-lists (and keeps the tokens): b opens to every client, a
    // closes to all but the ci token.
    let a_path = format!("path = \"{}\"\n", s.path("a").display());
    let text = fs::read_to_string(s.config())
        .unwrap()
        .replace("allow = [\"token:ci\"]", "")
        .replacen(&a_path, &format!("{a_path}allow = [\"token:ci\"]\n"), 1);
    fs::write(s.config(), text).unwrap();
    sighup(&host);
    wait_log(&s, "reload: export b changed");
    let w = crate::auth::hello(&s.sock(), Some(TOKEN)).unwrap();
    assert_eq!(crate::auth::names(&w), ["b"]);
    let w = crate::auth::hello(&s.sock(), Some("ci-secret")).unwrap();
    assert_eq!(crate::auth::names(&w), ["a", "b"]);
    assert!(
        crate::auth::hello(&s.sock(), None).is_err(),
        "still needs a token"
    );
    assert!(terminate(&mut host).success(), "{}", s.host_log());

    // no-auth = true, and no token: a client gets in without one.
    s.write_config(&[("a", "")]);
    let text = fs::read_to_string(s.config())
        .unwrap()
        .replacen("\n", "\nno-auth = true\n", 1)
        .replace("token-file = ", "# token-file = ");
    fs::write(s.config(), text).unwrap();
    let mut host = s.start_host(&[]);
    let w = crate::auth::hello(&s.sock(), None).unwrap();
    assert_eq!(crate::auth::names(&w), ["a"]);
    assert!(terminate(&mut host).success(), "{}", s.host_log());
}

#[test]
fn flags_override_the_file() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Setup::new();
    s.write_config(&[("a", "read-only = true"), ("b", "")]);
    // --export a=... replaces the file's a (now c's directory, writable); --export c=... adds.
    let mut host = s.start_host(&[
        "--export",
        &format!("a={}", s.path("c").display()),
        "--export",
        &format!("c={}:ro", s.path("c").display()),
    ]);
    let (ma, mc) = (s.path("mnt-a"), s.path("mnt-c"));
    fs::create_dir(&ma).unwrap();
    fs::create_dir(&mc).unwrap();
    let mut agent = s.start_agent(&[("a", &ma), ("c", &mc)]);
    assert_eq!(fs::read(ma.join("name")).unwrap(), b"c");
    fs::write(ma.join("new"), b"x").unwrap();
    let e = fs::write(mc.join("other"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert!(terminate(&mut agent).success(), "{}", s.agent_log());
    assert!(terminate(&mut host).success(), "{}", s.host_log());
}

#[test]
fn check_config_names_file_line_and_key() {
    let s = Setup::new();
    s.write_config(&[("a", ""), ("b", "devices = \"on\"")]);
    let cfg = s.config();
    let cfg = cfg.to_str().unwrap();
    let (ok, _, err) = check(&["--config", cfg]);
    assert!(!ok);
    let line = fs::read_to_string(cfg)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("devices"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "{cfg}:{line}: export.devices: invalid type: string \"on\", expected a boolean"
        )),
        "{err}"
    );

    s.write_config(&[("a", "colour = \"red\"")]);
    let (ok, _, err) = check(&["--config", cfg]);
    assert!(
        !ok && err.contains(":7: export.colour: unknown field `colour`"),
        "{err}"
    );

    // A directory that does not exist is found without starting.
    s.write_config(&[("a", ""), ("gone", "")]);
    let (ok, _, err) = check(&["--config", cfg]);
    assert!(
        !ok && err.contains("gone") && err.contains("does not exist"),
        "{err}"
    );

    s.write_config(&[("a", ""), ("b", "")]);
    let (ok, out, err) = check(&["--config", cfg]);
    assert!(ok, "{err}");
    assert!(
        out.contains("ok: 2 export(s) (a, b), 1 listener(s)"),
        "{out}"
    );
    // Nothing listened.
    assert!(!s.sock().exists());
}

#[test]
fn the_sample_config_checks_with_its_directories_present() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/ferry-host.toml");
    let text = fs::read_to_string(&sample).unwrap();
    // Point the sample's directories and sockets into a temporary directory; everything else
    // is as shipped.
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("src")).unwrap();
    assert!(
        text.contains("\ntoken-file = \"/etc/ferry/token\""),
        "the sample sets a token file: every listener requires a token"
    );
    let token = dir.path().join("token");
    fs::write(&token, "sample-token\n").unwrap();
    let text = text
        .replace(
            "/srv/ferry/src",
            &dir.path().join("src").display().to_string(),
        )
        .replace("/etc/ferry/token", &token.display().to_string())
        .replace("/run/ferry/", &format!("{}/", dir.path().display()));
    let cfg = dir.path().join("ferry-host.toml");
    fs::write(&cfg, text).unwrap();
    let (ok, out, err) = check(&["--config", cfg.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("2 export(s) (src, docs)"), "{out}");
}

/// Waits (60 s at most) until the host log contains `what`.
fn wait_log(s: &Setup, what: &str) {
    assert!(
        wait_until(Duration::from_secs(60), || s.host_log().contains(what)),
        "host log never said {what:?}:\n{}",
        s.host_log()
    );
}

fn sighup(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

#[test]
fn sighup_removes_adds_and_refuses_without_dropping_other_guests() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Setup::new();
    s.write_config(&[("a", ""), ("b", "")]);
    // c is added beside a and b by a reload, which the sandbox refuses (it covers the
    // directories the server started with; tests/sandbox.rs checks that refusal).
    let mut host = s.start_host(&["--sandbox=none"]);
    let (ma, mb, mc) = (s.path("mnt-a"), s.path("mnt-b"), s.path("mnt-c"));
    for m in [&ma, &mb, &mc] {
        fs::create_dir(m).unwrap();
    }
    let agent = s.start_agent(&[("a", &ma), ("b", &mb)]);
    assert_eq!(fs::read(mb.join("name")).unwrap(), b"b");

    // A workload on a for the whole reload: write, read back, list.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let workload = {
        let (stop, done, errors, dir) = (stop.clone(), done.clone(), errors.clone(), ma.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let f = dir.join(format!("w{}", i % 32));
                let body = format!("round {i}");
                let r = fs::write(&f, &body)
                    .and_then(|()| fs::read_to_string(&f))
                    .and_then(|got| {
                        (got == body)
                            .then_some(())
                            .ok_or_else(|| std::io::Error::other(format!("read {got:?}")))
                    })
                    .and_then(|()| fs::read_dir(&dir).map(|d| d.count()).map(|_| ()));
                if let Err(e) = r {
                    errors.lock().unwrap().push(format!("{}: {e}", f.display()));
                }
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    assert!(wait_until(Duration::from_secs(30), || done
        .load(Ordering::Relaxed)
        > 20));

    // b goes, c comes.
    s.write_config(&[("a", ""), ("c", "")]);
    sighup(&host);
    wait_log(&s, "reload: export b removed");
    wait_log(&s, "reload: export c added");
    let before = done.load(Ordering::Relaxed);
    // b's mount reports it: OPENDIR always reaches the server.
    let e = fs::read_dir(&mb).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESHUTDOWN), "{e}");
    let e = fs::write(mb.join("after-removal"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESHUTDOWN), "{e}");
    assert!(!s.path("b/after-removal").exists());
    assert!(
        wait_until(Duration::from_secs(20), || s
            .agent_log()
            .contains("no longer serves this export")),
        "agent log:\n{}",
        s.agent_log()
    );
    // c mounts for a new agent.
    let agent_c = {
        let mut args = vec![
            "--connect".to_string(),
            format!("unix:{}", s.sock().display()),
        ];
        args.extend(["--mount".to_string(), format!("c={}", mc.display())]);
        let mut a = agent_command(&args).spawn().unwrap();
        wait_mounted(&mc, &mut a);
        a
    };
    assert_eq!(fs::read(mc.join("name")).unwrap(), b"c");

    // A bad file is refused, and what runs stays.
    fs::write(s.config(), "listen = [\"unix:/x\"]\nexport = 5\n").unwrap();
    sighup(&host);
    wait_log(&s, "reload refused, the running configuration stays");
    assert!(
        s.host_log().contains("host.toml:2: export: invalid type"),
        "{}",
        s.host_log()
    );
    fs::write(mc.join("still"), b"served").unwrap();
    assert_eq!(fs::read(s.path("c/still")).unwrap(), b"served");

    assert!(wait_until(Duration::from_secs(30), || done
        .load(Ordering::Relaxed)
        > before + 20));
    stop.store(true, Ordering::Relaxed);
    workload.join().unwrap();
    let errors = errors.lock().unwrap();
    assert!(errors.is_empty(), "the workload on a failed: {errors:?}");
    for mut a in [agent, agent_c] {
        assert!(terminate(&mut a).success(), "{}", s.agent_log());
    }
    assert!(terminate(&mut host).success(), "{}", s.host_log());
}
