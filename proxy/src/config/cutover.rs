//! `[cutover]`: the defaults a `CUTOVER` runs with; each can be overridden
//! on the command.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What the cutover does with transactions still open when the drain
/// timeout passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDrainTimeout {
    /// Call the cutover off: the gate reopens on the source.
    Abort,
    /// Cancel their running statements (the clients get 57014, as from
    /// pg_cancel_backend) and go on once they have ended their
    /// transactions; a second later, terminate the backends of those still
    /// in one (idle in it, or not rolling back): 57P01, rolled back.
    Cancel,
}

impl OnDrainTimeout {
    /// The name used in the config and on the console.
    pub fn name(self) -> &'static str {
        match self {
            OnDrainTimeout::Abort => "abort",
            OnDrainTimeout::Cancel => "cancel",
        }
    }
}

/// How much the cutover compares inside the freeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyMode {
    /// Nothing (not recommended: a VERIFY beforehand is then the only evidence).
    None,
    /// The rows synced in the final pass.
    Synced,
    /// Those, plus a bounded random sample of rows written earlier.
    Sample,
}

impl VerifyMode {
    /// The name used in the config and on the console.
    pub fn name(self) -> &'static str {
        match self {
            VerifyMode::None => "none",
            VerifyMode::Synced => "synced",
            VerifyMode::Sample => "sample",
        }
    }
}

/// How the old source is kept from being written after the flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fence {
    /// Nothing: only the proxy stops writing to it.
    None,
    /// New sessions of the source database default to read-only
    /// (`ALTER DATABASE ... SET default_transaction_read_only = on`) and
    /// other sessions still connected are terminated, except the proxy's
    /// control role's.
    ReadOnly,
    /// Sessions that bypass the proxy are terminated (they would write to
    /// a database nobody reads any more).
    TerminateBypass,
}

impl Fence {
    /// The name used in the config.
    pub fn name(self) -> &'static str {
        match self {
            Fence::None => "none",
            Fence::ReadOnly => "read-only",
            Fence::TerminateBypass => "terminate-bypass",
        }
    }
}

/// The `[cutover]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverConfig {
    /// Catch-up lag (age of the oldest commit not yet applied) above which
    /// the cutover does not start, ms. Default 1000.
    #[serde(default = "default_max_lag_ms")]
    pub max_lag_ms: u64,
    /// How long open transactions may take to finish once the gate is
    /// closed, ms. Default 5000.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// What to do with transactions still open then. Default `abort`.
    #[serde(default = "default_on_drain_timeout")]
    pub on_drain_timeout: OnDrainTimeout,
    /// What the freeze compares. Default `sample`.
    #[serde(default = "default_verify")]
    pub verify: VerifyMode,
    /// Rows written before the final pass that `sample` compares, at most.
    /// Default 250.
    #[serde(default = "default_verify_sample")]
    pub verify_sample: usize,
    /// The longest the gate stays closed: past it, before the flip, the
    /// cutover aborts and reopens the gate on the source, ms. Default 10000.
    #[serde(default = "default_max_pause_ms")]
    pub max_pause_ms: u64,
    /// How long preflight may take to open every session's target backend, ms.
    /// Default 10000.
    #[serde(default = "default_open_timeout_ms")]
    pub open_timeout_ms: u64,
    /// What is done to the old source after the flip. Default `none`.
    #[serde(default = "default_fence")]
    pub fence: Fence,
    /// Sequences of the source with no counterpart on the target are
    /// allowed (left alone) rather than stopping the cutover. Default false.
    #[serde(default)]
    pub allow_unmapped_sequences: bool,
    /// Capture starts on the target at the flip, so that every write after
    /// it is logged for a rollback. Default true.
    #[serde(default = "default_true")]
    pub capture_on_target: bool,
    /// Where capture on the target writes its log. Default: a `target`
    /// directory inside `capture.log_dir`.
    #[serde(default)]
    pub target_log_dir: Option<std::path::PathBuf>,
}

impl Default for CutoverConfig {
    fn default() -> Self {
        CutoverConfig {
            max_lag_ms: default_max_lag_ms(),
            drain_timeout_ms: default_drain_timeout_ms(),
            on_drain_timeout: default_on_drain_timeout(),
            verify: default_verify(),
            verify_sample: default_verify_sample(),
            max_pause_ms: default_max_pause_ms(),
            open_timeout_ms: default_open_timeout_ms(),
            fence: default_fence(),
            allow_unmapped_sequences: false,
            capture_on_target: true,
            target_log_dir: None,
        }
    }
}

impl CutoverConfig {
    /// Checks the limits fit together.
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        let invalid = |key: &str, message: String| super::ConfigError::Invalid {
            key: key.to_owned(),
            message,
        };
        for (key, v) in [
            ("cutover.drain_timeout_ms", self.drain_timeout_ms),
            ("cutover.max_pause_ms", self.max_pause_ms),
            ("cutover.open_timeout_ms", self.open_timeout_ms),
        ] {
            if v == 0 || v > 3_600_000 {
                return Err(invalid(key, "must be above 0 and at most 3600000 (an hour)".into()));
            }
        }
        if self.drain_timeout_ms >= self.max_pause_ms {
            return Err(invalid(
                "cutover.drain_timeout_ms",
                format!(
                    "is {} ms, not below cutover.max_pause_ms ({} ms): the drain is part of the pause; \
                     lower it or raise max_pause_ms",
                    self.drain_timeout_ms, self.max_pause_ms
                ),
            ));
        }
        Ok(())
    }

    /// The lag limit.
    pub fn max_lag(&self) -> Duration {
        Duration::from_millis(self.max_lag_ms)
    }

    /// The drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// The pause limit.
    pub fn max_pause(&self) -> Duration {
        Duration::from_millis(self.max_pause_ms)
    }

    /// The limit for opening target backends.
    pub fn open_timeout(&self) -> Duration {
        Duration::from_millis(self.open_timeout_ms)
    }
}

fn default_true() -> bool {
    true
}

fn default_max_lag_ms() -> u64 {
    1_000
}
fn default_drain_timeout_ms() -> u64 {
    5_000
}
fn default_on_drain_timeout() -> OnDrainTimeout {
    OnDrainTimeout::Abort
}
fn default_verify() -> VerifyMode {
    VerifyMode::Sample
}
fn default_verify_sample() -> usize {
    250
}
fn default_max_pause_ms() -> u64 {
    10_000
}
fn default_open_timeout_ms() -> u64 {
    10_000
}
fn default_fence() -> Fence {
    Fence::None
}
