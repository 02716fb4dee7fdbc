//! A client of ptp4l's management socket: what `pmc -u -b 0` does, natively.
//!
//! ptp4l answers to the address a request came from, so the client binds its own Unix
//! datagram socket at a unique path (in [`ClientOptions::socket_dir`], the system's temporary
//! directory by default) and removes it when dropped. Each request waits at most
//! [`ClientOptions::timeout`] for its answer. Answers are matched by sequence id and by the
//! target port identity (the client's own): a late answer to an earlier request that timed
//! out is skipped; any other answer is a typed error ([`PtpError`]), as is a management
//! error status from ptp4l.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::net::UnixDatagram;

use super::codec::{
    decode_answer, encode_get, error_name, Body, ClockIdentity, CurrentDataSet, DecodeError,
    ManagementId, PortDataSet, PortIdentity, TimeStatusNp, MAX_MESSAGE_BYTES,
};

/// ptp4l's default `uds_address`.
pub const DEFAULT_UDS_ADDRESS: &str = "/var/run/ptp4l";
/// How long a request waits for its answer unless told otherwise (ptp4l answers on the
/// same host within a millisecond when it is alive).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(200);
/// The longest Unix socket path (sun_path is 108 bytes with its terminating zero).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Numbers this process's client sockets (with the pid, a unique path per client).
static NEXT_CLIENT: AtomicU32 = AtomicU32::new(0);

