//! Arbitrary bytes as both directions of an HTTP/2 connection (after the client's preface, or
//! joined mid-way),
//! split into pieces the input chooses, some of them lost (gaps): no panic, bounded buffering, and every pair reported
//! holds a request with a method or path only where a header block decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirror_receiver::http2::{Connection, PREFACE};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut % 61) + 1;
    // Half the inputs as a connection joined mid-way (frames found from the bytes, HPACK
    // without the older table entries), half from the preface.
    let mut c = if cut % 2 == 0 {
        Connection::joined(4096)
    } else {
        let mut c = Connection::new(4096);
        c.data(true, PREFACE, 0);
        c
    };
    // Even pieces from the client, odd ones from the server.
    for (i, piece) in rest.chunks(cut).enumerate() {
        // A piece that starts with 0xff is lost instead: a gap of its length.
        if piece[0] == 0xff {
            c.gap(i % 2 == 0, piece.len() as u64);
        } else {
            c.data(i % 2 == 0, piece, i as u64);
        }
        for (req, resp) in c.pairs() {
            assert!(req.body.len() <= 4096);
            assert!(resp.is_none_or(|r| r.body.len() <= 4096));
        }
    }
    c.close();
    let reported = c.pairs().count() as u64;
    assert!(reported <= c.stats.streams, "{reported} pairs of {} streams", c.stats.streams);
});
