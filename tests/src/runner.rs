//! Runs a conformance suite: one rig per test, every case until it passes 3 times in a row
//! within 30 s (the upstream suite's consistency rule), distributions checked statistically.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;

use crate::cases::{
    CaseRequest, Distribution, Expect, Suite, TestSpec, distribution_bucket, judge,
};
use crate::client::{self, TestRequest, TlsSettings, Transport};
use crate::rig::Rig;

pub const REQUIRED_CONSECUTIVE_SUCCESSES: u32 = 3;
pub const MAX_TIME_TO_CONSISTENCY: Duration = Duration::from_secs(30);

/// One failing case, with everything needed to understand it.
#[derive(Debug, Clone)]
pub struct CaseFailure {
    pub test: String,
    pub case: String,
    pub request: String,
    pub expected: String,
    pub got: String,
}

impl std::fmt::Display for CaseFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}\n    request:  {}\n    expected: {}\n    got:      {}",
            self.test, self.case, self.request, self.expected, self.got
        )
    }
}

/// Runs every test of the suite in `suite_dir` whose name contains `filter`, `parallel` tests at
/// a time; returns the number of cases run and every failure.
pub async fn run_suite(
    suite_dir: &Path,
    filter: Option<&str>,
    parallel: usize,
) -> anyhow::Result<(usize, Vec<CaseFailure>)> {
    let suite = Suite::load(&suite_dir.join("cases.json"))?;
    let tests: Vec<TestSpec> = suite
        .tests
        .into_iter()
        .filter(|t| filter.is_none_or(|f| t.name.contains(f)))
        .collect();
    let results: Vec<(usize, Vec<CaseFailure>)> = futures::stream::iter(tests)
        .map(|test| async move {
            let cases = test.cases.len() + usize::from(test.distribution.is_some());
            match run_test(suite_dir, &test).await {
                Ok(failures) => (cases, failures),
                Err(error) => (
                    cases,
                    vec![CaseFailure {
                        test: test.name.clone(),
                        case: "setup".to_owned(),
                        request: "-".to_owned(),
                        expected: "a running environment".to_owned(),
                        got: format!("{error:#}"),
                    }],
                ),
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let total = results.iter().map(|(n, _)| n).sum();
    Ok((total, results.into_iter().flat_map(|(_, f)| f).collect()))
}

async fn run_test(suite_dir: &Path, test: &TestSpec) -> anyhow::Result<Vec<CaseFailure>> {
    let base_path = suite_dir.join(
        test.base
            .as_deref()
            .unwrap_or("manifests/base-manifests.yaml"),
    );
    let test_path = suite_dir.join(&test.manifest);
    let base = std::fs::read_to_string(&base_path)
        .with_context(|| format!("reading {}", base_path.display()))?;
    let manifest = std::fs::read_to_string(&test_path)
        .with_context(|| format!("reading {}", test_path.display()))?;
    let rig = Rig::start_for_gateway(
        &[("base", base), (test.manifest.as_str(), manifest)],
        test.gateway.as_deref(),
    )
    .await?;
    let ca_pem = match test.tls_ca.as_deref() {
        None => None,
        Some("local-ca") => Some(rig.torhaus.export_ca()?),
        Some(path) => Some(
            std::fs::read(suite_dir.join(path)).with_context(|| format!("reading CA {path}"))?,
        ),
    };
    let runner = CaseRunner {
        rig: &rig,
        ca_pem: ca_pem.as_deref(),
        test: &test.name,
    };
    let mut failures: Vec<CaseFailure> = futures::future::join_all(
        test.cases
            .iter()
            .enumerate()
            .map(|(index, case)| runner.run_case(index, &case.request, &case.expect)),
    )
    .await
    .into_iter()
    .flatten()
    .collect();
    if let Some(distribution) = &test.distribution {
        failures.extend(runner.run_distribution(distribution).await);
    }
    if !failures.is_empty() {
        let log = rig.torhaus.log_tail();
        if let Some(first) = failures.first_mut() {
            first
                .got
                .push_str(&format!("\n    torhaus log tail:\n{log}"));
        }
    }
    Ok(failures)
}

struct CaseRunner<'a> {
    rig: &'a Rig,
    ca_pem: Option<&'a [u8]>,
    test: &'a str,
}

fn describe_request(request: &CaseRequest) -> String {
    format!(
        "{} {}://{}{} headers {:?}",
        request.method(),
        request.scheme.as_deref().unwrap_or("http"),
        request.host.as_deref().unwrap_or("<gateway>"),
        request.path,
        request.headers
    )
}

fn describe_expect(expect: &Expect) -> String {
    let mut parts = vec![format!("status {}", expect.status)];
    if let Some(backend) = &expect.backend {
        parts.push(format!("backend {backend}"));
    }
    if let Some(request) = &expect.backend_request {
        parts.push(format!("backend_request {request:?}"));
    }
    if let Some(redirect) = &expect.redirect {
        parts.push(format!("redirect {redirect:?}"));
    }
    if !expect.response_headers.is_empty() {
        parts.push(format!("response_headers {:?}", expect.response_headers));
    }
    if !expect.response_header_contains.is_empty() {
        parts.push(format!(
            "response_header_contains {:?}",
            expect.response_header_contains
        ));
    }
    if !expect.absent_response_headers.is_empty() {
        parts.push(format!(
            "absent_response_headers {:?}",
            expect.absent_response_headers
        ));
    }
    if let Some(mirror) = &expect.mirrored_to {
        parts.push(format!("mirrored_to {mirror}"));
    }
    parts.join(", ")
}

impl CaseRunner<'_> {
    async fn send(
        &self,
        request: &CaseRequest,
        marker: &str,
    ) -> anyhow::Result<client::TestResponse> {
        let port = request.gateway_port();
        let addr = self.rig.torhaus.addr(port)?;
        let authority = request.host.clone().unwrap_or_else(|| addr.to_string());
        let mut test_request = TestRequest {
            method: request.method().to_owned(),
            authority: authority.clone(),
            path: request.path.clone(),
            headers: request
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            body: bytes::Bytes::new(),
        };
        if !request
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("x-echo-set-header"))
        {
            test_request
                .headers
                .push(("X-Echo-Set-Header".to_owned(), String::new()));
        }
        test_request
            .headers
            .push(("X-Torhaus-Case".to_owned(), marker.to_owned()));
        let transport = if request.is_https() {
            let sni = request.sni.clone().unwrap_or_else(|| {
                authority
                    .rsplit_once(':')
                    .map_or(authority.clone(), |(h, _)| h.to_owned())
            });
            let ca = self
                .ca_pem
                .context("https request but the test names no tls_ca")?;
            Transport::Http1Tls(TlsSettings::new(&sni, ca)?)
        } else {
            Transport::Http1
        };
        client::send(addr, &transport, &test_request).await
    }

    /// The case passes once it has passed 3 times in a row within 30 s.
    async fn run_case(
        &self,
        index: usize,
        request: &CaseRequest,
        expect: &Expect,
    ) -> Option<CaseFailure> {
        static MARKERS: AtomicU64 = AtomicU64::new(0);
        let start = Instant::now();
        let mut streak = 0;
        let mut last_error = String::from("no attempt");
        while start.elapsed() < MAX_TIME_TO_CONSISTENCY {
            let marker = format!(
                "{}-{index}-{}",
                self.test,
                MARKERS.fetch_add(1, Ordering::SeqCst)
            );
            let verdict = match self.send(request, &marker).await {
                Ok(response) => match judge(request, expect, &response) {
                    Ok(()) => self.check_mirror(expect, &marker).await,
                    Err(error) => Err(error),
                },
                Err(error) => Err(format!("{error:#}")),
            };
            match verdict {
                Ok(()) => {
                    streak += 1;
                    if streak >= REQUIRED_CONSECUTIVE_SUCCESSES {
                        return None;
                    }
                }
                Err(error) => {
                    streak = 0;
                    last_error = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Some(CaseFailure {
            test: self.test.to_owned(),
            case: format!("case {index}"),
            request: describe_request(request),
            expected: describe_expect(expect),
            got: last_error,
        })
    }

    /// A mirrored copy is sent asynchronously: give it a short deadline to arrive.
    async fn check_mirror(&self, expect: &Expect, marker: &str) -> Result<(), String> {
        let Some(deployment) = &expect.mirrored_to else {
            return Ok(());
        };
        let pods = self.rig.pods_of(deployment);
        let seen =
            crate::process::wait_for("the mirrored copy", Duration::from_secs(2), || async {
                pods.iter()
                    .any(|pod| {
                        pod.received().iter().any(|r| {
                            crate::cases::echo_header(
                                &serde_json::to_value(r).unwrap_or_default(),
                                "x-torhaus-case",
                            )
                            .as_deref()
                                == Some(marker)
                        })
                    })
                    .then_some(())
            })
            .await;
        seen.map_err(|_| format!("no pod of {deployment} received the mirrored request {marker}"))
    }

    async fn run_distribution(&self, distribution: &Distribution) -> Option<CaseFailure> {
        let attempts = distribution.max_retries.unwrap_or(3).max(1);
        let mut last = String::new();
        for _ in 0..attempts {
            let counts = self.sample(distribution).await;
            match check_shares(distribution, &counts) {
                Ok(()) => return None,
                Err(error) => last = error,
            }
        }
        Some(CaseFailure {
            test: self.test.to_owned(),
            case: "distribution".to_owned(),
            request: describe_request(&distribution.request),
            expected: format!(
                "shares {:?} ± {}",
                distribution.expected_fraction, distribution.tolerance_abs
            ),
            got: last,
        })
    }

    async fn sample(&self, distribution: &Distribution) -> BTreeMap<String, usize> {
        let buckets: Vec<String> = futures::stream::iter(0..distribution.total_requests)
            .map(|n| async move {
                match self.send(&distribution.request, &format!("dist-{n}")).await {
                    Ok(response) => distribution_bucket(&response, &distribution.expected_fraction),
                    Err(error) => format!("error:{error:#}"),
                }
            })
            .buffer_unordered(distribution.concurrency.max(1))
            .collect()
            .await;
        let mut counts = BTreeMap::new();
        for bucket in buckets {
            *counts.entry(bucket).or_insert(0) += 1;
        }
        counts
    }
}

fn check_shares(
    distribution: &Distribution,
    counts: &BTreeMap<String, usize>,
) -> Result<(), String> {
    let total: usize = counts.values().sum();
    let unexpected: Vec<&String> = counts
        .keys()
        .filter(|k| !distribution.expected_fraction.contains_key(*k))
        .collect();
    if !unexpected.is_empty() {
        return Err(format!("unexpected outcomes {unexpected:?} in {counts:?}"));
    }
    for (bucket, want) in &distribution.expected_fraction {
        let got = counts.get(bucket).copied().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)] // counts are at most a few thousand
        let share = got as f64 / total.max(1) as f64;
        // A weight of 0 means never, not "rarely": no tolerance.
        let ok = if *want == 0.0 {
            got == 0
        } else {
            (share - want).abs() <= distribution.tolerance_abs
        };
        if !ok {
            return Err(format!(
                "{bucket}: share {share:.3}, expected {want}; counts {counts:?}"
            ));
        }
    }
    Ok(())
}
