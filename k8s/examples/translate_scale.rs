//! How long a full translation takes at 1,000 and 10,000 HTTPRoutes (each with its own Service
//! and an EndpointSlice of 10 endpoints), and how long copying the object set takes (the
//! Kubernetes index copies it when a snapshot is still held). These numbers decide that the
//! Kubernetes source retranslates in full per debounced batch instead of incrementally.
//!
//! `cargo run -p torhaus-k8s --release --example translate_scale [ROUTES...]`
#![allow(clippy::print_stdout, reason = "a measurement tool prints its results")]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use torhaus_k8s::{KubeObject, ObjectSet, SourceLocation, TranslateOptions, translate};

fn object(value: Value) -> Result<KubeObject, serde_json::Error> {
    let kind = value["kind"].as_str().unwrap_or_default().to_owned();
    Ok(match kind.as_str() {
        "GatewayClass" => KubeObject::GatewayClass(Box::new(serde_json::from_value(value)?)),
        "Gateway" => KubeObject::Gateway(Box::new(serde_json::from_value(value)?)),
        "HTTPRoute" => KubeObject::HttpRoute(Box::new(serde_json::from_value(value)?)),
        "Service" => KubeObject::Service(Box::new(serde_json::from_value(value)?)),
        _ => KubeObject::EndpointSlice(Box::new(serde_json::from_value(value)?)),
    })
}

fn cluster(routes: usize) -> Result<ObjectSet, serde_json::Error> {
    let mut set = ObjectSet::default();
    let mut add = |value: Value| -> Result<(), serde_json::Error> {
        set.insert(object(value)?, SourceLocation::Api);
        Ok(())
    };
    add(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "torhaus"}, "spec": {"controllerName": torhaus_k8s::CONTROLLER_NAME}}),
    )?;
    add(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "infra"},
        "spec": {"gatewayClassName": "torhaus", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}]}}),
    )?;
    for i in 0..routes {
        let namespace = format!("team-{}", i % 50);
        let name = format!("app-{i}");
        add(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 80}]}}))?;
        let endpoints: Vec<Value> = (0..10)
            .map(|e| json!({"addresses": [format!("10.{}.{}.{e}", i / 250 % 250, i % 250)], "conditions": {"ready": true}}))
            .collect();
        add(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints}),
        )?;
        add(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"parentRefs": [{"name": "edge", "namespace": "infra"}],
                     "hostnames": [format!("{name}.example.com")],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                "backendRefs": [{"name": name, "port": 80}]}]}}),
        )?;
    }
    Ok(set)
}

fn best_of(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() -> Result<(), serde_json::Error> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000]
    } else {
        sizes
    };
    let options = TranslateOptions::default();
    for routes in sizes {
        let set = cluster(routes)?;
        let mut served = 0;
        let translate_time = best_of(5, || {
            let translation = translate(&set, &options);
            served = translation
                .config
                .ports
                .iter()
                .flat_map(|p| &p.listeners)
                .map(|l| l.routes.len())
                .sum();
        });
        let clone_time = best_of(5, || drop(std::hint::black_box(set.clone())));
        println!(
            "{routes} routes ({} objects, {served} attached): full translation {translate_time:?}, object set copy {clone_time:?}",
            set.len()
        );
    }
    Ok(())
}
