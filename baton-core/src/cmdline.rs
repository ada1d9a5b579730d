//! The guest kernel command line (`-append`), as specified in `docs/guest-interface.md`.
//!
//! Space-separated `key=value` words. Parsing is strict — an unknown key, a repeated key, a word
//! without `=`, a malformed number or an out-of-range value is an error naming the key — so a
//! typo in a test's command line fails loudly instead of silently running with a default.
//! [`GuestConfig`]'s `Display` renders a command line that [`GuestConfig::parse`] accepts, which is
//! how the shim builds the `-append` string.

use crate::text::{ShortStr, parse_flag, parse_u64};
use crate::workload::Schedule;

/// Largest accepted `blocks=` value.
pub const MAX_BLOCKS: u64 = 1 << 20;
/// Largest accepted `passes=` value.
pub const MAX_PASSES: u32 = 1024;
/// Largest accepted `qd=` value.
pub const MAX_QD: u16 = 64;
/// Largest accepted `first_lba=` value: any run then stays below `2^64` 512-byte sectors.
pub const MAX_FIRST_LBA: u64 = (u64::MAX >> 3) - MAX_BLOCKS;

/// Which side of the handoff a guest plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Owns the device first and runs the workload.
    #[default]
    Owner,
    /// Receives the device on handoff and serves the owner's ring.
    Peer,
}

impl Role {
    /// The command-line spelling (`owner` / `peer`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Peer => "peer",
        }
    }

    pub(crate) fn from_word(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "peer" => Some(Role::Peer),
            _ => None,
        }
    }
}

impl core::fmt::Display for Role {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the guest finds its virtio-blk disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskMode {
    /// The disk is present at boot.
    #[default]
    Boot,
    /// Wait for a disk to be hot-added.
    Hotplug,
}

impl DiskMode {
    /// The command-line spelling (`boot` / `hotplug`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DiskMode::Boot => "boot",
            DiskMode::Hotplug => "hotplug",
        }
    }
}

impl core::fmt::Display for DiskMode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The command-line keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `role=`
    Role,
    /// `vm=`
    Vm,
    /// `blocks=`
    Blocks,
    /// `passes=`
    Passes,
    /// `qd=`
    Qd,
    /// `seed=`
    Seed,
    /// `first_lba=`
    FirstLba,
    /// `disk=`
    Disk,
    /// `verify=`
    Verify,
    /// `panic=`
    Panic,
    /// `migrate_at=`
    MigrateAt,
    /// `failback_at=`
    FailbackAt,
    /// `fault=`
    Fault,
    /// `device=`
    Device,
    /// `frames=`
    Frames,
}

impl Key {
    /// Every key, in the order [`GuestConfig`]'s `Display` renders them.
    pub const ALL: [Key; 15] = [
        Key::Role,
        Key::Vm,
        Key::Blocks,
        Key::Passes,
        Key::Qd,
        Key::Seed,
        Key::FirstLba,
        Key::Disk,
        Key::Verify,
        Key::Panic,
        Key::MigrateAt,
        Key::FailbackAt,
        Key::Fault,
        Key::Device,
        Key::Frames,
    ];

    /// The key as written on the command line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Key::Role => "role",
            Key::Vm => "vm",
            Key::Blocks => "blocks",
            Key::Passes => "passes",
            Key::Qd => "qd",
            Key::Seed => "seed",
            Key::FirstLba => "first_lba",
            Key::Disk => "disk",
            Key::Verify => "verify",
            Key::Panic => "panic",
            Key::MigrateAt => "migrate_at",
            Key::FailbackAt => "failback_at",
            Key::Fault => "fault",
            Key::Device => "device",
            Key::Frames => "frames",
        }
    }

    fn from_word(s: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl core::fmt::Display for Key {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a command line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdlineError {
    /// A word is not of the form `key=value` (the word, possibly truncated).
    MissingEquals(ShortStr),
    /// A key that the guest does not know (possibly truncated).
    UnknownKey(ShortStr),
    /// A key given twice.
    DuplicateKey(Key),
    /// A value that is not a number / not one of the allowed words.
    BadValue(Key),
    /// A number outside the key's range.
    OutOfRange(Key),
}

impl core::fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CmdlineError::MissingEquals(w) => write!(f, "cmdline: `{w}` is not key=value"),
            CmdlineError::UnknownKey(k) => write!(f, "cmdline: unknown key `{k}`"),
            CmdlineError::DuplicateKey(k) => write!(f, "cmdline: key `{k}` given twice"),
            CmdlineError::BadValue(k) => write!(f, "cmdline: bad value for `{k}`"),
            CmdlineError::OutOfRange(k) => write!(f, "cmdline: value of `{k}` out of range"),
        }
    }
}

