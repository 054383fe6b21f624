use super::*;
use crate::flow::Seq;
use crate::http::{Exchange, Message, StartLine};
use proptest::prelude::*;

/// Akto's documented example, verbatim (Documentation: traffic-connections/traffic-data-sources/
/// ebpf.md): keep only traffic of the istio namespace `bookinfo`.
const AKTO_DOC_EXAMPLE: &str = r#"[{"key":{"eq":"x-forwarded-client-cert","ifAbsent":"reject"},"value":{"regex":".*bookinfo.*"}}]"#;

type Headers<'a> = &'a [(&'a str, &'a str)];
type Outcome = Result<(), DropReason>;

const XFCC_BOOKINFO: &str = "By=spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews;\
    Hash=4f0c2d;Subject=\"\";URI=spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway";
const XFCC_DEFAULT: &str = "By=spiffe://cluster.local/ns/default/sa/web;Hash=1a2b";

fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Message {
    let mut m = Message::new(
        StartLine::Request {
            method: method.into(),
            target: target.into(),
        },
        1,
        1_700_000_000_000_000,
        Some(Seq(1000)),
    );
    m.headers = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    m
}

fn response(headers: &[(&str, &str)]) -> Message {
    let mut m = Message::new(
        StartLine::Response {
            status: 200,
            reason: "OK".into(),
        },
        1,
        1_700_000_000_100_000,
        Some(Seq(5000)),
    );
    m.headers = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    m
}

fn exchange_to(server: &str, req: Message) -> Exchange {
    Exchange {
        vni: 7,
        client: "10.0.0.1:40000".parse().unwrap(),
        server: server.parse().unwrap(),
        connection_id: 42,
        request: Box::new(req),
        response: Some(Box::new(response(&[("content-type", "text/plain")]))),
    }
}

fn get(headers: &[(&str, &str)]) -> Exchange {
    exchange_to("10.0.0.2:80", request("GET", "/api/v1/items?x=1", headers))
}

fn filter(cfg: FilterConfig) -> Filter {
    Filter::new(&cfg).unwrap_or_else(|e| panic!("{e}"))
}

fn discovery(json: &str) -> Filter {
    filter(FilterConfig {
        discovery_config: Some(json.into()),
        ..FilterConfig::default()
    })
}

fn discovery_err(json: &str) -> FilterError {
    Filter::new(&FilterConfig {
        discovery_config: Some(json.into()),
        ..FilterConfig::default()
    })
    .unwrap_err()
}

#[test]
fn akto_documented_example_keeps_only_bookinfo() {
    let f = discovery(AKTO_DOC_EXAMPLE);
    let cases: &[(Headers, Outcome)] = &[
        (
            &[
                ("host", "reviews"),
                ("x-forwarded-client-cert", XFCC_BOOKINFO),
            ],
            Ok(()),
        ),
        (
            &[("host", "web"), ("x-forwarded-client-cert", XFCC_DEFAULT)],
            Err(DropReason::DiscoveryRule),
        ),
        // ifAbsent "reject": no header, no record.
        (&[("host", "reviews")], Err(DropReason::DiscoveryRule)),
        // Present but empty: judged by the regex, which needs "bookinfo".
        (
            &[("x-forwarded-client-cert", "")],
            Err(DropReason::DiscoveryRule),
        ),
        // Sent twice: the last value decides, as in Akto's header map.
        (
            &[
                ("x-forwarded-client-cert", XFCC_DEFAULT),
                ("x-forwarded-client-cert", XFCC_BOOKINFO),
            ],
            Ok(()),
        ),
        (
            &[
                ("x-forwarded-client-cert", XFCC_BOOKINFO),
                ("x-forwarded-client-cert", XFCC_DEFAULT),
            ],
            Err(DropReason::DiscoveryRule),
        ),
    ];
    for (i, (headers, want)) in cases.iter().enumerate() {
        assert_eq!(f.check(&get(headers)), *want, "case {i}: {headers:?}");
    }
}

#[test]
fn akto_documented_example_parses_to_one_reject_rule() {
    assert_eq!(
        parse_discovery_config(AKTO_DOC_EXAMPLE).unwrap(),
        vec![DiscoveryRule {
            header: "x-forwarded-client-cert".into(),
            if_absent: IfAbsent::Reject,
            regex: ".*bookinfo.*".into(),
        }]
    );
}

