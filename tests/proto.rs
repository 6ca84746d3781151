//! The work-order contract's own check: `buf lint` over `proto/` with the STANDARD rules and a
//! comment on every element (`proto/buf.yaml`), as the platforms' teams' tooling would run it.
//! buf comes from npm (`.ci/run` installs it under `.ci/tools`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn buf() -> PathBuf {
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/tools/node_modules/.bin/buf");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("buf")
    }
}

#[test]
fn the_proto_passes_buf_lint() {
    let output = Command::new(buf())
        .arg("lint")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto"))
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) => panic!(
            "buf not found ({e}): npm install --prefix .ci/tools @bufbuild/buf (.ci/run does)"
        ),
    };
    assert!(
        output.status.success(),
        "buf lint:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
