//! Receiving: every check of an incoming envelope in its fixed order (ingress policy with
//! the directory's facts of both devices), the message kept for the workload before its
//! receipt is signed, and the counts of what arrived and what was refused.

use super::*;

impl Messenger {
    /// Who an envelope claims to be from, if its certificate chains to this fleet: used only
    /// to fetch the sender's facts before the checks (which verify everything again).
    fn claimed_sender(&self, parsed: &ParsedEnvelope, at: i64) -> Option<VerifiedDevice> {
        let x5t = *parsed.header().sender_certificate_sha256();
        let der = match parsed.certificates().first() {
            Some(der) => der.clone(),
            None => self.known.lock().ok()?.get(&x5t).cloned()?,
        };
        self.anchors.verify_device(&der, at).ok()
    }

    /// Checks an incoming envelope that arrived by `transport` and queues it for the
    /// workload; the message id and a receipt signed for the sender, or the refusal.
    pub async fn accept(&self, bytes: &[u8], transport: &Transport) -> Result<Accepted, Refused> {
        let result = self.accept_counted(bytes, transport).await;
        self.count_arrival(&result, transport);
        result
    }

    /// Counts a message that arrived by `transport`: received, or refused for its reason.
    pub fn count_arrival<T>(&self, result: &Result<T, Refused>, transport: &Transport) {
        match result {
            Ok(_) => self.counters.received(&transport.protocol),
            Err((reason, _)) => self.counters.refused("receiver", reason),
        }
    }

    async fn accept_counted(
        &self,
        bytes: &[u8],
        transport: &Transport,
    ) -> Result<Accepted, Refused> {
        if self.inbox.lock().map(|q| q.len()).unwrap_or(MAX_INBOX) >= MAX_INBOX {
            return Err((
                "inbox_full",
                "the workload has not read its messages".into(),
            ));
        }
        let (delivered, accepted) = self.open(bytes, transport).await?;
        let waiting = Waiting::from(delivered);
        {
            let mut inbox = self
                .inbox
                .lock()
                .map_err(|_| ("lock_poisoned", "a lock was poisoned".to_owned()))?;
            // Kept on disk before the receipt leaves: a receipted message survives a restart.
            if let Some(state) = self.saved.get() {
                let mut kept = self
                    .kept
                    .lock()
                    .map_err(|_| ("lock_poisoned", "a lock was poisoned".to_owned()))?;
                kept.append(&state.file(INBOX_FILE), &waiting)
                    .map_err(|e| {
                        tracing::error!(error = %e, "cannot keep a message for the workload");
                        ("storage", format!("the message cannot be kept: {e}"))
                    })?;
            }
            inbox.push_back(waiting);
        }
        self.arrived.notify_waiters();
        Ok(accepted)
    }

    /// Checks an incoming envelope that arrived by `transport` (every check, ingress policy
    /// included, and the replay window advanced) and returns the message and a receipt
    /// signed for the sender, or the refusal.
    pub async fn open(
        &self,
        bytes: &[u8],
        transport: &Transport,
    ) -> Result<(Delivered, Accepted), Refused> {
        let refused = |reason: &'static str, detail: &str| (reason, detail.to_owned());
        self.trust_current()
            .map_err(|why| refused("stale_trust", &why))?;
        let own = self.own();
        let at = self.now();
        // The facts policy needs, fetched before the (synchronous) checks.
        // Parsed once: the claimed sender is read from it, then every check runs on it.
        let parsed = crate::messaging::receive::parse(bytes, &self.limits);
        let claimed = parsed
            .as_ref()
            .ok()
            .and_then(|parsed| self.claimed_sender(parsed, at));
        let (sender_peer, me_peer) = match claimed {
            Some(claimed) => (
                self.peer(&claimed.device_id).await.ok(),
                self.peer(&own.device_id).await.ok(),
            ),
            None => (None, None),
        };
        let policy = |sender: &VerifiedDevice, data_type: &str, size: usize| {
            let (Some(from), Some(me)) = (&sender_peer, &me_peer) else {
                return Err(
                    "the peer directory gave no standing for the sender or this device: refused"
                        .into(),
                );
            };
            if from.device.device_id != sender.device_id {
                return Err("the sender is not the device whose standing was fetched".into());
            }
            let context = MessageContext {
                data_type: data_type.to_owned(),
                protocol: transport.protocol.clone(),
                tls: transport.tls,
                mtls: transport.mtls,
                size: i64::try_from(size).unwrap_or(i64::MAX),
            };
            let verdict = self.decider.decide(
                Party {
                    device_id: &sender.device_id,
                    facts: &from.facts,
                },
                Party {
                    device_id: &own.device_id,
                    facts: &me.facts,
                },
                &context,
            );
            // As at egress: a denial at `info`, an allowed message at `debug`.
            if verdict.allowed {
                tracing::debug!(from = %sender.device_id, data_type, protocol = %transport.protocol,
                    allowed = true, policies = ?verdict.policies, version = %verdict.version,
                    "ingress decision");
            } else {
                tracing::info!(from = %sender.device_id, data_type, protocol = %transport.protocol,
                    allowed = false, policies = ?verdict.policies, version = %verdict.version,
                    "ingress decision");
            }
            self.spool_decision(
                DecisionSide::Receiver,
                &sender.device_id,
                &own.device_id,
                &context,
                &verdict,
            )
            .map_err(|e| e.to_string())?;
            if verdict.allowed {
                Ok(())
            } else {
                Err(verdict.describe())
            }
        };
        let delivered = {
            let crl = self
                .crl
                .read()
                .map_err(|_| refused("lock_poisoned", "a lock was poisoned"))?;
            let known = |hash: &[u8; 32]| self.known.lock().ok().and_then(|k| k.get(hash).cloned());
            let receiver = Receiver {
                anchors: &self.anchors,
                crl: crl.as_ref(),
                me: &own.spiffe_id,
                my_key: &own.my_key,
                cache: &self.cache,
                known: &known,
                limits: self.limits,
            };
            let mut replay = self
                .replay
                .lock()
                .map_err(|_| refused("lock_poisoned", "a lock was poisoned"))?;
            parsed.and_then(|parsed| receiver.receive_parsed(parsed, at, &mut replay, &policy))
        };
        let delivered = delivered.map_err(|e| {
            tracing::warn!(reason = e.reason(), error = %e, protocol = %transport.protocol, "message refused");
            (e.reason(), e.to_string())
        })?;
        tracing::debug!(from = %delivered.sender.device_id, data_type = %delivered.data_type,
            message_id = %delivered.message_id, "message accepted");
        let cti = hex::decode(&delivered.message_id).unwrap_or_default();
        let receipt = receipt::sign(
            &own.signer,
            &own.spiffe_id,
            &delivered.sender.spiffe_id,
            &cti,
            at,
        )
        .map_err(|e| refused("receipt", &e.to_string()))?;
        let accepted = Accepted {
            message_id: delivered.message_id.clone(),
            receipt,
        };
        Ok((delivered, accepted))
    }

    /// The receiving side of direct delivery ([`deliver::serve`]): each envelope through
    /// [`Self::accept`], answered with a receipt.
    pub fn inbound(self: &Arc<Self>) -> Inbound {
        let messenger = Arc::clone(self);
        Arc::new(move |bytes| {
            let messenger = Arc::clone(&messenger);
            Box::pin(async move {
                let accepted = messenger.accept(&bytes, &Transport::direct()).await?;
                Ok(Receipt {
                    message_id: accepted.message_id,
                    receipt: B64.encode(accepted.receipt),
                    crl_number: None,
                })
            })
        })
    }
}
