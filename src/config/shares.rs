//! `GATEWAY_KEY_SHARES`: each API key's share of an account's upstream budget — a
//! reservation (`min=N/period`), a weight (`weight=W`) and a cap (`max=N/period`) — parsed
//! once at start-up into [`KeyShares`]. A problem stops start-up with one line naming the
//! entry; a key name that is not one of `GATEWAY_API_KEYS` is a problem too, because a typo
//! would otherwise silently give nobody the reservation.

use std::sync::Arc;

use super::{ApiKey, Rate};

/// Largest weight accepted: weights are relative, and a bound keeps the scheduler's integer
/// virtual time exact.
pub const MAX_WEIGHT: u32 = 1000;

/// One key's share of the budget of every account it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyShare {
    /// While the key has calls waiting, at least this many calls per (sliding) period,
    /// ahead of everyone's weight.
    pub min: Option<Rate>,
    /// Its share of what is left after reservations, among the keys that are waiting.
    pub weight: u32,
    /// Never more than this many calls per (sliding) period.
    pub max: Option<Rate>,
}

impl Default for KeyShare {
    fn default() -> Self {
        KeyShare {
            min: None,
            weight: 1,
            max: None,
        }
    }
}

/// `GATEWAY_KEY_SHARES`, parsed: the keys that asked for something other than the default
/// (weight 1, no reservation, no cap), in the order first named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyShares(Vec<(Arc<str>, KeyShare)>);

impl KeyShares {
    /// Parses `name:property=value,…` for the key names of `keys`.
    ///
    /// # Errors
    /// One line naming the entry: not `name:property=value`, an unknown key name, an
    /// unknown property, a bad value, or a reservation above the same key's cap.
    pub fn parse(raw: &str, keys: &[ApiKey]) -> Result<Self, String> {
        let mut out: Vec<(Arc<str>, KeyShare)> = Vec::new();
        for (i, item) in raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let shown: String = item.chars().take(60).collect();
            let (name, prop) = item
                .split_once(':')
                .ok_or_else(|| format!("entry {} `{shown}` is not `name:property=value`", i + 1))?;
            let (prop, value) = prop
                .split_once('=')
                .ok_or_else(|| format!("entry {} `{shown}` is not `name:property=value`", i + 1))?;
            let (name, prop, value) = (name.trim(), prop.trim(), value.trim());
            let Some(key) = keys.iter().find(|k| &*k.name == name) else {
                return Err(format!(
                    "`{shown}`: `{}` is not a key name of GATEWAY_API_KEYS",
                    name.chars().take(40).collect::<String>()
                ));
            };
            let at = match out.iter().position(|(n, _)| **n == *key.name) {
                Some(at) => at,
                None => {
                    out.push((Arc::clone(&key.name), KeyShare::default()));
                    out.len() - 1
                }
            };
            let share = &mut out[at].1;
            let rate = |v: &str| v.parse::<Rate>().map_err(|e| format!("`{shown}`: {e}"));
            match prop {
                "min" => share.min = Some(rate(value)?),
                "max" => share.max = Some(rate(value)?),
                "weight" => {
                    share.weight = value
                        .parse::<u32>()
                        .ok()
                        .filter(|w| (1..=MAX_WEIGHT).contains(w))
                        .ok_or_else(|| {
                            format!("`{shown}`: the weight must be a whole number from 1 to {MAX_WEIGHT}")
                        })?;
                }
                other => {
                    return Err(format!(
                        "`{shown}`: unknown property `{}` (use min, weight or max)",
                        other.chars().take(20).collect::<String>()
                    ));
                }
            }
        }
        for (name, s) in &out {
            if let (Some(min), Some(max)) = (s.min, s.max)
                && per_second(min) > per_second(max) * (1.0 + 1e-9)
            {
                return Err(format!(
                    "`{name}`: its reservation min={min} is above its cap max={max}"
                ));
            }
        }
        Ok(KeyShares(out))
    }

    /// Checks that the reservations fit in an account's `rate`.
    ///
    /// # Errors
    /// One line naming the account and the reservations that add up to more than its rate.
    pub fn check_fits(&self, account: &str, rate: Rate) -> Result<(), String> {
        let reserved: f64 = self
            .0
            .iter()
            .filter_map(|(_, s)| s.min)
            .map(per_second)
            .sum();
        if reserved > per_second(rate) * (1.0 + 1e-9) {
            let listed: Vec<String> = self
                .0
                .iter()
                .filter_map(|(n, s)| s.min.map(|m| format!("{n} min={m}")))
                .collect();
            return Err(format!(
                "the reservations ({}) add up to more than account `{account}`'s rate {rate}",
                listed.join(", ")
            ));
        }
        Ok(())
    }

    /// The share of the key `name` (the default for a key not listed).
    pub fn get(&self, name: &str) -> KeyShare {
        self.0
            .iter()
            .find(|(n, _)| **n == *name)
            .map(|(_, s)| *s)
            .unwrap_or_default()
    }

    /// These shares with every one of `names` listed (the default share for a key not
    /// named), so that the budget knows every key.
    pub fn including<'a>(mut self, names: impl IntoIterator<Item = &'a Arc<str>>) -> Self {
        for n in names {
            if !self.contains(n) {
                self.0.push((Arc::clone(n), KeyShare::default()));
            }
        }
        self
    }

    /// Whether the key `name` is listed.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| **n == *name)
    }

    /// The keys listed, in the order first named.
    pub fn iter(&self) -> impl Iterator<Item = &(Arc<str>, KeyShare)> {
        self.0.iter()
    }

    /// No key asked for anything: round robin among waiting keys, as without the setting.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|(_, s)| *s == KeyShare::default())
    }
}

