//! Strategies shared by the control-protocol property tests (`control_props.rs`,
//! `control_handoff.rs`).

use baton_core::control::{MAX_PCI_SLOT, Message, Role};
use proptest::prelude::*;

/// Either role.
pub fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Owner), Just(Role::Peer)]
}

/// Any message of the grammar; `hello`'s VM id and version are drawn from `vm` and `version`
/// (a test of the gate narrows them so that some `hello`s are the right one).
pub fn message(
    vm: impl Strategy<Value = u32> + Clone + 'static,
    version: impl Strategy<Value = u32> + Clone + 'static,
) -> impl Strategy<Value = Message> {
    let slot = 0..=MAX_PCI_SLOT;
    prop_oneof![
        (role(), vm, version).prop_map(|(role, vm, version)| Message::Hello { role, vm, version }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(completed, held)| Message::Drained { completed, held }),
        slot.clone().prop_map(|slot| Message::Released { slot }),
        any::<u64>().prop_map(|capacity_sectors| Message::PeerReady { capacity_sectors }),
        Just(Message::Forwarding),
        Just(Message::MigrateRequest),
        any::<u32>().prop_map(|code| Message::Error { code }),
        any::<u32>().prop_map(|seq| Message::Ack { seq }),
        Just(Message::Redirect),
        slot.clone().prop_map(|slot| Message::RingOpened { slot }),
        slot.clone().prop_map(|slot| Message::DiskAttached { slot }),
        Just(Message::OpenPort2),
        Just(Message::FailbackRequest),
        (any::<u32>(), any::<u32>()).prop_map(|(replay, held)| Message::Abandoned { replay, held }),
        Just(Message::PeerLost),
        Just(Message::Direct),
        Just(Message::Failback),
        Just(Message::ReleaseDisk),
        slot.prop_map(|slot| Message::CloseRing { slot }),
        Just(Message::TakeBack),
        Just(Message::GiveUp),
        any::<u32>().prop_map(|ms| Message::PeerStalled { ms }),
    ]
}
