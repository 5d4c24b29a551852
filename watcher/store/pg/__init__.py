"""The PostgreSQL backend of the state (issue 15): what exists, and the plan for the rest.

Exists: :mod:`~watcher.store.pg.schema` (the schema as versioned migrations, run under an
advisory lock so replicas starting together migrate once) and :mod:`~watcher.store.pg.lease`
(the active daemon's lease row with its fencing epoch), :mod:`~watcher.store.pg.claim` (the
lease supervisor of point 5 below, as built) and, outside this package, :mod:`watcher.replica`
(one term of active work per lease granted; the lease gate on every HTTP request). The
driver is asyncpg (README,
"Architecture"; ``benchmarks/pg_driver_bench.py``). Tests run against a real PostgreSQL 15
(``tests/pg.py``; fixtures ``pg_url`` with the schema, ``pg_empty_url`` without).

Design note for the next wave: the async store interface
=========================================================

1. One interface, ``AsyncStore`` (a ``Protocol`` in a new ``watcher/store/api.py``): the
   :class:`~watcher.store.Store` methods callers use today, same names, same arguments, same
   value types (:mod:`watcher.store.models`, ``RunFilter``/``RunPage``/``RunPageJson``,
   ``PruneStep``, ``GroupMember``), each ``async def``:

   - registry: ``track``, ``untrack``, ``get_run``, ``page_runs``, ``page_runs_json``,
     ``tracked_among``, ``active_runs``, ``snapshot``, ``changes_since``, ``record_polls``,
     ``record_error``, ``labels_of``, ``count_by_status``, ``stuck_candidates``
     (``list_runs``/``iter_runs`` become an async generator over ``page_runs``);
   - recording: ``record_observation``, ``record_not_found``, ``record_event``;
   - journal: ``event_log``, ``events``, ``prune_events``, ``prune_finished_runs``,
     ``prune_orphan_events``;
   - outbox: ``pending_deliveries``, ``mark_delivered``, ``mark_retry``, ``mark_dead``,
     ``dead_letters``, ``outbox_stats``, ``dead_letter_removed_notifiers``; plus what issue 14
     adds (delivery history, redeliver, silences);
   - holds, discovery, groups, references: ``release_event``, ``held_events``,
     ``release_held``, ``held_runs``, ``track_discovered``, ``discovery_done``,
     ``mark_discovery_done``, ``group_members``, ``has_event``, ``groups_finished_since``,
     ``status_references``;
   - housekeeping that only SQLite needs (``release_free_pages``, ``defer_checkpoints``,
     WAL checkpoints) moves to a ``maintenance()`` method, a no-op on PostgreSQL (autovacuum).

2. SQLite behind it without slowing it: ``SqliteStore(AsyncStore)`` wraps today's sync
   ``Store`` and calls it directly on the loop (``async def track(...): return
   self._store.track(...)``): no thread hop, no lock, one coroutine frame (about a
   microsecond against the transaction's hundreds). Written out method by method (mypy
   strict; no ``__getattr__``). The heavy reads that :mod:`watcher.service.reads` sends off
   the loop today (``page_runs_json``, filtered ``event_log``) move *inside* the adapter: its
   ``page_runs_json`` awaits ``OffLoopReads.run`` itself, so callers just ``await
   store.page_runs_json(...)`` on both backends (on PostgreSQL the server does the work and
   the loop only awaits). The sync ``Store`` and its tests stay as they are.

3. PostgreSQL: ``PgStore(AsyncStore)`` in ``watcher/store/pg/store.py``, all of its SQL in
   this package (one module per concern, as the SQLite mixins). An ``asyncpg`` pool
   (``server_settings=lease.session_settings(lease_seconds)``), errors mapped to
   ``StateError`` naming the database by name only (a URL may carry a password). The SQL is
   the SQLite SQL translated: ``json_each(?)`` → ``= ANY($1::text[])``; ``rowid`` →
   ``runs.id`` (same opaque cursors, :func:`watcher.store.registry.encode_cursor`); ``IS NOT``
   → ``IS DISTINCT FROM``; ``json_extract(labels, '$."run_group"')`` → ``labels ->>
   'run_group'`` (the index's expression); ``lastrowid`` → ``RETURNING seq``; ``rowcount`` →
   the command tag; ``executemany`` → ``unnest`` of arrays (one statement); 0/1 → booleans.
   ``page_runs_json`` renders in Python (``json_build_object`` spaces its output differently
   from ``json.dumps``, and the pages must stay byte for byte the same). Compare-and-set
   recording is the same single transaction; a retry after a lost connection must treat "the
   event id is already recorded" as success (the commit may have happened).

4. Where the fencing check sits: in ``PgStore``'s one write helper, ``async with
   self._write() as conn``, which is ``pool.acquire()`` + transaction +
   :func:`~watcher.store.pg.lease.fence` when the store is bound to a lease (a write of one
   statement, the outbox marks, goes through ``self._write_one(sql, ...)`` instead: the same
   fence as a ``WITH`` of that statement, one round trip). The daemon binds
   it (``store.bind(lease_supervisor)``, which hands over the current
   :class:`~watcher.store.pg.lease.Grant` or ``None``); the daemon's writes (recording,
   outbox marks, holds, discovery, polls and errors, pruning) are then fenced, and on a
   standby (no grant) raise :class:`~watcher.store.pg.lease.LeaseLost` before touching
   anything. User writes (``track``, ``untrack``, silences, redeliver: the CLI and the admin
   API of any replica) are not fenced: they are the user's, as the CLI's writes beside a
   daemon on SQLite, and compare-and-set keeps them safe. ``LeaseLost`` is not a
   ``StateError``: the sink, dispatcher and pruner let it propagate to the lease supervisor.

5. The lease supervisor (``watcher/store/pg/claim.py``, the :class:`~watcher.store.lock.StateClaim`
   of a PostgreSQL state, made by ``claim_state`` from ``[state] url``): a task with its own
   connection (outside the pool, so a busy pool never delays a renewal) that tries
   :func:`~watcher.store.pg.lease.acquire` every second as a standby and
   :func:`~watcher.store.pg.lease.renew` every ``lease_seconds / 3`` when active; it stops
   polling and delivery the moment the local :attr:`Grant.deadline` passes without a renewal
   (before the server's expiry, whatever the clocks say). On takeover it waits one second
   (the old holder stopped polling by its own deadline, which is before the expiry) before
   the first GetRunStatus; on SIGTERM the active daemon drains and then
   :func:`~watcher.store.pg.lease.release`\\ s, so a standby takes over at once. ``/readyz``
   reads the supervisor's role (``standby``). ``StateClaim.release`` becomes awaitable (an
   ``aclose``) for this claim; the file claim keeps its sync one.

6. CLI: commands open ``open_store(settings)`` (an async context manager returning an
   ``AsyncStore`` for ``[state] path`` or ``url``) and run as ``asyncio.run(cmd(...))``.
   Reading commands on PostgreSQL do not migrate: they check
   :func:`~watcher.store.pg.schema.schema_version` and refuse a database without our schema
   or with a newer one (the "do not create a state" rule); writing commands migrate, as the
   SQLite store creates its file.

7. Tests: the ``store`` fixture becomes parametrized over ``sqlite`` and ``postgres``
   (``pg_url``), so the whole store contract suite runs on both; the lease tests here cover
   the PostgreSQL-only parts.

Known, left for later: ``run_counts`` rows are hot rows (every status change updates two),
fine for one active writer, to be measured at 100,000 runs; each later SQLite migration needs
its twin in :mod:`~watcher.store.pg.schema`.
"""
