//! The sink's ClickHouse client, built from its settings: the URL (HTTP or HTTPS), the TLS
//! files (a private CA, a client certificate and key), the user and its password (given, or
//! read from `clickhouse_password_file` at start). A file that cannot be used stops start-up
//! with its setting named; the password never appears in an error or a log line.
//!
//! How a TLS failure of a request is reported is here too ([`tls_failure`]): such a failure
//! never resolves itself, so the writer classifies it as fatal with what to change.

use clickstream_connect::{ConnectError, SecretFile, Tls};

use crate::SinkError;
use crate::settings::Settings;

/// The client every ClickHouse request of the sink goes through.
pub fn client(settings: &Settings) -> Result<clickhouse::Client, SinkError> {
    let file = |value: &str| (!value.is_empty()).then(|| value.into());
    let tls = Tls {
        ca_file: file(&settings.clickhouse_ca_file),
        client_cert_file: file(&settings.clickhouse_client_cert_file),
        client_key_file: file(&settings.clickhouse_client_key_file),
    };
    if !clickstream_connect::is_https(&settings.clickhouse_url) && tls != Tls::default() {
        tracing::warn!(
            clickhouse = %clickstream_connect::redact_url(&settings.clickhouse_url),
            "TLS files are set but clickhouse_url is plain http://: they are not used"
        );
    }
    let password = if settings.clickhouse_password_file.is_empty() {
        settings.clickhouse_password.clone()
    } else {
        clickstream_connect::read_secret_file(settings.clickhouse_password_file.as_ref())
            .map_err(setting_error)?
    };
    let client = clickstream_connect::client(&settings.clickhouse_url, &tls)
        .map_err(setting_error)?
        .with_user(&settings.clickhouse_user)
        .with_database(&settings.database);
    Ok(if password.is_empty() {
        client
    } else {
        client.with_password(password)
    })
}

/// The setting a TLS or password file came from.
fn key_of(file: SecretFile) -> &'static str {
    match file {
        SecretFile::Ca => "clickhouse_ca_file",
        SecretFile::ClientCert => "clickhouse_client_cert_file",
        SecretFile::ClientKey => "clickhouse_client_key_file",
        SecretFile::Password => "clickhouse_password_file",
    }
}

fn setting_error(error: ConnectError) -> SinkError {
    let key = error.file().map_or("clickhouse_url", key_of);
    SinkError::Settings(format!("invalid value for `{key}`: {error}"))
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
