//! Command line and environment: every flag has a `MIRROR_*` variable; the names Akto's mirroring
//! module reads are accepted as aliases, so the receiver can replace it in place. Precedence: flag,
//! `MIRROR_*` variable, Akto alias, default.

use crate::flow::{FlowConfig, ReassemblyConfig};
use crate::http::HttpConfig;
use crate::pipeline::PipelineConfig;
use crate::record::RecordConfig;
use crate::wire::Encapsulation;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// One `--listen`: an encapsulation and the UDP address it arrives on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub encap: Encapsulation,
    pub addr: SocketAddr,
}

impl std::str::FromStr for Listener {
    type Err = String;

    fn from_str(s: &str) -> Result<Listener, String> {
        let (encap, addr) = match s.split_once("://") {
            Some(("vxlan", rest)) => (Encapsulation::Vxlan, rest),
            Some(("geneve", rest)) => (Encapsulation::Geneve, rest),
            Some((scheme, _)) => {
                return Err(format!(
                    "unknown encapsulation `{scheme}`: expected vxlan://ADDR or geneve://ADDR"
                ));
            }
            None => (Encapsulation::Vxlan, s),
        };
        let addr = addr
            .parse()
            .map_err(|e| format!("`{addr}` is not an address and port ({e})"))?;
        Ok(Listener { encap, addr })
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.encap.as_str(), self.addr)
    }
}

/// Where `run` listens when `--listen` is not given.
pub const DEFAULT_LISTEN: Listener = Listener {
    encap: Encapsulation::Vxlan,
    addr: SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::UNSPECIFIED,
        crate::wire::VXLAN_PORT,
    )),
};

#[derive(Parser, Debug)]
#[command(
    name = "mirror-receiver",
    version,
    about = "Receiver for AWS VPC Traffic Mirroring: VXLAN in, paired HTTP/1.x records (Akto format) out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log level: error, warn, info, debug, trace, off (Akto's DEBUG/INFO/... and `DBEUG` too).
    /// RUST_LOG, when set, overrides it with a full filter.
    #[arg(long, global = true, env = "MIRROR_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// A TOML file with the same settings: keys are the flag names (`kafka-brokers` or
    /// `kafka_brokers`), lists for repeatable flags. Flags and variables win over the file.
    #[arg(long, global = true, env = "MIRROR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log lines as text or as JSON objects (one per line, for log shippers).
    #[arg(
        long,
        global = true,
        env = "MIRROR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Receive mirrored traffic on UDP and deliver records (the daemon).
    Run(RunArgs),
    /// Read a pcap/pcapng file through the same pipeline and deliver its records.
    Replay(ReplayArgs),
    /// Capture live from a network interface (SPAN/TAP ports, GCP Packet Mirroring collectors,
    /// a node's own traffic) and deliver records; every flag of `run` applies.
    Capture(CaptureArgs),
    /// Check a configuration and exit: 0 when valid, else 1 (2 for a value that does not parse)
    /// with a message naming the bad setting.
    Validate(ValidateArgs),
    /// Send a VXLAN capture's datagrams to a receiver (load tests, checking a deployment).
    Send(SendArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// A pcap/pcapng capture holding VXLAN datagrams (UDP to port 4789).
    pub file: PathBuf,
    /// Where to send them, e.g. the NLB's address and port 4789.
    #[arg(long, env = "MIRROR_SEND_TO")]
    pub to: String,
    /// Datagrams per second; 0 sends as fast as possible.
    #[arg(long, env = "MIRROR_SEND_RATE", default_value_t = 10_000)]
    pub rate: u64,
    /// How many times to send the capture.
    #[arg(long = "loop", env = "MIRROR_SEND_LOOP", default_value_t = 1)]
    pub loops: u64,
}

/// `validate`: the flags of `run` (and of `capture`, when `--interface` is given), and how far
/// to check.
#[derive(Args, Debug, Clone)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub live: LiveArgs,
    /// Skip the checks that need the network (that the Kafka brokers resolve): for a service
    /// that may start before DNS answers, which the daemon rides out with its spool.
    #[arg(long, env = "MIRROR_VALIDATE_OFFLINE")]
    pub offline: bool,
}

/// `capture`: the flags of `run`, and the interface's.
#[derive(Args, Debug, Clone)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub live: LiveArgs,
}

