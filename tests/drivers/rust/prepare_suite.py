"""Copies tokio-postgres's own tests/ from its registry source into a scratch
crate and makes the suite's hard-coded port configurable.

Usage: prepare_suite.py SRC_DIR CRATE_DIR CARGO_TOML_TEMPLATE CARGO_LOCK

The suite expects a server on port 5433 (its docker setup). Every string
literal in main.rs and runtime.rs that names port 5433 is wrapped in
`&crate::switchyard_port(...)`, which swaps in $SWITCHYARD_PG_PORT at run
time, so one build runs against the cluster directly and through the proxy.
parse.rs is left alone: there 5433 is data the parser tests compare against.
"""

import pathlib
import re
import shutil
import sys

PORT_FN = '''

/// Added by switchyard's tests/drivers/rust/prepare_suite.py: the suite's
/// hard-coded port 5433, replaced by $SWITCHYARD_PG_PORT.
fn switchyard_port(s: &str) -> String {
    let port = std::env::var("SWITCHYARD_PG_PORT").expect("SWITCHYARD_PG_PORT is not set");
    s.replace("5433", &port)
}
'''

# A plain string literal (no escaped quotes; the suite has none) with 5433.
LITERAL = re.compile(r'"([^"\\]*5433[^"\\]*)"')


def rewrite(path: pathlib.Path) -> int:
    text = path.read_text()
    text, count = LITERAL.subn(r'&crate::switchyard_port("\1")', text)
    if path.name == "main.rs":
        text += PORT_FN
    path.write_text(text)
    return count


def main() -> None:
    src, crate, template, lock = map(pathlib.Path, sys.argv[1:5])
    version = re.search(r'^version = "([^"]+)"', (src / "Cargo.toml").read_text(), re.M)
    if version is None:
        sys.exit(f"no version in {src / 'Cargo.toml'}")
    crate.mkdir(parents=True, exist_ok=True)
    tests = crate / "tests"
    if tests.exists():
        shutil.rmtree(tests)
    shutil.copytree(src / "tests", tests)
    # Same versions of shared dependencies as the workspace; cargo adds the rest.
    shutil.copyfile(lock, crate / "Cargo.lock")
    manifest = template.read_text().replace("@VERSION@", version.group(1))
    (crate / "Cargo.toml").write_text(manifest)
    rewritten = sum(rewrite(tests / "test" / name) for name in ("main.rs", "runtime.rs"))
    if rewritten < 10:
        sys.exit(f"only {rewritten} port literals rewritten; has the suite changed?")
    print(f"prepared {crate} from {src} ({rewritten} port literals rewritten)")


if __name__ == "__main__":
    main()
