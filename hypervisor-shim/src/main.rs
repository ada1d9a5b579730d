//! `hypervisor-shim`: parses the command line and hands over to the library.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use hypervisor_shim::bench::handoff::PhaseTimes;
use hypervisor_shim::cli::{BenchArgs, CheckArgs, Cli, Cmd, MigrateArgs, RunArgs};
use hypervisor_shim::report::summary_line;
use hypervisor_shim::soak::SoakArgs;
use hypervisor_shim::{bench, migrate, qemu, run, setup, shm, soak};

/// The handoff timeline plot of a `migrate` that keeps its artifacts, in its workdir.
const MIGRATE_PLOT_FILE: &str = "handoff-timeline.svg";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => cmd_run(&args),
        Cmd::Migrate(args) => cmd_migrate(&args),
        Cmd::Bench(args) => cmd_bench(&args),
        Cmd::Soak(args) => cmd_soak(&args),
        Cmd::BenchHosts(args) => cmd_bench_hosts(&args),
        Cmd::Check(args) => cmd_check(&args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("hypervisor-shim: error: {e:#}");
        ExitCode::from(2)
    })
}

fn cmd_run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    setup::install_interrupt_handler();
    let cfg = args.config();
    if cfg.device == baton_core::cmdline::DeviceClass::Net {
        return cmd_run_net(args, &cfg);
    }
    let outcome = run::run(&cfg)?;
    let report = &outcome.report;
    if let Some(path) = &args.report {
        report
            .write_json(path)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    println!("{report}");
    if !report.ok {
        let log = std::fs::read_to_string(&report.serial_log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        if !tail.is_empty() {
            eprintln!("last guest serial lines:");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `run --device net`: the NIC scenario ([`run::net`]).
fn cmd_run_net(args: &RunArgs, cfg: &run::RunConfig) -> anyhow::Result<ExitCode> {
    let outcome = run::net::run(cfg)?;
    let report = &outcome.report;
    if let Some(path) = &args.report {
        report
            .write_json(path)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    println!("{report}");
    if !report.ok {
        let log = std::fs::read_to_string(&report.serial_log).unwrap_or_default();
        eprintln!("last guest serial lines:");
        for l in log.lines().rev().take(15).collect::<Vec<_>>().iter().rev() {
            eprintln!("  {l}");
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_migrate(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    // `--inject shm-full`: a private, small /dev/shm, set up while this process has one thread
    // (nothing before this point starts one; `unshare(CLONE_NEWNS)` needs that).
    if args.inject == Some(migrate::Inject::ShmFull) {
        shm::isolate_dev_shm(migrate::SHM_FULL_BYTES)?;
    }
    setup::install_interrupt_handler();
    let migrate::MigrateOutcome {
        mut report,
        handoffs,
        workdir,
    } = migrate::migrate(&args.config())?;
    // A temporary workdir goes now, so that the summary says where things are as they will be.
    drop(workdir);
    // The scenario's guards are gone: `artifacts_kept` says whether what the report names is
    // still there, checked rather than assumed.
    if report.artifacts_kept {
        let missing: Vec<String> = report
            .missing_artifacts()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            report.artifacts_kept = false;
            report.notes.push(format!(
                "named by this report but gone after the run: {}",
                missing.join(", ")
            ));
        }
    }
    // The handoff's timeline plot goes beside the artifacts it is drawn from.
    let plot = report.artifacts_kept.then(|| {
        let path = Path::new(&report.workdir).join(MIGRATE_PLOT_FILE);
        let phases = PhaseTimes::from_record(handoffs.first());
        bench::plot::svg(&report, &phases)
            .and_then(|(svg, _)| {
                std::fs::write(&path, svg)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))
            })
            .map(|()| path)
    });
    if let Some(path) = &args.report {
        report
            .write_json(path)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    println!("{report}");
    if let Some(path) = &args.report {
        println!("{}", summary_line("report", path.display()));
    }
    match plot {
        Some(Ok(p)) => println!("{}", summary_line("plot", p.display())),
        Some(Err(e)) => println!("{}", summary_line("plot", format!("not drawn: {e}"))),
        None => {}
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    setup::install_interrupt_handler();
    let mut report = bench::bench(&args.config())?;
    let plot = bench::write_outputs(&mut report, args.report.as_deref(), args.plot.as_deref())
        .context("cannot write the report or the plot")?;
    print!("{}", report.markdown());
    match (plot, &report.plot_error) {
        (Some(p), _) => println!("\nplot: {}", p.display()),
        (None, Some(e)) => println!("\nno plot: {e}"),
        (None, None) => println!("\nplot not written (give --report or --plot)"),
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_soak(args: &SoakArgs) -> anyhow::Result<ExitCode> {
    setup::install_interrupt_handler();
    let report = soak::soak(&args.config())?;
    if let Some(path) = &args.report {
        report
            .write_json(path)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    println!("{report}");
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_bench_hosts(args: &bench::hosts::HostsBenchArgs) -> anyhow::Result<ExitCode> {
    setup::install_interrupt_handler();
    let report = bench::hosts::bench_hosts(&args.config())?;
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    println!("{report}");
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let qemu_bin = qemu::locate_qemu(&args.qemu)?;
    println!("qemu     {}", qemu_bin.display());
    let bios = qemu::locate_bios()?;
    println!("firmware {}", bios.display());
    match (qemu::kvm_usable(), qemu::kvm_is_software()) {
        (Ok(()), None) => println!("kvm      usable (/dev/kvm opens read-write)"),
        (Ok(()), Some(m)) => println!(
            "kvm      usable but software-emulated ({m}); --accel auto uses TCG, --accel kvm forces it"
        ),
        (Err(e), _) => println!("kvm      unusable ({e}); runs use TCG"),
    }
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => setup::default_kernel()?,
    };
    anyhow::ensure!(
        kernel.is_file(),
        "guest kernel {} not found; build it with `cargo kbuild`",
        kernel.display()
    );
    println!("kernel   {}", kernel.display());
    Ok(ExitCode::SUCCESS)
}
