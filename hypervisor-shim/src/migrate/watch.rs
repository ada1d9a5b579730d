//! Watching the QEMUs (issue 9, "Watch the VMs"; docs/design.md, "An I/O error on the host"):
//! a request that failed on the host is named with its cause in the progress, the notes and the
//! failures. Under `--on-io-error fail` every virtio-blk reports errors to the guest
//! (`werror=report`): QEMU completes the request with VIRTIO_BLK_S_IOERR and sends
//! `BLOCK_IO_ERROR` with action `report`; the run goes on, so that the owner stops its workload,
//! reports and the disk is verified, and it fails naming the cause ("the owner's QEMU: a write
//! failed: no space left on device (disk.img)"). Under `wait`, QEMU's default `werror=enospc`
//! pauses the VM on a full disk (action `stop`) and the shim resumes it once space was freed, or
//! stops the run naming the pause. A migration that failed is cancelled (`migrate_cancel`, then
//! awaited) before the source is resumed.

use super::*;
use crate::qmp::MigrateCancel;

/// How long a rollback waits for a cancelled migration to leave its active states.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// A VM stopped (its last `STOP` not followed by a `RESUME`) this long gets a `query-status`.
const STOPPED_LONG: Duration = Duration::from_secs(2);
/// At most one such `query-status` round per this interval.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Run states of a VM that QEMU stopped on a fault (the schema's `RunState`): nothing the
/// scenario does leads there, and the guest cannot go on without help.
const FAULT_STATES: [&str; 3] = ["io-error", "internal-error", "guest-panicked"];
/// How often the watch reads the QMP sockets of the running QEMUs for events (otherwise read
/// only with a command's reply): an error a guest was told of must be named even when no command
/// follows it before the owner exits. Each read waits at most one socket timeout (2 ms); a QEMU
/// that exited is read at once.
const PUMP_EVERY: Duration = Duration::from_millis(100);
/// strerror(ENOSPC), the `reason` of QEMU's `BLOCK_IO_ERROR` for a full disk.
const ENOSPC_TEXT: &str = "No space left on device";
/// `--on-io-error wait`: how often `cont` is tried on a VM paused on an I/O error.
const RESUME_EVERY: Duration = Duration::from_millis(500);
/// How long after `cont` a new `BLOCK_IO_ERROR` (still no room) is looked for.
const RESUME_SETTLE: Duration = Duration::from_millis(200);

/// What the watch found so far.
#[derive(Debug, Default)]
pub(super) struct WatchState {
    /// The first fault pause of a QEMU, named with its cause; every later round fails with it.
    pub(super) fault: Option<String>,
    /// The first error a QEMU reported to its guest (action `report`), named with its cause: the
    /// run's failure, kept once while the run goes on.
    pub(super) reported: Option<String>,
    /// Per QEMU (by label): events already looked at for an I/O-error pause.
    seen: std::collections::HashMap<&'static str, usize>,
    /// I/O-error pauses resumed after space was freed (`--on-io-error wait`).
    pub(super) resumed: u32,
    /// When the last `query-status` round of a long-stopped VM ran.
    status_checked: Option<Instant>,
    /// When the QMP sockets were last read for events outside a command.
    pumped: Option<Instant>,
}

/// The cause of an I/O error, as the failure names it: a pause (action `stop`) as `the peer's
/// QEMU paused: no space left on device (disk.img)`, an error passed to the guest (action
/// `report`) as `the owner's QEMU: a write failed: no space left on device (disk.img)`. `image`
/// is the disk's file name (absent for `null-co`).
pub(super) fn io_error_cause(
    label: &str,
    e: &qapi::qmp::BLOCK_IO_ERROR,
    image: Option<&str>,
) -> String {
    let what = io_error_what(e, image);
    if matches!(e.action, qapi::qmp::BlockErrorAction::report) {
        let op = match e.operation {
            qapi::qmp::IoOperationType::read => "read",
            qapi::qmp::IoOperationType::write => "write",
        };
        format!("the {label}'s QEMU: a {op} failed: {what}")
    } else {
        format!("the {label}'s QEMU paused: {what}")
    }
}

