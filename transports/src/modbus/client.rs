//! [`ModbusClient`]: one Modbus TCP connection to one device, shared by clones of the handle
//! (a poller and a writer of the same device use one connection).
//!
//! - Every request is bounded: connecting by [`ClientConfig::connect_timeout`], the exchange
//!   by [`ClientConfig::request_timeout`].
//! - A time-out, an IO error or an answer that does not fit the request drops the connection;
//!   the next request connects again. After a failure the client backs off exponentially
//!   ([`ClientConfig::backoff_initial`] doubling up to [`ClientConfig::backoff_max`]); a request
//!   made while it backs off fails at once with [`ModbusError::Backoff`] rather than waiting.
//!   A response from the device (data or a Modbus exception) ends the back-off.
//! - Requests to one device go one at a time (tokio-modbus does not pipeline); at most
//!   [`ClientConfig::max_in_flight`] may be in flight or queued, one more fails at once with
//!   [`ModbusError::Busy`]. A queued request waits for those ahead of it, each bounded as
//!   above.
//! - A Modbus exception is [`ModbusError::Exception`] with a typed [`ExceptionCode`]; the
//!   connection stays up.
//! - The socket has TCP_NODELAY and TCP keep-alive (socket2), so that a dead peer is noticed
//!   by the kernel even between requests.
//! - Cancel-safe: a request dropped half-way (its caller's own time-out) drops the connection
//!   with it, so that its late answer can never be taken for the next request's.

use std::{
    borrow::Cow,
    fmt, io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    net::{TcpSocket, TcpStream},
    sync::{Mutex, Semaphore},
    time::{timeout, Instant},
};
use tokio_modbus::{
    client::{Client as _, Context},
    Request, Response, Slave,
};

use super::error::{ExceptionCode, ModbusError, Operation};
use super::regs::RegisterWrite;

/// TCP keep-alive of the device connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the kernel drops the connection.
    pub retries: u32,
}

impl Default for Keepalive {
    /// 10 s idle, then a probe every 5 s, 3 probes: a dead device is noticed within ~25 s.
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(10),
            interval: Duration::from_secs(5),
            retries: 3,
        }
    }
}

/// How to reach and talk to one device. [`ClientConfig::new`] gives the defaults documented
/// on each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The device's (or gateway's) address.
    pub addr: SocketAddr,
    /// The Modbus unit id (slave id) of every request. Default 1.
    pub unit_id: u8,
    /// Time allowed to open the connection. Default 3 s.
    pub connect_timeout: Duration,
    /// Time allowed for one request's answer. Default 2 s.
    pub request_timeout: Duration,
    /// Back-off after the first failure in a row. Default 250 ms.
    pub backoff_initial: Duration,
    /// Back-off never exceeds this. Default 30 s.
    pub backoff_max: Duration,
    /// Requests in flight or queued for the device at most; at least 1. Default 8.
    pub max_in_flight: usize,
    /// TCP_NODELAY (a request is one small frame: send it now). Default true.
    pub nodelay: bool,
    /// TCP keep-alive; `None` leaves the system's setting. Default [`Keepalive::default`].
    pub keepalive: Option<Keepalive>,
}

impl ClientConfig {
    /// The defaults for a device at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            unit_id: 1,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            max_in_flight: 8,
            nodelay: true,
            keepalive: Some(Keepalive::default()),
        }
    }

    /// The back-off after `failures` failures in a row (1 or more).
    pub fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(31);
        self.backoff_initial
            .checked_mul(1u32 << exp)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }
}

/// Counters of a client since it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientStats {
    /// Connections opened.
    pub connects: u64,
    /// Requests sent (answered or not).
    pub requests: u64,
    /// Failures that dropped the connection or failed to open one.
    pub failures: u64,
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
}

struct Conn {
    ctx: Option<Context>,
    failures: u32,
    retry_at: Option<Instant>,
}

struct Inner {
    config: ClientConfig,
    permits: Semaphore,
    conn: Mutex<Conn>,
    closed: AtomicBool,
    counters: Counters,
}

/// A handle to one device's connection; clones share it.
#[derive(Clone)]
pub struct ModbusClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for ModbusClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModbusClient")
            .field("addr", &self.inner.config.addr)
            .field("unit_id", &self.inner.config.unit_id)
            .finish_non_exhaustive()
    }
}

/// Applies the socket options of `config` to a socket before it connects.
pub fn configure_socket(socket: &TcpSocket, config: &ClientConfig) -> io::Result<()> {
    let sock = socket2::SockRef::from(socket);
    sock.set_tcp_nodelay(config.nodelay)?;
    if let Some(ka) = config.keepalive {
        let params = socket2::TcpKeepalive::new().with_time(ka.idle);
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
        let params = params.with_interval(ka.interval).with_retries(ka.retries);
        sock.set_keepalive(true)?;
        sock.set_tcp_keepalive(&params)?;
    }
    Ok(())
}

