//! Content codings of stored answers (RFC 9110 §8.4, §12.5.3): which coding a client gets,
//! and the compress-once helpers that make each stored form.
//!
//! A cached answer keeps its identity bytes and, made once each on first demand, its `br`,
//! `zstd`, `gzip` and `deflate` forms (see [`crate::cache::Rendered`]). A hit picks one with
//! [`negotiate`] and sends those bytes as they are: nothing is compressed per request.
//! Answers that are not stored (misses, streams) are compressed once on the way out, at a
//! fast level, by the compression layer of the middleware stack.
//!
//! Negotiation follows RFC 9110 §12.5.3:
//! * no `Accept-Encoding` at all: identity (any coding would be allowed, but a client that
//!   says nothing, such as `curl` without `--compressed`, is best served plain);
//! * a coding's weight is its own entry's `q`, else that of `*`, else 0; `q=0` excludes it;
//! * the highest weight among the stored codings wins, ties broken by the smaller result
//!   (br, zstd, gzip, deflate); identity wins when it is listed with a higher weight;
//! * identity is acceptable unless excluded by `identity;q=0`, or by `*;q=0` without an
//!   `identity` entry. When a client excludes identity and accepts none of our codings,
//!   RFC 9110 §12.5.3 / §15.5.7 let the server either answer 406 or disregard the header;
//!   we disregard it and send identity, which every client can read (a 406 would turn a
//!   readable answer into an error for the sake of a header most likely sent by mistake).

use std::io::Write;

use bytes::Bytes;

/// A content coding the gateway can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    Identity,
    Br,
    Zstd,
    Gzip,
    Deflate,
}

impl Coding {
    /// The stored codings, in the order of preference on equal weight (smallest first).
    pub const STORED: [Coding; 4] = [Coding::Br, Coding::Zstd, Coding::Gzip, Coding::Deflate];

    /// The codings of answers compressed on the way out ([`Streaming`]), in the order of
    /// preference on equal weight: fastest first, since the client waits for this one.
    pub const STREAMED: [Coding; 4] = [Coding::Zstd, Coding::Br, Coding::Gzip, Coding::Deflate];

    /// The token of `Content-Encoding` / `Accept-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }

    /// Index in [`Coding::STORED`]; `None` for identity.
    pub fn stored_index(self) -> Option<usize> {
        Coding::STORED.iter().position(|c| *c == self)
    }

    fn parse(token: &str) -> Option<Listed> {
        let t = token.trim();
        let is = |s: &str| t.eq_ignore_ascii_case(s);
        Some(if is("br") {
            Listed::Coding(Coding::Br)
        } else if is("zstd") {
            Listed::Coding(Coding::Zstd)
        } else if is("gzip") || is("x-gzip") {
            // RFC 9110 §8.4.1.3: a recipient should treat x-gzip as gzip.
            Listed::Coding(Coding::Gzip)
        } else if is("deflate") {
            Listed::Coding(Coding::Deflate)
        } else if is("identity") {
            Listed::Coding(Coding::Identity)
        } else if t == "*" {
            Listed::Any
        } else {
            return None;
        })
    }
}

enum Listed {
    Coding(Coding),
    Any,
}

/// A weight in thousandths (`q=0.5` → 500), or `None` when it is not a valid qvalue.
fn qvalue(s: &str) -> Option<u16> {
    let s = s.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The coding to send a stored answer in, from the request's `Accept-Encoding` fields
/// (all of them, in order). See the module documentation for the rules.
pub fn negotiate<'a>(accept_encoding: impl IntoIterator<Item = &'a [u8]>) -> Coding {
    negotiate_in(accept_encoding, &Coding::STORED)
}

