//! The schema, as an ordered list of migrations; `PRAGMA user_version` is the applied count.
//!
//! Times are unix seconds (UTC) in INTEGER columns. Booleans are 0/1.
//! Invariant: a migration, once released, is never edited; add a new one at the end.

pub const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5];

const V1: &str = r#"
-- users of the store: owners of accounts, and parties of internal messages
CREATE TABLE users (
    id              INTEGER PRIMARY KEY,
    login           TEXT NOT NULL UNIQUE,
    session_expires INTEGER,            -- logged in while now < session_expires
    poll_interval   INTEGER,            -- internal messages: client poll, NULL = INTERNAL_MSG_POLL_INTERVAL
    last_check      INTEGER,            -- internal messages: time of the last `internal check`
    last_check_id   INTEGER,            -- internal messages: newest message id that check saw
    created         INTEGER NOT NULL
);

CREATE TABLE accounts (
    id                    INTEGER PRIMARY KEY,
    owner_id              INTEGER NOT NULL REFERENCES users(id),
    email                 TEXT NOT NULL,
    imap_host             TEXT NOT NULL,
    imap_port             INTEGER NOT NULL,
    imap_security         TEXT NOT NULL CHECK (imap_security IN ('ssl','starttls','none')),
    login                 TEXT NOT NULL,
    password              TEXT,          -- NULL when password_command is used
    password_command      TEXT,
    tls_ca_file           TEXT,          -- extra trusted CA (PEM) for a private server
    tls_insecure          INTEGER NOT NULL DEFAULT 0, -- explicit opt-out of certificate checks
    smtp_host             TEXT,
    smtp_port             INTEGER,
    smtp_security         TEXT CHECK (smtp_security IN ('ssl','starttls','none')),
    smtp_login            TEXT,          -- NULL = IMAP login
    smtp_password         TEXT,          -- NULL = IMAP password (unless smtp_password_command)
    smtp_password_command TEXT,
    sent_append           INTEGER NOT NULL DEFAULT 1,
    keep_days             INTEGER,       -- Clean Mailboxes: keep messages N days; NULL = forever
    enabled               INTEGER NOT NULL DEFAULT 1,
    created               INTEGER NOT NULL,
    -- engine's view of the account's health (back-off, auth retry, status page)
    failures              INTEGER NOT NULL DEFAULT 0,
    retry_after           INTEGER,       -- no connection attempt before this time
    last_error            TEXT,
    last_error_at         INTEGER,
    last_success          INTEGER
);

CREATE TABLE folders (
    id               INTEGER PRIMARY KEY,
    account_id       INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name             TEXT NOT NULL,      -- verbatim IMAP name (modified UTF-7), used in commands
    display_name     TEXT NOT NULL,      -- decoded for people
    delimiter        TEXT,
    special_use      TEXT,               -- inbox|sent|drafts|trash|junk|archive|all|flagged
    priority         TEXT NOT NULL DEFAULT 'low' CHECK (priority IN ('high','low','off')),
    uidvalidity      INTEGER,
    last_seen_uid    INTEGER NOT NULL DEFAULT 0,
    highest_modseq   INTEGER,
    last_recent_sync INTEGER,
    last_full_sync   INTEGER,
    sync_requested   INTEGER,            -- manual "check mail now": due at once
    gone             INTEGER NOT NULL DEFAULT 0, -- no longer listed by the server
    delete_confirmed INTEGER NOT NULL DEFAULT 0, -- safety brake overridden once by an admin
    UNIQUE (account_id, name)
);
-- the scheduler reads only folders past a cut (schedule_candidates)
CREATE INDEX folders_recent ON folders(priority, last_recent_sync);
CREATE INDEX folders_full ON folders(priority, last_full_sync);
CREATE INDEX folders_requested ON folders(sync_requested) WHERE sync_requested IS NOT NULL;

