//! The call rules every cloud backend shares, against scripted service answers.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

fn limits() -> CallLimits {
    CallLimits {
        timeout_ms: 1000,
        max_retries: 3,
        requests_per_second: 10_000,
        breaker_failures: 2,
        breaker_open_ms: 60_000,
    }
}

/// Answers from `script` in order (the last one repeats); counts attempts.
async fn run(caller: &Caller, script: &[Fault], calls: &AtomicU32) -> Result<u32, CallError> {
    caller
        .call("sign", || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) as usize;
            match script.get(n).or(script.last()) {
                Some(fault) => Err(fault.clone()),
                None => Ok(7),
            }
        })
        .await
}

fn throttled() -> Fault {
    Fault::Throttled("ThrottlingException".into())
}

#[tokio::test]
async fn throttling_is_retried_then_succeeds() {
    let caller = Caller::new("test", &limits());
    let calls = AtomicU32::new(0);
    let out = caller
        .call("sign", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(throttled()),
                _ => Ok(7),
            }
        })
        .await;
    assert_eq!(out, Ok(7));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn throttling_past_the_budget_fails_unavailable_without_breaking_the_circuit() {
    let caller = Caller::new("test", &limits());
    for _ in 0..3 {
        let calls = AtomicU32::new(0);
        let err = run(&caller, &[throttled()], &calls).await.unwrap_err();
        assert!(
            matches!(&err, CallError::Unavailable(r) if r.contains("throttled by the service after 3 retries")),
            "{err:?}"
        );
        // Negative control of the budget: exactly 1 + max_retries attempts, never more.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }
    assert!(
        caller.health().is_ok(),
        "throttling means the service is up"
    );
}

#[tokio::test]
async fn refusals_are_not_retried_and_do_not_break_the_circuit() {
    let caller = Caller::new("test", &limits());
    for _ in 0..5 {
        let calls = AtomicU32::new(0);
        let err = run(
            &caller,
            &[Fault::Rejected("AccessDeniedException".into())],
            &calls,
        )
        .await
        .unwrap_err();
        assert_eq!(err, CallError::Rejected("AccessDeniedException".into()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
    assert!(caller.health().is_ok());
}

#[tokio::test]
async fn outages_open_the_circuit_and_later_calls_fail_fast() {
    let caller = Caller::new("test", &limits());
    let calls = AtomicU32::new(0);
    let down = [Fault::Unavailable("connection refused".into())];
    for _ in 0..2 {
        assert!(matches!(
            run(&caller, &down, &calls).await,
            Err(CallError::Unavailable(_))
        ));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "outages are not retried");
    let err = run(&caller, &[], &calls).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Unavailable(r) if r.contains("circuit open") && r.contains("connection refused")),
        "{err:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "an open circuit sends nothing"
    );
    assert!(caller.health().unwrap_err().contains("connection refused"));
}

#[tokio::test]
async fn a_probe_after_the_open_period_closes_the_circuit() {
    let caller = Caller::new(
        "test",
        &CallLimits {
            breaker_open_ms: 100,
            ..limits()
        },
    );
    let calls = AtomicU32::new(0);
    let down = [Fault::Unavailable("down".into())];
    for _ in 0..2 {
        let _ = run(&caller, &down, &calls).await;
    }
    assert!(run(&caller, &[], &calls).await.is_err());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(run(&caller, &[], &calls).await, Ok(7), "the probe goes out");
    assert!(caller.health().is_ok());
}

#[tokio::test]
async fn a_slow_answer_is_cut_at_the_deadline() {
    let caller = Caller::new(
        "test",
        &CallLimits {
            timeout_ms: 150,
            ..limits()
        },
    );
    let err = caller
        .call("sign", || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, Fault>(1)
        })
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CallError::Unavailable("no answer within 150 ms".into())
    );
}

#[tokio::test]
async fn the_rate_limit_refuses_what_does_not_fit_before_the_deadline() {
    let caller = Caller::new(
        "test",
        &CallLimits {
            requests_per_second: 1,
            timeout_ms: 200,
            ..limits()
        },
    );
    let calls = AtomicU32::new(0);
    assert_eq!(run(&caller, &[], &calls).await, Ok(7));
    let err = run(&caller, &[], &calls).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Unavailable(r) if r.contains("rate limit")),
        "{err:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the refused call never went out"
    );
    assert!(caller.health().is_ok());
}
