//! Setting up a data plane: the half of the transport seam before frames move.
//!
//! This module owns the set-up contract every backend implements ([`DataPlane`], [`Listener`],
//! [`Dialer`]) and the in-process backend's implementation ([`MemPlane`]). It opens nothing
//! itself; the backends do (TCP sockets, RDMA queue pairs).
//!
//! # Shape of a set-up
//! One side *listens* and the other *dials*; either may send. The role is fixed by the method
//! called, and the half each returns has the role's own type ([`DataPlane::Sender`] or
//! [`DataPlane::Receiver`]): a role mismatch cannot be written. What crosses the control plane is
//! the backend's business: the listener's [`DataPlane::Offer`] (TCP: address, token, streams;
//! RDMA: its queue pairs and, for a receiver, its ring) and the dialer's [`DataPlane::Answer`]
//! (TCP: nothing; RDMA: its queue pairs).
//!
//! ```text
//!  listening side                                   dialing side
//!  listen_send/receive() ──► (Listener, Offer) ─Offer─► dial_receive/send() ──► (Dialer, Answer)
//!  Listener::accept(Answer) ◄──────────Answer──────── Dialer::connect(Offer)
//! ```
//!
//! Order: a dialer is made before it knows the offer (RDMA registers its memory while the
//! control plane negotiates); a receiver connects after (or shortly after) its sender, because an
//! RDMA receiver credits its ring at once. [`Listener::accept`] and [`Dialer::connect`] may
//! block (TCP waits for its streams until a deadline); both are woken by the [`Cancel`] they are
//! given.

use crate::cancel::Cancel;
use crate::pool::BufferPool;
use crate::transport::{
    FrameReceiver, FrameSender, MemFaults, MemReceiver, MemSender, PayloadPref, mem_pair,
};

/// One data-plane backend, configured for one session (chunk size, streams, buffers).
pub trait DataPlane {
    type Sender: FrameSender + 'static;
    type Receiver: FrameReceiver + 'static;
    /// What the listening side tells the dialing side.
    type Offer: Send + 'static;
    /// What the dialing side tells the listening side before either connects.
    type Answer: Send + 'static;
    type Error: std::error::Error + Send + Sync + 'static;
    type SendListener: Listener<Half = Self::Sender, Answer = Self::Answer, Error = Self::Error>;
    type ReceiveListener: Listener<Half = Self::Receiver, Answer = Self::Answer, Error = Self::Error>;
    type SendDialer: Dialer<Half = Self::Sender, Offer = Self::Offer, Error = Self::Error>;
    type ReceiveDialer: Dialer<Half = Self::Receiver, Offer = Self::Offer, Error = Self::Error>;

    /// Listens as the sending side.
    fn listen_send(&self) -> Result<(Self::SendListener, Self::Offer), Self::Error>;
    /// Listens as the receiving side.
    fn listen_receive(&self) -> Result<(Self::ReceiveListener, Self::Offer), Self::Error>;
    /// Prepares the sending side of a dial.
    fn dial_send(&self) -> Result<(Self::SendDialer, Self::Answer), Self::Error>;
    /// Prepares the receiving side of a dial.
    fn dial_receive(&self) -> Result<(Self::ReceiveDialer, Self::Answer), Self::Error>;
}

/// The listening side of a set-up, after its offer went out.
pub trait Listener {
    type Half;
    type Answer;
    type Error;
    /// Completes the set-up with the dialer's answer.
    fn accept(self, answer: Self::Answer, cancel: &Cancel) -> Result<Self::Half, Self::Error>;
}

/// The dialing side of a set-up, prepared before the offer arrived.
pub trait Dialer {
    type Half;
    type Offer;
    type Error;
    /// Connects to the listener's offer.
    fn connect(self, offer: Self::Offer, cancel: &Cancel) -> Result<Self::Half, Self::Error>;
}

/// Which half a set-up was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Send,
    Receive,
}

/// Set-up errors of the in-process backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemPlaneError {
    #[error("the offer was made for a dialer that {offered:?}s, not one that {wanted:?}s")]
    RoleMismatch { offered: Role, wanted: Role },
    #[error("the set-up was cancelled")]
    Cancelled,
}

