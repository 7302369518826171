//! The HTTPS uplink: POSTs gzip JSON batches with a bearer token and an idempotency key,
//! and classifies each response:
//!
//! | response | outcome |
//! |---|---|
//! | 2xx | delivered |
//! | 408, 429, 5xx, timeout, connection error | retry with back-off, honouring `Retry-After` |
//! | 401, 403, 3xx | refused: data kept, ERROR logged, retried slowly |
//! | 413 | batch too large: halve the batch, dead-letter a single record |
//! | other 4xx | rejected for good: dead-letter, move on |
//!
//! The same sink writes InfluxDB line protocol ([`super::influx`]); there a 404 (no such
//! database or bucket) is a refusal that needs a person, not a rejection of the data.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::{Delivery, Sink, body, influx};
use crate::config::{BodyFormat, HttpAuth, HttpUplinkConfig};
use crate::sample::{Record, RecordForm};
use crate::tls::{self, TlsError};

pub struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    gateway: String,
    gzip: bool,
    headers: HeaderMap,
    format: BodyFormat,
    basic_auth: Option<(String, crate::config::Secret)>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpSinkError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl HttpSink {
    pub fn new(gateway: &str, config: &HttpUplinkConfig) -> Result<Self, HttpSinkError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(match config.format {
                BodyFormat::Batch => "application/json",
                BodyFormat::InfluxLine { .. } => "text/plain; charset=utf-8",
            }),
        );
        if config.gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (name, value) in &config.headers {
            // Both were checked by config validation.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        let credentials = match &config.auth {
            HttpAuth::None => None,
            HttpAuth::Bearer(token) => Some(format!("Bearer {}", token.expose())),
            HttpAuth::Token(token) => Some(format!("Token {}", token.expose())),
            // Added per request by reqwest, which encodes it.
            HttpAuth::Basic { .. } => None,
        };
        if let Some(credentials) = credentials {
            let mut value = HeaderValue::from_str(&credentials).map_err(|_| TlsError::Pem {
                what: "credentials",
                path: "(secret)".into(),
                reason: "the token or password holds characters not allowed in an HTTP header"
                    .into(),
            })?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("tidegate/", env!("CARGO_PKG_VERSION")))
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60));
        tls::install_crypto_provider();
        if config.url.scheme() == "https" {
            let mut tls_config = tls::client_config(&config.tls)?.as_ref().clone();
            tls_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            builder = builder.tls_backend_preconfigured(tls_config);
        }
        Ok(HttpSink {
            client: builder.build()?,
            url: config.url.clone(),
            gateway: gateway.to_string(),
            gzip: config.gzip,
            headers,
            format: config.format.clone(),
            basic_auth: match &config.auth {
                HttpAuth::Basic { username, password } => {
                    Some((username.clone(), password.clone()))
                }
                _ => None,
            },
        })
    }
}

impl Sink for HttpSink {
    fn form(&self) -> RecordForm {
        match self.format {
            BodyFormat::Batch => RecordForm::Json,
            BodyFormat::InfluxLine { .. } => RecordForm::Sample,
        }
    }

    async fn send(&mut self, records: &[Record]) -> Delivery {
        let (first, last) = (records[0].seq, records[records.len() - 1].seq);
        let key = body::idempotency_key(&self.gateway, first, last);
        let payload = match &self.format {
            BodyFormat::Batch => body::encode(&self.gateway, records, self.gzip),
            BodyFormat::InfluxLine { measurement } => {
                let lines = influx::encode(measurement, &self.gateway, records);
                if self.gzip { body::gzip(&lines) } else { lines }
            }
        };
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header("Idempotency-Key", key)
            .body(payload);
        if let Some((username, password)) = &self.basic_auth {
            request = request.basic_auth(username, Some(password.expose()));
        }
        let response = request.send().await;
        match response {
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                // Read (a bounded part of) the body so the connection can be reused and
                // the reason shown.
                let text = tokio::time::timeout(Duration::from_secs(5), response.text())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                match (&self.format, classify(status, retry_after, &text)) {
                    (BodyFormat::InfluxLine { .. }, Delivery::Rejected { reason })
                        if status == StatusCode::NOT_FOUND =>
                    {
                        Delivery::Refused { reason }
                    }
                    (_, outcome) => outcome,
                }
            }
            Err(e) => {
                let reason = describe_error(&e);
                // A certificate problem does not go away by waiting: it needs a person.
                if reason.contains("certificate") {
                    Delivery::Refused { reason }
                } else {
                    Delivery::Retry {
                        reason,
                        after: None,
                    }
                }
            }
        }
    }
}

/// The status → outcome table of this module's docs.
pub fn classify(status: StatusCode, retry_after: Option<Duration>, body: &str) -> Delivery {
    let snippet: String = body.chars().take(200).collect();
    let reason = if snippet.trim().is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", snippet.trim())
    };
    match status.as_u16() {
        200..=299 => Delivery::Delivered,
        408 | 429 | 500..=599 => Delivery::Retry {
            reason,
            after: retry_after,
        },
        401 | 403 | 300..=399 => Delivery::Refused { reason },
        413 => Delivery::TooLarge { reason },
        400..=499 => Delivery::Rejected { reason },
        _ => Delivery::Retry {
            reason,
            after: None,
        },
    }
}

/// `Retry-After` is either delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn describe_error(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_documented() {
        let kind = |code: u16| match classify(StatusCode::from_u16(code).unwrap(), None, "") {
            Delivery::Delivered => "delivered",
            Delivery::Retry { .. } => "retry",
            Delivery::Refused { .. } => "refused",
            Delivery::Rejected { .. } => "rejected",
            Delivery::TooLarge { .. } => "too_large",
        };
        assert_eq!(kind(200), "delivered");
        assert_eq!(kind(204), "delivered");
        assert_eq!(kind(408), "retry");
        assert_eq!(kind(429), "retry");
        assert_eq!(kind(500), "retry");
        assert_eq!(kind(503), "retry");
        assert_eq!(kind(401), "refused");
        assert_eq!(kind(403), "refused");
        assert_eq!(kind(307), "refused");
        assert_eq!(kind(413), "too_large");
        assert_eq!(kind(400), "rejected");
        assert_eq!(kind(422), "rejected");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
