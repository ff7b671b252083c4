#![allow(dead_code)]

pub mod pg;
pub mod proxy;

/// The error of a result that must have failed (for values that are not `Debug`).
pub fn must_fail<T, E>(r: Result<T, E>, what: &str) -> E {
    match r {
        Ok(_) => panic!("expected an error: {what}"),
        Err(e) => e,
    }
}
