//! docs/guide.md cannot rot: the code it shows must be this crate's files, byte for byte, and
//! the server and client it builds must talk over mutual TLS as the guide says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const MARK: &str = "<!-- file: ";

#[test]
fn the_guide_shows_this_crates_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let guide = std::fs::read_to_string(root.join("docs/guide.md")).unwrap();
    let mut checked = 0;
    let mut rest = guide.as_str();
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let (path, after) = after.split_once(" -->").unwrap();
        let body_start = after.find("```").unwrap();
        let body = &after[body_start..];
        let body = &body[body.find('\n').unwrap() + 1..];
        let end = body.find("\n```").unwrap();
        let shown = &body[..=end];
        let file = std::fs::read_to_string(root.join(path)).unwrap();
        assert_eq!(shown, file, "docs/guide.md shows {path} differently");
        checked += 1;
        rest = &body[end..];
    }
    assert!(checked >= 6, "only {checked} files quoted");
}

#[test]
fn server_and_client_talk_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("identity");
    // What `peerwire init --dir identity` does.
    peerwire_security::identity::provision(&identity, "guide", false).unwrap();
    let socket = dir.path().join("run/greeter.sock");
    let mut server = Command::new(env!("CARGO_BIN_EXE_greeter-server"))
        .arg(&socket)
        .arg(&identity)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    let out = Command::new(env!("CARGO_BIN_EXE_greeter-client"))
        .arg(&socket)
        .arg(&identity)
        .arg("guide")
        .output()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "Hello, guide!\ngreeted guide (greeting #1)\n");
}
