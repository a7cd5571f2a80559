//! The conformance case format (`cases.json`) and the judge applying its `conventions` to one
//! response.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

use crate::client::TestResponse;

/// A `cases.json` file.
#[derive(Debug, Clone, Deserialize)]
pub struct Suite {
    pub tests: Vec<TestSpec>,
}

impl Suite {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct TestSpec {
    pub name: String,
    /// Manifest applied after the base manifests, relative to the suite directory.
    pub manifest: String,
    /// The Gateway (`namespace/name`) the test's routes attach to; other base Gateways are
    /// left out.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Extension: the base manifests to use instead of `manifests/base-manifests.yaml`.
    #[serde(default)]
    pub base: Option<String>,
    /// Extension: CA trusted for `https` requests: `local-ca` (torhaus's own CA, from
    /// `torhaus ca export`) or a PEM path relative to the suite directory.
    #[serde(default)]
    pub tls_ca: Option<String>,
    pub cases: Vec<Case>,
    #[serde(default)]
    pub distribution: Option<Distribution>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub request: CaseRequest,
    pub expect: Expect,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CaseRequest {
    #[serde(default)]
    pub method: Option<String>,
    pub path: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub follow_redirects: bool,
    /// Extension: `http` (default) or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Extension: TLS server name; defaults to the Host without port.
    #[serde(default)]
    pub sni: Option<String>,
    /// Extension: the Gateway listener port to connect to; defaults to 80 / 443 by scheme.
    #[serde(default)]
    pub port: Option<u16>,
}

impl CaseRequest {
    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("GET")
    }

    pub fn is_https(&self) -> bool {
        self.scheme.as_deref() == Some("https")
    }

