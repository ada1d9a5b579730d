use super::*;
use crate::cmdline::GuestConfig;
use proptest::prelude::*;
use std::string::{String, ToString};

fn report() -> GuestReport {
    let mut r = GuestReport::new(&GuestConfig::default());
    r.writes_submitted = 1024;
    r.writes_acked = 1023;
    r.record_write_error(9);
    r
}

fn stats() -> PortStats {
    PortStats {
        port: 1,
        completions: 10,
        first_us: 5,
        last_us: 900,
        p50_us: 40,
        p99_us: 90,
        max_us: 120,
    }
}

fn samples() -> std::vec::Vec<GuestLine<'static>> {
    std::vec![
        GuestLine::Ready {
            role: Role::Owner,
            vm: 1
        },
        GuestLine::Ready {
            role: Role::Peer,
            vm: u32::MAX
        },
        GuestLine::WaitingForDisk,
        GuestLine::FirstIo,
        GuestLine::FaultInjected,
        GuestLine::Switch(SwitchLine {
            kind: SwitchKind::Handoff,
            n: 1,
            gap_us: 0,
        }),
        GuestLine::Switch(SwitchLine {
            kind: SwitchKind::Failback,
            n: u32::MAX,
            gap_us: u64::MAX,
        }),
        GuestLine::PortStats(stats()),
        GuestLine::Timeline(TimelineLine::new(7, 1000, 0, &[3, 0, 0, 0, 1]).unwrap()),
        GuestLine::Result(report()),
        GuestLine::PeerFault("completion for slot 3 that was never submitted"),
        GuestLine::Panic("panicked at src/main.rs:1:1: boom"),
        GuestLine::Panic(""),
        GuestLine::Unknown("reboot now"),
    ]
}

#[test]
fn every_line_renders_and_parses_back() {
    for l in samples() {
        let text = l.to_string();
        assert!(text.starts_with(PREFIX), "{text}");
        assert_eq!(GuestLine::parse(&text), Some(Ok(l)), "{text}");
        let crlf = std::format!("{text}\r\n");
        assert_eq!(GuestLine::parse(&crlf), Some(Ok(l)), "{text}");
    }
}

#[test]
fn lines_as_the_kernel_prints_them() {
    let parse = |s| GuestLine::parse(s).unwrap().unwrap();
    assert_eq!(
        parse("BATON ready role=owner vm=1"),
        GuestLine::Ready {
            role: Role::Owner,
            vm: 1
        }
    );
    assert_eq!(parse("BATON waiting-for-disk"), GuestLine::WaitingForDisk);
    assert_eq!(parse("BATON first-io"), GuestLine::FirstIo);
    assert_eq!(parse("BATON fault-injected"), GuestLine::FaultInjected);
    assert_eq!(
        parse("BATON peer-fault ring: bad completion"),
        GuestLine::PeerFault("ring: bad completion")
    );
    assert_eq!(
        parse("BATON panic cpu exception 14 error=0x2 rip=0x1"),
        GuestLine::Panic("cpu exception 14 error=0x2 rip=0x1")
    );
    assert_eq!(
        parse("BATON switch kind=failback n=3 gap_us=12345"),
        GuestLine::Switch(SwitchLine {
            kind: SwitchKind::Failback,
            n: 3,
            gap_us: 12345
        })
    );
    assert_eq!(parse("BATON panic"), GuestLine::Panic(""));
    assert_eq!(parse("BATON reboot"), GuestLine::Unknown("reboot"));
    assert_eq!(parse("BATON "), GuestLine::Unknown(""));
}

#[test]
fn kinds_and_words_agree() {
    for k in Kind::ALL {
        assert_eq!(Kind::from_word(k.word()), Some(k));
    }
    for l in samples() {
        match l {
            GuestLine::Unknown(_) => assert_eq!(l.kind(), None),
            _ => {
                let text = l.to_string();
                let word = text[PREFIX.len()..].split(' ').next().unwrap();
                assert_eq!(l.kind().map(Kind::word), Some(word));
            }
        }
    }
}

