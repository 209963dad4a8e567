//! Currencies, amounts and exchange rates: the integer arithmetic every validator does the same.
//!
//! # Representation
//! - The native currency, `AGR`, counts integer base units (`u64`), as transfers always have.
//! - An issued currency is identified by a code (3 to 12 characters `A-Z`, `0-9`; not `AGR`) and
//!   its issuer's account. Its amounts are fixed point: integer *atoms* of 10^-9 unit
//!   ([`IOU_DECIMALS`]), at most [`MAX_IOU`] atoms (10^18 units). Written as a decimal with up
//!   to 9 digits after the point: `12.5/USD/ag…`.
//! - A [`Rate`] is what an offer's owner asks per unit it sells, in atoms (or base units) of
//!   what it buys per atom of what it sells: a decimal float with [`TICK_DIGITS`] significant
//!   digits (the tick size) and a power of ten, so that book order is exact.
//!
//! # Rounding
//! Every multiplication by a rate rounds in favour of the offer's owner: what a taker must pay
//! for an amount rounds up, what a taker receives for a payment rounds down. A rate made from
//! an offer's two amounts rounds up (the owner never asks less than it wrote). Nothing here
//! rounds in a way that creates value; [`crate::market`] checks the fills again.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::account::Account;

mod wide {
    #![allow(clippy::manual_div_ceil)]
    uint::construct_uint! {
        /// 256-bit unsigned integers for the exact products of amounts and rates.
        pub struct U256(4);
    }
}
use wide::U256;

/// Digits after the point of an issued amount.
pub const IOU_DECIMALS: u32 = 9;
/// Atoms per unit of an issued currency.
pub const IOU_SCALE: u128 = 1_000_000_000;
/// Largest issued amount, in atoms: 10^18 units.
pub const MAX_IOU: u128 = 1_000_000_000_000_000_000_000_000_000;
/// Significant digits of a rate (the tick size).
pub const TICK_DIGITS: u32 = 8;
const M_LOW: u64 = 10_000_000;
const M_HIGH: u64 = 100_000_000;
/// Powers of ten a rate may carry.
const E_MIN: i32 = -40;
const E_MAX: i32 = 30;
/// The native currency's code.
pub const NATIVE_CODE: &str = "AGR";

/// A currency code: 3 to 12 characters `A-Z` and `0-9`, not `AGR`. Stored padded with zeros.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Code([u8; 12]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("currency code {0:?}: 3 to 12 characters A-Z and 0-9 (AGR is the native currency)")]
    Code(String),
    #[error("amount {0:?}: a number (native: integer base units; issued: up to 9 decimals)")]
    Number(String),
    #[error("amount {0:?} is too large")]
    TooLarge(String),
    #[error("amount {0:?}: write AMOUNT for AGR or AMOUNT/CUR/ISSUER for an issued currency")]
    Form(String),
    #[error("issuer {0:?}: {1}")]
    Issuer(String, String),
}

impl Code {
    /// Below every valid code (the start of a range).
    pub(crate) const MIN: Code = Code([0; 12]);

    pub fn new(s: &str) -> Result<Code, AmountError> {
        let ok = (3..=12).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && s != NATIVE_CODE;
        if !ok {
            return Err(AmountError::Code(s.to_owned()));
        }
        let mut b = [0; 12];
        b[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Code(b))
    }

    pub fn as_str(&self) -> &str {
        let n = self.0.iter().position(|&b| b == 0).unwrap_or(12);
        std::str::from_utf8(&self.0[..n]).unwrap_or("?")
    }

    /// Whether decoded bytes form a valid code (decoding does not check).
    pub fn is_valid(&self) -> bool {
        Code::new(self.as_str()).is_ok_and(|c| c == *self)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(self.as_str())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            Code::new(&s).map_err(serde::de::Error::custom)
        } else {
            Ok(Code(<[u8; 12]>::deserialize(d)?))
        }
    }
}

/// An issued currency: a code and its issuer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Issue {
    pub code: Code,
    pub issuer: Account,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.code, self.issuer)
    }
}

/// The native currency or an issued one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Currency {
    Native,
    Issued(Issue),
}

impl Currency {
    pub fn issuer(&self) -> Option<Account> {
        match self {
            Currency::Native => None,
            Currency::Issued(i) => Some(i.issuer),
        }
    }

