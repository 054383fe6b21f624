use super::*;

fn meta(seq: u32) -> DataMeta {
    DataMeta {
        ts: 5_000_000,
        seq: Seq(seq),
        ack: Some(Seq(77)),
        midstream: false,
    }
}

/// Pushes `data` and steps until the parser needs more, answering heads with `method`.
fn run(p: &mut Parser, data: &[u8], method: Option<&str>) -> Vec<Step> {
    let cfg = HttpConfig::default();
    p.push(data, meta(1));
    drain(p, method, &cfg)
}

fn drain(p: &mut Parser, method: Option<&str>, cfg: &HttpConfig) -> Vec<Step> {
    let mut out = Vec::new();
    loop {
        match p.step(cfg) {
            Step::NeedMore => return out,
            Step::Head => {
                p.start_body(method).unwrap();
                out.push(Step::Head);
            }
            s => out.push(s),
        }
    }
}

fn complete(steps: &[Step]) -> Vec<&Message> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Complete(m) => Some(&**m),
            _ => None,
        })
        .collect()
}

#[test]
fn request_with_content_length_body() {
    let mut p = Parser::new(Role::Request);
    let steps = run(
        &mut p,
        b"POST /api?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
        None,
    );
    let msgs = complete(&steps);
    assert_eq!(msgs.len(), 1);
    let m = msgs[0];
    assert_eq!(
        m.start,
        StartLine::Request {
            method: "POST".into(),
            target: "/api?x=1".into()
        }
    );
    assert_eq!(m.version, 1);
    assert_eq!(m.header("host"), Some("a"));
    assert_eq!(m.body, b"{\"a\":1}");
    assert!(m.complete);
    assert_eq!(m.seq, Some(Seq(1)));
    assert_eq!(m.ack, Some(Seq(77)));
    assert_eq!(m.ts, 5_000_000);
}

#[test]
fn head_split_across_pushes_waits_for_more() {
    let mut p = Parser::new(Role::Request);
    assert!(run(&mut p, b"GET / HT", None).is_empty());
    let steps = run(&mut p, b"TP/1.1\r\nHost: a\r\n\r\n", None);
    assert_eq!(complete(&steps).len(), 1);
}

#[test]
fn chunked_body_is_dechunked_and_trailers_kept() {
    let mut p = Parser::new(Role::Response);
    let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Checksum: 9\r\n\r\n";
    // Byte by byte: every split point must work.
    let cfg = HttpConfig::default();
    let mut steps = Vec::new();
    for (i, b) in wire.iter().enumerate() {
        p.push(std::slice::from_ref(b), meta(i as u32));
        steps.extend(drain(&mut p, Some("GET"), &cfg));
    }
    let msgs = complete(&steps);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].body, b"Wikipedia");
    assert_eq!(msgs[0].header("x-checksum"), Some("9"));
}

