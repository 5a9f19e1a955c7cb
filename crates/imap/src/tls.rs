//! TLS for IMAP connections: rustls (with ring), the system's CA store plus an account's own
//! CA file, the host name always checked unless the account is marked insecure.
//!
//! Why rustls and not OpenSSL (which SMTP and the OAuth client still use through native-tls):
//! an idle connection costs about 8.5 KB in rustls against about 20 KB in OpenSSL 3 (its `SSL`
//! alone is 7.6 KB; `SSL_MODE_RELEASE_BUFFERS` changes nothing there), and issue 21 holds
//! 2,000 push connections in 30 MB (bench/push.rs). A readiness loop also suits rustls: a read
//! on a non-blocking socket is `WouldBlock` until a whole record is in.
//!
//! One behaviour OpenSSL had is kept on purpose: an administrator who trusts a server by
//! giving its self-signed certificate as the account's CA file (`--tls-ca-file`) is served,
//! even when that certificate says it is a CA (as `openssl req -x509` makes them), which
//! webpki refuses as a server certificate. Such a certificate is accepted when it is byte for
//! byte one of the account's own and valid for the host name (its dates were checked before
//! webpki got to its CA flag).
//!
//! Invariant: one `ClientConfig` per TLS setting, shared by every connection (it holds the
//! parsed system CA store).

use std::io;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A TLS stream over TCP.
pub type TlsStream = rustls::StreamOwned<ClientConnection, TcpStream>;

/// What a connection's TLS is set up with: an extra CA (PEM) and whether to verify at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub ca_pem: Option<Vec<u8>>,
    pub insecure: bool,
}

/// Why TLS could not start, in words an administrator can act on.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The settings themselves (an unreadable CA file, no CA store).
    Setup(String),
    /// The handshake (certificate refused, alert, timeout, closed).
    Handshake(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The configuration for these settings, made once and shared.
pub(crate) fn config(s: &Settings) -> Result<Arc<ClientConfig>, Failure> {
    static MADE: Mutex<Vec<(Settings, Arc<ClientConfig>)>> = Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = made.iter().find(|(k, _)| k == s) {
        return Ok(c.clone());
    }
    let c = Arc::new(new_config(s)?);
    made.push((s.clone(), c.clone()));
    Ok(c)
}

fn new_config(s: &Settings) -> Result<ClientConfig, Failure> {
    let provider = provider();
    let chain = if s.insecure { None } else { Some(chain_verifier(s, &provider)?) };
    let verifier = Verifier { chain, algs: provider.signature_verification_algorithms };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::Setup(format!("cannot set up TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(config)
}

/// webpki over the system's store and the account's CA file, with that file's certificates
/// pinned.
fn chain_verifier(s: &Settings, provider: &Arc<CryptoProvider>) -> Result<ChainVerifier, Failure> {
    let mut roots = RootCertStore::empty();
    // The system's store, as OpenSSL reads it (SSL_CERT_FILE / SSL_CERT_DIR included). A
    // certificate in it that does not parse is skipped, as OpenSSL skips it.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    let mut pinned = Vec::new();
    if let Some(pem) = &s.ca_pem {
        for c in CertificateDer::pem_slice_iter(pem) {
            let c = c.map_err(|e| Failure::Setup(format!("cannot read the account's CA certificate: {e}")))?;
            roots
                .add(c.clone())
                .map_err(|e| Failure::Setup(format!("cannot use the account's CA certificate: {e}")))?;
            pinned.push(c);
        }
        if pinned.is_empty() {
            return Err(Failure::Setup("the account's CA file holds no PEM certificate".into()));
        }
    }
    if roots.is_empty() {
        return Err(Failure::Setup(
            "no CA certificate to verify servers with: the system's store is empty or unreadable (install ca-certificates) and the account has no CA file"
                .into(),
        ));
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Failure::Setup(format!("cannot set up certificate verification: {e}")))?;
    Ok(ChainVerifier { webpki, pinned })
}

/// Starts TLS on a connected socket and completes the handshake under the socket's timeouts.
pub(crate) fn connect(s: &Settings, host: &str, mut tcp: TcpStream) -> Result<TlsStream, Failure> {
    let config = config(s)?;
    let name = server_name(host)?;
    let mut conn =
        ClientConnection::new(config, name).map_err(|e| Failure::Setup(format!("cannot set up TLS: {e}")))?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            return Err(Failure::Handshake(handshake_error_text(&e, host)));
        }
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// The name the certificate must carry: a DNS name or an IP address written in full. A short
/// form such as `127.1` (which the resolver takes for 127.0.0.1) is neither, and is refused
/// rather than guessed at.
fn server_name(host: &str) -> Result<ServerName<'static>, Failure> {
    ServerName::try_from(host.to_owned()).map_err(|_| {
        Failure::Setup(format!(
            "{host:?} is not a host name or an IP address TLS can verify (write an address in full, as 127.0.0.1)"
        ))
    })
}

/// The words for a failed handshake: the certificate's fault named as OpenSSL's verifier
/// names it ("certificate verify failed: …"), other causes as they are.
fn handshake_error_text(e: &io::Error, host: &str) -> String {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return tls_error_text(tls, host);
    }
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "no answer in the handshake within the timeout".into(),
        io::ErrorKind::UnexpectedEof => "the server closed the connection in the handshake".into(),
        _ => e.to_string(),
    }
}

