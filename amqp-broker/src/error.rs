//! The crate's error type and the AMQP reply codes, mapped in one place.

use std::io;

/// What can go wrong starting or stopping the broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The AMQP port could not be bound (in use, or not allowed).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: std::net::SocketAddr,
        /// Why the OS refused.
        source: io::Error,
    },
    /// The data directory could not be opened or recovered.
    #[error("cannot open the message store in {dir}: {source}")]
    Store {
        /// The data directory.
        dir: std::path::PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// Another process (or another broker in this one) uses the data directory: two brokers
    /// appending to the same logs would corrupt them.
    #[error(
        "the data directory {} is in use by another broker{}; only one broker may use a data \
         directory at a time",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    DataDirLocked {
        /// The data directory.
        dir: std::path::PathBuf,
        /// The process holding it, when it could be read from the lock file.
        pid: Option<u32>,
    },
    /// The amqps listener's certificate or key could not be loaded (missing file, no PEM
    /// block of the right kind, or a key that does not fit the certificate).
    #[error("cannot load the TLS certificate or key from {}: {reason}", path.display())]
    Tls {
        /// The certificate or key file at fault.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Users, vhosts or permissions could not be loaded (`access.json` in the data directory,
    /// or the definitions file), or a vhost's store could not be opened.
    #[error("{0}")]
    Access(String),
    /// Any other I/O failure.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// AMQP 0-9-1 reply codes, as RabbitMQ uses them.
pub(crate) mod reply {
    pub const NO_ROUTE: u16 = 312;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const FRAME_ERROR: u16 = 501;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

/// A protocol error found while handling a method: it closes the channel (soft codes) or the
/// connection (hard codes), naming the method that caused it as `channel.close` requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AmqpError {
    /// The reply code (see [`reply`]).
    pub code: u16,
    /// Text in RabbitMQ's style: `NOT_FOUND - no queue 'x' in vhost '/'`.
    pub text: String,
    /// Class of the offending method (0 when none).
    pub class_id: u16,
    /// Method id of the offending method (0 when none).
    pub method_id: u16,
}

impl AmqpError {
    fn new(code: u16, name: &str, detail: impl std::fmt::Display) -> Self {
        let mut text = format!("{name} - {detail}");
        // reply-text is a shortstr: cut it on a char boundary.
        if text.len() > 255 {
            let mut end = 255;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Self {
            code,
            text,
            class_id: 0,
            method_id: 0,
        }
    }

    /// Records which method failed (for the close frame).
    pub fn on(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// Hard errors close the whole connection; soft ones close only the channel.
    pub fn is_connection_error(&self) -> bool {
        !matches!(
            self.code,
            reply::ACCESS_REFUSED
                | reply::NOT_FOUND
                | reply::RESOURCE_LOCKED
                | reply::PRECONDITION_FAILED
                | reply::NO_ROUTE
        )
    }

    pub fn access_refused(detail: impl std::fmt::Display) -> Self {
        Self::new(reply::ACCESS_REFUSED, "ACCESS_REFUSED", detail)
    }
    pub fn not_found(detail: impl std::fmt::Display) -> Self {
        Self::new(reply::NOT_FOUND, "NOT_FOUND", detail)
    }
    pub fn resource_locked(detail: impl std::fmt::Display) -> Self {
        Self::new(reply::RESOURCE_LOCKED, "RESOURCE_LOCKED", detail)
    }
    pub fn precondition_failed(detail: impl std::fmt::Display) -> Self {
        Self::new(reply::PRECONDITION_FAILED, "PRECONDITION_FAILED", detail)
    }
    pub fn connection_forced(detail: impl std::fmt::Display) -> Self {
        Self::new(reply::CONNECTION_FORCED, "CONNECTION_FORCED", detail)
    }
    pub fn frame_error(detail: impl std::fmt::Display) -> Self {
        Self::new(reply::FRAME_ERROR, "FRAME_ERROR", detail)
    }
    pub fn command_invalid(detail: impl std::fmt::Display) -> Self {
        Self::new(reply::COMMAND_INVALID, "COMMAND_INVALID", detail)
    }
    pub fn channel_error(detail: impl std::fmt::Display) -> Self {
        Self::new(reply::CHANNEL_ERROR, "CHANNEL_ERROR", detail)
    }
    pub fn unexpected_frame(detail: impl std::fmt::Display) -> Self {
        Self::new(reply::UNEXPECTED_FRAME, "UNEXPECTED_FRAME", detail)
    }
    pub fn not_allowed(detail: impl std::fmt::Display) -> Self {
        Self::new(reply::NOT_ALLOWED, "NOT_ALLOWED", detail)
    }
    pub fn not_implemented(detail: impl std::fmt::Display) -> Self {
        Self::new(reply::NOT_IMPLEMENTED, "NOT_IMPLEMENTED", detail)
    }
    pub fn internal_error(detail: impl std::fmt::Display) -> Self {
        Self::new(reply::INTERNAL_ERROR, "INTERNAL_ERROR", detail)
    }
}

/// Result of handling one method.
pub(crate) type AmqpResult<T = ()> = Result<T, AmqpError>;