#[test]
fn akto_default_rule_drops_only_non_sidecar_envoy_traffic() {
    let f = discovery(AKTO_DEFAULT_DISCOVERY_CONFIG);
    let cases: &[(Headers, Outcome)] = &[
        (&[], Ok(())),
        (
            &[(
                "x-envoy-peer-metadata-id",
                "sidecar~10.1.2.3~productpage-v1-6b746f74dc-9stvs.default~default.svc.cluster.local",
            )],
            Ok(()),
        ),
        (
            &[(
                "x-envoy-peer-metadata-id",
                "router~10.1.2.4~istio-ingressgateway-5d9f.istio-system~istio-system.svc.cluster.local",
            )],
            Err(DropReason::DiscoveryRule),
        ),
    ];
    for (i, (headers, want)) in cases.iter().enumerate() {
        assert_eq!(f.check(&get(headers)), *want, "case {i}");
    }
}

#[test]
fn discovery_rule_semantics_table() {
    // (config, request headers, expected)
    let cases: &[(&str, Headers, Outcome)] = &[
        // Header name matched case-insensitively.
        (
            r#"[{"key":{"eq":"X-Tenant","ifAbsent":"reject"},"value":{"regex":"^acme$"}}]"#,
            &[("x-tenant", "acme")],
            Ok(()),
        ),
        // The regex is case-sensitive unless it says (?i).
        (
            r#"[{"key":{"eq":"x-tenant","ifAbsent":"reject"},"value":{"regex":"^acme$"}}]"#,
            &[("x-tenant", "ACME")],
            Err(DropReason::DiscoveryRule),
        ),
        (
            r#"[{"key":{"eq":"x-tenant","ifAbsent":"reject"},"value":{"regex":"(?i)^acme$"}}]"#,
            &[("x-tenant", "ACME")],
            Ok(()),
        ),
        // Unanchored search, as Go's MatchString.
        (
            r#"[{"key":{"eq":"x-tenant"},"value":{"regex":"cm"}}]"#,
            &[("x-tenant", "acme")],
            Ok(()),
        ),
        // Surrounding whitespace of the value is not part of it.
        (
            r#"[{"key":{"eq":"x-tenant"},"value":{"regex":"^acme$"}}]"#,
            &[("x-tenant", " acme\t")],
            Ok(()),
        ),
        // ifAbsent: accept, missing and empty all accept; reject in any case rejects.
        (
            r#"[{"key":{"eq":"x-tenant","ifAbsent":"accept"},"value":{"regex":"acme"}}]"#,
            &[],
            Ok(()),
        ),
        (
            r#"[{"key":{"eq":"x-tenant"},"value":{"regex":"acme"}}]"#,
            &[],
            Ok(()),
        ),
        (
            r#"[{"key":{"eq":"x-tenant","ifAbsent":""},"value":{"regex":"acme"}}]"#,
            &[],
            Ok(()),
        ),
        (
            r#"[{"key":{"eq":"x-tenant","ifAbsent":"ACCEPT"},"value":{"regex":"acme"}}]"#,
            &[],
            Ok(()),
        ),
        (
            r#"[{"key":{"eq":"x-tenant","ifAbsent":"Reject"},"value":{"regex":"acme"}}]"#,
            &[],
            Err(DropReason::DiscoveryRule),
        ),
        // ifAbsent only matters when absent: a present non-matching value fails either way.
        (
            r#"[{"key":{"eq":"x-tenant","ifAbsent":"accept"},"value":{"regex":"acme"}}]"#,
            &[("x-tenant", "other")],
            Err(DropReason::DiscoveryRule),
        ),
        // No regex: the empty regex matches anything present.
        (
            r#"[{"key":{"eq":"x-tenant","ifAbsent":"reject"}}]"#,
            &[("x-tenant", "")],
            Ok(()),
        ),
        // A rule without a header name is skipped, even with ifAbsent reject.
        (
            r#"[{"key":{"eq":"","ifAbsent":"reject"},"value":{"regex":"never"}}]"#,
            &[],
            Ok(()),
        ),
        // Every rule must pass.
        (
            r#"[{"key":{"eq":"x-a","ifAbsent":"reject"},"value":{"regex":"1"}},
                {"key":{"eq":"x-b","ifAbsent":"reject"},"value":{"regex":"2"}}]"#,
            &[("x-a", "1"), ("x-b", "2")],
            Ok(()),
        ),
        (
            r#"[{"key":{"eq":"x-a","ifAbsent":"reject"},"value":{"regex":"1"}},
                {"key":{"eq":"x-b","ifAbsent":"reject"},"value":{"regex":"2"}}]"#,
            &[("x-a", "1"), ("x-b", "3")],
            Err(DropReason::DiscoveryRule),
        ),
        (
            r#"[{"key":{"eq":"x-a","ifAbsent":"reject"},"value":{"regex":"1"}},
                {"key":{"eq":"x-b","ifAbsent":"reject"},"value":{"regex":"2"}}]"#,
            &[("x-a", "1")],
            Err(DropReason::DiscoveryRule),
        ),
        // Response headers are not consulted.
        (
            r#"[{"key":{"eq":"content-type","ifAbsent":"reject"}}]"#,
            &[],
            Err(DropReason::DiscoveryRule),
        ),
        // Field names of the JSON match case-insensitively (Go's encoding/json); unknown ones
        // are ignored.
        (
            r#"[{"KEY":{"EQ":"x-tenant","IfAbsent":"REJECT","note":"x"},"Value":{"Regex":"acme"},"id":1}]"#,
            &[],
            Err(DropReason::DiscoveryRule),
        ),
        // Nulls stand for zero values: a null rule, key or value is skipped or empty.
        (r#"[null]"#, &[], Ok(())),
        (r#"[{"key":null,"value":null}]"#, &[], Ok(())),
        (
            r#"[{"key":{"eq":"x-tenant","ifAbsent":"reject"},"value":{"regex":null}}]"#,
            &[("x-tenant", "anything")],
            Ok(()),
        ),
        // Go's \d is ASCII: Arabic-Indic digits are not digits.
        (
            r#"[{"key":{"eq":"x-v"},"value":{"regex":"^v\\d+$"}}]"#,
            &[("x-v", "v12")],
            Ok(()),
        ),
        (
            r#"[{"key":{"eq":"x-v"},"value":{"regex":"^v\\d+$"}}]"#,
            &[("x-v", "v\u{661}\u{662}")],
            Err(DropReason::DiscoveryRule),
        ),
        // Non-ASCII literals match their UTF-8 bytes.
        (
            r#"[{"key":{"eq":"x-city"},"value":{"regex":"^Zürich$"}}]"#,
            &[("x-city", "Zürich")],
            Ok(()),
        ),
    ];
    for (i, (json, headers, want)) in cases.iter().enumerate() {
        assert_eq!(
            discovery(json).check(&get(headers)),
            *want,
            "case {i}: {json} with {headers:?}"
        );
    }
}