CREATE TABLE messages (
    id                 INTEGER PRIMARY KEY,
    folder_id          INTEGER NOT NULL REFERENCES folders(id) ON DELETE CASCADE,
    uid                INTEGER NOT NULL,
    message_id         TEXT,
    from_addr          TEXT,
    to_addr            TEXT,
    cc_addr            TEXT,
    subject            TEXT,
    date               INTEGER,
    internal_date      INTEGER,
    size               INTEGER NOT NULL,
    seen               INTEGER NOT NULL DEFAULT 0,
    answered           INTEGER NOT NULL DEFAULT 0,
    flagged            INTEGER NOT NULL DEFAULT 0,
    draft              INTEGER NOT NULL DEFAULT 0,
    deleted            INTEGER NOT NULL DEFAULT 0, -- the \Deleted flag as the server has it
    attachments        INTEGER NOT NULL DEFAULT 0,
    modseq             INTEGER,
    flags_changed      INTEGER,  -- local flag change not yet on the server (time of change)
    local_deleted      INTEGER,  -- user deleted it here (time); server side pending
    server_deleted     INTEGER,  -- the server no longer has it (time seen)
    deletion_synced    INTEGER,  -- both sides agree it is gone: Purge Deleted may remove it
    move_to            INTEGER REFERENCES folders(id), -- pending local move
    UNIQUE (folder_id, uid)
);
CREATE INDEX messages_message_id ON messages(message_id);
-- a sync asks whether a local flag change waits before reading any row
CREATE INDEX messages_flags_pending ON messages(folder_id) WHERE flags_changed IS NOT NULL;
CREATE INDEX messages_deletion_work ON messages(folder_id)
    WHERE deletion_synced IS NULL AND (local_deleted IS NOT NULL OR server_deleted IS NOT NULL OR move_to IS NOT NULL);

-- where the raw RFC 822 bytes are: an append-only pack file beside the database (packs.rs);
-- `start` is the body's offset in the pack, just after its record header
CREATE TABLE message_bodies (
    message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    pack       INTEGER NOT NULL,
    start      INTEGER NOT NULL,
    length     INTEGER NOT NULL
);

CREATE TABLE receive_queue (
    id            INTEGER PRIMARY KEY,
    folder_id     INTEGER NOT NULL REFERENCES folders(id) ON DELETE CASCADE,
    uid           INTEGER NOT NULL,
    size          INTEGER,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    next_attempt  INTEGER NOT NULL DEFAULT 0,
    queue         TEXT NOT NULL DEFAULT 'primary' CHECK (queue IN ('primary','secondary','failed')),
    queued        INTEGER NOT NULL,
    UNIQUE (folder_id, uid)
);
CREATE INDEX receive_queue_due ON receive_queue(queue, folder_id, next_attempt);

-- outbox with the delivery record
CREATE TABLE outbox (
    id                INTEGER PRIMARY KEY,
    account_id        INTEGER NOT NULL REFERENCES accounts(id),
    created           INTEGER NOT NULL,
    message_id        TEXT NOT NULL,
    mail_from         TEXT NOT NULL,
    recipients        TEXT NOT NULL,      -- JSON array: envelope recipients (To, Cc, Bcc)
    raw               BLOB,               -- the message as queued; moved to outbox_raw on insert
    state             TEXT NOT NULL DEFAULT 'PENDING'
                      CHECK (state IN ('PENDING','PROCESSING','SUCCESS','ERROR','RETRY')),
    start_time        INTEGER,
    end_time          INTEGER,
    error             TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    lease_expire_time INTEGER,
    lease_token       TEXT,
    next_attempt      INTEGER NOT NULL DEFAULT 0,
    secondary         INTEGER NOT NULL DEFAULT 0,
    info              TEXT,               -- JSON {messageId, accepted, rejected, pending, response}
    sent_append       TEXT,               -- NULL | 'pending' | 'done'
    -- while PROCESSING: 1 once the message may be on its way (a kill leaves its outcome
    -- unknown); 0 while it is only claimed ahead, its envelope at most (nothing to deliver)
    sending           INTEGER NOT NULL DEFAULT 0,
    parent_id         INTEGER REFERENCES outbox(id) -- retry of a parent's temporarily refused recipients
);
-- The message itself (no Bcc header), apart from its delivery record: a record changes two or
-- three times per send, and with the message inside, every change rewrote it too (a 5 KB
-- message spans overflow pages, and SQLite rewrites a whole row). Applications still insert
-- into outbox.raw (README): the triggers move it here and refuse a row without one.
CREATE TABLE outbox_raw (
    outbox_id INTEGER PRIMARY KEY REFERENCES outbox(id) ON DELETE CASCADE,
    raw       BLOB NOT NULL
);
CREATE TRIGGER outbox_raw_required BEFORE INSERT ON outbox WHEN NEW.raw IS NULL BEGIN
    SELECT RAISE(ABORT, 'outbox.raw: the message is required');
