//! Getting a server from the pool: at once when one is idle, else through the pool's queue,
//! which a wait timeout, a cancel request or the client leaving ends.

use super::*;

impl Session {
    /// Session mode: a server opened with the client's startup settings, so that RESET
    /// returns to them as in PostgreSQL. An idle one opened with the same settings, else a new
    /// one in a free slot, else the server the pool gives, replaced in its slot.
    pub(super) fn checkout_opened_with(&mut self) -> Boxed<'_, Result<Lease, Refused>> {
        Box::pin(async move {
            let pool = self.upstream.pool.clone();
            let startup = self.startup_settings.clone();
            let slot =
                self.registration.as_ref().map(|r| r.slot.clone()).expect("registered before checkout");
            let mut lease = match pool.checkout_opened_with(&startup) {
                Some(lease) => lease,
                None => match pool.open_with(&startup).await {
                    Some(opened) => opened.map_err(Refused::Server)?,
                    None => {
                        let mut lease = self.checkout().await?;
                        if *lease.conn().startup == *startup {
                            return Ok(lease);
                        }
                        lease.reopen(&startup).await.map_err(Refused::Server)?
                    }
                },
            };
            mark_active(&slot, &pool, &mut lease);
            Ok(lease)
        })
    }

    /// A server for a request that starts with a named Parse, waited for [`PARSE_WAIT`] at
    /// most (`None`: none came). Boxed: a timer would enlarge every transaction's future.
    pub(super) fn server_for_parse(&mut self) -> Boxed<'_, Option<Got>> {
        Box::pin(async move {
            // Only the wait for a server is bounded, not the answer to a refusal.
            let checked_out = tokio::time::timeout(PARSE_WAIT, self.checkout()).await.ok()?;
            Some(self.got_server(checked_out).await)
        })
    }

    /// A named Parse waited [`PARSE_WAIT`] for a server while every server was busy: it is
    /// acknowledged without one, with the messages after it that need none. A program that
    /// prepares synchronously on one connection while its other connections hold every server
    /// in a transaction (pgbench -M prepared, one thread for many clients) would otherwise
    /// wait until the query wait timeout. The text is then checked when the statement is
    /// first bound or described: an error in it arrives there.
    pub(super) fn parse_without_server(&mut self) -> Boxed<'_, Flow> {
        Box::pin(async move {
            if let Some(r) = &self.registration {
                r.slot.set(Activity::Idle);
            }
            self.upstream.counters.parses_without_server.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.parse_without_server = true;
            let local = self.answer_locally().await;
            self.parse_without_server = false;
            match local {
                Local::Answered | Local::NeedServer => Flow::Released,
                Local::End => Flow::End,
            }
        })
    }

    /// A server for the client's request; a pooler error that leaves the connection usable
    /// (the wait timeout, a cancel while queued) is answered and the request skipped.
    pub(super) async fn server_for_request(&mut self) -> Got {
        let checked_out = self.checkout().await;
        self.got_server(checked_out).await
    }

    /// [`Session::server_for_request`] once the checkout has ended.
    pub(super) async fn got_server(&mut self, checked_out: Result<Lease, Refused>) -> Got {
        match checked_out {
            Ok(lease) => Got::Lease(lease),
            Err(Refused::Error(e)) if e.severity == messages::Severity::Error => {
                tracing::warn!(code = e.code, error = %e.message, "pooler_error");
                e.encode(&mut self.cwbuf);
                if self.skip_request().await {
                    Got::Skipped
                } else {
                    Got::End
                }
            }
            Err(other) => {
                self.finish_refused(other).await;
                Got::End
            }
        }
    }

    /// The pool's login parameters, from a first server when the pool has none yet; `None`
    /// when the client was refused (and told).
    pub(super) fn first_login_params(&mut self) -> Boxed<'_, Option<Arc<BTreeMap<String, String>>>> {
        Box::pin(async move {
            match self.checkout().await {
                Ok(mut lease) => {
                    let p = Arc::new(lease.conn().login_params.clone());
                    self.slot_set(Activity::Idle);
                    self.cancels_settled().await;
                    lease.release();
                    Some(p)
                }
                Err(flow) => {
                    self.finish_refused(flow).await;
                    None
                }
            }
        })
    }

    /// Waits in the pool's queue. Gives up on the wait timeout, on a cancel request for this
    /// client, or when the client disconnects; reads ahead from the client meanwhile.
    pub(super) async fn checkout(&mut self) -> Result<Lease, Refused> {
        let pool = self.upstream.pool.clone();
        let slot = self.registration.as_ref().map(|r| r.slot.clone()).expect("registered before checkout");
        // The common case while the pool is not saturated: an idle server that needs no
        // check, taken without a queue entry, a timer or a cancel wait.
        if let Some(mut lease) = pool.checkout_now() {
            self.last_wait = Duration::ZERO;
            self.upstream.counters.wait_time.record(Duration::ZERO);
            mark_active(&slot, &pool, &mut lease);
            return Ok(lease);
        }
        self.checkout_queued(pool, slot).await
    }

    /// [`Session::checkout`] through the pool's queue: boxed, so that its queue entry and
    /// cancel wait do not enlarge every transaction's future (which then stays in malloc's
    /// per-thread cache).
    pub(super) fn checkout_queued(
        &mut self,
        pool: Arc<crate::server::pool::Pool>,
        slot: Arc<CancelSlot>,
    ) -> Boxed<'_, Result<Lease, Refused>> {
        Box::pin(async move {
            let notified = slot.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // quanta's clock: cheaper to read than the system's.
            let started = Instant::now();
            slot.set(Activity::Waiting { since: started });
            let mailbox = self.mailbox.get_or_insert_with(Default::default).clone();
            let ticket = pool.checkout_checked(mailbox, started);
            tokio::pin!(ticket);
            // No timer here: the pool ends waits at PGSIDECAR_QUERY_WAIT_TIMEOUT (one timer
            // per pool, not one per queued checkout).
            let result = loop {
                let may_read = self.crbuf.len() < READ_HIGH;
                tokio::select! {
                    biased;
                    r = &mut ticket => break r.map_err(|e| refused_waiting(e, &pool, started)),
                    _ = &mut notified => {
                        break Err(Refused::Error(PgError::error("57014", "canceling statement due to user request")));
                    }
                    r = self.client.read_buf(&mut self.crbuf), if may_read => {
                        match r {
                            Ok(0) | Err(_) => break Err(Refused::Gone),
                            Ok(n) => self.received(n),
                        }
                    }
                }
            };
            // The ticket (pinned above) leaves the queue when this function returns, with no
            // await in between.
            self.last_wait = started.elapsed();
            self.upstream.counters.wait_time.record(self.last_wait);
            match &result {
                Err(Refused::Error(e)) if e.code == "53300" => {
                    self.upstream.counters.error(PoolerError::WaitTimeout)
                }
                Err(Refused::Server(_)) => self.upstream.counters.error(PoolerError::ServerConnect),
                Err(Refused::Error(e)) if e.code == "57014" => {
                    self.upstream.counters.cancels.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ => {}
            }
            match result {
                Ok(mut lease) => {
                    mark_active(&slot, &pool, &mut lease);
                    Ok(lease)
                }
                Err(e) => {
                    slot.set(Activity::Idle);
                    Err(e)
                }
            }
        })
    }
}

