//! Killed processes on live machines. turmoil's `crash` takes a whole host down: a dial to it
//! hangs until it is back (no machine answers). When only the process dies (`kill`, as the
//! real-network arm's SIGKILL does), the machine's kernel answers a dial at once with a reset:
//! the fault `kill` crashes the host in turmoil and makes every dial to it fail with
//! `ConnectionRefused` until `bounce`.
//!
//! Graceful restarts (`graceful_restart`): the harness asks a host's application to shut its
//! transport down and start again; the application watches [`restart_requests`].

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::watch;

thread_local! {
    /// This run's hosts whose process is dead (a run is one thread).
    static KILLED: RefCell<BTreeSet<String>> = const { RefCell::new(BTreeSet::new()) };
    /// This run's graceful restarts asked for, by host: a count each host's application
    /// watches.
    static RESTARTS: RefCell<BTreeMap<String, watch::Sender<u32>>> =
        const { RefCell::new(BTreeMap::new()) };
}

/// Starts a run: no process is dead.
pub fn start_run() {
    KILLED.with(|k| k.borrow_mut().clear());
    RESTARTS.with(|r| r.borrow_mut().clear());
}

fn restarts<T>(host: &str, f: impl FnOnce(&watch::Sender<u32>) -> T) -> T {
    RESTARTS.with(|r| {
        let mut r = r.borrow_mut();
        let tx = r
            .entry(host.to_string())
            .or_insert_with(|| watch::channel(0).0);
        f(tx)
    })
}

/// The graceful restarts asked of `host`, to watch (seen as changed only for requests made
/// after this call).
pub fn restart_requests(host: &str) -> watch::Receiver<u32> {
    restarts(host, watch::Sender::subscribe)
}

/// Asks `host`'s application to restart gracefully.
pub fn request_restart(host: &str) {
    restarts(host, |tx| tx.send_modify(|n| *n += 1));
}

/// `host`'s process dies; its machine stays up.
pub fn kill(host: &str) {
    KILLED.with(|k| k.borrow_mut().insert(host.to_string()));
}

/// `host` runs again.
pub fn revive(host: &str) {
    KILLED.with(|k| k.borrow_mut().remove(host));
}

/// Whether a dial to `host` meets a machine whose process is dead.
pub fn is_killed(host: &str) -> bool {
    KILLED.with(|k| k.borrow().contains(host))
}