/// Live capture from an interface (`capture`).
#[derive(Args, Debug, Clone)]
pub struct LiveArgs {
    /// Interface to capture from (an AF_PACKET ring per worker, joined in one fanout group that
    /// gives both directions of a connection to the same worker). Required by `capture`.
    #[arg(long, env = "MIRROR_CAPTURE_INTERFACE")]
    pub interface: Option<String>,
    /// Put the interface in promiscuous mode (a SPAN/TAP port sees frames not addressed to it).
    #[arg(long, env = "MIRROR_CAPTURE_PROMISCUOUS")]
    pub promiscuous: bool,
    /// A BPF filter expression (tcpdump syntax, e.g. `tcp port 80 or tcp port 8080`) run in the
    /// kernel before a frame is copied to the ring. Default: every frame.
    #[arg(long = "capture-filter", env = "MIRROR_CAPTURE_FILTER")]
    pub capture_filter: Option<String>,
    /// Bytes of ring per worker; frames that find it full are dropped by the kernel and
    /// counted (`mirror_capture_ring_drops_total`).
    #[arg(long = "capture-buffer", env = "MIRROR_CAPTURE_BUFFER", default_value_t = 64 << 20)]
    pub capture_buffer: usize,
    /// VNI recorded (`akto_vxlan_id`) for captured traffic that is not VXLAN.
    #[arg(long = "vni", env = "MIRROR_VNI", default_value_t = 0)]
    pub vni: u32,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Where mirrored datagrams arrive: `vxlan://ADDR` (or a bare ADDR) for VXLAN, as an NLB or
    /// an ENI target delivers it, `geneve://ADDR` for Geneve, as a Gateway Load Balancer
    /// delivers it. Repeatable (comma-separated in the variable) to serve both at once.
    /// Default for `run`: `vxlan://0.0.0.0:4789`; `capture` listens only where told.
    #[arg(long, env = "MIRROR_LISTEN", value_delimiter = ',')]
    pub listen: Vec<Listener>,
    /// Worker threads (each with a receive socket and a flow-table shard); 0 = one per core.
    #[arg(long, env = "MIRROR_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Receive buffer per socket in bytes (SO_RCVBUF; raised past net.core.rmem_max as root).
    #[arg(long, env = "MIRROR_RECV_BUFFER", default_value_t = 64 << 20)]
    pub recv_buffer: usize,
    /// Take datagrams only from these sources: CIDRs or addresses (repeatable; comma-separated in
    /// the variable). Default: any source.
    #[arg(
        long = "allow-source",
        env = "MIRROR_ALLOW_SOURCES",
        value_delimiter = ','
    )]
    pub allow_sources: Vec<String>,
    /// Take only these VNIs: numbers and ranges, e.g. `5569041,100-200`. Default: any.
    #[arg(long = "allow-vni", env = "MIRROR_ALLOW_VNIS", value_delimiter = ',')]
    pub allow_vnis: Vec<String>,
    /// Address of the admin endpoint (/healthz, /readyz, /metrics).
    #[arg(long, env = "MIRROR_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
    /// Seconds to finish in-flight work and flush the sink after SIGTERM/SIGINT.
    #[arg(long, env = "MIRROR_SHUTDOWN_TIMEOUT", default_value_t = 6.0)]
    pub shutdown_timeout: f64,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The capture (pcap or pcapng). VXLAN on UDP 4789 is decapsulated; plain traffic is taken as
    /// mirror session --vni.
    pub file: PathBuf,
    /// VNI recorded for plain (not VXLAN) traffic in the capture.
    #[arg(long, env = "MIRROR_VNI", default_value_t = 0)]
    pub vni: u32,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// A library default in microseconds as the flag's seconds: the stages' `Default` impls are
