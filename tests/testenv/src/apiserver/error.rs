//! Kubernetes `Status` errors, as the real API server returns them.

use axum::{
    body::Body,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{json, Value};

use super::resources::Resource;

/// One problem with one field, rendered like `k8s.io/apimachinery/pkg/util/validation/field.Error`.
#[derive(Clone, Debug)]
pub(crate) struct FieldError {
    /// The field path, such as `spec.workerGroups[0].replicas`.
    pub field: String,
    pub kind: FieldErrorKind,
    /// Free-text detail appended after the value.
    pub detail: String,
}

/// The error types of `field.Error`, with the bad value where the type shows one.
#[derive(Clone, Debug)]
pub(crate) enum FieldErrorKind {
    Invalid(Value),
    Required,
    NotSupported(Value),
    Duplicate(Value),
    TooLong,
    TooMany(Value),
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Invalid(value.clone()),
            detail: detail.into(),
        }
    }

    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Required,
            detail: detail.into(),
        }
    }

    pub fn new(field: impl Into<String>, kind: FieldErrorKind, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind,
            detail: detail.into(),
        }
    }

    /// The `reason` of the `StatusCause`.
    fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Invalid(_) => "FieldValueInvalid",
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::NotSupported(_) => "FieldValueNotSupported",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::TooMany(_) => "FieldValueTooMany",
        }
    }

    /// The message without the field, e.g. `Invalid value: -1: must be ...`.
    pub fn body(&self) -> String {
        let (kind, value) = match &self.kind {
            FieldErrorKind::Invalid(v) => ("Invalid value", Some(v)),
            FieldErrorKind::Required => ("Required value", None),
            FieldErrorKind::NotSupported(v) => ("Unsupported value", Some(v)),
            FieldErrorKind::Duplicate(v) => ("Duplicate value", Some(v)),
            FieldErrorKind::TooLong => ("Too long", None),
            FieldErrorKind::TooMany(v) => ("Too many", Some(v)),
        };
        let mut body = match (&self.kind, value) {
            (FieldErrorKind::Duplicate(v), _) => format!("{kind}: {v}"),
            (_, Some(v)) => format!("{kind}: {}", render_value(v)),
            (_, None) => kind.to_owned(),
        };
        if !self.detail.is_empty() {
            body.push_str(": ");
            body.push_str(&self.detail);
        }
        body
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.body())
        } else {
            write!(f, "{}: {}", self.field, self.body())
        }
    }
}

/// A value as Go's `%v`/`%q` shows it in field errors: strings quoted, the rest as JSON.
fn render_value(value: &Value) -> String {
    match value {
        Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => value.to_string(),
        Value::Object(_) => "\"object\"".to_owned(),
        Value::Array(_) => "\"array\"".to_owned(),
    }
}

/// An error answered as a `meta/v1 Status` object.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn plain(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::plain(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found_path() -> Self {
        Self::plain(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {content_type:?})"),
        )
    }

    /// `pods "x" not found`.
    pub fn not_found(resource: &Resource, name: &str) -> Self {
        Self::not_found_in(&resource.group, &resource.plural, name)
    }

    pub fn not_found_in(group: &str, plural: &str, name: &str) -> Self {
        let qualified = qualified(group, plural);
        Self {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: format!("{qualified} \"{name}\" not found"),
            details: Some(json!({"name": name, "group": group, "kind": plural})),
        }
    }

    /// `pods "x" already exists`.
    pub fn already_exists(resource: &Resource, name: &str) -> Self {
        Self {
            code: StatusCode::CONFLICT,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", resource.group_resource()),
            details: Some(json!({"name": name, "group": resource.group, "kind": resource.plural})),
        }
    }

    /// `pods "x" is forbidden: ...`: an admission plugin refused the write.
    pub fn forbidden(plural: &str, name: &str, why: &str) -> Self {
        Self {
            code: StatusCode::FORBIDDEN,
            reason: "Forbidden",
            message: format!("{plural} \"{name}\" is forbidden: {why}"),
            details: Some(json!({"name": name, "kind": plural})),
        }
    }

    /// A conflict such as a stale resourceVersion.
    pub fn conflict(resource: &Resource, name: &str, why: &str) -> Self {
        Self {
            code: StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                resource.group_resource()
            ),
            details: Some(json!({"name": name, "group": resource.group, "kind": resource.plural})),
        }
    }

    /// The stale-object conflict of optimistic concurrency.
    pub fn modified(resource: &Resource, name: &str) -> Self {
        Self::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// `ComputeCluster.flotilla.dev "x" is invalid: ...` with one cause per field error.
    pub fn invalid(resource: &Resource, name: &str, errors: &[FieldError]) -> Self {
        let listed = match errors {
            [one] => one.to_string(),
            many => format!(
                "[{}]",
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason(), "message": e.body(), "field": e.field}))
            .collect();
        Self {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message: format!(
                "{} \"{name}\" is invalid: {listed}",
                resource.qualified_kind()
            ),
            details: Some(
                json!({"name": name, "group": resource.group, "kind": resource.kind, "causes": causes}),
            ),
        }
    }

    /// The 410 of a watch or list from a resourceVersion that is no longer kept.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::plain(StatusCode::GONE, "Expired", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::plain(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// `pods` or `computeclusters.flotilla.dev`.
pub(crate) fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.to_status().to_string();
        Response::builder()
            .status(self.code)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// The result of a handler.
pub(crate) type ApiResult<T> = Result<T, ApiError>;