    pub fn gateway_port(&self) -> u16 {
        self.port.unwrap_or(if self.is_https() { 443 } else { 80 })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Expect {
    pub status: u16,
    /// Extension: other statuses that are equally acceptable (e.g. 204 for a CORS preflight).
    #[serde(default)]
    pub also_status: Vec<u16>,
    /// Echo `pod` prefix; `any of a|b` accepts several.
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub backend_request: Option<BackendRequest>,
    #[serde(default)]
    pub redirect: Option<Redirect>,
    /// Extension: response headers that must be present with this (comma-joined) value.
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    /// Extension: response headers whose comma-separated values must include this token
    /// (case-insensitive), e.g. one method of `Access-Control-Allow-Methods`.
    #[serde(default)]
    pub response_header_contains: BTreeMap<String, String>,
    /// Extension: response headers that must be absent.
    #[serde(default)]
    pub absent_response_headers: Vec<String>,
    /// Extension: a deployment one of whose pods must also receive a copy of this request.
    #[serde(default)]
    pub mirrored_to: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BackendRequest {
    #[serde(default)]
    pub path: Option<String>,
    /// Extension: the Host the backend must see.
    #[serde(default)]
    pub host: Option<String>,
    /// Extension: the method the backend must see.
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub absent_headers: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Redirect {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
}

/// A statistical check: send `total_requests`, compare shares.
#[derive(Debug, Clone, Deserialize)]
pub struct Distribution {
    pub request: CaseRequest,
    pub total_requests: usize,
    pub concurrency: usize,
    pub tolerance_abs: f64,
    #[serde(default)]
    pub max_retries: Option<usize>,
    /// Keys are deployment names (pod prefixes) or, as an extension, `status:<code>` for
    /// responses that are not from a backend.
    pub expected_fraction: BTreeMap<String, f64>,
}

/// What a response is counted as in a distribution: the deployment or `status:<code>`.
pub fn distribution_bucket(response: &TestResponse, expected: &BTreeMap<String, f64>) -> String {
    if response.status.as_u16() == 200
        && let Ok(echo) = response.echo()
        && let Some(pod) = echo.get("pod").and_then(|p| p.as_str())
    {
        return expected
            .keys()
            .find(|name| pod.starts_with(name.as_str()))
            .cloned()
            .unwrap_or_else(|| format!("pod:{pod}"));
    }
    format!("status:{}", response.status.as_u16())
}

/// Applies the suite's conventions; `Err` explains the first mismatch.
pub fn judge(
    request: &CaseRequest,
    expect: &Expect,
    response: &TestResponse,
) -> Result<(), String> {
    let status = response.status.as_u16();
    if status != expect.status && !expect.also_status.contains(&status) {
        return Err(format!(
            "status {status}, expected {}; body {:?}",
            expect.status,
            String::from_utf8_lossy(&response.body)
        ));
    }
    for (name, want) in &expect.response_headers {
        let got = joined_response_header(response, name);
        if got.as_deref() != Some(want.as_str()) {
            return Err(format!(
                "response header {name}: got {got:?}, expected {want:?}"
            ));
        }
    }
    for (name, token) in &expect.response_header_contains {
        let got = joined_response_header(response, name).unwrap_or_default();
        if !got
            .split(',')
            .any(|value| value.trim().eq_ignore_ascii_case(token))
        {
            return Err(format!(
                "response header {name}: {got:?} does not list {token:?}"
            ));
        }
    }
    for name in &expect.absent_response_headers {
        if response.headers.contains_key(name.as_str()) {
            return Err(format!(
                "response header {name} must be absent, got {:?}",
                joined_response_header(response, name)
            ));
        }
    }
    if let Some(redirect) = &expect.redirect {
        judge_redirect(request, redirect, response)?;
    }
    let needs_echo =
        expect.backend.is_some() || expect.namespace.is_some() || expect.backend_request.is_some();
    if !needs_echo {
        return Ok(());
    }
    let echo = response.echo().map_err(|e| format!("{e:#}"))?;
    let field = |name: &str| echo.get(name).and_then(|v| v.as_str()).unwrap_or_default();
    if let Some(backend) = &expect.backend {
        let pod = field("pod");
        let accepted: Vec<&str> = match backend.strip_prefix("any of ") {
            Some(list) => list.split('|').map(str::trim).collect(),
            None => vec![backend.as_str()],
        };
        if !accepted.iter().any(|prefix| pod.starts_with(prefix)) {
            return Err(format!("served by pod {pod:?}, expected {backend}"));
        }
    }
    if let Some(namespace) = &expect.namespace
        && field("namespace") != namespace
    {
        return Err(format!(
            "backend namespace {:?}, expected {namespace:?}",
            field("namespace")
        ));
    }
    let backend_request = expect.backend_request.clone().unwrap_or_default();
    let want_path = backend_request.path.as_deref().unwrap_or(&request.path);
    if field("path") != want_path {
        return Err(format!(
            "backend saw path {:?}, expected {want_path:?}",
            field("path")
        ));
    }
    if let Some(host) = &backend_request.host
        && field("host") != host
    {
        return Err(format!(
            "backend saw host {:?}, expected {host:?}",
            field("host")
        ));
    }
    if let Some(method) = &backend_request.method
        && field("method") != method
    {
        return Err(format!(
            "backend saw method {:?}, expected {method:?}",
            field("method")
        ));
    }
    for (name, want) in &backend_request.headers {
        let got = echo_header(&echo, name);
        if got.as_deref() != Some(want.as_str()) {
            return Err(format!(
                "backend header {name}: got {got:?}, expected {want:?}"
            ));
        }
    }
    for name in &backend_request.absent_headers {
        if let Some(got) = echo_header(&echo, name) {
            return Err(format!("backend header {name} must be absent, got {got:?}"));
        }
    }
    Ok(())
}

fn joined_response_header(response: &TestResponse, name: &str) -> Option<String> {
    let values: Vec<String> = response
        .headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// A header from the echo JSON, found case-insensitively, values comma-joined.
pub fn echo_header(echo: &serde_json::Value, name: &str) -> Option<String> {
    let headers = echo.get("headers")?.as_object()?;
    let (_, values) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))?;
    let values: Vec<&str> = values
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    Some(values.join(","))
}

/// The parts of a `Location` header; relative references inherit scheme and authority.
#[derive(Debug, PartialEq, Eq)]
pub struct Location {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<String>,
    pub path: String,
}

pub fn parse_location(location: &str) -> Location {
    let Some((scheme, rest)) = location.split_once("://") else {
        return Location {
            scheme: None,
            host: None,
            port: None,
            path: location.to_owned(),
        };
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let (host, port) = split_host_port(authority);
    Location {
        scheme: Some(scheme.to_ascii_lowercase()),
        host: Some(host.to_owned()),
        port: port.map(str::to_owned),
        path: if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        },
    }
}

fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find("]:") {
            Some(end) => (&authority[..=end], Some(&authority[end + 2..])),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

fn judge_redirect(
    request: &CaseRequest,
    want: &Redirect,
    response: &TestResponse,
) -> Result<(), String> {
    let location = response
        .header("location")
        .ok_or_else(|| "redirect without a Location header".to_owned())?;
    let got = parse_location(location);
    let request_scheme = if request.is_https() { "https" } else { "http" };
    let scheme = got
        .scheme
        .clone()
        .unwrap_or_else(|| request_scheme.to_owned());
    if let Some(want_scheme) = &want.scheme
        && &scheme != want_scheme
    {
        return Err(format!(
            "Location {location:?}: scheme {scheme}, expected {want_scheme}"
        ));
    }
    if let Some(want_host) = &want.host
        && want_host != "*"
        && got.host.as_deref() != Some(want_host.as_str())
    {
        return Err(format!(
            "Location {location:?}: host {:?}, expected {want_host}",
            got.host
        ));
    }
    if let Some(want_port) = &want.port {
        let port = got.port.as_deref();
        let ok = match want_port.strip_suffix("-or-empty") {
            Some(default) => port.is_none_or(|p| p == default),
            None => port == Some(want_port.as_str()),
        };
        if !ok {
            return Err(format!(
                "Location {location:?}: port {port:?}, expected {want_port}"
            ));
        }
    }
    if let Some(want_path) = &want.path
        && &got.path != want_path
    {
        return Err(format!(
            "Location {location:?}: path {}, expected {want_path}",
            got.path
        ));
    }
    Ok(())
}
