//! The one retry policy of the job handlers: run, and on a failure wait the
//! [`Retry`] policy's backoff and run again, until the job is settled or
//! every attempt has failed.

use std::future::Future;

use crate::task::Retry;

/// What one run of a job came to.
#[derive(Debug)]
pub(super) enum Attempt {
    /// The job is settled (acknowledged, given up, or left in the stream
    /// for a later round): no further run.
    Settled,
    /// The run failed, with this message: run again after the backoff,
    /// unless it was the last.
    Failed(String),
}

/// Which run this is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    /// Whether the policy allows no run after it.
    pub(super) last: bool,
}

/// A job that failed on every attempt.
#[derive(Debug)]
pub(super) struct Exhausted {
    /// The last failure.
    pub(super) failure: String,
    /// How many runs there were.
    pub(super) runs: u32,
}

/// Runs `attempt` under `policy` until it settles (`None`), or until it
/// has failed on every attempt: then the last failure. `retrying` hears of
/// each failure that another run follows, with the failed run's number.
pub(super) async fn attempts<F, Fut>(
    policy: Retry,
    mut attempt: F,
    mut retrying: impl FnMut(&str, u32),
) -> Option<Exhausted>
where
    F: FnMut(Run) -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut number = 1;
    loop {
        let last = number >= policy.attempts();
        match attempt(Run { last }).await {
            Attempt::Settled => return None,
            Attempt::Failed(failure) if last => {
                return Some(Exhausted {
                    failure,
                    runs: number,
                })
            }
            Attempt::Failed(failure) => {
                retrying(&failure, number);
                tokio::time::sleep(policy.delay(number)).await;
                number += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn runs_until_settled_or_out_of_attempts() {
        let policy = Retry::new(3, Duration::ZERO);
        let mut seen = Vec::new();
        let mut retried = Vec::new();
        let exhausted = attempts(
            policy,
            |run| {
                seen.push(run.last);
                let failure = format!("run {}", seen.len());
                async move { Attempt::Failed(failure) }
            },
            |failure, run| retried.push((failure.to_owned(), run)),
        )
        .await
        .expect("every run failed");
        assert_eq!(seen, [false, false, true]);
        assert_eq!(retried, [("run 1".to_owned(), 1), ("run 2".to_owned(), 2)]);
        assert_eq!((exhausted.failure.as_str(), exhausted.runs), ("run 3", 3));

        let mut runs = 0;
        let settled = attempts(
            policy,
            |_| {
                runs += 1;
                let second = runs == 2;
                async move {
                    if second {
                        Attempt::Settled
                    } else {
                        Attempt::Failed("again".into())
                    }
                }
            },
            |_, _| {},
        )
        .await;
        assert!(settled.is_none());
        assert_eq!(runs, 2);

        let once = attempts(
            Retry::none(),
            |run| async move { Attempt::Failed(format!("last: {}", run.last)) },
            |_, _| panic!("no retry"),
        )
        .await
        .expect("failed");
        assert_eq!((once.failure.as_str(), once.runs), ("last: true", 1));
    }
}
