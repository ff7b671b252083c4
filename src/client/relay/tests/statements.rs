//! Named and unnamed statements in transaction mode: prepared per server under the proxy's
//! names, described for their shape, closed and deallocated here, taken back after errors,
//! and run by SQL EXECUTE.

use super::super::instances::NO_STATEMENT;
use super::*;
use crate::prepared;

#[test]
fn named_statement_is_prepared_under_an_instance_name_and_described() {
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::new();
    let (to_server, to_client) =
        rig.send(&mut server, &[parse("s1", "select 1"), bind("s1"), execute(), sync()]);
    assert_eq!(tags(&to_server), "PDBES", "the Describe is the proxy's");
    assert!(to_server[0].1.starts_with(prepared::PREFIX), "{to_server:?}");
    assert_eq!(to_server[0].1, to_server[2].1);
    assert!(to_client.is_empty());
    let got = rig.answer(&mut server, &[parsed(), ok(b'2'), complete(), ready()]);
    assert_eq!(tags(&got), "12CZ", "the Describe's answer is dropped");
    assert!(rig.relay.at_rest());
    let stmt = rig.client.get(b"s1").unwrap();
    assert_eq!(stmt.shape.get().unwrap().param_types[..], b"\0\0"[..]);
}

/// Every client Parse prepares the text afresh, under a name of its own: the client gets
/// PostgreSQL's answer to the text as the database is now, never a statement another client
/// prepared before a DDL.
#[test]
fn every_parse_prepares_an_instance_of_its_own() {
    let mut server = ServerStatements::new(10);
    let mut first = Rig::new();
    let (sent, _) = first.send(&mut server, &[parse("a", "select 1"), sync()]);
    first.answer(&mut server, &[parsed(), ready()]);
    let mut second = Rig::new();
    let (to_server, to_client) =
        second.send(&mut server, &[parse("b", "select 1"), bind("b"), execute(), sync()]);
    assert_eq!(tags(&to_server), "PDBES");
    assert_ne!(to_server[0].1, sent[0].1);
    assert_eq!(first.client.get(b"a").unwrap().base, second.client.get(b"b").unwrap().base);
    assert!(to_client.is_empty());
    assert_eq!(tags(&second.answer(&mut server, &[parsed(), ok(b'2'), complete(), ready()])), "12CZ");
}

#[test]
fn a_statement_missing_on_this_server_waits_for_its_shape() {
    let mut old_server = ServerStatements::new(10);
    let mut rig = Rig::new();
    rig.send(&mut old_server, &[parse("s1", "select 1"), sync()]);
    rig.answer(&mut old_server, &[parsed(), ready()]);
    // Next transaction on another server: prepared and described there first, and the
    // client's Bind waits (unread) for the answer.
    let mut server = ServerStatements::new(10);
    let (to_server, to_client) = rig.send(&mut server, &[bind("s1"), execute(), sync()]);
    assert_eq!(tags(&to_server), "PDH");
    assert!(to_client.is_empty() && rig.relay.blocked() && !rig.relay.at_rest());
    assert_eq!(tags(&rig.answer(&mut server, &[parsed()])), "", "the proxy's answers are dropped");
    assert_eq!(tags(&rig.resumed), "BES");
    assert_eq!(rig.resumed[0].1, to_server[0].1);
    assert_eq!(tags(&rig.answer(&mut server, &[ok(b'2'), complete(), ready()])), "2CZ");
    assert!(rig.relay.at_rest());
    // That instance now serves the statement on this server: no second Parse.
    let (to_server, _) = rig.send(&mut server, &[bind("s1"), execute(), sync()]);
    assert_eq!(tags(&to_server), "BES");
}

