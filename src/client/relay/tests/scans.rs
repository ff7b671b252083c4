//! What statement texts tell the relay: session state, custom settings and `set_config`,
//! remembered with a text and noted at every execution of a named statement.

use super::super::facts::{calls_set_config, mentions_session_state, WORDS};
use super::*;

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