#[test]
fn close_delimited_body_ends_with_the_stream() {
    let mut p = Parser::new(Role::Response);
    let steps = run(&mut p, b"HTTP/1.0 200 OK\r\n\r\nall of it", Some("GET"));
    assert!(complete(&steps).is_empty());
    match p.finish(&HttpConfig::default()) {
        Some(Step::Complete(m)) => {
            assert_eq!(m.body, b"all of it");
            assert!(m.complete);
            assert_eq!(m.version, 0);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn responses_without_bodies() {
    for (status, method) in [(204, "GET"), (304, "GET"), (200, "HEAD"), (100, "POST")] {
        let mut p = Parser::new(Role::Response);
        let wire = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: 50\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        );
        let steps = run(&mut p, wire.as_bytes(), Some(method));
        let msgs = complete(&steps);
        assert_eq!(msgs.len(), 2, "{status} to {method}");
        assert_eq!(msgs[0].status(), Some(status));
        assert!(msgs[0].body.is_empty());
        assert_eq!(msgs[1].status(), Some(404));
    }
}

#[test]
fn pipelined_requests_in_one_segment() {
    let mut p = Parser::new(Role::Request);
    let steps = run(
        &mut p,
        b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nHEAD /c HTTP/1.1\r\n\r\n",
        None,
    );
    let targets: Vec<_> = complete(&steps)
        .iter()
        .map(|m| match &m.start {
            StartLine::Request { target, .. } => target.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(targets, ["/a", "/b", "/c"]);
    // Each message knows where it started.
    let seqs: Vec<_> = complete(&steps).iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [Some(Seq(1)), Some(Seq(20)), Some(Seq(39))]);
}

#[test]
fn capture_starting_mid_body_seeks_the_next_message() {
    let mut p = Parser::new(Role::Response);
    let steps = run(
        &mut p,
        b"ody of an earlier response\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
        Some("GET"),
    );
    let msgs = complete(&steps);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].status(), Some(404));
    assert_eq!(p.skipped_bytes, 28);
}

#[test]
fn gap_inside_a_sized_body_keeps_the_message_and_its_framing() {
    let mut p = Parser::new(Role::Response);
    let cfg = HttpConfig::default();
    let steps = run(
        &mut p,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123",
        Some("GET"),
    );
    assert!(complete(&steps).is_empty());
    let (step, lost_framing) = p.gap(3, &cfg);
    assert!(step.is_none());
    assert!(!lost_framing);
    let steps = run(&mut p, b"789HTTP/1.1 204 No Content\r\n\r\n", Some("GET"));
    let msgs = complete(&steps);
    assert_eq!(msgs.len(), 2, "{steps:?}");
    assert_eq!(msgs[0].status(), Some(200));
    assert_eq!(msgs[0].body, b"0123", "what came before the gap");
    assert_eq!(msgs[0].missing, 3);
    assert!(msgs[0].complete);
    assert_eq!(msgs[1].status(), Some(204));
    assert_eq!(msgs[1].missing, 0);
}

#[test]
fn gap_past_the_end_of_a_sized_body_completes_it_and_seeks_the_next() {
    let mut p = Parser::new(Role::Response);
    let cfg = HttpConfig::default();
    run(
        &mut p,
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab",
        Some("GET"),
    );
    let (step, lost_framing) = p.gap(30, &cfg);
    let Some(Step::Complete(m)) = step else {
        panic!("{step:?}")
    };
    assert_eq!((m.body.as_slice(), m.missing), (&b"ab"[..], 4));
    assert!(lost_framing, "the next message began inside the gap");
    let steps = run(
        &mut p,
        b"tail of it\r\nHTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n",
        Some("GET"),
    );
    assert_eq!(complete(&steps)[0].status(), Some(404));
}

/// A chunked body whose chunk-size lines fall in gaps: the parser recovers at a later chunk-size
/// line that the next one confirms, and the message ends at its last chunk.
#[test]
fn chunked_framing_lost_in_a_gap_recovers_at_a_confirmed_chunk_size_line() {
    let mut p = Parser::new(Role::Response);
    let cfg = HttpConfig::default();
    run(
        &mut p,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        Some("GET"),
    );
    // Lost: "lo\r\n6\r\n world" and the start of the next chunk's data.
    assert_eq!(p.gap(20, &cfg), (None, false));
    assert!(p.recovering());
    let steps = run(
        &mut p,
        b"xyz\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n",
        Some("GET"),
    );
    let msgs = complete(&steps);
    assert_eq!(msgs.len(), 1, "{steps:?}");
    assert_eq!(msgs[0].body, b"hel");
    assert_eq!(msgs[0].missing, 20);
    assert_eq!(msgs[0].recovered, Some(Recovery::ChunkSize));
    assert!(!p.recovering());
}

#[test]
fn chunked_framing_lost_in_a_gap_ends_at_the_next_status_line() {
    let mut p = Parser::new(Role::Response);
    let cfg = HttpConfig::default();
    run(
        &mut p,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        Some("GET"),
    );
    p.gap(100, &cfg);
    // The rest of the body, its last chunk lost too, then the next response.
    let steps = run(
        &mut p,
        b"more data\nno chunk line\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        Some("GET"),
    );
    let msgs = complete(&steps);
    assert_eq!(msgs.len(), 2, "{steps:?}");
    assert_eq!(
        (msgs[0].status(), msgs[0].body.as_slice()),
        (Some(200), &b"hello"[..])
    );
    assert_eq!(msgs[0].recovered, Some(Recovery::StartLine));
    assert_eq!(
        (msgs[1].status(), msgs[1].body.as_slice()),
        (Some(201), &b"ok"[..])
    );
    assert_eq!(msgs[1].missing, 0);
}

#[test]
fn a_candidate_chunk_line_not_confirmed_by_the_next_is_passed_over() {
    let mut p = Parser::new(Role::Response);
    let cfg = HttpConfig::default();
    run(
        &mut p,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        Some("GET"),
    );
    p.gap(10, &cfg);
    // "2\r\n" looks like a chunk-size line, but 2 bytes on there is no CRLF.
    let steps = run(&mut p, b"\n2\r\nabcdef\r\n", Some("GET"));
    assert!(complete(&steps).is_empty());
    assert!(p.recovering());
    let Some(Step::Complete(m)) = p.finish(&cfg) else {
        panic!("the stream's end ends the message")
    };
    assert_eq!(m.recovered, Some(Recovery::End));
    assert_eq!(m.body, b"hel");
}

#[test]
fn recovering_message_ends_where_the_peer_acknowledged() {
    let mut p = Parser::new(Role::Response);
    let cfg = HttpConfig::default();
    // Stream positions: the head starts at 1 (see `meta`).
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel";
    run(&mut p, head, Some("GET"));
    p.gap(10, &cfg);
    let after_gap = 1 + head.len() as u32 + 10;
    p.push(b"body bytes", meta(after_gap));
    assert!(complete(&drain(&mut p, Some("GET"), &cfg)).is_empty());
    // The client's next request acknowledged everything up to here.
    p.end_by(Some(Seq(after_gap + 10)));
    let steps = drain(&mut p, Some("GET"), &cfg);
    let msgs = complete(&steps);
    assert_eq!(msgs.len(), 1, "{steps:?}");
    assert_eq!(msgs[0].recovered, Some(Recovery::Peer));
    p.push(b"HTTP/1.1 304 Not Modified\r\n\r\n", meta(after_gap + 10));
    let steps = drain(&mut p, Some("GET"), &cfg);
    assert_eq!(complete(&steps)[0].status(), Some(304));
}

#[test]
fn gzip_body_cut_by_a_gap_decodes_what_came_before() {
    use std::io::Write;
    let text: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    let gz = e.finish().unwrap();
    let cfg = HttpConfig::default();
    let mut p = Parser::new(Role::Response);
    let mut wire = format!(
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    let half = gz.len() / 2;
    wire.extend_from_slice(&gz[..half]);
    run(&mut p, &wire, Some("GET"));
    let (step, lost_framing) = p.gap((gz.len() - half) as u64, &cfg);
    assert!(!lost_framing, "the gap ends where the body does");
    let Some(Step::Complete(m)) = step else {
        panic!("{step:?}")
    };
    assert!(m.decoded && !m.body.is_empty());
    assert!(text.as_bytes().starts_with(&m.body), "a prefix of the text");
    assert_eq!(m.missing, (gz.len() - half) as u64);
}

#[test]
fn gap_inside_a_head_resyncs_at_the_next_message() {
    let mut p = Parser::new(Role::Request);
    run(&mut p, b"GET /lost HTTP/1.1\r\nHo", None);
    let (dropped, lost_framing) = p.gap(40, &HttpConfig::default());
    assert!(lost_framing);
    assert!(matches!(
        dropped,
        Some(Step::Dropped {
            had_head: false,
            reason: DropReason::Gap,
            ..
        })
    ));
    let steps = run(&mut p, b"er: x\r\n\r\nGET /next HTTP/1.1\r\n\r\n", None);
    let msgs = complete(&steps);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].method(), Some("GET"));
}

