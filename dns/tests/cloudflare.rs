//! Cloudflare provider contract test. NOT Cloudflare: the server below is a local stand-in
//! written from Cloudflare's published API v4 documentation (zones list by `name`, dns_records
//! list with `type`/`name`/`content` filters and `page`/`per_page` pagination with
//! `result_info`, create, PATCH, delete, the `{success, errors, messages, result}` envelope,
//! error 81058 for identical records, 403 for a bad token). It checks that the provider speaks
//! that documented contract; it cannot prove Cloudflare's servers behave the same.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use torhaus_dns::cloudflare::CloudflareProvider;
use torhaus_dns::{DnsError, DnsProvider, RecordSet, RecordType};

const TOKEN: &str = "scoped-test-token";
const ZONE_ID: &str = "023e105f4ecef8ad9ca31a8372d0c353";

#[derive(Default)]
struct State {
    records: BTreeMap<String, Value>,
    next_id: u64,
}

fn envelope(
    status: StatusCode,
    result: Value,
    errors: Value,
    info: Option<Value>,
) -> Response<Full<Bytes>> {
    let mut body =
        json!({"success": status.is_success(), "errors": errors, "messages": [], "result": result});
    if let Some(info) = info {
        body["result_info"] = info;
    }
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}

fn query_map(uri: &hyper::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.replace("%2A", "*").replace("%22", "\"").replace('+', " "),
            )
        })
        .collect()
}

async fn handle(
    state: Arc<Mutex<State>>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    if !authorized {
        return Ok(envelope(
            StatusCode::FORBIDDEN,
            Value::Null,
            json!([{"code": 10000, "message": "Authentication error"}]),
            None,
        ));
    }
    let method = request.method().clone();
    let uri = request.uri().clone();
    let query = query_map(&uri);
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path: Vec<&str> = uri
        .path()
        .trim_start_matches("/client/v4/")
        .split('/')
        .collect();
    let Ok(mut state) = state.lock() else {
        return Ok(envelope(
            StatusCode::INTERNAL_SERVER_ERROR,
            Value::Null,
            json!([]),
            None,
        ));
    };
    let response = match (method.as_str(), path.as_slice()) {
        ("GET", ["zones"]) => {
            let zones = if query.get("name").map(String::as_str) == Some("example.test") {
                json!([{"id": ZONE_ID, "name": "example.test", "status": "active"}])
            } else {
                json!([])
            };
            envelope(
                StatusCode::OK,
                zones,
                json!([]),
                Some(
                    json!({"page": 1, "per_page": 20, "total_pages": 1, "count": 0, "total_count": 0}),
                ),
            )
        }
        ("GET", ["zones", ZONE_ID, "dns_records"]) => {
            let matching: Vec<Value> = state
                .records
                .values()
                .filter(|r| {
                    ["type", "name", "content"]
                        .iter()
                        .all(|k| query.get(*k).is_none_or(|v| r[*k].as_str() == Some(v)))
                })
                .cloned()
                .collect();
            let per_page: usize = query
                .get("per_page")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            let page: usize = query.get("page").and_then(|v| v.parse().ok()).unwrap_or(1);
            let total_pages = matching.len().div_ceil(per_page).max(1);
            let slice: Vec<Value> = matching
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .cloned()
                .collect();
            let info = json!({"page": page, "per_page": per_page, "count": slice.len(), "total_count": matching.len(), "total_pages": total_pages});
            envelope(StatusCode::OK, Value::Array(slice), json!([]), Some(info))
        }
        ("POST", ["zones", ZONE_ID, "dns_records"]) => {
            let identical = state.records.values().any(|r| {
                r["type"] == body["type"]
                    && r["name"] == body["name"]
                    && r["content"] == body["content"]
            });
            if identical {
                envelope(
                    StatusCode::BAD_REQUEST,
                    Value::Null,
                    json!([{"code": 81058, "message": "An identical record already exists."}]),
                    None,
                )
            } else {
                state.next_id += 1;
                let id = format!("rec{:06}", state.next_id);
                let record = json!({"id": id, "type": body["type"], "name": body["name"], "content": body["content"], "ttl": body["ttl"], "proxied": false});
                state.records.insert(id, record.clone());
                envelope(StatusCode::OK, record, json!([]), None)
            }
        }
        ("PATCH", ["zones", ZONE_ID, "dns_records", id]) => match state.records.get_mut(*id) {
            Some(record) => {
                if let Some(ttl) = body.get("ttl") {
                    record["ttl"] = ttl.clone();
                }
                envelope(StatusCode::OK, record.clone(), json!([]), None)
            }
            None => envelope(
                StatusCode::NOT_FOUND,
                Value::Null,
                json!([{"code": 81044, "message": "Record does not exist."}]),
                None,
            ),
        },
        ("DELETE", ["zones", ZONE_ID, "dns_records", id]) => match state.records.remove(*id) {
            Some(_) => envelope(StatusCode::OK, json!({"id": id}), json!([]), None),
            None => envelope(
                StatusCode::NOT_FOUND,
                Value::Null,
                json!([{"code": 81044, "message": "Record does not exist."}]),
                None,
            ),
        },
        _ => envelope(
            StatusCode::NOT_FOUND,
            Value::Null,
            json!([{"code": 7003, "message": "Could not route"}]),
            None,
        ),
    };
    Ok(response)
}

