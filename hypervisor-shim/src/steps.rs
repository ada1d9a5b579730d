//! One typed record of each handoff: which step happened when, by the shim's monotonic clock.
//!
//! The steps are those of docs/design.md, "The handoff" (US 20070204265A1, claim 1: direct the
//! save, hold new requests at port 2 while port 1 drains, release the device, reassign it to the
//! peer, forward over the shared-memory ring). [`Step`] names them without saying who gives the
//! device to whom: a [`HandoffRecord`] carries its [`Direction`] (owner → peer today; peer → owner
//! for a failback), so the same record serves both ways and a run may hold several.
//!
//! Each step's [`Instant`] is recorded where it happens (a control message's arrival, a QMP
//! event's stamp, a command sent); the progress display, the `migrate` report's `phases` and the
//! bench's tables are all computed from the record through [`SPANS`]. No figure is ever read back
//! from the progress text.
//!
//! One step, one name, everywhere: docs/design.md ("The handoff") draws the sequence with each
//! step under its [`Step`] name, and its table "One step, one name" gives, per step, what marks
//! it, the guest's redirector state and the shim's `HandoffState` after it, and the report's and
//! the bench's intervals that start or end at it.
//!
//! [`SPANS`] is the one table from step pairs to those field names.

use std::fmt;
use std::time::Instant;

use baton_core::control::Role;

