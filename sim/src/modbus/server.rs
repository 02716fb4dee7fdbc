//! [`SimServer`]: a Modbus TCP server (tokio-modbus's server) for one simulated device, and
//! the [`ServerHandle`] that steps its physics, injects faults and stops it.
//!
//! - Functions: read holding registers (0x03), write single register (0x06), write multiple
//!   registers (0x10); any other function is answered `IllegalFunction`, a read outside the
//!   map `IllegalDataAddress`.
//! - One task per connection (tokio-modbus spawns it); at most
//!   [`ServerConfig::max_connections`] at once: one more is accepted and closed at once.
//! - Faults ([`Fault`]) switch at run time and apply to the next request (and, for `Drop`, to
//!   every open connection at once: each connection's stream watches a kill signal).
//! - Stopping (or dropping the handle) closes the listener and every connection.
//!
//! Invariant: a request is answered from the device under its lock, without awaiting, so an
//! answer is one consistent image even while the physics steps.

use std::{
    future, io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context, Poll},
    time::Duration,
};

use gridvisor_transports::modbus::ExceptionCode;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};
use tokio_modbus::{
    server::{tcp::Server, Service},
    Request, Response,
};

use super::device::SimDevice;
use super::fault::{overlay, to_wire, Fault};
use super::SimError;

/// Registers one read may ask for (the Modbus limit).
pub const MAX_READ: u16 = 125;
/// Registers one write may carry (the Modbus limit).
pub const MAX_WRITE: usize = 123;
/// How long [`ServerHandle::stop`] waits for the server task to end.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Connections served at once; one more is closed at once. Default 16.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
        }
    }
}

/// The fault in force, with a bad value already resolved to its registers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Active {
    None,
    Drop,
    Hang,
    Exception(ExceptionCode),
    BadValue { addr: u16, regs: Vec<u16> },
}

struct Shared<D> {
    device: Mutex<D>,
    fault: Mutex<(Fault, Active)>,
    /// Bumped by `Fault::Drop`: every connection's stream ends when it changes.
    kill: watch::Sender<u64>,
    conns: Arc<Semaphore>,
    max_connections: usize,
    accepted: AtomicU64,
    refused: AtomicU64,
    requests: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic under the lock (a bug in a device) must not take the server down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<D: SimDevice> Shared<D> {
    fn active(&self) -> Active {
        lock(&self.fault).1.clone()
    }

    fn answer(
        &self,
        req: Request<'static>,
    ) -> Result<Option<Response>, tokio_modbus::ExceptionCode> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let bad = match self.active() {
            Active::None => None,
            // A dropped connection's stream is closing; never answer it.
            Active::Drop | Active::Hang => return Ok(None),
            Active::Exception(code) => return Err(to_wire(code)),
            Active::BadValue { addr, regs } => Some((addr, regs)),
        };
        let mut dev = lock(&self.device);
        match req {
            Request::ReadHoldingRegisters(addr, count) => {
                if count == 0 || count > MAX_READ {
                    return Err(tokio_modbus::ExceptionCode::IllegalDataValue);
                }
                let mut regs = dev
                    .image()
                    .read(addr, usize::from(count))
                    .ok_or(tokio_modbus::ExceptionCode::IllegalDataAddress)?
                    .to_vec();
                if let Some((at, values)) = bad {
                    overlay(&mut regs, addr, at, &values);
                }
                Ok(Some(Response::ReadHoldingRegisters(regs)))
            }
            Request::WriteSingleRegister(addr, value) => {
                dev.write(addr, &[value]).map_err(to_wire)?;
                Ok(Some(Response::WriteSingleRegister(addr, value)))
            }
            Request::WriteMultipleRegisters(addr, values) => {
                if values.is_empty() || values.len() > MAX_WRITE {
                    return Err(tokio_modbus::ExceptionCode::IllegalDataValue);
                }
                dev.write(addr, &values).map_err(to_wire)?;
                Ok(Some(Response::WriteMultipleRegisters(
                    addr,
                    values.len() as u16,
                )))
            }
            _ => Err(tokio_modbus::ExceptionCode::IllegalFunction),
        }
    }
}

/// One connection's service: holds its slot of the connection bound until the connection
/// ends.
struct ConnService<D> {
    shared: Arc<Shared<D>>,
    _slot: OwnedSemaphorePermit,
}

impl<D: SimDevice> Service for ConnService<D> {
    type Request = Request<'static>;
    type Response = Option<Response>;
    type Exception = tokio_modbus::ExceptionCode;
    type Future = future::Ready<Result<Self::Response, Self::Exception>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        future::ready(self.shared.answer(req))
    }
}

/// A connection's stream that ends (EOF to the reader, an error to the writer) when the
/// server's kill signal changes: how `Fault::Drop` closes connections that are idle.
pub(crate) struct KillableStream {
    inner: TcpStream,
    killed: Pin<Box<dyn future::Future<Output = ()> + Send>>,
    dead: bool,
}

