//! The amqps listener: the server's certificate and key from PEM files, and the TLS handshake in
//! front of the ordinary connection (see [`crate::connection::serve_tls`]).
//!
//! rustls with the ring provider, chosen explicitly so that the provider never depends on which
//! features other crates in the build happen to enable.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;
use crate::connection::{self, Context};
use crate::error::Error;

/// How long a client has to complete the TLS handshake (the AMQP handshake then has its own
/// timeout), so that a client that connects and says nothing holds a connection slot no longer
/// than on the plain port.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the certificate chain and key and builds the acceptor; every failure names the file.
pub(crate) fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, Error> {
    let certs = load_cert_chain(&files.cert_chain_path)?;
    let key = load_key(&files.key_path)?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&files.cert_chain_path, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_error(&files.key_path, e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => tls_error(
            path,
            "no private key found (expected a PKCS#8, RSA or EC PRIVATE KEY block)",
        ),
        e => pem_error(path, e),
    })
}

fn pem_error(path: &Path, e: pem::Error) -> Error {
    match e {
        pem::Error::Io(e) => tls_error(path, e),
        e => tls_error(path, format!("not valid PEM: {e}")),
    }
}

fn tls_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Tls {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Completes the TLS handshake, then serves the connection as on the plain port. A client that
/// fails the handshake (plain AMQP on this port, an unknown CA, a bad hello) is logged and
/// dropped; it affects no other connection.
pub(crate) async fn serve(
    acceptor: TlsAcceptor,
    socket: TcpStream,
    peer: SocketAddr,
    ctx: Context,
) {
    let _ = socket.set_nodelay(true);
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
        Ok(Ok(stream)) => connection::serve_tls(stream, peer, ctx).await,
        Ok(Err(e)) => tracing::info!(%peer, "TLS handshake failed: {e}"),
        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
    }
}
