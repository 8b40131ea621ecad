//! The sink's ClickHouse client, built from its settings: the URL (HTTP or HTTPS), the TLS
//! files (a private CA, a client certificate and key), the user and its password (given, or
//! read from `clickhouse_password_file` at start). A file that cannot be used stops start-up
//! with its setting named; the password never appears in an error or a log line.
//!
//! How a TLS failure of a request is reported is here too ([`tls_failure`]): such a failure
//! never resolves itself, so the writer classifies it as fatal with what to change.

use crate::SinkError;
use crate::settings::Settings;

/// The client every ClickHouse request of the sink goes through.
pub fn client(settings: &Settings) -> Result<clickhouse::Client, SinkError> {
    settings.connection().client().map_err(SinkError::Settings)
}

/// A TLS failure in `error`, as a message that says which setting to change; `None` when the
/// error is not about TLS.
pub fn tls_failure(error: &clickhouse::error::Error) -> Option<String> {
    use clickstream_connect::TlsFailure;
    let failure = clickstream_connect::tls_failure(error)?;
    let what_to_do = match failure {
        TlsFailure::ServerCertificate(_) => {
            "set clickhouse_ca_file to the CA certificate that signed the server's certificate \
             (or fix the server's certificate: its name must match the URL's host and it must \
             not be expired)"
        }
        TlsFailure::ClientCertificate(_) => {
            "set clickhouse_client_cert_file and clickhouse_client_key_file to a certificate \
             the server trusts"
        }
        TlsFailure::Handshake(_) => {
            "check that clickhouse_url's port serves HTTPS (ClickHouse: 8443) or use http://"
        }
    };
    Some(format!("TLS to ClickHouse: {failure}: {what_to_do}"))
}

/// What to do about a ClickHouse error code that is about the sink's user, if it is one.
pub fn hint(code: u32) -> Option<&'static str> {
    match code {
        // UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, AUTHENTICATION_FAILED
        192 | 193 | 194 | 516 => Some(
            "check clickhouse_user and its password (clickhouse_password or \
             clickhouse_password_file; after a rotation, the new one)",
        ),
        // ACCESS_DENIED, READONLY
        497 | 164 => Some(
            "the user lacks a privilege the sink needs: grant it as clickhouse/users.sql does \
             for clickstream_sink",
        ),
        // UNKNOWN_TABLE, UNKNOWN_DATABASE: dropped under a running sink, or the wrong name
        60 | 81 => Some(
            "a table or database the sink writes or reads does not exist: check `database` and \
             `table`, or create it again by applying clickhouse/schema.sql (idempotent), then \
             start the sink; it resumes from the group's committed offsets",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_stop_start_up_naming_their_setting() {
        let cases = [
            ("clickhouse_ca_file", "/nonexistent/ca.pem"),
            ("clickhouse_password_file", "/nonexistent/password"),
        ];
        for (key, path) in cases {
            let mut settings = Settings {
                clickhouse_url: "https://127.0.0.1:8443".into(),
                ..Settings::default()
            };
            match key {
                "clickhouse_ca_file" => settings.clickhouse_ca_file = path.into(),
                _ => settings.clickhouse_password_file = path.into(),
            }
            let error = client(&settings).expect_err("refused").to_string();
            assert!(error.contains(key) && error.contains(path), "{error}");
        }
    }
}
