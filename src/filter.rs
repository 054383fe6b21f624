//! Which exchanges become records, and what of them is hidden: the filter and redaction stage
//! between `http` and `record`. Pure: no IO, no clock; sampling draws from a hash of the exchange
//! (connection id, request sequence number and time), so a replay keeps the same exchanges.
//!
//! Checks, in the order a drop is attributed ([`DropReason::ALL`]):
//!
//! 1. `AKTO_IGNORE_CLOUD_METADATA_CALLS`: the instance metadata service (169.254.169.254, or
//!    fd00:ec2::254), by destination address or by the request's host.
//! 2. `AKTO_IGNORE_IP_TRAFFIC`: requests whose host is empty or an IP literal.
//! 3. `AKTO_MODULE_DISCOVERY_CONFIG`: Akto's header rules (below).
//! 4. Host deny and allow lists, then path-prefix deny and allow lists (deny wins).
//! 5. Sampling.
//!
//! The request's *host* is what Go's `http.Request.Host` holds in Akto's module: the authority
//! of an absolute-form (or CONNECT) target, else the first `Host` field, else empty.
//!
//! # `AKTO_MODULE_DISCOVERY_CONFIG`
//!
//! As Akto's mirroring module reads it (akto-api-security/mirroring-api-logging,
//! `trafficUtil/utils/filterParser.go` and `filter_functions.go`): a JSON list of rules
//! `{"key":{"eq":NAME,"ifAbsent":"accept"|"reject"},"value":{"regex":RE}}`, applied to the
//! request's fields only. A rule whose `eq` is empty is skipped. Otherwise the field named `eq`
//! (case-insensitively) is looked up: when absent, the rule fails only if `ifAbsent` is
//! "reject" (case-insensitively; anything else, or nothing, accepts); when present, the rule
//! fails if `regex` finds no match anywhere in its value (unanchored search; an empty regex
//! matches). An exchange passes when no rule fails. As in Akto, a field sent several times is
//! judged by its last value, and `host` is always present, holding the request's host (empty
//! when there is none). JSON field names match case-insensitively and unknown ones are ignored,
//! as Go's `encoding/json` does; `null` configures no rules.
//!
//! Where Akto silently falls back (invalid JSON to its built-in rule, an invalid regex to `.*`),
//! [`Filter::new`] returns an error naming the problem; so does an `ifAbsent` other than
//! "accept" or "reject", which Akto would treat as "accept". An empty setting means no rules
//! here; Akto's module then applies [`AKTO_DEFAULT_DISCOVERY_CONFIG`].
//!
//! Regexes are Go's RE2 syntax as the `regex` crate reads it, with Go's ASCII `\d`, `\w`, `\s`
//! and `\b`; `.` and negated classes step over one byte (Go: one character), which only matters
//! for non-ASCII values. `\pL`, `\Q…\E` and non-ASCII characters inside a class (write
//! `(?u:[é])`) are rejected when the filter is built.

use crate::http::{Exchange, Message, StartLine};
use regex::bytes::{Regex, RegexBuilder};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a redacted header value is replaced with.
pub const REDACTED: &str = "REDACTED";

/// The rule Akto's module applies when `AKTO_MODULE_DISCOVERY_CONFIG` is unset or not valid JSON
/// (`GetFilter` in `trafficUtil/utils/filterParser.go`): requests carrying
/// `x-envoy-peer-metadata-id` pass only if it mentions "sidecar". Not applied by default here.
pub const AKTO_DEFAULT_DISCOVERY_CONFIG: &str = r#"[{"key":{"eq":"x-envoy-peer-metadata-id","ifAbsent":"accept"},"value":{"regex":".*sidecar.*"}}]"#;

/// AWS instance metadata service addresses (IMDS over IPv4 and over IPv6 on Nitro).
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// Headers whose values carry credentials: redacted when the operator asks for the defaults.
pub fn default_redactions() -> Vec<String> {
    [
        "authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "proxy-authorization",
    ]
    .map(String::from)
    .to_vec()
}

