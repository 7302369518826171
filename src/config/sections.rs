//! Validation of the MQTT sources, the uplinks and the model bindings: one function per
//! kind of section, each taking the raw serde type and returning the typed one while
//! recording every problem with the checker. Pure, like the rest of validation.

use std::collections::HashSet;
use std::time::Duration;

use super::files::{join_index, join_key};
use super::raw::*;
use super::validate::Checker;
use super::*;

pub(super) fn model_binding(
    c: &mut Checker<'_>,
    path: &str,
    raw: RawModel,
    names: &mut HashSet<String>,
) -> ModelBindingConfig {
    c.name(&join_key(path, "name"), &raw.name, names);
    // Whether the file exists and fits is for the model loader to say: `check` fails on
    // it, while `run` logs it and keeps the data flowing unscored.
    let model_path = c.resolve(&join_key(path, "path"), &raw.path);
    if raw.devices.is_empty() || raw.devices.iter().any(|d| d.is_empty()) {
        c.error(
            &join_key(path, "devices"),
            "give device names or patterns such as \"pump-*\"",
        );
    }
    c.range_usize(&join_key(path, "stride"), raw.stride, 1, 10_000);
    if let Some(window) = raw.window {
        c.range_usize(&join_key(path, "window"), window, 1, 10_000);
    }
    if let Some(channels) = &raw.channels {
        let unique: HashSet<&String> = channels.iter().collect();
        if channels.is_empty() || unique.len() != channels.len() {
            c.error(
                &join_key(path, "channels"),
                "give each channel once, in the model's order",
            );
        }
        for (key, values) in [("mean", &raw.mean), ("std", &raw.std)] {
            if let Some(values) = values
                && values.len() != channels.len()
            {
                c.error(
                    &join_key(path, key),
                    format!("{} values for {} channels", values.len(), channels.len()),
                );
            }
        }
    }
    if let Some(std) = &raw.std
        && std.iter().any(|s| !s.is_finite() || *s <= 0.0)
    {
        c.error(
            &join_key(path, "std"),
            "every std must be a positive number",
        );
    }
    if let Some(mean) = &raw.mean
        && mean.iter().any(|m| !m.is_finite())
    {
        c.error(
            &join_key(path, "mean"),
            "every mean must be a finite number",
        );
    }
    if let Some(threshold) = raw.threshold
        && !threshold.is_finite()
    {
        c.error(&join_key(path, "threshold"), "must be a finite number");
    }
    if let Some(score) = &raw.score
        && let Err(e) = crate::pipeline::contract::parse_score(score)
    {
        c.error(&join_key(path, "score"), e);
    }
    ModelBindingConfig {
        name: raw.name,
        path: model_path,
        devices: raw.devices,
        stride: raw.stride,
        bad_values: raw.bad_values,
        overrides: crate::pipeline::contract::Overrides {
            channels: raw.channels,
            window: raw.window,
            mean: raw.mean,
            std: raw.std,
            threshold: raw.threshold,
            score: raw.score,
        },
    }
}

pub(super) fn batching(
    c: &mut Checker<'_>,
    path: &str,
    max_records: usize,
    linger: Duration,
) -> Batching {
    c.range_usize(&join_key(path, "max_records"), max_records, 1, 100_000);
    c.range_duration(
        &join_key(path, "linger"),
        linger,
        Duration::ZERO,
        Duration::from_secs(600),
    );
    Batching {
        max_records,
        linger,
    }
}

pub(super) fn backoff(
    c: &mut Checker<'_>,
    path: &str,
    min_key: &str,
    min: Duration,
    max_key: &str,
    max: Duration,
) -> BackoffConfig {
    c.range_duration(
        &join_key(path, min_key),
        min,
        Duration::from_millis(10),
        Duration::from_secs(3600),
    );
    c.range_duration(
        &join_key(path, max_key),
        max,
        Duration::from_millis(10),
        Duration::from_secs(86_400),
    );
    if min > max {
        c.error(
            &join_key(path, max_key),
            format!("must not be below {min_key}"),
        );
    }
    BackoffConfig { min, max }
}