/// [`negotiate`], ties broken in the order of `preference` (a permutation of
/// [`Coding::STORED`]).
pub fn negotiate_in<'a>(
    accept_encoding: impl IntoIterator<Item = &'a [u8]>,
    preference: &[Coding; 4],
) -> Coding {
    let mut present = false;
    // Weights of [br, zstd, gzip, deflate], identity and `*`, when listed.
    let mut listed: [Option<u16>; 4] = [None; 4];
    let mut identity: Option<u16> = None;
    let mut any: Option<u16> = None;
    for field in accept_encoding {
        present = true;
        let Ok(field) = std::str::from_utf8(field) else {
            continue;
        };
        for element in field.split(',') {
            let mut parts = element.split(';');
            let Some(name) = parts.next().filter(|n| !n.trim().is_empty()) else {
                continue;
            };
            let mut weight = Some(1000);
            for param in parts {
                if let Some((k, v)) = param.split_once('=')
                    && k.trim().eq_ignore_ascii_case("q")
                {
                    weight = qvalue(v);
                }
            }
            // An element with a malformed weight is ignored rather than guessed at.
            let (Some(weight), Some(what)) = (weight, Coding::parse(name)) else {
                continue;
            };
            let slot = match what {
                Listed::Any => &mut any,
                Listed::Coding(Coding::Identity) => &mut identity,
                Listed::Coding(c) => match c.stored_index() {
                    Some(i) => &mut listed[i],
                    None => continue,
                },
            };
            // Listed twice: the more generous entry counts.
            *slot = Some(slot.map_or(weight, |w| w.max(weight)));
        }
    }
    if !present {
        return Coding::Identity;
    }
    let mut best: Option<(u16, Coding)> = None;
    for c in preference {
        let Some(i) = c.stored_index() else { continue };
        let w = listed[i].or(any).unwrap_or(0);
        if w > 0 && best.is_none_or(|(bw, _)| w > bw) {
            best = Some((w, *c));
        }
    }
    match (best, identity) {
        // Identity listed with a strictly higher weight than every coding we hold.
        (Some((w, _)), Some(iw)) if iw > w => Coding::Identity,
        (Some((_, c)), _) => c,
        // Nothing we hold is acceptable: identity, even if the client excluded it (module docs).
        (None, _) => Coding::Identity,
    }
}

/// How hard to compress: stored forms are made once and sent many times, so they are made
/// for ratio — but within a bound on the memory the encoder holds while it works (outside
/// CACHE_MAX_BYTES, once per form being made). Measured on a 7.7 MB page of simulator
/// records: brotli 9 holds 36–44 MiB of match tables whatever the body's size, for 1–2 %
/// better ratio than brotli 7 (11–14 MiB) or 6 (4–11 MiB); large bodies (big pages and
/// exports) use the cheaper level so that the first request asking for a form waits well
/// under a second. zstd sizes its tables to the body it is given.
fn level(coding: Coding, len: usize) -> i32 {
    let large = len > 1 << 20;
    match (coding, large) {
        (Coding::Br, false) => 7,
        (Coding::Br, true) => 6,
        (Coding::Zstd, false) => 15,
        (Coding::Zstd, true) => 6,
        (Coding::Gzip | Coding::Deflate, false) => 9,
        (Coding::Gzip | Coding::Deflate, true) => 6,
        (Coding::Identity, _) => 0,
    }
}

/// brotli's window (log2 bytes): the body's size, between 64 KiB and 512 KiB. Records repeat
/// their field names within a few KiB; on the 7.7 MB page of [`level`], at brotli 6, a window
/// of 4 MiB cost 34 MiB of encoder memory, 2 MiB 21 MiB and 512 KiB 11 MiB, for no better
/// ratio (9.2 % against 9.0 %).
fn brotli_window(len: usize) -> i32 {
    (usize::BITS - len.max(1).leading_zeros()).clamp(16, 19) as i32
}