#[test]
fn free_form_output_is_not_a_protocol_line() {
    for s in [
        "",
        "[INFO ] x",
        "BATON",
        "BATONready",
        " BATON ready",
        "baton ready",
    ] {
        assert_eq!(GuestLine::parse(s), None, "{s:?}");
    }
}

#[test]
fn malformed_lines_name_their_kind() {
    let err = |s| GuestLine::parse(s).unwrap().unwrap_err();
    for (line, kind) in [
        ("BATON ready", Kind::Ready),
        ("BATON ready role=owner", Kind::Ready),
        ("BATON ready vm=1 role=owner", Kind::Ready),
        ("BATON ready role=root vm=1", Kind::Ready),
        ("BATON ready role=owner vm=4294967296", Kind::Ready),
        ("BATON ready role=owner vm=1 x", Kind::Ready),
        ("BATON ready role=owner  vm=1", Kind::Ready),
        ("BATON first-io now", Kind::FirstIo),
        ("BATON first-io ", Kind::FirstIo),
        ("BATON waiting-for-disk x", Kind::WaitingForDisk),
        ("BATON fault-injected x", Kind::FaultInjected),
        ("BATON result", Kind::Result),
        ("BATON result x=1", Kind::Result),
        ("BATON port-stats port=3", Kind::PortStats),
        ("BATON timeline garbage", Kind::Timeline),
    ] {
        assert_eq!(err(line).kind(), kind, "{line}");
    }
    assert_eq!(
        err("BATON ready role=root vm=1").to_string(),
        "ready: bad value `root`"
    );
    assert_eq!(
        err("BATON first-io now").to_string(),
        "first-io: takes no arguments"
    );
}

#[test]
fn malformed_switch_lines_are_rejected_with_their_reason() {
    let err = |s| match GuestLine::parse(s) {
        Some(Err(LineError::Switch(e))) => e,
        other => panic!("{s}: {other:?}"),
    };
    let expected = SwitchError::Expected;
    let bad = |s| SwitchError::BadValue(ShortStr::new(s));
    for (line, want) in [
        ("BATON switch", expected("kind")),
        ("BATON switch ", expected("kind")),
        ("BATON switch kind=handoff", expected("n")),
        ("BATON switch kind=handoff n=1", expected("gap_us")),
        ("BATON switch n=1 kind=handoff gap_us=5", expected("kind")),
        ("BATON switch kind=handoff gap_us=5 n=1", expected("n")),
        (
            "BATON switch kind=handoff n=1 n=1 gap_us=5",
            expected("gap_us"),
        ),
        ("BATON switch kind=handoff  n=1 gap_us=5", expected("n")),
        ("BATON switch kind handoff n=1 gap_us=5", expected("kind")),
        (
            "BATON switch kind=handoff n=1 gap_us=5 ",
            SwitchError::Extra,
        ),
        (
            "BATON switch kind=handoff n=1 gap_us=5 x=1",
            SwitchError::Extra,
        ),
        ("BATON switch kind=drain n=1 gap_us=5", bad("drain")),
        ("BATON switch kind= n=1 gap_us=5", bad("")),
        ("BATON switch kind=Handoff n=1 gap_us=5", bad("Handoff")),
        (
            "BATON switch kind=handoff n=4294967296 gap_us=5",
            bad("4294967296"),
        ),
        ("BATON switch kind=handoff n=-1 gap_us=5", bad("-1")),
        ("BATON switch kind=handoff n=+1 gap_us=5", bad("+1")),
        (
            "BATON switch kind=handoff n=1 gap_us=18446744073709551616",
            bad("18446744073709551616"),
        ),
        ("BATON switch kind=handoff n=1 gap_us=0x10", bad("0x10")),
        ("BATON switch kind=handoff n=1 gap_us=", bad("")),
    ] {
        assert_eq!(err(line), want, "{line}");
        assert_eq!(
            GuestLine::parse(line).unwrap().unwrap_err().kind(),
            Kind::Switch
        );
    }
    let e = GuestLine::parse("BATON switch kind=drain n=1 gap_us=5")
        .unwrap()
        .unwrap_err();
    assert_eq!(e.to_string(), "switch: bad value `drain`");
    let e = GuestLine::parse("BATON switch kind=handoff")
        .unwrap()
        .unwrap_err();
    assert_eq!(e.to_string(), "switch: expected `n=` next");
    let e = GuestLine::parse("BATON switch kind=handoff n=1 gap_us=5 x")
        .unwrap()
        .unwrap_err();
    assert_eq!(e.to_string(), "switch: words after `gap_us=`");
}

