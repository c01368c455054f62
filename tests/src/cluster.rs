//! A 3-node RabbitMQ cluster for the node-failure test, driven through
//! `tests/cluster/cluster.sh` (nodes vg1..vg3@localhost on 5681..5683, next
//! to the shared node on 5672, which it never touches).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Set to `1` to leave the cluster running after the test (faster reruns).
pub const KEEP_ENV: &str = "VARGPT_IT_KEEP_CLUSTER";
/// Set to `1` to skip the cluster test on a machine that cannot run it; the
/// test then says so loudly instead of failing.
pub const SKIP_ENV: &str = "VARGPT_IT_SKIP_CLUSTER";

const BASE_PORT: u16 = 5680;
pub const NODES: [u8; 3] = [1, 2, 3];

pub fn script() -> PathBuf {
    crate::repo_root().join("tests/cluster/cluster.sh")
}

/// Why this machine cannot run the cluster script, if it cannot.
pub fn cannot_run() -> Option<String> {
    let found = |bin: &str| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join(bin).is_file())
    };
    if !found("rabbitmq-server") || !found("rabbitmqctl") {
        return Some("rabbitmq-server/rabbitmqctl not on PATH (run .ci/setup-services.sh)".into());
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    let user = Command::new("id").arg("-un").output().ok()?;
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    let rabbit = String::from_utf8_lossy(&user.stdout).trim() == "rabbitmq";
    if !root && !rabbit {
        return Some("the Debian RabbitMQ wrappers need root or the rabbitmq user".into());
    }
    None
}

fn run(args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    // The script bounds each rabbitmqctl call itself; `timeout` bounds the lot.
    let out = Command::new("timeout")
        .arg(timeout.as_secs().max(1).to_string())
        .arg(script())
        .args(args)
        .output()
        .with_context(|| format!("running {} {args:?}", script().display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("cluster.sh {args:?} failed ({}):\n{stderr}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The running cluster; stopped and wiped on drop unless [`KEEP_ENV`] is 1.
pub struct Cluster {
    _private: (),
}

impl Cluster {
    /// Starts the three nodes and joins them (reuses a healthy running cluster).
    pub fn start() -> anyhow::Result<Self> {
        if let Some(why) = cannot_run() {
            bail!("cannot start the RabbitMQ cluster on this machine: {why}");
        }
        run(&["start"], Duration::from_secs(240))?;
        Ok(Cluster { _private: () })
    }

    pub fn node_name(n: u8) -> String {
        format!("vg{n}@localhost")
    }

    pub fn port(n: u8) -> u16 {
        BASE_PORT + u16::from(n)
    }

    pub fn url(n: u8) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", Self::port(n))
    }

    /// Every node's URL, starting with node `first`: the worker's failover list.
    pub fn url_list(first: u8) -> String {
        let start = NODES.iter().position(|&n| n == first).unwrap_or(0);
        (0..NODES.len())
            .map(|i| Self::url(NODES[(start + i) % NODES.len()]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node number (1..=3) that leads quorum queue `queue`, waiting until
    /// one is elected.
    pub fn leader_of(&self, queue: &str, timeout: Duration) -> anyhow::Result<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = run(&["leader", queue], Duration::from_secs(60));
            if let Ok(name) = &r {
                if let Some(n) = NODES.iter().find(|&&n| *name == Self::node_name(n)) {
                    return Ok(*n);
                }
            }
            if Instant::now() >= deadline {
                bail!("no leader for {queue} within {timeout:?}: {r:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// kill -9 of the node's Erlang VM: no goodbye to peers or clients.
    pub fn kill_node(&self, n: u8) -> anyhow::Result<()> {
        run(&["kill-node", &n.to_string()], Duration::from_secs(90)).map(drop)
    }

    /// Starts a stopped (or killed) node again with its data; it rejoins.
    pub fn start_node(&self, n: u8) -> anyhow::Result<()> {
        run(&["start-node", &n.to_string()], Duration::from_secs(150)).map(drop)
    }

    /// The nodes the cluster sees running (asked of node `via`).
    pub fn running(&self, via: u8) -> anyhow::Result<Vec<String>> {
        let out = run(&["status", &via.to_string()], Duration::from_secs(60))?;
        Ok(out.lines().map(str::to_string).collect())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var(KEEP_ENV).is_ok_and(|v| v == "1") {
            return;
        }
        if let Err(e) = run(&["stop"], Duration::from_secs(120)) {
            eprintln!("stopping the test cluster: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_list_starts_at_the_given_node_and_covers_all() {
        let l = Cluster::url_list(2);
        let ports: Vec<&str> = l
            .split(',')
            .map(|u| u.rsplit(':').next().unwrap_or(""))
            .collect();
        assert_eq!(ports, ["5682/%2f", "5683/%2f", "5681/%2f"]);
    }
}
