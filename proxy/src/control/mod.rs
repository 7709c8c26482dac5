//! The control layer: what acts on the whole proxy rather than on one
//! session. The cutover runs here as its own task and state machine; the
//! admin console only starts it, asks it to abort, and renders what it
//! reports.

pub mod cutover;
pub mod route_file;
pub mod verify;