/// where those defaults are written, clap shows them from there.
fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// Seconds without a segment before a flow is closed (alias TRAFFIC_INACTIVITY_THRESHOLD).
    #[arg(long, env = "MIRROR_FLOW_IDLE_TIMEOUT", default_value_t = secs(FlowConfig::default().idle_timeout_us))]
    pub flow_idle_timeout: f64,
    /// Flows held at once; beyond it the least recently active is evicted
    /// (alias TRAFFIC_MAX_ACTIVE_CONN).
    #[arg(long, env = "MIRROR_MAX_FLOWS", default_value_t = FlowConfig::default().max_flows)]
    pub max_flows: usize,
    /// Bytes of buffered stream data (out-of-order segments, messages in progress, requests
    /// waiting for responses) across all flows; at the budget the least recently active flows are
    /// evicted (aliases TRAFFIC_BUFFER_THRESHOLD, AKTO_MEM_THRESH_RESTART, both in MB).
    #[arg(long, env = "MIRROR_MEMORY_BUDGET", default_value_t = 1 << 30)]
    pub memory_budget: usize,
    /// Out-of-order bytes buffered per direction before a hole becomes a gap; also the bytes a
    /// response that arrived before its request may hold while it waits.
    #[arg(long, env = "MIRROR_MAX_REORDER_BYTES", default_value_t = ReassemblyConfig::default().max_ooo_bytes)]
    pub max_reorder_bytes: usize,
    /// Seconds a hole may wait to be filled before it becomes a gap, and a response that arrived
    /// before its request waits for it.
    #[arg(long, env = "MIRROR_REORDER_TIMEOUT", default_value_t = secs(ReassemblyConfig::default().reorder_timeout_us))]
    pub reorder_timeout: f64,
    /// Body bytes kept per message (each side), after de-chunking and decoding.
    #[arg(long, env = "MIRROR_MAX_BODY_BYTES", default_value_t = HttpConfig::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Largest record in bytes; payloads are cut to fit and the record says so.
    #[arg(long, env = "MIRROR_MAX_RECORD_BYTES", default_value_t = RecordConfig::default().max_record_bytes)]
    pub max_record_bytes: usize,
    /// `akto_account_id` of every record.
    #[arg(long, env = "MIRROR_ACCOUNT_ID", default_value_t = RecordConfig::default().account_id)]
    pub account_id: String,
    /// Akto's header rules as JSON: a list of {"key":{"eq":NAME,"ifAbsent":"accept"|"reject"},
    /// "value":{"regex":RE}}; a pair is kept when every rule passes
    /// (alias AKTO_MODULE_DISCOVERY_CONFIG).
    #[arg(long, env = "MIRROR_DISCOVERY_CONFIG")]
    pub discovery_config: Option<String>,
    /// Drop pairs whose Host is empty or an IP literal (alias AKTO_IGNORE_IP_TRAFFIC).
    #[arg(long, env = "MIRROR_IGNORE_IP_TRAFFIC")]
    pub ignore_ip_traffic: bool,
    /// Drop calls to the instance metadata service, 169.254.169.254
    /// (alias AKTO_IGNORE_CLOUD_METADATA_CALLS).
    #[arg(long, env = "MIRROR_IGNORE_CLOUD_METADATA_CALLS")]
    pub ignore_cloud_metadata_calls: bool,
    /// Keep only these hosts: names or `*.suffix` (repeatable; comma-separated in the variable).
    #[arg(long = "allow-host", env = "MIRROR_ALLOW_HOSTS", value_delimiter = ',')]
    pub allow_hosts: Vec<String>,
    /// Drop these hosts (wins over --allow-host).
    #[arg(long = "deny-host", env = "MIRROR_DENY_HOSTS", value_delimiter = ',')]
    pub deny_hosts: Vec<String>,
    /// Keep only paths starting with these prefixes.
    #[arg(long = "allow-path", env = "MIRROR_ALLOW_PATHS", value_delimiter = ',')]
    pub allow_paths: Vec<String>,
    /// Drop paths starting with these prefixes (wins over --allow-path).
    #[arg(long = "deny-path", env = "MIRROR_DENY_PATHS", value_delimiter = ',')]
    pub deny_paths: Vec<String>,
    /// Share of pairs kept, 0 to 1 (deterministic per exchange, so replays agree).
    #[arg(long, env = "MIRROR_SAMPLE_RATE", default_value_t = 1.0)]
    pub sample_rate: f64,
    /// Replace this header's values by REDACTED in records (repeatable).
    #[arg(
        long = "redact-header",
        env = "MIRROR_REDACT_HEADERS",
        value_delimiter = ','
    )]
    pub redact_headers: Vec<String>,
    /// Also redact authorization, cookie, set-cookie, x-api-key and proxy-authorization.
    #[arg(long, env = "MIRROR_REDACT_DEFAULT")]
    pub redact_default: bool,
}

