//! Hosts as network namespaces (issue 10, "Hosts"): the machines of a cross-host run, simulated on
//! one Linux host.
//!
//! [`Hosts::create`] makes three namespaces with `ip` (iproute2): `host-a` (the source), `host-b`
//! (the destination) and `storage` (the NBD export, [`crate::storage`]). They share one L2
//! segment: a bridge `br0` in the storage namespace with one veth pair to each of A and B
//! (`va`/`vb` on the bridge, `eth0` in the host). Addresses come from 198.18.0.0/15, the range
//! reserved for benchmarking (RFC 2544): A is [`ADDR_A`], B [`ADDR_B`], storage [`ADDR_STORAGE`],
//! all /24. Every link is created inside a namespace (`ip -n NS link add ... peer ... netns
//! OTHER`), so nothing in the shim's own namespace is touched and the same addresses and link
//! names serve every run; the namespace names carry the shim's pid and a per-process counter
//! (`baton-<pid>-<n>-a`), so parallel runs never collide.
//!
//! Cleanup: [`Hosts::remove`] (and `Drop`, ignoring errors) kills every process still inside a
//! namespace (`ip netns pids`, SIGKILL) and deletes the namespaces, which destroys their links.
//! A Ctrl-C only sets a flag ([`crate::setup::install_interrupt_handler`]), so the scenario ends
//! normally and `Drop` runs; a panic unwinds through it too.

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Address of host A (the source) on the hosts' segment.
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Address of host B (the destination).
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Address of the storage host (the bridge's own address).
pub const ADDR_STORAGE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// Prefix length of the segment.
pub const PREFIX_LEN: u8 = 24;
/// Name of the bridge in the storage namespace.
const BRIDGE: &str = "br0";
/// Name of a host's end of its veth pair.
const HOST_LINK: &str = "eth0";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// not running as root
    #[error(
        "simulated hosts need root: `ip netns add` mounts under /run/netns and creating veth \
         pairs and bridges needs CAP_SYS_ADMIN and CAP_NET_ADMIN; run as root (e.g. with sudo)"
    )]
    NotRoot,
    /// `ip` could not be run
    #[error("cannot run `ip` (iproute2; install it with `apt-get install iproute2`)")]
    NoIp(#[source] std::io::Error),
    /// an `ip` command failed
    #[error("`{command}` failed ({status}): {stderr}")]
    Ip {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stderr, trimmed.
        stderr: String,
    },
    /// things left behind after a removal
    #[error("cleanup left {0}")]
    Left(String),
}

/// One simulated machine: a network namespace and its address on the hosts' segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Role name: `host-a`, `host-b` or `storage`.
    pub name: &'static str,
    /// The network namespace (as `ip netns` names it).
    pub netns: String,
    /// Its address on the hosts' segment.
    pub addr: Ipv4Addr,
}

/// The hosts of one run. Dropping it removes every namespace and link it made (also after a
/// failure), after killing any process still inside them.
#[derive(Debug)]
pub struct Hosts {
    a: Host,
    b: Host,
    storage: Host,
    /// Namespaces made so far (removed in reverse order).
    made: Vec<String>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Hosts {
    /// Creates `storage`, `host-a` and `host-b`, joined on one L2 segment (module docs): links
    /// and loopback up in each. A failure part-way removes what was made.
    ///
    /// Errors: [`HostsError::NotRoot`] when not root, [`HostsError::NoIp`] when `ip` is missing,
    /// [`HostsError::Ip`] (with its stderr) when an `ip` command fails.
    pub fn create() -> Result<Hosts, HostsError> {
        require_root()?;
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ns = |suffix: &str| format!("baton-{}-{n}-{suffix}", std::process::id());
        let mut hosts = Hosts {
            a: Host {
                name: "host-a",
                netns: ns("a"),
                addr: ADDR_A,
            },
            b: Host {
                name: "host-b",
                netns: ns("b"),
                addr: ADDR_B,
            },
            storage: Host {
                name: "storage",
                netns: ns("s"),
                addr: ADDR_STORAGE,
            },
            made: Vec::new(),
        };
        // On error, `hosts` is dropped here and removes what was made.
        hosts.build()?;
        Ok(hosts)
    }

    fn build(&mut self) -> Result<(), HostsError> {
        for h in [&self.storage, &self.a, &self.b] {
            ip(&["netns", "add", &h.netns])?;
            self.made.push(h.netns.clone());
            ip(&["-n", &h.netns, "link", "set", "lo", "up"])?;
        }
        for cmd in build_commands(&self.storage, &[&self.a, &self.b]) {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            ip(&args)?;
        }
        Ok(())
    }

    /// Host A, where the migration starts.
    pub fn source(&self) -> &Host {
        &self.a
    }

    /// Host B, where the migration ends.
    pub fn destination(&self) -> &Host {
        &self.b
    }

    /// The storage host (the NBD export).
    pub fn storage(&self) -> &Host {
        &self.storage
    }

    /// `argv` prefixed so that it runs inside `host`: `ip netns exec <ns> argv...` (`ip` execs the
    /// program, so the pid of the spawned process is the program's).
    pub fn wrap(host: &Host, argv: &[String]) -> Vec<String> {
        wrap_netns(&host.netns, argv)
    }

    /// Removes everything now: kills the processes left in the namespaces and deletes them.
    /// Errors: a namespace that could not be deleted, or that is still listed afterwards
    /// ([`HostsError::Left`], naming them).
    pub fn remove(mut self) -> Result<(), HostsError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), HostsError> {
        let mut left = Vec::new();
        while let Some(ns) = self.made.pop() {
            kill_all_in(&ns);
            if let Err(e) = delete_netns(&ns) {
                left.push(format!("namespace {ns} ({e})"));
            }
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(HostsError::Left(left.join(", ")))
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Nothing can be reported from drop; `remove` is the checked path.
        let _ = self.teardown();
    }
}

/// [`HostsError::NotRoot`] unless the effective user is root (checked before anything else is
/// set up, so the error comes first).
pub fn require_root() -> Result<(), HostsError> {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(HostsError::NotRoot);
    }
    Ok(())
}

