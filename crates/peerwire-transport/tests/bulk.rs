//! Large frames over a mutual-TLS connection, through the transport's own pieces (the TLS
//! handshake, the sealed `FrameSink`, the `Opened` read side and the frame reader): a large
//! payload is sealed straight from the caller's buffer, a few hundred KiB per write, and read a
//! few hundred KiB per read; these tests check that what arrives is what was sent, that the
//! frame limit still refuses a frame one byte over it with the same typed error, and that a
//! peer that does not read still stops the sender at the sink's bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use peerwire_proto::codec::CodecError;
use peerwire_proto::v1::{Event, Frame, Ping, Request, frame::Kind};
use peerwire_security::identity::provision;
use peerwire_security::tls::{ClientTls, ServerTls, TlsMode};
use peerwire_transport::plain::{PlainWriter, split};
use peerwire_transport::stream::{self, FrameReader};
use peerwire_transport::{BULK_FRAME, FrameSink, SEAL_CHUNK, SinkError, tls};

const MAX_FRAME: u32 = 8 << 20;

/// The other halves of a [`tls_pair`]: the server's sink and the client's reader, kept open
/// for the test's length.
type Unused = (Arc<FrameSink<PlainWriter>>, FrameReader);

/// Both ends of a mutual-TLS connection over a socket pair, past the TLS handshake: the
/// client's sink (bounded by `max_bytes`) and the server's frame reader, both with a frame limit
/// of `max_frame`.
async fn tls_pair(
    max_frame: u32,
    max_bytes: usize,
) -> (Arc<FrameSink<PlainWriter>>, FrameReader, Unused) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    provision(dir.path(), "bulk-test", false).unwrap();
    let server_tls = ServerTls::from_dir(dir.path(), TlsMode::Mutual)
        .unwrap()
        .unwrap();
    let client_tls = ClientTls::from_dir(dir.path(), TlsMode::Mutual)
        .unwrap()
        .unwrap();
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let (ra, wa) = split(a).unwrap();
    let (rb, wb) = split(b).unwrap();
    let (client, server) = tokio::join!(
        tls::connect(&client_tls, ra, wa),
        tls::accept(&server_tls, rb, wb)
    );
    let (client, client_wr) = client.unwrap();
    let (server, server_wr) = server.unwrap();
    let (client_rd, client_writer) = stream::sealed(client, client_wr, max_bytes, 1 << 20);
    let (server_rd, server_writer) = stream::sealed(server, server_wr, max_bytes, 1 << 20);
    let mut client_reader = stream::reader(client_rd);
    let mut server_reader = stream::reader(server_rd);
    let sink = client_writer.into_session(&mut client_reader, max_frame, max_bytes, 1 << 20);
    let server_sink = server_writer.into_session(&mut server_reader, max_frame, max_bytes, 1 << 20);
    (sink, server_reader, (server_sink, client_reader))
}

fn patterned(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

fn request(id: u64, payload: Bytes) -> Frame {
    Frame::new(Kind::Request(Request {
        id,
        method: "bulk.Echo".into(),
        payload,
        deadline_ms: 0,
    }))
}

/// Large frames (sealed from the caller's payload, many records per write) mixed with small
/// ones arrive whole, byte for byte, and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tls_frames_arrive_byte_identical_and_in_order() {
    let (sink, mut reader, _unused) = tls_pair(MAX_FRAME, 16 << 20).await;
    let flusher = tokio::spawn({
        let sink = sink.clone();
        async move { sink.run().await }
    });
    // Sizes around the seal chunk and the bulk threshold, and a frame near the limit.
    let sizes = [
        1 << 20,
        100,
        SEAL_CHUNK - 1,
        SEAL_CHUNK + 1,
        BULK_FRAME,
        3 * SEAL_CHUNK + 7,
        (MAX_FRAME as usize) - 64,
        17_000,
    ];
    let frames: Vec<Frame> = sizes
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| {
            [
                request(i as u64, patterned(n, i as u8)),
                Frame::new(Kind::Ping(Ping { nonce: i as u64 })),
            ]
        })
        .collect();
    let sender = tokio::spawn({
        let sink = sink.clone();
        let frames = frames.clone();
        async move {
            for f in &frames {
                sink.send(f).await.unwrap();
            }
        }
    });
    for (i, want) in frames.iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(got == *want, "frame {i} differs from what was sent");
    }
    sender.await.unwrap();
    assert!(sink.flushed(Duration::from_secs(10)).await);
    sink.close();
    flusher.await.unwrap();
}

/// A large frame one byte over the limit is refused before anything is written, with the
/// typed error; one exactly at the limit goes through, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_frame_over_the_limit_is_refused_and_one_at_it_passes() {
    let max = 1 << 20;
    let (sink, mut reader, _unused) = tls_pair(max, 16 << 20).await;
    let flusher = tokio::spawn({
        let sink = sink.clone();
        async move { sink.run().await }
    });
    // A request's encoding is its payload plus a fixed overhead here: find the payload that
    // makes the frame exactly `max` bytes.
    let overhead = prost::Message::encoded_len(&request(1, patterned(900_000, 0))) - 900_000;
    let at_limit = request(1, patterned(max as usize - overhead, 1));
    assert_eq!(prost::Message::encoded_len(&at_limit), max as usize);
    let over = request(2, patterned(max as usize - overhead + 1, 2));
    match sink.try_send(&over) {
        Err(SinkError::Codec(CodecError::OutgoingTooLarge { len, max: m })) => {
            assert_eq!((len, m), (max as usize + 1, max));
        }
        other => panic!("a frame over the limit: {other:?}"),
    }
    sink.send(&at_limit).await.unwrap();
    let after = Frame::new(Kind::Ping(Ping { nonce: 9 }));
    sink.send(&after).await.unwrap();
    for want in [&at_limit, &after] {
        let got = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(got == *want);
    }
    sink.close();
    flusher.await.unwrap();
}

/// A peer that does not read: large frames fill the socket (its larger send buffer included)
/// and then the sink's bound, where `try_send` fails and `send` waits; once the peer reads,
/// every frame arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_to_a_peer_that_does_not_read_stop_at_the_bound() {
    let bound = 4 << 20;
    let (sink, mut reader, _unused) = tls_pair(MAX_FRAME, bound).await;
    let flusher = tokio::spawn({
        let sink = sink.clone();
        async move { sink.run().await }
    });
    let frame = |i: u64| {
        Frame::new(Kind::Event(Event {
            topic: "bulk.Tick".into(),
            seq: i,
            payload: patterned(3 << 20, i as u8),
        }))
    };
    let mut sent = 0u64;
    loop {
        match sink.try_send(&frame(sent)) {
            Ok(()) => sent += 1,
            Err(SinkError::Full) => break,
            Err(e) => panic!("{e}"),
        }
        // The socket takes a few MiB at most; the sink's bound the rest.
        assert!(
            sent < 8,
            "{sent} frames of 3 MiB taken by a peer that does not read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = tokio::spawn({
        let sink = sink.clone();
        async move { sink.send(&frame(sent)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "send did not wait for room");
    for i in 0..=sent {
        let got = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(got == frame(i), "event {i} differs");
    }
    waiting.await.unwrap().unwrap();
    sink.close();
    flusher.await.unwrap();
}
