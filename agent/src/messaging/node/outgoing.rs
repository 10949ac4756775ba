//! Sending: egress policy (and its rate limits) before sealing, sealing to the peer's
//! key-agreement certificate, delivery directly or through the broker, and the peer's
//! receipt checked.

use super::*;

impl Messenger {
    /// Decides whether this device may send `data_type` (`size` bytes) to `peer` over
    /// `transport`, and takes a token from any `@rate_limit` of the allowing policies.
    async fn egress(
        &self,
        own: &Own,
        peer: &Peer,
        data_type: &str,
        size: usize,
        transport: &Transport,
    ) -> Result<Verdict, MessagingError> {
        self.trust_current().map_err(MessagingError::StaleTrust)?;
        let me = self.peer(&own.device_id).await?;
        let context = MessageContext {
            data_type: data_type.to_owned(),
            protocol: transport.protocol.clone(),
            tls: transport.tls,
            mtls: transport.mtls,
            size: i64::try_from(size).unwrap_or(i64::MAX),
        };
        let to = &peer.device.device_id;
        let verdict = self.decider.decide(
            Party {
                device_id: &own.device_id,
                facts: &me.facts,
            },
            Party {
                device_id: to,
                facts: &peer.facts,
            },
            &context,
        );
        // Every decision is in the decision log; a denial is logged at `info`, an allowed
        // message at `debug` (a line per message would cost a write per message).
        if verdict.allowed {
            tracing::debug!(to = %to, data_type, protocol = %transport.protocol, allowed = true,
                policies = ?verdict.policies, version = %verdict.version, "egress decision");
        } else {
            tracing::info!(to = %to, data_type, protocol = %transport.protocol, allowed = false,
                policies = ?verdict.policies, version = %verdict.version, "egress decision");
        }
        self.spool_decision(DecisionSide::Sender, &own.device_id, to, &context, &verdict)
            .map_err(MessagingError::Spool)?;
        if !verdict.allowed {
            return Err(MessagingError::PolicyDenied(verdict));
        }
        self.rates
            .take(
                &verdict.annotations,
                to,
                self.started.elapsed().as_secs_f64(),
            )
            .map_err(|(retry_after, policy)| MessagingError::RateLimited {
                retry_after,
                policy,
            })?;
        Ok(verdict)
    }

    /// Seals `payload` to `peer` (after [`Self::egress`]); the envelope and its `cti`.
    fn seal_to(
        &self,
        own: &Own,
        peer: &Peer,
        data_type: &str,
        payload: &[u8],
    ) -> Result<(Vec<u8>, [u8; 16], u64), MessagingError> {
        let at = u64::try_from(self.now()).unwrap_or(0);
        // The receiver may not know this device yet: the certificates ride along.
        let sealed = own.outbox.seal(peer, data_type, payload, at, true)?;
        Ok((sealed.envelope, sealed.cti, sealed.seq))
    }

    /// Seals `payload` of `data_type` to device `to` for a workload that carries it over
    /// `protocol` itself: policy decides first. The envelope, its message id and the
    /// allowing policies.
    pub async fn seal(
        &self,
        to: &str,
        data_type: &str,
        payload: &[u8],
        protocol: &str,
    ) -> Result<(Vec<u8>, String, Verdict), MessagingError> {
        let own = self.own();
        let peer = self.peer(to).await?;
        let transport = Transport::carried(protocol);
        let verdict = self
            .egress(&own, &peer, data_type, payload.len(), &transport)
            .await?;
        let (envelope, cti, _) = self.seal_to(&own, &peer, data_type, payload)?;
        self.counters.sent("sealed");
        Ok((envelope, hex::encode(cti), verdict))
    }

    /// Seals `payload` of `data_type` to device `to` and sends it: directly (`https`) or
    /// through the broker (`mqtt`), as `protocol` asks or, without it, directly when the
    /// peer takes direct deliveries. Policy decides first, with the protocol in its context.
    pub async fn send(
        &self,
        to: &str,
        data_type: &str,
        payload: &[u8],
        protocol: Option<&str>,
    ) -> Result<Sent, MessagingError> {
        let result = match self.in_flight.acquire().await {
            Ok(_permit) => self.send_retried(to, data_type, payload, protocol).await,
            Err(_) => Err(MessagingError::NoEndpoint("the sidecar is stopping".into())),
        };
        match &result {
            Ok(sent) => self.counters.sent(sent.via),
            Err(e) => self.counters.refused("sender", e.reason()),
        }
        result
    }

    async fn send_retried(
        &self,
        to: &str,
        data_type: &str,
        payload: &[u8],
        protocol: Option<&str>,
    ) -> Result<Sent, MessagingError> {
        match self.send_once(to, data_type, payload, protocol).await {
            // The peer renewed since its directory answer was cached: sealed to a key it no
            // longer holds, so refused and not delivered. Ask the directory again, once.
            Err(MessagingError::Delivery(DeliveryError::Refused { detail, .. }))
                if detail.starts_with("decryption_failed") =>
            {
                tracing::info!(to, "the peer's keys changed; asking the directory again");
                self.peers.forget(to);
                self.send_once(to, data_type, payload, protocol).await
            }
            other => other,
        }
    }

