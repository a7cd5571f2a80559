//! The test harness's own pieces, checked without torhaus: echo backend, client, judge, case
//! files and the rig's manifest handling.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use futures::{SinkExt as _, StreamExt as _};
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;
use torhaus_tests::cases::{CaseRequest, Expect, Redirect, Suite, judge, parse_location};
use torhaus_tests::client::{self, Connection, TestRequest, TestResponse, Transport};
use torhaus_tests::echo::{EchoIdentity, EchoServer};
use torhaus_tests::rig::parse_documents;

fn identity() -> EchoIdentity {
    EchoIdentity {
        namespace: "ns".to_owned(),
        pod: "infra-backend-v1-abc-def".to_owned(),
        service: "infra-backend-v1".to_owned(),
    }
}

#[tokio::test]
async fn echo_answers_like_echo_basic_over_http1() -> anyhow::Result<()> {
    let echo = EchoServer::start(identity()).await?;
    let request = TestRequest::get("example.com:8080", "/a/b?c=d")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("X-Echo-Set-Header", "X-Out:1,X-Other:two");
    let response = client::send(echo.addr(), &Transport::Http1, &request).await?;
    ensure!(response.status == 200);
    ensure!(response.header("x-out") == Some("1") && response.header("x-other") == Some("two"));
    let body = response.echo()?;
    ensure!(body["path"] == "/a/b?c=d", "{body}");
    ensure!(body["host"] == "example.com:8080", "{body}");
    ensure!(
        body["method"] == "GET" && body["proto"] == "HTTP/1.1",
        "{body}"
    );
    ensure!(
        body["namespace"] == "ns" && body["pod"] == "infra-backend-v1-abc-def",
        "{body}"
    );
    ensure!(
        body["headers"]["X-Multi"] == serde_json::json!(["one", "two"]),
        "{body}"
    );
    ensure!(echo.requests() == 1 && echo.connections() == 1);
    Ok(())
}

#[tokio::test]
async fn echo_serves_h2c_with_prior_knowledge() -> anyhow::Result<()> {
    let echo = EchoServer::start(identity()).await?;
    let mut connection = Connection::open(echo.addr(), &Transport::H2c).await?;
    for path in ["/one", "/two"] {
        let response = connection
            .send(&TestRequest::get("h2.example", path))
            .await?;
        ensure!(response.version == http::Version::HTTP_2);
        let body = response.echo()?;
        ensure!(
            body["proto"] == "HTTP/2.0" && body["path"] == path && body["host"] == "h2.example",
            "{body}"
        );
    }
    ensure!(
        echo.connections() == 1,
        "h2 requests must share the connection"
    );
    Ok(())
}

#[tokio::test]
async fn echo_echoes_websocket_messages() -> anyhow::Result<()> {
    let echo = EchoServer::start(identity()).await?;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", echo.addr())).await?;
    socket.send(Message::text("ping")).await?;
    let reply = socket.next().await.context("closed")??;
    ensure!(reply.to_text()? == "ping");
    Ok(())
}

#[tokio::test]
async fn echo_delays_and_fails_on_demand() -> anyhow::Result<()> {
    let echo = EchoServer::start(identity()).await?;
    echo.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    client::send(echo.addr(), &Transport::Http1, &TestRequest::get("x", "/")).await?;
    ensure!(
        started.elapsed() >= Duration::from_millis(300),
        "answered too early"
    );
    echo.set_delay(Duration::ZERO);
    echo.set_failure(Some(StatusCode::SERVICE_UNAVAILABLE));
    let response =
        client::send(echo.addr(), &Transport::Http1, &TestRequest::get("x", "/")).await?;
    ensure!(response.status == 503);
    echo.set_failure(None);
    let response =
        client::send(echo.addr(), &Transport::Http1, &TestRequest::get("x", "/")).await?;
    ensure!(response.status == 200);
    ensure!(echo.received().len() == 3);
    Ok(())
}

#[tokio::test]
async fn raw_exchange_reads_the_status_line() -> anyhow::Result<()> {
    let echo = EchoServer::start(identity()).await?;
    let answer = client::raw_exchange(
        echo.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await?;
    ensure!(client::raw_status(&answer) == Some(200));
    ensure!(client::raw_status(b"garbage").is_none());
    Ok(())
}

fn response(
    status: u16,
    headers: &[(&str, &str)],
    body: serde_json::Value,
) -> anyhow::Result<TestResponse> {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes())?,
            http::HeaderValue::from_str(value)?,
        );
    }
    Ok(TestResponse {
        status: StatusCode::from_u16(status)?,
        version: http::Version::HTTP_11,
        headers: map,
        body: serde_json::to_vec(&body)?.into(),
    })
}