#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Kafka bootstrap servers, comma-separated; without them records go to --output
    /// (aliases AKTO_KAFKA_BROKER_MAL, then AKTO_KAFKA_BROKER_URL).
    #[arg(long, env = "MIRROR_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Kafka topic.
    #[arg(long, env = "MIRROR_TOPIC", default_value = "akto.api.logs")]
    pub topic: String,
    /// JSON-lines output when no Kafka brokers are set: a file path, or - for stdout.
    #[arg(long, env = "MIRROR_OUTPUT", default_value = "-")]
    pub output: String,
    /// Records per Kafka batch (alias AKTO_TRAFFIC_BATCH_SIZE).
    #[arg(long, env = "MIRROR_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,
    /// Seconds a Kafka batch may wait to fill (alias AKTO_TRAFFIC_BATCH_TIME_SECS).
    #[arg(long, env = "MIRROR_BATCH_TIME", default_value_t = 0.1)]
    pub batch_time: f64,
    /// Kafka compression codec.
    #[arg(long, env = "MIRROR_COMPRESSION", value_enum, default_value = "lz4")]
    pub compression: crate::sink::kafka::Compression,
    /// Any librdkafka setting, KEY=VALUE (repeatable; in the variable, separated by `;`): TLS,
    /// SASL, timeouts. Applied after the receiver's own settings.
    #[arg(
        long = "kafka-option",
        env = "MIRROR_KAFKA_OPTIONS",
        value_delimiter = ';'
    )]
    pub kafka_options: Vec<String>,
    /// Directory of the on-disk spool for records Kafka cannot take.
    #[arg(
        long,
        env = "MIRROR_SPOOL_DIR",
        default_value = "/var/lib/mirror-receiver/spool"
    )]
    pub spool_dir: PathBuf,
    /// Largest size of the spool in bytes; beyond it new records are dropped and counted.
    #[arg(long, env = "MIRROR_SPOOL_MAX_BYTES", default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,
    /// Seconds without a Kafka acknowledgement (records in flight) before records go to the spool.
    #[arg(long, env = "MIRROR_SPOOL_GRACE", default_value_t = 2.0)]
    pub spool_grace: f64,
    /// Write every record to the spool (fsynced in batches) before producing it: nothing is only
    /// in memory, at the cost of writing every record to disk.
    #[arg(long, env = "MIRROR_SPOOL_ALWAYS")]
    pub spool_always: bool,
}

impl OutputArgs {
    /// librdkafka settings given with --kafka-option, split at the first `=`.
    pub fn kafka_options(&self) -> Result<Vec<(String, String)>, ConfigError> {
        self.kafka_options
            .iter()
            .filter(|o| !o.trim().is_empty())
            .map(|o| match o.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
                _ => Err(bad("--kafka-option", o, "expected KEY=VALUE")),
            })
            .collect()
    }
}

/// A setting that cannot be used, named as the user wrote it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {name}={value:?}: {why}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub why: String,
}

fn bad(name: &str, value: impl ToString, why: &str) -> ConfigError {
    ConfigError {
        name: name.to_owned(),
        value: value.to_string(),
        why: why.to_owned(),
    }
}

