//! Connection security for TCP and relayed connections: TLS 1.3 (`/tls/1.0.0`) first, Noise
//! (`/noise`) second.
//!
//! multistream-select settles on the first protocol both sides speak, so two Agora nodes (and
//! rust or go libp2p peers) use TLS, with AES-GCM (see [`crate::tls`]), which this class of CPU
//! runs in hardware, while js-libp2p peers, which speak only Noise (ChaCha20-Poly1305), still
//! connect. [`Security::NoiseOnly`] offers Noise
//! alone, for benchmarks and for an operator who wants it.
//!
//! The upgrade records which protocol each peer's newest connection negotiated in a
//! [`Negotiated`] log; the event loop reads it when the connection is established, so
//! `agora peers` can show the security of every connection. (libp2p hides the security stream
//! inside the muxer once the connection is up, so the label is taken at the upgrade.)

use std::{
    collections::HashMap,
    iter,
    sync::{Arc, Mutex},
};

use futures::{
    AsyncRead, AsyncWrite, FutureExt, TryFutureExt,
    future::{BoxFuture, Either},
};
use libp2p::{
    PeerId,
    core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
    identity::Keypair,
    noise,
};

use crate::tls;

/// Which security protocols a node offers on TCP and relayed connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Security {
    /// TLS 1.3 preferred, Noise accepted.
    #[default]
    TlsNoise,
    /// Noise only (ChaCha20-Poly1305).
    NoiseOnly,
}

impl std::str::FromStr for Security {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tls-noise" | "tls" => Ok(Self::TlsNoise),
            "noise-only" | "noise" => Ok(Self::NoiseOnly),
            other => Err(format!(
                "unknown security {other:?}: expected tls-noise (TLS first, Noise second) or noise-only"
            )),
        }
    }
}

impl std::fmt::Display for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TlsNoise => "tls-noise",
            Self::NoiseOnly => "noise-only",
        })
    }
}

const TLS: &str = "/tls/1.0.0";
const NOISE: &str = "/noise";

/// The protocol each peer's newest authenticated connection negotiated (`tls` or `noise`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Negotiated(Arc<Mutex<HashMap<PeerId, &'static str>>>);

impl Negotiated {
    fn record(&self, peer: PeerId, label: &'static str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, label);
    }

    /// Takes the label of `peer`'s newest connection.
    pub(crate) fn take(&self, peer: &PeerId) -> Option<&'static str> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer)
    }
}

/// The security upgrade: TLS (unless [`Security::NoiseOnly`]) and Noise, in that order.
#[derive(Clone)]
pub(crate) struct Upgrade {
    tls: Option<tls::Config>,
    noise: noise::Config,
    log: Negotiated,
}

impl Upgrade {
    pub(crate) fn new(
        key: &Keypair,
        security: Security,
        log: Negotiated,
    ) -> Result<Self, SecurityError> {
        let tls = match security {
            Security::TlsNoise => Some(tls::Config::new(key)?),
            Security::NoiseOnly => None,
        };
        let noise = noise::Config::new(key).map_err(|e| SecurityError::Setup(e.to_string()))?;
        Ok(Self { tls, noise, log })
    }
}

/// A failed security handshake.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("Noise: {0}")]
    Noise(#[from] noise::Error),
    #[error("cannot set up transport security: {0}")]
    Setup(String),
    #[error("TLS was negotiated but is not offered")]
    NotOffered,
}

impl UpgradeInfo for Upgrade {
    type Info = &'static str;
    type InfoIter = std::iter::Chain<std::option::IntoIter<&'static str>, iter::Once<&'static str>>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.tls
            .as_ref()
            .map(|_| TLS)
            .into_iter()
            .chain(iter::once(NOISE))
    }
}

/// The secured stream: TLS or Noise.
pub(crate) type Secured<C> = Either<tls::TlsStream<C>, noise::Output<C>>;

type Handshake<C> = BoxFuture<'static, Result<(PeerId, Secured<C>), SecurityError>>;

impl Upgrade {
    fn run<C>(self, socket: C, info: &'static str, inbound: bool) -> Handshake<C>
    where
        C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let log = self.log.clone();
        let done = move |(peer, stream): (PeerId, Secured<C>)| {
            log.record(
                peer,
                match stream {
                    Either::Left(_) => "tls",
                    Either::Right(_) => "noise",
                },
            );
            (peer, stream)
        };
        if info == TLS {
            let Some(tls) = self.tls else {
                return futures::future::ready(Err(SecurityError::NotOffered)).boxed();
            };
            let handshake = async move {
                if inbound {
                    tls.accept(socket).await
                } else {
                    tls.connect(socket).await
                }
            };
            handshake
                .map_ok(|(peer, s)| (peer, Either::Left(s)))
                .err_into()
                .map_ok(done)
                .boxed()
        } else {
            let handshake = if inbound {
                self.noise.upgrade_inbound(socket, info)
            } else {
                self.noise.upgrade_outbound(socket, info)
            };
            handshake
                .map_ok(|(peer, s)| (peer, Either::Right(s)))
                .err_into()
                .map_ok(done)
                .boxed()
        }
    }
}

impl<C> InboundConnectionUpgrade<C> for Upgrade
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, Secured<C>);
    type Error = SecurityError;
    type Future = Handshake<C>;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.run(socket, info, true)
    }
}

impl<C> OutboundConnectionUpgrade<C> for Upgrade
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, Secured<C>);
    type Error = SecurityError;
    type Future = Handshake<C>;

    fn upgrade_outbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.run(socket, info, false)
    }
}