#[test]
fn judge_applies_the_conventions() -> anyhow::Result<()> {
    let request = CaseRequest {
        path: "/p?q=1".to_owned(),
        ..CaseRequest::default()
    };
    let echo = serde_json::json!({
        "path": "/p?q=1", "pod": "infra-backend-v2-x-y", "namespace": "ns",
        "headers": {"X-Add": ["a", "b"], "Host-Like": ["h"]}
    });
    let ok = response(200, &[], echo.clone())?;
    let mut expect = Expect {
        status: 200,
        backend: Some("infra-backend-v2".to_owned()),
        namespace: Some("ns".to_owned()),
        ..Expect::default()
    };
    judge(&request, &expect, &ok).map_err(anyhow::Error::msg)?;
    expect.backend = Some("infra-backend-v1".to_owned());
    ensure!(
        judge(&request, &expect, &ok).is_err(),
        "wrong pod prefix must fail"
    );
    expect.backend = Some("any of infra-backend-v1|infra-backend-v2".to_owned());
    judge(&request, &expect, &ok).map_err(anyhow::Error::msg)?;

    let mut headers = BTreeMap::new();
    headers.insert("x-add".to_owned(), "a,b".to_owned());
    expect.backend_request = Some(torhaus_tests::cases::BackendRequest {
        headers,
        absent_headers: vec!["X-Removed".to_owned()],
        ..Default::default()
    });
    judge(&request, &expect, &ok).map_err(anyhow::Error::msg)?;
    expect
        .backend_request
        .as_mut()
        .context("set above")?
        .absent_headers = vec!["x-add".to_owned()];
    ensure!(
        judge(&request, &expect, &ok).is_err(),
        "present header listed absent must fail"
    );

    let not_found = response(404, &[], serde_json::json!({}))?;
    ensure!(
        judge(&request, &expect, &not_found).is_err(),
        "status mismatch must fail"
    );
    Ok(())
}

#[test]
fn redirects_are_judged_from_location() -> anyhow::Result<()> {
    let request = CaseRequest {
        path: "/x".to_owned(),
        ..CaseRequest::default()
    };
    let expect = Expect {
        status: 302,
        redirect: Some(Redirect {
            scheme: Some("http".to_owned()),
            host: Some("*".to_owned()),
            port: Some("80-or-empty".to_owned()),
            path: Some("/y".to_owned()),
        }),
        ..Expect::default()
    };
    for location in ["/y", "http://any.host/y", "http://any.host:80/y"] {
        let got = response(302, &[("location", location)], serde_json::json!({}))?;
        judge(&request, &expect, &got).map_err(|e| anyhow::anyhow!("{location}: {e}"))?;
    }
    for location in ["https://h/y", "http://h:8080/y", "http://h/z"] {
        let got = response(302, &[("location", location)], serde_json::json!({}))?;
        ensure!(
            judge(&request, &expect, &got).is_err(),
            "{location} must fail"
        );
    }
    let parsed = parse_location("https://[::1]:8443/p?q");
    ensure!(
        parsed.host.as_deref() == Some("[::1]")
            && parsed.port.as_deref() == Some("8443")
            && parsed.path == "/p?q"
    );
    Ok(())
}

#[test]
fn case_files_load_and_name_existing_manifests() -> anyhow::Result<()> {
    let root = torhaus_tests::process::package_dir(env!("CARGO_MANIFEST_DIR")).join("conformance");
    for suite in ["gateway-api-v1.6.1", "torhaus"] {
        let dir = root.join(suite);
        let loaded = Suite::load(&dir.join("cases.json"))?;
        ensure!(!loaded.tests.is_empty(), "{suite} has no tests");
        for test in &loaded.tests {
            for manifest in [Some(test.manifest.as_str()), test.base.as_deref()]
                .into_iter()
                .flatten()
            {
                let text = std::fs::read_to_string(dir.join(manifest))
                    .with_context(|| format!("{suite}/{}: {manifest}", test.name))?;
                let docs = parse_documents(&text, manifest)?;
                ensure!(!docs.is_empty(), "{manifest} is empty");
            }
        }
    }
    Ok(())
}
