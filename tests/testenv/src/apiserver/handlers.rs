//! HTTP routing: discovery, OpenAPI, and the verbs on resources and their subresources.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Query, State},
    http::{header, HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use serde_json::{json, Value};

use super::{
    discovery,
    error::{ApiError, ApiResult},
    events,
    patch::{self, PatchType},
    protobuf::{self, Unreadable},
    resources::Resource,
    selector::{FieldSelector, LabelSelector},
    store::{
        unknown_fields, ApplyRecord, DeleteOptions, Deleted, FieldValidation, Part, Store, Update,
        WriteOptions, Written,
    },
    table::{self, IncludeObject},
    watch::{self, WatchRequest},
    Shared,
};

/// A request on a resource: `/api/v1/namespaces/default/pods/x/status`.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// What a request carries besides its path.
struct Request {
    method: Method,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }

    fn wants_table(&self) -> bool {
        self.headers
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| {
                a.split(',')
                    .next()
                    .is_some_and(|first| first.contains("as=Table"))
            })
    }

    fn write_options(&self) -> ApiResult<WriteOptions> {
        let field_validation = match self.param("fieldValidation") {
            None | Some("Warn") => FieldValidation::Warn,
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
                )))
            }
        };
        Ok(WriteOptions {
            field_validation,
            dry_run: self.param("dryRun") == Some("All"),
        })
    }

    /// The body as JSON. Protobuf bodies (kubectl's typed commands send them) are read for the
    /// kinds those commands create (`protobuf`); others, and CBOR, get 415.
    fn json_body(&self) -> ApiResult<Value> {
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .unwrap_or_default();
        if content_type.contains("protobuf") {
            return protobuf::to_json(&self.body).map_err(|e| match e {
                Unreadable::Kind => ApiError::unsupported_media_type(content_type),
                Unreadable::Malformed(why) => {
                    ApiError::bad_request(format!("the request body is not valid protobuf: {why}"))
                }
            });
        }
        if content_type.contains("cbor") {
            return Err(ApiError::unsupported_media_type(content_type));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
    }
}