    /// Largest amount of this currency, in its units.
    pub fn max_value(&self) -> u128 {
        match self {
            Currency::Native => u64::MAX as u128,
            Currency::Issued(_) => MAX_IOU,
        }
    }

    pub fn is_valid(&self) -> bool {
        match self {
            Currency::Native => true,
            Currency::Issued(i) => i.code.is_valid(),
        }
    }

    /// `AGR` or `CUR/ISSUER`.
    pub fn parse(s: &str) -> Result<Currency, AmountError> {
        let s = s.trim();
        if s == NATIVE_CODE {
            return Ok(Currency::Native);
        }
        let (code, issuer) = s
            .split_once('/')
            .ok_or_else(|| AmountError::Form(s.to_owned()))?;
        Ok(Currency::Issued(Issue {
            code: Code::new(code)?,
            issuer: issuer.parse().map_err(|e: crate::AccountParseError| {
                AmountError::Issuer(issuer.to_owned(), e.to_string())
            })?,
        }))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Currency::Native => f.write_str(NATIVE_CODE),
            Currency::Issued(i) => i.fmt(f),
        }
    }
}

/// An amount of a currency, in its units (base units or atoms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Amount {
    pub currency: Currency,
    pub value: u128,
}

impl Amount {
    pub fn native(value: u64) -> Amount {
        Amount {
            currency: Currency::Native,
            value: value as u128,
        }
    }

    pub fn issued(issue: Issue, atoms: u128) -> Amount {
        Amount {
            currency: Currency::Issued(issue),
            value: atoms,
        }
    }

    /// Whether the value is within its currency's range and the code is valid.
    pub fn is_valid(&self) -> bool {
        self.currency.is_valid() && self.value <= self.currency.max_value()
    }

    /// The value alone, as written: `123` (native base units) or `12.5` (issued).
    pub fn value_text(&self) -> String {
        match self.currency {
            Currency::Native => self.value.to_string(),
            Currency::Issued(_) => format_units(self.value),
        }
    }
}

/// Atoms as a decimal: `12.5`, `0.000000001`, `7`.
pub fn format_units(atoms: u128) -> String {
    let whole = atoms / IOU_SCALE;
    let frac = atoms % IOU_SCALE;
    if frac == 0 {
        return whole.to_string();
    }
    let f = format!("{frac:09}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

/// A signed balance in atoms as a decimal (`-3.25`).
pub fn format_signed_units(atoms: i128) -> String {
    if atoms < 0 {
        format!("-{}", format_units(atoms.unsigned_abs()))
    } else {
        format_units(atoms as u128)
    }
}

/// A decimal with up to 9 digits after the point, as atoms.
pub fn parse_units(s: &str) -> Result<u128, AmountError> {
    let bad = || AmountError::Number(s.to_owned());
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > IOU_DECIMALS as usize
        || (s.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| AmountError::TooLarge(s.to_owned()))?
    };
    let mut f: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    for _ in frac.len()..IOU_DECIMALS as usize {
        f *= 10;
    }
    let atoms = whole
        .checked_mul(IOU_SCALE)
        .and_then(|w| w.checked_add(f))
        .filter(|a| *a <= MAX_IOU)
        .ok_or_else(|| AmountError::TooLarge(s.to_owned()))?;
    Ok(atoms)
}

impl FromStr for Amount {
    type Err = AmountError;

    /// `AMOUNT` or `AMOUNT/AGR` (native base units, an integer) or `AMOUNT/CUR/ISSUER`.
    fn from_str(s: &str) -> Result<Amount, AmountError> {
        let s = s.trim();
        let (value, currency) = match s.split_once('/') {
            None => (s, Currency::Native),
            Some((v, c)) => (v, Currency::parse(c)?),
        };
        match currency {
            Currency::Native => {
                let v: u64 = value.parse().map_err(|_| {
                    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                        AmountError::TooLarge(s.to_owned())
                    } else {
                        AmountError::Number(s.to_owned())
                    }
                })?;
                Ok(Amount::native(v))
            }
            Currency::Issued(issue) => Ok(Amount::issued(issue, parse_units(value)?)),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.currency {
            Currency::Native => write!(f, "{}", self.value),
            Currency::Issued(i) => write!(f, "{}/{}", format_units(self.value), i),
        }
    }
}

/// A rate: `m × 10^e` units of one currency per unit of another, `m` of exactly
/// [`TICK_DIGITS`] digits. Ordered by value (the fields compare in that order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rate {
    e: i32,
    m: u64,
}

