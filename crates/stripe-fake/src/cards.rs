//! Stripe's test cards, by the name the hosted checkout page takes (`?card=declined`) and by
//! Stripe's magic PaymentMethod ids (`pm_card_chargeDeclined`), with what charging them does.

use serde_json::{Value, json};

/// What confirming a payment with the card does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The charge succeeds.
    Succeeds,
    /// The issuer declines: a failed charge with `failure_code = "card_declined"`.
    Declines {
        decline_code: &'static str,
        message: &'static str,
        /// `outcome.seller_message` of the failed charge.
        seller_message: &'static str,
    },
    /// The issuer demands 3D Secure on every payment: an off-session confirmation fails with
    /// `authentication_required`; an on-session one asks for action.
    AuthenticationRequired,
}

#[derive(Debug)]
pub(crate) struct TestCard {
    /// The name the checkout page takes.
    pub(crate) name: &'static str,
    /// Stripe's magic PaymentMethod id for the card.
    pub(crate) magic: &'static str,
    pub(crate) brand: &'static str,
    pub(crate) last4: &'static str,
    pub(crate) funding: &'static str,
    pub(crate) outcome: Outcome,
}

/// The message of a generic decline (the charge's `failure_message`, the error's `message`).
pub(crate) const DECLINED: &str = "Your card was declined.";

pub(crate) const CARDS: [TestCard; 4] = [
    // 4242 4242 4242 4242
    TestCard {
        name: "visa",
        magic: "pm_card_visa",
        brand: "visa",
        last4: "4242",
        funding: "credit",
        outcome: Outcome::Succeeds,
    },
    // 4000 0000 0000 0002
    TestCard {
        name: "declined",
        magic: "pm_card_chargeDeclined",
        brand: "visa",
        last4: "0002",
        funding: "credit",
        outcome: Outcome::Declines {
            decline_code: "generic_decline",
            message: DECLINED,
            seller_message: "The bank did not approve the charge.",
        },
    },
    // 4000 0000 0000 9995
    TestCard {
        name: "insufficient_funds",
        magic: "pm_card_chargeDeclinedInsufficientFunds",
        brand: "visa",
        last4: "9995",
        funding: "credit",
        outcome: Outcome::Declines {
            decline_code: "insufficient_funds",
            message: "Your card has insufficient funds.",
            seller_message: "The bank returned the decline code `insufficient_funds`.",
        },
    },
    // 4000 0027 6000 3184
    TestCard {
        name: "authentication_required",
        magic: "pm_card_authenticationRequired",
        brand: "visa",
        last4: "3184",
        funding: "credit",
        outcome: Outcome::AuthenticationRequired,
    },
];

pub(crate) fn by_name(name: &str) -> Option<&'static TestCard> {
    CARDS.iter().find(|c| c.name == name)
}

pub(crate) fn by_magic(id: &str) -> Option<&'static TestCard> {
    CARDS.iter().find(|c| c.magic == id)
}

/// The card a PaymentMethod of the fake was made from (they all come from [`CARDS`]).
pub(crate) fn of(payment_method: &Value) -> &'static TestCard {
    let last4 = &payment_method["card"]["last4"];
    CARDS.iter().find(|c| *last4 == c.last4).unwrap_or(&CARDS[0])
}

/// The names the checkout page accepts, for its error page.
pub(crate) fn names() -> Vec<&'static str> {
    CARDS.iter().map(|c| c.name).collect()
}

impl TestCard {
    /// The `card` hash of a PaymentMethod (expiring a few years after `now`).
    pub(crate) fn details(&self, now: i64) -> Value {
        json!({
            "brand": self.brand,
            "checks": {
                "address_line1_check": null,
                "address_postal_code_check": null,
                "cvc_check": "pass",
            },
            "country": "US",
            "display_brand": self.brand,
            "exp_month": 12,
            "exp_year": 1970 + now / 31_556_952 + 3,
            "fingerprint": self.fingerprint(),
            "funding": self.funding,
            "generated_from": null,
            "last4": self.last4,
            "networks": {"available": [self.brand], "preferred": null},
            "regulated_status": "unregulated",
            "three_d_secure_usage": {"supported": true},
            "wallet": null,
        })
    }

    /// `payment_method_details` of a charge made with the card.
    pub(crate) fn charge_details(&self, payment_method: &Value) -> Value {
        let card = &payment_method["card"];
        json!({
            "card": {
                "amount_authorized": null,
                "brand": self.brand,
                "checks": card["checks"],
                "country": "US",
                "exp_month": card["exp_month"],
                "exp_year": card["exp_year"],
                "fingerprint": self.fingerprint(),
                "funding": self.funding,
                "last4": self.last4,
                "network": self.brand,
                "three_d_secure": null,
                "wallet": null,
            },
            "type": "card",
        })
    }

    /// The same number always has the same fingerprint (16 characters, as on Stripe).
    fn fingerprint(&self) -> String {
        format!("fkFp{}{:0>8}", self.last4, self.name.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_are_found_by_name_magic_id_and_payment_method() {
        let declined = by_name("declined").map(|c| c.last4);
        assert_eq!(declined, Some("0002"));
        assert_eq!(
            by_magic("pm_card_authenticationRequired").map(|c| c.name),
            Some("authentication_required")
        );
        assert!(by_name("mastercard").is_none());
        let pm = json!({"card": CARDS[2].details(1_700_000_000)});
        assert_eq!(of(&pm).name, "insufficient_funds");
        assert_eq!(pm["card"]["exp_year"], 2026);
        assert_eq!(CARDS[0].fingerprint().len(), 16);
    }
}