/// How a client talks to ptp4l.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Where the client's own socket is made (default: the system's temporary directory).
    pub socket_dir: PathBuf,
    /// How long a request waits for its answer (default [`DEFAULT_REQUEST_TIMEOUT`]).
    pub timeout: Duration,
    /// The PTP domain (ptp4l's `domainNumber`, default 0).
    pub domain: u8,
    /// The port asked (default [`PortIdentity::ALL`]: every port; a single-port ptp4l has one
    /// answer).
    pub target: PortIdentity,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            socket_dir: std::env::temp_dir(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
            domain: 0,
            target: PortIdentity::ALL,
        }
    }
}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum PtpError {
    /// A socket path longer than [`MAX_SOCKET_PATH_BYTES`].
    #[error("socket path {0} is longer than {MAX_SOCKET_PATH_BYTES} bytes")]
    PathTooLong(PathBuf),
    /// The client's own socket could not be made.
    #[error("binding the client socket {path}: {source}")]
    Bind {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The request could not be sent (ptp4l not running, no permission on its socket).
    #[error("sending {id} to {path}: {source}")]
    Send {
        /// What was asked.
        id: ManagementId,
        /// ptp4l's socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Receiving failed.
    #[error("receiving the answer to {id}: {source}")]
    Receive {
        /// What was asked.
        id: ManagementId,
        /// Why.
        source: std::io::Error,
    },
    /// No answer within the timeout.
    #[error("no answer to {id} from {path} within {timeout:?}")]
    Timeout {
        /// What was asked.
        id: ManagementId,
        /// ptp4l's socket.
        path: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// The answer did not decode.
    #[error("answer to {id}: {source}")]
    Decode {
        /// What was asked.
        id: ManagementId,
        /// Why.
        source: DecodeError,
    },
    /// An answer that is not to this request.
    #[error("answer to {id}: {what}")]
    Foreign {
        /// What was asked.
        id: ManagementId,
        /// What did not match.
        what: String,
    },
    /// ptp4l answered with a management error status.
    #[error("ptp4l refused {id}: {name} ({error:#06x})")]
    Refused {
        /// What was asked.
        id: ManagementId,
        /// The management error id.
        error: u16,
        /// Its name.
        name: &'static str,
    },
}

/// A connection to one ptp4l's management socket.
#[derive(Debug)]
pub struct PtpClient {
    socket: UnixDatagram,
    local: PathBuf,
    server: PathBuf,
    options: ClientOptions,
    source: PortIdentity,
    sequence: u16,
}

impl PtpClient {
    /// Bind a client socket for ptp4l's socket at `server` (nothing is sent yet: ptp4l may
    /// start later). Needs a tokio runtime.
    pub fn bind(server: impl Into<PathBuf>, options: ClientOptions) -> Result<Self, PtpError> {
        let server = server.into();
        check_len(&server)?;
        let n = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let local = options
            .socket_dir
            .join(format!("gridvisor-pmc.{pid}.{n}.sock"));
        check_len(&local)?;
        // A file left by a process that had this pid before is not ours to keep.
        let _ = std::fs::remove_file(&local);
        let socket = UnixDatagram::bind(&local).map_err(|source| PtpError::Bind {
            path: local.clone(),
            source,
        })?;
        // pmc's convention: a zero clock identity, a port number of its own.
        let source = PortIdentity {
            clock: ClockIdentity([0; 8]),
            port: (pid as u16) ^ (n as u16).rotate_left(8),
        };
        Ok(PtpClient {
            socket,
            local,
            server,
            options,
            source,
            sequence: 0,
        })
    }

    /// ptp4l's socket.
    pub fn server(&self) -> &Path {
        &self.server
    }

    /// This client's socket.
    pub fn local_path(&self) -> &Path {
        &self.local
    }

    /// GET TIME_STATUS_NP.
    pub async fn time_status(&mut self) -> Result<TimeStatusNp, PtpError> {
        match self.get(ManagementId::TimeStatusNp).await? {
            Body::TimeStatus(t) => Ok(t),
            other => Err(mismatch(ManagementId::TimeStatusNp, &other)),
        }
    }

    /// GET PORT_DATA_SET.
    pub async fn port_data_set(&mut self) -> Result<PortDataSet, PtpError> {
        match self.get(ManagementId::PortDataSet).await? {
            Body::PortDataSet(p) => Ok(p),
            other => Err(mismatch(ManagementId::PortDataSet, &other)),
        }
    }

    /// GET CURRENT_DATA_SET.
    pub async fn current_data_set(&mut self) -> Result<CurrentDataSet, PtpError> {
        match self.get(ManagementId::CurrentDataSet).await? {
            Body::CurrentDataSet(c) => Ok(c),
            other => Err(mismatch(ManagementId::CurrentDataSet, &other)),
        }
    }

    /// Send a GET for `id` and wait for its answer (a data set or an error status) within the
    /// timeout.
    pub async fn get(&mut self, id: ManagementId) -> Result<Body, PtpError> {
        self.sequence = self.sequence.wrapping_add(1);
        let seq = self.sequence;
        let o = &self.options;
        let request = encode_get(id, self.source, o.target, o.domain, seq);
        self.socket
            .send_to(&request, &self.server)
            .await
            .map_err(|source| PtpError::Send {
                id,
                path: self.server.clone(),
                source,
            })?;
        let timeout = self.options.timeout;
        match tokio::time::timeout(timeout, self.answer(id, seq)).await {
            Ok(r) => r,
            Err(_) => Err(PtpError::Timeout {
                id,
                path: self.server.clone(),
                timeout,
            }),
        }
    }

    /// Receive until the answer to `seq` arrives (the caller bounds the wait).
    async fn answer(&self, id: ManagementId, seq: u16) -> Result<Body, PtpError> {
        let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
        loop {
            let n = self
                .socket
                .recv(&mut buf)
                .await
                .map_err(|source| PtpError::Receive { id, source })?;
            let a = decode_answer(&buf[..n]).map_err(|source| PtpError::Decode { id, source })?;
            if a.target != self.source {
                let what = format!("addressed to {}, not to this client", a.target);
                return Err(PtpError::Foreign { id, what });
            }
            if a.sequence_id != seq {
                // Sequence ids wrap: "earlier" is within the last half of the space.
                if seq.wrapping_sub(a.sequence_id) < 0x8000 {
                    tracing::debug!(id = %id, late = a.sequence_id, "ptp4l: late answer skipped");
                    continue;
                }
                let what = format!("sequence id {}, the request's is {seq}", a.sequence_id);
                return Err(PtpError::Foreign { id, what });
            }
            return match a.body {
                Body::Error { error, .. } => Err(PtpError::Refused {
                    id,
                    error,
                    name: error_name(error),
                }),
                body if body_id(&body) == Some(id) => Ok(body),
                other => Err(mismatch(id, &other)),
            };
        }
    }
}

impl Drop for PtpClient {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.local);
    }
}

fn check_len(path: &Path) -> Result<(), PtpError> {
    if path.as_os_str().len() > MAX_SOCKET_PATH_BYTES {
        return Err(PtpError::PathTooLong(path.to_owned()));
    }
    Ok(())
}

fn body_id(body: &Body) -> Option<ManagementId> {
    match body {
        Body::TimeStatus(_) => Some(ManagementId::TimeStatusNp),
        Body::PortDataSet(_) => Some(ManagementId::PortDataSet),
        Body::CurrentDataSet(_) => Some(ManagementId::CurrentDataSet),
        Body::Error { .. } => None,
    }
}

fn mismatch(id: ManagementId, body: &Body) -> PtpError {
    let what = match body_id(body) {
        Some(other) => format!("the answer carries {other}"),
        None => "the answer is an error status".to_owned(),
    };
    PtpError::Foreign { id, what }
}