/// The value of Akto variable `name`, if it is set and not blank: a blank one counts as unset
/// everywhere (here, for the config file's precedence, and for AKTO_LOG_LEVEL).
fn alias(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

/// Checks that files can be created in `dir` (creating it first when `create`).
fn writable_dir(dir: &std::path::Path, create: bool) -> Result<(), String> {
    if create {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create it: {e}"))?;
    }
    let probe = dir.join(format!(".mirror-receiver-validate-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("not writable: {e}"))
}

fn seconds_to_us(name: &str, secs: f64) -> Result<u64, ConfigError> {
    if !(0.0..=1e9).contains(&secs) {
        return Err(bad(
            name,
            secs,
            "must be a number of seconds between 0 and 1e9",
        ));
    }
    Ok((secs * 1e6) as u64)
}

/// The pipeline's settings, checked and built once: what `replay` and each worker run with.
#[derive(Clone)]
pub struct PipelineSettings {
    pub pipeline: PipelineConfig,
    pub record: RecordConfig,
    pub filter: std::sync::Arc<crate::filter::Filter>,
}

/// The daemon's settings, checked and built once: `validate` stops there, `run` goes on with
/// them.
pub struct RunSettings {
    pub pipeline: PipelineSettings,
    pub admission: crate::admission::Admission,
    /// The UDP listeners (for `run`, the default one when none was given).
    pub listeners: Vec<Listener>,
    /// The interface to capture from (`capture`).
    pub live: Option<LiveSettings>,
}

/// A checked `capture` configuration: the interface's, and the VNI its records get.
#[derive(Clone, Debug)]
pub struct LiveSettings {
    pub capture: crate::ingest::live::LiveConfig,
    pub vni: u32,
}

impl LiveArgs {
    /// Checks the capture settings (the filter expression compiles); `None` when no interface
    /// was given.
    pub fn check(&self) -> Result<Option<LiveSettings>, ConfigError> {
        let Some(interface) = &self.interface else {
            return Ok(None);
        };
        if interface.is_empty() || interface.len() >= libc::IF_NAMESIZE || interface.contains('/') {
            return Err(bad(
                "--interface",
                interface,
                "not an interface name (1-15 characters, no '/')",
            ));
        }
        if self.capture_buffer < 1 << 20 {
            return Err(bad(
                "--capture-buffer",
                self.capture_buffer,
                "must be at least 1 MiB (1048576)",
            ));
        }
        if i32::try_from(self.capture_buffer).is_err() {
            return Err(bad(
                "--capture-buffer",
                self.capture_buffer,
                "must be below 2 GiB",
            ));
        }
        let filter = self.capture_filter.clone().filter(|f| !f.trim().is_empty());
        if let Some(f) = &filter {
            crate::ingest::live::compile_filter(f)
                .map_err(|why| bad("--capture-filter", f, &why))?;
        }
        Ok(Some(LiveSettings {
            capture: crate::ingest::live::LiveConfig {
                interface: interface.clone(),
                promiscuous: self.promiscuous,
                filter,
                buffer: self.capture_buffer,
            },
            vni: self.vni,
        }))
    }
}

impl PipelineArgs {
    /// Checks every pipeline setting and builds the stages' configuration and the filter.
    pub fn check(&self) -> Result<PipelineSettings, ConfigError> {
        let (pipeline, record) = self.to_config()?;
        Ok(PipelineSettings {
            pipeline,
            record,
            filter: self.filter()?,
        })
    }

    /// Builds the filter stage, naming the setting when one is invalid.
    fn filter(&self) -> Result<std::sync::Arc<crate::filter::Filter>, ConfigError> {
        let mut redact = self.redact_headers.clone();
        if self.redact_default {
            redact.extend(crate::filter::default_redactions());
        }
        let cfg = crate::filter::FilterConfig {
            discovery_config: self.discovery_config.clone(),
            ignore_ip_traffic: self.ignore_ip_traffic,
            ignore_cloud_metadata_calls: self.ignore_cloud_metadata_calls,
            allow_hosts: self.allow_hosts.clone(),
            deny_hosts: self.deny_hosts.clone(),
            allow_paths: self.allow_paths.clone(),
            deny_paths: self.deny_paths.clone(),
            sample_rate: self.sample_rate,
            redact_headers: redact,
        };
        crate::filter::Filter::new(&cfg)
            .map(std::sync::Arc::new)
            .map_err(|e| {
                let flag = match e.setting {
                    crate::filter::FilterSetting::DiscoveryConfig => "--discovery-config",
                    crate::filter::FilterSetting::AllowHosts => "--allow-host",
                    crate::filter::FilterSetting::DenyHosts => "--deny-host",
                    crate::filter::FilterSetting::AllowPaths => "--allow-path",
                    crate::filter::FilterSetting::DenyPaths => "--deny-path",
                    crate::filter::FilterSetting::SampleRate => "--sample-rate",
                    crate::filter::FilterSetting::RedactHeaders => "--redact-header",
                };
                bad(flag, &e.value, &e.why)
            })
    }

    /// Checks the values and builds the typed configuration.
    fn to_config(&self) -> Result<(PipelineConfig, RecordConfig), ConfigError> {
        if self.memory_budget < 1 << 20 {
            return Err(bad(
                "--memory-budget",
                self.memory_budget,
                "must be at least 1 MiB (1048576)",
            ));
        }
        if self.max_flows == 0 {
            return Err(bad("--max-flows", 0, "must be at least 1"));
        }
        if self.max_record_bytes < 1024 {
            return Err(bad(
                "--max-record-bytes",
                self.max_record_bytes,
                "must be at least 1024",
            ));
        }
        if self.account_id.is_empty() || !self.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(
                "--account-id",
                &self.account_id,
                "must be a decimal number",
            ));
        }
        let reorder_timeout_us = seconds_to_us("--reorder-timeout", self.reorder_timeout)?;
        let pipeline = PipelineConfig {
            flow: FlowConfig {
                idle_timeout_us: seconds_to_us("--flow-idle-timeout", self.flow_idle_timeout)?,
                max_flows: self.max_flows,
                memory_budget: self.memory_budget,
                reassembly: ReassemblyConfig {
                    max_ooo_bytes: self.max_reorder_bytes,
                    reorder_timeout_us,
                    ..ReassemblyConfig::default()
                },
            },
            // A response that overtook its request waits as long, and holds as much, as
            // segments that overtook a hole.
            http: HttpConfig {
                max_body_bytes: self.max_body_bytes,
                hold_timeout_us: reorder_timeout_us,
                max_held_bytes: self.max_reorder_bytes,
                ..HttpConfig::default()
            },
        };
        let record = RecordConfig {
            account_id: self.account_id.clone(),
            max_record_bytes: self.max_record_bytes,
        };
        Ok((pipeline, record))
    }
}

/// Every broker of a `--kafka-brokers` list resolves to an address.
fn brokers_resolve(brokers: &str) -> Result<(), ConfigError> {
    use std::net::ToSocketAddrs;
    for b in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let hostport = b.rsplit_once("://").map_or(b, |(_, r)| r);
        match hostport.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(bad("--kafka-brokers", b, "resolves to no address")),
            Err(e) => {
                return Err(bad(
                    "--kafka-brokers",
                    b,
                    &format!("does not resolve ({e}); expected HOST:PORT"),
                ));
            }
        }
    }
    Ok(())
}