pub(super) fn mqtt_source(
    c: &mut Checker<'_>,
    path: &str,
    raw: RawMqttSource,
    gateway_id: &str,
    names: &mut HashSet<String>,
) -> MqttSourceConfig {
    c.name(&join_key(path, "name"), &raw.name, names);
    if raw.host.trim().is_empty() {
        c.error(&join_key(path, "host"), "must not be empty");
    }
    if raw.port == Some(0) {
        c.error(&join_key(path, "port"), "0 is not a usable port");
    }
    let client_id = raw
        .client_id
        .clone()
        .unwrap_or_else(|| format!("tidegate-{gateway_id}-{}", raw.name));
    if client_id.is_empty() || client_id.len() > 65_535 {
        c.error(
            &join_key(path, "client_id"),
            "must be 1 to 65535 bytes long",
        );
    }
    let password = c.secret(&join_key(path, "password"), raw.password.as_ref());
    if password.is_some() && raw.username.is_none() {
        c.error(&join_key(path, "password"), "a password needs a username");
    }
    let tls = raw.tls.as_ref().map(|t| c.tls(&join_key(path, "tls"), t));
    c.range_duration(
        &join_key(path, "keep_alive"),
        raw.keep_alive.0,
        Duration::from_secs(5),
        Duration::from_secs(65_535),
    );
    c.range_duration(
        &join_key(path, "connect_timeout"),
        raw.connect_timeout.0,
        Duration::from_millis(100),
        Duration::from_secs(300),
    );
    if raw.max_payload.bytes() == 0 || raw.max_payload.bytes() > (16 << 20) {
        c.error(
            &join_key(path, "max_payload"),
            format!(
                "{} is out of range: must be between 1B and 16MiB",
                raw.max_payload
            ),
        );
    }
    if raw.inflight == 0 {
        c.error(&join_key(path, "inflight"), "must be at least 1");
    }
    let reconnect = backoff(
        c,
        path,
        "reconnect_min",
        raw.reconnect_min.0,
        "reconnect_max",
        raw.reconnect_max.0,
    );
    if raw.subscriptions.is_empty() {
        c.error(
            &join_key(path, "subscriptions"),
            "at least one subscription is needed",
        );
    }
    let mut subscriptions = Vec::new();
    for (i, sub) in raw.subscriptions.into_iter().enumerate() {
        let sub_path = join_index(&join_key(path, "subscriptions"), i);
        if let Err(e) = crate::sources::mqtt::topic::check_filter(&sub.filter) {
            c.error(&join_key(&sub_path, "filter"), e);
        }
        if sub.qos > 1 {
            c.error(
                &join_key(&sub_path, "qos"),
                format!(
                    "{} is not supported: use 1 (or 0 for at-most-once)",
                    sub.qos
                ),
            );
        }
        let template = match sub.topic_template.as_deref().map(TopicTemplate::parse) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                c.error(&join_key(&sub_path, "topic_template"), e);
                None
            }
            None => None,
        };
        if let (Some(t), Some(_)) = (&template, &sub.device_field)
            && t.has_device()
        {
            c.error(
                &join_key(&sub_path, "device_field"),
                "the topic template already names the device ({device}): give one or the other",
            );
        }
        if sub.timestamp_field.is_none() && sub.timestamp_format != TimestampFormat::Auto {
            c.error(
                &join_key(&sub_path, "timestamp_format"),
                "needs timestamp_field",
            );
        }
        subscriptions.push(SubscriptionConfig {
            filter: sub.filter,
            qos: sub.qos,
            template,
            device_field: sub.device_field,
            timestamp_field: sub.timestamp_field,
            timestamp_format: sub.timestamp_format,
        });
    }
    MqttSourceConfig {
        port: raw.port.unwrap_or(if tls.is_some() { 8883 } else { 1883 }),
        name: raw.name,
        host: raw.host,
        client_id,
        username: raw.username,
        password,
        tls,
        keep_alive: raw.keep_alive.0,
        connect_timeout: raw.connect_timeout.0,
        max_payload: raw.max_payload.bytes() as usize,
        reconnect,
        inflight: raw.inflight,
        subscriptions,
    }
}

/// An uplink's `url`: http(s) with a host. A bad one is an error, and a placeholder
/// stands in so validation can go on and report everything else.
fn http_url(c: &mut Checker<'_>, path: &str, text: &str) -> reqwest::Url {
    let url_path = join_key(path, "url");
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => url,
        Ok(url) => {
            c.error(
                &url_path,
                format!("\"{url}\" must be an http:// or https:// URL with a host"),
            );
            url
        }
        Err(e) => {
            c.error(&url_path, format!("\"{text}\" is not a URL: {e}"));
            reqwest::Url::parse("http://invalid.invalid/").expect("constant URL parses")
        }
    }
}

