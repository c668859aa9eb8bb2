//! The states of a payout run's charge and of its items, and the steps between them.
//!
//! A run's charge ([`FundingStatus`]): `reserving` (items reserve their amounts in the ledger)
//! → `charging` (the reserved total is charged to the owner) → `succeeded` or `failed`;
//! `not_needed` when nothing was reserved. Runs made before owners were charged are `unfunded`.
//!
//! An item's life ([`ItemStatus`]), one committed step at a time:
//!
//! ```text
//! skipped                      (below the threshold, or no payable account: never paid)
//! pending ──► reserved ──► paid
//!    │           │  ▲
//!    │           ▼  │ (Stripe's answer found)
//!    │        unknown ──► paid | failed
//!    ▼           ▼
//! failed      failed
//! ```
//!
//! `voided` is read from runs made before voided items were recorded as `failed`.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemStatus {
    Skipped,
    Pending,
    Reserved,
    /// A transfer was asked for and its answer was lost: Stripe is searched before trying again.
    Unknown,
    Paid,
    Failed,
    Voided,
}

impl ItemStatus {
    pub const ALL: [ItemStatus; 7] = [
        ItemStatus::Skipped,
        ItemStatus::Pending,
        ItemStatus::Reserved,
        ItemStatus::Unknown,
        ItemStatus::Paid,
        ItemStatus::Failed,
        ItemStatus::Voided,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Skipped => "skipped",
            ItemStatus::Pending => "pending",
            ItemStatus::Reserved => "reserved",
            ItemStatus::Unknown => "unknown",
            ItemStatus::Paid => "paid",
            ItemStatus::Failed => "failed",
            ItemStatus::Voided => "voided",
        }
    }

    /// Still on its way: the run waits for it, and the in-flight job drives it.
    pub fn in_flight(self) -> bool {
        matches!(self, ItemStatus::Pending | ItemStatus::Reserved | ItemStatus::Unknown)
    }

    /// Failed or voided: its gross is payable again.
    pub fn failed(self) -> bool {
        matches!(self, ItemStatus::Failed | ItemStatus::Voided)
    }

    /// The steps the settler may take (the diagram above); an unknown item may be marked
    /// unknown again (a later lookup that found nothing).
    pub fn can_become(self, next: ItemStatus) -> bool {
        use ItemStatus::*;
        matches!(
            (self, next),
            (Pending, Reserved | Failed) | (Reserved, Paid | Failed | Unknown) | (Unknown, Paid | Failed | Unknown)
        )
    }
}

impl fmt::Display for ItemStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown payout status {0:?}")]
pub struct UnknownStatus(pub String);

/// How a stored status is read (`#[sqlx(try_from = "String")]`).
impl TryFrom<String> for ItemStatus {
    type Error = UnknownStatus;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        ItemStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or(UnknownStatus(text))
    }
}

/// A run's charge to its program's owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum FundingStatus {
    #[default]
    Unfunded,
    Reserving,
    Charging,
    Succeeded,
    Failed,
    NotNeeded,
}

impl FundingStatus {
    pub const ALL: [FundingStatus; 6] = [
        FundingStatus::Unfunded,
        FundingStatus::Reserving,
        FundingStatus::Charging,
        FundingStatus::Succeeded,
        FundingStatus::Failed,
        FundingStatus::NotNeeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FundingStatus::Unfunded => "unfunded",
            FundingStatus::Reserving => "reserving",
            FundingStatus::Charging => "charging",
            FundingStatus::Succeeded => "succeeded",
            FundingStatus::Failed => "failed",
            FundingStatus::NotNeeded => "not_needed",
        }
    }

    /// The steps the settler may take: reserving → charging | not_needed (nothing reserved);
    /// charging → succeeded | failed; a run whose stored charge is damaged may fail from
    /// reserving too.
    pub fn can_become(self, next: FundingStatus) -> bool {
        use FundingStatus::*;
        matches!(
            (self, next),
            (Reserving, Charging | NotNeeded | Failed) | (Charging, Succeeded | Failed)
        )
    }
}

impl fmt::Display for FundingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a stored funding status is read (`#[sqlx(try_from = "String")]`).
impl TryFrom<String> for FundingStatus {
    type Error = UnknownStatus;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        FundingStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or(UnknownStatus(text))
    }
}

#[cfg(test)]
mod tests {
    use super::FundingStatus;
    use super::ItemStatus::{self, *};

    #[test]
    fn statuses_read_back() {
        for status in ItemStatus::ALL {
            assert_eq!(ItemStatus::try_from(status.as_str().to_owned()), Ok(status));
        }
        assert!(ItemStatus::try_from("planned".to_owned()).is_err());
    }

    #[test]
    fn only_the_settlers_steps_are_allowed() {
        let allowed: Vec<(ItemStatus, ItemStatus)> = ItemStatus::ALL
            .into_iter()
            .flat_map(|from| ItemStatus::ALL.into_iter().map(move |to| (from, to)))
            .filter(|(from, to)| from.can_become(*to))
            .collect();
        assert_eq!(
            allowed,
            [
                (Pending, Reserved),
                (Pending, Failed),
                (Reserved, Unknown),
                (Reserved, Paid),
                (Reserved, Failed),
                (Unknown, Unknown),
                (Unknown, Paid),
                (Unknown, Failed),
            ]
        );
        for done in [Skipped, Paid, Failed, Voided] {
            assert!(!done.in_flight());
        }
    }

    #[test]
    fn a_charge_moves_forward_only() {
        use FundingStatus::*;
        for status in FundingStatus::ALL {
            assert_eq!(FundingStatus::try_from(status.as_str().to_owned()), Ok(status));
            assert!(!status.can_become(Reserving), "{status} → reserving");
            assert!(!status.can_become(Unfunded), "{status} → unfunded");
        }
        assert!(Reserving.can_become(Charging) && Charging.can_become(Succeeded));
        for done in [Unfunded, Succeeded, Failed, NotNeeded] {
            assert!(
                FundingStatus::ALL.iter().all(|next| !done.can_become(*next)),
                "{done} is final"
            );
        }
    }
}