impl RunArgs {
    /// What `validate` checks beyond the values themselves: Kafka brokers resolve (unless
    /// `offline`), the spool directory (with Kafka) or the output file's directory is writable.
    pub fn check_environment(&self, offline: bool) -> Result<(), ConfigError> {
        if let Some(brokers) = &self.output.kafka_brokers {
            if !offline {
                brokers_resolve(brokers)?;
            }
            writable_dir(&self.output.spool_dir, true)
                .map_err(|why| bad("--spool-dir", self.output.spool_dir.display(), &why))?;
        } else if self.output.output != "-" {
            let path = std::path::Path::new(&self.output.output);
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            writable_dir(dir, false).map_err(|why| bad("--output", &self.output.output, &why))?;
        }
        Ok(())
    }

    /// The source and VNI allow lists.
    fn admission(&self) -> Result<crate::admission::Admission, ConfigError> {
        crate::admission::Admission::new(&self.allow_sources, &[])
            .map_err(|why| bad("--allow-source", self.allow_sources.join(","), &why))?;
        crate::admission::Admission::new(&self.allow_sources, &self.allow_vnis)
            .map_err(|why| bad("--allow-vni", self.allow_vnis.join(","), &why))
    }

    /// Checks every setting of the daemon (`run`).
    pub fn check(&self) -> Result<RunSettings, ConfigError> {
        self.check_with(None)
    }

    /// Checks every setting of the daemon, capturing from `live` if given (`capture`, where
    /// UDP is served only if `--listen` says where).
    pub fn check_with(&self, live: Option<&LiveArgs>) -> Result<RunSettings, ConfigError> {
        let live = match live {
            Some(l) => Some(l.check()?.ok_or_else(|| {
                bad(
                    "--interface",
                    "",
                    "capture needs an interface (--interface IF)",
                )
            })?),
            None => None,
        };
        let mut listeners = self.listen.clone();
        if listeners.is_empty() && live.is_none() {
            listeners.push(DEFAULT_LISTEN);
        }
        for (i, l) in listeners.iter().enumerate() {
            if listeners[..i]
                .iter()
                .any(|o| o.addr == l.addr && l.addr.port() != 0)
            {
                return Err(bad("--listen", l, "the same address is given twice"));
            }
        }
        let pipeline = self.pipeline.check()?;
        let admission = self.admission()?;
        self.output.check()?;
        if !(0.0..=3600.0).contains(&self.shutdown_timeout) {
            return Err(bad(
                "--shutdown-timeout",
                self.shutdown_timeout,
                "must be between 0 and 3600 seconds",
            ));
        }
        if self.workers > 1024 {
            return Err(bad("--workers", self.workers, "must be at most 1024"));
        }
        if self.recv_buffer < 64 * 1024 {
            return Err(bad(
                "--recv-buffer",
                self.recv_buffer,
                "must be at least 65536 bytes",
            ));
        }
        Ok(RunSettings {
            pipeline,
            admission,
            listeners,
            live,
        })
    }
}

impl OutputArgs {
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(b) = &self.kafka_brokers
            && b.split(',').all(|s| s.trim().is_empty())
        {
            return Err(bad("--kafka-brokers", b, "no broker address in the list"));
        }
        if self.topic.is_empty() {
            return Err(bad("--topic", "", "must not be empty"));
        }
        if self.batch_size == 0 {
            return Err(bad("--batch-size", 0, "must be at least 1"));
        }
        if !(0.0..=900.0).contains(&self.batch_time) {
            return Err(bad(
                "--batch-time",
                self.batch_time,
                "must be between 0 and 900 seconds",
            ));
        }
        if !(0.1..=3600.0).contains(&self.spool_grace) {
            return Err(bad(
                "--spool-grace",
                self.spool_grace,
                "must be between 0.1 and 3600 seconds",
            ));
        }
        if self.spool_max_bytes < 1 << 20 {
            return Err(bad(
                "--spool-max-bytes",
                self.spool_max_bytes,
                "must be at least 1 MiB",
            ));
        }
        self.kafka_options()?;
        Ok(())
    }
}

