//! The on-disk block tag: every 4 KiB block the workload writes identifies itself.
//!
//! The first [`TAG_LEN`] bytes of each block hold a [`BlockTag`] (which VM wrote it, the write's
//! sequence number, the LBA it was meant for, and the CRC-32 of the payload); the rest of the
//! block is a payload derived deterministically from `(seed, vm, seq, lba)`. A block read back —
//! by the guest at the end of its run, or by the host from the disk image — therefore says which
//! write it holds and whether it is intact, which is how invariant I4 (the disk holds the last
//! acknowledged write for every LBA) is checked.
//!
//! Layout (all integers little endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `b"BATONBLK"` |
//! | 8 | 2 | version (= [`TAG_VERSION`]) |
//! | 10 | 2 | reserved, zero |
//! | 12 | 4 | vm |
//! | 16 | 8 | seq |
//! | 24 | 8 | lba |
//! | 32 | 4 | payload CRC-32 of bytes `[TAG_LEN, BLOCK_SIZE)` |
//! | 36 | 4 | tag CRC-32 of bytes `[0, 36)` |
//! | 40 | 24 | zero (not checked on decode) |

use crate::crc32::crc32;

/// Size of one workload block in bytes.
pub const BLOCK_SIZE: usize = 4096;
/// The tag occupies bytes `[0, TAG_LEN)` of each block.
pub const TAG_LEN: usize = 64;
/// First eight bytes of every tagged block.
pub const TAG_MAGIC: u64 = u64::from_le_bytes(*b"BATONBLK");
/// The tag layout version this crate writes and accepts.
pub const TAG_VERSION: u16 = 1;

/// Offset of the tag CRC; the CRC covers every byte before it.
const TAG_CRC_OFFSET: usize = 36;

/// The identity of one written block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockTag {
    /// VM id of the writer (from the `vm=` command-line key).
    pub vm: u32,
    /// 1-based sequence number of the write in the workload schedule.
    pub seq: u64,
    /// The 4 KiB block address the write was meant for.
    pub lba: u64,
    /// CRC-32 of the payload bytes `[TAG_LEN, BLOCK_SIZE)`.
    pub payload_crc: u32,
}

/// Why a block or tag did not check out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagError {
    /// The first eight bytes are not [`TAG_MAGIC`] (e.g. a never-written block).
    BadMagic,
    /// The version field is not [`TAG_VERSION`].
    BadVersion,
    /// The tag's own CRC does not match: the tag is corrupt.
    BadTagCrc,
    /// The payload CRC does not match the one in the tag: the payload is corrupt or torn.
    BadPayloadCrc,
    /// The buffer is shorter than a tag (for [`BlockTag::decode`]) or a block (for
    /// [`check_block`]).
    TooShort,
}

impl core::fmt::Display for TagError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            TagError::BadMagic => "bad block tag magic",
            TagError::BadVersion => "unsupported block tag version",
            TagError::BadTagCrc => "block tag CRC mismatch",
            TagError::BadPayloadCrc => "block payload CRC mismatch",
            TagError::TooShort => "buffer too short for a block tag",
        })
    }
}

impl core::error::Error for TagError {}

fn le_u16(buf: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(&buf[at..at + 2]);
    u16::from_le_bytes(b)
}

fn le_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn le_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

impl BlockTag {
    /// Writes the tag (including its own CRC) into `out`; bytes past the CRC are zeroed.
    pub fn encode(&self, out: &mut [u8; TAG_LEN]) {
        *out = [0u8; TAG_LEN];
        out[0..8].copy_from_slice(&TAG_MAGIC.to_le_bytes());
        out[8..10].copy_from_slice(&TAG_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.vm.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.lba.to_le_bytes());
        out[32..36].copy_from_slice(&self.payload_crc.to_le_bytes());
        let tag_crc = crc32(&out[..TAG_CRC_OFFSET]);
        out[TAG_CRC_OFFSET..TAG_CRC_OFFSET + 4].copy_from_slice(&tag_crc.to_le_bytes());
    }

    /// Decodes and validates a tag from the first [`TAG_LEN`] bytes of `buf`.
    ///
    /// Checks the magic, the version and the tag CRC; it does not look at the payload (see
    /// [`check_block`]). Never panics.
    pub fn decode(buf: &[u8]) -> Result<BlockTag, TagError> {
        let Some(buf) = buf.get(..TAG_LEN) else {
            return Err(TagError::TooShort);
        };
        if le_u64(buf, 0) != TAG_MAGIC {
            return Err(TagError::BadMagic);
        }
        if le_u16(buf, 8) != TAG_VERSION {
            return Err(TagError::BadVersion);
        }
        if le_u32(buf, TAG_CRC_OFFSET) != crc32(&buf[..TAG_CRC_OFFSET]) {
            return Err(TagError::BadTagCrc);
        }
        Ok(BlockTag {
            vm: le_u32(buf, 12),
            seq: le_u64(buf, 16),
            lba: le_u64(buf, 24),
            payload_crc: le_u32(buf, 32),
        })
    }
}

