//! The NIC workload against a fake NIC whose "wire" is the test: it takes the transmitted
//! frames and delivers the host's frames into posted receive buffers, in any order it likes.

use super::*;
use crate::fakes::hal::FakeHal;
use crate::ports::nic::NicCompletion;
use baton_core::net::MAX_FRAME_LEN;
use std::collections::VecDeque;

const OFF: usize = 12;

#[derive(Default)]
struct FakeNic {
    /// Posted receive buffers, in posting order.
    rx: VecDeque<(usize, *mut u8)>,
    /// Transmits taken by the device, not yet completed: (slot, frame).
    tx: VecDeque<(usize, Vec<u8>)>,
    /// Frames the device put out, in order.
    wire: Vec<Vec<u8>>,
    done: VecDeque<NicCompletion>,
    /// Complete transmits with an error.
    fail_tx: bool,
}

impl FakeNic {
    /// The device finishes every transmit.
    fn complete_tx(&mut self) {
        while let Some((slot, frame)) = self.tx.pop_front() {
            self.wire.push(frame);
            let len = (!self.fail_tx).then_some(0);
            self.done.push_back(NicCompletion {
                slot,
                op: NicOp::Tx,
                len,
            });
        }
    }

    /// Delivers `frame` into the oldest posted buffer; false if none is posted.
    fn deliver(&mut self, frame: &[u8]) -> bool {
        let Some((slot, buf)) = self.rx.pop_front() else {
            return false;
        };
        // SAFETY: the workload posted this buffer of NIC_BUF_BYTES and does not touch it until
        // the completion below is polled.
        unsafe { std::ptr::copy_nonoverlapping(frame.as_ptr(), buf.add(OFF), frame.len()) };
        self.done.push_back(NicCompletion {
            slot,
            op: NicOp::Rx,
            len: Some(frame.len()),
        });
        true
    }
}

impl NicPort for FakeNic {
    fn frame_offset(&self) -> usize {
        OFF
    }

    fn mac(&self) -> [u8; 6] {
        net::GUEST_MAC
    }

    unsafe fn submit_tx(&mut self, slot: usize, buf: *mut u8, len: usize) -> Result<(), NicError> {
        assert!(
            self.tx.iter().all(|(s, _)| *s != slot),
            "TX slot {slot} reused while busy"
        );
        // SAFETY: the workload's buffer holds the frame at OFF.
        let frame = unsafe { std::slice::from_raw_parts(buf.add(OFF), len) }.to_vec();
        self.tx.push_back((slot, frame));
        Ok(())
    }

    unsafe fn submit_rx(&mut self, slot: usize, buf: *mut u8) -> Result<(), NicError> {
        assert!(
            self.rx.iter().all(|(s, _)| *s != slot),
            "RX slot {slot} posted twice"
        );
        self.rx.push_back((slot, buf));
        Ok(())
    }

    fn poll(&mut self) -> Option<NicCompletion> {
        self.done.pop_front()
    }

    fn release(self) {}
}

fn host_frame(seq: u64) -> Vec<u8> {
    let mut f = vec![0u8; MAX_FRAME_LEN];
    let n = net::encode(
        &mut f,
        net::GUEST_MAC,
        net::HOST_MAC,
        Direction::ToGuest,
        seq,
        net::fill_for(9, seq),
    )
    .unwrap();
    f.truncate(n);
    f
}

fn workload(frames: u64, window: usize) -> (NicWorkload<FakeHal>, FakeNic) {
    let mut nic = FakeNic::default();
    let mut w = NicWorkload::<FakeHal>::new(frames, window, 5, net::GUEST_MAC);
    w.start(&mut nic, 0).unwrap();
    assert_eq!(nic.rx.len(), NIC_SLOTS, "every receive buffer posted");
    (w, nic)
}

#[test]
fn frames_go_out_in_order_within_the_window_and_the_hosts_come_in_checked() {
    let (mut w, mut nic) = workload(300, 8);
    let mut sent = 0;
    let mut now = 0;
    while !w.done() {
        now += 1;
        w.step(&mut nic, now).unwrap();
        assert!(nic.tx.len() <= 8, "window exceeded");
        nic.complete_tx();
        if sent < 300 && nic.deliver(&host_frame(sent)) {
            sent += 1;
        }
        assert!(now < 10_000, "no progress");
    }
    assert!(w.clean());
    let mut check = SeqCheck::default();
    for f in &nic.wire {
        assert_eq!(check.take_frame(f, Direction::ToHost).map(|_| ()), Ok(()));
    }
    assert!(check.clean() && check.next == 300);
    let sizes: std::collections::BTreeSet<usize> = nic.wire.iter().map(Vec::len).collect();
    assert!(sizes.len() > 100, "frames of many sizes");
    let r = w.result();
    assert_eq!((r.tx_sent, r.rx_received, r.rx_bad), (300, 300, 0));
}

#[test]
fn a_lost_duplicated_or_damaged_frame_from_the_host_is_counted() {
    let (mut w, mut nic) = workload(4, 4);
    for f in [host_frame(0), host_frame(0), host_frame(2), host_frame(3)] {
        assert!(nic.deliver(&f));
    }
    let mut bad = host_frame(4);
    bad[40] ^= 1;
    assert!(nic.deliver(&bad));
    w.step(&mut nic, 1).unwrap();
    nic.complete_tx();
    w.step(&mut nic, 2).unwrap();
    assert!(w.done(), "all sent, and the count reached 4 (with a gap)");
    assert!(!w.clean());
    let r = w.result();
    assert_eq!(
        (
            r.rx_received,
            r.rx_duplicated,
            r.rx_reordered,
            r.rx_skipped,
            r.rx_bad
        ),
        (4, 1, 1, 1, 1)
    );
    assert_eq!(nic.rx.len(), NIC_SLOTS, "every buffer posted again");
}

#[test]
fn a_failed_transmit_is_not_counted_as_sent() {
    let (mut w, mut nic) = workload(3, 3);
    nic.fail_tx = true;
    w.step(&mut nic, 1).unwrap();
    nic.complete_tx();
    for s in 0..3 {
        assert!(nic.deliver(&host_frame(s)));
    }
    w.step(&mut nic, 2).unwrap();
    assert!(w.done() && !w.clean());
    assert_eq!(w.result().tx_sent, 0);
}

#[test]
fn other_traffic_is_ignored() {
    let (mut w, mut nic) = workload(1, 1);
    let mut rarp = vec![0u8; 60];
    rarp[12] = 0x80;
    rarp[13] = 0x35;
    assert!(nic.deliver(&rarp));
    assert!(nic.deliver(&host_frame(0)));
    w.step(&mut nic, 1).unwrap();
    nic.complete_tx();
    w.step(&mut nic, 2).unwrap();
    assert!(w.done() && w.clean(), "{:?}", w.result());
}