/// `data` in `coding`, at the stored-form level. CPU-bound: call it off the async runtime
/// for large bodies ([`tokio::task::spawn_blocking`]).
///
/// # Errors
/// Only an encoder failing to write into memory, which the codecs do not do in practice.
pub fn compress(coding: Coding, data: &[u8]) -> std::io::Result<Bytes> {
    let level = level(coding, data.len());
    let out = Vec::with_capacity(data.len() / 4 + 64);
    let out = match coding {
        Coding::Identity => return Ok(Bytes::copy_from_slice(data)),
        Coding::Br => {
            // The size hint lets the encoder size its tables to the body.
            let params = brotli::enc::BrotliEncoderParams {
                quality: level,
                lgwin: brotli_window(data.len()),
                size_hint: data.len(),
                ..Default::default()
            };
            let mut out = out;
            brotli::BrotliCompress(&mut &data[..], &mut out, &params)?;
            out
        }
        Coding::Zstd => zstd::bulk::compress(data, level)?,
        Coding::Gzip => {
            let mut w = flate2::write::GzEncoder::new(out, flate2::Compression::new(level as u32));
            w.write_all(data)?;
            w.finish()?
        }
        Coding::Deflate => {
            // HTTP's "deflate" is the zlib format (RFC 9110 §8.4.1.2).
            let mut w =
                flate2::write::ZlibEncoder::new(out, flate2::Compression::new(level as u32));
            w.write_all(data)?;
            w.finish()?
        }
    };
    // Kept for as long as the answer is cached, and weighed by its length: no spare capacity.
    let mut out = out;
    out.shrink_to_fit();
    Ok(Bytes::from(out))
}

/// An encoder for an answer compressed on the way out (misses, streams), at the fastest
/// level of its coding: the client is waiting, and the answer is not kept. Fed the body's
/// chunks as they come; each call returns the compressed bytes ready so far (often none:
/// the codecs buffer a block before they emit it).
pub enum Streaming {
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Deflate(flate2::write::ZlibEncoder<Vec<u8>>),
}

