//! An in-memory Kubernetes API server behind kube's mock pattern: each replica gets a real
//! `kube::Client` over a `tower_test::mock` service, and one task per client answers its
//! requests from shared state (list, watch with replay from a resourceVersion, get, create,
//! replace with optimistic concurrency, merge patch of the status subresource, delete). A client
//! can be cut off, as when its node loses the API server.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::StreamExt;
use futures::channel::mpsc;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub client: usize,
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    resource: String,
    namespace: String,
    name: String,
}

#[derive(Debug)]
struct Watch {
    client: usize,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    sender: mpsc::UnboundedSender<Bytes>,
}

#[derive(Debug, Default)]
struct State {
    version: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change, for watches that resume from a resourceVersion.
    log: Vec<(u64, &'static str, Key, Value)>,
    watches: Vec<Watch>,
    requests: Vec<Recorded>,
    down: HashSet<usize>,
    /// Per resource: how many more writes (PUT) another writer beats to it.
    interfere: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// `(group, plural)` of the kinds the tests use.
fn resource_of(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "GatewayClass" => ("gateway.networking.k8s.io", "gatewayclasses"),
        "Gateway" => ("gateway.networking.k8s.io", "gateways"),
        "HTTPRoute" => ("gateway.networking.k8s.io", "httproutes"),
        "ReferenceGrant" => ("gateway.networking.k8s.io", "referencegrants"),
        "Namespace" => ("", "namespaces"),
        "Service" => ("", "services"),
        "Secret" => ("", "secrets"),
        "EndpointSlice" => ("discovery.k8s.io", "endpointslices"),
        "Lease" => ("coordination.k8s.io", "leases"),
        "AuthPolicy" => ("torhaus.dev", "authpolicies"),
        "Issuer" => ("torhaus.dev", "issuers"),
        "ClusterIssuer" => ("torhaus.dev", "clusterissuers"),
        "DNSPublisher" => ("torhaus.dev", "dnspublishers"),
        "CustomResourceDefinition" => ("apiextensions.k8s.io", "customresourcedefinitions"),
        other => panic!("the fake API server does not know kind {other}"),
    }
}

fn resource_key(kind: &str) -> String {
    let (group, plural) = resource_of(kind);
    format!("{group}/{plural}")
}

fn text(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&raw[i + 1..i + 3], 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn full(status: StatusCode, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(value.to_string()))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

fn failure(code: u16, reason: &str, message: &str) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code
        }),
    )
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