#[test]
fn discovery_host_rule_sees_the_request_host_always_present() {
    let rule = |re: &str, if_absent: &str| {
        discovery(&format!(
            r#"[{{"key":{{"eq":"Host","ifAbsent":"{if_absent}"}},"value":{{"regex":"{re}"}}}}]"#
        ))
    };
    let api = |target: &str, headers: &[(&str, &str)]| {
        exchange_to("10.0.0.2:80", request("GET", target, headers))
    };
    let cases = [
        (
            rule("^api\\\\.example\\\\.com$", "reject"),
            api("/", &[("host", "api.example.com")]),
            Ok(()),
        ),
        // An absolute-form target's authority wins over the Host field (Go's req.Host).
        (
            rule("^api\\\\.example\\\\.com(:8080)?$", "reject"),
            api("http://api.example.com:8080/x", &[("host", "other")]),
            Ok(()),
        ),
        // No Host at all: "host" is still present, empty, so the regex decides, not ifAbsent.
        (rule("^$", "reject"), api("/", &[]), Ok(())),
        (
            rule("api", "accept"),
            api("/", &[]),
            Err(DropReason::DiscoveryRule),
        ),
        // The first Host field is the request's host.
        (
            rule("^a$", "reject"),
            api("/", &[("host", "a"), ("host", "b")]),
            Ok(()),
        ),
    ];
    for (i, (f, ex, want)) in cases.iter().enumerate() {
        assert_eq!(f.check(ex), *want, "case {i}");
    }
}