/// The one handler of the router.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let ["api", "v1", "namespaces", namespace, "pods", name, "log"] = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()[..]
    {
        if method == Method::GET {
            return super::logs::pod_log(shared, namespace, name, uri.query()).await;
        }
    }
    let query = Query::<HashMap<String, String>>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let request = Request {
        method,
        query,
        headers,
        body,
    };
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    match route(&shared, &segments, &request) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn json_response(code: StatusCode, value: &Value, warnings: &[String]) -> Response {
    let mut builder = Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json");
    for warning in warnings {
        let escaped = warning.replace('\\', "\\\\").replace('"', "\\\"");
        builder = builder.header("Warning", format!("299 - \"{escaped}\""));
    }
    builder
        .body(Body::from(value.to_string()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn ok(value: Value) -> ApiResult<Response> {
    Ok(json_response(StatusCode::OK, &value, &[]))
}

fn route(shared: &Arc<Shared>, segments: &[&str], request: &Request) -> ApiResult<Response> {
    let discovery_only = |value: Option<Value>| -> ApiResult<Response> {
        if request.method != Method::GET {
            return Err(ApiError::method_not_allowed());
        }
        value
            .map(ok)
            .unwrap_or_else(|| Err(ApiError::not_found_path()))
    };
    match segments {
        ["version"] => discovery_only(Some(discovery::version())),
        ["healthz" | "readyz" | "livez"] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => discovery_only(Some(discovery::core_versions(&shared.address.to_string()))),
        ["api", version] => discovery_only(discovery::resource_list(
            &shared.lock().registry,
            "",
            version,
        )),
        ["apis"] => discovery_only(Some(discovery::groups(&shared.lock().registry))),
        ["apis", group] => discovery_only(discovery::group(&shared.lock().registry, group)),
        ["apis", group, version] => discovery_only(discovery::resource_list(
            &shared.lock().registry,
            group,
            version,
        )),
        ["openapi", "v3"] => {
            discovery_only(Some(discovery::openapi_v3_root(&shared.lock().registry)))
        }
        ["openapi", "v3", "api", version] => {
            discovery_only(discovery::openapi_v3(&shared.lock().registry, "", version))
        }
        ["openapi", "v3", "apis", group, version] => discovery_only(discovery::openapi_v3(
            &shared.lock().registry,
            group,
            version,
        )),
        ["api", version, rest @ ..] => resource_request(shared, "", version, rest, request),
        ["apis", group, version, rest @ ..] => {
            resource_request(shared, group, version, rest, request)
        }
        _ => Err(ApiError::not_found_path()),
    }
}

fn target(shared: &Shared, group: &str, version: &str, rest: &[&str]) -> ApiResult<Target> {
    let store = shared.lock();
    let registry = &store.registry;
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && registry
            .get(group, version, rest[2])
            .is_some_and(|r| r.namespaced);
    let (namespace, rest) = if namespaced_path {
        (Some(rest[1].to_owned()), &rest[2..])
    } else {
        (None, rest)
    };
    let resource = registry
        .get(group, version, rest[0])
        .cloned()
        .ok_or_else(ApiError::not_found_path)?;
    if rest.len() > 3 || (!resource.namespaced && namespace.is_some()) {
        return Err(ApiError::not_found_path());
    }
    let name = rest.get(1).map(|s| (*s).to_owned());
    if resource.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::not_found_path());
    }
    let subresource = rest.get(2).map(|s| (*s).to_owned());
    let known = match subresource.as_deref() {
        None => true,
        Some("status") => resource.status,
        Some("scale") => resource.scale.is_some(),
        Some("binding") => resource.binding,
        Some(_) => false,
    };
    if !known {
        return Err(ApiError::not_found_path());
    }
    Ok(Target {
        resource,
        namespace,
        name,
        subresource,
    })
}

fn resource_request(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    request: &Request,
) -> ApiResult<Response> {
    let target = target(shared, group, version, rest)?;
    let sub = target.subresource.as_deref();
    match (&request.method, target.name.as_deref(), sub) {
        (&Method::GET, None, _) if request.flag("watch") => {
            start_watch(shared, &target, request, None)
        }
        (&Method::GET, None, _) => list(shared, &target, request),
        (&Method::GET, Some(name), _) if request.flag("watch") => {
            start_watch(shared, &target, request, Some(name))
        }
        (&Method::GET, Some(name), Some("scale")) => {
            let object = shared
                .lock()
                .get(&target.resource, namespace(&target), name)?;
            ok(scale_of(&target.resource, &object))
        }
        (&Method::GET, Some(name), _) => {
            let object = shared
                .lock()
                .get(&target.resource, namespace(&target), name)?;
            respond(&target.resource, request, StatusCode::OK, object, &[])
        }
        (&Method::POST, None, None) => create(shared, &target, request),
        (&Method::POST, Some(name), Some("binding")) => bind(shared, &target, name, request),
        (&Method::PUT, Some(name), _) => replace(shared, &target, name, request),
        (&Method::PATCH, Some(name), _) => patch_object(shared, &target, name, request),
        (&Method::DELETE, Some(name), None) => delete(shared, &target, name, request),
        (&Method::DELETE, None, None) => delete_collection(shared, &target, request),
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn namespace(target: &Target) -> &str {
    target.namespace.as_deref().unwrap_or_default()
}

/// A stored object in the requested version.
fn present(resource: &Resource, object: Value) -> Value {
    resource.present(object)
}

/// A body sent to `resource` in its stored form, with the warnings about the fields its version
/// does not have.
fn stored_form(
    resource: &Resource,
    body: Value,
    options: WriteOptions,
) -> ApiResult<(Value, Vec<String>)> {
    let (object, unknown) = events::to_storage(resource, body);
    let warnings = unknown_fields(resource, &unknown, options.field_validation)?;
    Ok((object, warnings))
}

/// Puts the warnings about a body before those of its write.
fn with_warnings(mut written: Written, mut warnings: Vec<String>) -> Written {
    warnings.append(&mut written.warnings);
    written.warnings = warnings;
    written
}

/// One object, as itself or as a Table.
fn respond(
    resource: &Resource,
    request: &Request,
    code: StatusCode,
    object: Value,
    warnings: &[String],
) -> ApiResult<Response> {
    let object = present(resource, object);
    let body = if request.wants_table() {
        let rv = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        table::table(
            resource,
            &[object],
            rv,
            IncludeObject::parse(request.param("includeObject")),
        )
    } else {
        object
    };
    Ok(json_response(code, &body, warnings))
}

fn selectors(
    target: &Target,
    request: &Request,
    name: Option<&str>,
) -> ApiResult<(LabelSelector, FieldSelector)> {
    let labels = LabelSelector::parse(request.param("labelSelector").unwrap_or_default())?;
    let mut field_text = request
        .param("fieldSelector")
        .unwrap_or_default()
        .to_owned();
    if let Some(name) = name {
        if !field_text.is_empty() {
            field_text.push(',');
        }
        field_text.push_str(&format!("metadata.name={name}"));
    }
    let fields = FieldSelector::parse(&field_text, &target.resource)?;
    Ok((labels, fields))
}

fn list(shared: &Shared, target: &Target, request: &Request) -> ApiResult<Response> {
    let (labels, fields) = selectors(target, request, None)?;
    let (items, rv) = {
        let store = shared.lock();
        (
            store.list(
                &target.resource,
                target.namespace.as_deref(),
                &labels,
                &fields,
            ),
            store.resource_version(),
        )
    };
    let items: Vec<Value> = items
        .into_iter()
        .map(|o| present(&target.resource, o))
        .collect();
    let body = if request.wants_table() {
        table::table(
            &target.resource,
            &items,
            rv,
            IncludeObject::parse(request.param("includeObject")),
        )
    } else {
        json!({
            "kind": format!("{}List", target.resource.kind),
            "apiVersion": target.resource.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        })
    };
    ok(body)
}

fn start_watch(
    shared: &Arc<Shared>,
    target: &Target,
    request: &Request,
    name: Option<&str>,
) -> ApiResult<Response> {
    let (labels, fields) = selectors(target, request, name)?;
    let resource_version = match request.param("resourceVersion") {
        None | Some("0") => None,
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {text}")))?,
        ),
    };
    let timeout = request
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let table = request.wants_table();
    let include = IncludeObject::parse(request.param("includeObject"));
    let render: watch::Render = if table {
        Box::new(move |resource, object| {
            let rv = object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            table::table(resource, std::slice::from_ref(object), rv, include)
        })
    } else {
        Box::new(|_, object| object.clone())
    };
    let watch = WatchRequest {
        resource: target.resource.clone(),
        namespace: target.namespace.clone(),
        labels,
        fields,
        resource_version,
        send_initial_events: request.flag("sendInitialEvents"),
        bookmarks: request.flag("allowWatchBookmarks"),
        timeout: Duration::from_secs(timeout),
        render,
    };
    let body = watch::watch(Arc::clone(shared), watch);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn created(target: &Target, request: &Request, written: Written) -> ApiResult<Response> {
    respond(
        &target.resource,
        request,
        StatusCode::CREATED,
        written.object,
        &written.warnings,
    )
}

fn create(shared: &Shared, target: &Target, request: &Request) -> ApiResult<Response> {
    let options = request.write_options()?;
    let (object, warnings) = stored_form(&target.resource, request.json_body()?, options)?;
    let written = shared.write(|store| {
        store.create(
            &target.resource,
            target.namespace.as_deref(),
            object,
            options,
        )
    })?;
    created(target, request, with_warnings(written, warnings))
}

fn part_of(target: &Target) -> Part {
    match target.subresource.as_deref() {
        Some("status") => Part::Status,
        _ => Part::Main,
    }
}

fn replace(shared: &Shared, target: &Target, name: &str, request: &Request) -> ApiResult<Response> {
    let options = request.write_options()?;
    let body = request.json_body()?;
    let written = shared.write(|store| update_object(store, target, name, body, options))?;
    finish_write(target, request, written)
}

/// Writes the new state of an object sent by a replace or a patch: for the scale subresource
/// `body` is a Scale, applied to the stored object. Returns the write and whether it was to the
/// scale subresource.
fn update_object(
    store: &mut Store,
    target: &Target,
    name: &str,
    body: Value,
    options: WriteOptions,
) -> ApiResult<(Written, bool)> {
    let resource = &target.resource;
    let ns = namespace(target);
    if target.subresource.as_deref() == Some("scale") {
        let object = store.get(resource, ns, name)?;
        let scaled = with_scale(resource, object, &body)?;
        return store
            .update(
                resource,
                ns,
                name,
                scaled,
                Update::plain(Part::Main, options),
            )
            .map(|w| (w, true));
    }
    let (object, warnings) = stored_form(resource, body, options)?;
    store
        .update(
            resource,
            ns,
            name,
            object,
            Update::plain(part_of(target), options),
        )
        .map(|w| (with_warnings(w, warnings), false))
}

/// Answers a write, as a Scale for the scale subresource.
fn finish_write(
    target: &Target,
    request: &Request,
    (written, scale): (Written, bool),
) -> ApiResult<Response> {
    if scale {
        return Ok(json_response(
            StatusCode::OK,
            &scale_of(&target.resource, &written.object),
            &written.warnings,
        ));
    }
    respond(
        &target.resource,
        request,
        StatusCode::OK,
        written.object,
        &written.warnings,
    )
}

fn patch_object(
    shared: &Shared,
    target: &Target,
    name: &str,
    request: &Request,
) -> ApiResult<Response> {
    let content_type = request
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or_default();
    let patch_type = PatchType::from_content_type(content_type)?;
    if patch_type == PatchType::Strategic && target.resource.custom {
        return Err(ApiError::unsupported_media_type(content_type));
    }
    let options = request.write_options()?;
    let resource = &target.resource;
    let ns = namespace(target);
    if patch_type == PatchType::Apply {
        if target.subresource.as_deref() == Some("scale") {
            return Err(ApiError::unsupported_media_type(content_type));
        }
        return apply(shared, target, name, request, options);
    }
    let body = request.json_body()?;
    let result = shared.write(|store| {
        let current = store.get(resource, ns, name)?;
        let scale = target.subresource.as_deref() == Some("scale");
        let mut patched = if scale {
            scale_of(resource, &current)
        } else {
            present(resource, current)
        };
        match patch_type {
            PatchType::Merge => json_patch::merge(&mut patched, &body),
            PatchType::Json => patch::json_patch(&mut patched, &body)?,
            PatchType::Strategic => {
                patch::strategic_merge_patch(&mut patched, &body, resource.shape())
            }
            PatchType::Apply => unreachable!("apply patches are handled above"),
        }
        update_object(store, target, name, patched, options)
    })?;
    finish_write(target, request, result)
}

/// Server-side apply.
fn apply(
    shared: &Shared,
    target: &Target,
    name: &str,
    request: &Request,
    options: WriteOptions,
) -> ApiResult<Response> {
    let resource = &target.resource;
    let ns = namespace(target);
    let manager = request
        .param("fieldManager")
        .ok_or_else(|| ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"))?
        .to_owned();
    let force = request.flag("force");
    let config: Value = serde_yaml::from_slice(&request.body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "the applied configuration must be an object",
        ));
    }
    for field in ["apiVersion", "kind"] {
        if config
            .get(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(format!("{field} must be set")));
        }
    }
    if let Some(body_name) = config.pointer("/metadata/name").and_then(Value::as_str) {
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
    }
    let (mut config, warnings) = stored_form(resource, config, options)?;
    let part = part_of(target);
    if let Value::Object(map) = &mut config {
        match part {
            Part::Status => map
                .retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")),
            Part::Main if resource.status => {
                map.remove("status");
            }
            Part::Main => {}
        }
    }
    let precondition = config.pointer("/metadata/resourceVersion").cloned();
    if let Some(Value::Object(metadata)) = config.get_mut("metadata") {
        metadata.remove("resourceVersion");
        metadata.remove("managedFields");
    }
    let shape = resource.shape();
    let written = shared.write(|store| -> ApiResult<(Written, StatusCode)> {
        let current = match store.get(resource, ns, name) {
            Ok(current) => current,
            Err(_) if part == Part::Main => {
                let mut object = config.clone();
                object["metadata"]["name"] = Value::String(name.to_owned());
                let written = store.create_with(
                    resource,
                    target.namespace.as_deref(),
                    &mut object,
                    options,
                    Some((manager.clone(), config.clone())),
                )?;
                return Ok((written, StatusCode::CREATED));
            }
            Err(e) => return Err(e),
        };
        let mut others = store.other_applied(resource, ns, name, &manager, part);
        let conflicts = patch::conflicts(&config, &others, shape);
        if !conflicts.is_empty() {
            if !force {
                return Err(apply_conflict(resource, name, &conflicts));
            }
            for conflict in &conflicts {
                if let Some(theirs) = others.get_mut(&conflict.manager) {
                    patch::release_fields(theirs, &config, shape);
                }
            }
        }
        let previous = store.applied_by(resource, ns, name, &manager, part);
        let other_refs: Vec<&Value> = others.values().collect();
        let mut live = current;
        patch::server_side_apply(&mut live, previous.as_ref(), &config, &other_refs, shape);
        drop(other_refs);
        if let Some(rv) = precondition {
            live["metadata"]["resourceVersion"] = rv;
        }
        let record = ApplyRecord {
            manager: manager.clone(),
            config: config.clone(),
            others,
        };
        let written = store.update(
            resource,
            ns,
            name,
            live,
            Update {
                part,
                options,
                applied: Some(record),
            },
        )?;
        Ok((written, StatusCode::OK))
    })?;
    let (written, code) = written;
    let written = with_warnings(written, warnings);
    respond(resource, request, code, written.object, &written.warnings)
}

fn apply_conflict(resource: &Resource, name: &str, conflicts: &[patch::Conflict]) -> ApiError {
    let mut error = ApiError::conflict(resource, name, "");
    let listed: Vec<String> = conflicts
        .iter()
        .map(|c| format!("conflict with \"{}\": {}", c.manager, c.field))
        .collect();
    let plural = if conflicts.len() == 1 { "" } else { "s" };
    error.message = format!(
        "Apply failed with {} conflict{plural}: {}",
        conflicts.len(),
        listed.join("\n")
    );
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field}))
        .collect();
    if let Some(details) = &mut error.details {
        details["causes"] = Value::Array(causes);
    }
    error
}