/// TLS settings, which only make sense with an https:// url.
fn https_tls(c: &mut Checker<'_>, path: &str, raw: &RawTls, url: &reqwest::Url) -> TlsConfig {
    let tls = c.tls(&join_key(path, "tls"), raw);
    if url.scheme() == "http" && (tls.ca_file.is_some() || tls.client_cert_file.is_some()) {
        c.error(&join_key(path, "tls"), "TLS settings need an https:// url");
    }
    tls
}

/// A deadline for one request or batch: 100 ms to 10 minutes.
fn request_timeout(c: &mut Checker<'_>, path: &str, timeout: Duration) {
    c.range_duration(
        &join_key(path, "timeout"),
        timeout,
        Duration::from_millis(100),
        Duration::from_secs(600),
    );
}

pub(super) fn http_uplink(
    c: &mut Checker<'_>,
    path: &str,
    raw: RawHttpUplink,
    names: &mut HashSet<String>,
) -> UplinkConfig {
    c.name(&join_key(path, "name"), &raw.name, names);
    let url = http_url(c, path, &raw.url);
    let token = c.secret(&join_key(path, "token"), raw.token.as_ref());
    let tls = https_tls(c, path, &raw.tls, &url);
    let mut headers = Vec::new();
    for (name, value) in &raw.headers {
        let header_path = join_key(&join_key(path, "headers"), name);
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(value).is_err()
        {
            c.error(&header_path, "not a valid HTTP header");
        } else if name.eq_ignore_ascii_case("authorization") {
            c.error(
                &header_path,
                "put credentials in `token` (a secret reference), not in headers",
            );
        }
        headers.push((name.clone(), value.clone()));
    }
    request_timeout(c, path, raw.timeout.0);
    c.range_duration(
        &join_key(path, "retry_after_max"),
        raw.retry_after_max.0,
        Duration::from_secs(1),
        Duration::from_secs(86_400),
    );
    let backoff = backoff(
        c,
        path,
        "backoff_min",
        raw.backoff_min.0,
        "backoff_max",
        raw.backoff_max.0,
    );
    let batching = batching(c, path, raw.max_records, raw.linger.0);
    UplinkConfig {
        name: raw.name,
        batching,
        kind: UplinkKind::Http(Box::new(HttpUplinkConfig {
            url,
            auth: token.map_or(HttpAuth::None, HttpAuth::Bearer),
            format: BodyFormat::Batch,
            tls,
            headers,
            timeout: raw.timeout.0,
            gzip: raw.gzip,
            backoff,
            retry_after_max: raw.retry_after_max.0,
        })),
    }
}

pub(super) fn influx_uplink(
    c: &mut Checker<'_>,
    path: &str,
    raw: RawInfluxUplink,
    names: &mut HashSet<String>,
) -> UplinkConfig {
    c.name(&join_key(path, "name"), &raw.name, names);
    let mut url = http_url(c, path, &raw.url);
    let v1 = raw.database.is_some();
    let v2 = raw.org.is_some() || raw.bucket.is_some();
    let auth = if v1 && v2 {
        c.error(
            path,
            "give `database` (InfluxDB 1.x) or `org` and `bucket` (2.x), not both",
        );
        HttpAuth::None
    } else if v1 {
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/write"));
        let mut query = url.query_pairs_mut();
        query.append_pair("db", raw.database.as_deref().unwrap_or_default());
        if let Some(rp) = &raw.retention_policy {
            query.append_pair("rp", rp);
        }
        query.append_pair("precision", "ms");
        drop(query);
        if raw.token.is_some() || raw.org.is_some() {
            c.error(
                &join_key(path, "token"),
                "`token` is for InfluxDB 2.x (org, bucket)",
            );
        }
        let password = c.secret(&join_key(path, "password"), raw.password.as_ref());
        match (&raw.username, password) {
            (Some(username), Some(password)) => HttpAuth::Basic {
                username: username.clone(),
                password,
            },
            (None, None) => HttpAuth::None,
            _ => {
                c.error(path, "`username` and `password` go together");
                HttpAuth::None
            }
        }
    } else if v2 {
        if raw.org.is_none() || raw.bucket.is_none() {
            c.error(path, "InfluxDB 2.x needs both `org` and `bucket`");
        }
        if raw.username.is_some() || raw.retention_policy.is_some() {
            c.error(
                path,
                "`username` and `retention_policy` are for InfluxDB 1.x (database)",
            );
        }
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/api/v2/write"));
        url.query_pairs_mut()
            .append_pair("org", raw.org.as_deref().unwrap_or_default())
            .append_pair("bucket", raw.bucket.as_deref().unwrap_or_default())
            .append_pair("precision", "ms");
        match c.secret(&join_key(path, "token"), raw.token.as_ref()) {
            Some(token) => HttpAuth::Token(token),
            None => HttpAuth::None,
        }
    } else {
        c.error(
            path,
            "name the target: `database` (InfluxDB 1.x) or `org` and `bucket` (2.x)",
        );
        HttpAuth::None
    };
    if raw.measurement.trim().is_empty() {
        c.error(&join_key(path, "measurement"), "must not be empty");
    }
    let tls = https_tls(c, path, &raw.tls, &url);
    request_timeout(c, path, raw.timeout.0);
    let backoff = backoff(
        c,
        path,
        "backoff_min",
        raw.backoff_min.0,
        "backoff_max",
        raw.backoff_max.0,
    );
    let batching = batching(c, path, raw.max_records, raw.linger.0);
    UplinkConfig {
        name: raw.name,
        batching,
        kind: UplinkKind::Http(Box::new(HttpUplinkConfig {
            url,
            auth,
            format: BodyFormat::InfluxLine {
                measurement: raw.measurement,
            },
            tls,
            headers: Vec::new(),
            timeout: raw.timeout.0,
            gzip: raw.gzip,
            backoff,
            retry_after_max: raw.retry_after_max.0,
        })),
    }
}

