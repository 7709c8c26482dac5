//! switchyard-bench: benchmark scenarios (placeholder until the scenarios land).
fn main() {}