/// Checks a request's address range: `count` in 1..=`max`, and no register past 65535.
fn check_range(what: &str, addr: u16, count: usize, max: usize) -> Result<u16, ModbusError> {
    if count == 0 || count > max || usize::from(addr) + count > 0x1_0000 {
        return Err(ModbusError::InvalidRequest(format!(
            "{what}: {count} registers at {addr} (1..={max}, up to address 65535)"
        )));
    }
    Ok(count as u16)
}

/// Registers one read request may ask for.
pub const MAX_READ: usize = 125;
/// Coils one read request may ask for (the Modbus limit of function 0x01).
pub const MAX_READ_COILS: usize = 2000;
/// Registers one write request may carry.
pub const MAX_WRITE: usize = 123;

impl ModbusClient {
    /// A client; it connects on its first request.
    pub fn new(mut config: ClientConfig) -> Self {
        config.max_in_flight = config.max_in_flight.max(1);
        Self {
            inner: Arc::new(Inner {
                permits: Semaphore::new(config.max_in_flight),
                conn: Mutex::new(Conn {
                    ctx: None,
                    failures: 0,
                    retry_at: None,
                }),
                closed: AtomicBool::new(false),
                counters: Counters::default(),
                config,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The device's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.config.addr
    }

    /// The counters.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        ClientStats {
            connects: c.connects.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        }
    }

    /// Whether a connection is open now (waits for a request in flight to finish).
    pub async fn is_connected(&self) -> bool {
        self.inner.conn.lock().await.ctx.is_some()
    }

    /// Waits until the back-off after a failure is over (returns at once when there is none),
    /// for a caller that would rather wait than get [`ModbusError::Backoff`].
    pub async fn wait_backoff(&self) {
        let at = self.inner.conn.lock().await.retry_at;
        if let Some(at) = at {
            tokio::time::sleep_until(at).await;
        }
    }

    /// Closes the connection for good: later requests fail with
    /// [`ModbusError::Disconnected`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let ctx = self.inner.conn.lock().await.ctx.take();
        if let Some(mut ctx) = ctx {
            let _ = timeout(self.inner.config.request_timeout, ctx.disconnect()).await;
        }
    }

    async fn connect(&self) -> Result<Context, ModbusError> {
        let cfg = &self.inner.config;
        let op = Operation::Connect;
        let io_err = |source| ModbusError::Io {
            addr: cfg.addr,
            op,
            source,
        };
        let socket = if cfg.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(io_err)?;
        configure_socket(&socket, cfg).map_err(io_err)?;
        let stream: TcpStream = timeout(cfg.connect_timeout, socket.connect(cfg.addr))
            .await
            .map_err(|_| ModbusError::Timeout {
                addr: cfg.addr,
                op,
                after: cfg.connect_timeout,
            })?
            .map_err(io_err)?;
        self.inner.counters.connects.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(addr = %cfg.addr, "modbus: connected");
        Ok(tokio_modbus::client::tcp::attach_slave(
            stream,
            Slave(cfg.unit_id),
        ))
    }

    fn fail(&self, conn: &mut Conn) {
        let cfg = &self.inner.config;
        conn.failures = conn.failures.saturating_add(1);
        let backoff = cfg.backoff(conn.failures);
        conn.retry_at = Some(Instant::now() + backoff);
        self.inner.counters.failures.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(addr = %cfg.addr, failures = conn.failures, ?backoff, "modbus: connection dropped");
    }