/// Maps a log level name, including Akto's spellings, to a tracing filter directive.
pub fn log_filter(level: &str) -> Result<&'static str, ConfigError> {
    Ok(match level.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" | "dbeug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" => "error",
        "off" | "none" => "off",
        _ => {
            return Err(bad(
                "--log-level",
                level,
                "expected one of trace, debug, info, warn, error, off",
            ));
        }
    })
}

#[cfg(test)]
mod tests;

/// How an Akto variable's value becomes its flag's.
#[derive(Clone, Copy, Debug)]
enum AktoValue {
    Text,
    Count,
    Seconds,
    /// Akto reads its booleans as true only when the value lower-cases to "true".
    Bool,
    /// Akto's module restarts itself at these thresholds (MB); here they bound buffered bytes.
    Megabytes,
}

/// Akto variable names that stand for a flag (by clap id), the first one set winning: the one
/// list of them. They rank below the flag and its `MIRROR_*` variable, above the config file.
const ALIASES: &[(&str, &[&str], AktoValue)] = &[
    (
        "kafka_brokers",
        &["AKTO_KAFKA_BROKER_MAL", "AKTO_KAFKA_BROKER_URL"],
        AktoValue::Text,
    ),
    ("batch_size", &["AKTO_TRAFFIC_BATCH_SIZE"], AktoValue::Count),
    (
        "batch_time",
        &["AKTO_TRAFFIC_BATCH_TIME_SECS"],
        AktoValue::Seconds,
    ),
    (
        "flow_idle_timeout",
        &["TRAFFIC_INACTIVITY_THRESHOLD"],
        AktoValue::Seconds,
    ),
    ("max_flows", &["TRAFFIC_MAX_ACTIVE_CONN"], AktoValue::Count),
    (
        "memory_budget",
        &["TRAFFIC_BUFFER_THRESHOLD", "AKTO_MEM_THRESH_RESTART"],
        AktoValue::Megabytes,
    ),
    (
        "discovery_config",
        &["AKTO_MODULE_DISCOVERY_CONFIG"],
        AktoValue::Text,
    ),
    (
        "ignore_ip_traffic",
        &["AKTO_IGNORE_IP_TRAFFIC"],
        AktoValue::Bool,
    ),
    (
        "ignore_cloud_metadata_calls",
        &["AKTO_IGNORE_CLOUD_METADATA_CALLS"],
        AktoValue::Bool,
    ),
    ("log_level", &["AKTO_LOG_LEVEL"], AktoValue::Text),
];

impl AktoValue {
    /// The flag's value from variable `name`'s `value` (for a boolean: `Some` when on).
    fn flag_value(self, name: &str, value: &str) -> Result<Option<String>, ConfigError> {
        let v = value.trim();
        let number = |ok: bool| match ok {
            true => Ok(Some(v.to_owned())),
            false => Err(bad(name, value, "not a number")),
        };
        match self {
            AktoValue::Text => Ok(Some(v.to_owned())),
            AktoValue::Count => number(v.parse::<u64>().is_ok()),
            AktoValue::Seconds => number(v.parse::<f64>().is_ok()),
            AktoValue::Bool => Ok(v.eq_ignore_ascii_case("true").then(String::new)),
            AktoValue::Megabytes => match v.parse::<usize>() {
                Ok(mb) => Ok(Some(mb.saturating_mul(1 << 20).to_string())),
                Err(_) => Err(bad(name, value, "not a number")),
            },
        }
    }
}