impl core::error::Error for CmdlineError {}

/// The guest's configuration, from its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestConfig {
    /// `role=owner|peer` (default owner).
    pub role: Role,
    /// `vm=` VM id written into every block tag (default 1).
    pub vm: u32,
    /// `blocks=1..=1048576` distinct blocks written (default 256).
    pub blocks: u64,
    /// `passes=1..=64` times each block is written (default 4).
    pub passes: u32,
    /// `qd=1..=64` requests in flight (default 32).
    pub qd: u16,
    /// `seed=` seed of schedule and payloads (default 1).
    pub seed: u64,
    /// `first_lba=` first 4 KiB block used (default 0, at most [`MAX_FIRST_LBA`]).
    pub first_lba: u64,
    /// `disk=boot|hotplug` (default boot).
    pub disk: DiskMode,
    /// `verify=0|1` read everything back at the end (default 1).
    pub verify: bool,
    /// `panic=0|1` test hook: panic right after boot (default 0).
    pub panic: bool,
    /// `migrate_at=` the owner asks the shim to migrate it once it has submitted this many
    /// writes (default 0: never asks; the operator directs the handoff).
    pub migrate_at: u64,
    /// `failback_at=` the owner asks the shim for its disk back (`failback-request`) once it
    /// forwards through the peer and has submitted this many writes (default 0: never asks; the
    /// shim directs the failback).
    pub failback_at: u64,
    /// `fault=none|bad-completion` test hook for the peer (default none).
    pub fault: Fault,
    /// `device=blk|net`: the owner's device class (default blk; issue 11).
    pub device: DeviceClass,
    /// `frames=1..=`[`MAX_FRAMES`]: numbered frames the NIC workload sends, and expects from the
    /// host (default 2048; used with `device=net`).
    pub frames: u64,
}

/// The most numbered frames one NIC workload sends (and receives).
pub const MAX_FRAMES: u64 = 1 << 24;
/// The default of `frames=`.
pub const DEFAULT_FRAMES: u64 = 2048;

/// The owner's device class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceClass {
    /// A virtio-blk disk; the block workload.
    Blk,
    /// A virtio-net NIC; the numbered-frame workload ([`crate::net`]).
    Net,
}

impl DeviceClass {
    /// The word used on the command line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Blk => "blk",
            DeviceClass::Net => "net",
        }
    }
}

/// A deliberate misbehaviour of the peer, for tests of the owner's defences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    None,
    /// After a few good completions, publish a malformed completion entry and stop serving.
    BadCompletion,
}

impl Fault {
    /// The word used on the command line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::BadCompletion => "bad-completion",
        }
    }
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            role: Role::Owner,
            vm: 1,
            blocks: 256,
            passes: 4,
            qd: 32,
            seed: 1,
            first_lba: 0,
            disk: DiskMode::Boot,
            verify: true,
            panic: false,
            migrate_at: 0,
            failback_at: 0,
            fault: Fault::None,
            device: DeviceClass::Blk,
            frames: DEFAULT_FRAMES,
        }
    }
}

fn ranged(key: Key, value: &str, min: u64, max: u64) -> Result<u64, CmdlineError> {
    let v = parse_u64(value).ok_or(CmdlineError::BadValue(key))?;
    if v < min || v > max {
        return Err(CmdlineError::OutOfRange(key));
    }
    Ok(v)
}

