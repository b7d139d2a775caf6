//! Which instance a `#[computed]` call uses: the innermost
//! [`Smache::scope`]'s, else the process-wide default
//! ([`Smache::install`]ed, or made from the environment).

use std::future::Future;

use once_cell::sync::OnceCell;

use super::Smache;
use crate::error::{Error, Result};

/// The process-wide default: [`Smache::global`].
static GLOBAL: OnceCell<Smache> = OnceCell::new();

tokio::task_local! {
    /// The instance of the innermost [`Smache::scope`].
    static CURRENT: Smache;
}

impl Smache {
    /// Makes this instance the process-wide default. Do it once at start-up,
    /// before the first `#[computed]` call.
    ///
    /// # Errors
    /// [`Error::AlreadyInstalled`] if a default is already in place (installed,
    /// or created from the environment by an earlier call).
    ///
    /// ```
    /// let smache = smache::Smache::builder().prefix("app").build()?;
    /// smache.install()?;
    /// assert_eq!(smache::Smache::current().prefix(), "app");
    /// # Ok::<(), smache::Error>(())
    /// ```
    pub fn install(self) -> Result<()> {
        GLOBAL.set(self).map_err(|_| Error::AlreadyInstalled)
    }

    /// The process-wide default: the installed instance, else one made
    /// from the environment ([`Smache::from_env`]). If the environment is
    /// invalid, the error is logged and the embedded store is used.
    pub fn global() -> &'static Smache {
        GLOBAL.get_or_init(|| {
            Smache::from_env().unwrap_or_else(|err| {
                tracing::error!(error = %err, "smache: invalid environment configuration; using the embedded store");
                Smache::embedded()
            })
        })
    }

    /// The instance `#[computed]` functions use here: the innermost
    /// [`scope`](Smache::scope)'s, else [`Smache::global`].
    #[must_use]
    pub fn current() -> Smache {
        CURRENT
            .try_with(Smache::clone)
            .unwrap_or_else(|_| Smache::global().clone())
    }

    /// Runs `f` with the instance [`current`](Smache::current) returns,
    /// borrowed rather than cloned: a hit's path.
    #[inline(always)]
    pub(crate) fn with_current<R>(f: impl Fn(&Smache) -> R) -> R {
        CURRENT.try_with(&f).unwrap_or_else(
            // Outside any scope: `f` is inlined here too, out of the way.
            #[cold]
            |_| f(Smache::global()),
        )
    }

    /// Runs `fut` with this instance as [`Smache::current`]. Tasks spawned
    /// inside do not inherit it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let a = smache::Smache::builder().prefix("a").build().unwrap();
    /// let prefix = a.scope(async { smache::Smache::current().prefix().to_owned() }).await;
    /// assert_eq!(prefix, "a");
    /// # }
    /// ```
    pub fn scope<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> {
        // Not an `async fn`: its future would hold `fut` twice (as its
        // argument and inside the scope's), and every call moves it.
        CURRENT.scope(self.clone(), fut)
    }

    /// Runs `f` with this instance as [`Smache::current`], for synchronous code.
    ///
    /// ```
    /// #[smache::computed(Raw)]
    /// fn triple(x: u32) -> u32 {
    ///     x * 3
    /// }
    ///
    /// let smache = smache::Smache::builder().prefix("sync-docs").build().unwrap();
    /// assert_eq!(smache.scope_sync(|| triple(3)), 9);
    /// ```
    pub fn scope_sync<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), f)
    }
}