/// After DDL changed what a statement returns, PostgreSQL fails the client's statement with
/// 0A000 rather than hand it rows of another shape; so does the proxy when the instance it
/// prepares on another server has another shape than the client's statement. The server
/// fails the message itself (it is sent to a statement that does not exist), so that what
/// follows up to Sync is skipped and the transaction fails there too; the client gets
/// PostgreSQL's 0A000 in place of that error.
#[test]
fn an_instance_of_another_shape_fails_the_statement_as_postgres_does() {
    let mut rig = Rig::new();
    let mut first = ServerStatements::new(10);
    rig.send(&mut first, &[parse("s1", "select * from t"), sync()]);
    rig.answer(&mut first, &[parsed(), ready()]);
    let mut server = ServerStatements::new(10);
    let insert = [parse("", "insert into t default values"), bind(""), execute()];
    let (to_server, _) = rig.send(&mut server, &[&insert[..], &[bind("s1"), execute(), sync()]].concat());
    assert_eq!(tags(&to_server), "PBEPDH");
    let got = rig.answer(&mut server, &[ok(b'1'), ok(b'2'), complete(), ok(b'1'), params(), row_desc(20)]);
    assert_eq!(tags(&got), "12C");
    assert_eq!(rig.resumed[0], ('B', NO_STATEMENT.to_string()), "the server fails the Bind");
    assert_eq!(tags(&rig.resumed), "BES");
    let got = rig.answer(&mut server, &[error("26000"), msg(b'Z', b"I")]);
    assert_eq!(got, vec![('E', "0A000".to_string()), ('Z', String::new())]);
    assert!(rig.relay.at_rest());
    // Another client preparing the same text gets the instance of the new shape.
    let mut other = Rig::new();
    let (to_server, _) = other.send(&mut server, &[parse("s1", "select * from t"), sync()]);
    assert_eq!(tags(&to_server), "PDS");
    other.answer(&mut server, &[ok(b'1'), params(), row_desc(20), ready()]);
    let (to_server, _) = other.send(&mut server, &[bind("s1"), execute(), sync()]);
    assert_eq!(tags(&to_server), "BES");
    // So does SQL EXECUTE of the first client's statement: 0A000, then ReadyForQuery.
    let mut third = ServerStatements::new(10);
    rig.send(&mut third, &[msg(b'Q', b"execute s1\0")]);
    assert_eq!(tags(&rig.answer(&mut third, &[ok(b'1'), params(), row_desc(20), ready()])), "");
    assert_eq!(rig.resumed, vec![('Q', format!("execute {NO_STATEMENT}"))]);
    let got = rig.answer(&mut third, &[error("26000"), ready()]);
    assert_eq!(got, vec![('E', "0A000".to_string()), ('Z', String::new())]);
    assert!(rig.relay.at_rest());
}

/// A simple query waiting for its instance when an earlier request of the client's pipeline
/// fails is skipped, as PostgreSQL skips everything after an error up to Sync: one
/// ReadyForQuery, the client's Sync's.
#[test]
fn a_held_query_after_an_error_is_skipped_to_sync() {
    let mut rig = Rig::new();
    let mut first = ServerStatements::new(10);
    rig.send(&mut first, &[parse("s1", "select 1"), sync()]);
    rig.answer(&mut first, &[parsed(), ready()]);
    let mut server = ServerStatements::new(10);
    let (to_server, _) = rig.send(
        &mut server,
        &[bind("nope"), execute(), msg(b'Q', b"execute s1\0"), msg(b'Q', b"select 2\0"), sync()],
    );
    assert_eq!(tags(&to_server), "BEPDS", "the proxy's Sync after the probe");
    assert_eq!(
        tags(&rig.answer(&mut server, &[error("26000"), ready()])),
        "E",
        "its Sync's answer is dropped"
    );
    assert_eq!(tags(&rig.resumed), "S", "the queries are skipped, the client's Sync goes");
    assert_eq!(tags(&rig.answer(&mut server, &[ready()])), "Z");
    assert!(rig.relay.at_rest());
}

