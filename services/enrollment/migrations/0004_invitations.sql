-- Invitations by e-mail: an owner invites an address (with or without an account); the address
-- gets a claim link with a single-use token, of which only the SHA-256 is stored. Whoever claims
-- it with their own org's token joins the program.
CREATE TABLE invitations (
    invitation_id        TEXT PRIMARY KEY,
    program_id           TEXT NOT NULL REFERENCES programs,
    email                TEXT NOT NULL,
    token_hash           TEXT NOT NULL UNIQUE,
    parent_enrollment_id TEXT REFERENCES enrollments,
    idempotency_key      TEXT,
    expires_at           TIMESTAMPTZ NOT NULL,
    claimed_at           TIMESTAMPTZ,
    claimed_by_org_id    TEXT REFERENCES orgs,
    enrollment_id        TEXT REFERENCES enrollments,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX invitations_idempotency ON invitations (program_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