/// The command line with every setting it leaves unset filled in, in precedence order: flag,
/// its `MIRROR_*` variable (both clap's), Akto alias, config file (`--config FILE` or
/// `MIRROR_CONFIG`), default (clap's). The one place precedence is decided; clap then parses
/// the result once. `env` looks an Akto variable up (the process environment, or a table in
/// tests). Unknown keys of the file, values of the wrong type, and alias values that are not
/// numbers where a number is wanted are errors naming the key or the variable.
pub fn layered_argv(
    argv: Vec<std::ffi::OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<std::ffi::OsString>, ConfigError> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let Ok(matches) = cmd.clone().try_get_matches_from(argv.clone()) else {
        // Let the real parse report the command-line error (or print the help).
        return Ok(argv);
    };
    let Some((sub_name, sub_matches)) = matches.subcommand() else {
        return Ok(argv);
    };
    let Some(sub) = cmd.find_subcommand(sub_name) else {
        return Ok(argv);
    };
    let settings = Parsed {
        cmd: &cmd,
        sub,
        matches: &matches,
        sub_matches,
    };
    let mut out = argv;
    let by_alias = settings.alias_flags(env, &mut out)?;
    if let Some(path) = matches.get_one::<PathBuf>("config") {
        settings.file_flags(path, &by_alias, &mut out)?;
    }
    Ok(out)
}

/// A first parse of the command line: which settings the command has, and which of them the
/// command line or a `MIRROR_*` variable set.
struct Parsed<'a> {
    cmd: &'a clap::Command,
    sub: &'a clap::Command,
    matches: &'a ArgMatches,
    sub_matches: &'a ArgMatches,
}

impl<'a> Parsed<'a> {
    /// A setting of the command (its own, else a global one) by its long name.
    fn setting(&self, long: &str) -> Option<&'a clap::Arg> {
        let is = |a: &&clap::Arg| a.get_long() == Some(long) && !a.is_positional();
        self.sub
            .get_arguments()
            .find(is)
            .or_else(|| self.cmd.get_arguments().find(is))
    }

    /// The command line or a `MIRROR_*` variable set `arg`.
    fn set_by_user(&self, arg: &clap::Arg) -> bool {
        let id = arg.get_id().as_str();
        let own = self.sub.get_arguments().any(|a| a.get_id() == id);
        let m = if own { self.sub_matches } else { self.matches };
        !matches!(m.value_source(id), None | Some(ValueSource::DefaultValue))
    }

    /// Appends a flag for every setting the user left unset and an Akto alias sets; returns
    /// their ids.
    fn alias_flags(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        out: &mut Vec<std::ffi::OsString>,
    ) -> Result<Vec<&'static str>, ConfigError> {
        let mut by_alias = Vec::new();
        for (id, names, kind) in ALIASES {
            let Some(arg) = self.setting(&id.replace('_', "-")) else {
                continue;
            };
            if self.set_by_user(arg) {
                continue;
            }
            let Some((name, value)) = names.iter().find_map(|n| alias(env, n).map(|v| (*n, v)))
            else {
                continue;
            };
            by_alias.push(*id);
            let long = arg.get_long().unwrap_or(id);
            match (kind.flag_value(name, &value)?, kind) {
                (Some(_), AktoValue::Bool) => out.push(format!("--{long}").into()),
                (Some(v), _) => out.push(format!("--{long}={v}").into()),
                (None, _) => {}
            }
        }
        Ok(by_alias)
    }

    /// Appends the config file's settings that neither the user nor an alias set.
    fn file_flags(
        &self,
        path: &std::path::Path,
        by_alias: &[&str],
        out: &mut Vec<std::ffi::OsString>,
    ) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad("--config", path.display(), &format!("cannot read it: {e}")))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| bad("--config", path.display(), &format!("not valid TOML: {e}")))?;
        for (key, value) in &table {
            let long = key.replace('_', "-");
            let arg = self
                .setting(&long)
                .ok_or_else(|| bad(key, format!("{value:?}"), "no such setting"))?;
            let id = arg.get_id().as_str();
            if id == "config" {
                return Err(bad(
                    key,
                    format!("{value:?}"),
                    "a config file cannot name another",
                ));
            }
            if !self.set_by_user(arg) && !by_alias.contains(&id) {
                toml_flags(key, &format!("--{long}"), value, out)?;
            }
        }
        Ok(())
    }
}

/// The flags a config file's `key = value` stands for (a list: the flag once per item).
fn toml_flags(
    key: &str,
    flag: &str,
    value: &toml::Value,
    out: &mut Vec<std::ffi::OsString>,
) -> Result<(), ConfigError> {
    let items: Vec<&toml::Value> = match value {
        toml::Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    for item in items {
        match item {
            toml::Value::Boolean(true) => out.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => out.push(format!("{flag}={s}").into()),
            toml::Value::Integer(i) => out.push(format!("{flag}={i}").into()),
            toml::Value::Float(f) => out.push(format!("{flag}={f}").into()),
            other => {
                return Err(bad(
                    key,
                    format!("{other:?}"),
                    "expected a string, number, boolean or list",
                ));
            }
        }
    }
    Ok(())
}