/// The reason of an I/O error and the file (or node) it hit: `no space left on device (disk.img)`.
fn io_error_what(e: &qapi::qmp::BLOCK_IO_ERROR, image: Option<&str>) -> String {
    let mut reason = e.reason.trim().to_owned();
    if reason.is_empty() && e.nospace == Some(true) {
        reason = "no space left on device".into();
    }
    // QEMU's text is strerror's ("No space left on device"): lower-case its first letter.
    if let Some(c) = reason.get(..1)
        && c.chars().all(|c| c.is_ascii_uppercase())
        && !reason
            .get(1..2)
            .is_some_and(|c| c.chars().all(|c| c.is_ascii_uppercase()))
    {
        reason = c.to_ascii_lowercase() + &reason[1..];
    }
    let node = e.node_name.as_deref().filter(|n| !n.is_empty());
    let what = match (image, node) {
        (Some(i), _) => format!(" ({i})"),
        (None, Some(n)) => format!(" (node {n})"),
        (None, None) if !e.device.is_empty() => format!(" ({})", e.device),
        (None, None) => String::new(),
    };
    format!("{reason}{what}")
}

impl Scenario<'_> {
    /// Looks at the events of the owner's and the peer's QEMU for a `BLOCK_IO_ERROR`. The first
    /// error QEMU passed to the guest (action `report`) is named once (progress, notes,
    /// failures) and the run goes on: the guest fails the request, finishes and reports. The
    /// first pause (action `stop`, `--on-io-error wait` only) is named once and kept in the facts;
    /// unless space is freed in time, every round then fails with it. An ENOSPC in the QEMU that
    /// `--inject enospc@...` armed marks the fault as fired. Then a VM stopped for long gets a
    /// `query-status` ([`Scenario::watch_long_stops`]).
    pub(super) fn watch_vms(&mut self, p: &mut Progress) -> Result<(), Abort> {
        if let Some(why) = &self.facts.watch.fault {
            return Err(Abort::Other(why.clone()));
        }
        let due = self
            .facts
            .watch
            .pumped
            .is_none_or(|t| t.elapsed() >= PUMP_EVERY);
        if due {
            self.facts.watch.pumped = Some(Instant::now());
        }
        for vm in [&mut self.vms.owner, &mut self.vms.peer] {
            // A QEMU that exited is read once more, to its end (its socket then closes and is
            // dropped): what it sent last must not go with it.
            if vm.qmp.is_some() && (due || vm.exit.is_some()) {
                vm.pump_events(Duration::from_millis(1));
            }
        }
        let image = self.vms.backend.image_name();
        let mut found = None;
        let mut reported = None;
        let mut fired = false;
        let armed = self.cfg.inject.and_then(Inject::enospc_in);
        for (i, vm) in [&self.vms.owner, &self.vms.peer].into_iter().enumerate() {
            let seen = self.facts.watch.seen.get(vm.label).copied().unwrap_or(0);
            for (_, ev) in vm.events.iter().skip(seen) {
                let Some(e) = ev.block_io_error() else {
                    continue;
                };
                // QEMU sets `nospace` only where it may pause (`werror=enospc`); its reason is
                // strerror's either way.
                fired |=
                    armed == Some(vm.label) && (e.nospace == Some(true) || e.reason == ENOSPC_TEXT);
                match e.action {
                    qapi::qmp::BlockErrorAction::stop => {
                        found = Some((i, io_error_cause(vm.label, &e, image.as_deref())));
                        break;
                    }
                    qapi::qmp::BlockErrorAction::report if reported.is_none() => {
                        reported = Some(io_error_cause(vm.label, &e, image.as_deref()));
                    }
                    _ => {}
                }
            }
            if found.is_some() {
                break;
            }
        }
        if fired && let Some(i) = self.cfg.inject {
            self.maybe_inject(p, i);
        }
        if let Some(why) = reported.filter(|_| self.facts.watch.reported.is_none()) {
            let stops = match self.cfg.on_io_error {
                IoErrorPolicy::Fail => "the guest fails the request, finishes and reports",
                IoErrorPolicy::Wait(_) => {
                    "passed to the guest (not a full disk: nothing to wait for)"
                }
            };
            p.say(format!("{why}; {stops}"));
            self.note(why.clone());
            self.out.failures.push(why.clone());
            self.facts.watch.reported = Some(why);
        }
        if let Some((i, why)) = found {
            return match self.cfg.on_io_error {
                IoErrorPolicy::Fail => Err(self.stopped_on_a_fault(p, why)),
                IoErrorPolicy::Wait(limit) => self.wait_for_space(p, i, why, limit),
            };
        }
        self.watch_long_stops(p)
    }

    /// `--on-io-error wait`: the VM (`who`: 0 the owner's QEMU, 1 the peer's) paused on an I/O
    /// error (`why`); `cont` is tried every [`RESUME_EVERY`] until it stays running (QEMU retries
    /// the failed request on `cont`, and pauses again while there is still no room), for at most
    /// `limit`; then the run stops with the cause. The shim's loop waits meanwhile: the other guest
    /// only waits for the paused one, and the control channels retransmit what they miss.
    fn wait_for_space(
        &mut self,
        p: &mut Progress,
        who: usize,
        why: String,
        limit: Duration,
    ) -> Result<(), Abort> {
        p.say(format!(
            "{why}; waiting up to {} s for space to be freed (--on-io-error wait)",
            limit.as_secs()
        ));
        self.note(why.clone());
        let start = Instant::now();
        loop {
            if setup::interrupted() {
                return Err(Abort::Interrupted);
            }
            std::thread::sleep(RESUME_EVERY);
            let vm = if who == 0 {
                &mut self.vms.owner
            } else {
                &mut self.vms.peer
            };
            let mark = vm.events.len();
            let _ = vm.exec(&Cont {});
            std::thread::sleep(RESUME_SETTLE);
            vm.pump_events(QMP_POLL);
            let paused_again = vm.events.iter().skip(mark).any(|(_, e)| {
                e.block_io_error()
                    .is_some_and(|x| matches!(x.action, qapi::qmp::BlockErrorAction::stop))
            });
            let label = vm.label;
            self.facts.watch.seen.insert(label, vm.events.len());
            let running = !paused_again && vm.exec(&QueryStatus {}).is_ok_and(|s| s.running);
            if running {
                self.facts.watch.resumed += 1;
                let msg = format!(
                    "space freed: the {label}'s QEMU resumed after {} ms; the failed write was retried",
                    start.elapsed().as_millis()
                );
                p.say(msg.clone());
                self.note(msg);
                return Ok(());
            }
            if start.elapsed() >= limit {
                return Err(self.stopped_on_a_fault(
                    p,
                    format!("{why}; no space was freed within {} s", limit.as_secs()),
                ));
            }
        }
    }

    /// A VM whose last `STOP` came [`STOPPED_LONG`] ago with no `RESUME` since gets a
    /// `query-status` (at most once per [`STATUS_EVERY`]); a fault state ([`FAULT_STATES`]) stops
    /// the run, named. A pause the scenario made (a save's `postmigrate`, a stopped peer) is
    /// `paused` or a migration state, and passes.
    fn watch_long_stops(&mut self, p: &mut Progress) -> Result<(), Abort> {
        if self
            .facts
            .watch
            .status_checked
            .is_some_and(|t| t.elapsed() < STATUS_EVERY)
        {
            return Ok(());
        }
        let mut found = None;
        for vm in [&mut self.vms.owner, &mut self.vms.peer] {
            let stopped = vm
                .events
                .iter()
                .rev()
                .find(|(_, e)| e.name == "STOP" || e.name == "RESUME")
                .is_some_and(|(at, e)| e.name == "STOP" && at.elapsed() >= STOPPED_LONG);
            if !stopped || vm.exit.is_some() {
                continue;
            }
            self.facts.watch.status_checked = Some(Instant::now());
            if let Ok(s) = vm.exec(&QueryStatus {})
                && FAULT_STATES.contains(&s.status.as_str())
            {
                found = Some(format!(
                    "the {}'s QEMU stopped the VM: its run state is `{}`",
                    vm.label, s.status
                ));
                break;
            }
        }
        match found {
            Some(why) => Err(self.stopped_on_a_fault(p, why)),
            None => Ok(()),
        }
    }

    /// Names a fault pause once (progress, notes) and keeps it: the run stops (policy `fail`).
    fn stopped_on_a_fault(&mut self, p: &mut Progress, why: String) -> Abort {
        p.say(format!("{why}; the run stops (on an I/O error: fail)"));
        self.note(why.clone());
        self.facts.watch.fault = Some(why.clone());
        Abort::Other(why)
    }

    /// Cancels the owner's outgoing migration, whatever state it is in, and waits (at most
    /// [`CANCEL_TIMEOUT`]) until `query-migrate` no longer says it is under way; `cont` on a
    /// source whose migration still runs would race its completion. What happened goes to the
    /// notes; nothing here fails the rollback.
    fn cancel_migration(&mut self, p: &mut Progress) {
        if self.vms.owner.poll_exit().is_some() {
            return;
        }
        let before = self.vms.owner.exec(&QueryMigrate {});
        if let Err(e) = self.vms.owner.exec(&MigrateCancel {}) {
            self.note(format!("`migrate_cancel` failed: {}", chain(&e)));
            return;
        }
        let start = Instant::now();
        loop {
            match self.vms.owner.exec(&QueryMigrate {}) {
                Ok(info) if !info.in_progress() => {
                    let was = before
                        .ok()
                        .and_then(|b| b.status)
                        .unwrap_or_else(|| "none".into());
                    let now = info.status.unwrap_or_else(|| "none".into());
                    if was != now {
                        p.say(format!("the migration was cancelled ({was} → {now})"));
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    self.note(format!(
                        "`query-migrate` after `migrate_cancel` failed: {}",
                        chain(&e)
                    ));
                    return;
                }
            }
            if start.elapsed() >= CANCEL_TIMEOUT {
                let e = format!(
                    "the migration was still under way {CANCEL_TIMEOUT:?} after `migrate_cancel`"
                );
                p.say(e.clone());
                self.note(e);
                return;
            }
            std::thread::sleep(MIGRATE_POLL);
        }
    }

    /// A migration that failed: cancel it, stop the destination, resume the source so the owner
    /// keeps running there.
    pub(super) fn roll_back(&mut self, p: &mut Progress, why: String, dest: Option<Vm>) {
        self.facts.migration.error = Some(why.clone());
        self.out.failures.push(format!("migration failed: {why}"));
        p.say(format!("migration FAILED: {why}"));
        self.cancel_migration(p);
        if let Some(mut d) = dest {
            let status = match d.poll_exit() {
                Some(st) => {
                    let tail = d.stderr_tail();
                    if !tail.is_empty() {
                        self.note(format!("{} QEMU stderr: {tail}", d.label));
                    }
                    format!("exited ({})", describe_exit(st))
                }
                None => match d.exec(&QueryStatus {}) {
                    Ok(s) => s.status,
                    Err(_) => "unknown".into(),
                },
            };
            p.say(format!("the {} QEMU is {status}; stopping it", d.label));
            self.facts
                .migration
                .destination_status
                .get_or_insert(status);
            d.kill();
            d.take_events();
            self.vms.retired.push(d);
        }
        let running = self.vms.owner.exec(&QueryStatus {}).map(|s| s.running);
        match running {
            Ok(true) => p.say("the source still runs the owner"),
            Ok(false) => match self.vms.owner.exec(&Cont {}) {
                Ok(_) => {
                    self.facts.migration.source_resumed = true;
                    p.say("rolled back: `cont` resumed the source; the owner continues there");
                }
                Err(e) => {
                    let e = format!("cannot resume the source: {}", chain(&e));
                    p.say(e.clone());
                    self.out.failures.push(e);
                }
            },
            Err(e) => self.note(format!("source status unknown: {}", chain(&e))),
        }
        // Refused when the migration never began in the table (its `begin-migration` was
        // refused, noted there) or a guest's `error` moved the handoff to `Failed` meanwhile. A
        // cross-host migration runs inside the failback and never enters `Migrating`.
        if self.ctl.handoff.state() == baton_core::control::HandoffState::Migrating {
            self.shim_acts(ShimAction::EndMigration);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(json: &str) -> qapi::qmp::BLOCK_IO_ERROR {
        let e = qmp::Event {
            name: "BLOCK_IO_ERROR".into(),
            data: serde_json::from_str(json).unwrap(),
            timestamp_us: 1,
        };
        e.block_io_error().unwrap()
    }

    #[test]
    fn an_enospc_pause_is_named_with_its_cause_and_file() {
        let e = ev(
            r#"{"device": "", "node-name": "disk0", "reason": "No space left on device",
                "operation": "write", "action": "stop", "nospace": true}"#,
        );
        assert_eq!(
            io_error_cause("peer", &e, Some("disk.img")),
            "the peer's QEMU paused: no space left on device (disk.img)"
        );
        assert_eq!(
            io_error_cause("owner", &e, None),
            "the owner's QEMU paused: no space left on device (node disk0)"
        );
        let e = ev(
            r#"{"device": "", "reason": "", "operation": "write", "action": "stop",
                "nospace": true}"#,
        );
        assert_eq!(
            io_error_cause("destination", &e, Some("d.img")),
            "the destination's QEMU paused: no space left on device (d.img)"
        );
        let e = ev(r#"{"device": "", "reason": "EIO", "operation": "read", "action": "stop"}"#);
        assert_eq!(
            io_error_cause("owner", &e, None),
            "the owner's QEMU paused: EIO"
        );
    }

    #[test]
    fn an_error_reported_to_the_guest_names_the_operation() {
        let e = ev(
            r#"{"device": "", "node-name": "disk0", "reason": "No space left on device",
                "operation": "write", "action": "report", "nospace": true}"#,
        );
        assert_eq!(
            io_error_cause("owner", &e, Some("disk.img")),
            "the owner's QEMU: a write failed: no space left on device (disk.img)"
        );
        let e = ev(
            r#"{"device": "", "reason": "Input/output error", "operation": "read",
                       "action": "report"}"#,
        );
        assert_eq!(
            io_error_cause("peer", &e, None),
            "the peer's QEMU: a read failed: input/output error"
        );
    }
}