/// Starts the stand-in with `seed` foreign records already in the zone.
async fn stand_in(seed: usize) -> anyhow::Result<(SocketAddr, Arc<Mutex<State>>)> {
    let state = Arc::new(Mutex::new(State::default()));
    if let Ok(mut s) = state.lock() {
        for i in 0..seed {
            let id = format!("seed{i:04}");
            s.records.insert(id.clone(), json!({"id": id, "type": "TXT", "name": format!("seed{i}.example.test"), "content": "\"foreign\"", "ttl": 1}));
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shared = state.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |r| handle(state.clone(), r));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, state))
}

fn provider(addr: SocketAddr, token: &str) -> anyhow::Result<CloudflareProvider> {
    Ok(CloudflareProvider::new(
        Some(&format!("http://{addr}/client/v4")),
        token,
    )?)
}

async fn values(
    p: &CloudflareProvider,
    name: &str,
    rtype: RecordType,
) -> anyhow::Result<Vec<String>> {
    let zone = p.find_zone(name).await?;
    let mut values = p
        .list_records(&zone)
        .await?
        .into_iter()
        .find(|s| s.name == name && s.rtype == rtype)
        .map(|s| s.values)
        .unwrap_or_default();
    values.sort();
    Ok(values)
}

#[tokio::test]
async fn txt_values_coexist_and_are_deleted_by_value_across_pages() -> anyhow::Result<()> {
    // 150 foreign records force list_records over two pages.
    let (addr, _) = stand_in(150).await?;
    let p = provider(addr, TOKEN)?;
    let name = "_acme-challenge.app.example.test";
    let zone = p.find_zone(name).await?;
    assert_eq!(
        (zone.name.as_str(), zone.id.as_str()),
        ("example.test", ZONE_ID)
    );
    p.add_txt(&zone, name, "apex", 60).await?;
    p.add_txt(&zone, name, "wild", 60).await?;
    p.add_txt(&zone, name, "apex", 60).await?;
    assert_eq!(values(&p, name, RecordType::Txt).await?, ["apex", "wild"]);
    assert_eq!(p.list_records(&zone).await?.len(), 151);
    p.remove_txt(&zone, name, "apex").await?;
    assert_eq!(values(&p, name, RecordType::Txt).await?, ["wild"]);
    p.remove_txt(&zone, name, "wild").await?;
    assert!(values(&p, name, RecordType::Txt).await?.is_empty());
    assert!(matches!(
        p.find_zone("x.other.test").await,
        Err(DnsError::ZoneNotFound { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn address_sets_are_replaced_and_ttl_fixed_in_place() -> anyhow::Result<()> {
    let (addr, state) = stand_in(0).await?;
    let p = provider(addr, TOKEN)?;
    let zone = p.find_zone("app.example.test").await?;
    let set = |values: &[&str], ttl| RecordSet {
        name: "app.example.test".into(),
        rtype: RecordType::A,
        ttl,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    p.upsert_rrset(&zone, &set(&["192.0.2.1", "192.0.2.2"], 60))
        .await?;
    p.upsert_rrset(&zone, &set(&["192.0.2.2", "192.0.2.3"], 120))
        .await?;
    assert_eq!(
        values(&p, "app.example.test", RecordType::A).await?,
        ["192.0.2.2", "192.0.2.3"]
    );
    let ttls: Vec<u64> = state
        .lock()
        .map(|s| {
            s.records
                .values()
                .filter_map(|r| r["ttl"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ttls, [120, 120]);
    p.delete_rrset(&zone, "app.example.test", &RecordType::A)
        .await?;
    assert!(
        values(&p, "app.example.test", RecordType::A)
            .await?
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn bad_token_is_a_clear_permanent_error() -> anyhow::Result<()> {
    let (addr, _) = stand_in(0).await?;
    let p = provider(addr, "wrong")?;
    let error = p.find_zone("app.example.test").await.err();
    assert!(
        matches!(&error, Some(DnsError::Unauthorized { detail, .. }) if detail.contains("Authentication error")),
        "{error:?}"
    );
    assert!(error.is_some_and(|e| !e.is_retryable()));
    Ok(())
}
