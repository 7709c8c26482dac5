//! Fuzzes the frontend wire layer: the startup packet and then a stream of
//! typed messages, framed with a size limit and parsed the way the session
//! parses them. Errors are answers; a panic is a bug.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard_proxy::capture::rows;
use switchyard_proxy::wire::frontend::{parse_sasl_initial_response, tag, FrontendMessage};
use switchyard_proxy::wire::startup::{packet_len, StartupPacket};
use switchyard_proxy::wire::{Frame, Header};

/// A small limit, so that oversized lengths are exercised too.
const LIMIT: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    // The untyped first packet.
    if let Ok(Some(len)) = packet_len(data, LIMIT) {
        if let Some(packet) = data.get(..len) {
            let _ = StartupPacket::parse(packet);
        }
    }
    let _ = StartupPacket::parse(data);
    // Then typed messages, as they come off a socket in pieces.
    let mut buf = BytesMut::new();
    for piece in data.chunks(7) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match Header::parse(&buf, LIMIT) {
                Ok(Header::Need(n)) => assert!(n > 0),
                Ok(Header::Ready { len, .. }) => assert!(len >= 5 && len <= buf.len()),
                Err(_) => return,
            }
            match Frame::split(&mut buf, LIMIT) {
                Ok(Some(frame)) => {
                    assert_eq!(buf.len() + frame.len(), before);
                    message(FrontendMessage::of(&frame));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

/// Parses one message as the session would, by its tag.
fn message(msg: FrontendMessage<'_>) {
    match msg.tag() {
        tag::QUERY => {
            let _ = msg.query();
        }
        tag::PARSE => {
            if let Ok(parse) = msg.parse() {
                // The capture tap's rewrite of a Parse.
                let _ = rows::rewrite_parse(msg.body(), "switchyard_1_1", parse.query);
            }
        }
        tag::BIND => {
            let _ = msg.bind();
            // The capture tap's reading and rewrite of a Bind.
            if let Ok((at, _)) = rows::bind_formats(msg.body()) {
                let _ = rows::rewrite_bind(msg.body(), "switchyard_1_1", at, Some(&[0, 1, 0]));
                let _ = rows::rewrite_bind(msg.body(), "", at, None);
            }
        }
        tag::DESCRIBE | tag::CLOSE => {
            let _ = msg.target();
        }
        tag::PASSWORD => {
            let _ = parse_sasl_initial_response(msg.body());
        }
        _ => {}
    }
}