/// Filter settings as the user gave them. The default keeps every exchange and redacts nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterConfig {
    /// `AKTO_MODULE_DISCOVERY_CONFIG`: a JSON list of header rules. `None` or empty: no rules.
    pub discovery_config: Option<String>,
    /// `AKTO_IGNORE_IP_TRAFFIC`: drop requests whose host is empty or an IP literal (with or
    /// without port; IPv6 in brackets).
    pub ignore_ip_traffic: bool,
    /// `AKTO_IGNORE_CLOUD_METADATA_CALLS`: drop requests to the instance metadata service.
    pub ignore_cloud_metadata_calls: bool,
    /// Hosts kept (empty: all): exact names or `*.suffix` (subdomains of suffix, not suffix
    /// itself), case-insensitive, port ignored.
    pub allow_hosts: Vec<String>,
    /// Hosts dropped, same patterns; wins over `allow_hosts`.
    pub deny_hosts: Vec<String>,
    /// Path prefixes kept (empty: all), compared byte for byte with the target's path (query
    /// excluded, not percent-decoded). Each starts with `/`.
    pub allow_paths: Vec<String>,
    /// Path prefixes dropped; wins over `allow_paths`.
    pub deny_paths: Vec<String>,
    /// Share of the remaining exchanges kept, in [0, 1]. Default 1 (all).
    pub sample_rate: f64,
    /// Header names (case-insensitive) whose values become [`REDACTED`] in requests and
    /// responses. See [`default_redactions`].
    pub redact_headers: Vec<String>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            discovery_config: None,
            ignore_ip_traffic: false,
            ignore_cloud_metadata_calls: false,
            allow_hosts: Vec::new(),
            deny_hosts: Vec::new(),
            allow_paths: Vec::new(),
            deny_paths: Vec::new(),
            sample_rate: 1.0,
            redact_headers: Vec::new(),
        }
    }
}

/// The setting a [`FilterError`] is about (named as the [`FilterConfig`] field).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FilterSetting {
    DiscoveryConfig,
    AllowHosts,
    DenyHosts,
    AllowPaths,
    DenyPaths,
    SampleRate,
    RedactHeaders,
}

impl FilterSetting {
    pub fn as_str(self) -> &'static str {
        match self {
            FilterSetting::DiscoveryConfig => "discovery_config",
            FilterSetting::AllowHosts => "allow_hosts",
            FilterSetting::DenyHosts => "deny_hosts",
            FilterSetting::AllowPaths => "allow_paths",
            FilterSetting::DenyPaths => "deny_paths",
            FilterSetting::SampleRate => "sample_rate",
            FilterSetting::RedactHeaders => "redact_headers",
        }
    }
}

impl std::fmt::Display for FilterSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A filter setting that cannot be used: which one, the offending value, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting} {value:?}: {why}")]
pub struct FilterError {
    pub setting: FilterSetting,
    /// The offending part (a pattern, a regex, or the whole JSON when it does not parse).
    pub value: String,
    pub why: String,
}

fn bad(setting: FilterSetting, value: impl ToString, why: impl ToString) -> FilterError {
    FilterError {
        setting,
        value: value.to_string(),
        why: why.to_string(),
    }
}

/// Why an exchange was dropped.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A call to the instance metadata service (`AKTO_IGNORE_CLOUD_METADATA_CALLS`).
    CloudMetadata,
    /// The host is empty or an IP literal (`AKTO_IGNORE_IP_TRAFFIC`).
    IpHost,
    /// A rule of `AKTO_MODULE_DISCOVERY_CONFIG` failed.
    DiscoveryRule,
    /// The host is on the deny list.
    HostDenied,
    /// The host is not on the (non-empty) allow list.
    HostNotAllowed,
    /// The path starts with a denied prefix.
    PathDenied,
    /// The path starts with no allowed prefix.
    PathNotAllowed,
    /// Not drawn by sampling.
    Sampled,
}