    /// Sends one request and waits for its answer, which `check` turns into the result or
    /// finds not to fit the request (a protocol error: the connection is dropped). See the
    /// module's documentation for the rest.
    async fn call<T>(
        &self,
        op: Operation,
        req: Request<'static>,
        check: impl FnOnce(Response) -> Result<T, String>,
    ) -> Result<T, ModbusError> {
        let inner = &*self.inner;
        let cfg = &inner.config;
        let addr = cfg.addr;
        if inner.closed.load(Ordering::Acquire) {
            return Err(ModbusError::Disconnected { addr });
        }
        let _permit = inner.permits.try_acquire().map_err(|_| ModbusError::Busy {
            addr,
            max_in_flight: cfg.max_in_flight,
        })?;
        let mut conn = inner.conn.lock().await;
        if inner.closed.load(Ordering::Acquire) {
            return Err(ModbusError::Disconnected { addr });
        }
        // Taken out for the exchange: if this future is dropped half-way, the connection goes
        // with it.
        let mut ctx = match conn.ctx.take() {
            Some(ctx) => ctx,
            None => {
                if let Some(at) = conn.retry_at {
                    let now = Instant::now();
                    if now < at {
                        return Err(ModbusError::Backoff {
                            addr,
                            retry_in: at - now,
                            failures: conn.failures,
                        });
                    }
                }
                match self.connect().await {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        self.fail(&mut conn);
                        return Err(e);
                    }
                }
            }
        };
        let function = req.function_code().value();
        inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        let result = timeout(cfg.request_timeout, ctx.call(req)).await;
        let protocol = |detail: String| ModbusError::Protocol { addr, op, detail };
        let outcome = match result {
            Err(_) => Err(ModbusError::Timeout {
                addr,
                op,
                after: cfg.request_timeout,
            }),
            Ok(Err(tokio_modbus::Error::Transport(e))) => Err(match e.kind() {
                io::ErrorKind::InvalidData => protocol(e.to_string()),
                // tokio-modbus reports a stream closed by the peer with the thread's last OS
                // error: none, or the EAGAIN of its last read (never a real error of an
                // async read, which tokio retries).
                _ if e.raw_os_error() == Some(0) || e.kind() == io::ErrorKind::WouldBlock => {
                    ModbusError::Io {
                        addr,
                        op,
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the device closed the connection",
                        ),
                    }
                }
                _ => ModbusError::Io {
                    addr,
                    op,
                    source: e,
                },
            }),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => Err(protocol(e.to_string())),
            Ok(Ok(Err(code))) => Err(ModbusError::Exception {
                addr,
                op,
                function,
                code: ExceptionCode::from(code),
            }),
            Ok(Ok(Ok(response))) => check(response).map_err(protocol),
        };
        match &outcome {
            // The device answered as a Modbus device does: the connection stays.
            Ok(_) | Err(ModbusError::Exception { .. }) => {
                conn.ctx = Some(ctx);
                conn.failures = 0;
                conn.retry_at = None;
            }
            Err(_) => {
                drop(ctx); // closes the connection
                self.fail(&mut conn);
            }
        }
        outcome
    }

    /// Reads `count` (1..=125) holding registers at `addr` (function 0x03).
    pub async fn read_holding_registers(
        &self,
        addr: u16,
        count: u16,
    ) -> Result<Vec<u16>, ModbusError> {
        let count = check_range("read holding registers", addr, count.into(), MAX_READ)?;
        let op = Operation::ReadHoldingRegisters { addr, count };
        let req = Request::ReadHoldingRegisters(addr, count);
        self.call(op, req, |answer| match answer {
            Response::ReadHoldingRegisters(words) if words.len() == usize::from(count) => Ok(words),
            other => Err(format!("answer {other:?}")),
        })
        .await
    }

    /// Reads `count` (1..=125) input registers at `addr` (function 0x04).
    pub async fn read_input_registers(
        &self,
        addr: u16,
        count: u16,
    ) -> Result<Vec<u16>, ModbusError> {
        let count = check_range("read input registers", addr, count.into(), MAX_READ)?;
        let op = Operation::ReadInputRegisters { addr, count };
        let req = Request::ReadInputRegisters(addr, count);
        self.call(op, req, |answer| match answer {
            Response::ReadInputRegisters(words) if words.len() == usize::from(count) => Ok(words),
            other => Err(format!("answer {other:?}")),
        })
        .await
    }

    /// Reads any number of holding registers at `addr`, in requests of at most 125 (the
    /// registers of different requests may be from different moments).
    pub async fn read_holding_range(
        &self,
        addr: u16,
        count: usize,
    ) -> Result<Vec<u16>, ModbusError> {
        check_range("read holding registers", addr, count, 0x1_0000)?;
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let at = usize::from(addr) + out.len();
            let n = (count - out.len()).min(MAX_READ) as u16;
            out.extend(self.read_holding_registers(at as u16, n).await?);
        }
        Ok(out)
    }

    /// Writes one holding register (function 0x06); the device's echo is checked.
    pub async fn write_single_register(&self, addr: u16, value: u16) -> Result<(), ModbusError> {
        let op = Operation::WriteSingleRegister { addr };
        let req = Request::WriteSingleRegister(addr, value);
        self.call(op, req, |answer| match answer {
            Response::WriteSingleRegister(a, v) if (a, v) == (addr, value) => Ok(()),
            other => Err(format!("answer {other:?}")),
        })
        .await
    }

    /// Writes 1..=123 holding registers at `addr` (function 0x10); the device's echo of
    /// address and count is checked.
    pub async fn write_multiple_registers(
        &self,
        addr: u16,
        values: &[u16],
    ) -> Result<(), ModbusError> {
        let count = check_range("write registers", addr, values.len(), MAX_WRITE)?;
        let op = Operation::WriteMultipleRegisters { addr, count };
        let req = Request::WriteMultipleRegisters(addr, Cow::Owned(values.to_vec()));
        self.call(op, req, |answer| match answer {
            Response::WriteMultipleRegisters(a, n) if (a, n) == (addr, count) => Ok(()),
            other => Err(format!("answer {other:?}")),
        })
        .await
    }

    /// Reads `count` (1..=2000) coils at `addr` (function 0x01). The answer carries whole
    /// bytes; the padding past `count` is dropped, an answer with fewer coils is a protocol
    /// error.
    pub async fn read_coils(&self, addr: u16, count: u16) -> Result<Vec<bool>, ModbusError> {
        let count = check_range("read coils", addr, count.into(), MAX_READ_COILS)?;
        let op = Operation::ReadCoils { addr, count };
        let req = Request::ReadCoils(addr, count);
        self.call(op, req, |answer| match answer {
            Response::ReadCoils(mut coils) if coils.len() >= usize::from(count) => {
                coils.truncate(usize::from(count));
                Ok(coils)
            }
            other => Err(format!("answer {other:?}")),
        })
        .await
    }

    /// Writes one coil (function 0x05: 0xFF00 on, 0x0000 off); the device's echo is checked.
    pub async fn write_single_coil(&self, addr: u16, on: bool) -> Result<(), ModbusError> {
        let op = Operation::WriteSingleCoil { addr };
        let req = Request::WriteSingleCoil(addr, on);
        self.call(op, req, |answer| match answer {
            Response::WriteSingleCoil(a, v) if (a, v) == (addr, on) => Ok(()),
            other => Err(format!("answer {other:?}")),
        })
        .await
    }

    /// One write: function 0x06 for one register, 0x10 for more.
    pub async fn write(&self, w: &RegisterWrite) -> Result<(), ModbusError> {
        match w.values.as_slice() {
            [v] => self.write_single_register(w.addr, *v).await,
            values => self.write_multiple_registers(w.addr, values).await,
        }
    }

    /// Writes in order, stopping at the first failure.
    pub async fn write_all(&self, writes: &[RegisterWrite]) -> Result<(), ModbusError> {
        for w in writes {
            self.write(w).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let mut c = ClientConfig::new("127.0.0.1:502".parse().unwrap());
        c.backoff_initial = Duration::from_millis(100);
        c.backoff_max = Duration::from_secs(1);
        let b: Vec<u128> = (1..=6).map(|n| c.backoff(n).as_millis()).collect();
        assert_eq!(b, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(c.backoff(u32::MAX), Duration::from_secs(1));
        assert_eq!(c.backoff(0), Duration::from_millis(100));
    }

    #[test]
    fn ranges() {
        assert!(check_range("r", 0, 125, MAX_READ).is_ok());
        assert!(check_range("r", 0, 126, MAX_READ).is_err());
        assert!(check_range("r", 0, 0, MAX_READ).is_err());
        assert!(check_range("r", 65535, 1, MAX_READ).is_ok());
        assert!(check_range("r", 65535, 2, MAX_READ).is_err());
    }

    #[tokio::test]
    async fn socket_options_are_applied() {
        let mut cfg = ClientConfig::new("127.0.0.1:502".parse().unwrap());
        cfg.keepalive = Some(Keepalive {
            idle: Duration::from_secs(7),
            interval: Duration::from_secs(3),
            retries: 4,
        });
        let socket = TcpSocket::new_v4().unwrap();
        configure_socket(&socket, &cfg).unwrap();
        let s = socket2::SockRef::from(&socket);
        assert!(s.tcp_nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        #[cfg(target_os = "linux")]
        {
            assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
            assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        }
    }

    #[tokio::test]
    async fn invalid_requests_send_nothing() {
        let client = ModbusClient::new(ClientConfig::new("127.0.0.1:9".parse().unwrap()));
        assert!(matches!(
            client.read_holding_registers(0, 0).await,
            Err(ModbusError::InvalidRequest(_))
        ));
        assert!(matches!(
            client.write_multiple_registers(0, &[0; 124]).await,
            Err(ModbusError::InvalidRequest(_))
        ));
        assert_eq!(client.stats(), ClientStats::default());
        client.close().await;
        assert!(matches!(
            client.read_holding_registers(0, 1).await,
            Err(ModbusError::Disconnected { .. })
        ));
    }
}
