//! Kafka logins and TLS handshakes that fail: a stop with what to check, never a quiet retry.
//!
//! librdkafka retries a refused SASL login or a failed TLS handshake forever and reports it
//! only as an error event (and a log line); requests then just time out. The sink's Kafka
//! clients (admin client, dead-letter producer and read-back consumer: [`KafkaContext`]; the
//! consumer: its own context, through [`AuthWatch`]) remember the first such failure with
//! librdkafka's reason,
//! so that start-up stops with it instead of a bare "broker transport failure", and the
//! consume loop stops when the consumer reports one ([`fatal_consume_error`]).
//!
//! The `kafka` settings (TLS, SASL, tuning) reach every one of those clients through
//! [`Settings::kafka_client_config`](crate::settings::Settings::kafka_client_config), so a
//! consumer property also reaches the producers and the reverse: librdkafka's warning that
//! such a property is ignored is expected there, and every client context logs through
//! [`clickstream_settings::kafka_log`], which says it at debug only.

use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::SinkError;

/// Error codes that mean "the broker refused who we are" (SASL) or "TLS failed": settings to
/// fix, not a broker to wait for.
pub fn is_auth_failure(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        Authentication
            | SaslAuthenticationFailed
            | UnsupportedSASLMechanism
            | IllegalSASLState
            | SSL
    )
}

/// What to check, after the broker's reason.
pub const WHAT_TO_CHECK: &str = "check kafka.security.protocol and, for SASL, kafka.sasl.mechanism, \
     kafka.sasl.username and kafka.sasl.password; for TLS, kafka.ssl.ca.location (the broker's CA) \
     and kafka.ssl.certificate.location / kafka.ssl.key.location (a client certificate)";

/// The first authentication or TLS failure a client reported.
#[derive(Debug, Default)]
pub struct AuthWatch {
    failure: Mutex<Option<String>>,
}

impl AuthWatch {
    /// Records `error` if it is an authentication or TLS failure; returns whether it was.
    pub fn observe(&self, error: &KafkaError, reason: &str) -> bool {
        if !error.rdkafka_error_code().is_some_and(is_auth_failure) {
            return false;
        }
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            tracing::error!(
                reason,
                "Kafka refused the sink's login or TLS handshake: {WHAT_TO_CHECK}"
            );
            *failure = Some(reason.to_owned());
        }
        true
    }

    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The sink's error for the recorded failure, if there is one.
    pub fn error(&self) -> Option<SinkError> {
        self.failure()
            .map(|reason| SinkError::KafkaAuth(format!("{reason}: {WHAT_TO_CHECK}")))
    }
}

/// Client context of the admin client, the dead-letter producer and the read-back consumer.
#[derive(Clone, Default)]
pub struct KafkaContext {
    pub auth: Arc<AuthWatch>,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        clickstream_settings::kafka_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !self.auth.observe(&error, reason) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for KafkaContext {}

/// A consume error the sink must stop on: the broker refuses its login, its TLS handshake,
/// or its access to the group or topic (nothing a retry changes). `reason` is the consumer
/// context's recorded reason, if any.
pub fn fatal_consume_error(error: &KafkaError, reason: Option<String>) -> Option<SinkError> {
    use RDKafkaErrorCode::*;
    let code = error.rdkafka_error_code()?;
    let denied = matches!(
        code,
        GroupAuthorizationFailed | TopicAuthorizationFailed | ClusterAuthorizationFailed
    );
    if !(is_auth_failure(code) || denied) {
        return None;
    }
    let what = reason.unwrap_or_else(|| error.to_string());
    Some(SinkError::KafkaAuth(if denied {
        format!(
            "{what}: the broker's ACLs do not let the sink's principal read the topic or use \
             the consumer group: grant them (Read on topic and group, Write on the dead-letter topic)"
        )
    } else {
        format!("{what}: {WHAT_TO_CHECK}")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Overrides, Settings};

    #[test]
    fn the_first_login_failure_is_kept_with_its_reason() {
        let watch = AuthWatch::default();
        let transport = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        assert!(!watch.observe(&transport, "connection refused"));
        assert!(watch.error().is_none(), "a transport error is waited out");
        let login = KafkaError::Global(RDKafkaErrorCode::Authentication);
        assert!(watch.observe(&login, "SASL SCRAM authentication failed: unknown-user"));
        assert!(watch.observe(&login, "a later one"));
        let message = watch.error().expect("recorded").to_string();
        assert!(message.contains("unknown-user"), "{message}");
        assert!(message.contains("kafka.sasl.password"), "{message}");
        let tls = KafkaError::Global(RDKafkaErrorCode::SSL);
        assert!(AuthWatch::default().observe(&tls, "certificate verify failed"));
    }

    #[test]
    fn denied_access_and_failed_logins_stop_consumption_other_errors_do_not() {
        let denied = KafkaError::MessageConsumption(RDKafkaErrorCode::GroupAuthorizationFailed);
        let message = fatal_consume_error(&denied, None)
            .expect("fatal")
            .to_string();
        assert!(message.contains("ACLs"), "{message}");
        let login = KafkaError::MessageConsumption(RDKafkaErrorCode::SaslAuthenticationFailed);
        let message = fatal_consume_error(&login, Some("bad password".into()))
            .expect("fatal")
            .to_string();
        assert!(message.contains("bad password"), "{message}");
        let down = KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown);
        assert!(fatal_consume_error(&down, None).is_none());
    }

    /// `kafka.*` settings reach every Kafka client of the sink: the consumer, the dead-letter
    /// producer and the admin client all start from `kafka_client_config`. (The properties
    /// the sink sets itself are refused at start-up: settings.rs.)
    #[test]
    fn kafka_settings_reach_the_consumer_and_the_dead_letter_producer() {
        let overrides = Overrides {
            kafka: vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
                ("sasl.username".into(), "sink".into()),
                ("sasl.password".into(), "pw".into()),
                ("ssl.ca.location".into(), "/etc/kafka/ca.pem".into()),
            ],
            ..Overrides::default()
        };
        let settings = Settings::load_from(&overrides, Vec::new()).expect("settings");
        let consumer = crate::consumer::consumer_config(&settings);
        let producer = crate::dead_letter::producer_config(&settings, 1_000_000);
        for (client, config) in [("consumer", &consumer), ("dead-letter producer", &producer)] {
            for (key, value) in &overrides.kafka {
                assert_eq!(config.get(key), Some(value.as_str()), "{client}: {key}");
            }
        }
        assert_eq!(
            producer.get("acks"),
            Some("all"),
            "the dead-letter producer keeps acks=all"
        );
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
    }
}
