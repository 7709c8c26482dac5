//! switchyard-bench: the benchmark scenarios, each a module with its
//! options and its `run`, and the demo, which the `switchyard` binary runs
//! as `switchyard demo`. Every scenario prints a table and writes its
//! numbers to a JSON file under `bench/results/`.

pub mod capture_bench;
mod capturing;
pub mod catchup_bench;
pub mod cutover_bench;
pub mod demo;
pub mod move_bench;
mod pgbench;
mod pgbouncer;
pub mod proxy_bench;
mod proxy_thread;
mod report;
