//! Reading JSON numbers the way JSON Schema defines them: an `integer` is a number without a
//! fractional part, however it is spelled (`60` and `60.0` are the same integer). serde reads
//! `60.0` as a float and refuses it for an `i64`, so a request that the API document allows
//! would be refused; the fields that are integers read through these functions instead.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

struct Integral;

impl Visitor<'_> for Integral {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom("integer out of range"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        // 2^63 is the first float past i64::MAX; every float below it with no fraction fits.
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        if v.is_finite() && v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
            Ok(v as i64) // exact: no fraction, and within range (checked above)
        } else {
            Err(E::invalid_type(de::Unexpected::Float(v), &self))
        }
    }
}

/// Reads an integer, also one written with a zero fraction. For `deserialize_with`.
pub fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(Integral)
}

/// Reads an optional integer, also one written with a zero fraction. For
/// `deserialize_with` together with `default`.
pub fn optional_integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct Optional;
    impl<'de> Visitor<'de> for Optional {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<i64>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<i64>, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Option<i64>, D2::Error> {
            integer(d).map(Some)
        }
    }
    d.deserialize_option(Optional)
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(deserialize_with = "super::integer")]
        n: i64,
        #[serde(default, deserialize_with = "super::optional_integer")]
        m: Option<i64>,
    }

    fn read(json: &str) -> Result<(i64, Option<i64>), serde_json::Error> {
        serde_json::from_str::<Body>(json).map(|b| (b.n, b.m))
    }

    #[test]
    fn integers_with_and_without_a_zero_fraction() {
        assert_eq!(read(r#"{"n": 60}"#).unwrap(), (60, None));
        assert_eq!(read(r#"{"n": 60.0, "m": -2.0}"#).unwrap(), (60, Some(-2)));
        assert_eq!(read(r#"{"n": 1e3, "m": null}"#).unwrap(), (1000, None));
        assert_eq!(read(r#"{"n": -9223372036854775808}"#).unwrap().0, i64::MIN);
    }

    #[test]
    fn fractions_strings_and_out_of_range_are_refused() {
        for bad in [
            r#"{"n": 60.5}"#,
            r#"{"n": "60"}"#,
            r#"{"n": 9223372036854775808}"#,
            r#"{"n": 1e19}"#,
            r#"{"n": true}"#,
            r#"{"n": 1, "m": 0.1}"#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }
}