/// The text no longer prepares on this server (a type it names was dropped): the client gets
/// PostgreSQL's error and its waiting messages are skipped to Sync.
#[test]
fn a_failed_instance_fails_the_waiting_message() {
    let mut rig = Rig::new();
    let mut first = ServerStatements::new(10);
    rig.send(&mut first, &[parse("s1", "select 1::t"), sync()]);
    rig.answer(&mut first, &[parsed(), ready()]);
    let mut server = ServerStatements::new(10);
    let (to_server, _) = rig.send(&mut server, &[bind("s1"), execute(), sync()]);
    assert_eq!(tags(&rig.answer(&mut server, &[error("42704")])), "E");
    assert_eq!(tags(&rig.resumed), "S");
    assert_eq!(tags(&rig.answer(&mut server, &[ready()])), "Z");
    assert!(rig.relay.at_rest());
    assert!(!server.touch(&to_server[0].1), "the failed instance is not counted on");
}

#[test]
fn close_is_answered_locally_and_error_skips_to_sync() {
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::new();
    rig.send(&mut server, &[parse("s1", "select 1"), sync()]);
    rig.answer(&mut server, &[parsed(), ready()]);
    let (to_server, to_client) = rig.send(&mut server, &[close("s1"), sync()]);
    assert_eq!(tags(&to_server), "S");
    assert_eq!(tags(&to_client), "3");
    assert_eq!(tags(&rig.answer(&mut server, &[ready()])), "Z");
    assert!(rig.client.is_empty());
    // Bind of an unknown name goes through unchanged; its error skips the rest to Sync.
    let (to_server, _) = rig.send(&mut server, &[bind("nope"), execute(), sync()]);
    assert_eq!(to_server[0], ('B', "nope".into()));
    assert_eq!(tags(&rig.answer(&mut server, &[error("26000"), ready()])), "EZ");
    assert!(rig.relay.at_rest());
}

#[test]
fn duplicate_name_gets_42p05_and_the_batch_is_skipped() {
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::new();
    rig.send(&mut server, &[parse("s1", "select 1"), sync()]);
    rig.answer(&mut server, &[parsed(), ready()]);
    let (to_server, to_client) =
        rig.send(&mut server, &[parse("s1", "select 2"), bind("s1"), execute(), sync()]);
    assert_eq!(tags(&to_server), "S", "only Sync reaches the server");
    assert_eq!(to_client, vec![('E', "42P05".to_string())]);
    assert_eq!(tags(&rig.answer(&mut server, &[ready()])), "Z");
    assert!(rig.relay.at_rest());
}

#[test]
fn failed_parse_leaves_no_name_behind() {
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::new();
    let (to_server, to_client) = rig.send(&mut server, &[parse("s1", "selec 1"), sync()]);
    assert_eq!(tags(&to_server), "PDS");
    assert!(to_client.is_empty(), "no ParseComplete before the server's answer");
    assert_eq!(tags(&rig.answer(&mut server, &[error("42601"), ready()])), "EZ");
    assert!(rig.client.is_empty() && server.is_empty());
    // The client may now use the name.
    let (to_server, _) = rig.send(&mut server, &[parse("s1", "select 1"), sync()]);
    assert_eq!(tags(&to_server), "PDS");
}

#[test]
fn evicted_statements_are_closed_before_the_next_parse() {
    let mut server = ServerStatements::new(1);
    let mut rig = Rig::new();
    rig.send(&mut server, &[parse("a", "select 1"), sync()]);
    rig.answer(&mut server, &[parsed(), ready()]);
    let (to_server, _) = rig.send(&mut server, &[parse("b", "select 2"), sync()]);
    assert_eq!(tags(&to_server), "CPDS", "Close of the evicted statement, then Parse");
    // CloseComplete for the proxy's own Close is dropped.
    assert_eq!(tags(&rig.answer(&mut server, &[ok(b'3'), parsed(), ready()])), "1Z");
}

#[test]
fn deallocate_of_a_managed_statement_is_answered_locally() {
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::new();
    rig.send(&mut server, &[parse("s1", "select 1"), sync()]);
    rig.answer(&mut server, &[parsed(), ready()]);
    let (to_server, to_client) = rig.send(&mut server, &[msg(b'Q', b"DEALLOCATE s1\0")]);
    assert!(to_server.is_empty());
    assert_eq!(tags(&to_client), "CZ");
    assert!(rig.client.is_empty());
}

