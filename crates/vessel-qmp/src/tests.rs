//! Protocol handling against a scripted peer on the other end of a
//! `UnixStream::pair()`.

use std::error::Error as _;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::*;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7 "}, "capabilities": ["oob"]}}"#;

/// Generous bound so a broken client fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(5);

struct Peer {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Peer {
    fn new(stream: UnixStream) -> Self {
        let (read, writer) = stream.into_split();
        Peer {
            reader: BufReader::new(read),
            writer,
        }
    }

    async fn send_raw(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).await.unwrap();
    }

    async fn send(&mut self, message: Value) {
        self.send_raw(&format!("{message}\r\n")).await;
    }

    async fn reply(&mut self, command: &Value, value: Value) {
        self.send(json!({"return": value, "id": command["id"]}))
            .await;
    }

    async fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = within(self.reader.read_line(&mut line)).await.unwrap();
        assert!(n > 0, "client closed the connection");
        serde_json::from_str(&line).unwrap()
    }
}

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .expect("test step took too long")
}

/// A client that completed the handshake, plus the peer's end.
async fn connected() -> (Qmp, EventStream, Peer) {
    let (client, server) = UnixStream::pair().unwrap();
    let script = tokio::spawn(async move {
        let mut peer = Peer::new(server);
        peer.send_raw(&format!("{GREETING}\r\n")).await;
        let command = peer.recv().await;
        assert_eq!(command["execute"], "qmp_capabilities");
        peer.reply(&command, json!({})).await;
        peer
    });
    let (qmp, events) = within(Qmp::handshake(client, LIMIT)).await.unwrap();
    (qmp, events, script.await.unwrap())
}

/// Runs a handshake against a peer that only sends `script`, keeping the
/// peer's end open until the handshake finished.
async fn handshake_against(script: &'static str, timeout: Duration) -> QmpError {
    let (client, server) = UnixStream::pair().unwrap();
    let mut peer = Peer::new(server);
    peer.send_raw(script).await;
    let result = within(Qmp::handshake(client, timeout)).await;
    drop(peer);
    result.expect_err("handshake should fail")
}

#[test]
fn qmp_handle_is_send_sync_and_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    fn assert_send<T: Send + 'static>() {}
    assert_traits::<Qmp>();
    assert_send::<EventStream>();
    assert_send::<QmpError>();
}

#[test]
fn errors_display_what_happened() {
    let io = QmpError::Io(io::Error::new(io::ErrorKind::BrokenPipe, "pipe"));
    assert_eq!(io.to_string(), "QMP connection I/O failed");
    assert_eq!(io.source().unwrap().to_string(), "pipe");
    let refused = QmpError::Command {
        class: "GenericError".into(),
        desc: "boom".into(),
    };
    assert_eq!(
        refused.to_string(),
        "QEMU refused the command: boom (GenericError)"
    );
}

#[tokio::test]
async fn greeting_is_parsed_into_version_and_capabilities() {
    let (qmp, _events, _peer) = connected().await;
    assert_eq!(
        qmp.greeting(),
        &Greeting {
            version: QemuVersion {
                major: 7,
                minor: 2,
                micro: 22,
                package: "Debian 1:7.2+dfsg-7".into(),
            },
            capabilities: vec!["oob".into()],
        }
    );
    assert!(!qmp.is_closed());
}

#[tokio::test]
async fn handshake_negotiates_capabilities_before_returning() {
    let (client, server) = UnixStream::pair().unwrap();
    let handshake = tokio::spawn(Qmp::handshake(client, LIMIT));
    let mut peer = Peer::new(server);
    peer.send_raw(&format!("{GREETING}\r\n")).await;
    let command = peer.recv().await;
    assert_eq!(command["execute"], "qmp_capabilities");
    assert!(command["id"].is_u64());
    assert!(command.get("arguments").is_none());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !handshake.is_finished(),
        "handshake returned before capabilities were acknowledged"
    );
    peer.reply(&command, json!({})).await;
    let (qmp, _events) = within(handshake).await.unwrap().unwrap();
    assert_eq!(qmp.greeting().version.major, 7);
}

