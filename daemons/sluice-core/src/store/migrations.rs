//! The versioned schema of the sluice database, applied in order by whichever process opens
//! the database first (see `Store::open`).
//!
//! A migration is never edited once released: a change to the schema is a new entry at the
//! end of `MIGRATIONS`. The version of a database is `PRAGMA user_version`, and every applied
//! migration leaves a row in `schema_history` so a person can see when and by whom.
//!
//! Times are integer milliseconds since the Unix epoch throughout, so comparisons in SQL are
//! plain integer comparisons and no time zone is ever involved.

/// One step of the schema, identified by its position (version = index + 1).
#[derive(Debug)]
pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "initial schema: jobs, job history, files, documents, text index, downloads, sources",
        sql: r#"
CREATE TABLE schema_history (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  INTEGER NOT NULL,
    applied_by  TEXT NOT NULL
);

-- The durable job queue. `state` moves queued → running → succeeded | failed | cancelled,
-- with `retrying` between attempts and `dead` after the last one. While a job is running,
-- `lease_token` fences every change: an UPDATE that does not name the current token touches
-- nothing, so a worker that lost its lease cannot overwrite the job.
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL CHECK (json_valid(payload) AND json_type(payload) = 'object'),
    state            TEXT NOT NULL CHECK (state IN
                       ('queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled', 'dead')),
    priority         INTEGER NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    run_at           INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_expires_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress         REAL CHECK (progress IS NULL OR (progress >= 0 AND progress <= 1)),
    progress_message TEXT,
    result           TEXT CHECK (result IS NULL OR json_valid(result)),
    error            TEXT,
    unique_key       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    CHECK ((state = 'running') = (lease_token IS NOT NULL))
);
-- Claim order is priority, then run-at, then id; the partial index holds only claimable rows.
CREATE INDEX jobs_claimable ON jobs (priority DESC, run_at, id)
    WHERE state IN ('queued', 'retrying');
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key) WHERE unique_key IS NOT NULL;

-- Every transition of every job, written by a trigger so that no code path can forget one.
-- The creation of a job is not stored here (it is `jobs.created_at`, and an extra row per
-- enqueue costs a third of the enqueue rate); `Store::job_history` reports it as the first
-- entry.
CREATE TABLE job_history (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at         INTEGER NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    worker     TEXT,
    error      TEXT
);
CREATE INDEX job_history_by_job ON job_history (job_id, id);


CREATE TRIGGER jobs_history_on_transition AFTER UPDATE OF state ON jobs
    WHEN old.state IS NOT new.state BEGIN
    INSERT INTO job_history (job_id, at, from_state, to_state, attempt, worker, error)
    VALUES (new.id, new.updated_at, old.state, new.state, new.attempts,
            coalesce(new.lease_owner, old.lease_owner),
            CASE WHEN new.state IN ('retrying', 'failed', 'dead', 'cancelled') THEN new.error END);
END;

-- Files seen by the monitor. One row per path; `version_key` names the version of the
-- content (size, mtime, inode) that an ingest job was queued for.
CREATE TABLE files (
    id           INTEGER PRIMARY KEY,
    watch_root   TEXT NOT NULL,
    path         TEXT NOT NULL UNIQUE,
    size         INTEGER NOT NULL CHECK (size >= 0),
    mtime_ns     INTEGER NOT NULL,
    inode        INTEGER NOT NULL,
    version_key  TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('detected', 'ingested', 'duplicate', 'gone', 'failed')),
    job_id       INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    document_id  INTEGER REFERENCES documents (id) ON DELETE SET NULL,
    first_seen_at INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX files_by_root ON files (watch_root, path);

