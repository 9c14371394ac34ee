//! TLS 1.3 over the Unix socket, with pinned per-device certificates.
//!
//! Each side trusts exactly one peer certificate (its `peer.pem`), not a CA: the verify
//! callback accepts the peer only if the certificate it presents *is* the pinned one (and TLS
//! proves the peer holds its key). A certificate signed by the pinned certificate, a valid
//! certificate of another device, or any chain is refused. TLS 1.2 and below are refused.
//!
//! Modes: [`TlsMode::Off`]; [`TlsMode::ServerAuth`], where only the server proves itself (the
//! client is authenticated by peer credentials and, later, a session token); and
//! [`TlsMode::Mutual`], where both do.
//!
//! This module builds the contexts ([`ServerTls`], [`ClientTls`]) and decides what a failed
//! handshake means ([`handshake_error`]); the TLS session over a connection (its handshake,
//! sealing and opening records) is `peerwire_transport::tls`.

use std::fmt;
use std::str::FromStr;

use openssl::ssl::{
    Ssl, SslAcceptor, SslContext, SslContextBuilder, SslMethod, SslRef, SslVerifyMode, SslVersion,
};
use openssl::x509::{X509, X509StoreContextRef, X509VerifyResult};

use crate::identity::{Identity, IdentityError};

/// Whether and how the transport is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plain Unix socket (peer credentials still checked).
    #[default]
    Off,
    /// TLS; only the server presents a (pinned) certificate.
    ServerAuth,
    /// TLS; both ends present pinned certificates.
    Mutual,
}

impl FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "server-auth" => Ok(Self::ServerAuth),
            "mutual" => Ok(Self::Mutual),
            other => Err(format!(
                "unknown TLS mode {other:?} (expected off, server-auth or mutual)"
            )),
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::ServerAuth => "server-auth",
            Self::Mutual => "mutual",
        })
    }
}

/// Why a TLS session could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The identity could not be used.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The peer presented no certificate, or not the pinned one.
    #[error("the peer's certificate is not the pinned {0} certificate")]
    NotPinned(&'static str),
    /// The TLS handshake failed (protocol version, alert from the peer, I/O...).
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// OpenSSL could not be configured.
    #[error("openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
}

/// Verify callback that accepts exactly the pinned certificate at depth 0, nothing else.
fn pin(
    pinned: &X509,
) -> Result<impl Fn(bool, &mut X509StoreContextRef) -> bool + Send + Sync + 'static, TlsError> {
    let pinned = pinned.to_der()?;
    Ok(move |_preverified: bool, ctx: &mut X509StoreContextRef| {
        // OpenSSL's own chain verification fails for a self-signed, CA:FALSE certificate that
        // is in no trust store; what decides is whether the peer's leaf is the pinned one.
        let ok = ctx.error_depth() == 0
            && ctx.chain().is_some_and(|c| c.len() == 1)
            && ctx
                .current_cert()
                .and_then(|c| c.to_der().ok())
                .is_some_and(|der| der == pinned);
        if !ok {
            ctx.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
        }
        ok
    })
}

/// TLS 1.3 suites in the order the server picks them: AES-128-GCM first. It is TLS 1.3's
/// mandatory suite, has a 128-bit security level like the P-256 keys, and is the fastest with
/// AES-NI (one core seals about 4 GB/s), which matters where one core does both ends' crypto.
const TLS13_SUITES: &str =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

fn tls13_only(b: &mut SslContextBuilder) -> Result<(), TlsError> {
    b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_max_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_ciphersuites(TLS13_SUITES)?;
    b.set_options(openssl::ssl::SslOptions::CIPHER_SERVER_PREFERENCE);
    // No read-ahead: OpenSSL takes exactly one record at a time from the transport, which reads the
    // socket in large chunks itself, so nothing is ever left inside OpenSSL unseen.
    b.set_read_ahead(false);
    Ok(())
}

/// Whether `e`, from reading or writing a TLS session, is TLS refusing what the peer sent (a
/// record that does not authenticate, an unexpected message, an alert), rather than the socket
/// failing.
pub fn is_tls_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<openssl::ssl::Error>())
}

