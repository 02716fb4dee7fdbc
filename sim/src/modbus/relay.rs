//! A simulated trip relay: a Modbus TCP I/O module with [`RELAY_COILS`] coils, each driving a
//! relay (the node's trip output writes one of them; see `gridvisor_actors::io::relay` for
//! the polarity: on = trip asserted, breaker open).
//!
//! - Functions: read coils (0x01), write single coil (0x05), write multiple coils (0x0F);
//!   any other function is answered `IllegalFunction`, a coil outside the module
//!   `IllegalDataAddress`.
//! - Its state can be read at any time ([`RelayHandle::coil`], [`RelayHandle::writes`]), and
//!   it can be told to fail ([`RelayHandle::set_fault`]: `Drop`, `Hang`, `Exception`; a
//!   `BadValue` has no meaning for coils and is refused).
//! - One task per connection, at most [`ServerConfig::max_connections`]; stopping (or
//!   dropping the handle) closes the listener and every connection.
//!
//! Invariant: a request is answered under the module's lock without awaiting, so a read sees
//! every write answered before it.

use std::{
    future, io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};
use tokio_modbus::{
    server::{tcp::Server, Service},
    ExceptionCode, Request, Response,
};

use super::fault::{to_wire, Fault};
use super::server::{KillableStream, ServerConfig, STOP_TIMEOUT};
use super::SimError;

/// Coils of the simulated I/O module (addresses 0..RELAY_COILS).
pub const RELAY_COILS: u16 = 16;
/// Coils one read may ask for (the Modbus limit).
pub const MAX_READ_COILS: u16 = 2000;

struct Module {
    coils: Vec<bool>,
    /// Coil writes accepted, per coil.
    writes: Vec<u64>,
}