fn tls_error_text(e: &rustls::Error, host: &str) -> String {
    use CertificateError as C;
    let why = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "unknown issuer: a self-signed certificate or one from a CA this host does not trust \
                                 (give the account its CA with --tls-ca-file)"
                .to_owned(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!("hostname mismatch: the certificate is not for {host}")
            }
            C::Expired | C::ExpiredContext { .. } => "certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "certificate is not yet valid".into(),
            C::BadSignature => "certificate signature failure".into(),
            C::Revoked => "certificate revoked".into(),
            C::Other(o) if is_ca_as_server(o) => "self-signed certificate: the server's certificate is a CA's \
                 (trust it by giving it to the account with --tls-ca-file)"
                .into(),
            other => format!("{other:?}"),
        },
        other => return other.to_string(),
    };
    format!("certificate verify failed: {why}")
}

/// webpki's refusal of a CA's certificate as a server's (it names no variant of its own in
/// rustls's errors).
fn is_ca_as_server(o: &rustls::OtherError) -> bool {
    o.to_string().contains("CaUsedAsEndEntity")
}

/// The chain and name checks: webpki, plus the account's own certificates pinned.
#[derive(Debug)]
struct ChainVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

/// The certificate checks of a connection: none of the chain or name when the account is
/// insecure (`chain` None), the handshake's signatures always.
#[derive(Debug)]
struct Verifier {
    chain: Option<ChainVerifier>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(o)))
                if is_ca_as_server(&o) && chain.pinned.iter().any(|p| p == end_entity) =>
            {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Even unverified, the server proves it holds the certificate's key.
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_say_what_openssl_said() {
        let other = |s: &str| CertificateError::Other(rustls::OtherError(Arc::new(io::Error::other(s.to_owned()))));
        let cases: [(&str, rustls::Error, &[&str]); 6] = [
            (
                "unknown issuer",
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                &["certificate verify failed", "self-signed certificate", "--tls-ca-file"],
            ),
            (
                "self-signed CA as the server's",
                rustls::Error::InvalidCertificate(other("CaUsedAsEndEntity")),
                &["certificate verify failed", "self-signed certificate"],
            ),
            (
                "wrong name",
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                &["certificate verify failed", "hostname mismatch", "mail.example"],
            ),
            (
                "expired",
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                &["certificate verify failed", "expired"],
            ),
            ("alert", rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure), &["HandshakeFailure"]),
            (
                "other certificate fault",
                rustls::Error::InvalidCertificate(CertificateError::UnhandledCriticalExtension),
                &["certificate verify failed", "UnhandledCriticalExtension"],
            ),
        ];
        for (name, e, want) in cases {
            let text = tls_error_text(&e, "mail.example");
            for w in want {
                assert!(text.contains(w), "{name}: {text:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn a_handshake_timeout_and_a_close_are_named() {
        let cases = [
            ("timeout", io::Error::from(io::ErrorKind::WouldBlock), "no answer in the handshake"),
            ("closed", io::Error::from(io::ErrorKind::UnexpectedEof), "closed the connection"),
            (
                "rustls error inside",
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                ),
                "certificate verify failed",
            ),
        ];
        for (name, e, want) in cases {
            let text = handshake_error_text(&e, "h");
            assert!(text.contains(want), "{name}: {text:?}");
        }
    }

    #[test]
    fn host_names_tls_can_verify() {
        let cases = [
            ("DNS name", "mail.example.org", true),
            ("IPv4", "127.0.0.1", true),
            ("IPv6", "::1", true),
            ("IPv4-mapped IPv6", "::ffff:127.0.0.1", true),
            ("short IPv4", "127.1", false),
            ("empty", "", false),
            ("space", "mail example", false),
        ];
        for (name, host, ok) in cases {
            assert_eq!(server_name(host).is_ok(), ok, "{name}: {host:?}");
        }
    }

    #[test]
    fn an_insecure_account_builds_no_chain_verifier() {
        // Nothing of the chain is read for an insecure account (its CA file, the system's
        // store: a host without ca-certificates still serves it); a verified one is refused.
        let cases = [("verified", false, false), ("insecure", true, true)];
        for (name, insecure, ok) in cases {
            let r = new_config(&Settings { ca_pem: Some(b"not PEM".to_vec()), insecure });
            assert_eq!(r.is_ok(), ok, "{name}: {:?}", r.err());
        }
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let cases: [(&str, &[u8]); 2] = [("empty", b""), ("not PEM", b"hello\n")];
        for (name, pem) in cases {
            let r = new_config(&Settings { ca_pem: Some(pem.to_vec()), insecure: false });
            assert!(matches!(r, Err(Failure::Setup(ref t)) if t.contains("CA")), "{name}: {:?}", r.err());
        }
    }
}
