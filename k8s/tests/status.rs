//! Status as translation and the planner produce it, without an API server: GatewayClass
//! version and parameters, Gateway addresses, observedGeneration, which objects get patches,
//! and convergence (once written, a status is never written again).
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

#[path = "support/manifests.rs"]
mod manifests;

use std::sync::Arc;

use manifests::objects;
use serde_json::{Value, json};
use torhaus_k8s::status::plan_status_patches;
use torhaus_k8s::{
    CONTROLLER_NAME, ConditionStatus, GatewayAddress, KubeSnapshot, ObjectKind, ObjectSet,
    TranslateOptions, Translation, translate,
};

const CLASSES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: torhaus, generation: 4}
spec: {controllerName: torhaus.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/other}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec: {ports: [{port: 80}]}
"#;

const GATEWAYS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra, generation: 7}
spec:
  gatewayClassName: torhaus
  listeners:
    - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: foreign, namespace: infra}
spec:
  gatewayClassName: other
  listeners:
    - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app, namespace: apps, generation: 5}
spec:
  parentRefs: [{name: edge, namespace: infra}, {name: foreign, namespace: infra}, {name: missing, namespace: infra}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: theirs, namespace: apps}
spec:
  parentRefs: [{name: foreign, namespace: infra}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"#;

fn with(options: TranslateOptions, documents: &[&str]) -> Translation {
    translate(&objects(documents), &options)
}

fn condition(
    translation: &Translation,
    kind: ObjectKind,
    namespace: &str,
    name: &str,
    type_: &str,
) -> (ConditionStatus, String, String) {
    let status = translation
        .report
        .object(kind, namespace, name)
        .unwrap_or_else(|| panic!("no status of {kind} {namespace}/{name}"));
    let c = status
        .condition(type_)
        .unwrap_or_else(|| panic!("no {type_} on {kind} {name}"));
    (c.status, c.reason.clone(), c.message.clone())
}

#[test]
fn gateway_class_supported_version_follows_the_installed_crds() {
    let cases = [
        (None, true, "Gateway API v1 is supported"),
        (Some("v1.6.1"), true, "Gateway API v1.6.1 is supported"),
        (Some("v1.9.0"), true, "Gateway API v1.9.0 is supported"),
        (
            Some("v0.8.1"),
            false,
            "install the CRDs of a Gateway API v1.x release",
        ),
        (Some("garbage"), false, "version garbage"),
    ];
    for (version, supported, message) in cases {
        let options = TranslateOptions {
            crd_bundle_version: version.map(str::to_owned),
            ..TranslateOptions::default()
        };
        let out = with(options, &[CLASSES, GATEWAYS]);
        let (status, reason, text) = condition(
            &out,
            ObjectKind::GatewayClass,
            "",
            "torhaus",
            "SupportedVersion",
        );
        let accepted = condition(&out, ObjectKind::GatewayClass, "", "torhaus", "Accepted");
        assert!(text.contains(message), "{version:?}: {text}");
        if supported {
            assert_eq!(
                (status, reason.as_str()),
                (ConditionStatus::True, "SupportedVersion")
            );
            assert_eq!(accepted.0, ConditionStatus::True);
            assert!(out.config.port(80).is_some());
        } else {
            assert_eq!(
                (status, reason.as_str()),
                (ConditionStatus::False, "UnsupportedVersion"),
                "{version:?}"
            );
            assert_eq!(
                (accepted.0, accepted.1.as_str()),
                (ConditionStatus::False, "UnsupportedVersion")
            );
            assert!(
                out.config.port(80).is_none(),
                "Gateways of a class that is not accepted are not served"
            );
        }
    }
}

#[test]
fn gateway_class_with_parameters_is_not_accepted() {
    let classes = CLASSES.replace(
        "spec: {controllerName: torhaus.dev/gateway-controller}",
        "spec: {controllerName: torhaus.dev/gateway-controller, parametersRef: {group: example.com, kind: Config, name: x}}",
    );
    let out = with(TranslateOptions::default(), &[&classes, GATEWAYS]);
    let (status, reason, message) =
        condition(&out, ObjectKind::GatewayClass, "", "torhaus", "Accepted");
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, "InvalidParameters")
    );
    assert!(message.contains("remove spec.parametersRef"), "{message}");
    assert!(
        out.report
            .object(ObjectKind::GatewayClass, "", "other")
            .is_none()
    );
}

