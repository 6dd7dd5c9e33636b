//! The request-line watch: what hyper reads, for streams cut at every possible place.

use super::*;

/// What hyper reads of `stream` through a scanner that cuts lines to `cut`, when the
/// stream arrives in pieces of `piece` bytes.
fn through(cut: usize, stream: &[u8], piece: usize) -> Vec<u8> {
    let mut s = Scanner::new(cut);
    let mut read = Vec::new();
    let mut out = Vec::new();
    for chunk in stream.chunks(piece.max(1)) {
        if s.scan(chunk, &mut out) {
            read.extend_from_slice(chunk);
        } else {
            read.append(&mut out);
        }
    }
    read
}

/// Every way of splitting `stream` gives `want`.
fn check(cut: usize, stream: &str, want: &str) {
    for piece in 1..=stream.len() {
        let got = through(cut, stream.as_bytes(), piece);
        assert_eq!(
            String::from_utf8_lossy(&got),
            want,
            "pieces of {piece} bytes"
        );
    }
}

#[test]
fn lines_within_the_bound_pass_untouched() {
    let stream = "\r\nGET /v1/interactions?from=a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\nAccept: */*\n\n";
    check(64, stream, stream);
}

#[test]
fn a_long_line_is_cut_keeping_its_version_and_the_next_request() {
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100));
    let next = "GET /ok HTTP/1.0\r\nHost: x\r\n\r\n";
    let want = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n{next}", "a".repeat(59));
    check(64, &format!("{long}{next}"), &want);
    // HTTP/1.0 stays 1.0; a bare LF line end stays one.
    let long = format!("GET /{} HTTP/1.0\n\n", "a".repeat(100));
    check(64, &long, &format!("GET /{} HTTP/1.0\n\n", "a".repeat(59)));
}

#[test]
fn a_line_barely_over_is_put_back_whole() {
    // Over by fewer bytes than the tail keeps: nothing is lost (hyper can read it).
    let line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(60));
    check(64, &line, &line);
}

#[test]
fn a_line_without_a_version_gets_one() {
    let line = format!("GET /{}\r\n\r\n", "a".repeat(200));
    check(
        64,
        &line,
        &format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(59)),
    );
}

#[test]
fn bodies_of_known_length_are_skipped_not_read_as_lines() {
    let body = "x".repeat(300);
    let stream = format!(
        "POST /p HTTP/1.1\r\ncontent-length:  {}\r\n\r\n{body}GET /{} HTTP/1.1\r\n\r\n",
        body.len(),
        "b".repeat(100)
    );
    let want = format!(
        "POST /p HTTP/1.1\r\ncontent-length:  {}\r\n\r\n{body}GET /{} HTTP/1.1\r\n\r\n",
        body.len(),
        "b".repeat(59)
    );
    check(64, &stream, &want);
}

#[test]
fn framing_it_cannot_follow_ends_the_watch() {
    for header in [
        "Transfer-Encoding: chunked",
        "Expect: 100-continue",
        "Upgrade: websocket",
        "Content-Length: 12x",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 00000000000000000000000000000000000000000000000005",
    ] {
        let stream = format!(
            "POST /p HTTP/1.1\r\n{header}\r\n\r\nGET /{} HTTP/1.1\r\n\r\n",
            "c".repeat(100)
        );
        check(64, &stream, &stream);
    }
    // Repeated equal lengths are one length.
    let stream = format!(
        "POST /p HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabcGET /{} HTTP/1.1\r\n\r\n",
        "d".repeat(100)
    );
    let want = format!(
        "POST /p HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabcGET /{} HTTP/1.1\r\n\r\n",
        "d".repeat(59)
    );
    check(64, &stream, &want);
}

#[test]
fn long_header_lines_are_not_request_lines() {
    let stream = format!(
        "GET / HTTP/1.1\r\nX-Filler: {}\r\n\r\nGET /e HTTP/1.1\r\n\r\n",
        "y".repeat(500)
    );
    check(64, &stream, &stream);
}

#[test]
fn the_served_bounds_fit_hypers() {
    // A cut target is refused by the layer, and a cut line is read by hyper (64 KiB - 1).
    const { assert!(GUARD_LINE_BYTES > MAX_URI_BYTES + 64) };
    const { assert!(GUARD_LINE_BYTES + TAIL < u16::MAX as usize - 1) };
}

proptest::proptest! {
    /// However a stream of requests arrives, hyper reads the same bytes; and with no line
    /// over the bound, exactly the stream.
    #[test]
    fn splitting_never_changes_what_hyper_reads(
        requests in proptest::collection::vec(
            (0usize..120, 0usize..40, proptest::bool::ANY), 1..5),
        piece in 1usize..50,
    ) {
        let mut stream = String::new();
        for (target, body, lf) in &requests {
            let nl = if *lf { "\n" } else { "\r\n" };
            stream.push_str(&format!("POST /{} HTTP/1.1{nl}Content-Length: {body}{nl}{nl}{}",
                "t".repeat(*target), "\n".repeat(*body)));
        }
        let whole = through(64, stream.as_bytes(), stream.len());
        proptest::prop_assert_eq!(&through(64, stream.as_bytes(), piece), &whole);
        if requests.iter().all(|(t, _, _)| t + 16 <= 64) {
            proptest::prop_assert_eq!(whole, stream.as_bytes());
        }
    }
}