impl GuestConfig {
    /// Parses a kernel command line. Empty (or all-whitespace) input gives the defaults.
    ///
    /// Never panics; see [`CmdlineError`] for what is rejected.
    pub fn parse(s: &str) -> Result<Self, CmdlineError> {
        let mut cfg = GuestConfig::default();
        let mut seen = [false; Key::ALL.len()];
        for word in s.split_ascii_whitespace() {
            let Some((k, value)) = word.split_once('=') else {
                return Err(CmdlineError::MissingEquals(ShortStr::new(word)));
            };
            let key = Key::from_word(k).ok_or(CmdlineError::UnknownKey(ShortStr::new(k)))?;
            if core::mem::replace(&mut seen[key.index()], true) {
                return Err(CmdlineError::DuplicateKey(key));
            }
            // Ranges are checked before narrowing, so the `as` casts below are lossless.
            match key {
                Key::Role => {
                    cfg.role = Role::from_word(value).ok_or(CmdlineError::BadValue(key))?
                }
                Key::Vm => cfg.vm = ranged(key, value, 0, u64::from(u32::MAX))? as u32,
                Key::Blocks => cfg.blocks = ranged(key, value, 1, MAX_BLOCKS)?,
                Key::Passes => cfg.passes = ranged(key, value, 1, u64::from(MAX_PASSES))? as u32,
                Key::Qd => cfg.qd = ranged(key, value, 1, u64::from(MAX_QD))? as u16,
                Key::Seed => cfg.seed = ranged(key, value, 0, u64::MAX)?,
                Key::FirstLba => cfg.first_lba = ranged(key, value, 0, MAX_FIRST_LBA)?,
                Key::Disk => {
                    cfg.disk = match value {
                        "boot" => DiskMode::Boot,
                        "hotplug" => DiskMode::Hotplug,
                        _ => return Err(CmdlineError::BadValue(key)),
                    }
                }
                Key::Verify => cfg.verify = parse_flag(value).ok_or(CmdlineError::BadValue(key))?,
                Key::Panic => cfg.panic = parse_flag(value).ok_or(CmdlineError::BadValue(key))?,
                Key::MigrateAt => cfg.migrate_at = ranged(key, value, 0, u64::MAX)?,
                Key::FailbackAt => cfg.failback_at = ranged(key, value, 0, u64::MAX)?,
                Key::Fault => {
                    cfg.fault = match value {
                        "none" => Fault::None,
                        "bad-completion" => Fault::BadCompletion,
                        _ => return Err(CmdlineError::BadValue(key)),
                    }
                }
                Key::Device => {
                    cfg.device = match value {
                        "blk" => DeviceClass::Blk,
                        "net" => DeviceClass::Net,
                        _ => return Err(CmdlineError::BadValue(key)),
                    }
                }
                Key::Frames => cfg.frames = ranged(key, value, 1, MAX_FRAMES)?,
            }
        }
        Ok(cfg)
    }

    /// The workload's write schedule.
    #[must_use]
    pub fn schedule(&self) -> Schedule {
        Schedule {
            seed: self.seed,
            vm: self.vm,
            blocks: self.blocks,
            passes: self.passes,
            first_lba: self.first_lba,
        }
    }
}

