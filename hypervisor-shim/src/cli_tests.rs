//! The command line's parsing: every subcommand's flags and their conversion into configs.

use super::*;
use clap::CommandFactory;

#[test]
fn cli_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn ranges_are_enforced() {
    let ok = Cli::try_parse_from(["s", "run", "--qd", "64", "--blocks", "1"]);
    assert!(ok.is_ok());
    for bad in [
        &["s", "run", "--qd", "0"][..],
        &["s", "run", "--qd", "65"],
        &["s", "run", "--blocks", "0"],
        &["s", "run", "--passes", "1025"],
        &["s", "run", "--backend", "nvme"],
        &["s", "run", "--accel", "hvf"],
        &["s", "run", "--timeout-secs", "0"],
        &["s", "run", "--bogus"],
        &["s", "frobnicate"],
        &["s", "migrate", "--mode", "teleport"],
        &[
            "s",
            "migrate",
            "--switch-after-ms",
            "5",
            "--migrate-at",
            "9",
        ],
        &["s", "migrate", "--migrate-at", "0"],
        &["s", "migrate", "--peer-fault", "nonsense"],
    ] {
        assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} accepted");
    }
}

fn migrate_config(args: &[&str]) -> MigrateConfig {
    let mut v = vec!["s", "migrate"];
    v.extend_from_slice(args);
    match Cli::try_parse_from(v).unwrap().command {
        Cmd::Migrate(m) => m.config(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn migrate_switch_choice() {
    let c = migrate_config(&[]);
    assert_eq!(c.switch, Switch::AfterMs(DEFAULT_SWITCH_AFTER_MS));
    assert_eq!(
        (c.mode, c.qd, c.blocks, c.passes),
        (Mode::Live, 32, 2048, 8)
    );
    assert_eq!(migrate_config(&["--seed", "5"]).switch, Switch::Seeded);
    assert_eq!(
        migrate_config(&["--seed", "5", "--switch-after-ms", "40"]).switch,
        Switch::AfterMs(40)
    );
    let c = migrate_config(&[
        "--migrate-at",
        "100",
        "--mode",
        "save",
        "--peer-fault",
        "bad-completion",
    ]);
    assert_eq!(c.switch, Switch::OwnerRequest(100));
    assert_eq!(c.mode, Mode::Save);
    assert_eq!(c.peer_fault, baton_core::cmdline::Fault::BadCompletion);
}

#[test]
fn failback_and_cycles_defaults() {
    let c = migrate_config(&[]);
    assert!(c.failback, "live fails back by default");
    assert_eq!(
        (c.cycles, c.failback_after_ms, c.failback_request_at),
        (1, 0, 0)
    );
    assert!(migrate_config(&["--mode", "save"]).failback);
    assert!(!migrate_config(&["--mode", "none"]).failback);
    assert!(migrate_config(&["--mode", "none", "--failback"]).failback);
    assert!(!migrate_config(&["--no-failback"]).failback);
    let c = migrate_config(&["--mode", "mixed", "--cycles", "10"]);
    assert_eq!((c.mode, c.cycles, c.passes), (Mode::Mixed, 10, 44));
    assert_eq!(Mode::Mixed.for_cycle(1), Mode::Live);
    assert_eq!(Mode::Mixed.for_cycle(2), Mode::Save);
    assert_eq!(Mode::Save.for_cycle(3), Mode::Save);
    let c = migrate_config(&["--cycles", "10", "--passes", "3"]);
    assert_eq!(c.passes, 3, "--passes wins over the cycles' sizing");
    let c = migrate_config(&["--failback-request-at", "7", "--failback-after-ms", "90"]);
    assert_eq!((c.failback_request_at, c.failback_after_ms), (7, 90));
    for bad in [
        &["s", "migrate", "--failback", "--no-failback"][..],
        &["s", "migrate", "--cycles", "0"],
        &["s", "migrate", "--failback-request-at", "0"],
    ] {
        assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
    }
}