impl DropReason {
    /// All reasons, in the order they are checked, for pre-registering counters.
    pub const ALL: [DropReason; 8] = [
        DropReason::CloudMetadata,
        DropReason::IpHost,
        DropReason::DiscoveryRule,
        DropReason::HostDenied,
        DropReason::HostNotAllowed,
        DropReason::PathDenied,
        DropReason::PathNotAllowed,
        DropReason::Sampled,
    ];

    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::CloudMetadata => "cloud_metadata",
            DropReason::IpHost => "ip_host",
            DropReason::DiscoveryRule => "discovery_rule",
            DropReason::HostDenied => "host_denied",
            DropReason::HostNotAllowed => "host_not_allowed",
            DropReason::PathDenied => "path_denied",
            DropReason::PathNotAllowed => "path_not_allowed",
            DropReason::Sampled => "sampled",
        }
    }

    /// Index into [`DropReason::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of the filter stage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterStats {
    /// Exchanges that passed every check.
    pub passed: u64,
    /// Exchanges dropped, by reason ([`DropReason::index`]).
    pub dropped: [u64; DropReason::ALL.len()],
}

impl FilterStats {
    /// Counts the outcome of [`Filter::check`].
    pub fn count(&mut self, outcome: Result<(), DropReason>) {
        match outcome {
            Ok(()) => self.passed += 1,
            Err(r) => self.dropped[r.index()] += 1,
        }
    }

    pub fn dropped_by(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    pub fn add(&mut self, o: &FilterStats) {
        self.passed += o.passed;
        for (a, b) in self.dropped.iter_mut().zip(o.dropped) {
            *a += b;
        }
    }
}

/// What a discovery rule does when its field is absent.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum IfAbsent {
    Accept,
    Reject,
}

/// One rule of `AKTO_MODULE_DISCOVERY_CONFIG`, as read (before its regex is compiled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryRule {
    /// `key.eq`, lower-cased. Empty: the rule is skipped, as in Akto.
    pub header: String,
    /// `key.ifAbsent`.
    pub if_absent: IfAbsent,
    /// `value.regex`.
    pub regex: String,
}

/// Reads `AKTO_MODULE_DISCOVERY_CONFIG` the way Go's `encoding/json` fills Akto's
/// `[]FilterObject`, but failing where Akto would fall back silently. Regexes are not compiled
/// here ([`Filter::new`] does).
pub fn parse_discovery_config(json: &str) -> Result<Vec<DiscoveryRule>, FilterError> {
    let setting = FilterSetting::DiscoveryConfig;
    let doc: Value = serde_json::from_str(json)
        .map_err(|e| bad(setting, json, format_args!("not valid JSON: {e}")))?;
    let items = match doc {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => {
            return Err(bad(
                setting,
                json,
                "expected a JSON list of rules, e.g. \
                 [{\"key\":{\"eq\":\"host\",\"ifAbsent\":\"reject\"},\"value\":{\"regex\":\"api\"}}]",
            ));
        }
    };
    let mut rules = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |path: &str| format!("rule {i}: {path}");
        let (key, value) = match item {
            // Go leaves a null element as the zero rule, whose empty `eq` is skipped.
            Value::Null => continue,
            Value::Object(_) => (
                object_field(item, "key", &at("key"), json)?,
                object_field(item, "value", &at("value"), json)?,
            ),
            _ => return Err(bad(setting, json, at("expected an object"))),
        };
        let eq = string_field(key, "eq", &at("key.eq"), json)?;
        let if_absent = string_field(key, "ifAbsent", &at("key.ifAbsent"), json)?;
        let regex = string_field(value, "regex", &at("value.regex"), json)?;
        if !eq.bytes().all(is_tchar) {
            return Err(bad(setting, eq, at("key.eq: not a header name")));
        }
        let if_absent = if if_absent.is_empty() || if_absent.eq_ignore_ascii_case("accept") {
            IfAbsent::Accept
        } else if if_absent.eq_ignore_ascii_case("reject") {
            IfAbsent::Reject
        } else {
            return Err(bad(
                setting,
                if_absent,
                at("key.ifAbsent: expected \"accept\" or \"reject\""),
            ));
        };
        rules.push(DiscoveryRule {
            header: eq.to_ascii_lowercase(),
            if_absent,
            regex: regex.to_owned(),
        });
    }
    Ok(rules)
}

/// The member of `obj` named `name` case-insensitively (Go's `encoding/json` matching).
/// `Ok(None)` when absent or null.
fn member<'a>(
    obj: &'a Value,
    name: &str,
    at: &str,
    json: &str,
) -> Result<Option<&'a Value>, FilterError> {
    let Value::Object(map) = obj else {
        return Ok(None);
    };
    let mut found = map.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
    let first = found.next();
    if let Some((other, _)) = found.next() {
        let first = first.map_or("", |(k, _)| k.as_str());
        return Err(bad(
            FilterSetting::DiscoveryConfig,
            json,
            format_args!("{at}: given twice (\"{first}\" and \"{other}\")"),
        ));
    }
    Ok(first.map(|(_, v)| v).filter(|v| !v.is_null()))
}