struct Shared {
    module: Mutex<Module>,
    fault: Mutex<Fault>,
    kill: watch::Sender<u64>,
    conns: Arc<Semaphore>,
    requests: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn answer(&self, req: Request<'static>) -> Result<Option<Response>, ExceptionCode> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match &*lock(&self.fault) {
            Fault::None => {}
            Fault::Exception(code) => return Err(to_wire(*code)),
            Fault::Drop | Fault::Hang | Fault::BadValue(_) => return Ok(None),
        }
        let mut m = lock(&self.module);
        match req {
            Request::ReadCoils(addr, count) => {
                if count == 0 || count > MAX_READ_COILS {
                    return Err(ExceptionCode::IllegalDataValue);
                }
                let range = range(addr, usize::from(count))?;
                Ok(Some(Response::ReadCoils(m.coils[range].to_vec())))
            }
            Request::WriteSingleCoil(addr, on) => {
                let i = range(addr, 1)?.start;
                m.coils[i] = on;
                m.writes[i] += 1;
                Ok(Some(Response::WriteSingleCoil(addr, on)))
            }
            Request::WriteMultipleCoils(addr, values) => {
                let range = range(addr, values.len())?;
                for (i, on) in range.zip(values.iter()) {
                    m.coils[i] = *on;
                    m.writes[i] += 1;
                }
                Ok(Some(Response::WriteMultipleCoils(
                    addr,
                    values.len() as u16,
                )))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

/// The coils `addr..addr + count`, if the module has them all.
fn range(addr: u16, count: usize) -> Result<std::ops::Range<usize>, ExceptionCode> {
    let start = usize::from(addr);
    let end = start + count;
    if count == 0 || end > usize::from(RELAY_COILS) {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(start..end)
}

struct ConnService {
    shared: Arc<Shared>,
    _slot: OwnedSemaphorePermit,
}

impl Service for ConnService {
    type Request = Request<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Self::Response, Self::Exception>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        future::ready(self.shared.answer(req))
    }
}

/// A running simulated I/O module with its relays.
pub struct RelayHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Serves a relay module (every coil off) on `addr` (port 0: one the OS picks).
pub async fn start_relay(addr: SocketAddr, config: ServerConfig) -> Result<RelayHandle, SimError> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let coils = usize::from(RELAY_COILS);
    let shared = Arc::new(Shared {
        module: Mutex::new(Module {
            coils: vec![false; coils],
            writes: vec![0; coils],
        }),
        fault: Mutex::new(Fault::None),
        kill: watch::Sender::new(0),
        conns: Arc::new(Semaphore::new(config.max_connections.max(1))),
        requests: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let sh = shared.clone();
    let task = tokio::spawn(async move {
        let on_connected = move |stream: TcpStream, _peer: SocketAddr| {
            let sh = sh.clone();
            async move {
                if *lock(&sh.fault) == Fault::Drop {
                    return Ok(None);
                }
                let Ok(slot) = sh.conns.clone().try_acquire_owned() else {
                    return Ok(None);
                };
                let _ = stream.set_nodelay(true);
                let stream = KillableStream::new(stream, sh.kill.subscribe());
                Ok(Some((
                    ConnService {
                        shared: sh,
                        _slot: slot,
                    },
                    stream,
                )))
            }
        };
        let on_error = |e: io::Error| tracing::debug!(error = %e, "sim relay: connection ended");
        let stop = async move {
            let _ = stop_rx.await;
        };
        if let Err(e) = Server::new(listener)
            .serve_until(&on_connected, on_error, stop)
            .await
        {
            tracing::warn!(error = %e, "sim relay: server ended");
        }
    });
    Ok(RelayHandle {
        addr,
        shared,
        stop: Some(stop_tx),
        task,
    })
}

impl RelayHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether coil `coil` is on now (None: the module has no such coil).
    pub fn coil(&self, coil: u16) -> Option<bool> {
        lock(&self.shared.module)
            .coils
            .get(usize::from(coil))
            .copied()
    }

    /// Writes accepted on coil `coil` so far.
    pub fn writes(&self, coil: u16) -> u64 {
        let m = lock(&self.shared.module);
        m.writes.get(usize::from(coil)).copied().unwrap_or(0)
    }

    /// Sets a coil from outside (someone at the panel).
    pub fn set_coil(&self, coil: u16, on: bool) -> Result<(), SimError> {
        let mut m = lock(&self.shared.module);
        let slot = m.coils.get_mut(usize::from(coil)).ok_or(SimError::Config {
            field: "coil".to_owned(),
            detail: format!("the module has coils 0..{RELAY_COILS}, not {coil}"),
        })?;
        *slot = on;
        Ok(())
    }

    /// Requests received so far (answered or not).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Switches the fault (see the module's documentation); `Drop` closes every open
    /// connection now.
    pub fn set_fault(&self, fault: Fault) -> Result<(), SimError> {
        if matches!(fault, Fault::BadValue(_)) {
            return Err(SimError::Config {
                field: "fault".to_owned(),
                detail: "a relay module has no register points to serve a bad value in".to_owned(),
            });
        }
        let drop = fault == Fault::Drop;
        *lock(&self.shared.fault) = fault;
        if drop {
            self.shared.kill.send_modify(|g| *g = g.wrapping_add(1));
        }
        Ok(())
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

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridvisor_transports::modbus::{
        ClientConfig, ExceptionCode as Code, ModbusClient, ModbusError,
    };

    #[tokio::test]
    async fn coils_are_written_read_back_and_bounded() {
        let relay = start_relay("127.0.0.1:0".parse().unwrap(), ServerConfig::default())
            .await
            .unwrap();
        let client = ModbusClient::new(ClientConfig::new(relay.addr()));
        client.write_single_coil(5, true).await.unwrap();
        assert_eq!(relay.coil(5), Some(true));
        assert_eq!(relay.writes(5), 1);
        assert_eq!(client.read_coils(4, 3).await.unwrap(), [false, true, false]);
        let outside = client.read_coils(RELAY_COILS - 1, 2).await.unwrap_err();
        assert!(
            matches!(
                outside,
                ModbusError::Exception {
                    code: Code::IllegalDataAddress,
                    ..
                }
            ),
            "{outside}"
        );
        relay
            .set_fault(Fault::Exception(Code::ServerDeviceFailure))
            .unwrap();
        assert!(client.write_single_coil(5, false).await.is_err());
        assert_eq!(relay.coil(5), Some(true), "a refused write changes nothing");
        let bad = crate::modbus::BadValue::scale_factor(1, "x");
        assert!(relay.set_fault(Fault::BadValue(bad)).is_err());
        relay.stop().await.unwrap();
    }
}