#[test]
fn discovery_config_errors_name_the_problem() {
    // (config, words the message must contain)
    let cases: &[(&str, &[&str])] = &[
        ("not json", &["not valid JSON"]),
        ("[{", &["not valid JSON"]),
        ("   ", &["not valid JSON"]),
        (r#"{"key":{"eq":"a"}}"#, &["expected a JSON list of rules"]),
        (r#""x""#, &["expected a JSON list of rules"]),
        (r#"[1]"#, &["rule 0", "expected an object"]),
        (
            r#"[{"key":"host"}]"#,
            &["rule 0: key", "expected an object"],
        ),
        (
            r#"[{"key":{"eq":5}}]"#,
            &["rule 0: key.eq", "expected a string"],
        ),
        (
            r#"[{},{"key":{"eq":"a","ifAbsent":true}}]"#,
            &["rule 1: key.ifAbsent", "expected a string"],
        ),
        (
            r#"[{"key":{"eq":"a","ifAbsent":"drop"}}]"#,
            &["rule 0: key.ifAbsent", "\"accept\" or \"reject\""],
        ),
        (
            r#"[{"value":{"regex":["a"]}}]"#,
            &["rule 0: value.regex", "expected a string"],
        ),
        (
            r#"[{"key":{"eq":"x tenant"}}]"#,
            &["key.eq", "not a header name"],
        ),
        (
            r#"[{"key":{"eq":"x-a:"}}]"#,
            &["key.eq", "not a header name"],
        ),
        (
            r#"[{"key":{"eq":"a","Eq":"b"}}]"#,
            &["rule 0: key.eq", "given twice"],
        ),
        (
            r#"[{"key":{"eq":"a"},"value":{"regex":"(unclosed"}}]"#,
            &["value.regex", "\"a\"", "unclosed group"],
        ),
        // Even a skipped rule (empty eq) must have a valid regex.
        (
            r#"[{"value":{"regex":"["}}]"#,
            &["value.regex", "unclosed character class"],
        ),
        (
            r#"[{"key":{"eq":"a"},"value":{"regex":"\\pL"}}]"#,
            &["value.regex", "Unicode"],
        ),
        (
            r#"[{"key":{"eq":"a"},"value":{"regex":"\\Qa.b\\E"}}]"#,
            &["value.regex"],
        ),
    ];
    for (json, words) in cases {
        let e = discovery_err(json);
        assert_eq!(e.setting, FilterSetting::DiscoveryConfig, "{json}");
        let msg = e.to_string();
        assert!(msg.starts_with("invalid discovery_config "), "{msg}");
        for w in *words {
            assert!(msg.contains(w), "{json}: {msg:?} lacks {w:?}");
        }
    }
}

#[test]
fn empty_or_null_discovery_config_has_no_rules() {
    for json in [None, Some(""), Some("null"), Some("[]"), Some(" [ ] ")] {
        let f = filter(FilterConfig {
            discovery_config: json.map(String::from),
            ..FilterConfig::default()
        });
        assert!(f.is_noop(), "{json:?}");
        assert_eq!(f.check(&get(&[])), Ok(()));
    }
}

#[test]
fn ignore_ip_traffic_table() {
    let f = filter(FilterConfig {
        ignore_ip_traffic: true,
        ..FilterConfig::default()
    });
    let cases: &[(Option<&str>, bool)] = &[
        (None, true),
        (Some(""), true),
        (Some("  "), true),
        (Some("10.0.0.1"), true),
        (Some("10.0.0.1:8080"), true),
        (Some(" 10.0.0.1 "), true),
        (Some("[::1]"), true),
        (Some("[::1]:80"), true),
        (Some("[2001:DB8::1]:443"), true),
        (Some("[fe80::1%25eth0]:80"), true),
        (Some("::1"), true),
        (Some("2001:db8::1"), true),
        (Some("api.example.com"), false),
        (Some("api.example.com:8080"), false),
        (Some("10.0.0.1.nip.io"), false),
        (Some("1.2.3"), false),
        (Some("010.0.0.1"), false),
        (Some("localhost"), false),
        (Some("["), false),
        (Some("[]:80"), false),
    ];
    for (host, dropped) in cases {
        let headers: Vec<(&str, &str)> = host.iter().map(|h| ("host", *h)).collect();
        let want = if *dropped {
            Err(DropReason::IpHost)
        } else {
            Ok(())
        };
        assert_eq!(f.check(&get(&headers)), want, "host {host:?}");
    }
    // Off by default.
    assert_eq!(
        Filter::new(&FilterConfig::default())
            .unwrap()
            .check(&get(&[("host", "10.0.0.1")])),
        Ok(())
    );
}

#[test]
fn ignore_cloud_metadata_calls_table() {
    let f = filter(FilterConfig {
        ignore_cloud_metadata_calls: true,
        ..FilterConfig::default()
    });
    // (destination, Host, dropped)
    let cases: &[(&str, &str, bool)] = &[
        ("169.254.169.254:80", "169.254.169.254", true),
        ("169.254.169.254:80", "imds.internal", true),
        ("169.254.169.254:80", "", true),
        ("10.0.0.9:3128", "169.254.169.254", true),
        ("10.0.0.9:3128", "169.254.169.254:80", true),
        ("10.0.0.9:3128", "[fd00:ec2::254]", true),
        ("10.0.0.9:3128", "[FD00:EC2::254]:80", true),
        ("[fd00:ec2::254]:80", "api.example.com", true),
        ("[::ffff:169.254.169.254]:80", "", true),
        ("10.0.0.9:80", "169.254.169.253", false),
        ("169.254.169.253:80", "api.example.com", false),
        ("[fd00:ec2::253]:80", "api.example.com", false),
        ("10.0.0.9:80", "169.254.169.254.nip.io", false),
        ("10.0.0.9:80", "api.example.com", false),
    ];
    for (server, host, dropped) in cases {
        let ex = exchange_to(
            server,
            request("GET", "/latest/meta-data/", &[("host", host)]),
        );
        let want = if *dropped {
            Err(DropReason::CloudMetadata)
        } else {
            Ok(())
        };
        assert_eq!(f.check(&ex), want, "{server} Host {host:?}");
    }
    let off = Filter::new(&FilterConfig::default()).unwrap();
    let ex = exchange_to(
        "169.254.169.254:80",
        request("GET", "/", &[("host", "169.254.169.254")]),
    );
    assert_eq!(off.check(&ex), Ok(()));
}

#[test]
fn metadata_is_reported_before_ip_host_when_both_apply() {
    let f = filter(FilterConfig {
        ignore_ip_traffic: true,
        ignore_cloud_metadata_calls: true,
        ..FilterConfig::default()
    });
    assert_eq!(
        f.check(&get(&[("host", "169.254.169.254")])),
        Err(DropReason::CloudMetadata)
    );
    assert_eq!(
        f.check(&get(&[("host", "10.1.1.1")])),
        Err(DropReason::IpHost)
    );
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn host_allow_and_deny_table() {
    let f = filter(FilterConfig {
        allow_hosts: strings(&["api.example.com", "*.svc.cluster.local", "[2001:db8::1]"]),
        deny_hosts: strings(&["admin.svc.cluster.local", "*.internal.svc.cluster.local"]),
        ..FilterConfig::default()
    });
    let cases: &[(&str, Result<(), DropReason>)] = &[
        ("api.example.com", Ok(())),
        ("API.Example.COM", Ok(())),
        ("api.example.com:8443", Ok(())),
        ("api.example.com.", Ok(())),
        ("www.example.com", Err(DropReason::HostNotAllowed)),
        ("example.com", Err(DropReason::HostNotAllowed)),
        ("xapi.example.com", Err(DropReason::HostNotAllowed)),
        ("reviews.svc.cluster.local", Ok(())),
        ("a.b.svc.cluster.local:9080", Ok(())),
        // The wildcard needs a label before the suffix.
        ("svc.cluster.local", Err(DropReason::HostNotAllowed)),
        ("evilsvc.cluster.local", Err(DropReason::HostNotAllowed)),
        // Deny wins over allow.
        ("admin.svc.cluster.local", Err(DropReason::HostDenied)),
        ("ADMIN.svc.cluster.local:80", Err(DropReason::HostDenied)),
        ("db.internal.svc.cluster.local", Err(DropReason::HostDenied)),
        ("[2001:db8::1]:443", Ok(())),
        ("", Err(DropReason::HostNotAllowed)),
        ("bücher.example", Err(DropReason::HostNotAllowed)),
    ];
    for (host, want) in cases {
        assert_eq!(f.check(&get(&[("host", host)])), *want, "host {host:?}");
    }
    // The authority of an absolute-form target is the host.
    let ex = exchange_to(
        "10.0.0.2:80",
        request(
            "GET",
            "http://api.example.com/x",
            &[("host", "www.example.com")],
        ),
    );
    assert_eq!(f.check(&ex), Ok(()));
}

#[test]
fn deny_hosts_alone_keep_everything_else() {
    let f = filter(FilterConfig {
        deny_hosts: strings(&["*.example.com"]),
        ..FilterConfig::default()
    });
    assert_eq!(
        f.check(&get(&[("host", "a.example.com")])),
        Err(DropReason::HostDenied)
    );
    assert_eq!(f.check(&get(&[("host", "example.com")])), Ok(()));
    assert_eq!(f.check(&get(&[])), Ok(()));
}

#[test]
fn path_allow_and_deny_table() {
    let f = filter(FilterConfig {
        allow_paths: strings(&["/api/", "/graphql"]),
        deny_paths: strings(&["/api/internal", "/api/health"]),
        ..FilterConfig::default()
    });
    let cases: &[(&str, Result<(), DropReason>)] = &[
        ("/api/v1/items", Ok(())),
        ("/api/v1/items?token=/api/internal", Ok(())),
        ("/graphql", Ok(())),
        ("/graphqlx", Ok(())),
        ("/api", Err(DropReason::PathNotAllowed)),
        ("/API/v1", Err(DropReason::PathNotAllowed)),
        ("/static/app.js", Err(DropReason::PathNotAllowed)),
        ("/?q=/api/", Err(DropReason::PathNotAllowed)),
        ("/api/internal/users", Err(DropReason::PathDenied)),
        ("/api/healthz", Err(DropReason::PathDenied)),
        ("http://api.example.com/api/v1", Ok(())),
        (
            "http://api.example.com/api/internal",
            Err(DropReason::PathDenied),
        ),
        ("http://api.example.com", Err(DropReason::PathNotAllowed)),
        ("*", Err(DropReason::PathNotAllowed)),
        ("", Err(DropReason::PathNotAllowed)),
    ];
    for (target, want) in cases {
        let ex = exchange_to("10.0.0.2:80", request("GET", target, &[("host", "a")]));
        assert_eq!(f.check(&ex), *want, "target {target:?}");
    }
}

#[test]
fn request_path_and_host_of_each_target_form() {
    let cases = [
        ("GET", "/a/b?c#d", "h", "/a/b", "h"),
        ("GET", "http://x.com:81/p?q", "h", "/p", "x.com:81"),
        ("GET", "HTTPS://user:pw@x.com", "h", "/", "x.com"),
        ("GET", "http:///p", "h", "/p", "h"),
        ("CONNECT", "x.com:443", "h", "x.com:443", "x.com:443"),
        ("OPTIONS", "*", "h", "*", "h"),
        ("GET", "/redirect?to=http://y.com/", "h", "/redirect", "h"),
    ];
    for (method, target, host, path, want_host) in cases {
        let req = request(method, target, &[("host", host)]);
        assert_eq!(request_path(&req), path, "{target}");
        assert_eq!(request_host(&req), want_host, "{target}");
    }
}

#[test]
fn setting_errors_name_the_setting() {
    let cases = [
        (
            FilterConfig {
                allow_hosts: strings(&["api.*.com"]),
                ..FilterConfig::default()
            },
            FilterSetting::AllowHosts,
            "api.*.com",
        ),
        (
            FilterConfig {
                deny_hosts: strings(&["ok.com", ""]),
                ..FilterConfig::default()
            },
            FilterSetting::DenyHosts,
            "",
        ),
        (
            FilterConfig {
                deny_hosts: strings(&["*."]),
                ..FilterConfig::default()
            },
            FilterSetting::DenyHosts,
            "*.",
        ),
        (
            FilterConfig {
                allow_hosts: strings(&["http://a.com/"]),
                ..FilterConfig::default()
            },
            FilterSetting::AllowHosts,
            "http://a.com/",
        ),
        (
            FilterConfig {
                allow_paths: strings(&["api/v1"]),
                ..FilterConfig::default()
            },
            FilterSetting::AllowPaths,
            "api/v1",
        ),
        (
            FilterConfig {
                deny_paths: strings(&["/a b"]),
                ..FilterConfig::default()
            },
            FilterSetting::DenyPaths,
            "/a b",
        ),
        (
            FilterConfig {
                sample_rate: 1.5,
                ..FilterConfig::default()
            },
            FilterSetting::SampleRate,
            "1.5",
        ),
        (
            FilterConfig {
                sample_rate: -0.1,
                ..FilterConfig::default()
            },
            FilterSetting::SampleRate,
            "-0.1",
        ),
        (
            FilterConfig {
                sample_rate: f64::NAN,
                ..FilterConfig::default()
            },
            FilterSetting::SampleRate,
            "NaN",
        ),
        (
            FilterConfig {
                redact_headers: strings(&["authorization", "x api key"]),
                ..FilterConfig::default()
            },
            FilterSetting::RedactHeaders,
            "x api key",
        ),
        (
            FilterConfig {
                redact_headers: strings(&[""]),
                ..FilterConfig::default()
            },
            FilterSetting::RedactHeaders,
            "",
        ),
    ];
    for (cfg, setting, value) in cases {
        let e = Filter::new(&cfg).unwrap_err();
        assert_eq!((e.setting, e.value.as_str()), (setting, value), "{e}");
        assert!(
            e.to_string().starts_with(&format!("invalid {setting} ")),
            "{e}"
        );
    }
}

fn sampled_exchange(conn: u64, seq: u32) -> Exchange {
    let mut ex = get(&[("host", "a")]);
    ex.connection_id = conn;
    ex.request.seq = Some(Seq(seq));
    ex.request.ts = 1_700_000_000_000_000 + u64::from(seq);
    ex
}

#[test]
fn sampling_keeps_the_configured_share_reproducibly() {
    let rate = |r: f64| {
        filter(FilterConfig {
            sample_rate: r,
            ..FilterConfig::default()
        })
    };
    let exchanges: Vec<Exchange> = (0..4000u64)
        .map(|i| sampled_exchange(i / 8, (i % 8) as u32 * 1000))
        .collect();
    let kept = |f: &Filter| exchanges.iter().filter(|e| f.check(e).is_ok()).count();
    assert_eq!(kept(&rate(1.0)), 4000);
    assert_eq!(kept(&rate(0.0)), 0);
    for (r, lo, hi) in [(0.25, 900, 1100), (0.5, 1880, 2120), (0.9, 3520, 3680)] {
        let f = rate(r);
        let n = kept(&f);
        assert!((lo..=hi).contains(&n), "rate {r}: kept {n}");
        // Same exchanges, same draw: a second pass (or a replay) agrees exactly.
        let again = exchanges
            .iter()
            .filter(|e| rate(r).check(e).is_ok())
            .count();
        assert_eq!(again, n);
    }
    // A dropped exchange is counted as sampled.
    let f = rate(0.0);
    assert_eq!(f.check(&exchanges[0]), Err(DropReason::Sampled));
}

#[test]
fn sampling_draw_is_pinned() {
    // Pins the hash: changing it would change which exchanges a replay keeps.
    let f = filter(FilterConfig {
        sample_rate: 0.5,
        ..FilterConfig::default()
    });
    let draws: Vec<bool> = (0..16)
        .map(|i| f.check(&sampled_exchange(42, i * 100)).is_ok())
        .collect();
    let again: Vec<bool> = (0..16)
        .map(|i| f.check(&sampled_exchange(42, i * 100)).is_ok())
        .collect();
    assert_eq!(draws, again);
    assert_eq!(mix(0), 0xe220_a839_7b1d_cdaf);
    assert_eq!(mix(1), 0x910a_2dec_8902_5cc1);
}

#[test]
fn sampling_applies_after_the_other_checks() {
    let f = filter(FilterConfig {
        sample_rate: 0.0,
        deny_paths: strings(&["/api/"]),
        ..FilterConfig::default()
    });
    assert_eq!(f.check(&get(&[])), Err(DropReason::PathDenied));
}

#[test]
fn default_redactions_are_the_credential_headers() {
    assert_eq!(
        default_redactions(),
        [
            "authorization",
            "cookie",
            "set-cookie",
            "x-api-key",
            "proxy-authorization"
        ]
    );
}

#[test]
fn redaction_replaces_values_in_request_and_response() {
    let mut redact = default_redactions();
    redact.push("X-Custom-Secret".into());
    let f = filter(FilterConfig {
        redact_headers: redact,
        ..FilterConfig::default()
    });
    let mut ex = get(&[
        ("host", "api.example.com"),
        ("authorization", "Bearer abc.def.ghi"),
        ("cookie", "sid=1"),
        ("cookie", "theme=dark"),
        ("x-custom-secret", "s3cr3t"),
        ("x-api-key-id", "not-a-secret"),
        ("accept", "*/*"),
    ]);
    ex.response = Some(Box::new(response(&[
        ("set-cookie", "sid=2; HttpOnly"),
        ("content-type", "application/json"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
    ])));
    f.redact(&mut ex);
    let pairs = |m: &Message| {
        m.headers
            .iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect::<Vec<_>>()
    };
    let own = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        pairs(&ex.request),
        own(&[
            ("host", "api.example.com"),
            ("authorization", "REDACTED"),
            ("cookie", "REDACTED"),
            ("cookie", "REDACTED"),
            ("x-custom-secret", "REDACTED"),
            ("x-api-key-id", "not-a-secret"),
            ("accept", "*/*"),
        ])
    );
    assert_eq!(
        pairs(ex.response.as_ref().unwrap()),
        own(&[
            ("set-cookie", "REDACTED"),
            ("content-type", "application/json"),
            ("proxy-authorization", "REDACTED"),
        ])
    );
}

#[test]
fn redaction_handles_unanswered_requests_and_no_config() {
    let f = filter(FilterConfig {
        redact_headers: strings(&["Authorization"]),
        ..FilterConfig::default()
    });
    let mut ex = get(&[("authorization", "x")]);
    ex.response = None;
    f.redact(&mut ex);
    assert_eq!(ex.request.header("authorization"), Some(REDACTED));
    let before = get(&[("authorization", "x")]);
    let mut after = before.clone();
    Filter::new(&FilterConfig::default())
        .unwrap()
        .redact(&mut after);
    assert_eq!(after, before);
}

#[test]
fn apply_counts_every_outcome_and_redacts_what_it_keeps() {
    let f = filter(FilterConfig {
        discovery_config: Some(AKTO_DOC_EXAMPLE.into()),
        ignore_ip_traffic: true,
        ignore_cloud_metadata_calls: true,
        deny_hosts: strings(&["*.blocked.example"]),
        deny_paths: strings(&["/health"]),
        redact_headers: default_redactions(),
        ..FilterConfig::default()
    });
    let xfcc = ("x-forwarded-client-cert", XFCC_BOOKINFO);
    let mut exchanges = [
        get(&[("host", "reviews"), xfcc, ("authorization", "t")]),
        get(&[("host", "ratings"), xfcc]),
        get(&[("host", "169.254.169.254"), xfcc]),
        get(&[("host", "10.0.0.5"), xfcc]),
        get(&[("host", "reviews")]),
        get(&[("host", "x.blocked.example"), xfcc]),
        exchange_to(
            "10.0.0.2:80",
            request("GET", "/healthz", &[("host", "reviews"), xfcc]),
        ),
    ];
    let mut stats = FilterStats::default();
    let kept: Vec<bool> = exchanges
        .iter_mut()
        .map(|ex| f.apply(ex, &mut stats))
        .collect();
    assert_eq!(kept, [true, true, false, false, false, false, false]);
    assert_eq!(exchanges[0].request.header("authorization"), Some(REDACTED));
    assert_eq!(stats.passed, 2);
    let by: Vec<(&str, u64)> = DropReason::ALL
        .iter()
        .map(|r| (r.as_str(), stats.dropped_by(*r)))
        .collect();
    assert_eq!(
        by,
        [
            ("cloud_metadata", 1),
            ("ip_host", 1),
            ("discovery_rule", 1),
            ("host_denied", 1),
            ("host_not_allowed", 0),
            ("path_denied", 1),
            ("path_not_allowed", 0),
            ("sampled", 0),
        ]
    );
    assert_eq!(stats.dropped_total(), 5);
    let mut sum = FilterStats::default();
    sum.add(&stats);
    sum.add(&stats);
    assert_eq!((sum.passed, sum.dropped_total()), (4, 10));
}

#[test]
fn drop_reasons_are_indexed_in_order_with_unique_labels() {
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
        assert_eq!(r.to_string(), r.as_str());
    }
    let mut labels: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), DropReason::ALL.len());
}

#[test]
fn default_filter_is_a_noop() {
    let f = filter(FilterConfig::default());
    assert!(f.is_noop());
    assert!(Filter::new(&FilterConfig::default()).unwrap().is_noop());
    assert_eq!(f.check(&get(&[])), Ok(()));
    let with_redaction = filter(FilterConfig {
        redact_headers: default_redactions(),
        ..FilterConfig::default()
    });
    assert!(!with_redaction.is_noop());
}

#[test]
fn host_name_strips_port_brackets_and_trailing_dot() {
    let cases = [
        ("a.com", "a.com"),
        ("A.com.:8080", "A.com"),
        ("[::1]:80", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        (" a.com ", "a.com"),
        ("[", ""),
        ("", ""),
        (":80", ""),
    ];
    for (host, want) in cases {
        assert_eq!(host_name(host), want, "{host:?}");
    }
}

fn everything() -> Filter {
    filter(FilterConfig {
        discovery_config: Some(
            r#"[{"key":{"eq":"host","ifAbsent":"reject"},"value":{"regex":"(?i)^[a-z0-9.:\\[\\]-]*$"}},
                {"key":{"eq":"x-a","ifAbsent":"accept"},"value":{"regex":"^.{0,3}$"}}]"#
                .into(),
        ),
        ignore_ip_traffic: true,
        ignore_cloud_metadata_calls: true,
        allow_hosts: strings(&["*.example.com", "[::1]"]),
        deny_hosts: strings(&["bad.example.com"]),
        allow_paths: strings(&["/"]),
        deny_paths: strings(&["/x"]),
        sample_rate: 0.5,
        redact_headers: default_redactions(),
    })
}

proptest! {
    #[test]
    fn any_header_content_is_handled_without_panic(
        host in any::<String>(),
        target in any::<String>(),
        method in "[A-Z]{1,8}",
        name in "[a-z-]{1,12}",
        value in any::<String>(),
        conn in any::<u64>(),
    ) {
        let f = everything();
        let headers = [("host", host.as_str()), (name.as_str(), value.as_str()), ("x-a", value.as_str())];
        let mut ex = exchange_to("10.0.0.2:80", request(&method, &target, &headers));
        ex.connection_id = conn;
        let _ = f.check(&ex);
        let mut stats = FilterStats::default();
        f.apply(&mut ex, &mut stats);
        prop_assert_eq!(stats.passed + stats.dropped_total(), 1);
        let _ = (request_path(&ex.request), request_host(&ex.request), host_name(&host));
    }

    #[test]
    fn any_pattern_is_accepted_or_rejected_without_panic(p in any::<String>()) {
        let _ = Filter::new(&FilterConfig {
            allow_hosts: vec![p.clone()],
            deny_paths: vec![p.clone()],
            redact_headers: vec![p.clone()],
            ..FilterConfig::default()
        });
        let _ = parse_discovery_config(&p);
        let _ = Filter::new(&FilterConfig {
            discovery_config: Some(format!(r#"[{{"key":{{"eq":"a"}},"value":{{"regex":{}}}}}]"#,
                serde_json::Value::String(p))),
            ..FilterConfig::default()
        });
    }
}