#[test]
fn parse_error_is_counted_and_parsing_resumes() {
    let mut p = Parser::new(Role::Request);
    let steps = run(
        &mut p,
        b"GET /x HTTP/1.1\r\nBad Header\r\n\r\nGET /ok HTTP/1.1\r\n\r\n",
        None,
    );
    assert!(matches!(
        steps[0],
        Step::Dropped {
            reason: DropReason::Parse(_),
            ..
        }
    ));
    assert_eq!(complete(&steps).len(), 1);
}

#[test]
fn conflicting_content_lengths_are_rejected() {
    let mut p = Parser::new(Role::Request);
    p.push(
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        meta(1),
    );
    assert_eq!(p.step(&HttpConfig::default()), Step::Head);
    assert_eq!(p.start_body(None), Err(ParseError::ContentLength));
}

#[test]
fn body_cap_truncates_and_marks() {
    let mut p = Parser::new(Role::Request);
    let cfg = HttpConfig {
        max_body_bytes: 4,
        ..HttpConfig::default()
    };
    p.push(
        b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789GET / HTTP/1.1\r\n\r\n",
        meta(1),
    );
    let steps = drain(&mut p, None, &cfg);
    let msgs = complete(&steps);
    assert_eq!(msgs[0].body, b"0123");
    assert!(msgs[0].body_truncated);
    assert_eq!(msgs.len(), 2, "framing continues after the cap");
}

