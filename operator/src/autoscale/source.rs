//! Reads a cluster's demand: through the Prometheus HTTP API (`/api/v1/query`), or from the
//! head's own `/metrics` when no Prometheus is configured. Every read is bounded by a timeout, and
//! every failure keeps the words of whoever refused (Prometheus's `error`, the HTTP status, the
//! connection error), for the `AutoscalerReady` condition and the Warning Event.
//!
//! The head exports, per cluster (labels `cluster` and `namespace`):
//! - `flotilla_demand_slots{group}`: slots that running tasks and live actors take, by the group
//!   they run on;
//! - `flotilla_demand_pending_slots{slots,resources}`: slots of pending tasks by what one task
//!   asks (its slots, and its custom resources as `NAME=AMOUNT,...`), for [`super::demand`] to
//!   assign to the groups of the spec;
//! - `flotilla_group_busy_workers{group}`: workers running something.
//!
//! The default query reads all three at once. A user's query gives plain demand: the sum of its
//! samples, for any group.

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde::Deserialize;

use super::demand::Shape;
use crate::contract::{parse_resources, HEAD_HTTP_PORT};

/// Demand in task slots by worker group.
pub const DEMAND_SERIES: &str = "flotilla_demand_slots";
/// Slots of pending tasks, by what one task asks.
pub const PENDING_SERIES: &str = "flotilla_demand_pending_slots";
/// Busy workers by group.
pub const BUSY_SERIES: &str = "flotilla_group_busy_workers";

/// Where a cluster's demand is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Prometheus server: its base URL and the query (`None`: the default query).
    Prometheus {
        /// Base URL, e.g. `http://prometheus.monitoring:9090`.
        url: String,
        /// The user's query.
        query: Option<String>,
    },
    /// The head's own `/metrics`, at the head pod's IP.
    Head {
        /// The head pod's IP.
        ip: String,
    },
}

impl Source {
    /// Where it reads, for people.
    pub fn describe(&self) -> String {
        match self {
            Self::Prometheus { url, .. } => format!("Prometheus at {url}"),
            Self::Head { ip } => format!("the head's /metrics at {ip}"),
        }
    }
}

/// One reading of a cluster's demand.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// Slots of running work by group; `""` is work of any group (a user's query).
    pub demand: BTreeMap<String, f64>,
    /// Slots of pending tasks by what one task asks.
    pub pending: BTreeMap<Shape, f64>,
    /// Busy workers by group.
    pub busy: BTreeMap<String, u32>,
}

impl Reading {
    /// All demand, in slots.
    pub fn total(&self) -> f64 {
        self.demand.values().sum::<f64>() + self.pending.values().sum::<f64>()
    }