fn delete_options(request: &Request) -> ApiResult<DeleteOptions> {
    let body: Value = if request.body.is_empty() {
        json!({})
    } else {
        request.json_body()?
    };
    let grace = body
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| {
            request
                .param("gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
        });
    let text = |key: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| request.param(key).map(str::to_owned))
    };
    let dry_run = body
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|d| d.iter().any(|v| v == "All"))
        || request.param("dryRun") == Some("All");
    let propagation_policy = text("propagationPolicy").or_else(|| {
        match body.get("orphanDependents").and_then(Value::as_bool) {
            Some(true) => Some("Orphan".to_owned()),
            _ => None,
        }
    });
    Ok(DeleteOptions {
        grace_period_seconds: grace,
        propagation_policy,
        precondition_uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_owned),
        precondition_resource_version: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        dry_run,
    })
}

fn delete(shared: &Shared, target: &Target, name: &str, request: &Request) -> ApiResult<Response> {
    let options = delete_options(request)?;
    let deleted =
        shared.write(|store| store.delete(&target.resource, namespace(target), name, &options))?;
    let resource = &target.resource;
    match deleted {
        Deleted::Pending(object) => Ok(json_response(
            StatusCode::ACCEPTED,
            &present(resource, object),
            &[],
        )),
        Deleted::Removed(object) if resource.group.is_empty() && resource.plural == "pods" => {
            ok(present(resource, object))
        }
        Deleted::Removed(object) => ok(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": name,
                "group": resource.group,
                "kind": resource.plural,
                "uid": object.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
            },
        })),
    }
}

