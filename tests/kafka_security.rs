//! Kafka over TLS with SASL/SCRAM-SHA-512, as Amazon MSK's port 9096 asks for, against a broker
//! started per test: tansu requiring SCRAM authentication, behind stunnel for TLS (tansu 0.6.0
//! has no TLS listener of its own; see `common::secure_broker`). The receiver is given only the
//! settings a user gives it (`MIRROR_KAFKA_OPTIONS` or `--kafka-option`), with `ssl.ca.location`
//! naming a CA made by the test and librdkafka's default hostname verification on.
//!
//! * `replay_over_sasl_ssl_matches_json_lines`: `replay` of a real nginx capture delivers
//!   exactly the records the JSON-lines sink writes, keyed by connection, read back by a
//!   consumer with the same settings.
//! * `wrong_ca_spools_and_says_why`: a CA that did not sign the broker's certificate: the TLS
//!   handshake fails, `replay` exits non-zero naming the spool and the verification failure,
//!   nothing reaches the topic; a second run with the right CA delivers the spooled records
//!   too.
//! * `wrong_password_spools_and_says_why`: SCRAM with a wrong password fails, and says so; the
//!   records stay in the spool.
//! * `no_sasl_is_refused`: TLS without SASL (`security.protocol=SSL`) gets nothing in: the
//!   broker does require authentication, so the first test's delivery went through SCRAM.
//! * `plaintext_to_the_tls_port_spools_and_says_why`: no security settings at all (the usual
//!   slip with MSK's 9094/9096): the records stay in the spool, and librdkafka's log says the
//!   connection was dropped while it asked for ApiVersions (it adds "might be caused by
//!   incorrect security.protocol configuration" only when the peer closes rather than resets,
//!   so that hint is not asserted).
//!
//! Prerequisites: tansu with SQLite storage (`cargo install tansu --features dynostore,libsql
//! --locked`; found like tests/kafka.rs finds it), stunnel (`stunnel4` or `stunnel` on PATH, or
//! `STUNNEL_BIN`), openssl, and the shared corpus. Without one the tests print why and pass,
//! unless `TANSU_REQUIRED` is set, which turns the skip into a failure (`common::skip`, as for
//! tests/kafka.rs).

mod common;

