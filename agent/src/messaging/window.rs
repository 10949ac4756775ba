//! The sender's side of the receivers' replay windows. A receiver remembers the
//! [`WINDOW`](super::replay::WINDOW) sequence numbers below the highest it accepted from a
//! sender session and refuses anything older. A bound on the sends in flight alone does not
//! keep a slow delivery inside that window: while one message is held up (a busy receiver, a
//! lost packet), the other slots go on completing and sealing newer ones. So the sender
//! tracks, per peer, the direct deliveries still on their way, and seals a new message only
//! while the oldest of them is less than [`ROOM`] behind the next sequence number. With at
//! most [`MAX_SENDS_IN_FLIGHT`](super::node::MAX_SENDS_IN_FLIGHT) sealers passing that check
//! at once, a message is never more than `ROOM + MAX_SENDS_IN_FLIGHT` (48) behind the
//! highest its receiver can have seen, inside the window of 64. A slow peer holds up the
//! sends to itself (and the others only once waiting sends to it fill every send slot).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// How far the next sequence number may run ahead of the oldest delivery in flight to a peer.
pub const ROOM: u64 = super::replay::WINDOW / 4;

// The bound above holds only if the window covers both terms.
const _: () = assert!(ROOM + super::node::MAX_SENDS_IN_FLIGHT as u64 <= super::replay::WINDOW);

/// Direct deliveries in flight, per peer, by sequence number.
#[derive(Debug, Default)]
pub struct SendWindow {
    outstanding: Mutex<HashMap<String, BTreeSet<u64>>>,
    freed: tokio::sync::Notify,
}

impl SendWindow {
    /// Whether a message to `peer` may be sealed with sequence number `next`.
    pub fn has_room(&self, peer: &str, next: u64) -> bool {
        let Ok(outstanding) = self.outstanding.lock() else {
            return true;
        };
        outstanding
            .get(peer)
            .and_then(BTreeSet::first)
            .is_none_or(|oldest| next.saturating_sub(*oldest) < ROOM)
    }

    /// Waits until a message to `peer` may be sealed; `next` reads the sequence number it
    /// would get.
    pub async fn wait_for_room(&self, peer: &str, next: impl Fn() -> u64) {
        loop {
            // Registered before the check, so a delivery that ends in between wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.has_room(peer, next()) {
                return;
            }
            freed.await;
        }
    }

    /// Records `seq` as on its way to `peer` until the guard is dropped (the delivery
    /// answered, failed or abandoned).
    pub fn hold(&self, peer: &str, seq: u64) -> InFlight<'_> {
        if let Ok(mut outstanding) = self.outstanding.lock() {
            outstanding.entry(peer.to_owned()).or_default().insert(seq);
        }
        InFlight {
            window: self,
            peer: peer.to_owned(),
            seq,
        }
    }
}

/// A delivery on its way (see [`SendWindow::hold`]).
#[derive(Debug)]
pub struct InFlight<'a> {
    window: &'a SendWindow,
    peer: String,
    seq: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut outstanding) = self.window.outstanding.lock() {
            if let Some(set) = outstanding.get_mut(&self.peer) {
                set.remove(&self.seq);
                if set.is_empty() {
                    outstanding.remove(&self.peer);
                }
            }
        }
        self.window.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_slow_delivery_holds_back_only_its_own_peer() {
        let window = SendWindow::default();
        let held = window.hold("slow", 100);
        assert!(window.has_room("slow", 100 + ROOM - 1));
        assert!(!window.has_room("slow", 100 + ROOM));
        assert!(window.has_room("other", 10_000), "other peers go on");
        drop(held);
        assert!(window.has_room("slow", 10_000));
    }

    #[tokio::test]
    async fn a_waiting_sender_goes_on_when_the_oldest_delivery_ends() {
        let window = Arc::new(SendWindow::default());
        let oldest = window.hold("peer", 1);
        let _newer = window.hold("peer", 5);
        let waiting = {
            let window = window.clone();
            tokio::spawn(async move { window.wait_for_room("peer", || 1 + ROOM).await })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "no room while sequence 1 is on its way"
        );
        drop(oldest);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when the oldest delivery ended")
            .unwrap();
    }
}
