use super::*;
use proptest::prelude::*;

fn frame(seq: u64, fill: u16, dir: Direction) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = encode(&mut buf, GUEST_MAC, HOST_MAC, dir, seq, fill).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn a_frame_round_trips_at_every_size_bound() {
    for fill in [0u16, 1, 25, MAX_FILL as u16] {
        let f = frame(77, fill, Direction::ToHost);
        assert_eq!(f.len(), frame_len(usize::from(fill)));
        let n = decode(&f).unwrap();
        assert_eq!(
            n,
            Numbered {
                dst: GUEST_MAC,
                src: HOST_MAC,
                direction: Direction::ToHost,
                seq: 77,
                fill,
            }
        );
    }
    assert_eq!(
        frame(0, MAX_FILL as u16, Direction::ToGuest).len(),
        MAX_FRAME_LEN
    );
}

#[test]
fn encode_refuses_what_does_not_fit() {
    let mut small = [0u8; MIN_FRAME_LEN + 3];
    let r = encode(&mut small, GUEST_MAC, HOST_MAC, Direction::ToHost, 1, 4);
    assert_eq!(r, Err(FrameError::NoRoom));
    let mut big = [0u8; 2048];
    let r = encode(
        &mut big,
        GUEST_MAC,
        HOST_MAC,
        Direction::ToHost,
        1,
        MAX_FILL as u16 + 1,
    );
    assert_eq!(r, Err(FrameError::NoRoom));
}

#[test]
fn each_kind_of_damage_is_named() {
    let good = frame(5, 40, Direction::ToGuest);
    assert_eq!(
        decode(&good[..MIN_FRAME_LEN - 1]),
        Err(FrameError::Truncated)
    );
    assert_eq!(decode(&good[..good.len() - 1]), Err(FrameError::Truncated));
    let mut f = good.clone();
    f[12] = 0x08;
    f[13] = 0x00;
    assert_eq!(decode(&f), Err(FrameError::OtherEtherType));
    let mut f = good.clone();
    f[ETH_HEADER_LEN] ^= 1;
    assert_eq!(decode(&f), Err(FrameError::BadMagic));
    let mut f = good.clone();
    f[ETH_HEADER_LEN + 4] = 9;
    assert_eq!(decode(&f), Err(FrameError::BadHeader));
    let mut f = good.clone();
    f[ETH_HEADER_LEN + 5] = 1;
    assert_eq!(decode(&f), Err(FrameError::BadHeader));
    let mut f = good.clone();
    f[ETH_HEADER_LEN + PAYLOAD_HEADER_LEN + 3] ^= 0x40;
    assert_eq!(decode(&f), Err(FrameError::BadCrc));
    let mut f = good.clone();
    f.push(0);
    assert_eq!(decode(&f), Err(FrameError::TooLong), "trailing byte");
    assert_eq!(
        decode(&vec![0u8; MAX_FRAME_LEN + 1]),
        Err(FrameError::TooLong)
    );
}

#[test]
fn a_short_frame_padded_to_sixty_bytes_with_zeroes_is_accepted() {
    let mut f = frame(3, 2, Direction::ToHost);
    assert!(f.len() < 60);
    f.resize(60, 0);
    assert_eq!(decode(&f).unwrap().seq, 3);
    f[59] = 1;
    assert_eq!(decode(&f), Err(FrameError::TooLong));
}

#[test]
fn a_fill_that_does_not_match_its_number_is_caught_even_with_a_good_crc() {
    // A frame whose fill belongs to another number, with the CRC recomputed over it.
    let mut f = frame(8, 30, Direction::ToHost);
    let p = ETH_HEADER_LEN;
    f[p + 8..p + 16].copy_from_slice(&9u64.to_le_bytes());
    let body = PAYLOAD_HEADER_LEN + 30;
    let crc = crc32::crc32(&f[p..p + body]);
    f[p + body..p + body + 4].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(decode(&f), Err(FrameError::BadFill));
}