use common::secure_broker::{PASSWORD, SecureBroker, openssl_bin, stunnel_bin};
use common::{
    Msg, Need, TopicReader, assert_same_records, kafka_prerequisites, parse_record, run, skip,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TOPIC: &str = "akto.api.logs";
/// A replay that cannot deliver gives up within its 30 s flush; past this it hangs.
const REPLAY_LIMIT: Duration = Duration::from_secs(90);

/// The capture, a broker with TLS and SCRAM and topic [`TOPIC`], and the JSON lines a replay of
/// the capture writes; `None` after reporting the skip when a prerequisite is missing.
fn prerequisites(test: &str) -> Option<(PathBuf, SecureBroker, Vec<String>)> {
    let (tansu, corpus) = kafka_prerequisites(test, &["real/real-nginx-small.pcap"])?;
    let stunnel = stunnel_bin()
        .map_err(|e| skip(Need::Kafka, test, &e))
        .ok()?;
    let openssl = openssl_bin()
        .map_err(|e| skip(Need::Kafka, test, &e))
        .ok()?;
    let broker = SecureBroker::start(&tansu, &stunnel, &openssl, TOPIC, 3)
        .map_err(|e| skip(Need::Kafka, test, &e))
        .ok()?;
    let capture = corpus.join("real/real-nginx-small.pcap");
    let want = common::replay_json_lines(&capture, Duration::from_secs(30));
    Some((capture, broker, want))
}

/// `replay CAPTURE --kafka-brokers BROKER --spool-dir SPOOL` with `--kafka-option K=V` for
/// each of `options`.
fn replay(
    capture: &Path,
    broker: &SecureBroker,
    spool: &Path,
    options: &[(String, String)],
) -> Command {
    let mut cmd = common::receiver();
    cmd.arg("replay")
        .arg(capture)
        .args(["--kafka-brokers", &broker.bootstrap()])
        .arg("--spool-dir")
        .arg(spool);
    for (k, v) in options {
        cmd.args(["--kafka-option", &format!("{k}={v}")]);
    }
    cmd
}

/// Asserts the payloads read are `want` as a multiset, and the keys connection ids each in one
/// partition.
fn assert_records(msgs: &[Msg], want: &[String], what: &str) {
    let got: Vec<String> = msgs.iter().map(|m| m.payload.clone()).collect();
    for p in &got {
        parse_record(p);
    }
    assert_same_records(got, want.to_vec(), what);
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    for m in msgs {
        let key = String::from_utf8(m.key.clone().expect("message without key")).unwrap();
        assert!(
            key.parse::<u64>().is_ok(),
            "key {key:?} is not a connection id"
        );
        let p = *partition_of.entry(key.clone()).or_insert(m.partition);
        assert_eq!(p, m.partition, "key {key} in two partitions");
    }
}

/// Reads `reader` until `n` messages came (at most 30 s), then 1 s more for any beyond them.
fn read(reader: &mut TopicReader, n: usize) -> bool {
    let complete = reader.read_until(n, Duration::from_secs(30));
    reader.linger(Duration::from_secs(1));
    complete
}

/// A replay with `options` that the broker must not take: it ends (no hang) within
/// [`REPLAY_LIMIT`], non-zero, its stderr naming the spool with all `records` in it and
/// containing each of `why`; nothing reaches the topic. Returns the spool directory.
fn assert_refused(
    test: &str,
    capture: &Path,
    broker: &SecureBroker,
    options: &[(String, String)],
    records: usize,
    why: &[&str],
) -> tempfile::TempDir {
    let started = Instant::now();
    let spool = tempfile::tempdir().unwrap();
    let f = run(
        &mut replay(capture, broker, spool.path(), options),
        REPLAY_LIMIT,
    );
    let elapsed = started.elapsed();
    let context = format!(
        "{test}: replay exit {}\nstderr:\n{}\n{}",
        f.status,
        f.stderr,
        broker.logs()
    );
    assert!(!f.status.success(), "replay succeeded\n{context}");
    let left = format!(
        "{records} records are left in the spool at {}",
        spool.path().display()
    );
    assert!(f.stderr.contains(&left), "no {left:?}\n{context}");
    for w in why {
        assert!(
            f.stderr.contains(w),
            "no {w:?} in the replay's stderr\n{context}"
        );
    }
    let mut reader = broker.reader(TOPIC);
    reader.linger(Duration::from_secs(2));
    assert!(
        reader.msgs.is_empty(),
        "{} records reached the topic\n{context}",
        reader.msgs.len()
    );
    eprintln!(
        "{test}: refused, {records} records spooled, replay ended in {elapsed:.1?}; it said:"
    );
    for line in f.stderr.lines().filter(|l| !l.contains("replay finished")) {
        eprintln!("  {line}");
    }
    spool
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn replay_over_sasl_ssl_matches_json_lines() {
    let test = "replay_over_sasl_ssl_matches_json_lines";
    let Some((capture, broker, want)) = prerequisites(test) else {
        return;
    };
    let started = Instant::now();
    assert!(
        want.len() >= 16,
        "JSON-lines replay gave {} records",
        want.len()
    );

    // The README's form for Amazon MSK with SASL/SCRAM, plus the test's CA.
    let spool = tempfile::tempdir().unwrap();
    let options: Vec<String> = broker
        .client_options(PASSWORD, &broker.ca)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let f = run(
        common::receiver()
            .arg("replay")
            .arg(&capture)
            .args(["--kafka-brokers", &broker.bootstrap()])
            .arg("--spool-dir")
            .arg(spool.path())
            .env("MIRROR_KAFKA_OPTIONS", options.join(";")),
        REPLAY_LIMIT,
    );
    assert!(
        f.status.success(),
        "replay over SASL_SSL failed: {}\nstderr:\n{}\n{}",
        f.status,
        f.stderr,
        broker.logs()
    );
    assert!(f.stdout.is_empty(), "records on stdout with Kafka set");

    let mut reader = broker.reader(TOPIC);
    let complete = read(&mut reader, want.len());
    assert!(
        complete,
        "{} of {} records in Kafka\nreplay stderr:\n{}\n{}",
        reader.msgs.len(),
        want.len(),
        f.stderr,
        broker.logs()
    );
    assert_records(&reader.msgs, &want, "replay over SASL_SSL vs JSON lines");
    let logs = broker.logs();
    assert!(
        logs.contains("Service [kafka] accepted connection"),
        "no TLS connection in stunnel's log:\n{logs}"
    );
    eprintln!(
        "{test}: {} records over TLS + SCRAM-SHA-512, {:.1?}",
        reader.msgs.len(),
        started.elapsed()
    );
}

#[test]
fn wrong_ca_spools_and_says_why() {
    let test = "wrong_ca_spools_and_says_why";
    let Some((capture, broker, want)) = prerequisites(test) else {
        return;
    };
    let spool = assert_refused(
        test,
        &capture,
        &broker,
        &broker.client_options(PASSWORD, &broker.other_ca),
        want.len(),
        // librdkafka usually adds "broker certificate could not be verified, verify that
        // ssl.ca.location is correctly configured", but not when the failure surfaces as a
        // transport error (seen now and then), so only this part is asserted.
        &["certificate verify failed"],
    );

    // Not lost: with the right CA the next run delivers what the first one spooled, and its own.
    let f = run(
        &mut replay(
            &capture,
            &broker,
            spool.path(),
            &broker.client_options(PASSWORD, &broker.ca),
        ),
        REPLAY_LIMIT,
    );
    assert!(
        f.status.success(),
        "replay with the right CA failed: {}\nstderr:\n{}\n{}",
        f.status,
        f.stderr,
        broker.logs()
    );
    let mut reader = broker.reader(TOPIC);
    let twice: Vec<String> = want.iter().chain(&want).cloned().collect();
    assert!(
        read(&mut reader, twice.len()),
        "{} of {} records (spooled + new) in Kafka\nstderr:\n{}",
        reader.msgs.len(),
        twice.len(),
        f.stderr
    );
    assert_records(
        &reader.msgs,
        &twice,
        "spooled and new records after the CA was fixed",
    );
}

#[test]
fn wrong_password_spools_and_says_why() {
    let test = "wrong_password_spools_and_says_why";
    let Some((capture, broker, want)) = prerequisites(test) else {
        return;
    };
    assert_refused(
        test,
        &capture,
        &broker,
        &broker.client_options("not-the-password", &broker.ca),
        want.len(),
        &["SASL SCRAM authentication failed"],
    );
}

#[test]
fn no_sasl_is_refused() {
    let test = "no_sasl_is_refused";
    let Some((capture, broker, want)) = prerequisites(test) else {
        return;
    };
    let options: Vec<(String, String)> = [
        ("security.protocol".to_owned(), "SSL".to_owned()),
        (
            "ssl.ca.location".to_owned(),
            broker.ca.display().to_string(),
        ),
    ]
    .into();
    // TLS works (the connection reaches UP), then the broker hangs up on the first request
    // that is not ApiVersions or SASL.
    assert_refused(
        test,
        &capture,
        &broker,
        &options,
        want.len(),
        &["SSL connection closed by peer", "in state UP"],
    );
    let logs = broker.logs();
    assert!(
        logs.contains("NotAuthenticated"),
        "the broker did not log refusing an unauthenticated client:\n{logs}"
    );
}

#[test]
fn plaintext_to_the_tls_port_spools_and_says_why() {
    let test = "plaintext_to_the_tls_port_spools_and_says_why";
    let Some((capture, broker, want)) = prerequisites(test) else {
        return;
    };
    assert_refused(
        test,
        &capture,
        &broker,
        &[],
        want.len(),
        &["in state APIVERSION_QUERY"],
    );
}