fn delete_collection(shared: &Shared, target: &Target, request: &Request) -> ApiResult<Response> {
    let options = delete_options(request)?;
    let (labels, fields) = selectors(target, request, None)?;
    let resource = &target.resource;
    let items = shared.write(|store| -> ApiResult<Vec<Value>> {
        let objects = store.list(resource, target.namespace.as_deref(), &labels, &fields);
        let mut deleted = Vec::new();
        for object in objects {
            let ns = object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let name = object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            match store.delete(resource, &ns, &name, &options) {
                Ok(Deleted::Removed(o) | Deleted::Pending(o)) => deleted.push(present(resource, o)),
                Err(e) if e.code == StatusCode::NOT_FOUND => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    })?;
    let rv = shared.lock().resource_version();
    ok(json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    }))
}

/// `pods/binding`: assigns a pod to a node, as the scheduler does.
fn bind(shared: &Shared, target: &Target, name: &str, request: &Request) -> ApiResult<Response> {
    let binding = request.json_body()?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("a Binding needs target.name"))?
        .to_owned();
    let resource = &target.resource;
    let ns = namespace(target);
    shared.write(|store| -> ApiResult<()> {
        let mut pod = store.get(resource, ns, name)?;
        if let Some(current) = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(resource, name, &format!("pod {name} is already assigned to node \"{current}\"")));
        }
        pod["spec"]["nodeName"] = Value::String(node.clone());
        let mut pod = store.update(resource, ns, name, pod, Update::plain(Part::Main, WriteOptions::default()))?.object;
        let condition = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": super::store::now()});
        let conditions = &mut pod["status"]["conditions"];
        match conditions {
            Value::Array(list) => {
                list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
                list.push(condition);
            }
            _ => *conditions = json!([condition]),
        }
        store.update(resource, ns, name, pod, Update::plain(Part::Status, WriteOptions::default()))?;
        Ok(())
    })?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &[],
    ))
}

