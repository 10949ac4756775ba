//! Trust state of the messenger: the CRL in use (verified, installed, followed by long-poll
//! from the server and exchanged with peers) and whether it, and the policy bundle, are
//! current enough to take and send messages.

use super::*;

impl Messenger {
    /// Marks the CRL in use as confirmed current now (the file's time, at most once a
    /// minute, so that a restart knows).
    pub(super) fn confirm_crl(&self) {
        let at = self.now();
        let before = self.crl_confirmed.swap(at, Ordering::SeqCst);
        if let Some(state) = self.saved.get() {
            if at.saturating_sub(before) >= 60 {
                let touched = std::fs::File::options()
                    .append(true)
                    .open(state.file(CRL_FILE))
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                if let Err(e) = touched {
                    tracing::debug!(error = %e, "cannot mark the saved CRL as confirmed");
                }
            }
        }
    }

    /// Whether this sidecar may send and take messages now: it has a CRL, confirmed current
    /// within `--max-crl-age`, and before its nextUpdate, and its policy bundle was
    /// confirmed within `--max-policy-age`. The reason if not.
    pub fn trust_current(&self) -> Result<(), String> {
        let at = self.now();
        let crl = self
            .crl
            .read()
            .map_err(|_| "the CRL lock was poisoned".to_owned())?;
        let Some(crl) = crl.as_ref() else {
            return Err("no CRL has been verified yet".into());
        };
        if at >= crl.next_update() {
            return Err(format!(
                "CRL {} is past its nextUpdate and the server has not given a newer one",
                crl.number()
            ));
        }
        let confirmed = self.crl_confirmed.load(Ordering::SeqCst);
        let age = at.saturating_sub(confirmed);
        if u64::try_from(age).map_or(true, |a| a > self.max_crl_age.as_secs()) {
            return Err(format!(
                "CRL {} was last confirmed by the server {}s ago, more than the maximum age of {}s",
                crl.number(),
                age,
                self.max_crl_age.as_secs()
            ));
        }
        let confirmed = self.policy_confirmed.load(Ordering::SeqCst);
        if confirmed != i64::MIN {
            let age = at.saturating_sub(confirmed);
            if u64::try_from(age).map_or(true, |a| a > self.max_policy_age.as_secs()) {
                return Err(format!(
                    "the policy bundle was last confirmed by the server {}s ago, more than the maximum age of {}s",
                    age,
                    self.max_policy_age.as_secs()
                ));
            }
        }
        Ok(())
    }

    /// Fetches the current CRL and uses it if its signature checks out.
    pub async fn refresh_crl(&self) -> Result<u64, String> {
        let der = self.api.crl().await.map_err(|e| e.to_string())?;
        self.install_crl(&der)
    }

