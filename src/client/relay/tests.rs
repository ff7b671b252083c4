use super::*;
use crate::wire::frame::split_frame;
use bytes::BufMut;

fn msg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![t];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    b.put_slice(sql.as_bytes());
    b.put_u8(0);
    b.put_i16(0);
    msg(b'P', &b)
}

fn bind(stmt: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_slice(stmt.as_bytes());
    b.put_u8(0);
    b.put_slice(&[0, 0, 0, 0, 0, 0]);
    msg(b'B', &b)
}

fn execute() -> Vec<u8> {
    msg(b'E', b"\0\0\0\0\0")
}

fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

fn close(stmt: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend_from_slice(stmt.as_bytes());
    b.push(0);
    msg(b'C', &b)
}

/// Message types and the names they carry (Parse/Bind statement names) in a byte stream.
fn decode(mut buf: BytesMut) -> Vec<(char, String)> {
    let mut out = Vec::new();
    while let Some((t, body)) = split_frame(&mut buf, 1 << 20).unwrap() {
        let name = match t {
            b'P' => String::from_utf8_lossy(body[..].split(|&b| b == 0).next().unwrap()).into_owned(),
            b'B' => String::from_utf8_lossy(body[..].split(|&b| b == 0).nth(1).unwrap()).into_owned(),
            b'Q' => String::from_utf8_lossy(&body[..body.len() - 1]).into_owned(),
            b'E' if !body.starts_with(b"\0\0\0") => {
                ErrorFields::parse(&body).map(|f| f.code).unwrap_or_default()
            }
            _ => String::new(),
        };
        out.push((t as char, name));
    }
    assert!(buf.is_empty());
    out
}

type Msgs = Vec<(char, String)>;

struct Rig {
    relay: Relay,
    client: ClientStatements,
    timing: crate::client::timing::Timing,
    /// PGSIDECAR_PREPARE_UNNAMED_STATEMENTS.
    unnamed: bool,
    /// Client bytes not read yet (the relay waits for a statement to be described).
    input: BytesMut,
    /// What the relay sent the server when an answer let it read the client again.
    resumed: Msgs,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            relay: Relay::new(),
            client: ClientStatements::default(),
            timing: Default::default(),
            unnamed: false,
            input: BytesMut::new(),
            resumed: Vec::new(),
        }
    }

    fn preparing_unnamed() -> Rig {
        Rig { unnamed: true, ..Rig::new() }
    }

    /// The relay and the statement state it works on (transaction mode, rewriting), as the
    /// session lends them.
    fn split<'a>(&'a mut self, server: &'a mut ServerStatements) -> (&'a mut Relay, Statements<'a>) {
        let st = Statements {
            timing: &mut self.timing,
            client: &mut self.client,
            server,
            rewrite: true,
            unnamed: self.unnamed,
            pinned: false,
        };
        (&mut self.relay, st)
    }

    /// Client sends `input`; returns (to server, to client). All of it is read unless the
    /// relay waits for a statement to be described.
    fn send(&mut self, server: &mut ServerStatements, input: &[Vec<u8>]) -> (Msgs, Msgs) {
        let mut inbuf = std::mem::take(&mut self.input);
        inbuf.extend_from_slice(&input.concat());
        let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
        let (relay, mut st) = self.split(server);
        relay.client_to_server(&mut inbuf, &mut to_server, &mut to_client, 1 << 20, &mut st).unwrap();
        assert!(inbuf.is_empty() || relay.blocked());
        self.input = inbuf;
        (decode(to_server), decode(to_client))
    }

    /// Server answers with `answers`; returns what the client gets. Client bytes left
    /// waiting are read again once the answers free them (what they make the relay send the
    /// server is in `resumed`).
    fn answer(&mut self, server: &mut ServerStatements, answers: &[Vec<u8>]) -> Vec<(char, String)> {
        let mut inbuf = BytesMut::from(&answers.concat()[..]);
        let mut out = BytesMut::new();
        let mut input = std::mem::take(&mut self.input);
        let mut to_server = BytesMut::new();
        let (relay, mut st) = self.split(server);
        while !inbuf.is_empty() {
            relay.server_to_client(&mut inbuf, &mut out, 1 << 20, &mut st).unwrap();
        }
        if !input.is_empty() && !relay.blocked() {
            relay.client_to_server(&mut input, &mut to_server, &mut out, 1 << 20, &mut st).unwrap();
        }
        self.input = input;
        self.resumed = decode(to_server);
        decode(out)
    }
}

