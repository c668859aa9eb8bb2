-- Invitations e-mailed to an address (template invitation_sent) count toward the owner's
-- invitation budget like invitations to an org: the budget's index covers both.
DROP INDEX emails_invitations_by_sender;
CREATE INDEX emails_invitations_by_sender ON emails (sender_org_id, created_at)
    WHERE template IN ('invited', 'invitation_sent') AND status IN ('queued', 'sent', 'failed');