fn per_second(r: Rate) -> f64 {
    f64::from(r.calls) / r.period.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::SecretString;

    use super::*;

    fn keys(names: &[&str]) -> Vec<ApiKey> {
        names
            .iter()
            .map(|n| ApiKey {
                name: (*n).into(),
                key: SecretString::from(format!("{n}-secret-key")),
            })
            .collect()
    }

    #[test]
    fn the_wallboard_example_parses() {
        let k = keys(&["wallboard", "analysts", "batch"]);
        let s = KeyShares::parse(
            "wallboard:min=20/min,analysts:weight=3,batch:weight=1,wallboard:max=40/min",
            &k,
        )
        .unwrap();
        let w = s.get("wallboard");
        assert_eq!(
            w.min,
            Some(Rate {
                calls: 20,
                period: Duration::from_secs(60)
            })
        );
        assert_eq!(w.weight, 1);
        assert_eq!(w.max.map(|m| m.calls), Some(40));
        assert_eq!(s.get("analysts").weight, 3);
        assert_eq!(s.get("nobody"), KeyShare::default());
        assert!(!s.is_empty());
        assert!(
            s.check_fits(
                "default",
                Rate {
                    calls: 60,
                    period: Duration::from_secs(60)
                }
            )
            .is_ok()
        );
        let small = Rate {
            calls: 10,
            period: Duration::from_secs(60),
        };
        let err = s.check_fits("default", small).unwrap_err();
        assert!(
            err.contains("wallboard min=20/min") && err.contains("`default`"),
            "{err}"
        );
        // Reservations are compared per second, whatever their periods.
        let s = KeyShares::parse("wallboard:min=1/s,analysts:min=1/s", &k).unwrap();
        assert!(
            s.check_fits(
                "default",
                Rate {
                    calls: 119,
                    period: Duration::from_secs(60)
                }
            )
            .is_err()
        );
    }

    #[test]
    fn start_up_stops_with_one_line_naming_the_setting() {
        use clap::Parser as _;
        let run = |shares: &str| {
            super::super::Cli::try_parse_from([
                "kore-gateway",
                "--kore-base-url",
                "https://smartassist.kore.ai",
                "--kore-account-id",
                "acc-1",
                "--kore-client-id",
                "cs-1",
                "--kore-client-secret",
                "s3cr3t-value",
                "--kore-rate-limit",
                "60/min",
                "--gateway-api-keys",
                "wallboard:wallboard-key-1,analysts:analysts-key-1",
                "--gateway-key-shares",
                shares,
            ])
            .unwrap()
            .into_settings()
        };
        let ok = run("wallboard:min=20/min,analysts:weight=3").unwrap();
        assert_eq!(ok.key_shares.get("analysts").weight, 3);
        for (shares, says) in [
            (
                "wallboard:min=61/min",
                "more than account `default`'s rate 60/min",
            ),
            ("nobody:weight=2", "`nobody` is not a key name"),
            ("wallboard:weight=x", "whole number"),
        ] {
            let err = run(shares).unwrap_err();
            assert_eq!(err.setting, "GATEWAY_KEY_SHARES");
            let line = err.to_string();
            assert!(line.contains(says) && !line.contains('\n'), "{line}");
            assert!(
                !line.contains("s3cr3t") && !line.contains("key-1"),
                "{line}"
            );
        }
    }

    #[test]
    fn bad_entries_are_named() {
        let k = keys(&["wallboard", "batch"]);
        for (raw, says) in [
            ("wallboard", "not `name:property=value`"),
            ("wallboard:min", "not `name:property=value`"),
            ("walboard:weight=2", "`walboard` is not a key name"),
            ("wallboard:share=2", "unknown property `share`"),
            ("wallboard:weight=0", "whole number from 1 to 1000"),
            ("wallboard:weight=1.5", "whole number from 1 to 1000"),
            ("wallboard:min=20", "not a rate"),
            ("wallboard:max=0/min", "positive whole number"),
            ("wallboard:min=20/min,wallboard:max=10/min", "above its cap"),
        ] {
            let err = KeyShares::parse(raw, &k).unwrap_err();
            assert!(err.contains(says), "{raw}: {err}");
            assert!(!err.contains("secret-key"), "{err}");
        }
        assert!(KeyShares::parse("", &k).unwrap().is_empty());
        assert!(KeyShares::parse("batch:weight=1", &k).unwrap().is_empty());
    }
}