fn pow10(k: u32) -> U256 {
    U256::from(10u64).pow(U256::from(k))
}

fn to_u128(x: U256) -> Option<u128> {
    if x > U256::from(u128::MAX) {
        None
    } else {
        Some(x.low_u128())
    }
}

impl Rate {
    /// The rate of one to one.
    pub const ONE: Rate = Rate { e: -7, m: M_LOW };
    /// The smallest and largest rates (the ends of a book).
    pub const MIN: Rate = Rate { e: E_MIN, m: M_LOW };
    pub const MAX: Rate = Rate {
        e: E_MAX,
        m: M_HIGH - 1,
    };

    pub fn mantissa(&self) -> u64 {
        self.m
    }

    pub fn exponent(&self) -> i32 {
        self.e
    }

    /// Whether a decoded rate is normalised and in range (decoding does not check).
    pub fn is_valid(&self) -> bool {
        (M_LOW..M_HIGH).contains(&self.m) && (E_MIN..=E_MAX).contains(&self.e)
    }

    /// `num / den` rounded up to the tick size; `None` when out of range or `den` is 0.
    pub fn ratio_up(num: u128, den: u128) -> Option<Rate> {
        Rate::ratio(U256::from(num), U256::from(den), true)
    }

    /// `num / den` rounded down to the tick size.
    pub fn ratio_down(num: u128, den: u128) -> Option<Rate> {
        Rate::ratio(U256::from(num), U256::from(den), false)
    }

    fn ratio(num: U256, den: U256, up: bool) -> Option<Rate> {
        if num.is_zero() || den.is_zero() {
            return None;
        }
        // Find e with 10^7 <= num / (den 10^e) < 10^8, then take m = num / (den 10^e).
        // Decimal digits, from the bit length (log10 2 ≈ 0.30103; the loop below corrects an
        // estimate that is off by one).
        let digits = |x: U256| (x.bits() as i32 * 30103) / 100_000 + 1;
        let mut e = digits(num) - digits(den) - (TICK_DIGITS as i32 - 1);
        loop {
            if !(E_MIN - 2..=E_MAX + 2).contains(&e) {
                return None;
            }
            let (n, d) = if e >= 0 {
                (num, den.checked_mul(pow10(e as u32))?)
            } else {
                (num.checked_mul(pow10((-e) as u32))?, den)
            };
            let q = n / d;
            if q < U256::from(M_LOW) {
                e -= 1;
                continue;
            }
            if q >= U256::from(M_HIGH) {
                e += 1;
                continue;
            }
            let mut m = q.low_u64();
            if up && !(n % d).is_zero() {
                m += 1;
                if m == M_HIGH {
                    m = M_LOW;
                    e += 1;
                }
            }
            let r = Rate { e, m };
            return r.is_valid().then_some(r);
        }
    }

    /// `amount × rate`, rounded up (what a taker pays for `amount`); `None` on overflow.
    pub fn mul_up(&self, amount: u128) -> Option<u128> {
        self.mul(amount, true)
    }

    /// `amount × rate`, rounded down.
    pub fn mul_down(&self, amount: u128) -> Option<u128> {
        self.mul(amount, false)
    }

    fn mul(&self, amount: u128, up: bool) -> Option<u128> {
        let p = U256::from(amount) * U256::from(self.m);
        if self.e >= 0 {
            to_u128(p.checked_mul(pow10(self.e as u32))?)
        } else {
            let d = pow10((-self.e) as u32);
            let (q, r) = (p / d, p % d);
            to_u128(if up && !r.is_zero() { q + 1 } else { q })
        }
    }

    /// The most `x` with `x × rate ≤ budget` (what a budget buys at this rate), rounded down.
    pub fn div_down(&self, budget: u128) -> u128 {
        // x ≤ budget / (m 10^e)
        let (n, d) = if self.e >= 0 {
            (
                U256::from(budget),
                U256::from(self.m) * pow10(self.e as u32),
            )
        } else {
            (
                U256::from(budget) * pow10((-self.e) as u32),
                U256::from(self.m),
            )
        };
        to_u128(n / d).unwrap_or(u128::MAX)
    }

    /// The product of two rates, rounded up (a bridged path's rate, for ordering).
    pub fn then(&self, next: &Rate) -> Option<Rate> {
        let m = U256::from(self.m) * U256::from(next.m);
        let e = self.e + next.e;
        // m has 15 or 16 digits; bring it to 8, rounding up.
        let (num, den) = if e >= 0 {
            (m * pow10(e as u32), U256::one())
        } else {
            (m, pow10((-e) as u32))
        };
        Rate::ratio(num, den, true)
    }