fn ok(t: u8) -> Vec<u8> {
    msg(t, b"")
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn complete() -> Vec<u8> {
    msg(b'C', b"SELECT 1\0")
}

fn error(code: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"SERROR\0C");
    b.extend_from_slice(code.as_bytes());
    b.extend_from_slice(b"\0Mboom\0\0");
    msg(b'E', &b)
}

/// ParameterDescription of a statement without parameters.
fn params() -> Vec<u8> {
    msg(b't', b"\0\0")
}

/// RowDescription of one column `c` of type `oid`.
fn row_desc(oid: i32) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(1);
    b.put_slice(b"c\0");
    b.put_i32(0);
    b.put_i16(0);
    b.put_i32(oid);
    b.put_i16(4);
    b.put_i32(-1);
    b.put_i16(0);
    msg(b'T', &b)
}

/// The server's answers to a named Parse as the relay sends it: ParseComplete, then the
/// answer to the Describe it adds (an int4 column).
fn parsed() -> Vec<u8> {
    [ok(b'1'), params(), row_desc(23)].concat()
}

fn tags(v: &[(char, String)]) -> String {
    v.iter().map(|(t, _)| *t).collect()
}

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

/// A query that differs from an earlier one only in its numbers is recalled (no scan), and
/// what the scans found in the earlier one still holds: session state, custom settings, the
/// fingerprint its execution is counted under.
#[test]
fn recalled_texts_keep_what_the_scans_found() {
    for round in 0..3 {
        let mut rig = Rig::new();
        let mut server = ServerStatements::new(10);
        let lock = format!("select pg_advisory_lock({})\0", 10 + round);
        // From the second round on, each text is found remembered.
        let recalled = |t: &str| crate::observe::normalize::recall(&t.as_bytes()[..t.len() - 1]).is_some();
        assert_eq!(recalled(&lock), round > 0);
        rig.send(&mut server, &[msg(b'Q', lock.as_bytes())]);
        assert!(rig.relay.state_hint.is_some(), "round {round}");
        let set = format!("set app.tenant = {}\0", 100 * round + 1);
        assert_eq!(recalled(&set), round > 0);
        rig.send(&mut server, &[msg(b'Q', set.as_bytes())]);
        assert_eq!(rig.relay.custom_names, ["app.tenant"], "round {round}");
        let plain = format!("select * from t where id = {}\0", round + 5);
        rig.send(&mut server, &[msg(b'Q', plain.as_bytes())]);
        rig.answer(&mut server, &[ready(), ready(), ready()]);
        // Every query's fingerprint went with its timer, equal to the normalizer's.
        let fingerprints: Vec<_> = rig.timing.finished.iter().map(|f| f.fingerprint).collect();
        let expected: Vec<_> = [&lock, &set, &plain]
            .iter()
            .map(|t| Some(crate::observe::normalize::fingerprint(&t.as_bytes()[..t.len() - 1])))
            .collect();
        assert_eq!(fingerprints, expected, "round {round}");
    }
}

/// An unnamed Parse of the text the client parsed last time takes what the scans found then:
/// each transaction still sees the session state and the custom setting the text names, and a
/// different text is scanned afresh.
#[test]
fn unnamed_parse_of_the_same_text_keeps_what_the_scans_found() {
    let mut rig = Rig::new();
    let mut server = ServerStatements::new(10);
    for round in 0..3 {
        rig.relay = Relay::new(); // a new transaction of the same client
        let text = "select pg_advisory_lock(1), set_config('app.tenant', 'x', false)";
        rig.send(&mut server, &[parse("", text), bind(""), execute(), sync()]);
        assert!(rig.relay.state_hint.is_some(), "round {round}");
        assert_eq!(rig.relay.custom_names, ["app.tenant"], "round {round}");
    }
    rig.relay = Relay::new();
    rig.send(&mut server, &[parse("", "select 1"), bind(""), execute(), sync()]);
    assert!(rig.relay.state_hint.is_none());
    assert!(rig.relay.custom_names.is_empty());
}

