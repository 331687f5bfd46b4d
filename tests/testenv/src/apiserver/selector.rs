//! Label and field selectors of list and watch requests.

use serde_json::Value;

use super::{
    error::{ApiError, ApiResult},
    events,
    resources::Resource,
};

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `labelSelector` (`a=b,c!=d,e in (x,y),f notin (z),g,!h`).
#[derive(Clone, Debug, Default)]
pub(crate) struct LabelSelector(Vec<Requirement>);

/// Splits at commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_set(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

impl LabelSelector {
    pub fn parse(text: &str) -> ApiResult<Self> {
        let invalid = |part: &str| {
            ApiError::bad_request(format!("unable to parse requirement: found '{part}', expected: in, notin, =, ==, !=, gt, lt"))
        };
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_owned())
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, set)) = part.split_once(" notin ") {
                Requirement::NotIn(
                    key.trim().to_owned(),
                    parse_set(set).ok_or_else(|| invalid(part))?,
                )
            } else if let Some((key, set)) = part.split_once(" in ") {
                Requirement::In(
                    key.trim().to_owned(),
                    parse_set(set).ok_or_else(|| invalid(part))?,
                )
            } else if part.contains(char::is_whitespace) || part.contains('(') {
                return Err(invalid(part));
            } else {
                Requirement::Exists(part.to_owned())
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        })
    }
}

/// One term of a field selector: the JSON pointers of the stored field (the first set one
/// counts), whether it must equal or differ from the value, and the value.
#[derive(Clone, Debug)]
struct FieldTerm {
    pointers: Vec<String>,
    equal: bool,
    value: String,
}

/// A parsed `fieldSelector` (`metadata.name=x,spec.nodeName!=`).
#[derive(Clone, Debug, Default)]
pub(crate) struct FieldSelector(Vec<FieldTerm>);

/// The fields a resource can be selected by, beyond `metadata.name` and `metadata.namespace`.
fn selectable(resource: &Resource) -> &'static [&'static str] {
    match (resource.group.as_str(), resource.plural.as_str()) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "namespaces") => &["status.phase"],
        ("", "secrets") => &["type"],
        ("", "events") => events::CORE_FIELD_LABELS,
        _ => &[],
    }
}

/// The stored field a field label of a resource selects by, as the real server maps it.
fn stored_label(resource: &Resource, label: &str) -> Option<&'static str> {
    if events::is_events_v1(resource) {
        return events::core_field_label(label);
    }
    ["metadata.name", "metadata.namespace"]
        .into_iter()
        .chain(selectable(resource).iter().copied())
        .find(|l| *l == label)
}

/// Where a stored field label reads: an Event's `source` is its `source.component`, else its
/// `reportingComponent`.
fn pointers(resource: &Resource, label: &str) -> Vec<String> {
    if events::is_event(resource) && label == "source" {
        return vec![
            "/source/component".to_owned(),
            "/reportingComponent".to_owned(),
        ];
    }
    vec![format!("/{}", label.replace('.', "/"))]
}

impl FieldSelector {
    pub fn parse(text: &str, resource: &Resource) -> ApiResult<Self> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            let label = stored_label(resource, field).ok_or_else(|| {
                ApiError::bad_request(format!("field label not supported: {field}"))
            })?;
            terms.push(FieldTerm {
                pointers: pointers(resource, label),
                equal,
                value: value.trim().to_owned(),
            });
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|term| {
            let actual = term
                .pointers
                .iter()
                .map(|pointer| match object.pointer(pointer) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                })
                .find(|v| !v.is_empty())
                .unwrap_or_default();
            (actual == term.value) == term.equal
        })
    }
}
