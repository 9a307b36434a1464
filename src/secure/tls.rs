//! TLS 1.3 with rustls: ephemeral self-signed certificates on both sides, a verifier that
//! accepts any self-signed certificate but still checks the handshake signature, and the
//! RFC 9266 channel binding that the authentication signs.
//!
//! Identity does not come from the certificate: it comes from the SSH-key signature over the
//! channel binding (PROTOCOL.md §3.2), which ties the proof to this very TLS session. The
//! certificate check still matters: it proves the peer holds the certificate's private key,
//! so the exporter secret is shared with the party that holds it and nobody in between.
//!
//! The [`CryptoProvider`] and [`TimeProvider`] are injected ([`TlsSetup::new`]) so the
//! simulator can supply its own randomness and simulated time.

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::time_provider::TimeProvider;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::auth::CHANNEL_BINDING_LABEL;
use crate::net::BoxStream;

/// The server name the dialer sends; the verifier ignores names (identity is the SSH key).
pub const SERVER_NAME: &str = "clipsync.invalid";

/// The TLS configuration of one transport: both roles, one ephemeral certificate.
#[derive(Clone)]
pub struct TlsSetup {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsSetup(TLS 1.3, ephemeral self-signed certificate)")
    }
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// Generating the ephemeral certificate failed.
    #[error("cannot generate the ephemeral certificate: {0}")]
    Certificate(String),
    /// rustls refused the configuration (a provider without TLS 1.3 suites, for example).
    #[error("TLS configuration refused: {0}")]
    Config(#[from] rustls::Error),
}

impl TlsSetup {
    /// TLS with rustls's `ring` provider and the system clock.
    pub fn with_defaults() -> Result<Self, TlsSetupError> {
        Self::new(
            Arc::new(rustls::crypto::ring::default_provider()),
            Arc::new(rustls::time_provider::DefaultTimeProvider),
        )
    }

    /// TLS with an injected crypto provider and clock (the simulator passes seeded randomness
    /// and simulated time). Generates a fresh self-signed certificate.
    pub fn new(
        provider: Arc<CryptoProvider>,
        time: Arc<dyn TimeProvider>,
    ) -> Result<Self, TlsSetupError> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| TlsSetupError::Certificate(e.to_string()))?;
        let cert = CertificateDer::from(certified.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let verifier = Arc::new(SelfSignedVerifier {
            algorithms: provider.signature_verification_algorithms,
        });
        let client = ClientConfig::builder_with_details(provider.clone(), time.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(vec![cert.clone()], key.clone_key())?;
        let server = ServerConfig::builder_with_details(provider, time)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert], key)?;
        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }

    /// Runs the client side of the TLS handshake; returns the encrypted stream and the
    /// channel binding.
    pub async fn connect(&self, stream: BoxStream) -> io::Result<(BoxStream, [u8; 32])> {
        let name = ServerName::try_from(SERVER_NAME)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = TlsConnector::from(self.client.clone())
            .connect(name, stream)
            .await?;
        let binding = export_binding(tls.get_ref().1.export_keying_material(
            [0u8; 32],
            CHANNEL_BINDING_LABEL,
            None,
        ))?;
        Ok((Box::new(tls), binding))
    }

    /// Runs the server side of the TLS handshake; returns the encrypted stream and the
    /// channel binding.
    pub async fn accept(&self, stream: BoxStream) -> io::Result<(BoxStream, [u8; 32])> {
        let tls = TlsAcceptor::from(self.server.clone())
            .accept(stream)
            .await?;
        let binding = export_binding(tls.get_ref().1.export_keying_material(
            [0u8; 32],
            CHANNEL_BINDING_LABEL,
            None,
        ))?;
        Ok((Box::new(tls), binding))
    }
}

fn export_binding(r: Result<[u8; 32], rustls::Error>) -> io::Result<[u8; 32]> {
    r.map_err(|e| io::Error::other(format!("TLS exporter failed: {e}")))
}

/// Accepts any end-entity certificate (self-signed, any name, any dates) but verifies the
/// TLS 1.3 handshake signature with it, so the peer must hold the certificate's key.
#[derive(Debug)]
struct SelfSignedVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl SelfSignedVerifier {
    /// Only TLS 1.3 is configured; a TLS 1.2 signature means something is wrong.
    fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not supported".into()))
    }

    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl ServerCertVerifier for SelfSignedVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for SelfSignedVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