    /// Adds one sample of series `name`; `Err` says what is wrong with its labels.
    fn add(
        &mut self,
        name: &str,
        labels: &BTreeMap<String, String>,
        value: f64,
    ) -> Result<(), String> {
        let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
        match name {
            DEMAND_SERIES => *self.demand.entry(label("group")).or_default() += value,
            PENDING_SERIES if value > 0.0 => {
                let slots = label("slots");
                let shape = Shape {
                    slots: slots.parse().map_err(|_| {
                        format!("{PENDING_SERIES} has slots={slots:?}, not a whole number")
                    })?,
                    resources: parse_resources(&label("resources"))
                        .map_err(|e| format!("{PENDING_SERIES} has resources {e}"))?,
                };
                *self.pending.entry(shape).or_default() += value;
            }
            BUSY_SERIES => {
                *self.busy.entry(label("group")).or_default() += value.max(0.0).round() as u32;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Why a read failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ReadError {
    /// No answer within the timeout.
    #[error("no answer from {from} within {timeout:?}")]
    Timeout {
        /// Where it read.
        from: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The connection failed.
    #[error("cannot reach {from}: {message}")]
    Unreachable {
        /// Where it read.
        from: String,
        /// The connection error.
        message: String,
    },
    /// Prometheus refused the query, in its own words.
    #[error("Prometheus refused the query ({kind}): {message}")]
    Query {
        /// Prometheus's `errorType`, or the HTTP status.
        kind: String,
        /// Prometheus's `error`, or the body.
        message: String,
    },
    /// The query matched no series (is the head scraped?).
    #[error("the query returned no samples: {query}")]
    Empty {
        /// The query.
        query: String,
    },
    /// A sample is not a number.
    #[error("the query returned {value:?}, which is not a number")]
    NotNumeric {
        /// The value as sent.
        value: String,
    },
    /// The answer cannot be read.
    #[error("cannot read the answer of {from}: {message}")]
    BadAnswer {
        /// Where it read.
        from: String,
        /// What is wrong.
        message: String,
    },
}

impl ReadError {
    /// Every [`ReadError::reason`].
    pub const REASONS: [&'static str; 6] = [
        "MetricsTimeout",
        "MetricsUnreachable",
        "QueryFailed",
        "EmptyResult",
        "NotNumeric",
        "BadAnswer",
    ];

    /// The condition reason and metric label of the failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "MetricsTimeout",
            Self::Unreachable { .. } => "MetricsUnreachable",
            Self::Query { .. } => "QueryFailed",
            Self::Empty { .. } => "EmptyResult",
            Self::NotNumeric { .. } => "NotNumeric",
            Self::BadAnswer { .. } => "BadAnswer",
        }
    }
}

/// The default query: the three demand series of `cluster` in `namespace`, summed by name, group
/// and shape.
pub fn default_query(cluster: &str, namespace: &str) -> String {
    format!(
        "sum by (__name__, group, slots, resources) ({{__name__=~\"{DEMAND_SERIES}|{PENDING_SERIES}|{BUSY_SERIES}\",\
         cluster=\"{}\",namespace=\"{}\"}})",
        escape(cluster),
        escape(namespace)
    )
}

/// A PromQL string literal's content.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Reads demand; shared by every cluster's loop (one connection pool).
#[derive(Clone)]
pub struct Reader {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Reader {
    /// A reader whose reads give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        Reader {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// Reads the demand of `cluster` in `namespace` from `source`.
    pub async fn read(
        &self,
        source: &Source,
        cluster: &str,
        namespace: &str,
    ) -> Result<Reading, ReadError> {
        let described = source.describe();
        let read = async {
            match source {
                Source::Prometheus { url, query } => {
                    let custom = query.is_some();
                    let query = query
                        .clone()
                        .unwrap_or_else(|| default_query(cluster, namespace));
                    let body = form_urlencoded::Serializer::new(String::new())
                        .append_pair("query", &query)
                        .finish();
                    let request =
                        http::Request::post(format!("{}/api/v1/query", url.trim_end_matches('/')))
                            .header(
                                http::header::CONTENT_TYPE,
                                "application/x-www-form-urlencoded",
                            )
                            .body(Full::new(Bytes::from(body)));
                    let (status, text) = self.send(request, &described).await?;
                    parse_query_answer(status, &text, &query, custom)
                }
                Source::Head { ip } => {
                    let host = match ip.parse::<std::net::IpAddr>() {
                        Ok(ip) => std::net::SocketAddr::new(ip, HEAD_HTTP_PORT as u16).to_string(),
                        Err(_) => format!("{ip}:{HEAD_HTTP_PORT}"),
                    };
                    let request = http::Request::get(format!("http://{host}/metrics"))
                        .body(Full::new(Bytes::new()));
                    let (status, text) = self.send(request, &described).await?;
                    if !status.is_success() {
                        return Err(ReadError::BadAnswer {
                            from: described.clone(),
                            message: format!("HTTP {status}: {}", text.trim()),
                        });
                    }
                    parse_exposition(&text)
                }
            }
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .unwrap_or_else(|_| {
                Err(ReadError::Timeout {
                    from: described.clone(),
                    timeout: self.timeout,
                })
            })
    }

    async fn send(
        &self,
        request: Result<http::Request<Full<Bytes>>, http::Error>,
        source: &str,
    ) -> Result<(http::StatusCode, String), ReadError> {
        let request = request.map_err(|e| ReadError::Unreachable {
            from: source.to_owned(),
            message: e.to_string(),
        })?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| ReadError::Unreachable {
                from: source.to_owned(),
                message: error_chain(&e),
            })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ReadError::Unreachable {
                from: source.to_owned(),
                message: e.to_string(),
            })?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// An error and its causes, as one line: hyper's own display says only "client error (Connect)".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<AnswerData>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerData {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct Sample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (serde_json::Value, String),
}

/// The reading in an answer of `/api/v1/query`. `custom`: the user's query, whose samples are
/// all plain demand.
fn parse_query_answer(
    status: http::StatusCode,
    text: &str,
    query: &str,
    custom: bool,
) -> Result<Reading, ReadError> {
    let answer: Answer = serde_json::from_str(text).map_err(|e| {
        // Not Prometheus's JSON: a proxy's error page, a wrong URL.
        if status.is_success() {
            ReadError::BadAnswer {
                from: "Prometheus".into(),
                message: e.to_string(),
            }
        } else {
            ReadError::Query {
                kind: format!("HTTP {status}"),
                message: text.trim().chars().take(300).collect(),
            }
        }
    })?;
    if answer.status != "success" {
        return Err(ReadError::Query {
            kind: answer
                .error_type
                .unwrap_or_else(|| format!("HTTP {status}")),
            message: answer.error.unwrap_or_default(),
        });
    }
    let data = answer.data.ok_or_else(|| ReadError::BadAnswer {
        from: "Prometheus".into(),
        message: "a successful answer without data".into(),
    })?;
    let samples: Vec<Sample> = match data.result_type.as_str() {
        "vector" => serde_json::from_value(data.result),
        "scalar" => serde_json::from_value(data.result).map(|value| {
            vec![Sample {
                metric: BTreeMap::new(),
                value,
            }]
        }),
        other => {
            return Err(ReadError::BadAnswer {
                from: "Prometheus".into(),
                message: format!(
                    "a {other} result; the query must give an instant vector or a scalar"
                ),
            })
        }
    }
    .map_err(|e| ReadError::BadAnswer {
        from: "Prometheus".into(),
        message: e.to_string(),
    })?;
    if samples.is_empty() {
        return Err(ReadError::Empty {
            query: query.to_owned(),
        });
    }
    let mut reading = Reading::default();
    for sample in samples {
        let value = number(&sample.value.1)?;
        if custom {
            *reading.demand.entry(String::new()).or_default() += value;
        } else {
            let name = sample.metric.get("__name__").cloned().unwrap_or_default();
            reading
                .add(&name, &sample.metric, value)
                .map_err(|message| ReadError::BadAnswer {
                    from: "Prometheus".into(),
                    message,
                })?;
        }
    }
    if !custom && reading.demand.is_empty() {
        return Err(ReadError::Empty {
            query: query.to_owned(),
        });
    }
    Ok(reading)
}

/// A sample value; `NaN` and infinities are not demand.
fn number(text: &str) -> Result<f64, ReadError> {
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| ReadError::NotNumeric {
            value: text.to_owned(),
        })
}

/// The reading in the head's Prometheus text exposition (only the demand series are read).
fn parse_exposition(text: &str) -> Result<Reading, ReadError> {
    let bad = |message: String| ReadError::BadAnswer {
        from: "the head's /metrics".into(),
        message,
    };
    let mut reading = Reading::default();
    let mut seen = false;
    for line in text.lines() {
        let Some(name) = [DEMAND_SERIES, PENDING_SERIES, BUSY_SERIES]
            .into_iter()
            .find(|n| line.starts_with(n) && line[n.len()..].starts_with(['{', ' ']))
        else {
            continue;
        };
        let rest = &line[name.len()..];
        let (labels, value) = match rest.strip_prefix('{') {
            Some(inner) => {
                let end = inner
                    .rfind('}')
                    .ok_or_else(|| bad(format!("unterminated labels in {line:?}")))?;
                (parse_labels(&inner[..end]), &inner[end + 1..])
            }
            None => (BTreeMap::new(), rest),
        };
        let value = value.split_whitespace().next().unwrap_or_default();
        reading.add(name, &labels, number(value)?).map_err(bad)?;
        seen |= name == DEMAND_SERIES;
    }
    if !seen {
        return Err(bad(format!(
            "no {DEMAND_SERIES} series; is the head a Flotilla head of this version?"
        )));
    }
    Ok(reading)
}

/// `key="value",...` of the text format (values with `\"`, `\\` and `\n` escapes).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches([',', ' ']).to_owned();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len() - eq - 2;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        rest = &rest[eq + 2 + end..];
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_query_names_the_cluster() {
        assert_eq!(
            default_query("demo", "te\"am"),
            "sum by (__name__, group, slots, resources) ({__name__=~\"flotilla_demand_slots|\
             flotilla_demand_pending_slots|flotilla_group_busy_workers\",cluster=\"demo\",\
             namespace=\"te\\\"am\"})"
        );
    }

    #[test]
    fn answers_of_prometheus_are_read() {
        let ok = http::StatusCode::OK;
        let text = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"flotilla_demand_slots","group":""},"value":[1.5,"12"]},
            {"metric":{"__name__":"flotilla_demand_slots","group":"gpu"},"value":[1.5,"2"]},
            {"metric":{"__name__":"flotilla_group_busy_workers","group":"cpu"},"value":[1.5,"3"]},
            {"metric":{"__name__":"flotilla_demand_pending_slots","slots":"2","resources":"gpu=1,tpu=2"},"value":[1.5,"4"]},
            {"metric":{"__name__":"flotilla_demand_pending_slots","slots":"1","resources":""},"value":[1.5,"0"]}
        ]}}"#;
        let reading = parse_query_answer(ok, text, "q", false).unwrap();
        assert_eq!(reading.total(), 18.0);
        assert_eq!(reading.demand[""], 12.0);
        assert_eq!(reading.busy["cpu"], 3);
        let shape = Shape {
            slots: 2,
            resources: [("gpu".into(), 1), ("tpu".into(), 2)].into(),
        };
        assert_eq!(reading.pending[&shape], 4.0);
        assert_eq!(reading.pending.len(), 1, "shapes at 0 are no demand");
        let bad_shape = text.replace("\"slots\":\"2\"", "\"slots\":\"two\"");
        let error = parse_query_answer(ok, &bad_shape, "q", false).unwrap_err();
        assert!(error.to_string().contains("\"two\""), "{error}");

        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"7.5"]}}"#;
        let custom = parse_query_answer(ok, scalar, "q", true).unwrap();
        assert_eq!(custom.demand[""], 7.5);

        let refused = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected end of input"}"#;
        let error =
            parse_query_answer(http::StatusCode::BAD_REQUEST, refused, "q", true).unwrap_err();
        assert_eq!(error.reason(), "QueryFailed");
        assert!(error.to_string().contains("bad_data"), "{error}");
        assert!(
            error
                .to_string()
                .contains("parse error: unexpected end of input"),
            "{error}"
        );

        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(
            parse_query_answer(ok, empty, "up", true).unwrap_err(),
            ReadError::Empty { query: "up".into() }
        );
        let nan = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert_eq!(
            parse_query_answer(ok, nan, "q", true).unwrap_err().reason(),
            "NotNumeric"
        );
        let proxy = "<html>502 Bad Gateway</html>";
        let error =
            parse_query_answer(http::StatusCode::BAD_GATEWAY, proxy, "q", true).unwrap_err();
        assert!(error.to_string().contains("502"), "{error}");
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert_eq!(
            parse_query_answer(ok, matrix, "q", true)
                .unwrap_err()
                .reason(),
            "BadAnswer"
        );
    }

    #[test]
    fn the_heads_exposition_is_read() {
        let text = "# HELP flotilla_demand_slots Slots needed.\n\
                    # TYPE flotilla_demand_slots gauge\n\
                    flotilla_demand_slots{cluster=\"demo\",group=\"\",namespace=\"default\"} 9\n\
                    flotilla_demand_slots{cluster=\"demo\",group=\"cpu\",namespace=\"default\"} 4\n\
                    flotilla_demand_slots_other{group=\"x\"} 100\n\
                    flotilla_group_busy_workers{cluster=\"demo\",group=\"cpu\",namespace=\"default\"} 1\n\
                    flotilla_demand_pending_slots{cluster=\"demo\",namespace=\"default\",resources=\"a=1\",slots=\"3\"} 6\n";
        let reading = parse_exposition(text).unwrap();
        assert_eq!(reading.demand[""], 9.0);
        assert_eq!(reading.demand["cpu"], 4.0);
        assert_eq!(reading.total(), 19.0);
        assert_eq!(reading.busy["cpu"], 1);
        let shape = Shape {
            slots: 3,
            resources: [("a".into(), 1)].into(),
        };
        assert_eq!(reading.pending[&shape], 6.0);
        assert_eq!(
            parse_exposition("up 1\n").unwrap_err().reason(),
            "BadAnswer"
        );
    }
}
