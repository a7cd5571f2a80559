//! Manifests shared by the end-to-end tests: one namespace, an HTTP and an HTTPS Gateway, and
//! echo Services (plain, h2c upstream, and a dedicated one for "never forwarded" checks).

/// Namespace holding every e2e object.
pub const E2E_NAMESPACE: &str = "e2e";
/// Hostname of the HTTPS listener; it has no certificate Secret, so the local CA serves it.
pub const LOCAL_CA_HOST: &str = "local.example.com";

fn service(name: &str, app_protocol: Option<&str>, replicas: u32) -> String {
    let app_protocol = app_protocol
        .map(|p| format!("\n      appProtocol: {p}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: e2e
spec:
  selector:
    app: {name}
  ports:
    - name: http
      port: 8080{app_protocol}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: e2e
spec:
  replicas: {replicas}
  template:
    metadata:
      labels:
        app: {name}
---
"
    )
}

/// Gateways and Services; add routes with [`route`].
pub fn base_manifests() -> String {
    let mut text = String::from(
        "apiVersion: v1
kind: Namespace
metadata:
  name: e2e
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: e2e
spec:
  gatewayClassName: \"{GATEWAY_CLASS_NAME}\"
  listeners:
    - name: http
      port: 80
      protocol: HTTP
    - name: https
      port: 443
      protocol: HTTPS
      hostname: local.example.com
      tls:
        mode: Terminate
        certificateRefs:
          - name: no-such-secret
---
",
    );
    text.push_str(&service("echo", None, 1));
    text.push_str(&service("echo-h2c", Some("kubernetes.io/h2c"), 1));
    text.push_str(&service("victim", None, 1));
    text
}

/// A Service `name` in the e2e namespace with `replicas` echo pods and, with `dead_port`, one more
/// ready endpoint at 127.0.0.1:`dead_port` where nothing listens (connections are refused).
pub fn pool(name: &str, replicas: u32, dead_port: Option<u16>) -> String {
    let mut text = service(name, None, replicas);
    if let Some(port) = dead_port {
        text.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-dead
  namespace: e2e
  labels:
    kubernetes.io/service-name: {name}
addressType: IPv4
ports:
  - name: http
    port: {port}
endpoints:
  - addresses: [\"127.0.0.1\"]
    conditions:
      ready: true
---
"
        ));
    }
    text
}

/// An HTTPRoute like [`route`] whose rule retries: `attempts` retries on the listed status
/// `codes` and on connection failures, 1 ms apart.
pub fn retrying_route(
    name: &str,
    hostname: &str,
    service: &str,
    attempts: u32,
    codes: &[u16],
) -> String {
    let codes: Vec<String> = codes.iter().map(u16::to_string).collect();
    format!(
        "{}      retry:
        attempts: {attempts}
        codes: [{}]
        backoff: 1ms
",
        route(name, hostname, service, None),
        codes.join(", ")
    )
}

/// An HTTPRoute on both listeners of `gw` for `hostname`, all paths to `service`, with an
/// optional `RequestHeaderModifier` setting `X-Generation`.
pub fn route(name: &str, hostname: &str, service: &str, generation: Option<u64>) -> String {
    let filter = generation
        .map(|g| {
            format!(
                "\n      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set:
              - name: X-Generation
                value: \"{g}\""
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
  namespace: e2e
spec:
  parentRefs:
    - name: gw
  hostnames: [\"{hostname}\"]
  rules:
    - backendRefs:
        - name: {service}
          port: 8080{filter}
"
    )
}
