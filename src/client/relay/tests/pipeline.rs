//! The queue of expected answers: simple queries and Syncs counted, COPY's ignored Syncs,
//! the proxy's own answers kept in order and out of half-forwarded messages, the cap on
//! answers owed, the timing of Executes.

use super::*;

#[test]
fn simple_queries_count_ready_for_query() {
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::new();
    let q = msg(b'Q', b"select 1\0");
    rig.send(&mut server, &[q.clone(), q]);
    assert_eq!(rig.relay.outstanding, 2);
    let row = msg(b'D', b"\0\x01\0\0\0\x011");
    assert_eq!(tags(&rig.answer(&mut server, &[ok(b'T'), row, complete(), ready()])), "TDCZ");
    assert!(!rig.relay.at_rest());
    assert_eq!(tags(&rig.answer(&mut server, &[error("42601"), ready()])), "EZ");
    assert!(rig.relay.at_rest());
}

#[test]
fn sync_sent_before_copy_data_is_not_answered() {
    // tokio-postgres' copy_in: Bind, Execute, Sync; then data, CopyDone, Sync.
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::new();
    rig.send(&mut server, &[bind(""), execute(), sync()]);
    assert_eq!(tags(&rig.answer(&mut server, &[ok(b'2'), msg(b'G', b"\0\0\0")])), "2G");
    rig.send(&mut server, &[msg(b'd', b"1\n"), msg(b'c', b""), sync()]);
    assert_eq!(tags(&rig.answer(&mut server, &[complete(), ready()])), "CZ");
    assert!(rig.relay.at_rest(), "{:?}", rig.relay);
    // A relay without statement rewriting (session mode) counts the same way.
    let mut relay = Relay::new();
    let mut client = ClientStatements::default();
    let mut timing = crate::client::timing::Timing::default();
    let mut st = Statements {
        timing: &mut timing,
        client: &mut client,
        server: &mut server,
        rewrite: false,
        unnamed: false,
        pinned: false,
    };
    let mut input = BytesMut::from(&[bind(""), execute(), sync()].concat()[..]);
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    relay.client_to_server(&mut input, &mut to_server, &mut to_client, 1 << 20, &mut st).unwrap();
    let mut answers = BytesMut::from(&[ok(b'2'), msg(b'G', b"\0\0\0")].concat()[..]);
    relay.server_to_client(&mut answers, &mut to_client, 1 << 20, &mut st).unwrap();
    let mut input = BytesMut::from(&[msg(b'c', b""), sync()].concat()[..]);
    relay.client_to_server(&mut input, &mut to_server, &mut to_client, 1 << 20, &mut st).unwrap();
    let mut answers = BytesMut::from(&[complete(), ready()].concat()[..]);
    relay.server_to_client(&mut answers, &mut to_client, 1 << 20, &mut st).unwrap();
    assert!(relay.at_rest());
}

#[test]
fn local_answer_waits_for_the_server_message_being_forwarded() {
    // Found with the post_auth fuzz target's framing check: a Close the proxy answers itself, sent while an
    // asynchronous server message (a notice, a notification) was half forwarded, put its
    // CloseComplete into the middle of that message and the client's stream out of step.
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::new();
    rig.send(&mut server, &[parse("s1", "select 1"), sync()]);
    assert_eq!(tags(&rig.answer(&mut server, &[parsed(), ready()])), "1Z");
    let notice = msg(b'N', b"SNOTICE\0Mhello\0\0");
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    let (relay, mut st) = rig.split(&mut server);
    let mut half = BytesMut::from(&notice[..8]);
    relay.server_to_client(&mut half, &mut to_client, 1 << 20, &mut st).unwrap();
    let mut input = BytesMut::from(&close("s1")[..]);
    relay.client_to_server(&mut input, &mut to_server, &mut to_client, 1 << 20, &mut st).unwrap();
    assert!(to_server.is_empty(), "the Close is answered by the proxy");
    let mut rest = BytesMut::from(&notice[8..]);
    relay.server_to_client(&mut rest, &mut to_client, 1 << 20, &mut st).unwrap();
    assert_eq!(tags(&decode(to_client)), "N3");
}