    /// The rate as a decimal string (for people: `1.0525`, `0.00012`).
    pub fn to_decimal(&self) -> String {
        let digits = self.m.to_string();
        let point = digits.len() as i32 + self.e;
        let s = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_decimal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> Account {
        Account::from_key(&ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key())
    }

    #[test]
    fn amounts_parse_and_print_back() {
        let i = issuer();
        for text in ["0.5", "12", "12.000000001", "1000000000000000000"] {
            let a: Amount = format!("{text}/USD/{i}").parse().unwrap();
            assert_eq!(a.to_string(), format!("{text}/USD/{i}"));
        }
        assert_eq!("42".parse::<Amount>().unwrap(), Amount::native(42));
        assert_eq!("42/AGR".parse::<Amount>().unwrap(), Amount::native(42));
        for bad in [
            "".to_owned(),
            "-1".to_owned(),
            "1.5".to_owned(),
            "1e5".to_owned(),
            format!("1.0000000001/USD/{i}"),
            format!("1./USD/{i}"),
            format!("1000000000000000001/USD/{i}"),
            format!("1/usd/{i}"),
            format!("1/AGR/{i}"),
            "1/USD".to_owned(),
            "1/USD/agnope".to_owned(),
            "99999999999999999999".to_owned(),
        ] {
            assert!(bad.parse::<Amount>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_round_towards_the_owner() {
        // 3 for 7: 0.42857142857… → up: 0.42857143, down: 0.42857142.
        let up = Rate::ratio_up(3, 7).unwrap();
        let down = Rate::ratio_down(3, 7).unwrap();
        assert_eq!(up.to_decimal(), "0.42857143");
        assert_eq!(down.to_decimal(), "0.42857142");
        assert!(down < up);
        assert_eq!(Rate::ratio_up(5, 5).unwrap(), Rate::ONE);
        assert_eq!(Rate::ratio_up(2_000, 1).unwrap().to_decimal(), "2000");
        // Paying for 7 at 3/7 (up) costs at least 3; 3 buys at most 6 at that rate.
        assert_eq!(up.mul_up(7), Some(4));
        assert_eq!(up.mul_down(7), Some(3));
        assert_eq!(up.div_down(3), 6);
        assert!(up.mul_up(up.div_down(3)).unwrap() <= 3);
        // Order follows value across exponents.
        let a = Rate::ratio_up(99, 100).unwrap();
        let b = Rate::ratio_up(101, 100).unwrap();
        assert!(a < Rate::ONE && Rate::ONE < b);
        assert_eq!(
            Rate::ratio_up(2, 1)
                .unwrap()
                .then(&Rate::ratio_up(3, 1).unwrap()),
            Rate::ratio_up(6, 1)
        );
        assert!(Rate::ratio_up(1, 0).is_none());
        assert!(Rate::ratio_up(MAX_IOU, 1).is_some());
        assert!(Rate::ratio_up(1, MAX_IOU).is_some());
    }

    #[test]
    fn products_and_quotients_never_favour_the_taker() {
        let mut x: u64 = 0x1234_5678_9abc_def0;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..10_000 {
            let num = (next() % 1_000_000_000_000) as u128 + 1;
            let den = (next() % 1_000_000_000_000) as u128 + 1;
            let r = Rate::ratio_up(num, den).unwrap();
            // The rate is at least num/den: r × den ≥ num.
            assert!(r.mul_up(den).unwrap() >= num, "{num}/{den} → {r}");
            let amount = (next() % 1_000_000_000_000_000) as u128;
            let paid = r.mul_up(amount).unwrap();
            // amount × m × 10^e ≤ paid, exactly.
            let exact = U256::from(amount) * U256::from(r.m);
            let paid_scaled = if r.e >= 0 {
                U256::from(paid)
            } else {
                U256::from(paid) * pow10((-r.e) as u32)
            };
            let exact_scaled = if r.e >= 0 {
                exact * pow10(r.e as u32)
            } else {
                exact
            };
            assert!(paid_scaled >= exact_scaled);
            let budget = (next() % 1_000_000_000_000_000) as u128;
            let bought = r.div_down(budget);
            assert!(r.mul_up(bought).unwrap() <= budget);
        }
    }
}
