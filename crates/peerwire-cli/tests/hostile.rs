//! Hostile input on one connection affects that connection only: the `peerwire serve`
//! process stays up, a well-behaved client keeps working throughout, and each hostile peer gets
//! a clear `Reject` or `Goodbye` (or, at worst, a closed connection) — never a hang.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{RawClient, ServeProcess, hello_frame, init_logs};
use peerwire_client::Client;
use peerwire_proto::v1::{Code, Frame, Request, Welcome, frame::Kind};
use tokio::io::AsyncWriteExt;

/// What a hostile peer was told before the connection closed.
fn verdict(frames: &[Frame]) -> Option<(&'static str, i32, String)> {
    frames.iter().find_map(|f| match &f.kind {
        Some(Kind::Reject(r)) => Some(("Reject", r.code, r.reason.clone())),
        Some(Kind::Goodbye(g)) => Some(("Goodbye", g.code, g.reason.clone())),
        _ => None,
    })
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn expect(
    path: &std::path::Path,
    name: &str,
    script: Vec<Vec<u8>>,
    after_hello: bool,
    want: (&str, Code),
) {
    let mut raw = RawClient::connect(path).await;
    if after_hello {
        assert!(
            matches!(raw.hello(&[("echo", 1)]).await.kind, Some(Kind::Welcome(_))),
            "{name}"
        );
    }
    for bytes in script {
        raw.send_bytes(&bytes).await;
    }
    let frames = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end())
        .await
        .unwrap_or_else(|_| panic!("{name}: server hung instead of closing"));
    let (kind, code, reason) =
        verdict(&frames).unwrap_or_else(|| panic!("{name}: closed without a reason: {frames:?}"));
    assert_eq!((kind, code), (want.0, want.1 as i32), "{name}: {reason}");
    assert!(!reason.is_empty(), "{name}: empty reason");
}

/// Name, byte writes, whether to complete the handshake first, expected frame and code.
type Case = (&'static str, Vec<Vec<u8>>, bool, (&'static str, Code));

fn frame_bytes(frame: Frame) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    peerwire_proto::codec::FrameCodec::new(u32::MAX)
        .encode(&frame, &mut buf)
        .unwrap();
    buf.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_only_affects_its_own_connection() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let mut server = ServeProcess::start(&path, &["--tick-ms", "20"]);

    // A well-behaved client calls and receives pushes the whole time.
    let good = Client::builder(&path)
        .namespace("echo", &[1])
        .connect()
        .await
        .unwrap();
    let mut ticks = good.subscribe("echo.Tick").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ok_calls = Arc::new(AtomicU64::new(0));
    let caller = {
        let (good, stop, ok_calls) = (good.clone(), stop.clone(), ok_calls.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let req = i.to_be_bytes().to_vec();
                let resp: Vec<u8> = good
                    .call("echo.Echo", &req)
                    .await
                    .expect("good client call failed");
                assert_eq!(resp, req);
                ok_calls.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let request = frame_bytes(Frame::new(Kind::Request(Request {
        id: 1,
        method: "echo.Echo".into(),
        payload: vec![].into(),
        deadline_ms: 0,
    })));
    let mut truncated = vec![0, 0, 0, 100];
    truncated.extend_from_slice(&[8; 10]);
    let mut small_garbage = vec![0, 0, 0, 64];
    small_garbage.extend(noise(7, 64).iter().map(|b| b | 0x80)); // varints that never end
    let cases: Vec<Case> = vec![
        (
            "4 GiB length prefix",
            vec![vec![0xff; 4]],
            false,
            ("Reject", Code::FrameTooLarge),
        ),
        (
            "random bytes",
            vec![noise(42, 4096)],
            false,
            ("Reject", Code::FrameTooLarge),
        ),
        (
            "malformed protobuf",
            vec![small_garbage],
            false,
            ("Reject", Code::ProtocolError),
        ),
        (
            "empty frame",
            vec![vec![0; 4]],
            false,
            ("Reject", Code::ProtocolError),
        ),
        (
            "Request before Hello",
            vec![request.clone()],
            false,
            ("Reject", Code::ProtocolError),
        ),
        (
            "unknown protocol version",
            vec![frame_bytes(hello_frame(&[99], &[]))],
            false,
            ("Reject", Code::UnsupportedVersion),
        ),
        (
            "4 GiB prefix after the handshake",
            vec![vec![0xff; 4]],
            true,
            ("Goodbye", Code::FrameTooLarge),
        ),
        (
            "Welcome from a client",
            vec![frame_bytes(Frame::new(Kind::Welcome(Welcome::default())))],
            true,
            ("Goodbye", Code::ProtocolError),
        ),
        (
            "request id 0",
            vec![frame_bytes(Frame::new(Kind::Request(Request {
                id: 0,
                method: "echo.Echo".into(),
                ..Default::default()
            })))],
            true,
            ("Goodbye", Code::ProtocolError),
        ),
    ];
    for (name, script, after_hello, want) in &cases {
        expect(&path, name, script.clone(), *after_hello, *want).await;
    }

    // A truncated frame, then EOF: the server closes that connection (it may or may not manage
    // to say why before the peer is gone), and nothing else notices.
    let mut raw = RawClient::connect(&path).await;
    raw.send_bytes(&truncated).await;
    raw.stream.shutdown().await.unwrap();
    let frames = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end())
        .await
        .expect("hung on truncated frame");
    if let Some((_, code, _)) = verdict(&frames) {
        assert_eq!(code, Code::ProtocolError as i32);
    }

    // Many hostile peers at once, each with different garbage.
    let mut storm = vec![];
    for seed in 0..32u64 {
        let path = path.clone();
        storm.push(tokio::spawn(async move {
            let mut raw = RawClient::connect(&path).await;
            let mut junk = vec![0, 0, 0, (seed % 200) as u8 + 1];
            junk.extend(noise(seed + 100, 300));
            raw.send_bytes(&junk).await;
            tokio::time::timeout(Duration::from_secs(10), raw.read_to_end())
                .await
                .expect("storm peer hung")
        }));
    }
    for s in storm {
        s.await.unwrap();
    }

    stop.store(true, Ordering::Relaxed);
    caller.await.unwrap();
    assert!(ok_calls.load(Ordering::Relaxed) > 0);
    // Pushes still arrive, in order, without a gap.
    let a = tokio::time::timeout(Duration::from_secs(5), ticks.next())
        .await
        .unwrap()
        .unwrap();
    let b = tokio::time::timeout(Duration::from_secs(5), ticks.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.seq, a.seq + 1);
    // The server is up and takes new clients.
    assert!(server.is_running());
    let fresh = Client::builder(&path)
        .namespace("echo", &[1])
        .connect()
        .await
        .unwrap();
    let back: Vec<u8> = fresh
        .call("echo.Echo", &b"still here".to_vec())
        .await
        .unwrap();
    assert_eq!(back, b"still here");
}
