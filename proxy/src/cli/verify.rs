//! `switchyard verify`: runs `VERIFY` on a proxy's console, printing its
//! progress as it goes and a row per table, and exits with a code saying
//! whether the tables agree.

use super::{Console, ConsoleError};
use crate::admin::reply::{ConsoleReply, VerifyReply};
use crate::admin::{AdminCommand, VerifyArgs};

/// Exit code: every table compared agrees.
pub const EXIT_CLEAN: i32 = 0;
/// Exit code: the console could not be reached, refused, or answered rows
/// that do not read as VERIFY's.
pub const EXIT_ERROR: i32 = 1;
/// Exit code: some rows differ.
pub const EXIT_DIFFERS: i32 = 5;

/// Runs the verification, printing each NOTICE and then the table; returns
/// the exit code.
pub async fn run(console: &Console, args: VerifyArgs) -> i32 {
    let command = AdminCommand::Verify(args);
    let rows = match super::console_streaming(console, &command, |notice| println!("{notice}")).await {
        Ok(rows) => rows,
        Err(ConsoleError::Unreachable(e) | ConsoleError::Refused(_, e)) => {
            eprintln!("switchyard: {e}");
            return EXIT_ERROR;
        }
    };
    print!("{}", super::render_rows(&rows));
    match VerifyReply::from_rows(&rows) {
        Ok(reply) => exit_code(&reply),
        Err(e) => {
            eprintln!("switchyard: {e}");
            EXIT_ERROR
        }
    }
}

/// The exit code for a verification's outcome, saying on stderr how many
/// rows differ when some do.
fn exit_code(reply: &VerifyReply) -> i32 {
    match reply.differing() {
        0 => EXIT_CLEAN,
        n => {
            eprintln!("switchyard: {n} row(s) differ between the source and the target");
            EXIT_DIFFERS
        }
    }
}
