//! Layer 1, the socket seam: dial, bind and accept behind a trait, so the same transport runs
//! on real sockets ([`TokioNet`]: TCP and Unix) and on the simulator's network (`clipsync-sim`
//! implements [`Network`] on turmoil).
//!
//! Nothing above this module names tokio's socket types. Timeouts are applied by the layer
//! above (the secure channel), so every backend gets the same deadlines.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};

/// A connected byte stream, whatever the backend.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteStream for T {}

/// A boxed [`ByteStream`]: what dial and accept produce.
pub type BoxStream = Box<dyn ByteStream>;

/// A boxed, sendable future (the seam's trait methods return these so the traits stay
/// object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a peer can be reached: `HOST:PORT` (TCP) or `unix:PATH` (a Unix socket).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    /// A TCP address as `host:port`; the host may be a name, resolved by the backend.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AddressError::expected(s));
            }
            if path.len() > MAX_UNIX_PATH {
                return Err(AddressError {
                    input: s.to_string(),
                    reason: format!(
                        "the socket path is {} bytes, Linux allows at most {MAX_UNIX_PATH}",
                        path.len()
                    ),
                });
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Tcp(s.to_string()))
            }
            _ => Err(AddressError::expected(s)),
        }
    }
}

impl Address {
    /// Whether the address stays on this machine: a Unix socket, or TCP to a loopback address
    /// or `localhost`. Plaintext (`allow_plaintext`) is allowed only there.
    pub fn is_local(&self) -> bool {
        match self {
            Self::Unix(_) => true,
            Self::Tcp(hostport) => {
                let host = hostport
                    .rsplit_once(':')
                    .map_or(hostport.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                host.eq_ignore_ascii_case("localhost")
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => f.write_str(a),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The longest Unix socket path: `sun_path` holds 108 bytes on Linux, one of them the NUL.
pub const MAX_UNIX_PATH: usize = 107;

/// An address that is neither `HOST:PORT` nor a usable `unix:PATH`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {input:?}: {reason}")]
pub struct AddressError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl AddressError {
    fn expected(input: &str) -> Self {
        Self {
            input: input.to_string(),
            reason: "expected HOST:PORT or unix:PATH".into(),
        }
    }
}

/// A network backend: how to dial and how to listen.
pub trait Network: Send + Sync + fmt::Debug + 'static {
    /// Opens a connection to `addr`. May hang on a broken network: callers bound it.
    fn dial<'a>(&'a self, addr: &'a Address) -> BoxFuture<'a, io::Result<BoxStream>>;
    /// Starts listening on `addr`.
    fn bind<'a>(&'a self, addr: &'a Address) -> BoxFuture<'a, io::Result<Box<dyn NetListener>>>;
}

/// A bound listener of some [`Network`].
pub trait NetListener: Send + fmt::Debug {
    /// Waits for the next incoming connection; returns it with a printable peer address.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>>;
    /// The address actually bound (with the real port when 0 was asked for).
    fn local_addr(&self) -> io::Result<Address>;
}

/// The accept queue of a TCP listener (the kernel caps it at `net.core.somaxconn`, 4096 on
/// current Linux). Under a flood of connections the listener accepts and sheds as fast as it
/// can; a full queue would drop a legitimate peer's SYN, which it retransmits only after a
/// second (measured: sends through a 1,000-socket flood took up to 1.2 s with tokio's 1024).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Unsent bytes a TCP socket may hold before it stops taking more (`TCP_NOTSENT_LOWAT`, Linux).
///
/// Without it the kernel buffers megabytes of stream data the peer has not asked for yet, and a
/// small message written after them waits until they are on the wire: on a 10 mbit link a
/// message sent during a stream waited 0.8–0.95 s (`tests/netns/fault_arm.py`, case
/// `rate10mbit`); with 128 KiB, 0.46–0.68 s, and with the writer's urgent lane as well
/// (`driver::connection`), 0.35–0.40 s — the rest is the link's own 400 ms queue. The kernel's
/// guidance is that 128 KiB or less costs no throughput; on loopback ClipSync streamed 1251 MB/s
/// with it and 1201 MB/s without (`cargo bench --bench throughput`, 256 MiB; noise is of that
/// order).
pub const TCP_NOTSENT_LOWAT: u32 = 128 * 1024;

/// Socket options of every TCP connection: no Nagle (small frames — acks, pings, clipboard
/// text — must not wait) and the unsent-bytes bound where the platform has it.
fn tune(s: &tokio::net::TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket2::SockRef::from(s).set_tcp_notsent_lowat(TCP_NOTSENT_LOWAT)?;
    Ok(())
}

/// The production backend: tokio TCP and Unix sockets.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioNet;

impl Network for TokioNet {
    fn dial<'a>(&'a self, addr: &'a Address) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            match addr {
                Address::Tcp(a) => {
                    let s = tokio::net::TcpStream::connect(a.as_str()).await?;
                    tune(&s)?;
                    Ok(Box::new(s) as BoxStream)
                }
                #[cfg(unix)]
                Address::Unix(p) => {
                    Ok(Box::new(tokio::net::UnixStream::connect(p).await?) as BoxStream)
                }
                #[cfg(not(unix))]
                Address::Unix(_) => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "Unix sockets are not available on this platform",
                )),
            }
        })
    }

    fn bind<'a>(&'a self, addr: &'a Address) -> BoxFuture<'a, io::Result<Box<dyn NetListener>>> {
        Box::pin(async move {
            match addr {
                Address::Tcp(a) => {
                    // Bound like `TcpListener::bind` (SO_REUSEADDR, every resolved address in
                    // turn), with a deeper accept queue than its 1024.
                    let mut last = None;
                    for sa in tokio::net::lookup_host(a.as_str()).await? {
                        let socket = if sa.is_ipv4() {
                            tokio::net::TcpSocket::new_v4()?
                        } else {
                            tokio::net::TcpSocket::new_v6()?
                        };
                        #[cfg(unix)]
                        socket.set_reuseaddr(true)?;
                        match socket.bind(sa).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
                            Ok(l) => return Ok(Box::new(TcpListener(l)) as Box<dyn NetListener>),
                            Err(e) => last = Some(e),
                        }
                    }
                    Err(last.unwrap_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "the address resolves to nothing",
                        )
                    }))
                }
                #[cfg(unix)]
                Address::Unix(p) => Ok(Box::new(UnixListener {
                    inner: tokio::net::UnixListener::bind(p)?,
                    path: p.clone(),
                }) as Box<dyn NetListener>),
                #[cfg(not(unix))]
                Address::Unix(_) => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "Unix sockets are not available on this platform",
                )),
            }
        })
    }
}

