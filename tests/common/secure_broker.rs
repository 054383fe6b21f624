//! A Kafka-compatible broker that speaks TLS and SASL/SCRAM-SHA-512, for tests/kafka_security.rs.
//!
//! tansu 0.6.0 authenticates clients with SASL (`--authentication`: SCRAM-SHA-256/512 through
//! rsasl) but serves plain TCP only: its `--cert`/`--key` flags are parsed and never used. So
//! stunnel terminates TLS in front of it, with a certificate signed by a CA made here with
//! openssl, and tansu advertises stunnel's port: every connection a client makes, bootstrap and
//! metadata-driven alike, is TLS to stunnel, then SASL to tansu inside it.
//!
//! SCRAM credentials live in the storage engine, and of tansu's engines only the SQL ones keep
//! them (the memory engine drops them), so the broker runs on SQLite (`cargo install tansu
//! --features dynostore,libsql`). An authenticating broker refuses everything but ApiVersions
//! and SASL before a client authenticates, so the user and the topic are created first by the
//! same storage under a broker without `--authentication`, which then gives way to the one
//! with it.

use super::{TopicReader, free_tcp_port, run};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The SCRAM user the broker knows.
pub const USER: &str = "receiver";
/// Its password.
pub const PASSWORD: &str = "s3cret-scram-password";

/// stunnel: `STUNNEL_BIN`, else `stunnel4` or `stunnel` on PATH (Debian: package stunnel4).
pub fn stunnel_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("STUNNEL_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("STUNNEL_BIN={} is not a file", p.display()))
        };
    }
    on_path(&["stunnel4", "stunnel"])
        .ok_or_else(|| "stunnel not found on PATH (Debian: apt-get install stunnel4)".into())
}

/// openssl on PATH, which makes the certificates.
pub fn openssl_bin() -> Result<PathBuf, String> {
    on_path(&["openssl"]).ok_or_else(|| "openssl not found on PATH".into())
}

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// Runs openssl with `args` in `dir`; panics with its output when it fails.
fn openssl(bin: &Path, dir: &Path, args: &[&str]) {
    let f = run(
        Command::new(bin).args(args).current_dir(dir),
        Duration::from_secs(30),
    );
    assert!(
        f.status.success(),
        "openssl {}: {}\n{}{}",
        args.join(" "),
        f.status,
        f.stdout,
        f.stderr
    );
}