#[test]
fn unnamed_statements_are_prepared_once_per_server_when_asked() {
    // Off (the default): an unnamed Parse and its Bind go through as they are.
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::new();
    let (to_server, _) = rig.send(&mut server, &[parse("", "select $1"), bind(""), execute(), sync()]);
    assert_eq!(to_server[..2], [('P', String::new()), ('B', String::new())]);
    rig.answer(&mut server, &[ok(b'1'), ok(b'2'), complete(), ready()]);
    assert!(server.is_empty());

    let mut rig = Rig::preparing_unnamed();
    let batch = [parse("", "select $1"), bind(""), describe_statement(""), execute(), sync()];
    let (to_server, to_client) = rig.send(&mut server, &batch);
    assert_eq!(tags(&to_server), "PBDES");
    assert!(to_server[0].1.starts_with(prepared::PREFIX), "{to_server:?}");
    assert_eq!(to_server[0].1, to_server[1].1, "the Bind names the proxy-wide statement");
    assert!(to_client.is_empty());
    let got = rig.answer(&mut server, &[ok(b'1'), ok(b'2'), ok(b't'), ok(b'n'), complete(), ready()]);
    assert_eq!(tags(&got), "12tnCZ");
    assert!(rig.relay.at_rest());
    let global = to_server[0].1.clone();

    // The next transaction on the same server (this client or another): no Parse sent.
    for mut rig in [Rig::preparing_unnamed(), rig] {
        rig.relay = Relay::new();
        let (to_server, to_client) = rig.send(&mut server, &batch);
        assert_eq!(tags(&to_server), "BDES", "no second Parse");
        assert_eq!(to_server[0].1, global);
        assert_eq!(tags(&to_client), "1", "ParseComplete answered by the proxy");
        assert_eq!(
            tags(&rig.answer(&mut server, &[ok(b'2'), ok(b't'), ok(b'n'), complete(), ready()])),
            "2tnCZ"
        );
        assert!(rig.relay.at_rest());
    }

    // Another server lacks it: prepared there in the same batch.
    let mut other = ServerStatements::new(10);
    let mut rig = Rig::preparing_unnamed();
    let (to_server, _) = rig.send(&mut other, &batch);
    assert_eq!(tags(&to_server), "PBDES");
    assert_eq!(to_server[0].1, global);
}

#[test]
fn the_unnamed_statement_ends_where_postgres_ends_it() {
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::preparing_unnamed();
    rig.send(&mut server, &[parse("", "select $1"), sync()]);
    rig.answer(&mut server, &[ok(b'1'), ready()]);
    let (to_server, _) = rig.send(&mut server, &[bind(""), execute(), sync()]);
    assert!(to_server[0].1.starts_with(prepared::PREFIX), "still the client's unnamed statement");
    rig.answer(&mut server, &[ok(b'2'), complete(), ready()]);

    // A simple query ends it: a Bind of "" goes to the server's own unnamed statement.
    rig.send(&mut server, &[msg(b'Q', b"select 1\0")]);
    rig.answer(&mut server, &[complete(), ready()]);
    let (to_server, _) = rig.send(&mut server, &[bind(""), sync()]);
    assert_eq!(to_server[0], ('B', String::new()));
    rig.answer(&mut server, &[error("26000"), ready()]);

    // So does a Parse that fails, and the server does not keep the statement either.
    rig.send(&mut server, &[parse("", "selec 2"), bind(""), sync()]);
    assert_eq!(tags(&rig.answer(&mut server, &[error("42601"), ready()])), "EZ");
    let (to_server, _) = rig.send(&mut server, &[bind(""), sync()]);
    assert_eq!(to_server[0], ('B', String::new()));
    rig.answer(&mut server, &[error("26000"), ready()]);
    let (to_server, _) = rig.send(&mut server, &[parse("", "selec 2"), sync()]);
    assert_eq!(tags(&to_server), "PS", "the failed text is prepared again, not answered");

    // An error before a Parse answered here: no ParseComplete, and the statement is gone.
    rig.answer(&mut server, &[error("42601"), ready()]);
    rig.send(&mut server, &[parse("", "select $1"), sync()]);
    rig.answer(&mut server, &[ready()]);
    let (to_server, to_client) =
        rig.send(&mut server, &[bind("nope"), parse("", "select $1"), bind(""), execute(), sync()]);
    assert_eq!(tags(&to_server), "BBES");
    assert!(to_client.is_empty(), "the ParseComplete waits for the Bind before it");
    assert_eq!(tags(&rig.answer(&mut server, &[error("26000"), ready()])), "EZ");
    assert!(rig.client.get(b"").is_none());
    assert!(rig.relay.at_rest());

    // A Close of the unnamed statement is answered here, and the name is gone.
    let (_, to_client) = rig.send(&mut server, &[parse("", "select $1"), sync()]);
    assert_eq!(tags(&to_client), "1");
    rig.answer(&mut server, &[ready()]);
    let (to_server, to_client) = rig.send(&mut server, &[close(""), sync()]);
    assert_eq!((tags(&to_server), tags(&to_client)), ("S".into(), "3".into()));
    assert!(rig.client.get(b"").is_none());
}

