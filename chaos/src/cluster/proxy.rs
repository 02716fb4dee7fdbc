//! The in-tree link proxy: one TCP forwarder per ordered pair of nodes (X dials Y through
//! the proxy X→Y), so that every node-to-node connection passes through a place that knows
//! both ends and can be told to pass, delay, blackhole or drop it. It moves bytes only: the
//! mutual TLS inside is untouched.
//!
//! Each proxy runs on the runner's tokio runtime; its accept task owns its connections'
//! tasks (a `JoinSet`), so dropping the [`Proxy`] aborts them all.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Bytes read at once per direction.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks in flight per direction (the buffer between the reader and the delayed writer).
pub const CHUNKS_IN_FLIGHT: usize = 64;
/// Longest wait for the real peer's TCP connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a link does to its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFault {
    /// Forward as they come.
    Pass,
    /// Forward each chunk this many ms after it arrived (latency, not a throughput cap).
    Delay(u64),
    /// Forward nothing, keep the connections open, accept new ones and starve them (a
    /// network partition as the nodes see it). When it ends, the starved connections close.
    Blackhole,
    /// Close every connection and refuse new ones (accepted and closed at once).
    Drop,
}

/// A forwarder for one ordered pair of nodes.
pub struct Proxy {
    addr: SocketAddr,
    fault: watch::Sender<LinkFault>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listen on loopback (a free port) and forward to `to`. Must be called within a tokio
    /// runtime.
    pub async fn start(to: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (fault, rx) = watch::channel(LinkFault::Pass);
        let task = tokio::spawn(accept_loop(listener, to, rx));
        Ok(Proxy { addr, fault, task })
    }

    /// Where the dialing node connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Change what the link does (existing connections follow at once).
    pub fn set(&self, f: LinkFault) {
        self.fault.send_replace(f);
    }

    /// What the link does now.
    pub fn fault(&self) -> LinkFault {
        *self.fault.borrow()
    }
}

async fn accept_loop(listener: TcpListener, to: SocketAddr, fault: watch::Receiver<LinkFault>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((inbound, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if *fault.borrow() == LinkFault::Drop {
                    drop(inbound);
                    continue;
                }
                conns.spawn(connection(inbound, to, fault.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Wait until the fault is one of those `stop` accepts.
async fn until(fault: &mut watch::Receiver<LinkFault>, stop: impl Fn(LinkFault) -> bool) {
    if fault.wait_for(|f| stop(*f)).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn connection(inbound: TcpStream, to: SocketAddr, mut fault: watch::Receiver<LinkFault>) {
    let _ = inbound.set_nodelay(true);
    // A blackholed link accepts and starves: the dialer's TLS handshake times out.
    if *fault.borrow() == LinkFault::Blackhole {
        until(&mut fault, |f| f != LinkFault::Blackhole).await;
        return;
    }
    let outbound = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
        Ok(Ok(s)) => s,
        _ => return,
    };
    let _ = outbound.set_nodelay(true);
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    let mut stop = fault.clone();
    tokio::select! {
        _ = pump(ir, ow, fault.clone()) => {}
        _ = pump(or, iw, fault.clone()) => {}
        _ = until(&mut stop, |f| f == LinkFault::Drop) => {}
        _ = async {
            // Starved while blackholed, closed when the blackhole ends: its stream lost
            // bytes (or would deliver stale ones) and the nodes redial.
            until(&mut fault, |f| f == LinkFault::Blackhole).await;
            until(&mut fault, |f| f != LinkFault::Blackhole).await;
        } => {}
    }
}

/// One direction: read chunks, stamp each with when it may leave, write them in order.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fault: watch::Receiver<LinkFault>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let mut read_fault = fault.clone();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            // Nothing is read while blackholed: the sender's buffers fill, as on a dead
            // network.
            until(&mut read_fault, |f| f != LinkFault::Blackhole).await;
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let now = Instant::now();
            let due = match *read_fault.borrow() {
                LinkFault::Delay(ms) => now + Duration::from_millis(ms),
                _ => now,
            };
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let mut write_fault = fault;
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            until(&mut write_fault, |f| f != LinkFault::Blackhole).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    const WAIT: Duration = Duration::from_secs(5);

    async fn round_trip(s: &mut TcpStream) -> std::io::Result<Duration> {
        let started = std::time::Instant::now();
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(WAIT, s.read_exact(&mut buf)).await {
            Ok(r) => {
                r?;
            }
            Err(_) => return Err(std::io::Error::other("timed out")),
        }
        Ok(started.elapsed())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_delays_drops_and_blackholes() {
        let p = Proxy::start(echo().await).await.unwrap();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert!(round_trip(&mut s).await.unwrap() < Duration::from_millis(100));

        p.set(LinkFault::Delay(100));
        let rtt = round_trip(&mut s).await.unwrap();
        assert!(rtt >= Duration::from_millis(200), "{rtt:?}");

        // Blackholed: nothing comes back while it lasts; the connection closes when it ends.
        p.set(LinkFault::Blackhole);
        let mut buf = [0u8; 4];
        s.write_all(b"ping").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf))
                .await
                .is_err()
        );
        p.set(LinkFault::Pass);
        let closed = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap();
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

        // Dropped: an open connection closes, a new one is closed at once.
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut s).await.unwrap();
        p.set(LinkFault::Drop);
        let closed = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap();
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert!(round_trip(&mut s).await.is_err());

        p.set(LinkFault::Pass);
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut s).await.unwrap();
        assert_eq!(p.fault(), LinkFault::Pass);
    }
}
