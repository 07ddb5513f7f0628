//! The client side of a compressed event stream: decoding what arrived so
//! far, as a browser does before its EventSource parses it.

use std::io::Read;

/// Decodes a prefix of a coded stream, as far as it goes.
pub fn decode_prefix(coding: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        None => out.extend_from_slice(data),
        Some("gzip") => {
            let mut d = flate2::Decompress::new_gzip(15);
            let mut buf = vec![0u8; 1 << 16];
            let mut pos = 0;
            loop {
                let (i, o) = (d.total_in(), d.total_out());
                let status = d
                    .decompress(&data[pos..], &mut buf, flate2::FlushDecompress::Sync)
                    .expect("gzip data");
                pos += (d.total_in() - i) as usize;
                let n = (d.total_out() - o) as usize;
                out.extend_from_slice(&buf[..n]);
                if status == flate2::Status::StreamEnd || (n == 0 && pos == data.len()) {
                    break;
                }
            }
        }
        Some("br") => {
            let mut r = brotli::Decompressor::new(data, 4096);
            let mut buf = [0u8; 4096];
            // A prefix ends in the middle of the stream: read what it gives.
            while let Ok(n @ 1..) = r.read(&mut buf) {
                out.extend_from_slice(&buf[..n]);
            }
        }
        Some("zstd") => {
            use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
            let mut d = Decoder::new().expect("zstd decoder");
            let mut src = InBuffer::around(data);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let mut dst = OutBuffer::around(&mut buf[..]);
                d.run(&mut src, &mut dst).expect("zstd data");
                let n = dst.pos();
                out.extend_from_slice(&buf[..n]);
                if n == 0 && src.pos == data.len() {
                    break;
                }
            }
        }
        Some(other) => panic!("unexpected coding {other}"),
    }
    out
}
