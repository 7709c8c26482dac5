//! What one cutover runs with: the `[cutover]` config, overridden per
//! command.

use crate::config::{CutoverConfig, Fence, OnDrainTimeout, VerifyMode};
use std::time::Duration;

/// The options of one cutover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutoverOptions {
    /// Catch-up lag above which it does not start.
    pub max_lag: Duration,
    /// How long open transactions may take to finish once frozen.
    pub drain_timeout: Duration,
    /// What happens to transactions still open then.
    pub on_drain_timeout: OnDrainTimeout,
    /// What the freeze compares.
    pub verify: VerifyMode,
    /// Earlier rows compared, at most, with [`VerifyMode::Sample`].
    pub verify_sample: usize,
    /// The longest the gate stays closed before the flip.
    pub max_pause: Duration,
    /// How long preflight may take to open target backends.
    pub open_timeout: Duration,
    /// What is done to the old source.
    pub fence: Fence,
    /// Sessions bypassing the proxy were seen and accepted.
    pub allow_bypass: bool,
    /// Source sequences with no target counterpart are left alone.
    pub allow_unmapped_sequences: bool,
    /// Capture starts on the target at the flip.
    pub capture_on_target: bool,
}

impl CutoverOptions {
    /// The configured defaults.
    pub fn from_config(c: &CutoverConfig) -> CutoverOptions {
        CutoverOptions {
            max_lag: c.max_lag(),
            drain_timeout: c.drain_timeout(),
            on_drain_timeout: c.on_drain_timeout,
            verify: c.verify,
            verify_sample: c.verify_sample,
            max_pause: c.max_pause(),
            open_timeout: c.open_timeout(),
            fence: c.fence,
            allow_bypass: false,
            allow_unmapped_sequences: c.allow_unmapped_sequences,
            capture_on_target: c.capture_on_target,
        }
    }

    /// One line naming every option, for the report.
    pub fn describe(&self) -> String {
        format!(
            "max_lag {} ms, drain_timeout {} ms, on_drain_timeout {}, verify {} (sample {}), max_pause {} ms, \
             fence {}, allow_bypass {}, capture_on_target {}",
            self.max_lag.as_millis(),
            self.drain_timeout.as_millis(),
            self.on_drain_timeout.name(),
            self.verify.name(),
            self.verify_sample,
            self.max_pause.as_millis(),
            self.fence.name(),
            self.allow_bypass,
            if self.capture_on_target { "on" } else { "off" }
        )
    }
}
