//! A fuel budget as a person asks for one: a number of units, or none.
//!
//! The command line (`--fuel`), the HTTP API (`"fuel"`), the environment
//! (`WASMQ_DEFAULT_FUEL`) and a stored task's limits all say it the same
//! way: a whole number of at least 1, or `unlimited`. There is no `0` that
//! secretly means "no limit"; the runtime gets `None` for unlimited
//! ([`Fuel::units`]), and the one place that encodes it in a database
//! column is the store's.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

/// How [`Fuel::Unlimited`] is written.
pub const UNLIMITED: &str = "unlimited";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fuel {
    /// At most this many units; a run that uses them all ends `out-of-fuel`.
    Units(NonZeroU64),
    /// No fuel limit: only the wall-clock deadline stops the run.
    Unlimited,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fuel `{0}`: expected a whole number of at least 1, or `unlimited`")]
pub struct FuelError(pub String);

impl Fuel {
    /// The budget as the runtime takes it: `None` is unlimited.
    pub fn units(self) -> Option<u64> {
        match self {
            Fuel::Units(n) => Some(n.get()),
            Fuel::Unlimited => None,
        }
    }

    /// A budget of `n` units, for constants: a 0 is a bug in the caller
    /// (and a compile error in a `const`).
    ///
    /// # Panics
    /// When `n` is 0.
    pub const fn limited(n: u64) -> Fuel {
        match NonZeroU64::new(n) {
            Some(n) => Fuel::Units(n),
            None => panic!("a fuel budget of 0 units"),
        }
    }

    /// The budget of `units` (`None` = unlimited); `Some(0)` is refused.
    pub fn from_units(units: Option<u64>) -> Result<Fuel, FuelError> {
        match units {
            None => Ok(Fuel::Unlimited),
            Some(n) => NonZeroU64::new(n)
                .map(Fuel::Units)
                .ok_or_else(|| FuelError(n.to_string())),
        }
    }
}

impl FromStr for Fuel {
    type Err = FuelError;

    /// `unlimited` (any case), or a whole number with optional `_`
    /// separators as in Rust literals (`10_000_000`).
    fn from_str(text: &str) -> Result<Fuel, FuelError> {
        let t = text.trim();
        if t.eq_ignore_ascii_case(UNLIMITED) {
            return Ok(Fuel::Unlimited);
        }
        t.replace('_', "")
            .parse::<NonZeroU64>()
            .map(Fuel::Units)
            .map_err(|_| FuelError(text.to_owned()))
    }
}

impl fmt::Display for Fuel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fuel::Units(n) => write!(f, "{n}"),
            Fuel::Unlimited => f.write_str(UNLIMITED),
        }
    }
}

/// JSON: a number, or the string `"unlimited"`.
impl Serialize for Fuel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Fuel::Units(n) => s.serialize_u64(n.get()),
            Fuel::Unlimited => s.serialize_str(UNLIMITED),
        }
    }
}

impl<'de> Deserialize<'de> for Fuel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Units(u64),
            Text(String),
        }
        let fuel = match Wire::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "invalid fuel: expected a whole number of at least 1, or \"unlimited\"",
            )
        })? {
            Wire::Units(n) => Fuel::from_units(Some(n)),
            Wire::Text(t) if t == UNLIMITED => Ok(Fuel::Unlimited),
            Wire::Text(t) => Err(FuelError(t)),
        };
        fuel.map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_unlimited_and_refuses_zero() {
        assert_eq!("unlimited".parse(), Ok(Fuel::Unlimited));
        assert_eq!("Unlimited".parse(), Ok(Fuel::Unlimited));
        assert_eq!(
            "1_000_000".parse::<Fuel>().unwrap().units(),
            Some(1_000_000)
        );
        for bad in ["0", "-1", "", "lots", "1.5"] {
            let e = bad.parse::<Fuel>().unwrap_err();
            assert!(e.to_string().contains("at least 1"), "{bad}: {e}");
        }
        assert_eq!(Fuel::from_units(None), Ok(Fuel::Unlimited));
        assert!(Fuel::from_units(Some(0)).is_err());
    }

    #[test]
    fn json_is_a_number_or_unlimited() {
        let n: Fuel = serde_json::from_str("5").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "5");
        let u: Fuel = serde_json::from_str("\"unlimited\"").unwrap();
        assert_eq!(serde_json::to_string(&u).unwrap(), "\"unlimited\"");
        for bad in ["0", "-3", "\"lots\"", "1.5", "true"] {
            let e = serde_json::from_str::<Fuel>(bad).unwrap_err();
            assert!(e.to_string().contains("fuel"), "{bad}: {e}");
        }
    }
}