impl FakeApi {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A real kube client whose requests this fake answers, as replica `id`.
    pub fn client(&self, id: usize) -> kube::Client {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, reply)) = handle.next_request().await {
                let response = api.answer(id, request).await;
                reply.send_response(response);
            }
        });
        kube::Client::new(service, "default")
    }

    /// Creates or replaces an object (its apiVersion and kind say where it goes).
    pub fn put(&self, mut object: Value) {
        let kind = text(&object, "/kind");
        let key = Key {
            resource: resource_key(&kind),
            namespace: text(&object, "/metadata/namespace"),
            name: text(&object, "/metadata/name"),
        };
        let mut state = self.lock();
        let created = !state.objects.contains_key(&key);
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.entry("generation").or_insert(json!(1));
            meta.entry("creationTimestamp")
                .or_insert(json!("2026-01-01T00:00:00Z"));
        }
        state.store(key, object, if created { "ADDED" } else { "MODIFIED" });
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let key = Key {
            resource: resource_key(kind),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let mut state = self.lock();
        if let Some(object) = state.objects.remove(&key) {
            state.version += 1;
            let version = state.version;
            state.emit(version, "DELETED", &key, &object);
        }
    }

    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = Key {
            resource: resource_key(kind),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.lock().objects.get(&key).cloned()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The next `count` replaces (PUT) of objects of `kind` lose a race: just before each, another
    /// writer changes the object (a new resourceVersion), so the replace fails with 409 Conflict.
    pub fn interfere_with_writes(&self, kind: &str, count: usize) {
        self.lock().interfere.insert(resource_key(kind), count);
    }

    /// Cuts replica `id` off the API server (its watches end, its requests fail) or
    /// reconnects it.
    pub fn set_down(&self, id: usize, down: bool) {
        let mut state = self.lock();
        if down {
            state.down.insert(id);
            state.watches.retain(|w| w.client != id);
        } else {
            state.down.remove(&id);
        }
    }

    async fn answer(&self, client: usize, request: Request<kube::client::Body>) -> Response<Body> {
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .ok()
            .filter(|b| !b.is_empty())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        let mut state = self.lock();
        state.requests.push(Recorded {
            client,
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: body.clone(),
        });
        if state.down.contains(&client) {
            return failure(503, "ServiceUnavailable", "the API server is unreachable");
        }
        let params: BTreeMap<String, String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_owned(), percent_decode(v)))
            .collect();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => return failure(404, "NotFound", "unknown path"),
        };
        let (namespace, rest) = match rest {
            ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
                (Some((*namespace).to_owned()), rest)
            }
            rest => (None, rest),
        };
        let (plural, name, subresource) = match rest {
            [plural] => (*plural, None, None),
            [plural, name] => (*plural, Some((*name).to_owned()), None),
            [plural, name, sub] => (*plural, Some((*name).to_owned()), Some(*sub)),
            _ => return failure(404, "NotFound", "unknown path"),
        };
        let resource = format!("{group}/{plural}");
        let key = |name: &str| Key {
            resource: resource.clone(),
            namespace: namespace.clone().unwrap_or_default(),
            name: name.to_owned(),
        };
        match (method.as_str(), name) {
            ("GET", None) => {
                let field_name = params
                    .get("fieldSelector")
                    .and_then(|f| f.strip_prefix("metadata.name="))
                    .map(str::to_owned);
                if params.get("watch").map(String::as_str) == Some("true") {
                    let from: u64 = params
                        .get("resourceVersion")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    return state.watch(client, resource, namespace, field_name, from);
                }
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|(k, _)| {
                        k.resource == resource
                            && namespace.as_ref().is_none_or(|ns| *ns == k.namespace)
                            && field_name.as_ref().is_none_or(|n| *n == k.name)
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                full(
                    StatusCode::OK,
                    &json!({
                        "apiVersion": "v1", "kind": "List",
                        "metadata": {"resourceVersion": state.version.to_string()},
                        "items": items
                    }),
                )
            }
            ("GET", Some(name)) => match state.objects.get(&key(&name)) {
                Some(object) => full(StatusCode::OK, object),
                None => failure(404, "NotFound", &format!("{plural} {name:?} not found")),
            },
            ("POST", None) => {
                let Some(object) = body else {
                    return failure(400, "BadRequest", "no body");
                };
                let name = text(&object, "/metadata/name");
                if state.objects.contains_key(&key(&name)) {
                    return failure(409, "AlreadyExists", &format!("{name} already exists"));
                }
                let stored = state.store(key(&name), object, "ADDED");
                full(StatusCode::CREATED, &stored)
            }
            ("PUT", Some(name)) => {
                let Some(object) = body else {
                    return failure(400, "BadRequest", "no body");
                };
                let interfering = match state.interfere.get_mut(&resource) {
                    Some(left) if *left > 0 => {
                        *left -= 1;
                        Some(*left)
                    }
                    _ => None,
                };
                if let Some(left) = interfering
                    && let Some(mut theirs) = state.objects.get(&key(&name)).cloned()
                {
                    theirs["metadata"]["annotations"]["test/other-writer"] =
                        json!(left.to_string());
                    state.store(key(&name), theirs, "MODIFIED");
                }
                let Some(current) = state.objects.get(&key(&name)) else {
                    return failure(404, "NotFound", "not found");
                };
                let wanted = text(&object, "/metadata/resourceVersion");
                if !wanted.is_empty() && wanted != text(current, "/metadata/resourceVersion") {
                    return failure(409, "Conflict", "the object has been modified");
                }
                let stored = state.store(key(&name), object, "MODIFIED");
                full(StatusCode::OK, &stored)
            }
            ("PATCH", Some(name)) => {
                let Some(patch) = body else {
                    return failure(400, "BadRequest", "no body");
                };
                let Some(current) = state.objects.get(&key(&name)).cloned() else {
                    return failure(404, "NotFound", "not found");
                };
                let wanted = text(&patch, "/metadata/resourceVersion");
                if !wanted.is_empty() && wanted != text(&current, "/metadata/resourceVersion") {
                    return failure(409, "Conflict", "the object has been modified");
                }
                let mut updated = current;
                if subresource == Some("status") {
                    let mut status = updated.get("status").cloned().unwrap_or(json!({}));
                    merge(&mut status, patch.get("status").unwrap_or(&Value::Null));
                    if let Some(map) = updated.as_object_mut() {
                        map.insert("status".to_owned(), status);
                    }
                } else {
                    merge(&mut updated, &patch);
                }
                let stored = state.store(key(&name), updated, "MODIFIED");
                full(StatusCode::OK, &stored)
            }
            _ => failure(405, "MethodNotAllowed", "not supported by the fake"),
        }
    }
}

impl State {
    fn store(&mut self, key: Key, mut object: Value, event: &'static str) -> Value {
        self.version += 1;
        let version = self.version;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".to_owned(), json!(version.to_string()));
        }
        self.objects.insert(key.clone(), object.clone());
        self.emit(version, event, &key, &object);
        object
    }

    fn emit(&mut self, version: u64, event: &'static str, key: &Key, object: &Value) {
        self.log.push((version, event, key.clone(), object.clone()));
        let line = Bytes::from(format!("{}\n", json!({"type": event, "object": object})));
        self.watches.retain(|w| {
            let matches = w.resource == key.resource
                && w.namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
                && w.name.as_ref().is_none_or(|n| *n == key.name);
            !matches || w.sender.unbounded_send(line.clone()).is_ok()
        });
    }

    fn watch(
        &mut self,
        client: usize,
        resource: String,
        namespace: Option<String>,
        name: Option<String>,
        from: u64,
    ) -> Response<Body> {
        let (sender, receiver) = mpsc::unbounded();
        for (version, event, key, object) in &self.log {
            let matches = *version > from
                && key.resource == resource
                && namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
                && name.as_ref().is_none_or(|n| *n == key.name);
            if matches {
                let line = format!("{}\n", json!({"type": event, "object": object}));
                let _ = sender.unbounded_send(Bytes::from(line));
            }
        }
        self.watches.push(Watch {
            client,
            resource,
            namespace,
            name,
            sender,
        });
        let stream = receiver.map(|bytes| Ok::<_, std::io::Error>(Frame::data(bytes)));
        Response::new(StreamBody::new(stream).boxed_unsync())
    }
}