/// An error in one batch takes back what that batch did to the client's names, not what a
/// later batch, read before the server answered, did to the same name.
#[test]
fn an_error_leaves_the_names_a_later_batch_set() {
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::preparing_unnamed();
    rig.send(&mut server, &[parse("", "select $1"), parse("ok", "select 2"), sync()]);
    rig.answer(&mut server, &[ok(b'1'), parsed(), ready()]);
    let global = |rig: &Rig, name: &[u8]| rig.client.get(name).map(|s| s.base.to_string());
    let unnamed = global(&rig, b"").expect("prepared under a proxy-wide name");
    let named = global(&rig, b"ok").unwrap();

    // The unnamed statement: a failing Parse, then (pipelined) one the server holds.
    let (_, to_client) = rig.send(
        &mut server,
        &[parse("", "selec 1"), bind(""), execute(), sync(), parse("", "select $1"), sync()],
    );
    assert!(to_client.is_empty());
    assert_eq!(tags(&rig.answer(&mut server, &[error("42601"), ready(), ready()])), "EZ1Z");
    assert_eq!(global(&rig, b"").as_deref(), Some(unnamed.as_str()), "the second Parse stands");
    let (to_server, _) = rig.send(&mut server, &[bind(""), sync()]);
    assert!(to_server[0].0 == 'B' && to_server[0].1.starts_with(&unnamed), "{to_server:?}");
    rig.answer(&mut server, &[ok(b'2'), ready()]);

    // A named one: Parse fails; the next batch closes the name and prepares it again.
    rig.send(&mut server, &[parse("s", "selec 3"), sync(), close("s"), parse("s", "select 2"), sync()]);
    assert_eq!(tags(&rig.answer(&mut server, &[error("42601"), ready(), parsed(), ready()])), "EZ31Z");
    assert_eq!(global(&rig, b"s").as_deref(), Some(named.as_str()));

    // Within one failed batch, what it did is taken back last first: none of it happened.
    rig.send(
        &mut server,
        &[bind("nope"), parse("t", "select 2"), close("t"), parse("t", "select 2"), sync()],
    );
    assert_eq!(tags(&rig.answer(&mut server, &[error("26000"), ready()])), "EZ");
    assert!(rig.client.get(b"t").is_none(), "none of the batch happened");
    rig.send(&mut server, &[bind("nope"), parse("t", "select 2"), close("t"), sync()]);
    rig.answer(&mut server, &[error("26000"), ready()]);
    assert!(rig.client.get(b"t").is_none(), "never created");
    rig.send(&mut server, &[bind("nope"), close("ok"), parse("ok", "select 4"), sync()]);
    rig.answer(&mut server, &[error("26000"), ready()]);
    assert_eq!(global(&rig, b"ok").as_deref(), Some(named.as_str()), "still the first text");

    // A simple query queued behind the failed batch may have dropped any name: a Close
    // skipped by the error is not taken back then.
    rig.send(&mut server, &[bind("nope"), close("ok"), sync(), msg(b'Q', b"deallocate all\0")]);
    assert_eq!(tags(&rig.answer(&mut server, &[error("26000"), ready()])), "EZCZ");
    assert!(rig.client.get(b"ok").is_none(), "deallocated after the failed batch");
    assert!(rig.relay.at_rest());
}

