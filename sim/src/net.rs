//! The socket seam on turmoil: the only code in the project that knows turmoil's sockets.

use std::io;
use std::sync::Arc;

use clipsync::net::{Address, BoxFuture, BoxStream, NetListener, Network};

use crate::link::Shaper;

/// The socket seam on turmoil's simulated TCP.
///
/// `unix:` addresses have no simulated counterpart (turmoil has no Unix sockets) and fail
/// with `Unsupported`; real Unix sockets are covered by the real-socket tests. A listener binds
/// `0.0.0.0` on the port given (turmoil accepts no other host for binding).
///
/// With a [`Shaper`] (the scenario's `[link]` has `bandwidth_mbit` or `loss`), every
/// connection, dialled or accepted, goes through the link model ([`crate::link`]); without
/// one, turmoil's streams are used as they are. In a run with `roam` faults every connection
/// can also be cut by its ends' roaming ([`crate::roam`]).
#[derive(Clone, Debug, Default)]
pub struct TurmoilNet {
    shaper: Option<Arc<Shaper>>,
}

impl TurmoilNet {
    /// Turmoil's sockets behind `shaper`'s link model.
    pub fn shaped(shaper: Shaper) -> Self {
        Self {
            shaper: Some(Arc::new(shaper)),
        }
    }

    fn wrap(&self, s: turmoil::net::TcpStream) -> io::Result<BoxStream> {
        let (local, peer) = (s.local_addr()?.ip(), s.peer_addr()?.ip());
        let stream = match &self.shaper {
            Some(shaper) => Box::new(shaper.wrap(s, peer)) as BoxStream,
            None => Box::new(s) as BoxStream,
        };
        Ok(crate::roam::wrap(stream, local, peer))
    }
}

impl Network for TurmoilNet {
    fn dial<'a>(&'a self, addr: &'a Address) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            match addr {
                Address::Tcp(a) => {
                    let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
                    if crate::process::is_killed(host) {
                        // The machine is up, its process is not: the kernel refuses at once.
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            "connection refused (the process is dead)",
                        ));
                    }
                    let s = turmoil::net::TcpStream::connect(a.as_str()).await?;
                    self.wrap(s)
                }
                Address::Unix(_) => Err(unsupported()),
            }
        })
    }

    fn bind<'a>(&'a self, addr: &'a Address) -> BoxFuture<'a, io::Result<Box<dyn NetListener>>> {
        Box::pin(async move {
            match addr {
                Address::Tcp(a) => {
                    let port = a
                        .rsplit_once(':')
                        .and_then(|(_, p)| p.parse::<u16>().ok())
                        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, a.clone()))?;
                    let l = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
                    Ok(Box::new(TurmoilListener(l, self.clone())) as Box<dyn NetListener>)
                }
                Address::Unix(_) => Err(unsupported()),
            }
        })
    }
}

fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "turmoil has no Unix sockets; simulate them as TCP",
    )
}

struct TurmoilListener(turmoil::net::TcpListener, TurmoilNet);

impl std::fmt::Debug for TurmoilListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurmoilListener")
    }
}

impl NetListener for TurmoilListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        Box::pin(async move {
            let (s, peer) = self.0.accept().await?;
            Ok((self.1.wrap(s)?, peer.to_string()))
        })
    }

    fn local_addr(&self) -> io::Result<Address> {
        Ok(Address::Tcp(self.0.local_addr()?.to_string()))
    }
}