#[test]
fn sequence_check_counts_duplicates_gaps_and_bad_frames() {
    let mut c = SeqCheck::default();
    for s in [0, 1, 2] {
        c.take(s);
    }
    assert!(c.clean());
    c.take(1);
    assert_eq!(c.duplicated, 1);
    c.take(5);
    assert_eq!((c.reordered, c.skipped, c.next), (1, 2, 6));
    assert!(!c.clean());
    let mut c = SeqCheck::default();
    let f = frame(0, 10, Direction::ToHost);
    assert_eq!(c.take_frame(&f, Direction::ToHost), Ok(0));
    assert_eq!(
        c.take_frame(&f, Direction::ToGuest),
        Err(FrameError::BadHeader)
    );
    assert_eq!(
        c.take_frame(&f[..20], Direction::ToHost),
        Err(FrameError::Truncated)
    );
    assert_eq!((c.next, c.bad), (1, 2));
    let mut arp = vec![0u8; 60];
    arp[12] = 0x08;
    arp[13] = 0x06;
    assert_eq!(
        c.take_frame(&arp, Direction::ToHost),
        Err(FrameError::OtherEtherType)
    );
    assert_eq!((c.next, c.bad, c.other), (1, 2, 1));
    assert!(!c.clean(), "the bad frames still count");
}

#[test]
fn fill_lengths_cover_the_range_and_are_deterministic() {
    let fills: Vec<u16> = (0..2000).map(|s| fill_for(7, s)).collect();
    assert!(fills.iter().all(|&f| usize::from(f) <= MAX_FILL));
    assert!(
        fills.iter().any(|&f| f < 100) && fills.iter().any(|&f| usize::from(f) > MAX_FILL - 100)
    );
    assert_eq!(fills, (0..2000).map(|s| fill_for(7, s)).collect::<Vec<_>>());
    assert_ne!(fill_for(7, 1), fill_for(8, 1));
}

fn stream_of(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut s = Vec::new();
    for f in frames {
        s.extend_from_slice(&stream_prefix(f.len()));
        s.extend_from_slice(f);
    }
    s
}

#[test]
fn stream_frames_come_out_whole_and_in_order() {
    let frames: Vec<Vec<u8>> = (0..5)
        .map(|s| frame(s, 100 * s as u16, Direction::ToGuest))
        .collect();
    let stream = stream_of(&frames);
    let mut buf = vec![0u8; MAX_STREAM_FRAME];
    let mut d = StreamDecoder::new(&mut buf);
    let mut out = Vec::new();
    assert_eq!(d.push(&stream, |f| out.push(f.to_vec())), Ok(stream.len()));
    assert_eq!(out, frames);
    assert!(d.at_boundary());
}

#[test]
fn a_zero_or_oversized_length_breaks_the_stream_for_good() {
    let mut buf = vec![0u8; 2048];
    let mut d = StreamDecoder::new(&mut buf);
    assert_eq!(
        d.push(&[0, 0, 0, 0], |_| {}),
        Err(StreamError::BadLength(0))
    );
    assert_eq!(
        d.push(&stream_of(&[vec![1]]), |_| {}),
        Err(StreamError::BadLength(0))
    );
    let mut buf = vec![0u8; 2048];
    let mut d = StreamDecoder::new(&mut buf);
    let mut seen = 0;
    // Longer than the buffer (though within QEMU's bound): refused.
    assert_eq!(
        d.push(&stream_prefix(2049), |_| seen += 1),
        Err(StreamError::BadLength(2049))
    );
    assert_eq!(seen, 0);
}

proptest! {
    #[test]
    fn any_chunking_of_a_stream_gives_the_same_frames(
        fills in proptest::collection::vec(0u16..=MAX_FILL as u16, 1..8),
        cuts in proptest::collection::vec(1usize..300, 1..40),
    ) {
        let frames: Vec<Vec<u8>> = fills
            .iter()
            .enumerate()
            .map(|(i, &f)| frame(i as u64, f, Direction::ToHost))
            .collect();
        let stream = stream_of(&frames);
        let mut buf = vec![0u8; MAX_STREAM_FRAME];
        let mut d = StreamDecoder::new(&mut buf);
        let mut out = Vec::new();
        let mut rest = &stream[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            i += 1;
            prop_assert_eq!(d.push(&rest[..n], |f| out.push(f.to_vec())), Ok(n));
            rest = &rest[n..];
        }
        prop_assert!(d.at_boundary());
        let mut check = SeqCheck::default();
        for f in &out {
            prop_assert!(check.take_frame(f, Direction::ToHost).is_ok());
        }
        prop_assert!(check.clean());
        prop_assert_eq!(check.next, frames.len() as u64);
    }

    #[test]
    fn decode_never_panics_and_accepts_only_what_encode_makes(
        bytes in proptest::collection::vec(any::<u8>(), 0..1600),
    ) {
        if let Ok(n) = decode(&bytes) {
            let again = frame(n.seq, n.fill, n.direction);
            prop_assert_eq!(&bytes[ETH_HEADER_LEN..again.len()], &again[ETH_HEADER_LEN..]);
        }
    }
}
