//! Following the Docker network: a task that looks the network up, listens
//! to Docker's network events, and tells the engine which bridge to filter.
//! When Docker is unreachable it says so and retries; the engine keeps
//! enforcing on the last interface it knew (enforcement never waits for
//! Docker).

use std::path::{Path, PathBuf};
use std::time::Duration;

use egress_docker::Docker;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

pub use egress_docker::lookup_once;
/// What the follower reports: Docker's answer about the network.
pub use egress_docker::Lookup as BridgeMsg;

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Starts following the network called `name`.
pub fn spawn_follow(name: String, tx: mpsc::UnboundedSender<BridgeMsg>) -> JoinHandle<()> {
    tokio::spawn(follow(name, tx))
}

async fn follow(name: String, tx: mpsc::UnboundedSender<BridgeMsg>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let docker = match Docker::connect().await {
            Ok(d) => d,
            Err(e) => {
                if tx.send(BridgeMsg::Unreachable(e.to_string())).is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(500);
        // Subscribe before looking up, so a re-creation between the two is
        // not missed: the stream is polled by its own task from now on.
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let events = docker.network_events(&name);
        let pump = tokio::spawn(async move {
            futures::pin_mut!(events);
            while let Some(ev) = events.next().await {
                let stop = ev.is_err();
                if ev_tx.send(ev).is_err() || stop {
                    break;
                }
            }
        });
        // Whichever way it ends, following ends with Docker unreachable.
        let reason = match report(&docker, &name, &tx).await {
            Some(r) => r,
            None => loop {
                match ev_rx.recv().await {
                    Some(Ok(ev)) => {
                        debug!(network = %name, event = ?ev, "docker network event");
                        if let Some(r) = report(&docker, &name, &tx).await {
                            break r;
                        }
                    }
                    Some(Err(e)) => break e.to_string(),
                    None => break "the Docker event stream ended".to_owned(),
                }
            },
        };
        pump.abort();
        if tx.send(BridgeMsg::Unreachable(reason)).is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
    }
}

/// Looks the network up and sends the result; `Some(error)` when Docker
/// failed to answer (the caller reconnects).
async fn report(
    docker: &Docker,
    name: &str,
    tx: &mpsc::UnboundedSender<BridgeMsg>,
) -> Option<String> {
    match docker.lookup(name).await {
        BridgeMsg::Unreachable(why) => Some(why),
        msg => {
            let _ = tx.send(msg);
            None
        }
    }
}

/// Where the last bridge learnt from Docker is kept, so a restart while
/// Docker is down still filters the right interface: beside the control
/// socket (a runtime folder the daemon owns).
pub fn state_file(socket: &Path) -> PathBuf {
    socket
        .parent()
        .unwrap_or(Path::new("/"))
        .join("docker-bridge")
}

/// Reads the remembered bridge of `network` (the file holds
/// `NETWORK BRIDGE`).
pub fn remembered(file: &Path, network: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let (n, b) = text.trim().split_once(' ')?;
    (n == network && egress_core::config::check_interface(b).is_ok()).then(|| b.to_owned())
}

/// Remembers the bridge of `network`.
pub fn remember(file: &Path, network: &str, bridge: &str) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{network} {bridge}\n"))?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remembered_bridge_belongs_to_its_network() {
        let dir = std::env::temp_dir().join(format!("oc-bridge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = state_file(&dir.join("control.sock"));
        assert_eq!(f, dir.join("docker-bridge"));
        assert_eq!(remembered(&f, "agents"), None);
        remember(&f, "agents", "br-0123456789ab").unwrap();
        assert_eq!(remembered(&f, "agents").as_deref(), Some("br-0123456789ab"));
        assert_eq!(remembered(&f, "other"), None);
        std::fs::write(&f, "agents bad/name\n").unwrap();
        assert_eq!(remembered(&f, "agents"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
