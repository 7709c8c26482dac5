//! Each console command written out as the text the console parses, so
//! that the CLI builds a typed [`AdminCommand`] and sends exactly what
//! [`AdminCommand::parse`] reads back (a test holds the two together).

use super::cutover::CutoverArgs;
use super::verify::VerifyArgs;
use super::{AdminCommand, PauseHold};
use std::fmt;
use std::time::Duration;

/// A duration as the console's parser reads it.
fn millis(d: &Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl fmt::Display for AdminCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminCommand::ShowVersion => f.write_str("SHOW VERSION"),
            AdminCommand::ShowStatus => f.write_str("SHOW STATUS"),
            AdminCommand::ShowSessions => f.write_str("SHOW SESSIONS"),
            AdminCommand::ShowStats => f.write_str("SHOW STATS"),
            AdminCommand::ShowConfig => f.write_str("SHOW CONFIG"),
            AdminCommand::Help => f.write_str("SHOW HELP"),
            AdminCommand::Pause { timeout, hold } => {
                f.write_str("PAUSE")?;
                if let Some(t) = timeout {
                    write!(f, " {}", millis(t))?;
                }
                if *hold == PauseHold::Detached {
                    f.write_str(" DETACHED")?;
                }
                Ok(())
            }
            AdminCommand::Resume => f.write_str("RESUME"),
            AdminCommand::CaptureStart { database: None } => f.write_str("CAPTURE START"),
            AdminCommand::CaptureStart { database: Some(db) } => {
                write!(f, "CAPTURE START \"{}\"", db.replace('"', "\"\""))
            }
            AdminCommand::CaptureStop => f.write_str("CAPTURE STOP"),
            AdminCommand::ShowCapture => f.write_str("SHOW CAPTURE"),
            AdminCommand::CatchupStart => f.write_str("CATCHUP START"),
            AdminCommand::CatchupStop => f.write_str("CATCHUP STOP"),
            AdminCommand::ShowLag => f.write_str("SHOW LAG"),
            AdminCommand::CaptureAck => f.write_str("CAPTURE ACK"),
            AdminCommand::Cutover(args) => write_cutover(f, args),
            AdminCommand::Abort => f.write_str("ABORT"),
            AdminCommand::ShowCutover => f.write_str("SHOW CUTOVER"),
            AdminCommand::Verify(args) => write_verify(f, args),
            AdminCommand::Reconnect { to, timeout, force } => {
                f.write_str("RECONNECT")?;
                if let Some(to) = to {
                    write!(f, " TO {}", to.name())?;
                }
                write!(f, " TIMEOUT {}", millis(timeout))?;
                if *force {
                    f.write_str(" FORCE")?;
                }
                Ok(())
            }
        }
    }
}

fn write_cutover(f: &mut fmt::Formatter<'_>, args: &CutoverArgs) -> fmt::Result {
    f.write_str("CUTOVER")?;
    if args.dry_run {
        f.write_str(" DRY RUN")?;
    }
    for (name, value) in &args.set {
        if super::cutover::is_flag(name) {
            write!(f, " {name}")?;
        } else {
            // Values are single words (durations, numbers, names).
            write!(f, " {name} {}", value.split_whitespace().collect::<String>())?;
        }
    }
    Ok(())
}

fn write_verify(f: &mut fmt::Formatter<'_>, args: &VerifyArgs) -> fmt::Result {
    f.write_str("VERIFY")?;
    for t in &args.tables {
        write!(f, " {t}")?;
    }
    if let Some(n) = args.rows_per_range {
        write!(f, " ROWS_PER_RANGE {n}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::route::Destination;

    /// Every command the CLI sends, written out and parsed back, is the
    /// same command.
    #[test]
    fn every_command_reads_back_as_itself() {
        let commands = vec![
            AdminCommand::ShowVersion,
            AdminCommand::ShowStatus,
            AdminCommand::ShowSessions,
            AdminCommand::ShowStats,
            AdminCommand::ShowConfig,
            AdminCommand::Help,
            AdminCommand::Pause {
                timeout: None,
                hold: PauseHold::Detached,
            },
            AdminCommand::Pause {
                timeout: Some(Duration::from_millis(1500)),
                hold: PauseHold::Attached,
            },
            AdminCommand::Resume,
            AdminCommand::CaptureStart { database: None },
            AdminCommand::CaptureStart {
                database: Some("My \"Shop\" db".to_owned()),
            },
            AdminCommand::CaptureStop,
            AdminCommand::ShowCapture,
            AdminCommand::CatchupStart,
            AdminCommand::CatchupStop,
            AdminCommand::ShowLag,
            AdminCommand::CaptureAck,
            AdminCommand::Cutover(CutoverArgs {
                dry_run: true,
                set: vec![
                    ("MAX_LAG".to_owned(), "2s".to_owned()),
                    ("FENCE".to_owned(), "read-only".to_owned()),
                    ("CAPTURE_ON_TARGET".to_owned(), "off".to_owned()),
                    ("ALLOW_BYPASS".to_owned(), "true".to_owned()),
                ],
            }),
            AdminCommand::Cutover(CutoverArgs::default()),
            AdminCommand::Abort,
            AdminCommand::ShowCutover,
            AdminCommand::Verify(VerifyArgs {
                tables: vec!["public.accounts".to_owned(), "orders".to_owned()],
                rows_per_range: Some(5000),
            }),
            AdminCommand::Verify(VerifyArgs::default()),
            AdminCommand::Reconnect {
                to: Some(Destination::Target),
                timeout: Duration::from_secs(30),
                force: true,
            },
            AdminCommand::Reconnect {
                to: None,
                timeout: Duration::from_millis(250),
                force: false,
            },
        ];
        for c in commands {
            let text = c.to_string();
            assert_eq!(AdminCommand::parse(&text), Ok(c), "{text}");
        }
    }
}