#[test]
fn gzip_body_is_decoded_on_completion() {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b"{\"hello\":\"world\"}").unwrap();
    let gz = e.finish().unwrap();
    let mut wire = format!(
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    wire.extend_from_slice(&gz);
    let mut p = Parser::new(Role::Response);
    let steps = run(&mut p, &wire, Some("GET"));
    let m = complete(&steps)[0];
    assert_eq!(m.body, b"{\"hello\":\"world\"}");
    assert!(m.decoded);
}

#[test]
fn oversized_head_is_abandoned() {
    let mut p = Parser::new(Role::Request);
    let cfg = HttpConfig {
        max_head_bytes: 64,
        ..HttpConfig::default()
    };
    p.push(b"GET / HTTP/1.1\r\nX: ", meta(1));
    p.push(&[b'a'; 100], meta(20));
    let steps = drain(&mut p, None, &cfg);
    assert!(matches!(
        steps[0],
        Step::Dropped {
            reason: DropReason::Parse(ParseError::HeadTooLarge),
            ..
        }
    ));
}

#[test]
fn switching_protocols_ends_parsing() {
    let mut p = Parser::new(Role::Response);
    let steps = run(
        &mut p,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello HTTP/1.1 200 OK\r\n\r\n",
        Some("GET"),
    );
    assert_eq!(complete(&steps).len(), 1);
    assert!(p.in_tunnel());
}

#[test]
fn header_values_keep_valid_text_and_replace_invalid_utf8() {
    let mut p = Parser::new(Role::Request);
    // A valid head (with non-ASCII UTF-8 in a value), then one with a byte that is not UTF-8;
    // both with a chunked trailer of the same kinds.
    let mut data = b"GET /a HTTP/1.1\r\nX-Name: caf\xc3\xa9\r\nHost: h\r\n\r\n".to_vec();
    data.extend_from_slice(b"GET /b HTTP/1.1\r\nX-Name: caf\xe9\r\nHost: h\r\n\r\n");
    data.extend_from_slice(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    data.extend_from_slice(b"0\r\nX-Trailer: \xff ok\r\nX-Other: fin\xc3\xa9\r\n\r\n");
    let steps = run(&mut p, &data, None);
    let msgs = complete(&steps);
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0].header("x-name"), Some("caf\u{e9}"));
    assert_eq!(msgs[1].header("x-name"), Some("caf\u{fffd}"));
    assert_eq!(msgs[1].header("host"), Some("h"));
    assert_eq!(msgs[2].header("x-trailer"), Some("\u{fffd} ok"));
    assert_eq!(msgs[2].header("x-other"), Some("fin\u{e9}"));
}

/// After framing was lost, the tail of a body that does not end in a newline does not hide the
/// head that starts the next segment (nor glue itself onto its method).
#[test]
fn head_at_a_segment_start_is_found_after_a_body_tail_without_newline() {
    for role in [Role::Request, Role::Response] {
        let mut p = Parser::new(role);
        let cfg = HttpConfig::default();
        p.gap(10, &cfg);
        p.push(b"{\"tail\":1}", meta(100));
        assert!(drain(&mut p, Some("GET"), &cfg).is_empty());
        let head: &[u8] = match role {
            Role::Request => b"GET /next HTTP/1.1\r\n\r\n",
            Role::Response => b"HTTP/1.1 204 No Content\r\n\r\n",
        };
        p.push(head, meta(110));
        let steps = drain(&mut p, Some("GET"), &cfg);
        let msgs = complete(&steps);
        assert_eq!(msgs.len(), 1, "{role:?}: {steps:?}");
        match role {
            Role::Request => assert_eq!(msgs[0].method(), Some("GET")),
            Role::Response => assert_eq!(msgs[0].status(), Some(204)),
        }
    }
}
