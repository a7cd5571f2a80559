//! Replays the kept fuzzing inputs (`fuzz/corpus/`, `fuzz/regressions/`) and the project's own
//! manifests through the fuzzers' harness, so that everything a fuzzer once found stays fixed.

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use torhaus_fuzz::{
    DecisionKind, IdentityInput, RequestInput, Vocabulary, conformance_configs, exercise_identity,
    exercise_manifests, exercise_raw_request, exercise_request, replay_dir, sample_requests,
};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn manifest_inputs(bytes: &[u8]) -> usize {
    exercise_manifests(&String::from_utf8_lossy(bytes))
}

/// The manifests fuzzer's seeds are the project's own manifests; what it found is kept under
/// `fuzz/regressions/manifests/`.
#[test]
fn manifests_pass_every_invariant() -> anyhow::Result<()> {
    let mut replayed = 0;
    let mut routed = 0;
    for dir in [
        "../examples",
        "../tests/conformance",
        "regressions/manifests",
    ] {
        // Every file is fair input, the test CA and cases.json beside the manifests included.
        replayed += replay_dir(&fuzz_dir().join(dir), &mut |bytes| {
            routed += manifest_inputs(bytes);
        })?;
    }
    assert!(
        replayed > 20,
        "the manifests were not found (only {replayed} files)"
    );
    // The examples' and the suites' base routes are live in the harness, not merely parsed.
    assert!(routed > 60, "only {routed} sample requests were routed");
    Ok(())
}

#[test]
fn kept_request_inputs_pass_every_invariant() -> anyhow::Result<()> {
    let configs = conformance_configs()?;
    assert!(
        configs.len() > 20,
        "one configuration per conformance case file"
    );
    let served: usize = configs.iter().map(|c| c.ports().len()).sum();
    let configs_len = configs.len();
    assert!(served >= configs_len, "every configuration serves a port");
    let configs: Vec<_> = configs
        .into_iter()
        .map(|config| {
            let words = Vocabulary::of(std::slice::from_ref(&config));
            (config, words)
        })
        .collect();
    let routed: usize = sample_requests()
        .iter()
        .flat_map(|request| {
            configs
                .iter()
                .map(move |(c, w)| exercise_request(c, w, request))
        })
        .sum();
    // The requests reach the suites' routes, not only their 404s.
    assert!(routed > 300, "only {routed} sample requests were routed");
    let mut replayed = 0;
    for dir in ["corpus/requests", "regressions/requests"] {
        replayed += replay_dir(&fuzz_dir().join(dir), &mut |bytes| {
            let Ok(input) = RequestInput::arbitrary_take_rest(Unstructured::new(bytes)) else {
                return;
            };
            for (config, words) in &configs {
                exercise_request(config, words, &input);
            }
        })?;
    }
    assert!(replayed > 0, "no kept request inputs under fuzz/");
    Ok(())
}

#[test]
fn kept_raw_requests_pass_every_invariant() -> anyhow::Result<()> {
    let mut replayed = 0;
    for dir in ["corpus/http1", "regressions/http1"] {
        replayed += replay_dir(&fuzz_dir().join(dir), &mut |bytes| {
            exercise_raw_request(bytes)
        })?;
    }
    assert!(replayed > 0, "no kept raw requests under fuzz/");
    Ok(())
}

#[test]
fn kept_identity_inputs_pass_every_invariant() -> anyhow::Result<()> {
    let mut kinds = std::collections::BTreeSet::new();
    for dir in ["corpus/identity", "regressions/identity"] {
        replay_dir(&fuzz_dir().join(dir), &mut |bytes| {
            if let Ok(input) = IdentityInput::arbitrary_take_rest(Unstructured::new(bytes)) {
                kinds.extend(exercise_identity(&input));
            }
        })?;
    }
    // The seeds reach every way a decision can go, a session's identity passing the rules too.
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            DecisionKind::AllowIdentified,
            DecisionKind::AllowAnonymous,
            DecisionKind::Reply,
            DecisionKind::Pending
        ]
    );
    Ok(())
}

/// The raw-request invariants have teeth: requests that would smuggle are refused before they
/// could be forwarded, and a plain request passes with its body.
#[test]
fn ambiguous_framing_never_passes() -> anyhow::Result<()> {
    use torhaus_gateway::fuzzing::{RawRequestOutcome, read_and_check};
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let outcome = |raw: &str| runtime.block_on(read_and_check(raw.as_bytes().to_vec(), 65536));
    for raw in [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
    ] {
        let result = outcome(raw);
        assert!(
            !matches!(result, RawRequestOutcome::Accepted(_)),
            "accepted {raw:?}: {result:?}"
        );
    }
    match outcome("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello") {
        RawRequestOutcome::Accepted(request) => assert_eq!(request.body, Ok(b"hello".to_vec())),
        other => panic!("a plain request was refused: {other:?}"),
    }
    Ok(())
}