/// The pid in a namespace name this module makes (`baton-<pid>-<n>-<host>`).
fn owner_pid(netns: &str) -> Option<u32> {
    let mut parts = netns.strip_prefix("baton-")?.split('-');
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u32>().ok()?;
    matches!(parts.next()?, "a" | "b" | "s").then_some(pid)?;
    parts.next().is_none().then_some(pid)
}

/// Removes the namespaces a shim that was killed outright (SIGKILL skips `Drop`) left behind:
/// those named by this module whose shim process no longer exists. Best effort.
fn sweep_stale() {
    let Ok(out) = ip(&["netns", "list"]) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for ns in text.lines().filter_map(|l| l.split_whitespace().next()) {
        if let Some(pid) = owner_pid(ns)
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            kill_all_in(ns);
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// `ip netns exec <netns> argv...`.
pub fn wrap_netns(netns: &str, argv: &[String]) -> Vec<String> {
    let mut v: Vec<String> = ["ip", "netns", "exec", netns]
        .into_iter()
        .map(String::from)
        .collect();
    v.extend(argv.iter().cloned());
    v
}

/// The `ip` commands (without `ip`) that join `hosts` to a bridge in `storage`: the bridge, one
/// veth pair per host (`v<last letter of the host name>` on the bridge, [`HOST_LINK`] in the
/// host), the addresses, the links up.
fn build_commands(storage: &Host, hosts: &[&Host]) -> Vec<Vec<String>> {
    let s = storage.netns.as_str();
    let mut c: Vec<Vec<String>> = Vec::new();
    let mut push = |args: &[&str]| c.push(args.iter().map(|a| a.to_string()).collect());
    push(&["-n", s, "link", "add", BRIDGE, "type", "bridge"]);
    push(&[
        "-n",
        s,
        "addr",
        "add",
        &format!("{}/{PREFIX_LEN}", storage.addr),
        "dev",
        BRIDGE,
    ]);
    push(&["-n", s, "link", "set", BRIDGE, "up"]);
    push(
        &quickack_route(s, storage, BRIDGE)
            .each_ref()
            .map(String::as_str),
    );
    for h in hosts {
        let port = format!("v{}", h.name.chars().last().unwrap_or('x'));
        push(&[
            "-n", s, "link", "add", &port, "type", "veth", "peer", "name", HOST_LINK, "netns",
            &h.netns,
        ]);
        push(&["-n", s, "link", "set", &port, "master", BRIDGE]);
        push(&["-n", s, "link", "set", &port, "up"]);
        push(&[
            "-n",
            &h.netns,
            "addr",
            "add",
            &format!("{}/{PREFIX_LEN}", h.addr),
            "dev",
            HOST_LINK,
        ]);
        push(&["-n", &h.netns, "link", "set", HOST_LINK, "up"]);
        push(
            &quickack_route(&h.netns, h, HOST_LINK)
                .each_ref()
                .map(String::as_str),
        );
    }
    c
}

/// The segment's route in `netns` with `quickack` (ACK every segment at once). QEMU 7.2's NBD
/// client and server leave Nagle's algorithm on, so with several requests in flight each one
/// waited for a delayed ACK (measured here: 107 requests/s at queue depth 4 instead of 1,300 at
/// depth 1); ACKing at once lets Nagle release every segment after one round trip on the veth.
fn quickack_route(netns: &str, host: &Host, dev: &str) -> [String; 11] {
    let net = Ipv4Addr::from(u32::from(host.addr) & (u32::MAX << (32 - u32::from(PREFIX_LEN))));
    [
        "-n".into(),
        netns.into(),
        "route".into(),
        "replace".into(),
        format!("{net}/{PREFIX_LEN}"),
        "dev".into(),
        dev.into(),
        "src".into(),
        host.addr.to_string(),
        "quickack".into(),
        "1".into(),
    ]
}

/// Runs `ip args...`; a non-zero exit is [`HostsError::Ip`] with its stderr.
fn ip(args: &[&str]) -> Result<Output, HostsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(HostsError::NoIp)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(HostsError::Ip {
            command: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The pids of the processes inside `netns` (empty when it cannot be read).
pub fn pids_in(netns: &str) -> Vec<i32> {
    ip(&["netns", "pids", netns])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every process inside `netns`, then waits (at most 2 s) until none is left: a process
/// holds its namespace (and so the links) until it has exited.
fn kill_all_in(netns: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = pids_in(netns);
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid read from `ip netns pids` and a plain signal number; a
            // pid that has gone meanwhile gives ESRCH, which is harmless.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deletes `netns` and checks it is no longer listed.
fn delete_netns(netns: &str) -> Result<(), HostsError> {
    ip(&["netns", "del", netns])?;
    if netns_exists(netns) {
        return Err(HostsError::Left(format!("namespace {netns}")));
    }
    Ok(())
}

/// Whether `ip netns list` names `netns`.
pub fn netns_exists(netns: &str) -> bool {
    ip(&["netns", "list"])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(netns))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &'static str, netns: &str, addr: Ipv4Addr) -> Host {
        Host {
            name,
            netns: netns.into(),
            addr,
        }
    }

    #[test]
    fn wrap_prefixes_ip_netns_exec() {
        let h = host("host-a", "baton-1-0-a", ADDR_A);
        let argv = vec!["qemu-system-x86_64".to_string(), "-m".into(), "128M".into()];
        assert_eq!(
            Hosts::wrap(&h, &argv),
            [
                "ip",
                "netns",
                "exec",
                "baton-1-0-a",
                "qemu-system-x86_64",
                "-m",
                "128M"
            ]
        );
    }

    #[test]
    fn the_segment_is_a_bridge_in_storage_with_one_veth_per_host() {
        let s = host("storage", "S", ADDR_STORAGE);
        let a = host("host-a", "A", ADDR_A);
        let b = host("host-b", "B", ADDR_B);
        let cmds: Vec<String> = build_commands(&s, &[&a, &b])
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "-n S link add br0 type bridge",
                "-n S addr add 198.18.0.3/24 dev br0",
                "-n S link set br0 up",
                "-n S route replace 198.18.0.0/24 dev br0 src 198.18.0.3 quickack 1",
                "-n S link add va type veth peer name eth0 netns A",
                "-n S link set va master br0",
                "-n S link set va up",
                "-n A addr add 198.18.0.1/24 dev eth0",
                "-n A link set eth0 up",
                "-n A route replace 198.18.0.0/24 dev eth0 src 198.18.0.1 quickack 1",
                "-n S link add vb type veth peer name eth0 netns B",
                "-n S link set vb master br0",
                "-n S link set vb up",
                "-n B addr add 198.18.0.2/24 dev eth0",
                "-n B link set eth0 up",
                "-n B route replace 198.18.0.0/24 dev eth0 src 198.18.0.2 quickack 1",
            ]
        );
        // Every command names a namespace: nothing runs in the shim's own.
        assert!(build_commands(&s, &[&a, &b]).iter().all(|c| c[0] == "-n"));
    }

    #[test]
    fn only_our_namespace_names_name_an_owner() {
        assert_eq!(owner_pid("baton-123-0-a"), Some(123));
        assert_eq!(owner_pid("baton-123-17-s"), Some(123));
        for other in [
            "baton-123-0-c",
            "baton-x-0-a",
            "baton-1-a",
            "other-1-0-a",
            "baton-1-0-a-x",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn addresses_are_in_the_benchmarking_range() {
        for a in [ADDR_A, ADDR_B, ADDR_STORAGE] {
            let o = a.octets();
            assert!(o[0] == 198 && (o[1] & 0xfe) == 18, "{a}");
        }
    }
}
