//! Manifests shared by the end-to-end tests: one namespace, an HTTP and an HTTPS Gateway, and
//! echo Services (plain, h2c upstream, and a dedicated one for "never forwarded" checks).

/// Namespace holding every e2e object.
pub const E2E_NAMESPACE: &str = "e2e";
/// Hostname of the HTTPS listener; it has no certificate Secret, so the local CA serves it.
pub const LOCAL_CA_HOST: &str = "local.example.com";

fn service(name: &str, app_protocol: Option<&str>) -> String {
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
  replicas: 1
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
    text.push_str(&service("echo", None));
    text.push_str(&service("echo-h2c", Some("kubernetes.io/h2c")));
    text.push_str(&service("victim", None));
    text
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