    async fn send_once(
        &self,
        to: &str,
        data_type: &str,
        payload: &[u8],
        protocol: Option<&str>,
    ) -> Result<Sent, MessagingError> {
        let own = self.own();
        let peer = self.peer(to).await?;
        let https = peer.endpoints.iter().find(|e| e.starts_with("https://"));
        let mqtt = peer.endpoints.iter().find(|e| e.starts_with("mqtt://"));
        let (transport, endpoint) = match (protocol, https, mqtt) {
            (Some("https") | None, Some(url), _) => (Transport::direct(), url.clone()),
            (Some("mqtt") | None, _, Some(url)) => (Transport::mqtt(), url.clone()),
            (Some(p @ ("https" | "mqtt")), _, _) => {
                return Err(MessagingError::NoEndpoint(format!(
                    "the peer takes no `{p}` deliveries"
                )))
            }
            (Some(p), _, _) => {
                return Err(MessagingError::NoEndpoint(format!(
                    "`{}` is not a delivery protocol (`https` or `mqtt`)",
                    p.chars().take(32).collect::<String>()
                )))
            }
            (None, None, None) => {
                return Err(MessagingError::NoEndpoint(
                    "the peer advertises no delivery endpoint".into(),
                ))
            }
        };
        let Verdict {
            policies,
            version: policy_version,
            ..
        } = self
            .egress(&own, &peer, data_type, payload.len(), &transport)
            .await?;
        let direct = transport.protocol != "mqtt";
        if direct {
            // Keep every delivery to this peer inside its replay window (see `window`).
            self.window
                .wait_for_room(&peer.device.device_id, || own.outbox.next_sequence())
                .await;
        }
        let (envelope, cti, seq) = self.seal_to(&own, &peer, data_type, payload)?;
        let _in_flight = direct.then(|| self.window.hold(&peer.device.device_id, seq));
        let message_id = hex::encode(cti);
        if !direct {
            let broker = self.broker.get().ok_or_else(|| {
                MessagingError::NoEndpoint(
                    "the peer takes deliveries through MQTT, and this agent has no --mqtt broker"
                        .into(),
                )
            })?;
            broker
                .publish(&peer.device.device_id, envelope)
                .await
                .map_err(MessagingError::Broker)?;
            tracing::debug!(%endpoint, %message_id, "published");
            return Ok(Sent {
                message_id,
                via: "mqtt",
                receipt: None,
                policies,
                policy_version,
            });
        }
        let client = self.client_for(&own, &peer.device.spiffe_id)?;
        let answer = match deliver::deliver_with(&client, &endpoint, envelope).await {
            Ok(answer) => {
                self.exchange_crl(&client, &endpoint, answer.crl_number)
                    .await;
                answer
            }
            Err(e) => {
                if let DeliveryError::Refused { crl_number, .. } = &e {
                    self.exchange_crl(&client, &endpoint, *crl_number).await;
                }
                return Err(e.into());
            }
        };
        let receipt = B64.decode(&answer.receipt).map_err(|_| {
            MessagingError::BadReceipt(ReceiptError::Malformed("not base64".into()))
        })?;
        let checked = receipt::verify(
            &receipt,
            &peer.device.spiffe_id,
            &peer.device.public_key,
            &own.spiffe_id,
            &cti,
        );
        if checked == Err(ReceiptError::BadSignature) {
            // Signed with a key the cached answer does not know (the peer renewed): check it
            // against the directory's current answer (the message is delivered; it is not
            // sent again).
            self.peers.forget(to);
            let current = self.peer(to).await?;
            receipt::verify(
                &receipt,
                &current.device.spiffe_id,
                &current.device.public_key,
                &own.spiffe_id,
                &cti,
            )
            .map_err(MessagingError::BadReceipt)?;
        } else {
            checked.map_err(MessagingError::BadReceipt)?;
        }
        if answer.message_id != message_id {
            return Err(MessagingError::BadReceipt(ReceiptError::Mismatch(
                "about another message",
            )));
        }
        Ok(Sent {
            message_id,
            via: "https",
            receipt: Some(receipt),
            policies,
            policy_version,
        })
    }

    /// The delivery client for the peer `spiffe_id`, made once (bounded: when full, all are
    /// dropped and made again as needed).
    fn client_for(&self, own: &Own, spiffe_id: &str) -> Result<reqwest::Client, DeliveryError> {
        if let Some(client) = self
            .clients
            .lock()
            .ok()
            .and_then(|c| c.get(spiffe_id).cloned())
        {
            return Ok(client);
        }
        let tls = deliver::client_config(
            &own.identity.cert_pem,
            &own.identity.key_pem,
            &self.anchors,
            spiffe_id,
        )?;
        let client = deliver::client(tls)?;
        if let Ok(mut clients) = self.clients.lock() {
            if clients.len() >= 1024 {
                clients.clear();
            }
            clients.insert(spiffe_id.to_owned(), client.clone());
        }
        Ok(client)
    }
}