/// The in-process backend: both halves in this process (a local copy, tests).
#[derive(Debug, Clone)]
pub struct MemPlane {
    pub pool: BufferPool,
    pub pref: PayloadPref,
    pub frame_bytes_max: u32,
    pub depth: usize,
    pub faults: MemFaults,
}

impl MemPlane {
    fn pair(&self) -> (MemSender, MemReceiver) {
        mem_pair(self.pool.clone(), self.pref, self.frame_bytes_max, self.depth, self.faults)
    }
}

/// The in-process offer: the dialer's half itself.
pub enum MemOffer {
    Sender(MemSender),
    Receiver(MemReceiver),
}

impl std::fmt::Debug for MemOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemOffer::Sender(_) => f.write_str("MemOffer::Sender"),
            MemOffer::Receiver(_) => f.write_str("MemOffer::Receiver"),
        }
    }
}

/// The listening half of an in-process set-up: already connected.
pub struct MemListener<H>(H);

/// The dialing half of an in-process set-up: takes its half out of the offer.
pub struct MemDialer<H>(std::marker::PhantomData<H>);

impl<H> Listener for MemListener<H> {
    type Half = H;
    type Answer = ();
    type Error = MemPlaneError;
    fn accept(self, (): (), cancel: &Cancel) -> Result<H, MemPlaneError> {
        if cancel.is_fired() {
            return Err(MemPlaneError::Cancelled);
        }
        Ok(self.0)
    }
}

impl Dialer for MemDialer<MemSender> {
    type Half = MemSender;
    type Offer = MemOffer;
    type Error = MemPlaneError;
    fn connect(self, offer: MemOffer, cancel: &Cancel) -> Result<MemSender, MemPlaneError> {
        if cancel.is_fired() {
            return Err(MemPlaneError::Cancelled);
        }
        match offer {
            MemOffer::Sender(s) => Ok(s),
            MemOffer::Receiver(_) => {
                Err(MemPlaneError::RoleMismatch { offered: Role::Receive, wanted: Role::Send })
            }
        }
    }
}

impl Dialer for MemDialer<MemReceiver> {
    type Half = MemReceiver;
    type Offer = MemOffer;
    type Error = MemPlaneError;
    fn connect(self, offer: MemOffer, cancel: &Cancel) -> Result<MemReceiver, MemPlaneError> {
        if cancel.is_fired() {
            return Err(MemPlaneError::Cancelled);
        }
        match offer {
            MemOffer::Receiver(r) => Ok(r),
            MemOffer::Sender(_) => {
                Err(MemPlaneError::RoleMismatch { offered: Role::Send, wanted: Role::Receive })
            }
        }
    }
}

impl DataPlane for MemPlane {
    type Sender = MemSender;
    type Receiver = MemReceiver;
    type Offer = MemOffer;
    type Answer = ();
    type Error = MemPlaneError;
    type SendListener = MemListener<MemSender>;
    type ReceiveListener = MemListener<MemReceiver>;
    type SendDialer = MemDialer<MemSender>;
    type ReceiveDialer = MemDialer<MemReceiver>;

    fn listen_send(&self) -> Result<(MemListener<MemSender>, MemOffer), MemPlaneError> {
        let (tx, rx) = self.pair();
        Ok((MemListener(tx), MemOffer::Receiver(rx)))
    }
    fn listen_receive(&self) -> Result<(MemListener<MemReceiver>, MemOffer), MemPlaneError> {
        let (tx, rx) = self.pair();
        Ok((MemListener(rx), MemOffer::Sender(tx)))
    }
    fn dial_send(&self) -> Result<(MemDialer<MemSender>, ()), MemPlaneError> {
        Ok((MemDialer(std::marker::PhantomData), ()))
    }
    fn dial_receive(&self) -> Result<(MemDialer<MemReceiver>, ()), MemPlaneError> {
        Ok((MemDialer(std::marker::PhantomData), ()))
    }
}