#[test]
fn gateway_addresses_are_published_and_unusable_requests_are_not_programmed() {
    let served = vec![
        GatewayAddress::parse("192.0.2.10"),
        GatewayAddress::parse("gw.example.net"),
    ];
    let options = TranslateOptions {
        addresses: served.clone(),
        ..TranslateOptions::default()
    };
    let out = with(options.clone(), &[CLASSES, GATEWAYS]);
    let edge = out
        .report
        .object(ObjectKind::Gateway, "infra", "edge")
        .expect("edge status");
    assert_eq!(edge.addresses, served);
    assert_eq!(edge.addresses[0].type_, "IPAddress");
    assert_eq!(edge.addresses[1].type_, "Hostname");

    let requesting = |value: &str| {
        GATEWAYS.replacen(
            "  gatewayClassName: torhaus\n",
            &format!("  gatewayClassName: torhaus\n  addresses: [{{type: IPAddress, value: \"{value}\"}}]\n"),
            1,
        )
    };
    let out = with(options.clone(), &[CLASSES, &requesting("192.0.2.99")]);
    let (status, reason, message) =
        condition(&out, ObjectKind::Gateway, "infra", "edge", "Programmed");
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, "AddressNotUsable")
    );
    assert!(
        message.contains("192.0.2.99") && message.contains("--gateway-address"),
        "{message}"
    );
    let accepted = condition(&out, ObjectKind::Gateway, "infra", "edge", "Accepted");
    assert_eq!(accepted.0, ConditionStatus::True);

    let out = with(options.clone(), &[CLASSES, &requesting("192.0.2.10")]);
    let programmed = condition(&out, ObjectKind::Gateway, "infra", "edge", "Programmed");
    assert_eq!(programmed.0, ConditionStatus::True);
    let out = with(options, &[CLASSES, &requesting("")]);
    let programmed = condition(&out, ObjectKind::Gateway, "infra", "edge", "Programmed");
    assert_eq!(
        programmed.0,
        ConditionStatus::True,
        "an empty value asks for any address"
    );

    // Standalone (no addresses configured): nothing to judge a request against.
    let out = with(
        TranslateOptions::default(),
        &[CLASSES, &requesting("192.0.2.99")],
    );
    let programmed = condition(&out, ObjectKind::Gateway, "infra", "edge", "Programmed");
    assert_eq!(programmed.0, ConditionStatus::True);
}

#[test]
fn statuses_carry_the_generation_they_describe() {
    let out = with(TranslateOptions::default(), &[CLASSES, GATEWAYS]);
    let generation = |kind, namespace, name| {
        out.report
            .object(kind, namespace, name)
            .and_then(|o| o.generation)
    };
    assert_eq!(generation(ObjectKind::GatewayClass, "", "torhaus"), Some(4));
    assert_eq!(generation(ObjectKind::Gateway, "infra", "edge"), Some(7));
    assert_eq!(generation(ObjectKind::HttpRoute, "apps", "app"), Some(5));
}

fn snapshot(objects: ObjectSet, options: &TranslateOptions) -> KubeSnapshot {
    let translation = Arc::new(translate(&objects, options));
    KubeSnapshot {
        seq: 1,
        objects: Arc::new(objects),
        translation,
    }
}

/// Writes each patch's status into the objects, as the API server would.
fn apply(objects: &mut ObjectSet, patches: &[torhaus_k8s::status::StatusPatch]) {
    for patch in patches {
        let status = patch.body["status"].clone();
        let name =
            torhaus_model::ObjectName::new(patch.key.namespace.clone(), patch.key.name.clone());
        match patch.key.kind {
            ObjectKind::GatewayClass => {
                let class = objects
                    .gateway_classes
                    .get_mut(&patch.key.name)
                    .expect("class");
                std::sync::Arc::make_mut(&mut class.object).status =
                    serde_json::from_value(status).expect("class status");
            }
            ObjectKind::Gateway => {
                let gateway = objects.gateways.get_mut(&name).expect("gateway");
                std::sync::Arc::make_mut(&mut gateway.object).status =
                    serde_json::from_value(status).expect("gateway status");
            }
            ObjectKind::HttpRoute => {
                let route = objects.http_routes.get_mut(&name).expect("route");
                std::sync::Arc::make_mut(&mut route.object).status =
                    serde_json::from_value(status).expect("route status");
            }
            other => panic!("a patch of {other}"),
        }
    }
}

#[test]
fn planner_patches_only_our_objects_and_converges() {
    let options = TranslateOptions {
        addresses: vec![GatewayAddress::parse("192.0.2.10")],
        ..TranslateOptions::default()
    };
    let mut set = objects(&[CLASSES, GATEWAYS]);
    let now = "2026-11-22T10:00:00Z";
    let patches = plan_status_patches(&snapshot(set.clone(), &options), CONTROLLER_NAME, now);
    let targets: Vec<String> = patches.iter().map(|p| p.key.to_string()).collect();
    assert_eq!(
        targets,
        [
            "GatewayClass torhaus",
            "Gateway infra/edge",
            "HTTPRoute apps/app"
        ],
        "only our class, our Gateway, and the route attached to it"
    );
    let route = patches
        .iter()
        .find(|p| p.key.kind == ObjectKind::HttpRoute)
        .expect("route patch");
    let parents = route.body["status"]["parents"].as_array().expect("parents");
    assert_eq!(
        parents.len(),
        1,
        "no entry for the foreign or the missing Gateway: {parents:#?}"
    );
    assert_eq!(parents[0]["parentRef"]["name"], "edge");

    // Once written, nothing is written again, even at a later time.
    apply(&mut set, &patches);
    let again = plan_status_patches(
        &snapshot(set.clone(), &options),
        CONTROLLER_NAME,
        "2026-11-22T11:00:00Z",
    );
    assert!(again.is_empty(), "rewrote an unchanged status: {again:#?}");

    // A change rewrites only what changed; the untouched conditions keep their time.
    set.services.clear();
    let changed = plan_status_patches(
        &snapshot(set.clone(), &options),
        CONTROLLER_NAME,
        "2026-11-22T12:00:00Z",
    );
    let targets: Vec<String> = changed.iter().map(|p| p.key.to_string()).collect();
    assert_eq!(targets, ["HTTPRoute apps/app"]);
    let conditions = changed[0].body["status"]["parents"][0]["conditions"].clone();
    let time_of = |type_: &str| -> Value {
        conditions
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_)
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(time_of("Accepted"), json!(now));
    assert_eq!(time_of("ResolvedRefs"), json!("2026-11-22T12:00:00Z"));
}