/// SplitMix64 step: a small, fast, well-mixed PRNG (Steele, Lea & Flood 2014).
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    mix64(*state)
}

/// The SplitMix64 output function: a bijective 64-bit mixer.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills a whole block deterministically: payload bytes `[TAG_LEN..]` from a PRNG keyed by
/// `(seed, vm, seq, lba)`, then the tag (whose payload CRC covers that payload).
pub fn fill_block(seed: u64, vm: u32, seq: u64, lba: u64, block: &mut [u8; BLOCK_SIZE]) {
    let mut state = mix64(seed ^ mix64(u64::from(vm) ^ mix64(seq ^ mix64(lba))));
    for chunk in block[TAG_LEN..].chunks_exact_mut(8) {
        chunk.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    let tag = BlockTag {
        vm,
        seq,
        lba,
        payload_crc: crc32(&block[TAG_LEN..]),
    };
    let mut out = [0u8; TAG_LEN];
    tag.encode(&mut out);
    block[..TAG_LEN].copy_from_slice(&out);
}

/// Decodes the tag of a block and checks the payload CRC against it.
///
/// `block` must hold at least [`BLOCK_SIZE`] bytes; only the first [`BLOCK_SIZE`] are looked at.
/// Never panics. The caller still has to compare the returned tag with the write it expected.
pub fn check_block(block: &[u8]) -> Result<BlockTag, TagError> {
    let Some(block) = block.get(..BLOCK_SIZE) else {
        return Err(TagError::TooShort);
    };
    let tag = BlockTag::decode(block)?;
    if crc32(&block[TAG_LEN..]) != tag.payload_crc {
        return Err(TagError::BadPayloadCrc);
    }
    Ok(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn magic_is_ascii() {
        assert_eq!(&TAG_MAGIC.to_le_bytes(), b"BATONBLK");
    }

    #[test]
    fn fill_then_check() {
        let mut block = [0u8; BLOCK_SIZE];
        fill_block(7, 3, 42, 1000, &mut block);
        let tag = check_block(&block).unwrap();
        assert_eq!((tag.vm, tag.seq, tag.lba), (3, 42, 1000));
        assert_eq!(&block[..8], b"BATONBLK");
        assert_eq!(&block[8..10], &[1, 0]);
        assert!(block[40..TAG_LEN].iter().all(|&b| b == 0));
        // Deterministic.
        let mut again = [0u8; BLOCK_SIZE];
        fill_block(7, 3, 42, 1000, &mut again);
        assert_eq!(block, again);
        // Keyed by every input.
        for (s, v, q, l) in [
            (8, 3, 42, 1000),
            (7, 4, 42, 1000),
            (7, 3, 43, 1000),
            (7, 3, 42, 1001),
        ] {
            let mut other = [0u8; BLOCK_SIZE];
            fill_block(s, v, q, l, &mut other);
            assert_ne!(block[TAG_LEN..], other[TAG_LEN..]);
        }
    }

    #[test]
    fn detects_corruption() {
        let mut block = [0u8; BLOCK_SIZE];
        fill_block(1, 1, 1, 1, &mut block);
        assert_eq!(check_block(&[0u8; BLOCK_SIZE]), Err(TagError::BadMagic));
        assert_eq!(
            check_block(&block[..BLOCK_SIZE - 1]),
            Err(TagError::TooShort)
        );
        assert_eq!(
            BlockTag::decode(&block[..TAG_LEN - 1]),
            Err(TagError::TooShort)
        );
        assert!(BlockTag::decode(&block[..TAG_LEN]).is_ok());

        let mut b = block;
        b[8] = 2;
        assert_eq!(check_block(&b), Err(TagError::BadVersion));
        let mut b = block;
        b[20] ^= 1;
        assert_eq!(check_block(&b), Err(TagError::BadTagCrc));
        let mut b = block;
        b[TAG_LEN + 100] ^= 0x80;
        assert_eq!(check_block(&b), Err(TagError::BadPayloadCrc));
        let mut b = block;
        b[BLOCK_SIZE - 1] ^= 1;
        assert_eq!(check_block(&b), Err(TagError::BadPayloadCrc));
    }

    proptest! {
        #[test]
        fn tag_round_trip(vm: u32, seq: u64, lba: u64, payload_crc: u32) {
            let tag = BlockTag { vm, seq, lba, payload_crc };
            let mut out = [0u8; TAG_LEN];
            tag.encode(&mut out);
            prop_assert_eq!(BlockTag::decode(&out), Ok(tag));
        }

        #[test]
        fn decode_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = BlockTag::decode(&buf);
            let _ = check_block(&buf);
        }

        #[test]
        fn fill_check_round_trip(seed: u64, vm: u32, seq: u64, lba: u64) {
            let mut block = [0u8; BLOCK_SIZE];
            fill_block(seed, vm, seq, lba, &mut block);
            let tag = check_block(&block).unwrap();
            prop_assert_eq!((tag.vm, tag.seq, tag.lba), (vm, seq, lba));
        }
    }
}
