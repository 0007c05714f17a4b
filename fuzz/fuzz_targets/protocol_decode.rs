//! Any bytes as one frame: header, then every message decoder that could be handed the frame
//! (requests on the host, replies, notices and the handshake's answers in the agent). Decoding
//! must return a value or a `DecodeError`, never panic, whatever the input.
#![no_main]

use ferry_protocol::{
    Frame, FrameHeader, Hello, Notice, Refused, ReplyFrame, RequestFrame, Welcome,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = FrameHeader::parse(data);
    let Ok(frame) = Frame::parse(data) else {
        return;
    };
    let _ = frame.header.payload_len();
    let _ = RequestFrame::decode(&frame);
    let _ = ReplyFrame::decode(&frame);
    let _ = Notice::decode(&frame);
    let _ = Hello::decode(&frame);
    let _ = Welcome::decode(&frame);
    let _ = Refused::decode(&frame);
});
