//! Sales in another currency than the program's: the ECB's reference rates (units of a currency
//! per euro) and the conversion of a sale at the rate of its date, crossed through the euro
//! with one rounding at the end. Never at 1: without a rate the sale waits (`fx_rate_missing`).

use amba_core::Currency;
use chrono::NaiveDate;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// Where rates come from when the operator names nothing else (`AMBA_FX_RATES_URL`).
pub const ECB_DAILY_URL: &str = "https://www.ecb.europa.eu/stats/eurofxref/eurofxref-daily.xml";

/// How many days before the sale the latest rate may be: the ECB publishes on TARGET business
/// days only, so a weekend sale takes Friday's rate, and Easter's four closed days still find one.
pub const MAX_RATE_AGE_DAYS: i64 = 4;

/// One day of reference rates: units of each currency per euro.
#[derive(Debug, Clone, PartialEq)]
pub struct DayRates {
    pub date: NaiveDate,
    pub rates: Vec<(String, Decimal)>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FeedError {
    #[error("the rates feed is not XML: {0}")]
    NotXml(String),
    #[error("the rates feed has no dated Cube (expected the ECB eurofxref format)")]
    NoRates,
    #[error("the rates feed has a bad {what}: {value:?}")]
    Bad { what: &'static str, value: String },
}

/// Parses the ECB's `eurofxref-daily.xml` (or `-hist.xml`: one `<Cube time=…>` per day).
pub fn parse_ecb(xml: &str) -> Result<Vec<DayRates>, FeedError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| FeedError::NotXml(e.to_string()))?;
    let mut days = Vec::new();
    for day in doc
        .descendants()
        .filter(|n| n.tag_name().name() == "Cube" && n.has_attribute("time"))
    {
        let time = day.attribute("time").unwrap_or_default();
        let date = NaiveDate::parse_from_str(time, "%Y-%m-%d").map_err(|_| FeedError::Bad {
            what: "date",
            value: time.to_owned(),
        })?;
        let mut rates = Vec::new();
        for cube in day.children().filter(|n| n.tag_name().name() == "Cube") {
            let (Some(code), Some(rate)) = (cube.attribute("currency"), cube.attribute("rate")) else {
                continue;
            };
            let currency = Currency::parse(code).map_err(|_| FeedError::Bad {
                what: "currency",
                value: code.to_owned(),
            })?;
            let rate = Decimal::from_str(rate.trim())
                .ok()
                .filter(|r| *r > Decimal::ZERO)
                .ok_or_else(|| FeedError::Bad {
                    what: "rate",
                    value: rate.to_owned(),
                })?;
            rates.push((currency.code().to_owned(), rate));
        }
        // The euro is the base: one euro is one euro, on every day the feed has.
        rates.push(("EUR".to_owned(), Decimal::ONE));
        days.push(DayRates { date, rates });
    }
    if days.is_empty() {
        return Err(FeedError::NoRates);
    }
    Ok(days)
}

/// The rates a conversion used.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    pub date: NaiveDate,
    /// Units of the sale's currency per euro.
    pub sale_per_eur: Decimal,
    /// Units of the program's currency per euro.
    pub program_per_eur: Decimal,
    pub source: String,
}

/// A sale converted into the program's currency, for the conversion and its explanation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FxTrail {
    pub sale_amount_minor: i64,
    pub sale_currency: String,
    pub program_currency: String,
    /// The reference day whose rates were used (the sale's date, or the last publication before it).
    pub rate_date: NaiveDate,
    pub source: String,
    pub sale_per_eur: String,
    pub program_per_eur: String,
    /// Program currency per unit of sale currency (`program_per_eur / sale_per_eur`), for reading.
    pub cross_rate: String,
    /// The converted amount before rounding, in program minor units.
    pub exact_minor: String,
    pub rounding: String,
    pub amount_minor: i64,
}

