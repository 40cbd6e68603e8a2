//! RDMA behind the core's set-up seam ([`blitx_core::plane::DataPlane`]).
//!
//! Either side's set-up creates its QPs (a receiver also registers its ring,
//! a sender its pool) before it knows the peer, so a dialer is prepared while
//! the control plane negotiates. The offer and the answer are the same
//! message, [`PeerInfo`]: a sender's QPs, or a receiver's QPs and ring. A
//! receiver connects after (or shortly after) its sender: it credits its ring
//! at once.

use blitx_core::cancel::Cancel;
use blitx_core::plane::{DataPlane, Dialer, Listener};

use crate::config::{RdmaConfig, ReceiverInfo, SenderInfo};
use crate::domain::RdmaDomain;
use crate::receiver::{RdmaReceiver, ReceiverSetup};
use crate::sender::{RdmaSender, SenderSetup};
use blitx_verbs::{Error, Result};

/// RDMA configured for one session, in an open domain (the daemon's, kept
/// between sessions) or in one of its own.
#[derive(Debug, Clone, Copy)]
pub struct RdmaPlane<'a> {
    /// The session's configuration.
    pub cfg: &'a RdmaConfig,
    /// The domain to set up in (`None`: open the configured device now).
    pub domain: Option<&'a RdmaDomain>,
}

/// What one side of an RDMA set-up tells the other.
#[derive(Debug, Clone)]
pub enum PeerInfo {
    /// A sender's QPs.
    Sender(SenderInfo),
    /// A receiver's QPs and ring.
    Receiver(ReceiverInfo),
}

fn wrong_role(got: &str) -> Error {
    Error::InvalidRemote { reason: format!("the peer set up as a {got} too") }
}

/// Runs one step of a set-up unless `cancel` fired before it; a half made
/// while it fired is dropped (its drop aborts it: the peer gets the abort
/// notice) and the set-up reports [`Error::Cancelled`] too, so a cancelled
/// set-up never hands out a half and never looks like the peer's fault.
/// Connecting moves QPs through their states and does not block, so
/// checking on both sides of it is enough: no wait inside needs a waker.
fn unless_cancelled<H>(
    cancel: &Cancel,
    op: &'static str,
    step: impl FnOnce() -> Result<H>,
) -> Result<H> {
    if cancel.is_fired() {
        return Err(Error::Cancelled { op });
    }
    let half = step()?;
    if cancel.is_fired() {
        drop(half);
        return Err(Error::Cancelled { op });
    }
    Ok(half)
}

impl SenderSetup {
    fn join(self, peer: PeerInfo, cancel: &Cancel) -> Result<RdmaSender> {
        unless_cancelled(cancel, "set-up of the sender", || match peer {
            PeerInfo::Receiver(info) => self.connect(&info),
            PeerInfo::Sender(_) => Err(wrong_role("sender")),
        })
    }
}

impl ReceiverSetup {
    fn join(self, peer: PeerInfo, cancel: &Cancel) -> Result<RdmaReceiver> {
        unless_cancelled(cancel, "set-up of the receiver", || match peer {
            PeerInfo::Sender(info) => self.connect(&info),
            PeerInfo::Receiver(_) => Err(wrong_role("receiver")),
        })
    }
}

impl Listener for SenderSetup {
    type Half = RdmaSender;
    type Answer = PeerInfo;
    type Error = Error;
    fn accept(self, answer: PeerInfo, cancel: &Cancel) -> Result<RdmaSender> {
        self.join(answer, cancel)
    }
}

impl Dialer for SenderSetup {
    type Half = RdmaSender;
    type Offer = PeerInfo;
    type Error = Error;
    fn connect(self, offer: PeerInfo, cancel: &Cancel) -> Result<RdmaSender> {
        self.join(offer, cancel)
    }
}

