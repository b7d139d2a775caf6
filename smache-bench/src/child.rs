//! Child processes: this binary started again in a hidden mode. They talk
//! over their standard streams, one line a message: the child prints
//! `READY`, waits for a line from the parent, then prints `RESULT <json>`.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::ctx::Result;

/// A running child of this binary.
pub(crate) struct ChildProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ChildProcess {
    /// Starts `smache-bench <args>`; its stderr goes to ours.
    pub(crate) fn spawn(name: &str, args: &[String]) -> Result<ChildProcess> {
        ChildProcess::spawn_with_env(name, args, &[])
    }

    /// [`spawn`](Self::spawn), with environment variables set for the
    /// child (a URL, which may hold a password, is better passed there
    /// than in its arguments, which `ps` shows).
    pub(crate) fn spawn_with_env(
        name: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<ChildProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        Ok(ChildProcess {
            name: name.to_owned(),
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Reads lines until one starts with `word`; returns the rest of it.
    pub(crate) async fn expect(&mut self, word: &str, timeout: Duration) -> Result<String> {
        let read = async {
            while let Some(line) = self.lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(word) {
                    return Ok(rest.trim().to_owned());
                }
            }
            Err(format!("{} exited before saying {word}", self.name).into())
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(result) => result,
            Err(_) => Err(format!("{} did not say {word} within {timeout:?}", self.name).into()),
        }
    }

    /// Sends one line.
    pub(crate) async fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Waits for the child to exit successfully.
    pub(crate) async fn finish(mut self, timeout: Duration) -> Result<()> {
        drop(self.stdin.take());
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .map_err(|_| format!("{} did not exit within {timeout:?}", self.name))??;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{} failed: {status}", self.name).into())
        }
    }
}

/// Child side: prints a protocol line.
pub(crate) fn say(word: &str, rest: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{word} {rest}");
    let _ = out.flush();
}

/// Child side: waits for the parent's next line (`None` at end of input).
pub(crate) async fn hear() -> Result<Option<String>> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    Ok(lines.next_line().await?)
}