/// An object member (absent or null: an empty object, as Go leaves a zero struct).
fn object_field<'a>(
    obj: &'a Value,
    name: &str,
    at: &str,
    json: &str,
) -> Result<&'a Value, FilterError> {
    static EMPTY: Value = Value::Null;
    match member(obj, name, at, json)? {
        None => Ok(&EMPTY),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(bad(
            FilterSetting::DiscoveryConfig,
            json,
            format_args!("{at}: expected an object"),
        )),
    }
}

/// A string member (absent or null: empty, as Go leaves a zero string).
fn string_field<'a>(
    obj: &'a Value,
    name: &str,
    at: &str,
    json: &str,
) -> Result<&'a str, FilterError> {
    match member(obj, name, at, json)? {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad(
            FilterSetting::DiscoveryConfig,
            json,
            format_args!("{at}: expected a string"),
        )),
    }
}

/// A header-name character (RFC 9110 `tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[derive(Debug)]
struct CompiledRule {
    header: String,
    if_absent: IfAbsent,
    regex: Regex,
}

/// A host pattern, lower-cased: an exact name, or the suffix (with its dot) of `*.suffix`.
#[derive(Debug, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    fn parse(setting: FilterSetting, raw: &str) -> Result<HostPattern, FilterError> {
        let trimmed = raw.trim();
        if trimmed
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b"/@?#".contains(&b))
        {
            return Err(bad(
                setting,
                raw,
                "not a host name (no scheme, path or user)",
            ));
        }
        let (wild, rest) = match trimmed.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let name = host_name(rest).to_ascii_lowercase();
        if name.is_empty() {
            return Err(bad(setting, raw, "empty host name"));
        }
        if name.contains('*') {
            return Err(bad(
                setting,
                raw,
                "a wildcard is allowed only as a leading \"*.\"",
            ));
        }
        Ok(if wild {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name)
        })
    }

    fn matches(&self, host: &str) -> bool {
        let host = host.as_bytes();
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name.as_bytes()),
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

fn host_patterns(setting: FilterSetting, raw: &[String]) -> Result<Vec<HostPattern>, FilterError> {
    raw.iter().map(|p| HostPattern::parse(setting, p)).collect()
}

fn path_prefixes(setting: FilterSetting, raw: &[String]) -> Result<Vec<String>, FilterError> {
    raw.iter()
        .map(|p| {
            if p.starts_with('/') && !p.bytes().any(|b| b.is_ascii_whitespace()) {
                Ok(p.clone())
            } else {
                Err(bad(
                    setting,
                    p,
                    "a path prefix starts with \"/\" and has no spaces",
                ))
            }
        })
        .collect()
}

/// A checked filter, built once and shared by the workers.
#[derive(Debug)]
pub struct Filter {
    rules: Vec<CompiledRule>,
    ignore_ip_traffic: bool,
    ignore_cloud_metadata_calls: bool,
    allow_hosts: Vec<HostPattern>,
    deny_hosts: Vec<HostPattern>,
    allow_paths: Vec<String>,
    deny_paths: Vec<String>,
    sample_rate: f64,
    redact: Vec<String>,
}