/// Converts `amount_minor` of `sale` into `program` minor units: `amount / 10^sale_units /
/// sale_per_eur × program_per_eur × 10^program_units`, rounded half-even once. `None` on overflow.
pub fn convert(amount_minor: i64, sale: Currency, program: Currency, rates: &Rates) -> Option<FxTrail> {
    let scale = |units: u8| -> Option<Decimal> { Some(Decimal::from(10_i64.checked_pow(u32::from(units))?)) };
    let numerator = Decimal::from(amount_minor)
        .checked_mul(rates.program_per_eur)?
        .checked_mul(scale(program.minor_units())?)?;
    let denominator = rates.sale_per_eur.checked_mul(scale(sale.minor_units())?)?;
    let exact = numerator.checked_div(denominator)?;
    let rounded = exact.round_dp_with_strategy(0, RoundingStrategy::MidpointNearestEven);
    let amount = i64::try_from(rounded).ok()?;
    let cross = rates.program_per_eur.checked_div(rates.sale_per_eur)?;
    Some(FxTrail {
        sale_amount_minor: amount_minor,
        sale_currency: sale.code().to_owned(),
        program_currency: program.code().to_owned(),
        rate_date: rates.date,
        source: rates.source.clone(),
        sale_per_eur: rates.sale_per_eur.normalize().to_string(),
        program_per_eur: rates.program_per_eur.normalize().to_string(),
        cross_rate: cross.round_dp(10).normalize().to_string(),
        exact_minor: exact.round_dp(10).normalize().to_string(),
        rounding: "half-even to the program currency's minor unit, once, after crossing through EUR".to_owned(),
        amount_minor: amount,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<gesmes:Envelope xmlns:gesmes="http://www.gesmes.org/xml/2002-08-01" xmlns="http://www.ecb.int/vocabulary/2002-08-01/eurofxref">
  <gesmes:subject>Reference rates</gesmes:subject>
  <gesmes:Sender><gesmes:name>European Central Bank</gesmes:name></gesmes:Sender>
  <Cube>
    <Cube time='2026-12-04'>
      <Cube currency='USD' rate='1.0512'/>
      <Cube currency='JPY' rate='158.12'/>
      <Cube currency='GBP' rate='0.8302'/>
    </Cube>
  </Cube>
</gesmes:Envelope>"#;

    fn rates(sale: &str, program: &str) -> Rates {
        let day = parse_ecb(FEED).unwrap_or_default().remove(0);
        let rate = |c: &str| {
            day.rates
                .iter()
                .find(|(code, _)| code == c)
                .map(|r| r.1)
                .unwrap_or_default()
        };
        Rates {
            date: day.date,
            sale_per_eur: rate(sale),
            program_per_eur: rate(program),
            source: "test".into(),
        }
    }

    fn currency(code: &str) -> Currency {
        Currency::parse(code).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn parses_the_ecb_format_with_the_euro_as_base() {
        let days = parse_ecb(FEED).unwrap_or_default();
        assert_eq!(days.len(), 1);
        assert_eq!(days[0].date, NaiveDate::from_ymd_opt(2026, 12, 4).unwrap_or_default());
        assert!(days[0].rates.contains(&("JPY".to_owned(), Decimal::new(15812, 2))));
        assert!(days[0].rates.contains(&("EUR".to_owned(), Decimal::ONE)));
        assert_eq!(parse_ecb("<Cube/>"), Err(FeedError::NoRates));
        assert!(matches!(parse_ecb("not xml"), Err(FeedError::NotXml(_))));
        let bad = FEED.replace("1.0512", "-1");
        assert!(matches!(parse_ecb(&bad), Err(FeedError::Bad { what: "rate", .. })));
    }

    #[test]
    fn converts_through_the_euro_with_one_rounding() {
        // 100.00 EUR → USD at 1.0512: 105.12 USD exactly.
        let eur_usd = convert(10_000, currency("EUR"), currency("USD"), &rates("EUR", "USD"));
        assert_eq!(eur_usd.as_ref().map(|t| t.amount_minor), Some(10_512));
        // 1,000 JPY → USD: 1000 / 158.12 × 1.0512 = 6.6481153…  USD → 665 cents (one rounding).
        let jpy_usd = convert(1_000, currency("JPY"), currency("USD"), &rates("JPY", "USD"));
        assert_eq!(jpy_usd.as_ref().map(|t| t.amount_minor), Some(665));
        assert!(jpy_usd.is_some_and(|t| t.exact_minor.starts_with("664.811")));
        // 12.34 GBP → JPY (0 decimals): 12.34 / 0.8302 × 158.12 = 2350.27… → 2350.
        let gbp_jpy = convert(1_234, currency("GBP"), currency("JPY"), &rates("GBP", "JPY"));
        assert_eq!(gbp_jpy.map(|t| t.amount_minor), Some(2_350));
        // Half-even at exactly half a unit: 0.05 EUR at rate 1.5 = 7.5 cents → 8; at 2.5 → 12.5 → 12.
        let at = |rate: i64| Rates {
            date: NaiveDate::default(),
            sale_per_eur: Decimal::ONE,
            program_per_eur: Decimal::new(rate, 1),
            source: String::new(),
        };
        assert_eq!(
            convert(5, currency("EUR"), currency("USD"), &at(15)).map(|t| t.amount_minor),
            Some(8)
        );
        assert_eq!(
            convert(5, currency("EUR"), currency("USD"), &at(25)).map(|t| t.amount_minor),
            Some(12)
        );
    }
}
