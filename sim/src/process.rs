//! Killed processes on live machines. turmoil's `crash` takes a whole host down: a dial to it
//! hangs until it is back (no machine answers). When only the process dies (`kill`, as the
//! real-network arm's SIGKILL does), the machine's kernel answers a dial at once with a reset:
//! the fault `kill` crashes the host in turmoil and makes every dial to it fail with
//! `ConnectionRefused` until `bounce`.

use std::cell::RefCell;
use std::collections::BTreeSet;

thread_local! {
    /// This run's hosts whose process is dead (a run is one thread).
    static KILLED: RefCell<BTreeSet<String>> = const { RefCell::new(BTreeSet::new()) };
}

/// Starts a run: no process is dead.
pub fn start_run() {
    KILLED.with(|k| k.borrow_mut().clear());
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