#[test]
fn an_unnamed_text_whose_parse_is_unanswered_goes_as_the_client_sent_it() {
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::preparing_unnamed();
    let batch = [parse("", "select * from missing"), bind(""), execute(), sync()];
    let (first, _) = rig.send(&mut server, &batch);
    assert!(first[0].1.starts_with(prepared::PREFIX), "{first:?}");
    // Pipelined before the first Parse is answered: not answered here, where it would turn
    // the first Parse's failure into "prepared statement does not exist" for this batch.
    let (second, to_client) = rig.send(&mut server, &batch);
    assert_eq!(second[..2], [('P', String::new()), ('B', String::new())]);
    assert!(to_client.is_empty());
    let got = rig.answer(&mut server, &[error("42P01"), ready(), error("42P01"), ready()]);
    assert_eq!(
        got,
        [('E', "42P01".into()), ('Z', String::new()), ('E', "42P01".into()), ('Z', String::new())]
    );
    assert!(server.is_empty() && rig.client.get(b"").is_none());
    assert!(rig.relay.at_rest());
}

/// SQL EXECUTE of a statement the client prepared through the protocol runs its instance on
/// the server (PostgreSQL knows the statement by the client's name; the server by the
/// proxy's). On a server without one, it is prepared and described first, behind a Sync of
/// the proxy's; when that fails, the client gets the error and that Sync's ReadyForQuery for
/// its query.
#[test]
fn sql_execute_runs_the_instance_of_the_statement() {
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::new();
    let (sent, _) = rig.send(&mut server, &[parse("s1", "select $1::int"), sync()]);
    rig.answer(&mut server, &[parsed(), ready()]);
    let (to_server, _) = rig.send(&mut server, &[msg(b'Q', b"EXECUTE S1 (7)\0")]);
    assert_eq!(to_server, vec![('Q', format!("EXECUTE {} (7)", sent[0].1))]);
    assert_eq!(tags(&rig.answer(&mut server, &[complete(), ready()])), "CZ");
    assert!(rig.relay.at_rest());

    // Another server: the query waits for the instance.
    let mut other = ServerStatements::new(10);
    let (to_server, _) = rig.send(&mut other, &[msg(b'Q', b"execute s1(8)\0")]);
    assert_eq!(tags(&to_server), "PDS");
    assert!(rig.relay.blocked());
    assert_eq!(tags(&rig.answer(&mut other, &[parsed(), ready()])), "", "the proxy's answers");
    assert_eq!(rig.resumed, vec![('Q', format!("execute {}(8)", to_server[0].1))]);
    assert_eq!(tags(&rig.answer(&mut other, &[complete(), ready()])), "CZ");
    assert!(rig.relay.at_rest());

    // A third where the text no longer prepares: PostgreSQL's error, then ReadyForQuery.
    let mut third = ServerStatements::new(10);
    rig.send(&mut third, &[msg(b'Q', b"execute s1(9)\0")]);
    assert_eq!(tags(&rig.answer(&mut third, &[error("42P01"), ready()])), "EZ");
    assert!(rig.resumed.is_empty() && rig.input.is_empty(), "the query is answered, not sent");
    assert!(rig.relay.at_rest());
    // Names the client did not prepare through the protocol go as they are.
    let (to_server, _) = rig.send(&mut third, &[msg(b'Q', b"execute other(1)\0")]);
    assert_eq!(to_server, vec![('Q', "execute other(1)".to_string())]);
}
