//! Tickets: how a browser's `EventSource`, which cannot send a header, subscribes without
//! putting an API key in a URL. `POST /v1/interactions/changes/tickets` (with the key in a
//! header) returns a ticket for exactly that query, valid for at most five minutes; the
//! stream's URL carries it as `?ticket=`. It is signed (HMAC-SHA256) with a key derived
//! from the gateway's secrets, so every replica accepts the others' tickets and nobody
//! without the secrets can forge one; it names the key it was issued to (and is refused
//! once that key is gone) and the query it was issued for.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the (truncated) tag.
const TAG: usize = 16;
/// Longest ticket text read: room for a key name of 3,000 bytes (names have no length limit
/// of their own; the request target's own limit, 16 KiB, is far above this).
pub const MAX_TICKET_CHARS: usize = 4096;

/// The key tickets are signed with. `Debug` never shows it.
#[derive(Clone)]
pub struct TicketKey([u8; 32]);

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey([REDACTED])")
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as Mac>::new_from_slice(&[0]).expect("HMAC takes any key"))
}

/// Who a ticket was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub caller: String,
    pub admin: bool,
}

impl TicketKey {
    /// Derives the key from `secrets` (every account's client secret and every API key: the
    /// same configuration gives the same key on every replica).
    pub fn derive<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut m = mac(b"kore-gateway ticket key v1");
        for s in secrets {
            m.update(&(s.len() as u64).to_be_bytes());
            m.update(s);
        }
        TicketKey(m.finalize().into_bytes().into())
    }

    /// A ticket for `holder` and the query whose digest is `binding`, valid until
    /// `expires` (Unix seconds).
    pub fn issue(&self, holder: &Holder, binding: &[u8; 32], expires: i64) -> String {
        let mut payload = Vec::with_capacity(64 + holder.caller.len());
        payload.push(1u8);
        payload.push(u8::from(holder.admin));
        payload.extend_from_slice(&expires.to_be_bytes());
        payload.extend_from_slice(&binding[..16]);
        payload.extend_from_slice(holder.caller.as_bytes());
        let mut m = mac(&self.0);
        m.update(&payload);
        let tag = m.finalize().into_bytes();
        payload.extend_from_slice(&tag[..TAG]);
        URL_SAFE_NO_PAD.encode(payload)
    }

    /// The holder of `ticket`, if it is genuine, unexpired at `now` and issued for the query
    /// whose digest is `binding`.
    pub fn check(
        &self,
        ticket: &str,
        binding: &[u8; 32],
        now: i64,
    ) -> Result<Holder, &'static str> {
        if ticket.len() > MAX_TICKET_CHARS {
            return Err("the ticket is not one this gateway issued");
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(ticket.trim())
            .map_err(|_| "the ticket is not one this gateway issued")?;
        if bytes.len() < 2 + 8 + 16 + TAG || bytes[0] != 1 {
            return Err("the ticket is not one this gateway issued");
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG);
        let mut m = mac(&self.0);
        m.update(payload);
        m.verify_truncated_left(tag)
            .map_err(|_| "the ticket is not one this gateway issued")?;
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&payload[2..10]);
        if i64::from_be_bytes(exp) < now {
            return Err("the ticket has expired: ask for a new one");
        }
        if payload[10..26] != binding[..16] {
            return Err("the ticket was issued for another query");
        }
        let caller = std::str::from_utf8(&payload[26..])
            .map_err(|_| "the ticket is not one this gateway issued")?;
        Ok(Holder {
            caller: caller.to_owned(),
            admin: payload[1] == 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_checks_only_for_its_query_until_it_expires() {
        let key = TicketKey::derive([b"secret".as_slice()]);
        let holder = Holder {
            caller: "team-a".into(),
            admin: false,
        };
        let q = [7u8; 32];
        let t = key.issue(&holder, &q, 1_000);
        assert_eq!(key.check(&t, &q, 999), Ok(holder.clone()));
        assert_eq!(key.check(&t, &q, 1_000), Ok(holder));
        assert!(key.check(&t, &q, 1_001).unwrap_err().contains("expired"));
        assert!(
            key.check(&t, &[8u8; 32], 999)
                .unwrap_err()
                .contains("another query")
        );
        let other = TicketKey::derive([b"other".as_slice()]);
        assert!(other.check(&t, &q, 999).is_err(), "another gateway's key");
        // Any changed character is refused.
        let mut forged = t.clone().into_bytes();
        let last = forged.len() - 3;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(key.check(&forged, &q, 999).is_err());
        assert!(key.check("", &q, 0).is_err());
        assert!(key.check(&"A".repeat(5000), &q, 0).is_err());
        // A long key name still gets a ticket that checks (found by fuzzing: 765 bytes).
        let long = Holder {
            caller: "\u{fffd}".repeat(255),
            admin: true,
        };
        let t = key.issue(&long, &q, 1_000);
        assert_eq!(key.check(&t, &q, 999), Ok(long));
        assert!(!format!("{key:?}").contains("115"), "Debug hides the key");
    }
}