impl Filter {
    /// Checks every setting; the error names the first one that cannot be used.
    pub fn new(cfg: &FilterConfig) -> Result<Filter, FilterError> {
        let rules = match cfg.discovery_config.as_deref() {
            None | Some("") => Vec::new(),
            Some(json) => parse_discovery_config(json)?
                .into_iter()
                .map(|r| {
                    let regex = RegexBuilder::new(&r.regex)
                        // Go's \d, \w, \s, \b are ASCII; Unicode mode would also need
                        // tables this build leaves out.
                        .unicode(false)
                        .build()
                        .map_err(|e| {
                            let why = e.to_string();
                            let why = why.lines().last().unwrap_or_default();
                            let why = why.trim().trim_start_matches("error: ");
                            bad(
                                FilterSetting::DiscoveryConfig,
                                &r.regex,
                                format_args!("value.regex of rule on {:?}: {why}", r.header),
                            )
                        })?;
                    Ok(CompiledRule {
                        header: r.header,
                        if_absent: r.if_absent,
                        regex,
                    })
                })
                // Akto skips rules without a header name; their regex was still checked.
                .filter(|r| !matches!(r, Ok(CompiledRule { header, .. }) if header.is_empty()))
                .collect::<Result<_, FilterError>>()?,
        };
        if !(0.0..=1.0).contains(&cfg.sample_rate) {
            return Err(bad(
                FilterSetting::SampleRate,
                cfg.sample_rate,
                "must be between 0 and 1",
            ));
        }
        let redact = cfg
            .redact_headers
            .iter()
            .map(|h| {
                let name = h.trim();
                if name.is_empty() || !name.bytes().all(is_tchar) {
                    Err(bad(FilterSetting::RedactHeaders, h, "not a header name"))
                } else {
                    Ok(name.to_ascii_lowercase())
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter {
            rules,
            ignore_ip_traffic: cfg.ignore_ip_traffic,
            ignore_cloud_metadata_calls: cfg.ignore_cloud_metadata_calls,
            allow_hosts: host_patterns(FilterSetting::AllowHosts, &cfg.allow_hosts)?,
            deny_hosts: host_patterns(FilterSetting::DenyHosts, &cfg.deny_hosts)?,
            allow_paths: path_prefixes(FilterSetting::AllowPaths, &cfg.allow_paths)?,
            deny_paths: path_prefixes(FilterSetting::DenyPaths, &cfg.deny_paths)?,
            sample_rate: cfg.sample_rate,
            redact,
        })
    }

    /// Every exchange passes unchanged: the stage can be skipped.
    pub fn is_noop(&self) -> bool {
        self.keeps_everything() && self.redact.is_empty()
    }

    fn keeps_everything(&self) -> bool {
        self.rules.is_empty()
            && !self.ignore_ip_traffic
            && !self.ignore_cloud_metadata_calls
            && self.allow_hosts.is_empty()
            && self.deny_hosts.is_empty()
            && self.allow_paths.is_empty()
            && self.deny_paths.is_empty()
            && self.sample_rate >= 1.0
    }

    /// Whether `ex` becomes a record; the first failing check names the reason.
    pub fn check(&self, ex: &Exchange) -> Result<(), DropReason> {
        if self.keeps_everything() {
            return Ok(());
        }
        let req = &ex.request;
        let host = request_host(req);
        if self.ignore_cloud_metadata_calls
            && (is_metadata(ex.server.ip()) || host_ip(host).is_some_and(is_metadata))
        {
            return Err(DropReason::CloudMetadata);
        }
        if self.ignore_ip_traffic && is_ip_host(host) {
            return Err(DropReason::IpHost);
        }
        if !self.rules.iter().all(|r| rule_passes(r, req, host)) {
            return Err(DropReason::DiscoveryRule);
        }
        if !self.deny_hosts.is_empty() || !self.allow_hosts.is_empty() {
            let name = host_name(host);
            if self.deny_hosts.iter().any(|p| p.matches(name)) {
                return Err(DropReason::HostDenied);
            }
            if !self.allow_hosts.is_empty() && !self.allow_hosts.iter().any(|p| p.matches(name)) {
                return Err(DropReason::HostNotAllowed);
            }
        }
        if !self.deny_paths.is_empty() || !self.allow_paths.is_empty() {
            let path = request_path(req);
            if self.deny_paths.iter().any(|p| path.starts_with(p.as_str())) {
                return Err(DropReason::PathDenied);
            }
            if !self.allow_paths.is_empty()
                && !self
                    .allow_paths
                    .iter()
                    .any(|p| path.starts_with(p.as_str()))
            {
                return Err(DropReason::PathNotAllowed);
            }
        }
        if self.sample_rate < 1.0 && !sampled(ex, self.sample_rate) {
            return Err(DropReason::Sampled);
        }
        Ok(())
    }

    /// Replaces the values of the configured headers, in the request and the response.
    pub fn redact(&self, ex: &mut Exchange) {
        if self.redact.is_empty() {
            return;
        }
        let messages = std::iter::once(&mut ex.request).chain(ex.response.as_mut());
        for msg in messages {
            let redacted = |name: &str| self.redact.iter().any(|r| r.eq_ignore_ascii_case(name));
            msg.headers.replace_values(redacted, REDACTED);
        }
    }

    /// [`check`](Filter::check), counted in `stats`, then [`redact`](Filter::redact) when kept.
    /// Returns whether the exchange is kept.
    pub fn apply(&self, ex: &mut Exchange, stats: &mut FilterStats) -> bool {
        let outcome = self.check(ex);
        stats.count(outcome);
        if outcome.is_ok() {
            self.redact(ex);
        }
        outcome.is_ok()
    }
}

/// Akto's `FilterPacket` for one rule: the field's last value (Go's header map keeps the last),
/// `host` always present.
fn rule_passes(rule: &CompiledRule, req: &Message, host: &str) -> bool {
    let value = if rule.header == "host" {
        Some(host)
    } else {
        req.headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(&rule.header))
            .map(|(_, v)| trim_ows(v))
    };
    match value {
        None => rule.if_absent == IfAbsent::Accept,
        Some(v) => rule.regex.is_match(v.as_bytes()),
    }
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// The request's host as Go's `http.Request.Host` holds it: the authority of an absolute-form
/// or CONNECT target, else the first `Host` field; empty when neither.
pub fn request_host(req: &Message) -> &str {
    if let StartLine::Request { method, target } = &req.start {
        if let Some(rest) = strip_scheme(target) {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let authority = &rest[..end];
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if !host.is_empty() {
                return host;
            }
        } else if method.eq_ignore_ascii_case("CONNECT") && !target.starts_with('/') {
            return target;
        }
    }
    req.header("host").map_or("", trim_ows)
}

/// The part after `scheme://` of an absolute-form target.
fn strip_scheme(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    valid.then_some(rest)
}

/// The target's path: without scheme and authority, query or fragment ("/" when empty).
pub fn request_path(req: &Message) -> &str {
    let StartLine::Request { target, .. } = &req.start else {
        return "";
    };
    let path = match strip_scheme(target) {
        Some(rest) => rest.find('/').map_or("", |i| &rest[i..]),
        None => target,
    };
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    if path.is_empty() { "/" } else { path }
}

/// A host without port, brackets and trailing dot: `[::1]:80` -> `::1`, `A.com.:8080` -> `A.com`
/// (case kept). A bare IPv6 address (several colons) is kept whole.
pub fn host_name(host: &str) -> &str {
    let host = trim_ows(host);
    let name = if let Some(inner) = host.strip_prefix('[') {
        inner.split(']').next().unwrap_or_default()
    } else {
        match host.split_once(':') {
            Some((name, port)) if !port.contains(':') => name,
            _ => host,
        }
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// The address a host names literally (an IPv6 zone is ignored).
fn host_ip(host: &str) -> Option<IpAddr> {
    let name = host_name(host);
    let name = name.split('%').next().unwrap_or_default();
    name.parse::<IpAddr>().ok()
}

/// Akto's `CheckIfIp` (empty, or an IPv4 literal before the first colon), extended to IPv6
/// literals, bracketed or bare.
fn is_ip_host(host: &str) -> bool {
    let host = trim_ows(host);
    host.is_empty()
        || host_ip(host).is_some()
        || host
            .split(':')
            .next()
            .is_some_and(|h| h.parse::<Ipv4Addr>().is_ok())
}

fn is_metadata(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4 == METADATA_V4,
        IpAddr::V6(v6) => v6 == METADATA_V6,
    }
}

/// Keeps an exchange with probability `rate`, drawn from its identity so replays agree.
fn sampled(ex: &Exchange, rate: f64) -> bool {
    let seq = ex.request.seq.map_or(0, |s| u64::from(s.0) | 1 << 32);
    let h = mix(mix(mix(ex.connection_id) ^ seq) ^ ex.request.ts);
    // The top 53 bits as a fraction in [0, 1).
    ((h >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < rate
}

/// SplitMix64's finalizer: a fixed bijection that spreads every input bit over the output, so
/// the draw does not change across Rust versions (unlike `DefaultHasher`).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