#[test]
fn switch_kinds_and_words_agree() {
    for k in SwitchKind::ALL {
        assert_eq!(SwitchKind::from_word(k.word()), Some(k));
        assert_eq!(k.to_string(), k.word());
    }
    assert_eq!(SwitchKind::from_word("switch"), None);
}

#[test]
fn errors_of_the_body_parsers_keep_their_messages() {
    let line = "BATON port-stats port=1";
    let e = GuestLine::parse(line).unwrap().unwrap_err();
    assert_eq!(
        e,
        LineError::PortStats(stats::parse_line(line).unwrap_err())
    );
    assert_eq!(
        e.to_string(),
        stats::parse_line(line).unwrap_err().to_string()
    );
    let line = "BATON result vm=1";
    let e = GuestLine::parse(line).unwrap().unwrap_err();
    assert_eq!(
        e.to_string(),
        report::parse_line(line).unwrap_err().to_string()
    );
    let line = "BATON timeline start_us=1";
    let e = GuestLine::parse(line).unwrap().unwrap_err();
    assert_eq!(
        e.to_string(),
        timeline::parse_line(line).unwrap_err().to_string()
    );
}

fn arb_line() -> impl Strategy<Value = (u8, u64, u32, String, std::vec::Vec<u16>)> {
    (
        0u8..12,
        any::<u64>(),
        any::<u32>(),
        "[ -~]{0,80}",
        proptest::collection::vec(any::<u16>(), 1..=timeline::BINS_PER_LINE),
    )
}

fn build<'a>(which: u8, n: u64, vm: u32, text: &'a str, counts: &[u16]) -> GuestLine<'a> {
    match which {
        0 => GuestLine::Ready {
            role: if n.is_multiple_of(2) {
                Role::Owner
            } else {
                Role::Peer
            },
            vm,
        },
        1 => GuestLine::WaitingForDisk,
        2 => GuestLine::FirstIo,
        3 => GuestLine::FaultInjected,
        4 => GuestLine::PortStats(PortStats {
            port: 1 + (vm % 2) as u8,
            completions: n,
            first_us: n / 3,
            last_us: n / 2,
            p50_us: u64::from(vm),
            p99_us: n ^ 5,
            max_us: n.rotate_left(7),
        }),
        5 => GuestLine::Timeline(TimelineLine::new(n, n.max(1), u64::from(vm), counts).unwrap()),
        6 => {
            let mut r = GuestReport::new(&GuestConfig::default());
            r.vm = vm;
            r.seed = n;
            r.iops = n / 7;
            GuestLine::Result(r)
        }
        7 => GuestLine::PeerFault(text),
        8 | 9 => GuestLine::Switch(SwitchLine {
            kind: SwitchKind::ALL[usize::from(which == 9)],
            n: vm,
            gap_us: n,
        }),
        _ => GuestLine::Panic(text),
    }
}

proptest! {
    #[test]
    fn display_round_trips((which, n, vm, text, counts) in arb_line()) {
        let l = build(which, n, vm, &text, &counts);
        let rendered = l.to_string();
        prop_assert_eq!(GuestLine::parse(&rendered), Some(Ok(l)));
    }

    #[test]
    fn parse_never_panics(s in "\\PC{0,300}") {
        let _ = GuestLine::parse(&s);
        for k in Kind::ALL {
            let _ = GuestLine::parse(&std::format!("{PREFIX}{} {s}", k.word()));
            let _ = GuestLine::parse(&std::format!("{PREFIX}{}{s}", k.word()));
        }
    }
}