/// `.spec.replicas` as a JSON pointer.
fn pointer(json_path: &str) -> String {
    json_path
        .trim_start_matches('.')
        .split('.')
        .fold(String::new(), |p, part| format!("{p}/{part}"))
}

/// The `autoscaling/v1 Scale` of a custom resource with the scale subresource.
fn scale_of(resource: &Resource, object: &Value) -> Value {
    let Some(scale) = &resource.scale else {
        return Value::Null;
    };
    let metadata = object.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let mut status = json!({
        "replicas": object.pointer(&pointer(&scale.status_replicas_path)).cloned().unwrap_or(json!(0)),
    });
    if let Some(selector) = scale
        .label_selector_path
        .as_deref()
        .and_then(|p| object.pointer(&pointer(p)))
    {
        status["selector"] = selector.clone();
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "uid": metadata.get("uid"),
            "resourceVersion": metadata.get("resourceVersion"),
            "creationTimestamp": metadata.get("creationTimestamp"),
        },
        "spec": {"replicas": object.pointer(&pointer(&scale.spec_replicas_path)).cloned().unwrap_or(json!(0))},
        "status": status,
    })
}

/// The object with the replicas of a Scale written to its spec.
fn with_scale(resource: &Resource, mut object: Value, scale: &Value) -> ApiResult<Value> {
    let spec = resource
        .scale
        .as_ref()
        .ok_or_else(ApiError::not_found_path)?;
    let replicas = scale
        .pointer("/spec/replicas")
        .filter(|r| r.is_i64())
        .ok_or_else(|| ApiError::bad_request("Scale.spec.replicas must be an integer"))?
        .clone();
    if let Some(rv) = scale
        .pointer("/metadata/resourceVersion")
        .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
    {
        object["metadata"]["resourceVersion"] = rv.clone();
    }
    let path = pointer(&spec.spec_replicas_path);
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let last = parts
        .pop()
        .ok_or_else(|| ApiError::internal("empty specReplicasPath"))?;
    let mut node = &mut object;
    for part in parts {
        if !node.get(part).is_some_and(Value::is_object) {
            node[part] = json!({});
        }
        node = &mut node[part];
    }
    node[last] = replicas;
    Ok(object)
}
