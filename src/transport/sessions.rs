//! A listener's sessions: the live ones a returning dialer may resume, and, bounded, how the
//! recent others ended, so a `RESUME` for one is answered truthfully: `session expired` (17)
//! when its resume window ran out, `session unknown` (16) otherwise (never created here, ended
//! by a close, or forgotten).

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::driver::ConnectionState;
use crate::secure::Channel;
use crate::wire::{ReasonCode, SessionId};

/// How many ended sessions are remembered (about 40 bytes each).
const ENDED: usize = 4096;

/// The smallest `live` size at which `insert` prunes.
const PRUNE_MIN: usize = 64;

/// A session that may be resumed.
struct Live {
    /// The key that created it: only that key may resume it.
    key: Bytes,
    /// Where a resuming connection is handed to the session's task.
    tx: mpsc::Sender<Channel>,
    /// The session's connection state (to tell how it ended).
    state: watch::Receiver<ConnectionState>,
}

/// See the [module docs](self).
pub(super) struct Sessions {
    live: BTreeMap<SessionId, Live>,
    ended: VecDeque<(SessionId, ReasonCode)>,
    /// `insert` prunes ended sessions once `live` reaches this size, then sets it to twice what
    /// is left: amortized O(1) per insert, and `live` never holds more than twice the sessions
    /// that are still running.
    prune_at: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            live: BTreeMap::new(),
            ended: VecDeque::new(),
            prune_at: PRUNE_MIN,
        }
    }
}

impl Sessions {
    /// A new session `id` of `key`, resumed through `tx`, its state in `state`.
    pub(super) fn insert(
        &mut self,
        id: SessionId,
        key: Bytes,
        tx: mpsc::Sender<Channel>,
        state: watch::Receiver<ConnectionState>,
    ) {
        if self.live.len() >= self.prune_at {
            self.prune();
            self.prune_at = (2 * self.live.len()).max(PRUNE_MIN);
        }
        self.live.insert(id, Live { key, tx, state });
    }

    /// How many sessions are kept (running, or ended and not yet pruned).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.live.len()
    }

    /// Moves the sessions whose task ended to the memory of ended ones.
    fn prune(&mut self) {
        let gone: Vec<SessionId> = self
            .live
            .iter()
            .filter(|(_, l)| l.tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(l) = self.live.remove(&id) {
                let expired = matches!(
                    &*l.state.borrow(),
                    ConnectionState::Closed(c) if c.reason() == Some(ReasonCode::SessionExpired)
                );
                let reason = if expired {
                    ReasonCode::SessionExpired
                } else {
                    ReasonCode::SessionUnknown
                };
                self.ended.push_back((id, reason));
                if self.ended.len() > ENDED {
                    self.ended.pop_front();
                }
            }
        }
    }

    /// Where to hand a connection of `key` resuming session `id`, or the reason to answer in
    /// `SESSION_LOST`.
    pub(super) fn resumer(
        &mut self,
        id: SessionId,
        key: &Bytes,
    ) -> Result<mpsc::Sender<Channel>, ReasonCode> {
        self.prune();
        match self.live.get(&id) {
            Some(l) if l.key == *key => Ok(l.tx.clone()),
            // Another key's session: say nothing about it.
            Some(_) => Err(ReasonCode::SessionUnknown),
            None => Err(self
                .ended
                .iter()
                .rev()
                .find(|(e, _)| *e == id)
                .map_or(ReasonCode::SessionUnknown, |(_, r)| *r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::CloseCause;

    fn session(n: u8) -> SessionId {
        SessionId([n; 16])
    }

    #[test]
    fn a_resume_is_answered_by_how_the_session_ended() {
        let mut s = Sessions::default();
        let key = Bytes::from_static(b"key");
        // The live session's receiver and every state sender stay alive to the end.
        let (mut live, mut states) = (Vec::new(), Vec::new());
        for (n, cause) in [
            (
                1,
                Some(CloseCause::Local(
                    ReasonCode::SessionExpired,
                    "window".into(),
                )),
            ),
            (2, Some(CloseCause::Peer(ReasonCode::Normal, String::new()))),
            (3, None),
        ] {
            let (tx, rx) = mpsc::channel(1);
            let (state_tx, state) = watch::channel(ConnectionState::Connected);
            s.insert(session(n), key.clone(), tx, state);
            match cause {
                // The session's task ended (its receiver is gone) with this cause.
                Some(c) => {
                    let _ = state_tx.send(ConnectionState::Closed(c));
                    drop(rx);
                }
                None => live.push(rx),
            }
            states.push(state_tx);
        }
        assert_eq!(
            s.resumer(session(1), &key).err(),
            Some(ReasonCode::SessionExpired)
        );
        assert_eq!(
            s.resumer(session(2), &key).err(),
            Some(ReasonCode::SessionUnknown)
        );
        assert!(s.resumer(session(3), &key).is_ok());
        let other = Bytes::from_static(b"other");
        assert_eq!(
            s.resumer(session(3), &other).err(),
            Some(ReasonCode::SessionUnknown)
        );
        assert_eq!(
            s.resumer(session(9), &key).err(),
            Some(ReasonCode::SessionUnknown)
        );
    }

    /// Sessions that ended are dropped as new ones arrive, without any resume: the map holds
    /// at most about twice the sessions still running.
    #[test]
    fn ended_sessions_are_pruned_as_new_ones_arrive() {
        let mut s = Sessions::default();
        let key = Bytes::from_static(b"key");
        let (_state_tx, state) = watch::channel(ConnectionState::Connected);
        let mut running = Vec::new();
        for n in 0..10_000u32 {
            let (tx, rx) = mpsc::channel(1);
            let mut id = [0; 16];
            id[..4].copy_from_slice(&n.to_be_bytes());
            s.insert(SessionId(id), key.clone(), tx, state.clone());
            // One session in a hundred keeps running; the others end at once.
            if n % 100 == 0 {
                running.push(rx);
            }
            assert!(s.len() <= 2 * running.len() + PRUNE_MIN, "{} kept", s.len());
        }
        assert!(s.ended.len() <= ENDED);
    }
}