/// One step of a handoff, in the order the shim runs them (see docs/design.md for the sequence).
/// "From" is the guest that gives the device up, "to" the one that takes it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// The shim directed the handoff: `device_del` of the device in "from", then `redirect` to it
    /// (claim 1: new requests are held at port 2). Taken just before `device_del`.
    Directed,
    /// `ring-opened` sent to both guests: the shared-memory ring exists in both QEMUs.
    RingOpened,
    /// "From"'s `drained` arrived: nothing is in flight on its device port (port 1).
    Drained,
    /// "From"'s QEMU released the drive (image unlocked): its first `DEVICE_DELETED`, by QEMU's
    /// own event stamp. (The report calls this "device deleted".)
    DriveReleased,
    /// The shim read that `DEVICE_DELETED` and acted on it (`device_add` in "to").
    DriveReleaseSeen,
    /// "From"'s `released` arrived: it reset the device and ejected its slot.
    Released,
    /// `disk-attached` sent to "to": the device is in its QEMU.
    Attached,
    /// "To"'s `peer-ready` arrived: the device initialised, the ring attached.
    Ready,
    /// "From"'s `forwarding` arrived: the new port (port 2, over the ring) is open.
    PortOpen,
    /// The first completion on the new port: the ring's completion tail moved (a read-only map of
    /// the ring file).
    FirstCompletion,
    /// The migration (live) or the save (`migrate` to a file) was issued.
    MigrationStarted,
    /// Save: `migrate` to the file completed.
    Saved,
    /// Save: the restore QEMU was started.
    RestoreStarted,
    /// Save: the restored QEMU runs the guest.
    Restored,
    /// The migrated guest runs again: at the destination (live) or in the restored QEMU (save).
    Migrated,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 15] = [
        Step::Directed,
        Step::RingOpened,
        Step::Drained,
        Step::DriveReleased,
        Step::DriveReleaseSeen,
        Step::Released,
        Step::Attached,
        Step::Ready,
        Step::PortOpen,
        Step::FirstCompletion,
        Step::MigrationStarted,
        Step::Saved,
        Step::RestoreStarted,
        Step::Restored,
        Step::Migrated,
    ];

    /// The step's name in the progress display (`"{label}: ..."`).
    pub const fn label(self) -> &'static str {
        match self {
            Step::Directed => "directed",
            Step::RingOpened => "ring opened",
            Step::Drained => "drained",
            Step::DriveReleased => "drive released",
            Step::DriveReleaseSeen => "drive release seen",
            Step::Released => "released",
            Step::Attached => "attached",
            Step::Ready => "ready",
            Step::PortOpen => "port open",
            Step::FirstCompletion => "first completion",
            Step::MigrationStarted => "migration started",
            Step::Saved => "saved",
            Step::RestoreStarted => "restore started",
            Step::Restored => "restored",
            Step::Migrated => "migrated",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Who gives the device up (`from`) and who takes it over (`to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Direction {
    /// The guest that drains and releases the device.
    pub from: Role,
    /// The guest that receives the device and serves the ring.
    pub to: Role,
}

impl Direction {
    /// The handoff: the owner gives its device to the peer.
    pub const OWNER_TO_PEER: Self = Self {
        from: Role::Owner,
        to: Role::Peer,
    };

    /// The same handoff the other way round (a failback).
    pub const fn reversed(self) -> Self {
        Self {
            from: self.to,
            to: self.from,
        }
    }
}

/// When each step of one handoff happened, by the shim's monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoffRecord {
    direction: Direction,
    at: [Option<Instant>; Step::ALL.len()],
}

impl HandoffRecord {
    /// An empty record of a handoff in `direction`.
    pub fn new(direction: Direction) -> Self {
        Self {
            direction,
            at: [None; Step::ALL.len()],
        }
    }

    /// Which way the device moves.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Records `step` at `at`. A step happens once per handoff: the first time recorded is kept
    /// and `false` returned for a repeat.
    pub fn record(&mut self, step: Step, at: Instant) -> bool {
        let slot = &mut self.at[step.index()];
        if slot.is_some() {
            return false;
        }
        *slot = Some(at);
        true
    }

    /// When `step` happened (`None`: not reached).
    pub fn at(&self, step: Step) -> Option<Instant> {
        self.at[step.index()]
    }

    /// Whether `step` was reached.
    pub fn reached(&self, step: Step) -> bool {
        self.at(step).is_some()
    }

    /// `from` → `to` in ms (signed, 0.1 ms resolution); `None` unless both were reached.
    pub fn ms(&self, from: Step, to: Step) -> Option<f64> {
        Some(ms_between(self.at(from)?, self.at(to)?))
    }

    /// The duration of `span`, in ms.
    pub fn span_ms(&self, span: &Span) -> Option<f64> {
        self.ms(span.from, span.to)
    }

    /// When `step` happened, in ms since `t0`.
    pub fn since(&self, t0: Instant, step: Step) -> Option<f64> {
        self.at(step).map(|at| ms_between(t0, at))
    }
}

/// `a` → `b` in ms, signed, rounded to 0.1 ms.
pub fn ms_between(a: Instant, b: Instant) -> f64 {
    let d = if b >= a {
        (b - a).as_secs_f64()
    } else {
        -(a - b).as_secs_f64()
    };
    (d * 1e4).round() / 10.0
}

/// A named interval between two steps: a field of the `migrate` report's `phases`
/// ([`crate::report::Phases`]), of the bench's phases ([`crate::bench::handoff::PhaseTimes`]),
/// or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Start.
    pub from: Step,
    /// End.
    pub to: Step,
    /// Its field in the report's `phases` (`None`: not in the report).
    pub report: Option<&'static str>,
    /// Its field in the bench's phases and tables (`None`: not in the bench).
    pub bench: Option<&'static str>,
}

const fn span(
    from: Step,
    to: Step,
    report: Option<&'static str>,
    bench: Option<&'static str>,
) -> Span {
    Span {
        from,
        to,
        report,
        bench,
    }
}

/// Port 1 drains: [`Step::Directed`] → [`Step::Drained`].
pub const DIRECTED_TO_DRAINED: Span = span(
    Step::Directed,
    Step::Drained,
    Some("directed_to_drained_ms"),
    Some("directed_to_drained_ms"),
);
/// QEMU releases the drive after the drain: [`Step::Drained`] → [`Step::DriveReleased`]. The
/// report says `drained_to_device_deleted_ms` and the bench `drained_to_deleted_ms`: the same
/// span, both names kept because reports and BENCHMARKS.md already use them ("device deleted"
/// is QEMU's `DEVICE_DELETED`, which marks the drive released).
pub const DRAINED_TO_DRIVE_RELEASED: Span = span(
    Step::Drained,
    Step::DriveReleased,
    Some("drained_to_device_deleted_ms"),
    Some("drained_to_deleted_ms"),
);
/// The device moves and the peer starts: [`Step::DriveReleased`] → [`Step::Ready`]. In the
/// historical field names "attached" means the peer's `peer-ready` ([`Step::Ready`]), not
/// `disk-attached` ([`Step::Attached`]).
pub const DRIVE_RELEASED_TO_READY: Span = span(
    Step::DriveReleased,
    Step::Ready,
    Some("device_deleted_to_attached_ms"),
    Some("deleted_to_attached_ms"),
);
/// The owner's frames: [`Step::Drained`] → [`Step::Released`] (`drained` → `released`: the
/// device's reset and the `drained` frame's round trip). On the blackout's path since issue 12.
pub const DRAINED_TO_RELEASED: Span = span(
    Step::Drained,
    Step::Released,
    None,
    Some("drained_to_released_ms"),
);
/// The peer's `device_add`: [`Step::Released`] → [`Step::Attached`] (`released` → `disk-attached`
/// sent). On the blackout's path since issue 12.
pub const RELEASED_TO_ATTACHED: Span = span(
    Step::Released,
    Step::Attached,
    None,
    Some("released_to_attached_ms"),
);
/// [`Step::Ready`] → [`Step::FirstCompletion`] ("attached" = peer ready, as above).
pub const READY_TO_FIRST_COMPLETION: Span = span(
    Step::Ready,
    Step::FirstCompletion,
    Some("attached_to_first_forwarded_ms"),
    Some("attached_to_first_forwarded_ms"),
);
/// The whole handoff: [`Step::Directed`] → [`Step::PortOpen`] (`redirect` → `forwarding`).
pub const HANDOFF: Span = span(
    Step::Directed,
    Step::PortOpen,
    Some("handoff_ms"),
    Some("handoff_ms"),
);
/// Destination set-up: [`Step::PortOpen`] → [`Step::MigrationStarted`].
pub const MIGRATION_SETUP: Span = span(
    Step::PortOpen,
    Step::MigrationStarted,
    Some("migration_setup_ms"),
    Some("migration_setup_ms"),
);
/// [`Step::MigrationStarted`] → [`Step::Migrated`] (save: save + quit + restore).
pub const MIGRATION: Span = span(
    Step::MigrationStarted,
    Step::Migrated,
    Some("migration_ms"),
    Some("migration_ms"),
);
/// Save: [`Step::MigrationStarted`] → [`Step::Saved`].
pub const SAVE: Span = span(Step::MigrationStarted, Step::Saved, Some("save_ms"), None);
/// Save: [`Step::RestoreStarted`] → [`Step::Restored`].
pub const RESTORE: Span = span(
    Step::RestoreStarted,
    Step::Restored,
    Some("restore_ms"),
    None,
);
/// Inside [`DRIVE_RELEASED_TO_READY`]: QEMU's event stamp → the shim acting on it.
pub const SHIM_REACTION: Span = span(
    Step::DriveReleased,
    Step::DriveReleaseSeen,
    None,
    Some("shim_reaction_ms"),
);
/// Inside [`DRIVE_RELEASED_TO_READY`]: the shim acted → `disk-attached` sent (the peer's
/// `device_add`, overlapping the wait for the owner's `released`).
pub const TO_ATTACHED: Span = span(
    Step::DriveReleaseSeen,
    Step::Attached,
    None,
    Some("to_disk_attached_ms"),
);
/// Inside [`DRIVE_RELEASED_TO_READY`]: `disk-attached` sent → `peer-ready` received (the peer's
/// PCI and virtio-blk bring-up, COM2 both ways).
pub const PEER_INIT: Span = span(Step::Attached, Step::Ready, None, Some("peer_init_ms"));

/// Every named span, in report order then the bench's sub-phases: the one table from step pairs
/// to the report's and the bench's field names.
pub const SPANS: [Span; 14] = [
    DIRECTED_TO_DRAINED,
    DRAINED_TO_RELEASED,
    RELEASED_TO_ATTACHED,
    DRAINED_TO_DRIVE_RELEASED,
    DRIVE_RELEASED_TO_READY,
    READY_TO_FIRST_COMPLETION,
    HANDOFF,
    MIGRATION_SETUP,
    MIGRATION,
    SAVE,
    RESTORE,
    SHIM_REACTION,
    TO_ATTACHED,
    PEER_INIT,
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn steps_are_listed_in_order() {
        for (i, s) in Step::ALL.iter().enumerate() {
            assert_eq!(s.index(), i, "{s:?}");
        }
    }

    #[test]
    fn a_step_is_recorded_once() {
        let t = Instant::now();
        let mut r = HandoffRecord::new(Direction::OWNER_TO_PEER);
        assert!(r.record(Step::Directed, t));
        assert!(!r.record(Step::Directed, t + Duration::from_millis(5)));
        assert_eq!(r.at(Step::Directed), Some(t));
        assert!(!r.reached(Step::Drained));
        r.record(Step::Drained, t + Duration::from_micros(1500));
        assert_eq!(r.span_ms(&DIRECTED_TO_DRAINED), Some(1.5));
        assert_eq!(r.ms(Step::Drained, Step::Directed), Some(-1.5));
        assert_eq!(r.span_ms(&HANDOFF), None);
        assert_eq!(r.since(t, Step::Drained), Some(1.5));
    }

    #[test]
    fn directions_reverse() {
        let d = Direction::OWNER_TO_PEER;
        assert_eq!(d.reversed().from, Role::Peer);
        assert_eq!(d.reversed().reversed(), d);
        assert_eq!(HandoffRecord::new(d.reversed()).direction(), d.reversed());
    }

    #[test]
    fn span_names_are_unique() {
        for side in [|s: &Span| s.report, |s: &Span| s.bench] {
            let mut names: Vec<_> = SPANS.iter().filter_map(side).collect();
            let n = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), n);
        }
    }
}
