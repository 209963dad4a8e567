//! libp2p's TLS 1.3 handshake (`/tls/1.0.0`, the libp2p TLS spec) with AES-GCM preferred.
//!
//! `libp2p-tls` implements the spec but puts ChaCha20-Poly1305 first in its cipher list, and a
//! rustls server follows the client's order, so two stock rust-libp2p nodes always settle on
//! ChaCha20 — the cipher Noise already uses. On CPUs with AES instructions AES-GCM is much
//! cheaper per byte (see the transport bench), so Agora builds its own rustls configurations
//! from `libp2p-tls`'s certificate code (the libp2p extension, its parsing and signature
//! checks) with the suites in the order AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305, and its
//! server choosing by its own order. The wire protocol is unchanged: any libp2p TLS peer
//! interoperates (the tests here run Agora's side against `libp2p-tls`'s own, both ways).

use std::sync::Arc;

use futures::{AsyncRead, AsyncWrite};
use libp2p::{PeerId, identity::Keypair, tls::certificate};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{
        CryptoProvider,
        aws_lc_rs::{
            cipher_suite::{
                TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
            },
            default_provider,
        },
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};

use crate::read_ahead::ReadAhead;

/// ALPN protocol id the libp2p TLS spec requires.
const ALPN: &[u8] = b"libp2p";

/// The TLS stream after the handshake, over a socket read ahead ([`ReadAhead`]).
pub(crate) type TlsStream<C> = futures_rustls::TlsStream<ReadAhead<C>>;

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make the certificate: {0}")]
    Certificate(String),
    #[error("handshake: {0}")]
    Handshake(std::io::Error),
    #[error("the peer's certificate is not a libp2p certificate")]
    BadCertificate,
}

/// Client and server configurations for one identity.
#[derive(Clone)]
pub(crate) struct Config {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

/// TLS 1.3 only, AES-GCM before ChaCha20-Poly1305.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = default_provider();
    provider.cipher_suites = vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

impl Config {
    pub(crate) fn new(key: &Keypair) -> Result<Self, TlsError> {
        let cert_err = |e: &dyn std::fmt::Display| TlsError::Certificate(e.to_string());
        // One certificate (a fresh P-256 key, signed over by the identity key in the libp2p
        // extension) serves both directions, as the spec allows.
        let (cert, key) = certificate::generate(key).map_err(|e| cert_err(&e))?;
        let verifier = Arc::new(Verifier);
        // The certificate carries the critical libp2p extension, which rustls' own
        // certificate parser refuses, so it is served by a resolver, not `with_single_cert`.
        let signer = default_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| cert_err(&e))?;
        let own = Arc::new(OwnCert(Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert],
            signer,
        ))));
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| cert_err(&e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(own.clone());
        client.alpn_protocols = vec![ALPN.to_vec()];
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| cert_err(&e))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(own);
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.ignore_client_order = true;
        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }

    /// The handshake as the side that accepted the connection.
    pub(crate) async fn accept<C>(self, socket: C) -> Result<(PeerId, TlsStream<C>), TlsError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = futures_rustls::TlsAcceptor::from(self.server)
            .accept(ReadAhead::new(socket))
            .await
            .map_err(TlsError::Handshake)?;
        let peer = peer_of(stream.get_ref().1.peer_certificates())?;
        Ok((peer, stream.into()))
    }

    /// The handshake as the side that dialed.
    pub(crate) async fn connect<C>(self, socket: C) -> Result<(PeerId, TlsStream<C>), TlsError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        // The spec: no server name indication (an unspecified address sends none).
        let name = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
        let stream = futures_rustls::TlsConnector::from(self.client)
            .connect(name, ReadAhead::new(socket))
            .await
            .map_err(TlsError::Handshake)?;
        let peer = peer_of(stream.get_ref().1.peer_certificates())?;
        Ok((peer, stream.into()))
    }
}