-- Documents are unique content: the ingest worker deduplicates on the BLAKE3 hash.
CREATE TABLE documents (
    id            INTEGER PRIMARY KEY,
    blake3        TEXT NOT NULL UNIQUE CHECK (length(blake3) = 64),
    sha256        TEXT NOT NULL CHECK (length(sha256) = 64),
    size          INTEGER NOT NULL CHECK (size >= 0),
    mime          TEXT NOT NULL,
    original_name TEXT NOT NULL,
    library_path  TEXT,
    metadata      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    duplicates    INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX documents_by_sha256 ON documents (sha256);

-- Extracted text, full-text indexed; rowid is the document id.
CREATE VIRTUAL TABLE document_text USING fts5 (title, body, tokenize = 'unicode61 remove_diacritics 2');

CREATE TABLE sources (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    url             TEXT NOT NULL,
    mode            TEXT NOT NULL CHECK (mode IN ('page', 'links', 'feed')),
    every_ms        INTEGER NOT NULL CHECK (every_ms > 0),
    selector        TEXT,
    pattern         TEXT,
    enabled         INTEGER NOT NULL DEFAULT 1,
    etag            TEXT,
    last_modified   TEXT,
    content_hash    TEXT,
    last_checked_at INTEGER,
    last_changed_at INTEGER,
    last_error      TEXT,
    next_check_at   INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE downloads (
    id              INTEGER PRIMARY KEY,
    url             TEXT NOT NULL,
    file_name       TEXT NOT NULL,
    bundle          TEXT,
    source_id       INTEGER REFERENCES sources (id) ON DELETE SET NULL,
    state           TEXT NOT NULL CHECK (state IN
                      ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    bytes_done      INTEGER NOT NULL DEFAULT 0 CHECK (bytes_done >= 0),
    bytes_total     INTEGER,
    rate_bytes_per_s REAL,
    expected_sha256 TEXT CHECK (expected_sha256 IS NULL OR length(expected_sha256) = 64),
    size_limit      INTEGER,
    part_path       TEXT,
    final_path      TEXT,
    etag            TEXT,
    last_modified   TEXT,
    error           TEXT,
    job_id          INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX downloads_by_state ON downloads (state, id);
"#,
    },
    Migration {
        name: "downloads follow the state of their job",
        sql: r#"
-- A download's state is its job's state seen from the download's side. The trigger keeps them
-- together whatever changes the job: the scraper, the web API cancelling or retrying it, the
-- rescue of an expired lease. Retrying between attempts shows as queued (with the last error).
CREATE INDEX downloads_by_job ON downloads (job_id);

CREATE TRIGGER downloads_follow_their_job AFTER UPDATE OF state ON jobs
    WHEN new.kind = 'download' AND old.state IS NOT new.state BEGIN
    UPDATE downloads SET
        state = CASE new.state
                    WHEN 'queued' THEN 'queued'
                    WHEN 'retrying' THEN 'queued'
                    WHEN 'running' THEN 'running'
                    WHEN 'succeeded' THEN 'succeeded'
                    WHEN 'cancelled' THEN 'cancelled'
                    ELSE 'failed' END,
        error = CASE WHEN new.state IN ('retrying', 'failed', 'dead', 'cancelled') THEN new.error
                     WHEN new.state = 'succeeded' THEN NULL
                     ELSE error END,
        rate_bytes_per_s = CASE WHEN new.state = 'running' THEN rate_bytes_per_s END,
        updated_at = new.updated_at
    WHERE job_id = new.id;
END;
"#,
    },
    Migration {
        name: "jobs count how often they waited for space",
        sql: r#"
-- An attempt that could not run because a disk was full gives its attempt back and waits
-- (`Outcome::Postponed`); this count of such waits sets how long the next one lasts, as
-- `attempts` does for a failed attempt. Reset when the job is retried by hand.
ALTER TABLE jobs ADD COLUMN postponements INTEGER NOT NULL DEFAULT 0 CHECK (postponements >= 0);
"#,
    },
    Migration {
        name: "a lease records the process that holds it",
        sql: r#"
-- `lease_owner` names the worker (`sluice-ingest-worker@1`, `sluice-scraper`), a name the
-- process systemd restarts takes again. `lease_holder` names the one process that claimed:
-- its bus connection, as the unique name and the bus's GUID (`:1.42@5e3f…`), which no other
-- connection ever gets. Ending the leases of a process that left the bus matches on it, so
-- the leases of a successor of the same name are never touched. NULL for a claimant that is
-- not on a bus (tests, benchmarks). No index: the queries that match on it also say
-- `state = 'running'`, and use the partial index `jobs_leases`, which lists only those rows.
ALTER TABLE jobs ADD COLUMN lease_holder TEXT;
"#,
    },
    Migration {
        name: "job history also records progress and result steps",
        sql: r#"
-- Besides its transitions, a job's history holds what happened while it ran: progress (the
-- worker saves it at most once a second) and the result steps a body records (a page read, a
-- processor's answer). One table gives one id sequence for everything that happened to a job,
-- so a per-job event stream replays `WHERE job_id = ? AND id > ?` in id order and a client
-- resumes from the last id it saw (SSE `Last-Event-ID`). A transition has `event` NULL; an
-- event row has `event` set (a JSON object) and from_state = to_state = the job's state.
ALTER TABLE job_history ADD COLUMN event TEXT CHECK (event IS NULL OR json_valid(event));
"#,
    },
    Migration {
        name: "sources remember what they saw and how their checks went",
        sql: r#"
-- A source's status, kept with its schedule: how many checks ran, what the last one found
-- (`unchanged`, `changed`, `failed`, ...), how many links or entries it has seen and how many
-- downloads it made. Counters rather than count(*) so a status read costs one row.
ALTER TABLE sources ADD COLUMN checks INTEGER NOT NULL DEFAULT 0 CHECK (checks >= 0);
ALTER TABLE sources ADD COLUMN last_outcome TEXT;
ALTER TABLE sources ADD COLUMN items_seen INTEGER NOT NULL DEFAULT 0 CHECK (items_seen >= 0);
ALTER TABLE sources ADD COLUMN downloads_made INTEGER NOT NULL DEFAULT 0
    CHECK (downloads_made >= 0);

-- Every link (links mode, by absolute URL) or feed entry (feed mode, by id or guid) a source
-- has seen. An item and the download it becomes are inserted in one transaction, so each one
-- becomes a download exactly once, across restarts, kills and changes of the page. A removed
-- source keeps its rows (it is only disabled), so adding it back does not fetch its past again.
CREATE TABLE source_items (
    source_id   INTEGER NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    item_key    TEXT NOT NULL,
    download_id INTEGER,
    seen_at     INTEGER NOT NULL,
    PRIMARY KEY (source_id, item_key)
) WITHOUT ROWID;
"#,
    },
    Migration {
        name: "extracted text is indexed per page",
        sql: r#"
-- One row per page of a paged document (a PDF: page 1, 2, ...), and one row with page NULL
-- for text that has no pages (a text file, HTML, a processor's output), so a search hit names
-- the document and the page. The document's name is indexed once, as the title of its first
-- row. document_id and page are stored but not indexed (UNINDEXED): a hit reads them from its
-- row; nothing looks rows up by them (documents are never deleted).
CREATE VIRTUAL TABLE page_text USING fts5 (
    document_id UNINDEXED, page UNINDEXED, title, body,
    tokenize = 'unicode61 remove_diacritics 2'
);
INSERT INTO page_text (document_id, page, title, body)
    SELECT rowid, NULL, title, body FROM document_text ORDER BY rowid;
DROP TABLE document_text;
"#,
    },
    // Issue 14's bundles. Positional: when rebasing, this entry stays the last one, after
    // whatever main added; nothing in it depends on its number.
    Migration {
        name: "bundles group downloads into one folder",
        sql: r#"
-- A bundle is several downloads that reach the inbox as one folder, only when all of them are
-- complete. Its files are ordinary downloads (rows of `downloads` with their `download` jobs)
-- that name the bundle and their path inside its folder; each is moved into the bundle's
-- folder in staging when done, and the folder is renamed into the inbox once all are.
-- `state`: running until every file succeeded (then succeeded, with `final_path` the folder in
-- the inbox), or one failed (failed, with `error`), or it was cancelled. `final_path` is set
-- before the folder is renamed and the state after, so a scraper killed in between finds the
-- folder at `final_path` and records the bundle succeeded, placing it exactly once.
CREATE TABLE bundles (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    origin      TEXT,
    revision    TEXT,
    state       TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    files_total INTEGER NOT NULL CHECK (files_total >= 1),
    final_path  TEXT,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX bundles_running ON bundles (id) WHERE state = 'running';

ALTER TABLE downloads ADD COLUMN bundle_id INTEGER REFERENCES bundles (id) ON DELETE CASCADE;
ALTER TABLE downloads ADD COLUMN relative_path TEXT;
CREATE INDEX downloads_by_bundle ON downloads (bundle_id) WHERE bundle_id IS NOT NULL;
"#,
    },
    // Issue 13's scale curves (migration 9).
    Migration {
        name: "jobs are listed by state from an index",
        sql: r#"
-- `GET /api/jobs?state=…` and `sluicectl jobs list --state …` read the newest jobs of a
-- state a page at a time. Without this index each page walked the whole table newest first
-- until it had found a page of that state: at 1M jobs, a page of a state no job was in read
-- every row (a full scan per request). With it, each state named is one range of this index,
-- read newest first from the cursor, and a page costs the same at any size. It also covers
-- the per-state counts (`count(*) … GROUP BY state`), which then read this index instead of
-- the table.
CREATE INDEX jobs_by_state ON jobs (state, id);
"#,
    },
    // Issue 13: the queue-limit check in constant time (migration 10).
    Migration {
        name: "pending jobs of the kinds with a queue limit are counted",
        sql: r#"
-- How many `ingest` and `download` jobs are pending (queued, retrying or running): the two
-- kinds with a queue limit (`[ingest] max_pending`, `[scraper] max_pending`), which read one
-- row here. Counting the rows instead read up to `max_pending` index entries and their table
-- rows in every transaction that recorded a file or took an upload or a download: about 1 ms
-- at the default 10,000 with a full queue, 27 ms with 100,000 pending under a raised limit
-- (measured), which every file the monitor recorded waited for. The count is kept in the
-- same transaction as every change (below), so it is exact whatever process made the change
-- and whenever one was killed. Only these two kinds are counted, whose jobs take
-- milliseconds to seconds each: counting every kind cost a one-job enqueue a quarter of its
-- time (measured: p50 15 -> 19.5 µs).
-- (`n` is kept for these two kinds only; a row of another kind, which a later migration may
-- add for counts of its own, holds 0.)
CREATE TABLE job_pending (
    kind TEXT PRIMARY KEY,
    n    INTEGER NOT NULL CHECK (n >= 0)
) WITHOUT ROWID;
INSERT INTO job_pending (kind, n) VALUES ('ingest', 0), ('download', 0);
UPDATE job_pending SET n = (SELECT count(*) FROM jobs WHERE jobs.kind = job_pending.kind
                            AND state IN ('queued', 'retrying', 'running'));

-- A new job is counted by the store's one insert (`insert_job`), in its transaction. A job
-- that changes state is counted by two statements added to the trigger that already writes
-- its history row (migration 1's, recreated here with them): claims (queued to running) and
-- rescues (running to retrying or queued) stay pending and change nothing; a job that ends
-- leaves, a retried or re-run one comes back. Not triggers of their own: SQLite runs a
-- trigger's program for every row before its WHEN can say no, about 1.5 µs a row and a
-- trigger, which every job of every kind would pay at each change.
DROP TRIGGER jobs_history_on_transition;
CREATE TRIGGER jobs_history_on_transition AFTER UPDATE OF state ON jobs
    WHEN old.state IS NOT new.state BEGIN
    INSERT INTO job_history (job_id, at, from_state, to_state, attempt, worker, error)
    VALUES (new.id, new.updated_at, old.state, new.state, new.attempts,
            coalesce(new.lease_owner, old.lease_owner),
            CASE WHEN new.state IN ('retrying', 'failed', 'dead', 'cancelled') THEN new.error END);
    UPDATE job_pending SET n = n - 1
        WHERE kind = old.kind AND old.kind IN ('ingest', 'download')
          AND old.state IN ('queued', 'retrying', 'running')
          AND new.state NOT IN ('queued', 'retrying', 'running');
    UPDATE job_pending SET n = n + 1
        WHERE kind = old.kind AND old.kind IN ('ingest', 'download')
          AND old.state NOT IN ('queued', 'retrying', 'running')
          AND new.state IN ('queued', 'retrying', 'running');
END;
CREATE TRIGGER job_pending_on_delete AFTER DELETE ON jobs
    WHEN old.kind IN ('ingest', 'download')
     AND old.state IN ('queued', 'retrying', 'running') BEGIN
    UPDATE job_pending SET n = n - 1 WHERE kind = old.kind;
END;
-- A job's kind never changes; a change that tried would leave the count wrong, so refuse it.
CREATE TRIGGER jobs_kind_is_fixed BEFORE UPDATE OF kind ON jobs
    WHEN old.kind IS NOT new.kind BEGIN
    SELECT RAISE(ABORT, 'a job''s kind cannot change');
END;
"#,
    },
    // Issue 13: where a curve bends (migration 11).
    Migration {
        name: "finished jobs are counted per kind beside the pending ones, documents listed by type from an index",
        sql: r#"
-- How many jobs of each kind are in each finished state (succeeded, failed, cancelled,
-- dead), kept in the row of `job_pending` (migration 10) that already counts the kind's
-- pending jobs. Only the finished states grow without bound, so only these are kept: the
-- status page, `sluicectl status` and `/metrics` read these few rows instead of counting
-- every finished job (a GROUP BY over the jobs: 0.18-0.83 s at 1M), and count the pending
-- states one by one (queued, retrying, running: the backlog) from their ranges of
-- `jobs_by_state`.
--
-- The counts move only when a job enters or leaves a finished state, so an enqueue, a
-- claim, a retry by the worker and a lease renewal change nothing more. A change of state
-- is counted by two statements added to the trigger that already writes its history row
-- (migration 1's `jobs_history_on_transition`, recreated here with them), not by triggers of
-- their own: a trigger costs each row it fires for more than its statements do (measured
-- with 64 completions a transaction: +2.2 µs a job as two triggers of their own, +0.8 µs
-- folded into this one, on 4.5 µs a job without counts). Being written in the transaction
-- of the change it counts, a count is exactly as durable as the jobs: a crash or a
-- rollback takes both or neither. A job's kind never changes (migration 10 refuses it), so
-- only its state moves a count.
ALTER TABLE job_pending ADD COLUMN succeeded INTEGER NOT NULL DEFAULT 0 CHECK (succeeded >= 0);
ALTER TABLE job_pending ADD COLUMN failed    INTEGER NOT NULL DEFAULT 0 CHECK (failed >= 0);
ALTER TABLE job_pending ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0 CHECK (cancelled >= 0);
ALTER TABLE job_pending ADD COLUMN dead      INTEGER NOT NULL DEFAULT 0 CHECK (dead >= 0);
INSERT INTO job_pending (kind, n, succeeded, failed, cancelled, dead)
    SELECT kind, 0, sum(state = 'succeeded'), sum(state = 'failed'),
           sum(state = 'cancelled'), sum(state = 'dead')
    FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled', 'dead') GROUP BY kind
    ON CONFLICT (kind) DO UPDATE SET succeeded = excluded.succeeded, failed = excluded.failed,
        cancelled = excluded.cancelled, dead = excluded.dead;

-- A job deleted finished (by the retention). No job is inserted finished: the store's one
-- insert (`insert_job`) inserts it queued.
CREATE TRIGGER job_finished_on_delete AFTER DELETE ON jobs
    WHEN old.state IN ('succeeded', 'failed', 'cancelled', 'dead') BEGIN
    UPDATE job_pending SET succeeded = succeeded - (old.state = 'succeeded'),
        failed = failed - (old.state = 'failed'), cancelled = cancelled - (old.state = 'cancelled'),
        dead = dead - (old.state = 'dead')
        WHERE kind = old.kind;
END;
-- Every change of state: its history row (as in migration 1), the pending count (as in
-- migration 10), then the finished counts of the state it enters and of the state it leaves
-- (each statement does nothing when its state is not one it counts).
DROP TRIGGER jobs_history_on_transition;
CREATE TRIGGER jobs_history_on_transition AFTER UPDATE OF state ON jobs
    WHEN old.state IS NOT new.state BEGIN
    INSERT INTO job_history (job_id, at, from_state, to_state, attempt, worker, error)
    VALUES (new.id, new.updated_at, old.state, new.state, new.attempts,
            coalesce(new.lease_owner, old.lease_owner),
            CASE WHEN new.state IN ('retrying', 'failed', 'dead', 'cancelled') THEN new.error END);
    UPDATE job_pending SET n = n - 1
        WHERE kind = old.kind AND old.kind IN ('ingest', 'download')
          AND old.state IN ('queued', 'retrying', 'running')
          AND new.state NOT IN ('queued', 'retrying', 'running');
    UPDATE job_pending SET n = n + 1
        WHERE kind = old.kind AND old.kind IN ('ingest', 'download')
          AND old.state NOT IN ('queued', 'retrying', 'running')
          AND new.state IN ('queued', 'retrying', 'running');
    INSERT INTO job_pending (kind, n, succeeded, failed, cancelled, dead)
        SELECT new.kind, 0, new.state = 'succeeded', new.state = 'failed',
               new.state = 'cancelled', new.state = 'dead'
        WHERE new.state IN ('succeeded', 'failed', 'cancelled', 'dead')
        ON CONFLICT (kind) DO UPDATE SET succeeded = succeeded + excluded.succeeded,
            failed = failed + excluded.failed, cancelled = cancelled + excluded.cancelled,
            dead = dead + excluded.dead;
    UPDATE job_pending SET succeeded = succeeded - (old.state = 'succeeded'),
        failed = failed - (old.state = 'failed'), cancelled = cancelled - (old.state = 'cancelled'),
        dead = dead - (old.state = 'dead')
        WHERE kind = old.kind AND old.state IN ('succeeded', 'failed', 'cancelled', 'dead');
END;

-- `GET /api/documents?mime=…` reads one newest-first range of this index per MIME type that
-- starts with the prefix: without it a page of a rare type walked every document. Documents
-- are written by the ingest workers, one per ingested file, never by an enqueue.
CREATE INDEX documents_by_mime ON documents (mime, id);
"#,
    },
];
