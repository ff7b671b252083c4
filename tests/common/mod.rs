#![allow(dead_code)]

pub mod blocking;
pub mod chop;
pub mod pg;
pub mod proxy;
pub mod raw;
pub mod relay;
pub mod watch;

/// The error of a result that must have failed (for values that are not `Debug`).
pub fn must_fail<T, E>(r: Result<T, E>, what: &str) -> E {
    match r {
        Ok(_) => panic!("expected an error: {what}"),
        Err(e) => e,
    }
}

/// The first value of the first row of a simple-query answer.
pub fn first_value(msgs: &[tokio_postgres::SimpleQueryMessage]) -> String {
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .expect("a row")
}

/// The SQLSTATE of an error, or a description when there is none.
pub fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_else(|| format!("no code: {e}"))
}
