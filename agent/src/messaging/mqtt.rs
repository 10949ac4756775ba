//! Delivery through an MQTT broker, because sensors speak MQTT: each device subscribes to its
//! own topic, `vouch/<trust domain>/<device id>`, and senders publish sealed envelopes there
//! (QoS 1). The broker is only a carrier: the envelope is signed and encrypted end to end,
//! and the duplicates at-least-once delivery makes are dropped by the receiver's replay
//! check. `rumqttc` keeps the connection (reconnecting on its own while the event loop is
//! polled).

use super::node::{Messenger, Transport};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::sync::Arc;
use std::time::Duration;

/// Largest MQTT packet read or written (an envelope with its certificates and a payload at
/// the workload API's limit).
pub const MAX_PACKET_BYTES: usize = 1024 * 1024;

/// Most messages from the broker checked at once.
const MAX_CONCURRENT_CHECKS: usize = 64;

/// The topic device `device_id` of `trust_domain` takes messages on.
pub fn topic(trust_domain: &str, device_id: &str) -> String {
    format!("vouch/{trust_domain}/{device_id}")
}

/// Where the broker is, from an `mqtt://HOST:PORT` URL.
pub fn broker_address(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .ok_or_else(|| format!("`{url}` is not an mqtt:// URL (mqtts:// is not supported yet)"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("`{url}` has no valid port"))?,
        ),
        None => (authority, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    Ok((host.to_owned(), port))
}

/// This device's publishing side of the broker connection.
#[derive(Clone)]
pub struct Broker {
    client: AsyncClient,
    trust_domain: String,
}

impl Broker {
    /// Publishes `envelope` to device `device_id`'s topic (QoS 1).
    pub async fn publish(&self, device_id: &str, envelope: Vec<u8>) -> Result<(), String> {
        self.client
            .publish(
                topic(&self.trust_domain, device_id),
                QoS::AtLeastOnce,
                false,
                envelope,
            )
            .await
            .map_err(|e| e.to_string())
    }
}

/// Connects to the broker at `url` as this device (client id: its device id) and returns
/// the publisher and the event loop to run with [`run`].
pub fn connect(url: &str, messenger: &Messenger) -> Result<(Broker, EventLoop), String> {
    let (host, port) = broker_address(url)?;
    let mut options = MqttOptions::new(format!("vouch-{}", messenger.device_id()), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    // The broker keeps this device's subscription and QoS 1 messages while it is away.
    options.set_clean_session(false);
    let (client, eventloop) = AsyncClient::new(options, 64);
    Ok((
        Broker {
            client,
            trust_domain: messenger.trust_domain().to_owned(),
        },
        eventloop,
    ))
}

/// Runs the broker connection until the process ends: subscribes to this device's topic on
/// every connection and hands each message to `messenger`'s checks. Connection failures are
/// retried every few seconds.
pub async fn run(broker: Broker, mut eventloop: EventLoop, messenger: Arc<Messenger>) {
    let mine = topic(messenger.trust_domain(), &messenger.device_id());
    // At most this many messages are checked at once; beyond, the connection waits.
    let checks = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_CHECKS));
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(topic = %mine, "connected to the MQTT broker");
                if let Err(e) = broker.client.subscribe(&mine, QoS::AtLeastOnce).await {
                    tracing::warn!(error = %e, "cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if publish.topic != mine {
                    tracing::warn!(topic = %publish.topic, "a message on another topic: dropped");
                    continue;
                }
                let messenger = Arc::clone(&messenger);
                let Ok(permit) = Arc::clone(&checks).acquire_owned().await else {
                    return;
                };
                // The checks may ask the peer directory: do not hold up the connection.
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err((reason, detail)) =
                        messenger.accept(&publish.payload, &Transport::mqtt()).await
                    {
                        tracing::debug!(reason, %detail, "MQTT message refused");
                    }
                });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "MQTT broker connection failed; retrying in 2s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}