/// What the relay remembers with a text holds for every text that the cache takes for the same
/// but for numbers: on generated pairs of texts that differ in digits, whenever the cache would
/// take one for the other, both scans agree.
#[test]
fn the_remembered_facts_do_not_depend_on_digits() {
    const PIECES: [&[u8]; 16] = [
        b"set", b" ", b"12", b"7", b"app.x", b"temp", b"=", b"(", b"listen", b"'a'", b"t", b",", b"SeT",
        b"-", b"_", b".",
    ];
    let mut same = 0;
    for (k, sql) in
        crate::testing::texts_from_pieces(&PIECES, 20_000, 10, 0x9e37_79b9_7f4a_7c15).into_iter().enumerate()
    {
        let other = crate::testing::other_digits(&sql, k);
        if !crate::observe::normalize::same_but_numbers(&sql, &other) {
            continue;
        }
        same += 1;
        assert_eq!(
            mentions_session_state(&sql),
            mentions_session_state(&other),
            "{:?}",
            String::from_utf8_lossy(&sql)
        );
        assert_eq!(
            crate::params::may_name_custom_settings(&sql),
            crate::params::may_name_custom_settings(&other),
            "{:?}",
            String::from_utf8_lossy(&sql)
        );
    }
    assert!(same > 5_000, "{same}");
}

