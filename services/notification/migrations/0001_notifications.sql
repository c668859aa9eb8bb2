-- Who to write to: each org's member e-mails, from enrollment's events (affiliates and owners).
CREATE TABLE orgs_view (
    org_id     TEXT PRIMARY KEY,
    emails     TEXT[] NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What a program is called and counts in.
CREATE TABLE programs_view (
    program_id     TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    currency       TEXT NOT NULL,
    owner_org_id   TEXT NOT NULL,
    version_micros BIGINT NOT NULL
);

-- An org's choice per kind of e-mail; no row: on.
CREATE TABLE preferences (
    org_id  TEXT NOT NULL,
    kind    TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    PRIMARY KEY (org_id, kind)
);

-- Every e-mail, once per (event, template): the unique key is what makes a redelivered or
-- replayed event send nothing new. Sending happens after the consumer's commit (jobs::deliver).
CREATE TABLE emails (
    email_id        TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL,
    template        TEXT NOT NULL,
    org_id          TEXT NOT NULL,
    recipients      TEXT[] NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'failed', 'suppressed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at         TIMESTAMPTZ,
    message_id      TEXT,
    UNIQUE (event_id, template)
);
CREATE INDEX emails_due ON emails (next_attempt_at) WHERE status = 'queued';
CREATE INDEX emails_by_org ON emails (org_id, email_id DESC);