impl Listener for ReceiverSetup {
    type Half = RdmaReceiver;
    type Answer = PeerInfo;
    type Error = Error;
    fn accept(self, answer: PeerInfo, cancel: &Cancel) -> Result<RdmaReceiver> {
        self.join(answer, cancel)
    }
}

impl Dialer for ReceiverSetup {
    type Half = RdmaReceiver;
    type Offer = PeerInfo;
    type Error = Error;
    fn connect(self, offer: PeerInfo, cancel: &Cancel) -> Result<RdmaReceiver> {
        self.join(offer, cancel)
    }
}

impl RdmaPlane<'_> {
    fn sender(&self) -> Result<(SenderSetup, PeerInfo)> {
        let (setup, info) = match self.domain {
            Some(d) => SenderSetup::in_domain(d, self.cfg)?,
            None => SenderSetup::new(self.cfg)?,
        };
        Ok((setup, PeerInfo::Sender(info)))
    }

    fn receiver(&self) -> Result<(ReceiverSetup, PeerInfo)> {
        let (setup, info) = match self.domain {
            Some(d) => ReceiverSetup::in_domain(d, self.cfg)?,
            None => ReceiverSetup::new(self.cfg)?,
        };
        Ok((setup, PeerInfo::Receiver(info)))
    }
}

impl DataPlane for RdmaPlane<'_> {
    type Sender = RdmaSender;
    type Receiver = RdmaReceiver;
    type Offer = PeerInfo;
    type Answer = PeerInfo;
    type Error = Error;
    type SendListener = SenderSetup;
    type ReceiveListener = ReceiverSetup;
    type SendDialer = SenderSetup;
    type ReceiveDialer = ReceiverSetup;

    fn listen_send(&self) -> Result<(SenderSetup, PeerInfo)> {
        self.sender()
    }
    fn listen_receive(&self) -> Result<(ReceiverSetup, PeerInfo)> {
        self.receiver()
    }
    fn dial_send(&self) -> Result<(SenderSetup, PeerInfo)> {
        self.sender()
    }
    fn dial_receive(&self) -> Result<(ReceiverSetup, PeerInfo)> {
        self.receiver()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_up_cancelled_before_it_connects_is_a_typed_cancel() {
        let cancel = Cancel::new();
        cancel.fire();
        let mut ran = false;
        let err = unless_cancelled(&cancel, "set-up of the sender", || {
            ran = true;
            Ok(())
        })
        .unwrap_err();
        assert!(!ran, "nothing is connected after the cancel");
        assert!(err.is_cancelled(), "{err:?}");
        assert!(!matches!(err, Error::InvalidRemote { .. }));
        assert!(!err.is_unavailable(), "a cancel is no reason to fall back to TCP");
    }

    #[test]
    fn a_set_up_cancelled_while_it_connects_drops_the_half() {
        struct Half(std::rc::Rc<std::cell::Cell<bool>>);
        impl Drop for Half {
            fn drop(&mut self) {
                self.0.set(true);
            }
        }
        let cancel = Cancel::new();
        let dropped = std::rc::Rc::new(std::cell::Cell::new(false));
        let err = unless_cancelled(&cancel, "set-up of the receiver", || {
            cancel.fire(); // the control plane gave up while the QPs were connecting
            Ok(Half(std::rc::Rc::clone(&dropped)))
        })
        .map(|_| ())
        .unwrap_err();
        assert!(matches!(err, Error::Cancelled { op: "set-up of the receiver" }), "{err:?}");
        assert!(dropped.get(), "the half was dropped (aborted), not handed out");
        // not cancelled: the step's own result
        let ok = unless_cancelled(&Cancel::new(), "set-up of the sender", || Ok(7));
        assert_eq!(ok.unwrap(), 7);
        let bad = unless_cancelled(&Cancel::new(), "set-up of the sender", || {
            Err::<(), _>(wrong_role("sender"))
        });
        assert!(matches!(bad, Err(Error::InvalidRemote { .. })));
    }
}