#[tokio::test]
async fn refused_capabilities_negotiation_fails_the_handshake() {
    let (client, server) = UnixStream::pair().unwrap();
    let handshake = tokio::spawn(Qmp::handshake(client, LIMIT));
    let mut peer = Peer::new(server);
    peer.send_raw(&format!("{GREETING}\n")).await;
    let command = peer.recv().await;
    peer.send(json!({"error": {"class": "CommandNotFound", "desc": "nope"}, "id": command["id"]}))
        .await;
    match within(handshake).await.unwrap() {
        Err(QmpError::Command { class, .. }) => assert_eq!(class, "CommandNotFound"),
        other => panic!("expected a Command error, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_greeting_is_a_protocol_error() {
    match handshake_against("hello there\n", LIMIT).await {
        QmpError::Protocol(text) => assert!(text.contains("hello there"), "{text}"),
        other => panic!("expected Protocol, got {other:?}"),
    }
    match handshake_against("{\"QMP\": {\"capabilities\": []}}\n", LIMIT).await {
        QmpError::Protocol(text) => assert!(text.contains("capabilities"), "{text}"),
        other => panic!("expected Protocol, got {other:?}"),
    }
}

#[tokio::test]
async fn connection_closed_before_greeting_is_closed() {
    let (client, server) = UnixStream::pair().unwrap();
    drop(server);
    let result = within(Qmp::handshake(client, LIMIT)).await;
    assert!(matches!(result, Err(QmpError::Closed)), "{result:?}");
}

#[tokio::test]
async fn missing_greeting_times_out() {
    let after = Duration::from_millis(100);
    match handshake_against("", after).await {
        QmpError::Timeout { command, after: t } => {
            assert_eq!(command, "greeting");
            assert_eq!(t, after);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn unanswered_capabilities_negotiation_times_out_within_the_handshake_budget() {
    let after = Duration::from_millis(100);
    match handshake_against(
        concat!(
            r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 8}}}}"#,
            "\n"
        ),
        after,
    )
    .await
    {
        QmpError::Timeout { command, after: t } => {
            assert_eq!(command, "qmp_capabilities");
            assert_eq!(t, after);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn command_arguments_are_sent_when_given_and_omitted_otherwise() {
    let (qmp, _events, mut peer) = connected().await;
    let with_args = qmp.execute("set-thing", Some(json!({"name": "a", "value": 1})));
    let peer_side = async {
        let command = peer.recv().await;
        assert_eq!(command["execute"], "set-thing");
        assert_eq!(command["arguments"], json!({"name": "a", "value": 1}));
        peer.reply(&command, json!({})).await;
    };
    let (result, ()) = within(async { tokio::join!(with_args, peer_side) }).await;
    assert_eq!(result.unwrap(), json!({}));

    let without_args = qmp.execute("query-status", None);
    let peer_side = async {
        let command = peer.recv().await;
        assert!(command.get("arguments").is_none(), "{command}");
        peer.reply(&command, json!({"status": "running"})).await;
    };
    let (result, ()) = within(async { tokio::join!(without_args, peer_side) }).await;
    assert_eq!(result.unwrap()["status"], "running");
}

#[tokio::test]
async fn replies_out_of_order_reach_their_own_callers() {
    let (qmp, _events, mut peer) = connected().await;
    let peer_side = async {
        let mut commands = Vec::new();
        for _ in 0..3 {
            commands.push(peer.recv().await);
        }
        let mut ids: Vec<u64> = commands.iter().map(|c| c["id"].as_u64().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3, "ids must be unique");
        for command in commands.iter().rev() {
            peer.reply(command, json!({"answer_to": command["execute"]}))
                .await;
        }
    };
    let (a, b, c, ()) = within(async {
        tokio::join!(
            qmp.execute("a", None),
            qmp.execute("b", None),
            qmp.execute("c", None),
            peer_side
        )
    })
    .await;
    assert_eq!(a.unwrap()["answer_to"], "a");
    assert_eq!(b.unwrap()["answer_to"], "b");
    assert_eq!(c.unwrap()["answer_to"], "c");
}

#[tokio::test]
async fn error_reply_maps_to_command_error() {
    let (qmp, _events, mut peer) = connected().await;
    let peer_side = async {
        let command = peer.recv().await;
        peer.send(json!({"id": command["id"], "error": {"class": "GenericError", "desc": "boom"}}))
            .await;
    };
    let (result, ()) =
        within(async { tokio::join!(qmp.execute("explode", None), peer_side) }).await;
    match result {
        Err(QmpError::Command { class, desc }) => {
            assert_eq!(class, "GenericError");
            assert_eq!(desc, "boom");
        }
        other => panic!("expected Command error, got {other:?}"),
    }
}

#[tokio::test]
async fn events_interleaved_with_replies_are_delivered_in_order() {
    let (qmp, mut events, mut peer) = connected().await;
    let peer_side = async {
        let command = peer.recv().await;
        peer.send(json!({"timestamp": {"seconds": 1, "microseconds": 2}, "event": "FIRST", "data": {"n": 1}}))
            .await;
        peer.reply(&command, json!("done")).await;
        peer.send(json!({"timestamp": {"seconds": 3, "microseconds": 4}, "event": "SECOND"}))
            .await;
    };
    let (result, ()) = within(async { tokio::join!(qmp.execute("go", None), peer_side) }).await;
    assert_eq!(result.unwrap(), "done");
    // The reader handles messages in order, so an event sent before the reply
    // is queued by the time the reply is delivered.
    let first = events.rx.try_recv().expect("FIRST queued before the reply");
    assert_eq!(
        first,
        QmpEvent {
            event: "FIRST".into(),
            data: json!({"n": 1}),
            timestamp_micros: 1_000_002,
        }
    );
    let second = within(events.next()).await.unwrap();
    assert_eq!(second.event, "SECOND");
    assert_eq!(second.data, Value::Null);
    assert_eq!(second.timestamp_micros, 3_000_004);
}

#[tokio::test]
async fn timeout_returns_timeout_and_the_late_reply_is_ignored() {
    let (qmp, _events, mut peer) = connected().await;
    let after = Duration::from_millis(50);
    let (result, slow) =
        within(async { tokio::join!(qmp.execute_with_timeout("slow", None, after), peer.recv()) })
            .await;
    match result {
        Err(QmpError::Timeout { command, after: t }) => {
            assert_eq!(command, "slow");
            assert_eq!(t, after);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(
        qmp.inner.shared.pending().is_empty(),
        "timed-out entry leaked"
    );

    let peer_side = async {
        peer.reply(&slow, json!("late")).await;
        let next = peer.recv().await;
        peer.reply(&next, json!("on time")).await;
    };
    let (result, ()) = within(async { tokio::join!(qmp.execute("next", None), peer_side) }).await;
    assert_eq!(result.unwrap(), "on time");
    assert!(!qmp.is_closed());
}

#[tokio::test]
async fn cancelled_command_leaves_no_pending_entry() {
    let (qmp, _events, mut peer) = connected().await;
    {
        let command = qmp.execute("abandoned", None);
        tokio::pin!(command);
        tokio::select! {
            _ = &mut command => panic!("no reply was sent"),
            received = peer.recv() => assert_eq!(received["execute"], "abandoned"),
        }
    }
    assert!(qmp.inner.shared.pending().is_empty());
}

#[tokio::test]
async fn reply_with_unknown_id_is_ignored() {
    let (qmp, _events, mut peer) = connected().await;
    let peer_side = async {
        let command = peer.recv().await;
        peer.send(json!({"return": "wrong", "id": 999_999})).await;
        peer.reply(&command, json!("right")).await;
    };
    let (result, ()) = within(async { tokio::join!(qmp.execute("x", None), peer_side) }).await;
    assert_eq!(result.unwrap(), "right");
}

#[tokio::test]
async fn reply_without_usable_id_is_ignored() {
    let (qmp, _events, mut peer) = connected().await;
    let peer_side = async {
        let command = peer.recv().await;
        peer.send(json!({"return": "no id"})).await;
        peer.send(json!({"return": "string id", "id": "abc"})).await;
        peer.reply(&command, json!("right")).await;
    };
    let (result, ()) = within(async { tokio::join!(qmp.execute("x", None), peer_side) }).await;
    assert_eq!(result.unwrap(), "right");
}

#[tokio::test]
async fn unparseable_messages_after_handshake_are_skipped() {
    let (qmp, mut events, mut peer) = connected().await;
    let peer_side = async {
        let command = peer.recv().await;
        peer.send_raw("garbage\r\n\r\n[1, 2]\n{\"neither\": 1}\n")
            .await;
        peer.send(json!({"event": "AFTER"})).await;
        peer.reply(&command, json!("right")).await;
    };
    let (result, ()) = within(async { tokio::join!(qmp.execute("x", None), peer_side) }).await;
    assert_eq!(result.unwrap(), "right");
    assert_eq!(within(events.next()).await.unwrap().event, "AFTER");
}

#[tokio::test]
async fn message_split_across_writes_is_reassembled() {
    let (qmp, _events, mut peer) = connected().await;
    let peer_side = async {
        let command = peer.recv().await;
        let text = json!({"return": {"status": "paused"}, "id": command["id"]}).to_string();
        let (head, tail) = text.split_at(text.len() / 2);
        peer.send_raw(head).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        peer.send_raw(tail).await;
        peer.send_raw("\r\n").await;
    };
    let (result, ()) = within(async { tokio::join!(qmp.execute("x", None), peer_side) }).await;
    assert_eq!(result.unwrap()["status"], "paused");
}

#[tokio::test]
async fn long_reply_is_received_whole() {
    let (qmp, _events, mut peer) = connected().await;
    let big = "q".repeat(4 * 1024 * 1024);
    let peer_side = async {
        let command = peer.recv().await;
        peer.reply(&command, json!(big)).await;
    };
    let (result, ()) =
        within(async { tokio::join!(qmp.execute("query-big", None), peer_side) }).await;
    assert_eq!(result.unwrap().as_str().unwrap().len(), big.len());
}

#[tokio::test]
async fn oversized_message_fails_pending_commands_with_protocol_error() {
    let (qmp, _events, mut peer) = connected().await;
    let pending = tokio::spawn({
        let qmp = qmp.clone();
        async move { qmp.execute("huge", None).await }
    });
    peer.recv().await;
    // Written from a task of its own: the client stops reading partway.
    let writer = tokio::spawn(async move {
        let flood = vec![b'x'; MAX_MESSAGE_LEN + 1];
        let _ = peer.writer.write_all(&flood).await;
        peer
    });
    match within(pending).await.unwrap() {
        Err(QmpError::Protocol(text)) => assert!(text.contains("exceeds"), "{text}"),
        other => panic!("expected Protocol, got {other:?}"),
    }
    within(qmp.closed()).await;
    writer.abort();
}

#[tokio::test]
async fn eof_fails_pending_commands_with_closed_and_resolves_closed() {
    let (qmp, mut events, mut peer) = connected().await;
    let waiter = tokio::spawn({
        let qmp = qmp.clone();
        async move { qmp.closed().await }
    });
    let pending = tokio::spawn({
        let qmp = qmp.clone();
        async move { qmp.execute("never-answered", None).await }
    });
    peer.recv().await;
    peer.send(json!({"event": "LAST_WORDS"})).await;
    assert!(!qmp.is_closed());
    drop(peer);

    let result = within(pending).await.unwrap();
    assert!(matches!(result, Err(QmpError::Closed)), "{result:?}");
    within(waiter).await.unwrap();
    // Also after the fact.
    within(qmp.closed()).await;
    assert!(qmp.is_closed());
    // Events received before the end are still delivered, then the stream ends.
    assert_eq!(within(events.next()).await.unwrap().event, "LAST_WORDS");
    assert_eq!(within(events.next()).await, None);
    let after = qmp.execute("too-late", None).await;
    assert!(matches!(after, Err(QmpError::Closed)), "{after:?}");
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let (qmp, mut events, mut peer) = connected().await;
    let other = qmp.clone();
    drop(qmp);
    drop(other);
    let mut rest = String::new();
    let n = within(peer.reader.read_line(&mut rest)).await.unwrap();
    assert_eq!(n, 0, "peer should see end of stream, got {rest:?}");
    assert_eq!(within(events.next()).await, None);
}