/// A CA (`<name>.pem`, `<name>.key`) made in `dir`; returns the certificate's path.
fn make_ca(openssl_bin: &Path, dir: &Path, name: &str, cn: &str) -> PathBuf {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    openssl(
        openssl_bin,
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    dir.join(pem)
}

/// The certificates of a test: the CA that signs the broker's certificate, the broker's
/// certificate (for 127.0.0.1 and localhost) and key, and a second CA that signed nothing.
struct Certs {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_certs(openssl_bin: &Path, dir: &Path) -> Certs {
    let ca = make_ca(openssl_bin, dir, "ca", "mirror-receiver test CA");
    let other_ca = make_ca(openssl_bin, dir, "other-ca", "some other CA");
    openssl(
        openssl_bin,
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "broker.key",
            "-out",
            "broker.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("broker.ext"),
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
         basicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(
        openssl_bin,
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "broker.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "broker.ext",
            "-out",
            "broker.pem",
        ],
    );
    Certs {
        ca,
        other_ca,
        cert: dir.join("broker.pem"),
        key: dir.join("broker.key"),
    }
}

/// tansu behind stunnel, SASL/SCRAM-SHA-512 required, on SQLite in a directory of its own;
/// both processes killed on drop.
pub struct SecureBroker {
    tansu: Child,
    stunnel: Child,
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// stunnel's port: TLS, the one clients are given and tansu advertises.
    pub port: u16,
    /// tansu's own port: plain TCP, SASL required.
    pub backend: u16,
    /// The CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// A CA that did not.
    pub other_ca: PathBuf,
}

impl SecureBroker {
    /// The broker with user [`USER`] (SCRAM-SHA-512, [`PASSWORD`]) and `topic` of
    /// `partitions` partitions. `Err` when this tansu cannot keep SCRAM credentials (built
    /// without libsql), a missing prerequisite; any other failure panics.
    pub fn start(
        tansu: &Path,
        stunnel: &Path,
        openssl_bin: &Path,
        topic: &str,
        partitions: u32,
    ) -> Result<SecureBroker, String> {
        // Ports are chosen before tansu and stunnel bind them: another process may take one in
        // between, so a start where either exits at once is retried on new ports.
        for _ in 0..3 {
            if let Some(b) =
                SecureBroker::try_start(tansu, stunnel, openssl_bin, topic, partitions)?
            {
                return Ok(b);
            }
        }
        panic!("tansu and stunnel could not be started (see their output above)");
    }

    /// [`SecureBroker::start`] once: `Ok(None)` when tansu or stunnel exited at start.
    fn try_start(
        tansu: &Path,
        stunnel: &Path,
        openssl_bin: &Path,
        topic: &str,
        partitions: u32,
    ) -> Result<Option<SecureBroker>, String> {
        let dir = tempfile::tempdir().expect("broker directory");
        let certs = make_certs(openssl_bin, dir.path());
        let port = free_tcp_port();

        // 1. Without --authentication: the user and the topic go into the SQLite file.
        let setup = free_tcp_port();
        let Some(mut first) = spawn_tansu(tansu, dir.path(), setup, setup, false, "setup")? else {
            return Ok(None);
        };
        let url = format!("tcp://127.0.0.1:{setup}");
        let admin = |args: &[&str], what: &str| {
            let f = run(
                Command::new(tansu)
                    .args(args)
                    .env_remove("RUST_LOG")
                    .current_dir(dir.path()),
                Duration::from_secs(30),
            );
            assert!(
                f.status.success(),
                "tansu {what}: {}\n{}{}\nbroker log:\n{}",
                f.status,
                f.stdout,
                f.stderr,
                log(dir.path(), "setup")
            );
        };
        admin(
            &["user", "create", USER, PASSWORD, "--broker", &url],
            "user create",
        );
        admin(
            &[
                "topic",
                "create",
                topic,
                "--broker",
                &url,
                "--partitions",
                &partitions.to_string(),
            ],
            "topic create",
        );
        let _ = first.kill();
        let _ = first.wait();

        // 2. The broker clients meet: SASL required, stunnel's port advertised.
        let backend = free_tcp_port();
        let Some(tansu_child) = spawn_tansu(tansu, dir.path(), backend, port, true, "tansu")?
        else {
            return Ok(None);
        };

        // 3. stunnel: TLS on `port`, plain TCP to tansu.
        let conf = dir.path().join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\nsyslog = no\ndebug = notice\n\n[kafka]\n\
                 accept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{backend}\n\
                 cert = {}\nkey = {}\n",
                certs.cert.display(),
                certs.key.display()
            ),
        )
        .unwrap();
        let log_file = std::fs::File::create(dir.path().join("stunnel.log")).unwrap();
        let stunnel_child = Command::new(stunnel)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", stunnel.display()));
        let mut broker = SecureBroker {
            tansu: tansu_child,
            stunnel: stunnel_child,
            bin: tansu.to_owned(),
            dir,
            port,
            backend,
            ca: certs.ca,
            other_ca: certs.other_ca,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200),
        )
        .is_err()
        {
            if let Some(status) = broker.stunnel.try_wait().unwrap() {
                eprintln!("stunnel exited at start ({status}):\n{}", broker.logs());
                return Ok(None);
            }
            assert!(
                Instant::now() < deadline,
                "stunnel did not accept connections on port {port} within 20 s:\n{}",
                broker.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Some(broker))
    }

    /// `host:port` for `--kafka-brokers`: stunnel's TLS port.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What tansu and stunnel have printed so far.
    pub fn logs(&self) -> String {
        format!(
            "--- tansu:\n{}\n--- stunnel:\n{}",
            log(self.dir.path(), "tansu"),
            log(self.dir.path(), "stunnel")
        )
    }

    /// The librdkafka settings a user gives (`--kafka-option`) for this broker: SASL_SSL,
    /// SCRAM-SHA-512, [`USER`] with `password`, the CA at `ca`.
    pub fn client_options(&self, password: &str, ca: &Path) -> Vec<(String, String)> {
        [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", USER),
            ("sasl.password", password),
            ("ssl.ca.location", ca.to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// A reader of `topic` from the start of every partition, with the right credentials.
    pub fn reader(&self, topic: &str) -> TopicReader {
        let options = self.client_options(PASSWORD, &self.ca);
        TopicReader::with_options(&self.bootstrap(), topic, &options, &self.logs())
    }

    /// The tansu binary this broker runs.
    pub fn tansu(&self) -> &Path {
        &self.bin
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        for child in [&mut self.stunnel, &mut self.tansu] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `<dir>/<name>.log`, or nothing.
fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// tansu on SQLite storage `<dir>/tansu.db`, listening on `port`, advertising `advertised`,
/// logging to `<dir>/<name>.log`, accepting connections; `Ok(None)` when it exited at start
/// (its output printed), `Err` when that was for want of an SQLite engine.
fn spawn_tansu(
    bin: &Path,
    dir: &Path,
    port: u16,
    advertised: u16,
    authentication: bool,
    name: &str,
) -> Result<Option<Child>, String> {
    let log_path = dir.join(format!("{name}.log"));
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(bin);
    cmd.args([
        "broker",
        "--listener-url",
        &format!("tcp://127.0.0.1:{port}"),
    ])
    .args([
        "--advertised-listener-url",
        &format!("tcp://127.0.0.1:{advertised}"),
    ])
    // Relative to the working directory: <dir>/tansu.db.
    .args(["--storage-engine", "sqlite://tansu.db"])
    .env_remove("RUST_LOG")
    .current_dir(dir)
    .stdin(Stdio::null())
    .stdout(log_file.try_clone().unwrap())
    .stderr(log_file);
    if authentication {
        cmd.arg("--authentication");
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("FeatureNotEnabled") && text.contains("\"libsql\"") {
                return Err(format!(
                    "{} has no SQLite storage, which SCRAM credentials need: \
                     `cargo install tansu --features dynostore,libsql --locked`",
                    bin.display()
                ));
            }
            eprintln!("tansu ({name}) exited at start ({status}):\n{text}");
            return Ok(None);
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(Some(child));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tansu ({name}) did not accept connections on {addr} within 20 s:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