impl KillableStream {
    pub(crate) fn new(inner: TcpStream, mut kill: watch::Receiver<u64>) -> Self {
        Self {
            inner,
            killed: Box::pin(async move {
                // A closed channel (the server is gone) kills as well.
                let _ = kill.changed().await;
            }),
            dead: false,
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        self.dead
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.check(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.check(cx) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Starts servers for simulated devices.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimServer {
    config: ServerConfig,
}

impl SimServer {
    /// A server with this configuration (`max_connections` at least 1).
    pub fn new(mut config: ServerConfig) -> Self {
        config.max_connections = config.max_connections.max(1);
        Self { config }
    }

    /// Serves `device` on 127.0.0.1 at a port the OS picks ([`ServerHandle::addr`]).
    pub async fn start<D: SimDevice>(&self, device: D) -> Result<ServerHandle<D>, SimError> {
        self.start_on(SocketAddr::from(([127, 0, 0, 1], 0)), device)
            .await
    }

    /// Serves `device` on `addr` (the demo's fixed ports above 1024).
    pub async fn start_on<D: SimDevice>(
        &self,
        addr: SocketAddr,
        device: D,
    ) -> Result<ServerHandle<D>, SimError> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let max = self.config.max_connections;
        let shared = Arc::new(Shared {
            device: Mutex::new(device),
            fault: Mutex::new((Fault::None, Active::None)),
            kill: watch::Sender::new(0),
            conns: Arc::new(Semaphore::new(max)),
            max_connections: max,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            let on_connected = move |stream: TcpStream, peer: SocketAddr| {
                let sh = sh.clone();
                async move {
                    if sh.active() == Active::Drop {
                        sh.refused.fetch_add(1, Ordering::Relaxed);
                        return Ok(None);
                    }
                    let Ok(slot) = sh.conns.clone().try_acquire_owned() else {
                        sh.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "sim modbus: connection limit reached, closing");
                        return Ok(None);
                    };
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "sim modbus: TCP_NODELAY not set");
                    }
                    sh.accepted.fetch_add(1, Ordering::Relaxed);
                    let stream = KillableStream::new(stream, sh.kill.subscribe());
                    let service = ConnService {
                        shared: sh,
                        _slot: slot,
                    };
                    Ok(Some((service, stream)))
                }
            };
            let on_error =
                |e: io::Error| tracing::debug!(error = %e, "sim modbus: connection ended");
            let stop = async move {
                let _ = stop_rx.await;
            };
            match Server::new(listener)
                .serve_until(&on_connected, on_error, stop)
                .await
            {
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sim modbus: server ended"),
            }
        });
        tracing::debug!(%addr, "sim modbus: serving");
        Ok(ServerHandle {
            addr,
            shared,
            stop: Some(stop_tx),
            task,
        })
    }
}

/// A running server: its address, the device, the fault switch. Dropping it stops the
/// server.
pub struct ServerHandle<D> {
    addr: SocketAddr,
    shared: Arc<Shared<D>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl<D> std::fmt::Debug for ServerHandle<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl<D: SimDevice> ServerHandle<D> {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the fault; applies to the next request. `Fault::Drop` also closes every
    /// open connection now. A bad value naming a point the map lacks is an error (and the
    /// fault is left as it was).
    pub fn set_fault(&self, fault: Fault) -> Result<(), SimError> {
        let active = match &fault {
            Fault::None => Active::None,
            Fault::Drop => Active::Drop,
            Fault::Hang => Active::Hang,
            Fault::Exception(code) => Active::Exception(*code),
            Fault::BadValue(bad) => {
                let (addr, regs) = bad.resolve(lock(&self.shared.device).image())?;
                Active::BadValue { addr, regs }
            }
        };
        let drop = active == Active::Drop;
        *lock(&self.shared.fault) = (fault, active);
        if drop {
            self.shared.kill.send_modify(|g| *g = g.wrapping_add(1));
        }
        Ok(())
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        lock(&self.shared.fault).0.clone()
    }

    /// Advances the device's physics by `dt` of simulated time.
    pub fn step(&self, dt: Duration) -> Result<(), SimError> {
        lock(&self.shared.device).step(dt)
    }

    /// Runs `f` on the device (its state, its image), under its lock: keep it short.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        f(&mut lock(&self.shared.device))
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.max_connections - self.shared.conns.available_permits()
    }

    /// Connections accepted and served so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed at once (the bound, or `Fault::Drop`) so far.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Requests received so far (answered or not).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Stops: closes the listener and every connection, and waits (at most
    /// [`STOP_TIMEOUT`]) for the server task to end.
    pub async fn stop(mut self) -> Result<(), SimError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(STOP_TIMEOUT, &mut self.task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(SimError::Stopped),
        }
    }
}

impl<D> Drop for ServerHandle<D> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
