//! What follows a client from server to server: its settings (applied, read back), the
//! parameters the server reports, pinning by session state, statement statistics, and giving
//! a server back clean when the client leaves.

use super::*;

impl Session {
    /// Makes the server's session settings the client's. On failure the client has been
    /// told, and the session must end.
    pub(super) fn apply_settings(&mut self, mut lease: Lease) -> Boxed<'_, Option<Lease>> {
        Box::pin(async move {
            let conn = lease.conn();
            let Some(sql) = params::sync_statement(&self.settings, &conn.applied) else {
                return Some(lease);
            };
            let mut reported = Vec::new();
            match tokio::time::timeout(CLEANUP_TIMEOUT, conn.exec(&sql, &mut reported)).await {
                Ok(Ok(_)) => {
                    conn.applied = Settings::clone(&self.settings);
                    self.tell(&reported);
                    Some(lease)
                }
                Ok(Err(e @ ServerError::Postgres { .. })) => {
                    // The client's own settings were refused (a bad TimeZone, say); the server
                    // rolled the statement back and can serve others, once a cancel the
                    // client sent meanwhile can no longer reach their statements.
                    self.slot_set(Activity::Idle);
                    self.cancels_settled().await;
                    lease.release();
                    self.fail_server(&e).await;
                    None
                }
                Ok(Err(e)) => {
                    self.fail_server(&e).await;
                    None
                }
                Err(_) => {
                    self.fail(PgError::fatal(
                        "08006",
                        "pgsidecar: the server did not answer while settings were applied",
                    ))
                    .await;
                    None
                }
            }
        })
    }

    /// Forwards ParameterStatus values the client has not seen yet.
    pub(super) fn tell(&mut self, reported: &[(String, String)]) {
        for (name, value) in reported {
            if self.told.get(name) != Some(value) {
                messages::parameter_status(&mut self.cwbuf, name, value);
                self.told.insert(name, value);
            }
        }
    }

    /// Counts statements and transactions that finished, logs the slow ones.
    pub(super) fn record_finished(&mut self) {
        let Some(timing) = self.timing.as_deref_mut() else {
            return;
        };
        if timing.finished.is_empty() && timing.transactions.is_empty() {
            return;
        }
        let up = &self.upstream;
        for f in timing.finished.drain(..) {
            up.counters.query(f.duration);
            if let Some(text) = &f.text {
                timing.last_statement = Some(if f.parsed {
                    up.counters.statement_parsed(text, f.duration, f.rows)
                } else {
                    up.counters.statement_text(text, f.fingerprint, f.duration, f.rows)
                });
            }
            if self.slow.is_slow_query(f.duration) {
                up.counters.slow_queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.slow.log_query(&crate::observe::slowlog::SlowQuery {
                    duration: f.duration,
                    wait: self.last_wait,
                    database: &up.pool.database,
                    user: &self.info.user,
                    application_name: self.settings.get("application_name").map_or("", String::as_str),
                    rows: f.rows,
                    sqlstate: f.sqlstate.as_deref(),
                    text: f.text.as_deref(),
                });
            }
        }
        for d in timing.transactions.drain(..) {
            up.counters.transaction(d);
            if self.slow.is_slow_transaction(d) {
                let app = self.settings.get("application_name").map_or("", String::as_str);
                self.slow.log_transaction(d, &up.pool.database, &self.info.user, app);
            }
        }
    }

    /// Records settings the server reported while the client ran. A new session
    /// authorization, or a role that changes is_superuser, is read back with the other
    /// settings however it was made (a DO block says no SET): who the session is must follow
    /// its client and never reach the next one.
    pub(super) fn note_reported(&mut self, relay: &mut Relay, lease: &mut Lease) {
        let conn = lease.conn();
        if relay.reported.iter().any(|(name, _)| name == "session_authorization" || name == "is_superuser") {
            relay.settings_changed = true;
        }
        for (name, value) in relay.reported.drain(..) {
            if TRACKED_REPORTED.contains(&name.as_str()) {
                if self.settings.get(&name) != Some(&value) {
                    Arc::make_mut(&mut self.settings).insert(name.clone(), value.clone());
                }
                conn.applied.insert(name.clone(), value.clone());
            }
            if name == "application_name" {
                if let Some(r) = &self.registration {
                    r.slot.set_application_name(&value);
                }
            }
            self.told.insert(&name, &value);
        }
    }

    /// Remembers the custom setting names the relay saw, for the read-back.
    pub(super) fn note_custom(&mut self, relay: &mut Relay) {
        for name in relay.custom_names.drain(..) {
            params::remember_custom(self.custom.get_or_insert_default(), &name);
        }
    }

    /// After SET, RESET or DISCARD: learn the session's settings from the server itself.
    pub(super) async fn read_back_settings(&mut self, lease: &mut Lease) -> bool {
        let conn = lease.conn();
        let mut reported = Vec::new();
        let query = params::read_settings_query(self.custom.as_deref().map_or(&[], Vec::as_slice));
        match tokio::time::timeout(CLEANUP_TIMEOUT, conn.exec(&query, &mut reported)).await {
            Ok(Ok(rows)) => {
                let now = params::from_rows(rows, &conn.login_params);
                let mut settings = Settings::clone(&self.startup_settings);
                settings.extend(now.iter().map(|(k, v)| (k.clone(), v.clone())));
                self.settings = Arc::new(settings);
                conn.applied = now;
                true
            }
            _ => {
                self.fail(PgError::fatal(
                    "08006",
                    "pgsidecar could not read back the session settings from the server",
                ))
                .await;
                false
            }
        }
    }

    /// Counts session state on the server that would outlive the transaction: SQL-level
    /// prepared statements, LISTEN, holdable cursors, session advisory locks, temporary objects.
    pub(super) async fn session_state(&mut self, lease: &mut Lease) -> Option<i64> {
        let conn = lease.conn();
        let rows =
            tokio::time::timeout(CLEANUP_TIMEOUT, conn.exec(SESSION_STATE_QUERY, &mut Vec::new())).await;
        match rows {
            Ok(Ok(rows)) => rows.first().and_then(|r| r.first()).and_then(|v| v.as_deref()?.parse().ok()),
            _ => {
                self.fail(PgError::fatal(
                    "08006",
                    "pgsidecar could not check the session state on the server",
                ))
                .await;
                None
            }
        }
    }

    pub(super) fn set_pinned(&mut self, pinned: bool, statement: &[u8]) {
        if pinned == self.pinned {
            return;
        }
        self.pinned = pinned;
        if let Some(r) = &self.registration {
            r.slot.set_pinned(pinned);
        }
        let text = crate::observe::normalize::normalize_bytes(statement, 200);
        let delta = if pinned { 1 } else { -1 };
        self.upstream.counters.pinned.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
        if pinned {
            self.shared.pinned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(database = %self.upstream.pool.database, statement = %text, "client_pinned");
        } else {
            self.shared.pinned.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(database = %self.upstream.pool.database, statement = %text, "client_unpinned");
        }
    }

    /// The client left while holding a server: return it clean, or close it.
    /// `doomed`: a cancel may still reach the server, so it is closed whatever its state.
    pub(super) async fn give_back(&mut self, mut lease: Lease, relay: &Relay, doomed: bool) {
        let reusable = !doomed
            && relay.quiet()
            && self.swbuf.is_empty()
            && !relay.server_fatal
            && lease.conn().rbuf.is_empty();
        if !reusable {
            if !relay.quiet() && !relay.server_fatal {
                // A statement may still be running: closing the connection alone would leave
                // PostgreSQL running it to the end on a backend the pool no longer counts.
                let conn = lease.conn();
                let (target, pid, secret) = (self.upstream.pool.target.clone(), conn.pid, conn.secret);
                tokio::spawn(async move { target.cancel(pid, secret, CANCEL_GRACE).await });
            }
            lease.close();
            return;
        }
        // Session mode, and a pinned client's server: its session state goes with the client.
        // So does state the transaction may have made that outlives its ROLLBACK (a session
        // advisory lock, PREPARE, LISTEN): the check a release at rest runs is not run here.
        let discard = self.mode == PoolMode::Session || self.pinned || relay.state_hint.is_some();
        // Separate queries: in one multi-statement query DISCARD ALL would run inside the
        // implicit transaction block and fail.
        let rollback = (relay.status != b'I').then_some("ROLLBACK");
        let conn = lease.conn();
        for sql in rollback.into_iter().chain(discard.then_some("DISCARD ALL")) {
            let mut reported = Vec::new();
            let ok = matches!(
                tokio::time::timeout(CLEANUP_TIMEOUT, conn.exec(sql, &mut reported)).await,
                Ok(Ok(_))
            );
            if !ok {
                lease.close();
                return;
            }
        }
        if discard {
            conn.applied.clear();
            conn.statements.clear();
        }
        if relay.settings_changed && !discard {
            let mut reported = Vec::new();
            let mut custom = self.custom.as_deref().cloned().unwrap_or_default();
            for name in &relay.custom_names {
                params::remember_custom(&mut custom, name);
            }
            let query = params::read_settings_query(&custom);
            match tokio::time::timeout(CLEANUP_TIMEOUT, conn.exec(&query, &mut reported)).await {
                Ok(Ok(rows)) => conn.applied = params::from_rows(rows, &conn.login_params),
                _ => {
                    lease.close();
                    return;
                }
            }
        }
        self.cancels_settled().await;
        lease.release();
    }
}

/// Session state that pins a client to its server in transaction mode; one row, one count.
/// Temporary objects of every kind (tables, sequences, views, types, domains, functions,
/// operators, collations, ...) are counted by their dependency on the session's temporary
/// schema, which PostgreSQL records for each of them and follows to drop them at the end of
/// the session (an index scan of pg_depend; no temporary schema, no rows).
const SESSION_STATE_QUERY: &str = "SELECT (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql) \
     + (SELECT count(*) FROM pg_catalog.pg_listening_channels()) \
     + (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable) \
     + (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()) \
     + (SELECT count(*) FROM pg_catalog.pg_depend WHERE refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass \
        AND refobjid = pg_catalog.pg_my_temp_schema())";
