//! Property tests for the control protocol: every message round-trips, arbitrary bytes never
//! panic the decoder, garbage never hides a following frame, and a corrupted frame is never
//! accepted as a different message.
// A test fails by panicking: `unwrap` and `expect` are its assertions (the workspace denies
// them elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_core::control::{
    ControlError, Decoder, Frame, HandoffState, MAX_FRAME_LEN, Message, accepts, decode_line,
    encode,
};
use baton_core::fuzz_entry::fuzz_control_decoder;
use proptest::collection::vec;
use proptest::prelude::*;

mod common;

fn message() -> impl Strategy<Value = Message> {
    common::message(any::<u32>(), any::<u32>())
}

fn encoded(msg: &Message, seq: u32) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode(msg, seq, &mut buf).unwrap();
    buf[..n].to_vec()
}

fn decode_all(bytes: &[u8]) -> Vec<Result<Frame, ControlError>> {
    let mut d = Decoder::new();
    bytes.iter().filter_map(|&b| d.push(b)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(msg in message(), seq in any::<u32>()) {
        let bytes = encoded(&msg, seq);
        prop_assert!(bytes.len() <= MAX_FRAME_LEN);
        let want = Frame { version: 1, seq, msg };
        prop_assert_eq!(decode_all(&bytes), vec![Ok(want)]);
        prop_assert_eq!(decode_line(&bytes[..bytes.len() - 1]), Ok(want));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..600)) {
        let mut d = Decoder::new();
        for &b in &bytes {
            if let Some(Ok(frame)) = d.push(b) {
                // Whatever is accepted is a canonical frame.
                let _ = accepts(HandoffState::Direct, &frame.msg);
            }
        }
        let _ = decode_line(&bytes);
        fuzz_control_decoder(&bytes);
    }

    #[test]
    fn printable_noise_never_panics(s in "[@a-z0-9 *\\-]{0,300}\n?") {
        fuzz_control_decoder(s.as_bytes());
    }

    #[test]
    fn frames_survive_garbage_between_them(
        msgs in vec((message(), any::<u32>()), 1..8),
        garbage in vec(vec(any::<u8>().prop_filter("no frame start", |b| *b != b'@'), 0..40), 8),
    ) {
        let mut stream = Vec::new();
        for (i, (msg, seq)) in msgs.iter().enumerate() {
            stream.extend_from_slice(&garbage[i]);
            // Garbage without a newline would run into the frame: end it first.
            stream.push(b'\n');
            stream.extend_from_slice(&encoded(msg, *seq));
        }
        let frames: Vec<Frame> = decode_all(&stream).into_iter().filter_map(Result::ok).collect();
        let want: Vec<Frame> = msgs.iter().map(|&(msg, seq)| Frame { version: 1, seq, msg }).collect();
        prop_assert_eq!(frames, want);
    }

    #[test]
    fn a_truncated_frame_never_hides_the_next(
        first in message(), second in message(), seq in any::<u32>(), cut in 0usize..200,
    ) {
        let a = encoded(&first, seq);
        let cut = cut % a.len();
        let mut stream = a[..cut].to_vec();
        stream.extend_from_slice(&encoded(&second, seq.wrapping_add(1)));
        let out = decode_all(&stream);
        prop_assert_eq!(out.last(), Some(&Ok(Frame { version: 1, seq: seq.wrapping_add(1), msg: second })));
        prop_assert!(out.len() <= 2);
    }

    #[test]
    fn a_corrupted_byte_is_never_a_different_message(
        msg in message(), seq in any::<u32>(), at in 0usize..200, value in any::<u8>(),
    ) {
        let original = encoded(&msg, seq);
        let mut bytes = original.clone();
        let at = at % bytes.len();
        prop_assume!(bytes[at] != value);
        bytes[at] = value;
        for frame in decode_all(&bytes).into_iter().flatten() {
            prop_assert_eq!(frame, Frame { version: 1, seq, msg }, "corruption produced another frame");
        }
    }
}
