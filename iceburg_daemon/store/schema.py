"""The store's schema as numbered migrations: append only, never edit a released one."""

MIGRATIONS: list[str] = [
    # v1
    """
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,              -- name as dropped
        path TEXT NOT NULL,              -- where it is read from (inbox/.processing/... or the CLI path)
        origin TEXT NOT NULL,            -- inbox | cli | follow
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        state TEXT NOT NULL,
        byte_offset INTEGER NOT NULL DEFAULT 0,
        line_no INTEGER NOT NULL DEFAULT 0,
        stored INTEGER NOT NULL DEFAULT 0,
        duplicates INTEGER NOT NULL DEFAULT 0,
        quarantined INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        final_path TEXT,
        claimed_at REAL NOT NULL,
        finished_at REAL,
        UNIQUE (path, sha256)
    );
    CREATE INDEX files_state ON files(state);
    CREATE TABLE records (
        id INTEGER PRIMARY KEY,
        content_hash TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        kind TEXT NOT NULL,
        canonical TEXT NOT NULL,
        source TEXT NOT NULL,
        source_ref TEXT NOT NULL,
        record_ts TEXT,
        ingested_at REAL NOT NULL
    );
    CREATE INDEX records_role_kind ON records(role, kind);
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        source_ref TEXT NOT NULL UNIQUE,
        line_no INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        excerpt TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX quarantine_reason ON quarantine(reason);
    CREATE TABLE sources (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        path TEXT NOT NULL,
        health TEXT NOT NULL,
        reason TEXT,
        failures INTEGER NOT NULL DEFAULT 0,
        items INTEGER NOT NULL DEFAULT 0,
        last_attempt REAL,
        last_sync REAL,
        next_attempt REAL,
        watermark TEXT
    );
    CREATE TABLE source_items (
        source TEXT NOT NULL,
        collection TEXT NOT NULL,
        item_id TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        PRIMARY KEY (source, collection, item_id, content_hash)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE TABLE heartbeat (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER NOT NULL,
        started_at REAL NOT NULL,
        ts REAL NOT NULL,
        state TEXT NOT NULL,
        version TEXT NOT NULL
    );
    """,
    # v2: the truth filter's verdicts and its derived indexes (rebuildable from records + verdicts)
    """
    CREATE TABLE verdicts (
        id INTEGER PRIMARY KEY,
        record_id INTEGER NOT NULL REFERENCES records(id),
        current INTEGER NOT NULL DEFAULT 1,  -- 0 once superseded by `data refilter`; history is kept
        verdict TEXT NOT NULL,               -- accept | reject
        filter TEXT,
        reason TEXT,
        detail TEXT,
        score REAL,
        duplicate_of INTEGER,
        cluster_id INTEGER,
        redacted INTEGER NOT NULL DEFAULT 0,
        scores TEXT NOT NULL,                -- every filter's scores, JSON
        generation INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX verdicts_one_current ON verdicts(record_id) WHERE current = 1;
    CREATE INDEX verdicts_current ON verdicts(current, verdict, reason);
    CREATE TABLE exact_keys (
        key TEXT PRIMARY KEY,
        record_id INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE lsh_sigs (
        idx INTEGER NOT NULL,                -- 1 near duplicates, 2 template skeletons
        record_id INTEGER NOT NULL,
        cluster_id INTEGER,
        sig BLOB NOT NULL,
        PRIMARY KEY (idx, record_id)
    ) WITHOUT ROWID;
    CREATE TABLE lsh_bands (
        idx INTEGER NOT NULL,
        key INTEGER NOT NULL,                -- band number mixed into the band's hash
        record_id INTEGER NOT NULL
    );
    CREATE INDEX lsh_bands_key ON lsh_bands(idx, key);
    CREATE TABLE template_clusters (
        cluster_id INTEGER PRIMARY KEY,
        size INTEGER NOT NULL,
        kept INTEGER NOT NULL
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # v3: training runs and the permanent eval split
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,                 -- <role>-<UTC time>-<snapshot id prefix>
        role TEXT NOT NULL,
        status TEXT NOT NULL,                -- queued | running | succeeded | failed | interrupted | cancelled | timed_out
        run_dir TEXT NOT NULL,
        snapshot_id TEXT NOT NULL,
        train_count INTEGER NOT NULL,
        eval_count INTEGER NOT NULL,
        reason TEXT,                         -- why it was queued (manual, ...) or why it ended
        detail TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        supervisor_pid INTEGER,              -- the process watching the child (daemon or foreground CLI)
        child_pid INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        progress TEXT,                       -- last progress.json seen, JSON
        metrics TEXT,                        -- final metrics, JSON
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX runs_status ON runs(status);
    CREATE TABLE eval_records (
        record_id INTEGER PRIMARY KEY REFERENCES records(id),
        first_run TEXT NOT NULL              -- once held out, never trained on
    );
    """,
    # v4: LSH band keys move to memory (rebuilt from lsh_sigs): random 64-bit keys in a B-tree made every batch
    # rewrite most of its pages
    """
    DROP INDEX lsh_bands_key;
    DROP TABLE lsh_bands;
    """,
    # v5: triggers. Per-role trigger state (schedules, cooldown, back-off survive restarts), the records each role
    # has trained on (what "new records" excludes), and how a run was queued.
    """
    CREATE TABLE role_triggers (
        role TEXT PRIMARY KEY,
        new_records INTEGER NOT NULL DEFAULT 0,  -- as last counted by the daemon (shown by status)
        threshold_mark INTEGER,                  -- new_records when the active run was fired or coalesced into
        schedule_key TEXT,                       -- the cron expressions + zone next_fire belongs to
        next_fire REAL,                          -- next cron slot (Unix seconds)
        schedule_slot REAL,                      -- last cron slot handled: fired, skipped or missed
        last_fire_threshold REAL,
        last_fire_schedule REAL,
        last_fire_manual REAL,
        last_run_wall REAL,                      -- last run start or end: cooldown counts from here...
        last_run_mono REAL,                      -- ...on the monotonic clock of boot last_run_boot when it is this one
        last_run_boot TEXT,
        failures INTEGER NOT NULL DEFAULT 0,     -- consecutive failed runs
        last_failure_wall REAL,
        last_failure_mono REAL,
        last_failure_boot TEXT,
        needs_attention INTEGER NOT NULL DEFAULT 0,
        last_success REAL,
        decision TEXT,                           -- the daemon's last decision, JSON (reason, detail, next_check)
        updated_at REAL
    );
    CREATE TABLE trained_records (
        record_id INTEGER PRIMARY KEY REFERENCES records(id),
        role TEXT NOT NULL,
        first_run TEXT NOT NULL                  -- the first succeeded run that trained on it
    );
    CREATE INDEX trained_records_run ON trained_records(first_run);
    ALTER TABLE runs ADD COLUMN trigger TEXT;   -- manual | threshold | schedule
    ALTER TABLE runs ADD COLUMN urgent INTEGER NOT NULL DEFAULT 0;  -- `train --now`: no cooldown, no deferral
    ALTER TABLE runs ADD COLUMN deferred TEXT;  -- JSON reason codes a queued run waits for, NULL when it may start
    """,
    # v6: after training. Evaluation results cached per (model weights, item); model versions per role, the
    # champion pointer with the publishing state of its Ollama alias, the append-only promotion history, and
    # lineage (which records each run trained on, which records must never be trained on again).
    """
    CREATE TABLE eval_cache (
        weights TEXT NOT NULL,                   -- SHA-256 of the model's weight files
        item TEXT NOT NULL,                      -- item hash (record content hash, suite item hash + settings)
        kind TEXT NOT NULL,                      -- loss | gen
        value TEXT NOT NULL,                     -- JSON
        created_at REAL NOT NULL,
        PRIMARY KEY (weights, item, kind)
    ) WITHOUT ROWID;
    CREATE TABLE model_versions (
        role TEXT NOT NULL,
        version INTEGER NOT NULL,                -- v1, v2, ... per role
        run_id TEXT NOT NULL UNIQUE,
        decision TEXT NOT NULL,                  -- promoted | rejected | forced
        path TEXT NOT NULL,                      -- models/<role>/v<N>
        weights TEXT NOT NULL,                   -- merged weights hash
        parent INTEGER,                          -- the champion it was compared with (NULL: the base)
        gate TEXT,                               -- the gate decision with every number, JSON
        published_at REAL,                       -- iceburg-<role>:v<N> created in Ollama
        pruned_at REAL,                          -- files (and Ollama tag) removed by retention
        created_at REAL NOT NULL,
        PRIMARY KEY (role, version)
    );
    CREATE TABLE champions (
        role TEXT PRIMARY KEY,
        version INTEGER NOT NULL,                -- the pointer: changes in one transaction with its history row
        since REAL NOT NULL,
        alias_version INTEGER,                   -- what iceburg-<role>:latest points at in Ollama, as last confirmed
        alias_at REAL,
        publish_failures INTEGER NOT NULL DEFAULT 0,
        publish_next REAL,                       -- next publishing attempt after a failure
        publish_error TEXT
    );
    CREATE TABLE promotions (
        id INTEGER PRIMARY KEY,
        role TEXT NOT NULL,
        from_version INTEGER,
        to_version INTEGER NOT NULL,
        action TEXT NOT NULL,                    -- promote | force | rollback
        reason TEXT NOT NULL,
        forced INTEGER NOT NULL DEFAULT 0,
        at REAL NOT NULL
    );
    CREATE TABLE run_records (
        run_id TEXT NOT NULL,
        record_id INTEGER NOT NULL,
        PRIMARY KEY (run_id, record_id)
    ) WITHOUT ROWID;
    CREATE INDEX run_records_record ON run_records(record_id);
    CREATE TABLE forgotten_records (
        record_id INTEGER PRIMARY KEY REFERENCES records(id),
        reason TEXT NOT NULL,
        at REAL NOT NULL
    );
    ALTER TABLE runs ADD COLUMN evaluation TEXT;  -- the gate's summary for this run, JSON
    ALTER TABLE runs ADD COLUMN eval_attempts INTEGER NOT NULL DEFAULT 0;
    UPDATE runs SET status = 'trained' WHERE status = 'succeeded';
    """,
    # v7: a file whose ingest raised unexpectedly is retried a bounded number of times, then quarantined whole
    """
    ALTER TABLE files ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
    """,
    # v8: ICEBURG's log files followed in place ([[sources.logs]]): a file is known by device and inode and
    # checked by a fingerprint of its first bytes; `size` is the size last seen, `byte_offset` what was read
    """
    ALTER TABLE files ADD COLUMN source TEXT;       -- the [[sources.logs]] name; NULL for inbox and cli files
    ALTER TABLE files ADD COLUMN dev INTEGER;
    ALTER TABLE files ADD COLUMN inode INTEGER;
    ALTER TABLE files ADD COLUMN head_sha256 TEXT;  -- SHA-256 of the file's first head_len bytes
    ALTER TABLE files ADD COLUMN head_len INTEGER;
    ALTER TABLE files ADD COLUMN mtime_ns INTEGER;  -- last seen: an unchanged size and mtime need no read
    CREATE INDEX files_followed ON files(source, dev, inode) WHERE source IS NOT NULL;
    """,
]