impl core::fmt::Display for GuestConfig {
    /// Renders every key, e.g. `role=owner vm=1 blocks=256 passes=4 qd=32 seed=1 first_lba=0
    /// disk=boot verify=1 panic=0 migrate_at=0 failback_at=0 fault=none`; `device=` and
    /// `frames=` follow only when either differs from its default (a block guest's command line
    /// stays as it was before the NIC workload existed).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "role={} vm={} blocks={} passes={} qd={} seed={} first_lba={} disk={} verify={} panic={} \
             migrate_at={} failback_at={} fault={}",
            self.role,
            self.vm,
            self.blocks,
            self.passes,
            self.qd,
            self.seed,
            self.first_lba,
            self.disk,
            u8::from(self.verify),
            u8::from(self.panic),
            self.migrate_at,
            self.failback_at,
            self.fault.as_str(),
        )?;
        if self.device != DeviceClass::Blk || self.frames != DEFAULT_FRAMES {
            write!(f, " device={} frames={}", self.device.as_str(), self.frames)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::ToString;

    #[test]
    fn defaults() {
        assert_eq!(GuestConfig::parse(""), Ok(GuestConfig::default()));
        assert_eq!(GuestConfig::parse("  \t \n"), Ok(GuestConfig::default()));
        assert_eq!(
            GuestConfig::default().to_string(),
            "role=owner vm=1 blocks=256 passes=4 qd=32 seed=1 first_lba=0 disk=boot verify=1 panic=0 \
             migrate_at=0 failback_at=0 fault=none"
        );
    }

    #[test]
    fn all_keys() {
        let c = GuestConfig::parse(
            "  role=peer vm=7  blocks=1048576 passes=64 qd=1 seed=18446744073709551615 \
             first_lba=12345 disk=hotplug verify=0 panic=1 ",
        )
        .unwrap();
        assert_eq!(
            c,
            GuestConfig {
                role: Role::Peer,
                vm: 7,
                blocks: 1 << 20,
                passes: 64,
                qd: 1,
                seed: u64::MAX,
                first_lba: 12345,
                disk: DiskMode::Hotplug,
                verify: false,
                panic: true,
                migrate_at: 0,
                failback_at: 0,
                fault: Fault::None,
                device: DeviceClass::Blk,
                frames: DEFAULT_FRAMES,
            }
        );
        assert_eq!(c.schedule().total_writes(), 64 << 20);
    }

    #[test]
    fn errors() {
        use CmdlineError::*;
        let cases: &[(&str, CmdlineError)] = &[
            ("vm", MissingEquals(ShortStr::new("vm"))),
            ("colour=red", UnknownKey(ShortStr::new("colour"))),
            ("=1", UnknownKey(ShortStr::new(""))),
            ("vm=1 vm=1", DuplicateKey(Key::Vm)),
            ("vm=", BadValue(Key::Vm)),
            ("vm=-1", BadValue(Key::Vm)),
            ("vm=4294967296", OutOfRange(Key::Vm)),
            ("blocks=0", OutOfRange(Key::Blocks)),
            ("blocks=1048577", OutOfRange(Key::Blocks)),
            ("passes=1025", OutOfRange(Key::Passes)),
            ("qd=0", OutOfRange(Key::Qd)),
            ("qd=99999999999999999999", BadValue(Key::Qd)),
            ("seed=0x1", BadValue(Key::Seed)),
            ("first_lba=18446744073709551615", OutOfRange(Key::FirstLba)),
            ("role=Owner", BadValue(Key::Role)),
            ("disk=usb", BadValue(Key::Disk)),
            ("verify=2", BadValue(Key::Verify)),
            ("panic=yes", BadValue(Key::Panic)),
            ("vm=1=2", BadValue(Key::Vm)),
            ("device=nic", BadValue(Key::Device)),
            ("frames=0", OutOfRange(Key::Frames)),
            ("frames=16777217", OutOfRange(Key::Frames)),
        ];
        for (line, err) in cases {
            assert_eq!(GuestConfig::parse(line), Err(*err), "{line:?}");
        }
        assert_eq!(
            GuestConfig::parse("qd=0").unwrap_err().to_string(),
            "cmdline: value of `qd` out of range"
        );
        assert_eq!(
            GuestConfig::parse("a_very_long_unknown_key_name_indeed=1")
                .unwrap_err()
                .to_string(),
            "cmdline: unknown key `a_very_long_unknown_key_...`"
        );
    }

    fn arb_config() -> impl Strategy<Value = GuestConfig> {
        (
            prop_oneof![Just(Role::Owner), Just(Role::Peer)],
            any::<u32>(),
            1..=MAX_BLOCKS,
            1..=MAX_PASSES,
            1..=MAX_QD,
            any::<u64>(),
            0..=MAX_FIRST_LBA,
            prop_oneof![Just(DiskMode::Boot), Just(DiskMode::Hotplug)],
            (
                any::<bool>(),
                any::<bool>(),
                any::<u64>(),
                any::<u64>(),
                prop_oneof![Just(Fault::None), Just(Fault::BadCompletion)],
            ),
            (
                prop_oneof![Just(DeviceClass::Blk), Just(DeviceClass::Net)],
                prop_oneof![Just(DEFAULT_FRAMES), 1..=MAX_FRAMES],
            ),
        )
            .prop_map(
                |(
                    role,
                    vm,
                    blocks,
                    passes,
                    qd,
                    seed,
                    first_lba,
                    disk,
                    (verify, panic, migrate_at, failback_at, fault),
                    (device, frames),
                )| {
                    GuestConfig {
                        role,
                        vm,
                        blocks,
                        passes,
                        qd,
                        seed,
                        first_lba,
                        disk,
                        verify,
                        panic,
                        migrate_at,
                        failback_at,
                        fault,
                        device,
                        frames,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn display_round_trips(c in arb_config()) {
            prop_assert_eq!(GuestConfig::parse(&c.to_string()), Ok(c));
        }

        #[test]
        fn subset_in_any_order(c in arb_config(), mask: u16, rot in 0usize..10) {
            // Any subset of the rendered words, in any rotation, parses to those values.
            let full = c.to_string();
            let mut words: std::vec::Vec<&str> = full.split(' ').collect();
            words.rotate_left(rot);
            let kept: std::vec::Vec<&str> = words
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, w)| *w)
                .collect();
            let parsed = GuestConfig::parse(&kept.join("   ")).unwrap();
            let defaults = GuestConfig::parse("").unwrap();
            for w in &words {
                let key = w.split('=').next().unwrap();
                let single = GuestConfig::parse(w).unwrap();
                let field_is_set = kept.contains(w);
                let expected = if field_is_set { single } else { defaults };
                // Compare just the field named by the word: render both and pick that word.
                // (`device=` and `frames=` are rendered only off their defaults: add them.)
                let pick = |g: &GuestConfig| {
                    let mut all = g.to_string();
                    if !all.contains(" device=") {
                        all += &std::format!(" device={} frames={}", g.device.as_str(), g.frames);
                    }
                    all.split(' ').find(|x| x.starts_with(&std::format!("{key}="))).unwrap().to_string()
                };
                prop_assert_eq!(pick(&parsed), pick(&expected));
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = GuestConfig::parse(&s);
        }

        #[test]
        fn parse_never_panics_near_miss(s in "((role|vm|blocks|passes|qd|seed|first_lba|disk|verify|panic|x)=?[0-9a-z]{0,22} ?){0,12}") {
            if let Err(e) = GuestConfig::parse(&s) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