END;
CREATE TRIGGER outbox_raw_apart AFTER INSERT ON outbox BEGIN
    INSERT INTO outbox_raw (outbox_id, raw) VALUES (NEW.id, NEW.raw);
    UPDATE outbox SET raw = NULL WHERE id = NEW.id;
END;
-- Every index entry that moves with a state change is a page the send commit writes, one
-- commit a message: the indexes below hold only entries of the states they serve, never the
-- SUCCESS history, and `Store::outbox_depths` counts SUCCESS as the total (kept by insert and
-- delete triggers, which the send path never fires) minus the other states.
-- A sender claims an account's oldest due entry: walk its due entries in id order, never
-- sort; next_attempt and state make it cover the due-accounts scan and the counts too.
CREATE INDEX outbox_claim ON outbox(account_id, secondary, id, next_attempt, state)
    WHERE state IN ('PENDING','RETRY');
-- the lease expiry looks at PROCESSING entries only
CREATE INDEX outbox_leases ON outbox(lease_expire_time) WHERE state = 'PROCESSING';
CREATE INDEX outbox_errors ON outbox(account_id) WHERE state = 'ERROR';
-- sent messages waiting for their Sent-folder append
CREATE INDEX outbox_appends ON outbox(account_id) WHERE state = 'SUCCESS' AND sent_append = 'pending';
CREATE TABLE outbox_total (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
INSERT INTO outbox_total (id, n) VALUES (1, 0);
CREATE TRIGGER outbox_total_insert AFTER INSERT ON outbox BEGIN
    UPDATE outbox_total SET n = n + 1;
END;
CREATE TRIGGER outbox_total_delete AFTER DELETE ON outbox BEGIN
    UPDATE outbox_total SET n = n - 1;
END;

-- every background process's Started/Finished/error records
CREATE TABLE history (
    id          INTEGER PRIMARY KEY,
    time        INTEGER NOT NULL,
    process     TEXT NOT NULL,
    status      TEXT NOT NULL,      -- Started | Finished | a short human error text
    detail      TEXT,               -- technical detail of an error
    account_id  INTEGER,
    folder_id   INTEGER,
    count       INTEGER,
    duration_ms INTEGER,
    pid         INTEGER,
    thread      TEXT
);
CREATE INDEX history_time ON history(time);

-- the running master, for `status`
CREATE TABLE master (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    pid       INTEGER NOT NULL,
    started   INTEGER NOT NULL,
    heartbeat INTEGER NOT NULL,
    stopped   INTEGER
);
CREATE TABLE workers (
    thread     INTEGER PRIMARY KEY,
    task       TEXT,              -- e.g. "Receive [53,824]"; NULL = idle
    account_id INTEGER,
    folder_id  INTEGER,
    done       INTEGER,
    total      INTEGER,
    since      INTEGER
);
-- last run of interval jobs (maintenance, secondary queues, daily low-priority run)
CREATE TABLE job_runs (
    job      TEXT PRIMARY KEY,
    last_run INTEGER NOT NULL
);
-- counters for metrics that must survive restarts
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

-- internal message service
CREATE TABLE internal_messages (
    id          INTEGER PRIMARY KEY,
    sender_id   INTEGER NOT NULL REFERENCES users(id),
    subject     TEXT NOT NULL,
    body        TEXT NOT NULL,
    importance  TEXT NOT NULL DEFAULT 'normal' CHECK (importance IN ('normal','high')),
    created     INTEGER NOT NULL,
    draft       INTEGER NOT NULL DEFAULT 0,
    sent_seq    INTEGER UNIQUE          -- order of delivery (NULL for drafts): `check` watermark
);
CREATE INDEX internal_messages_sender ON internal_messages(sender_id, draft, created);
CREATE TABLE internal_recipients (
    message_id INTEGER NOT NULL REFERENCES internal_messages(id) ON DELETE CASCADE,
    user_id    INTEGER NOT NULL REFERENCES users(id),
    read_time  INTEGER,
    PRIMARY KEY (message_id, user_id)
);
CREATE INDEX internal_recipients_user ON internal_recipients(user_id, read_time);
"#;

/// Keywords are message data (issue 17), a local change remembers the server's state it
/// started from (so a push sends only what the user changed), folders LIST could not name
/// usably are kept visible, and Gmail's message ids let one body serve several labels.
const V2: &str = r#"
ALTER TABLE messages ADD COLUMN keywords TEXT;          -- space-separated keywords ($Label1 NonJunk), NULL = none
ALTER TABLE messages ADD COLUMN flags_base TEXT;        -- IMAP flag words the server had when a local change began
ALTER TABLE messages ADD COLUMN keywords_refused TEXT;  -- keywords the user set that the server cannot keep
ALTER TABLE messages ADD COLUMN gm_msgid INTEGER;       -- X-GM-MSGID (Gmail): the same message under several labels
CREATE INDEX messages_gm_msgid ON messages(gm_msgid) WHERE gm_msgid IS NOT NULL;
ALTER TABLE receive_queue ADD COLUMN gm_msgid INTEGER;
ALTER TABLE folders ADD COLUMN unusable TEXT;           -- why a listed folder cannot be synced (a name we cannot use)

-- The first local change of a message (flags_changed set where it was NULL) remembers the
-- flags before it, whether our code or an application's UPDATE made the change.
CREATE TRIGGER messages_flags_base AFTER UPDATE OF seen, answered, flagged, draft, deleted, keywords, flags_changed
ON messages
WHEN OLD.flags_changed IS NULL AND NEW.flags_changed IS NOT NULL AND NEW.flags_base IS NULL
BEGIN
    UPDATE messages SET flags_base = trim(
        CASE WHEN OLD.seen THEN '\Seen ' ELSE '' END ||
        CASE WHEN OLD.answered THEN '\Answered ' ELSE '' END ||
        CASE WHEN OLD.flagged THEN '\Flagged ' ELSE '' END ||
        CASE WHEN OLD.draft THEN '\Draft ' ELSE '' END ||
        CASE WHEN OLD.deleted THEN '\Deleted ' ELSE '' END ||
        COALESCE(OLD.keywords, ''))
    WHERE id = NEW.id;
END;
"#;

/// OAuth 2.0 sign-in (issue 19): the client settings, the tokens, and an account that needs a
/// person to authorize it again.
const V3: &str = r#"
ALTER TABLE accounts ADD COLUMN auth TEXT NOT NULL DEFAULT 'password' CHECK (auth IN ('password','oauth2'));
ALTER TABLE accounts ADD COLUMN oauth_token_endpoint TEXT;
ALTER TABLE accounts ADD COLUMN oauth_device_endpoint TEXT;
ALTER TABLE accounts ADD COLUMN oauth_client_id TEXT;
ALTER TABLE accounts ADD COLUMN oauth_client_secret TEXT;
ALTER TABLE accounts ADD COLUMN oauth_scopes TEXT;          -- space-separated
ALTER TABLE accounts ADD COLUMN oauth_token_command TEXT;   -- prints an access token; nothing stored
ALTER TABLE accounts ADD COLUMN oauth_refresh_token TEXT;
ALTER TABLE accounts ADD COLUMN oauth_access_token TEXT;
ALTER TABLE accounts ADD COLUMN oauth_expires_at INTEGER;   -- of the access token
-- why a person must act (account authorize / account set); the account is not tried meanwhile
ALTER TABLE accounts ADD COLUMN needs_authorization TEXT;
"#;

/// Push (issue 21): how each account is watched now, for `status`. Engine state, not data:
/// emptied when a master starts and when it stops.
const V4: &str = r#"
CREATE TABLE push_state (
    account_id INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    mode       TEXT NOT NULL CHECK (mode IN ('NOTIFY','IDLE','polling')),
    since      INTEGER NOT NULL,
    note       TEXT                -- why polling (a server that refused the connection…)
);
"#;

/// The job kind of a history row (`Job::key`: "sync_full", "receive"…), so that what reads
/// history counts jobs by kind, not by a display name ("Sync" is also how "Sync Delete"
/// starts). NULL for rows an application writes and for rows written before it.
const V5: &str = r#"
ALTER TABLE history ADD COLUMN kind TEXT;
"#;