#[derive(Debug)]
struct TcpListener(tokio::net::TcpListener);

impl NetListener for TcpListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        Box::pin(async move {
            let (s, peer) = self.0.accept().await?;
            tune(&s)?;
            Ok((Box::new(s) as BoxStream, peer.to_string()))
        })
    }

    fn local_addr(&self) -> io::Result<Address> {
        Ok(Address::Tcp(self.0.local_addr()?.to_string()))
    }
}

#[cfg(unix)]
#[derive(Debug)]
struct UnixListener {
    inner: tokio::net::UnixListener,
    path: PathBuf,
}

#[cfg(unix)]
impl NetListener for UnixListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        Box::pin(async move {
            let (s, _) = self.inner.accept().await?;
            Ok((
                Box::new(s) as BoxStream,
                format!("unix:{}", self.path.display()),
            ))
        })
    }

    fn local_addr(&self) -> io::Result<Address> {
        Ok(Address::Unix(self.path.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            "127.0.0.1:80".parse(),
            Ok(Address::Tcp("127.0.0.1:80".into()))
        );
        assert_eq!(
            "server:9000".parse(),
            Ok(Address::Tcp("server:9000".into()))
        );
        assert_eq!("[::1]:9".parse(), Ok(Address::Tcp("[::1]:9".into())));
        assert_eq!("unix:/tmp/s".parse(), Ok(Address::Unix("/tmp/s".into())));
        let long = format!("unix:/{}", "x".repeat(MAX_UNIX_PATH));
        let e = long
            .parse::<Address>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("at most 107"), "{e}");
        for bad in ["", "host", "host:", ":80", "host:99999", "unix:"] {
            assert!(bad.parse::<Address>().is_err(), "{bad} parsed");
        }
        let a: Address = "unix:/tmp/s".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.to_string(), "unix:/tmp/s");
    }
}