/// The error of a TLS handshake on `ssl` that failed with `err`: [`TlsError::NotPinned`] when
/// the peer's certificate (`what`: "client" or "server") is not the pinned one, else
/// [`TlsError::Handshake`].
pub fn handshake_error(ssl: &SslRef, err: openssl::ssl::Error, what: &'static str) -> TlsError {
    if ssl.verify_result() == X509VerifyResult::APPLICATION_VERIFICATION {
        return TlsError::NotPinned(what);
    }
    TlsError::Handshake(err.to_string())
}

/// The server side: our identity, and in mutual mode the pinned client certificate.
pub struct ServerTls {
    acceptor: SslAcceptor,
    mode: TlsMode,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish()
    }
}

impl ServerTls {
    /// A TLS 1.3 server context for `identity` (role server). `mode` must not be `Off`.
    pub fn new(identity: &Identity, mode: TlsMode) -> Result<Self, TlsError> {
        let mut b = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server())?;
        tls13_only(&mut b)?;
        b.set_private_key(&identity.key)?;
        b.set_certificate(&identity.cert)?;
        b.check_private_key()?;
        // No session tickets: every connection authenticates afresh.
        b.set_num_tickets(0)?;
        match mode {
            TlsMode::Mutual => b.set_verify_callback(
                SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
                pin(&identity.peer)?,
            ),
            _ => b.set_verify(SslVerifyMode::NONE),
        }
        Ok(Self {
            acceptor: b.build(),
            mode,
        })
    }

    /// The server context for `mode` from an identity directory made by `peerwire init`, or
    /// `None` for [`TlsMode::Off`].
    pub fn from_dir(dir: &std::path::Path, mode: TlsMode) -> Result<Option<Self>, TlsError> {
        if mode == TlsMode::Off {
            return Ok(None);
        }
        let identity = Identity::load(dir, crate::identity::Role::Server)?;
        Self::new(&identity, mode).map(Some)
    }

    /// The mode.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// A fresh server-side TLS state for one connection (`peerwire_transport::tls::accept`
    /// runs its handshake over the socket).
    pub fn ssl(&self) -> Result<Ssl, TlsError> {
        Ok(Ssl::new(self.acceptor.context())?)
    }
}

/// The client side: the pinned server certificate, and in mutual mode our identity.
pub struct ClientTls {
    context: SslContext,
    mode: TlsMode,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .finish()
    }
}

impl ClientTls {
    /// Mutual TLS with `identity` (role client).
    pub fn mutual(identity: &Identity) -> Result<Self, TlsError> {
        Self::build(&identity.peer, Some(identity), TlsMode::Mutual)
    }

    /// The client context for `mode` from an identity directory made by `peerwire init`, or
    /// `None` for [`TlsMode::Off`]. Server-auth needs only the pinned server certificate.
    pub fn from_dir(dir: &std::path::Path, mode: TlsMode) -> Result<Option<Self>, TlsError> {
        use crate::identity::Role;
        match mode {
            TlsMode::Off => Ok(None),
            TlsMode::ServerAuth => {
                Self::server_auth(&Identity::load_peer(dir, Role::Client)?).map(Some)
            }
            TlsMode::Mutual => Self::mutual(&Identity::load(dir, Role::Client)?).map(Some),
        }
    }

    /// Server authentication only: the client trusts `server_cert` and presents no certificate.
    pub fn server_auth(server_cert: &X509) -> Result<Self, TlsError> {
        Self::build(server_cert, None, TlsMode::ServerAuth)
    }

    fn build(pinned: &X509, identity: Option<&Identity>, mode: TlsMode) -> Result<Self, TlsError> {
        // A bare context, not SslConnector: that one loads the system's CA store (tens of
        // milliseconds per client), which pinning never consults.
        let mut b = SslContext::builder(SslMethod::tls_client())?;
        tls13_only(&mut b)?;
        if let Some(id) = identity {
            b.set_private_key(&id.key)?;
            b.set_certificate(&id.cert)?;
            b.check_private_key()?;
        }
        b.set_verify_callback(SslVerifyMode::PEER, pin(pinned)?);
        Ok(Self {
            context: b.build(),
            mode,
        })
    }

    /// The mode.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// A fresh client-side TLS state for one connection (`peerwire_transport::tls::connect`
    /// runs its handshake over the socket).
    pub fn ssl(&self) -> Result<Ssl, TlsError> {
        // Identity is pinned, not named: no hostname check, no SNI.
        Ok(Ssl::new(&self.context)?)
    }
}
