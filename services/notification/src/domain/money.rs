//! Amounts for people: minor units in the currency's own decimals, with its symbol where one is
//! unambiguous (USD 2469 → "$24.69", JPY 500 → "¥500"), else the code ("1.234 KWD").

use amba_core::Currency;

pub fn format(amount_minor: i64, currency: &str) -> String {
    let Ok(currency) = Currency::parse(currency) else {
        return format!("{amount_minor} {currency} (minor units)");
    };
    let digits = u32::from(currency.minor_units());
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    let scale = 10u64.pow(digits);
    let whole = group(abs / scale);
    let number = if digits == 0 {
        whole
    } else {
        format!("{whole}.{:0width$}", abs % scale, width = digits as usize)
    };
    match currency.code() {
        "USD" => format!("{sign}${number}"),
        "EUR" => format!("{sign}€{number}"),
        "GBP" => format!("{sign}£{number}"),
        "JPY" => format!("{sign}¥{number}"),
        code => format!("{sign}{number} {code}"),
    }
}

/// 1234567 → "1,234,567".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::format;

    #[test]
    fn each_currency_in_its_own_decimals() {
        assert_eq!(format(2469, "USD"), "$24.69");
        assert_eq!(format(5, "USD"), "$0.05");
        assert_eq!(format(123_456_789, "USD"), "$1,234,567.89");
        assert_eq!(format(500, "JPY"), "¥500");
        assert_eq!(format(1234, "KWD"), "1.234 KWD");
        assert_eq!(format(-2000, "EUR"), "-€20.00");
        assert_eq!(format(100, "usd"), "$1.00");
    }
}