pub(super) fn mqtt_uplink(
    c: &mut Checker<'_>,
    path: &str,
    raw: RawMqttUplink,
    gateway_id: &str,
    names: &mut HashSet<String>,
) -> UplinkConfig {
    c.name(&join_key(path, "name"), &raw.name, names);
    if raw.host.trim().is_empty() {
        c.error(&join_key(path, "host"), "must not be empty");
    }
    let topic_path = join_key(path, "topic");
    if raw.topic.contains('+') || raw.topic.contains('#') {
        c.error(
            &topic_path,
            "a topic to publish to cannot hold the wildcards + or #",
        );
    }
    let mut rest = raw.topic.as_str();
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else {
            c.error(&topic_path, "an opening { without its closing }");
            break;
        };
        let name = &rest[start + 1..start + end];
        if !matches!(name, "gateway" | "source" | "device") {
            c.error(
                &topic_path,
                format!(
                    "unknown placeholder {{{name}}}: use {{gateway}}, {{source}} or {{device}}"
                ),
            );
        }
        rest = &rest[start + end + 1..];
    }
    let tls = raw.tls.as_ref().map(|t| c.tls(&join_key(path, "tls"), t));
    let password = c.secret(&join_key(path, "password"), raw.password.as_ref());
    if password.is_some() && raw.username.is_none() {
        c.error(&join_key(path, "password"), "a password needs a `username`");
    }
    c.range_duration(
        &join_key(path, "keep_alive"),
        raw.keep_alive.0,
        Duration::from_secs(5),
        Duration::from_secs(3600),
    );
    c.range_duration(
        &join_key(path, "connect_timeout"),
        raw.connect_timeout.0,
        Duration::from_secs(1),
        Duration::from_secs(300),
    );
    request_timeout(c, path, raw.timeout.0);
    if raw.inflight == 0 {
        c.error(&join_key(path, "inflight"), "must be at least 1");
    }
    let backoff = backoff(
        c,
        path,
        "backoff_min",
        raw.backoff_min.0,
        "backoff_max",
        raw.backoff_max.0,
    );
    let batching = batching(c, path, raw.max_records, raw.linger.0);
    let port = raw.port.unwrap_or(if tls.is_some() { 8883 } else { 1883 });
    UplinkConfig {
        name: raw.name.clone(),
        batching,
        kind: UplinkKind::Mqtt(Box::new(MqttUplinkConfig {
            host: raw.host,
            port,
            client_id: raw
                .client_id
                .unwrap_or_else(|| format!("tidegate-{gateway_id}-{}", raw.name)),
            username: raw.username,
            password,
            tls,
            topic: raw.topic,
            keep_alive: raw.keep_alive.0,
            connect_timeout: raw.connect_timeout.0,
            timeout: raw.timeout.0,
            inflight: raw.inflight,
            backoff,
        })),
    }
}