/// What a client that waited in the queue is told when the pool refuses it.
pub(super) fn refused_waiting(e: ServerError, pool: &crate::server::pool::Pool, started: Instant) -> Refused {
    let ServerError::WaitTimeout = e else { return Refused::Server(e) };
    let stats = pool.stats();
    Refused::Error(
        PgError::error("53300", format!(
            "pgsidecar: no server connection became free within {:.1}s (PGSIDECAR_QUERY_WAIT_TIMEOUT); all {} server connections of database \"{}\" were busy and {} clients were waiting",
            started.elapsed().as_secs_f64(), stats.max_size, pool.database, stats.waiting
        ))
        .with_hint("raise PGSIDECAR_POOL_SIZE within the database's connection limit, shorten transactions, or raise PGSIDECAR_QUERY_WAIT_TIMEOUT"),
    )
}

/// Shows the client as running on its server (SHOW CLIENTS, cancel forwarding).
pub(super) fn mark_active(slot: &CancelSlot, pool: &crate::server::pool::Pool, lease: &mut Lease) {
    let conn = lease.conn();
    slot.set(Activity::Active { target: pool.target.clone(), server: conn.info(), secret: conn.secret });
}

/// Why a checkout did not produce a server.
pub(super) enum Refused {
    Gone,
    Error(PgError),
    Server(ServerError),
}