#[test]
fn session_state_words() {
    assert!(mentions_session_state(b"LISTEN chan"));
    assert!(mentions_session_state(b"select pg_advisory_lock(1)"));
    assert!(mentions_session_state(b"create TEMP table t(x int)"));
    assert!(!mentions_session_state(b"select * from users where id = $1"));
    assert!(mentions_session_state(b"SELECT pg_try_advisory_xact_lock(7)"));
    assert!(mentions_session_state(b"DEALLOCATE ALL"));
    assert!(mentions_session_state(b"unlisten *"));
    assert!(!mentions_session_state(b"select attempts, updated_at from jobs"));
    assert!(!mentions_session_state(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1;"));
    assert!(mentions_session_state(b"discard ALL"));
    assert!(mentions_session_state(b"PREPARE q AS select 1"));
    assert!(mentions_session_state(b"begin; declare c cursor with hold for select 1"));
    assert!(!mentions_session_state(b"select tem, pre, drip from t"));
    // Word starts at and across the eight-byte steps of the scan.
    assert!(!mentions_session_state(b"xxxxxxxTEMP"));
    assert!(!mentions_session_state(b"xxxxxxxxTEMP table"));
    assert!(mentions_session_state(b"1234567temp"));
    assert!(mentions_session_state(b"12345678temp"));
    assert!(mentions_session_state(b"select 1 from t; listen"));
    // Non-ASCII bytes are not letters (a false positive here only costs a check).
    assert!(mentions_session_state("select éprepare".as_bytes()));
}

/// The first-letter dispatch of the word comparison relies on the words being lower case and
/// grouped by first letter.
#[test]
fn state_words_are_grouped_by_first_letter() {
    for (i, w) in WORDS.iter().enumerate() {
        assert!(w.iter().all(u8::is_ascii_lowercase), "{:?}", String::from_utf8_lossy(w));
        let later_same = WORDS[i + 1..].iter().position(|x| x[0] == w[0]);
        assert!(later_same.is_none_or(|p| p == 0), "words starting with {:?} are not together", w[0] as char);
    }
}

/// The scan agrees with the rule it implements (a word start, one of the words as a prefix of
/// its first 8 letters, any case) on texts built from pieces of those words.
#[test]
fn session_state_scan_matches_the_rule() {
    fn rule(sql: &[u8]) -> bool {
        (0..sql.len()).any(|i| {
            let start = sql[i].is_ascii_alphabetic() && (i == 0 || !sql[i - 1].is_ascii_alphabetic());
            let rest = sql[i..].to_ascii_lowercase();
            start && WORDS.iter().any(|w| rest.starts_with(&w[..w.len().min(8)]))
        })
    }
    // Bytes next to the letters in ASCII ('@', '[', '`', '{') are not letters.
    const PIECES: [&[u8]; 24] = [
        b"dro",
        b"p",
        b"CLO",
        b"se",
        b"prep",
        b"are",
        b"TEMP",
        b"te",
        b"x",
        b"_",
        b" ",
        b"1",
        b"dealloc",
        b"ate",
        b"(",
        b"listen",
        b"UN",
        b"\xc3\xa9",
        b"advisor",
        b"y",
        b"@",
        b"[",
        b"`",
        b"{",
    ];
    let mut positives = 0;
    for sql in crate::testing::texts_from_pieces(&PIECES, 20_000, 9, 0x2545_f491_4f6c_dd1d) {
        let expected = rule(&sql);
        positives += usize::from(expected);
        assert_eq!(mentions_session_state(&sql), expected, "{:?}", String::from_utf8_lossy(&sql));
    }
    assert!(positives > 1_000 && positives < 19_000, "{positives}");
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

/// A named statement that may leave session state (an advisory lock) makes every transaction
/// that binds it check the server, not only the one that prepared it; other statements none.
#[test]
fn binds_of_a_named_statement_that_may_leave_state_check_the_server() {
    let mut rig = Rig::new();
    let mut server = ServerStatements::new(10);
    rig.send(
        &mut server,
        &[parse("lock", "select pg_advisory_lock($1)"), parse("plain", "select $1"), sync()],
    );
    rig.answer(&mut server, &[parsed(), parsed(), ready()]);
    assert!(rig.relay.state_hint.is_none(), "preparing leaves no state");
    for round in 0..2 {
        rig.relay = Relay::new(); // a later transaction
        rig.send(&mut server, &[bind("plain"), execute(), sync()]);
        assert!(rig.relay.state_hint.is_none(), "round {round}");
        rig.send(&mut server, &[bind("lock"), execute(), sync()]);
        let hint = rig.relay.state_hint.take().expect("the lock's Bind asks for a check");
        assert!(hint.windows(17).any(|w| w == b"pg_advisory_lock("), "{hint:?}");
    }
}

fn describe_statement(stmt: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend_from_slice(stmt.as_bytes());
    b.push(0);
    msg(b'D', &b)
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
fn an_unnamed_text_that_may_leave_session_state_stays_unnamed() {
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::preparing_unnamed();
    rig.send(&mut server, &[parse("", "select $1"), sync()]);
    rig.answer(&mut server, &[ok(b'1'), ready()]);
    let (to_server, _) =
        rig.send(&mut server, &[parse("", "select pg_advisory_lock($1)"), bind(""), execute(), sync()]);
    assert_eq!(to_server[..2], [('P', String::new()), ('B', String::new())], "not the earlier statement");
    assert!(rig.relay.state_hint.is_some(), "the server is checked before it goes back");
    assert_eq!(server.len(), 1);
}

#[test]
fn set_config_is_found_in_any_case_and_place() {
    for yes in [
        "select set_config('a.b', $1, false)",
        "SELECT PG_CATALOG.SET_CONFIG('statement_timeout', '5s', false)",
        "select 1, Set_Config('x', 'y', true)",
        "select reset_config_x()", // a false positive only costs a read-back
    ] {
        assert!(calls_set_config(yes.as_bytes()), "{yes}");
    }
    for no in ["select 1", "set_confi", "_config", "select setconfig()", "select set_conf"] {
        assert!(!calls_set_config(no.as_bytes()), "{no}");
    }
}

#[test]
fn statements_calling_set_config_have_the_settings_read_back() {
    let mut server = ServerStatements::new(10);
    let mut rig = Rig::new();
    rig.send(&mut server, &[msg(b'Q', b"select set_config('statement_timeout', '1s', false)\0")]);
    assert!(rig.relay.settings_changed, "a simple query");

    rig.relay = Relay::new();
    rig.send(&mut server, &[parse("s", "select set_config('app.tenant', $1, false)"), sync()]);
    rig.answer(&mut server, &[ok(b'1'), ready()]);
    for round in 0..2 {
        rig.relay = Relay::new(); // a later transaction: only the Bind says what runs
        rig.send(&mut server, &[bind("s"), execute(), sync()]);
        assert!(rig.relay.settings_changed, "round {round}");
        assert_eq!(rig.relay.custom_names, ["app.tenant"], "round {round}");
    }
    rig.relay = Relay::new();
    rig.send(&mut server, &[parse("", "select $1"), bind(""), execute(), sync()]);
    assert!(!rig.relay.settings_changed && rig.relay.custom_names.is_empty());
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