    /// Follows the CRL for as long as the process runs: long-polls the server for the next
    /// one (`GET /v1/crl?after=N&wait=25`) and uses each as soon as it is signed, retrying
    /// with backoff while the server cannot be reached.
    pub async fn follow_crl(&self) {
        const WAIT: Duration = Duration::from_secs(25);
        let mut delay = Duration::from_secs(1);
        loop {
            let known = self.crl_number().unwrap_or(0);
            match self.api.crl_after(known, WAIT).await {
                Ok(Some(der)) => {
                    delay = Duration::from_secs(1);
                    if let Err(e) = self.install_crl(&der) {
                        tracing::warn!(error = %e, "the server's CRL is not used");
                        tokio::time::sleep(delay).await;
                    }
                }
                Ok(None) => {
                    // The server says the CRL in use is still current.
                    self.confirm_crl();
                    delay = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot follow the CRL");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Verifies `der` as a CRL of this fleet's issuing CA and uses it unless it is older
    /// than the one in use; then forgets what it lists: cached peers (their keys), delivery
    /// connections to them, and their messages not yet read. Returns the number in use.
    pub fn install_crl(&self, der: &[u8]) -> Result<u64, String> {
        let issuing = crate::credentials::certificates(&self.own().identity.cert_pem)
            .into_iter()
            .nth(1)
            .ok_or("the device certificate file has no issuing CA")?;
        let crl = RevocationList::from_der(der, &issuing).map_err(|e| e.to_string())?;
        let number = crl.number();
        {
            let mut current = self
                .crl
                .write()
                .map_err(|_| "the CRL lock was poisoned".to_owned())?;
            let known = current.as_ref().map(RevocationList::number);
            if known.is_some_and(|k| k > number) {
                return Ok(known.unwrap_or(number));
            }
            *current = Some(crl.clone());
            if let Ok(mut kept) = self.crl_der.write() {
                *kept = der.to_vec();
            }
            if known == Some(number) {
                // The same list, fetched again: nothing changed, and it is still current.
                drop(current);
                self.confirm_crl();
                return Ok(number);
            }
        }
        self.crl_confirmed.store(self.now(), Ordering::SeqCst);
        if let Some(state) = self.saved.get() {
            if let Err(e) = state.write(CRL_FILE, der) {
                tracing::warn!(error = %e, "cannot save the CRL");
            }
        }
        // Who is quarantined or released may have changed: ask the directory again.
        self.trust_changes.fetch_add(1, Ordering::SeqCst);
        let dropped = self
            .peers
            .forget_where(|p| crl.lists(&p.device.serial) || crl.lists(&p.key_agreement.serial));
        if let Ok(mut clients) = self.clients.lock() {
            for peer in &dropped {
                clients.remove(&peer.device.spiffe_id);
            }
        }
        let closed = self.live.close_where(|serial| crl.lists(serial));
        let refused = self
            .inbox
            .lock()
            .map(|mut inbox| {
                let before = inbox.len();
                inbox.retain(|w| !crl.lists(&hex::decode(&w.sender_serial).unwrap_or_default()));
                let refused = before - inbox.len();
                if refused > 0 {
                    self.save_inbox(&inbox);
                }
                refused
            })
            .unwrap_or(0);
        tracing::info!(
            crl_number = number,
            peers_dropped = dropped.len(),
            connections_closed = closed,
            queued_messages_refused = refused,
            "CRL in use"
        );
        Ok(number)
    }

    /// Evens out CRLs with the peer at `endpoint` that uses CRL `theirs`: fetches its CRL
    /// if newer than this sidecar's, hands it this sidecar's if older. So an island of
    /// sidecars cut off from the server converges on the newest CRL any of them has seen.
    pub(super) async fn exchange_crl(
        &self,
        client: &reqwest::Client,
        endpoint: &str,
        theirs: Option<u64>,
    ) {
        let Some(theirs) = theirs else { return };
        let mine = self.crl_number();
        if mine.is_none_or(|m| theirs > m) {
            match deliver::fetch_crl(client, endpoint).await {
                Ok(der) => match self.install_crl(&der) {
                    Ok(n) => {
                        tracing::info!(crl_number = n, %endpoint, "took a newer CRL from a peer")
                    }
                    Err(e) => tracing::warn!(error = %e, %endpoint, "a peer's CRL is not used"),
                },
                Err(e) => tracing::debug!(error = %e, %endpoint, "cannot fetch a peer's CRL"),
            }
        } else if mine.is_some_and(|m| theirs < m) {
            let der = self.crl_der.read().map(|d| d.clone()).unwrap_or_default();
            match deliver::offer_crl(client, endpoint, der).await {
                Ok(()) => {
                    tracing::info!(crl_number = ?mine, %endpoint, "handed a peer the newer CRL")
                }
                Err(e) => tracing::debug!(error = %e, %endpoint, "a peer did not take the CRL"),
            }
        }
    }

    /// Peers' open delivery connections (see [`deliver::serve_tracked`]): closed when a new
    /// CRL lists them.
    pub fn live_connections(&self) -> Arc<deliver::LiveConnections> {
        Arc::clone(&self.live)
    }

    /// What the delivery listener shares with peers: the CRL in use, and taking a newer one.
    pub fn relay(self: &Arc<Self>) -> deliver::CrlRelay {
        let (numbered, current, offered) = (Arc::clone(self), Arc::clone(self), Arc::clone(self));
        deliver::CrlRelay {
            number: Arc::new(move || numbered.crl_number()),
            current: Arc::new(move || {
                let number = current.crl_number()?;
                let der = current.crl_der.read().ok()?.clone();
                (!der.is_empty()).then_some((number, der))
            }),
            offer: Arc::new(move |der| {
                let before = offered.crl_number();
                let number = offered.install_crl(der)?;
                if before.is_none_or(|b| number > b) {
                    tracing::info!(crl_number = number, "a peer handed over a newer CRL");
                }
                Ok(number)
            }),
        }
    }
}