/// This node's certificate, presented as client and as server.
#[derive(Debug)]
struct OwnCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for OwnCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for OwnCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The peer id in the one certificate the handshake verified.
fn peer_of(certs: Option<&[CertificateDer<'_>]>) -> Result<PeerId, TlsError> {
    match certs {
        Some([cert]) => certificate::parse(cert)
            .map(|c| c.peer_id())
            .map_err(|_| TlsError::BadCertificate),
        _ => Err(TlsError::BadCertificate),
    }
}

/// Accepts exactly one self-signed libp2p certificate, and handshake signatures made by its
/// key. Which peer id is acceptable is the swarm's check (a dial to `/p2p/<id>` refuses any
/// other), as with `libp2p-tls`.
#[derive(Debug)]
struct Verifier;

fn check_chain(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> bool {
    intermediates.is_empty() && certificate::parse(end_entity).is_ok()
}

fn check_signature(
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    message: &[u8],
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let cert = certificate::parse(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    cert.verify_signature(dss.scheme, message, dss.signature())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

/// Only TLS 1.3 is enabled; a TLS 1.2 signature is refused rather than assumed unreachable.
fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

/// Signature schemes a libp2p certificate key may use.
fn schemes() -> Vec<SignatureScheme> {
    vec![
        SignatureScheme::ECDSA_NISTP384_SHA384,
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::ED25519,
        SignatureScheme::RSA_PSS_SHA512,
        SignatureScheme::RSA_PSS_SHA384,
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PKCS1_SHA512,
        SignatureScheme::RSA_PKCS1_SHA384,
        SignatureScheme::RSA_PKCS1_SHA256,
    ]
}

const NOT_LIBP2P: rustls::Error =
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure);

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !check_chain(end_entity, intermediates) {
            return Err(NOT_LIBP2P);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature(cert, dss, message)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !check_chain(end_entity, intermediates) {
            return Err(NOT_LIBP2P);
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature(cert, dss, message)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

#[cfg(test)]
mod tests {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    use super::*;

    fn suite<C>(s: &TlsStream<C>) -> Option<rustls::CipherSuite> {
        let conn: &rustls::CommonState = match s {
            futures_rustls::TlsStream::Client(c) => c.get_ref().1,
            futures_rustls::TlsStream::Server(c) => c.get_ref().1,
        };
        conn.negotiated_cipher_suite().map(|s| s.suite())
    }

    #[tokio::test]
    async fn agora_to_agora_settles_on_aes_gcm_and_carries_bytes() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (x, y) = tokio::io::duplex(1 << 16);
        let server = Config::new(&a).unwrap().accept(x.compat());
        let client = Config::new(&b).unwrap().connect(y.compat());
        let ((peer_b, mut s), (peer_a, mut c)) = futures::try_join!(server, client).unwrap();
        assert_eq!(peer_b, b.public().to_peer_id());
        assert_eq!(peer_a, a.public().to_peer_id());
        assert_eq!(
            suite(&s),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        assert_eq!(
            suite(&c),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let send = async {
            c.write_all(&data).await.unwrap();
            c.close().await.unwrap();
        };
        let recv = async {
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = futures::join!(send, recv);
        assert!(got == data);
    }

    /// Agora's side against `libp2p-tls`'s own, both ways: the handshake works, each learns
    /// the other's peer id, and Agora's AES preference holds even when the stock side
    /// (ChaCha20 first) is the client.
    #[tokio::test]
    async fn interoperates_with_libp2p_tls_both_ways() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let stock = libp2p::tls::Config::new(&b).unwrap();

        let (x, y) = tokio::io::duplex(1 << 16);
        let ours = Config::new(&a).unwrap().accept(x.compat());
        let theirs = stock.clone().upgrade_outbound(y.compat(), "/tls/1.0.0");
        let ((peer_b, s), (peer_a, _)) = futures::try_join!(ours, async {
            theirs
                .await
                .map_err(|e| TlsError::Certificate(e.to_string()))
        })
        .unwrap();
        assert_eq!(
            (peer_b, peer_a),
            (b.public().to_peer_id(), a.public().to_peer_id())
        );
        assert_eq!(
            suite(&s),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );

        let (x, y) = tokio::io::duplex(1 << 16);
        let ours = Config::new(&a).unwrap().connect(x.compat());
        let theirs = stock.upgrade_inbound(y.compat(), "/tls/1.0.0");
        let ((peer_b, c), (peer_a, _)) = futures::try_join!(ours, async {
            theirs
                .await
                .map_err(|e| TlsError::Certificate(e.to_string()))
        })
        .unwrap();
        assert_eq!(
            (peer_b, peer_a),
            (b.public().to_peer_id(), a.public().to_peer_id())
        );
        assert_eq!(
            suite(&c),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }

    /// A peer presenting an ordinary (non-libp2p) self-signed certificate is refused.
    #[tokio::test]
    async fn a_certificate_without_the_libp2p_extension_is_refused() {
        let a = Keypair::generate_ed25519();
        let plain = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = plain.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::from(
            rustls::pki_types::PrivatePkcs8KeyDer::from(plain.key_pair.serialize_der()),
        );
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier))
            .with_client_auth_cert(vec![cert], key)
            .unwrap();
        client.alpn_protocols = vec![ALPN.to_vec()];
        let (x, y) = tokio::io::duplex(1 << 16);
        let server = Config::new(&a).unwrap().accept(x.compat());
        let name = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
        let client = futures_rustls::TlsConnector::from(Arc::new(client)).connect(name, y.compat());
        let (server, _) = futures::join!(server, client);
        assert!(server.is_err(), "a non-libp2p certificate was accepted");
    }
}
