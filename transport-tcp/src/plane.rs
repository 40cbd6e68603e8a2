//! TCP behind the core's set-up seam ([`blitx_core::plane::DataPlane`]).
//!
//! The listening side binds an ephemeral port and makes a one-time token (its offer); the
//! dialing side needs nothing before the offer (its answer is `()`), then connects the
//! offered number of streams. Which side sends is the method called; either can.

use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use blitx_core::cancel::Cancel;
use blitx_core::plane::{DataPlane, Dialer, Listener};

use crate::config::TcpConfig;
use crate::error::SetupError;
use crate::setup::{DataListener, connect_streams};
use crate::token::SessionToken;
use crate::{TcpReceiver, TcpSender};

/// TCP configured for one session.
#[derive(Debug, Clone)]
pub struct TcpPlane {
    pub config: TcpConfig,
    /// Where the listening side binds (the daemon's control address).
    pub bind_ip: IpAddr,
    /// How long a listener waits for every stream, and a dialer for each connection.
    pub connect_timeout: Duration,
}

/// What the listening side tells the dialing side.
#[derive(Debug, Clone)]
pub struct TcpOffer {
    pub addr: SocketAddr,
    pub token: SessionToken,
    pub streams: u32,
}

/// A half made from a session's connected streams.
pub trait FromStreams: Sized {
    fn from_streams(streams: Vec<TcpStream>, config: &TcpConfig) -> Result<Self, SetupError>;
}

impl FromStreams for TcpSender {
    fn from_streams(streams: Vec<TcpStream>, config: &TcpConfig) -> Result<Self, SetupError> {
        TcpSender::new(streams, config)
    }
}

impl FromStreams for TcpReceiver {
    fn from_streams(streams: Vec<TcpStream>, config: &TcpConfig) -> Result<Self, SetupError> {
        TcpReceiver::new(streams, config)
    }
}

/// The listening side, its offer sent.
#[derive(Debug)]
pub struct TcpListening<H> {
    listener: DataListener,
    token: SessionToken,
    config: TcpConfig,
    timeout: Duration,
    half: PhantomData<fn() -> H>,
}

/// The dialing side, waiting for the offer.
#[derive(Debug)]
pub struct TcpDialing<H> {
    config: TcpConfig,
    timeout: Duration,
    half: PhantomData<fn() -> H>,
}

impl<H: FromStreams> Listener for TcpListening<H> {
    type Half = H;
    type Answer = ();
    type Error = SetupError;
    fn accept(self, (): (), cancel: &Cancel) -> Result<H, SetupError> {
        let deadline = Instant::now() + self.timeout;
        let streams = self.listener.accept_streams_or_cancel(
            &self.token,
            self.config.streams,
            deadline,
            cancel,
        )?;
        H::from_streams(streams, &self.config)
    }
}

impl<H: FromStreams> Dialer for TcpDialing<H> {
    type Half = H;
    type Offer = TcpOffer;
    type Error = SetupError;
    /// Connects the offered streams (each bounded by the timeout; `cancel` is checked before).
    fn connect(self, offer: TcpOffer, cancel: &Cancel) -> Result<H, SetupError> {
        if cancel.is_fired() {
            return Err(SetupError::Cancelled { addr: offer.addr });
        }
        let config = TcpConfig { streams: offer.streams, ..self.config };
        let streams =
            connect_streams(offer.addr, &offer.token, offer.streams, self.timeout, &config)?;
        H::from_streams(streams, &config)
    }
}

impl TcpPlane {
    fn listen<H>(&self) -> Result<(TcpListening<H>, TcpOffer), SetupError> {
        self.config.validate()?;
        let token = SessionToken::random()?;
        let listener = DataListener::bind(self.bind_ip, &self.config)?;
        let offer = TcpOffer {
            addr: listener.local_addr(),
            token: token.clone(),
            streams: self.config.streams,
        };
        let timeout = self.connect_timeout;
        let config = self.config.clone();
        Ok((TcpListening { listener, token, config, timeout, half: PhantomData }, offer))
    }

    fn dial<H>(&self) -> TcpDialing<H> {
        TcpDialing { config: self.config.clone(), timeout: self.connect_timeout, half: PhantomData }
    }
}

impl DataPlane for TcpPlane {
    type Sender = TcpSender;
    type Receiver = TcpReceiver;
    type Offer = TcpOffer;
    type Answer = ();
    type Error = SetupError;
    type SendListener = TcpListening<TcpSender>;
    type ReceiveListener = TcpListening<TcpReceiver>;
    type SendDialer = TcpDialing<TcpSender>;
    type ReceiveDialer = TcpDialing<TcpReceiver>;

    fn listen_send(&self) -> Result<(TcpListening<TcpSender>, TcpOffer), SetupError> {
        self.listen()
    }
    fn listen_receive(&self) -> Result<(TcpListening<TcpReceiver>, TcpOffer), SetupError> {
        self.listen()
    }
    fn dial_send(&self) -> Result<(TcpDialing<TcpSender>, ()), SetupError> {
        Ok((self.dial(), ()))
    }
    fn dial_receive(&self) -> Result<(TcpDialing<TcpReceiver>, ()), SetupError> {
        Ok((self.dial(), ()))
    }
}
