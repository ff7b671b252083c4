//! Pool sizing from the database's connection limit: what the database says when it can be
//! asked, the Heroku plan's published limit otherwise.

/// What the database reports about its connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbLimits {
    pub max_connections: u32,
    pub superuser_reserved: u32,
    /// The role's own CONNECTION LIMIT, if it has one.
    pub role_limit: Option<u32>,
    /// Client connections open when pgsidecar looked (its own probe included).
    pub in_use: u32,
}

/// Connection limits of Heroku Postgres plans (checked 2026-11; verify with
/// `SHOW max_connections`). `None` for an unknown name.
pub fn plan_limit(plan: &str) -> Option<u32> {
    let plan = plan.trim().to_ascii_lowercase();
    let plan = plan.strip_prefix("heroku-postgresql:").unwrap_or(&plan);
    match plan {
        "essential-0" | "essential-1" | "mini" | "basic" | "hobby-dev" | "hobby-basic" => return Some(20),
        "essential-2" => return Some(40),
        "advanced-4g" => return Some(380),
        "advanced-8g" => return Some(800),
        "advanced-16g" => return Some(1600),
        "advanced-32g" => return Some(3200),
        _ => {}
    }
    if let Some(size) = plan.strip_prefix("advanced-").and_then(|s| s.strip_suffix('g')) {
        return size.parse::<u32>().ok().filter(|&g| g >= 64).map(|_| 5000);
    }
    let (tier, level) = plan.split_once('-')?;
    if !matches!(tier, "standard" | "premium" | "private" | "shield") {
        return None;
    }
    match level.parse::<u32>().ok()? {
        0 | 1 => Some(120),
        2 => Some(400),
        3..=10 => Some(500),
        _ => None,
    }
}

/// Where the limit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    Database,
    Plan,
    /// Neither the database nor a plan: the fallback pool size is used.
    Unknown,
}

impl LimitSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitSource::Database => "database",
            LimitSource::Plan => "plan",
            LimitSource::Unknown => "unknown",
        }
    }
}

/// Every input of the sizing decision and its result, for the startup log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizing {
    pub db: Option<DbLimits>,
    pub plan: Option<(String, u32)>,
    /// Connections the database accepts from this role (before the reserve).
    pub limit: Option<u32>,
    pub source: LimitSource,
    pub reserved: u32,
    pub processes: u32,
    pub pool_size: usize,
}

/// The pool size used when no limit is known.
pub const FALLBACK_POOL_SIZE: usize = 10;

/// The default reserve: the larger of 3 and 10% of the limit.
pub fn default_reserve(limit: u32) -> u32 {
    3.max(limit.div_ceil(10))
}

/// The pool is this sidecar's share of (limit - reserve), at least 1.
pub fn compute(
    db: Option<DbLimits>,
    plan: Option<(String, u32)>,
    reserved: Option<u32>,
    processes: u32,
) -> Sizing {
    let db_limit = db.map(|d| {
        let usable = d.max_connections.saturating_sub(d.superuser_reserved);
        d.role_limit.map_or(usable, |r| r.min(usable))
    });
    let (limit, source) = match (db_limit, &plan) {
        (Some(l), _) => (Some(l), LimitSource::Database),
        (None, Some((_, p))) => (Some(*p), LimitSource::Plan),
        (None, None) => (None, LimitSource::Unknown),
    };
    let processes = processes.max(1);
    let reserved = reserved.unwrap_or_else(|| limit.map_or(0, default_reserve));
    let pool_size = match limit {
        Some(l) => (l.saturating_sub(reserved) / processes).max(1) as usize,
        None => FALLBACK_POOL_SIZE,
    };
    Sizing { db, plan, limit, source, reserved, processes, pool_size }
}

/// The statement that reads [`DbLimits`]; one row of four integers.
pub const LIMITS_QUERY: &str = "SELECT pg_catalog.current_setting('max_connections')::int, \
     pg_catalog.current_setting('superuser_reserved_connections')::int, \
     (SELECT rolconnlimit FROM pg_catalog.pg_roles WHERE rolname = current_user), \
     (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend')";

/// Parses the row of [`LIMITS_QUERY`].
pub fn parse_limits(row: &[Option<String>]) -> Option<DbLimits> {
    let num = |i: usize| row.get(i)?.as_deref()?.parse::<i64>().ok();
    Some(DbLimits {
        max_connections: u32::try_from(num(0)?).ok()?,
        superuser_reserved: u32::try_from(num(1)?).ok()?,
        role_limit: num(2).and_then(|r| u32::try_from(r).ok()),
        in_use: u32::try_from(num(3)?).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(max: u32, su: u32, role: Option<u32>) -> Option<DbLimits> {
        Some(DbLimits { max_connections: max, superuser_reserved: su, role_limit: role, in_use: 1 })
    }

    #[test]
    fn plans() {
        assert_eq!(plan_limit("essential-0"), Some(20));
        assert_eq!(plan_limit("Essential-2"), Some(40));
        assert_eq!(plan_limit("heroku-postgresql:standard-0"), Some(120));
        assert_eq!(plan_limit("premium-2"), Some(400));
        assert_eq!(plan_limit("shield-7"), Some(500));
        assert_eq!(plan_limit("private-10"), Some(500));
        assert_eq!(plan_limit("advanced-128g"), Some(5000));
        assert_eq!(plan_limit("standard-11"), None);
        assert_eq!(plan_limit("enormous"), None);
    }

    #[test]
    fn share_of_the_database_limit() {
        // 40 - 3 superuser = 37 usable; reserve max(3, 4) = 4; 33 / 4 processes = 8.
        let s = compute(db(40, 3, None), None, None, 4);
        assert_eq!((s.limit, s.reserved, s.pool_size, s.source), (Some(37), 4, 8, LimitSource::Database));
        assert!(s.pool_size as u32 * 4 + s.reserved <= 37);
    }

    #[test]
    fn role_limit_and_explicit_reserve() {
        let s = compute(db(500, 3, Some(50)), None, Some(10), 2);
        assert_eq!((s.limit, s.pool_size), (Some(50), 20));
    }

    #[test]
    fn plan_when_the_database_cannot_be_asked() {
        let s = compute(None, Some(("essential-0".into(), 20)), None, 1);
        assert_eq!((s.limit, s.reserved, s.pool_size, s.source), (Some(20), 3, 17, LimitSource::Plan));
        let s = compute(None, None, None, 3);
        assert_eq!((s.pool_size, s.source), (FALLBACK_POOL_SIZE, LimitSource::Unknown));
    }

    #[test]
    fn never_below_one() {
        assert_eq!(compute(db(5, 3, None), None, None, 10).pool_size, 1);
    }

    #[test]
    fn limits_row() {
        let row = vec![Some("100".into()), Some("3".into()), Some("-1".into()), Some("7".into())];
        assert_eq!(
            parse_limits(&row),
            Some(DbLimits { max_connections: 100, superuser_reserved: 3, role_limit: None, in_use: 7 })
        );
        assert_eq!(parse_limits(&[None]), None);
    }
}
