//! Getting the session's next connection: the first dial of `Transport::open`, redials with
//! the core's redial policy, or a dialer coming back to a listener.

use std::time::Duration;

use tokio::time::sleep;

use super::{ConnectionState, Driver, Reconnect};
use crate::core::{CloseCause, DialFailure, Phase, RedialStep};
use crate::error::ConnectError;
use crate::secure::Channel;
use crate::wire::ReasonCode;

impl Driver {
    /// The session's next connection: the first dial of `Transport::open`, a redial with the
    /// policy's delays, or the dialer coming back to a listener. Commands, stream releases and
    /// the core's timers are served meanwhile. `None` once the session is over.
    pub(super) async fn next_connection(&mut self) -> Option<Channel> {
        let mut reconnect = std::mem::replace(&mut self.reconnect, Reconnect::Never);
        let channel = match &mut reconnect {
            Reconnect::Never => {
                self.core
                    .give_up(CloseCause::Lost("no reconnection".into()));
                None
            }
            Reconnect::Await { resumptions, .. } => {
                self.serve_until(resumptions.recv()).await.flatten()
            }
            Reconnect::Dial {
                redial,
                policy,
                draw,
            } => {
                let first = self.core.phase() == Phase::Connecting;
                let mut delay = if first {
                    Duration::ZERO
                } else {
                    policy.lost(self.now(), draw())
                };
                loop {
                    tracing::info!(delay_ms = delay.as_millis() as u64, "dialling");
                    let (failures, at) = (policy.failures(), tokio::time::Instant::now() + delay);
                    self.health.send_modify(|h| {
                        h.dial_failures = failures;
                        h.next_dial_at = Some(at);
                    });
                    let attempt = redial(self.session_id, self.core.received());
                    let attempt = async move {
                        sleep(delay).await;
                        attempt.await
                    };
                    match self.serve_until(attempt).await {
                        None => break None,
                        Some(Ok(channel)) => {
                            policy.connected(self.now());
                            self.health.send_modify(|h| {
                                h.dial_failures = 0;
                                h.next_dial_at = None;
                            });
                            break Some(channel);
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, attempt = policy.failures() + 1, "connect failed");
                            let failure = match e {
                                ConnectError::Refused { reason, detail, .. }
                                    if matches!(
                                        reason,
                                        ReasonCode::AuthFailed | ReasonCode::KeyNotAuthorized
                                    ) =>
                                {
                                    DialFailure::Unauthorized(reason, detail)
                                }
                                _ => DialFailure::Other,
                            };
                            match policy.failed(&failure, draw()) {
                                RedialStep::After(d) => delay = d,
                                RedialStep::GiveUp { cause, offline } => {
                                    if offline {
                                        tracing::warn!("offline: giving up");
                                        let _ = self.state.send(ConnectionState::Offline);
                                    }
                                    self.core.give_up(cause);
                                    break None;
                                }
                            }
                        }
                    }
                }
            }
        };
        self.reconnect = reconnect;
        self.outputs();
        channel
    }
}