/// A client that keeps asking for answers the proxy owes behind an unanswered query (here a
/// Parse and a Close of the same name, over and over) is not read without limit: the queue
/// stops at MAX_EXPECTED, the server is asked to flush, and reading resumes as it answers.
#[test]
fn answers_owed_are_capped_and_the_server_asked_to_flush() {
    let mut rig = Rig::new();
    let mut server = ServerStatements::new(100);
    let mut input = vec![msg(b'Q', b"select 1\0")];
    for _ in 0..3 * MAX_EXPECTED {
        input.push(parse("a", "select 1"));
        input.push(close("a"));
    }
    let mut inbuf = BytesMut::from(&input.concat()[..]);
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    let (relay, mut st) = rig.split(&mut server);
    // Written to the server as the relay fills its output.
    let mut sent = Vec::new();
    while relay.client_to_server(&mut inbuf, &mut to_server, &mut to_client, 1 << 20, &mut st).unwrap()
        == Stop::Output
    {
        sent.extend(decode(to_server.split()));
    }
    sent.extend(decode(to_server.split()));
    assert!(!inbuf.is_empty(), "the client was read to the end");
    assert!(relay.expect.len() <= MAX_EXPECTED);
    assert_eq!(sent.iter().filter(|(t, _)| *t == 'H').count(), 1, "{:?}", &sent[..3]);
    // Calling again while nothing was answered reads nothing more and asks no second flush.
    let left = inbuf.len();
    relay.client_to_server(&mut inbuf, &mut to_server, &mut to_client, 1 << 20, &mut st).unwrap();
    assert_eq!(inbuf.len(), left);
    assert!(to_server.is_empty());
}

/// In transaction mode the relay reads Parse, Bind and Close once, for itself and for the
/// timing: each Execute is timed with the text of the statement its Bind named, and a closed
/// name has no text any more.
#[test]
fn executes_are_timed_with_the_text_of_the_bound_statement() {
    let mut rig = Rig::new();
    let mut server = ServerStatements::new(10);
    rig.send(
        &mut server,
        &[
            parse("s1", "select $1"),
            parse("", "select 2"),
            bind("s1"),
            execute(),
            bind(""),
            execute(),
            sync(),
        ],
    );
    let got =
        rig.answer(&mut server, &[parsed(), ok(b'1'), ok(b'2'), complete(), ok(b'2'), complete(), ready()]);
    assert_eq!(tags(&got), "112C2CZ");
    let texts: Vec<_> = rig.timing.finished.drain(..).map(|f| f.text).collect();
    assert_eq!(texts, [Some(Bytes::from_static(b"select $1")), Some(Bytes::from_static(b"select 2"))]);
    rig.send(&mut server, &[close("s1"), sync()]);
    rig.answer(&mut server, &[ready()]);
    rig.send(&mut server, &[bind("s1"), execute(), sync()]);
    rig.answer(&mut server, &[ok(b'2'), complete(), ready()]);
    assert_eq!(rig.timing.finished.len(), 1);
    assert_eq!(rig.timing.finished[0].text, None, "the closed name's text is forgotten");
}

/// A client that pipelines without ever letting the queue of expected answers drain keeps
/// it bounded (the read part is dropped), and every answer still goes where it belongs.
#[test]
fn a_queue_that_never_drains_stays_bounded_and_in_order() {
    let mut rig = Rig::new();
    let mut server = ServerStatements::new(1 << 20);
    rig.send(&mut server, &[parse("s1", "select 1"), sync()]);
    rig.answer(&mut server, &[parsed(), ready()]);
    // One request always outstanding: each round adds a Bind, a locally answered Close and
    // a Parse, and the server answers the previous round's Bind and Parse.
    rig.send(&mut server, &[bind("s1")]);
    for round in 0..20 * MAX_EXPECTED {
        let (to_server, to_client) =
            rig.send(&mut server, &[bind("s1"), close("s1"), parse("s1", "select 1")]);
        // From the third round, the instance the round before last prepared is closed: the
        // last round's has the same shape.
        let closes = round >= 2;
        assert_eq!(tags(&to_server), if closes { "BCPD" } else { "BPD" }, "round {round}");
        assert!(to_client.is_empty(), "round {round}: the Close waits for the Binds before it");
        let got = match round {
            0 => rig.answer(&mut server, &[ok(b'2')]),
            1 | 2 => rig.answer(&mut server, &[ok(b'2'), parsed()]),
            _ => rig.answer(&mut server, &[ok(b'2'), ok(b'3'), parsed()]),
        };
        // The previous round's BindComplete, then (from the second round) its Close and
        // Parse, answered here once their turn came.
        let expected = if round == 0 { "2" } else { "231" };
        assert_eq!(tags(&got), expected, "round {round}");
        assert!(
            rig.relay.expect.items.capacity() <= 64,
            "round {round}: {}",
            rig.relay.expect.items.capacity()
        );
    }
}