impl Streaming {
    /// An encoder for `coding`; `None` for identity.
    ///
    /// # Errors
    /// zstd failing to make its context (out of memory).
    pub fn new(coding: Coding) -> std::io::Result<Option<Self>> {
        let fast = flate2::Compression::fast();
        Ok(Some(match coding {
            Coding::Identity => return Ok(None),
            // Quality 2, a 256 KiB window. Qualities 0 and 1 are faster but, fed NDJSON a few
            // hundred bytes per write, brought it only to 54 % of its size (quality 2: 5 %;
            // the unit test in api::middleware).
            Coding::Br => Streaming::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                2,
                18,
            ))),
            Coding::Zstd => Streaming::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 1)?),
            Coding::Gzip => Streaming::Gzip(flate2::write::GzEncoder::new(Vec::new(), fast)),
            // HTTP's "deflate" is the zlib format (RFC 9110 §8.4.1.2).
            Coding::Deflate => {
                Streaming::Deflate(flate2::write::ZlibEncoder::new(Vec::new(), fast))
            }
        }))
    }

    /// Feeds `data`; returns the compressed bytes ready so far.
    ///
    /// # Errors
    /// Only an encoder failing to write into memory, which the codecs do not do in practice.
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        self.then_take(|w| w.write_all(data))
    }

    /// Emits what has been fed so far (a sync flush: the stream stays open), for a body whose
    /// next chunk is not there yet: what the client could read is not held back.
    ///
    /// # Errors
    /// As [`Streaming::write`].
    pub fn flush(&mut self) -> std::io::Result<Bytes> {
        self.then_take(|w| w.flush())
    }

    /// `op` on the encoder, then the output it has made so far, taken.
    fn then_take(
        &mut self,
        op: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<Bytes> {
        let out = match self {
            Streaming::Br(w) => {
                op(w.as_mut())?;
                w.get_mut()
            }
            Streaming::Zstd(w) => {
                op(w)?;
                w.get_mut()
            }
            Streaming::Gzip(w) => {
                op(w)?;
                w.get_mut()
            }
            Streaming::Deflate(w) => {
                op(w)?;
                w.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }

    /// Ends the stream; returns its last compressed bytes.
    ///
    /// # Errors
    /// As [`Streaming::write`].
    pub fn finish(self) -> std::io::Result<Bytes> {
        Ok(Bytes::from(match self {
            // Ending the writer ends the brotli stream.
            Streaming::Br(w) => w.into_inner(),
            Streaming::Zstd(w) => w.finish()?,
            Streaming::Gzip(w) => w.finish()?,
            Streaming::Deflate(w) => w.finish()?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pick(h: &str) -> Coding {
        negotiate([h.as_bytes()])
    }

    #[test]
    fn q_values_choose_as_rfc_9110_says() {
        assert_eq!(negotiate(std::iter::empty::<&[u8]>()), Coding::Identity);
        assert_eq!(pick(""), Coding::Identity, "empty: no coding wanted");
        assert_eq!(pick("gzip, deflate, br, zstd"), Coding::Br);
        assert_eq!(pick("gzip"), Coding::Gzip);
        assert_eq!(pick("x-gzip"), Coding::Gzip);
        assert_eq!(pick("GZIP;Q=0.5"), Coding::Gzip);
        assert_eq!(pick("deflate"), Coding::Deflate);
        assert_eq!(pick("zstd"), Coding::Zstd);
        assert_eq!(pick("gzip, deflate, br;q=0, zstd"), Coding::Zstd);
        assert_eq!(
            pick("br;q=0, *"),
            Coding::Zstd,
            "* covers what is not listed"
        );
        assert_eq!(pick("*"), Coding::Br);
        assert_eq!(pick("*;q=0"), Coding::Identity);
        assert_eq!(pick("gzip;q=0.4, br;q=0.3"), Coding::Gzip);
        assert_eq!(pick("gzip;q=0.4, *;q=0.5"), Coding::Br);
        assert_eq!(pick("identity;q=1, gzip;q=0.5"), Coding::Identity);
        assert_eq!(pick("identity;q=0.1, gzip;q=0.5"), Coding::Gzip);
        assert_eq!(pick("compress"), Coding::Identity, "unknown codings only");
        assert_eq!(
            pick("identity;q=0, compress"),
            Coding::Identity,
            "nothing acceptable: identity anyway (documented choice)"
        );
        assert_eq!(pick("identity;q=0, gzip"), Coding::Gzip);
        assert_eq!(pick("gzip;q=0"), Coding::Identity);
        assert_eq!(pick("gzip;q=2, deflate"), Coding::Deflate, "bad q ignored");
        assert_eq!(pick("gzip;q=0.0001, deflate;q=0.001"), Coding::Deflate);
        assert_eq!(
            pick("br;q=0.5, br;q=0"),
            Coding::Br,
            "the larger entry counts"
        );
        assert_eq!(
            negotiate([b"br;q=0".as_slice(), b"gzip".as_slice()]),
            Coding::Gzip,
            "several fields are one list"
        );
        assert_eq!(negotiate([[0xff_u8, 0xfe].as_slice()]), Coding::Identity);
    }

    #[test]
    fn qvalues_parse_strictly() {
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.000"), Some(1000));
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("0.05"), Some(50));
        assert_eq!(qvalue("0"), Some(0));
        for bad in ["1.5", "2", "0.1234", "-0", "abc", "", "0.x"] {
            assert_eq!(qvalue(bad), None, "{bad}");
        }
    }

    fn decode(coding: Coding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            Coding::Identity => out.extend_from_slice(data),
            Coding::Br => {
                brotli_decompressor_read(data, &mut out);
            }
            Coding::Zstd => out = zstd::stream::decode_all(data).unwrap(),
            Coding::Gzip => {
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Coding::Deflate => {
                flate2::read::ZlibDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
        }
        out
    }

    fn brotli_decompressor_read(data: &[u8], out: &mut Vec<u8>) {
        brotli::Decompressor::new(data, 4096)
            .read_to_end(out)
            .unwrap();
    }

    #[test]
    fn every_coding_round_trips_and_shrinks_json() {
        let body: Vec<u8> = (0..2000)
            .flat_map(|i| {
                format!(r#"{{"sessionId":"s{i}","channel":"voice","n":{i}}},"#).into_bytes()
            })
            .collect();
        for c in Coding::STORED {
            let z = compress(c, &body).unwrap();
            assert!(
                z.len() * 4 < body.len(),
                "{c:?}: {} of {}",
                z.len(),
                body.len()
            );
            assert_eq!(decode(c, &z), body, "{c:?}");
        }
        assert_eq!(decode(Coding::Br, &compress(Coding::Br, b"").unwrap()), b"");
    }
}
