//! API tokens: `vsl_<id>_<secret>`, where `id` (16 hex digits) names the token's record and
//! `secret` is 256 random bits (64 hex digits). The secret is shown once; the daemon keeps only
//! a SHA-256 digest of it and compares digests in constant time. A hash suffices (no argon2):
//! the secret is random and 256 bits long, so there is nothing to guess offline.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Grant;

const PREFIX: &str = "vsl_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A token as presented by a client.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    secret: [u8; SECRET_BYTES],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Token").field("id", &self.id).finish()
    }
}

/// Why a presented token is refused. The messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed: a token looks like vsl_<16 hex digits>_<64 hex digits>")]
    Malformed,
    #[error("the token is not valid (unknown, revoked or wrong)")]
    Invalid,
    #[error("the token {id} expired")]
    Expired { id: String },
    #[error("no randomness available: {0}")]
    Random(String),
}

impl Token {
    /// A new random token.
    pub fn generate() -> Result<Token, TokenError> {
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        getrandom::fill(&mut id).map_err(|e| TokenError::Random(e.to_string()))?;
        getrandom::fill(&mut secret).map_err(|e| TokenError::Random(e.to_string()))?;
        Ok(Token {
            id: hex(&id),
            secret,
        })
    }

    /// Parses `vsl_<id>_<secret>`.
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        let rest = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(TokenError::Malformed)?;
        let (id, secret) = rest.split_once('_').ok_or(TokenError::Malformed)?;
        if id.len() != ID_BYTES * 2 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed);
        }
        let secret = unhex::<SECRET_BYTES>(secret).ok_or(TokenError::Malformed)?;
        Ok(Token {
            id: id.to_ascii_lowercase(),
            secret,
        })
    }

    /// The full token text, to show once to whoever created it.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}_{}", self.id, hex(&self.secret))
    }

    /// The digest that is stored instead of the secret. The id is hashed in too, so a digest
    /// cannot be moved to another token's record.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"vessel-token-v1\0");
        h.update(self.id.as_bytes());
        h.update(self.secret);
        hex(&h.finalize())
    }
}

/// A token as stored: never the secret, only its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub id: String,
    pub user: String,
    /// What the token is for (free text, shown in lists).
    #[serde(default)]
    pub description: String,
    pub digest: String,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Narrows the user's grants; empty means all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<Grant>,
}

impl TokenRecord {
    /// Checks a presented token against this record at time `now_ms`.
    pub fn check(&self, token: &Token, now_ms: u64) -> Result<(), TokenError> {
        let presented = token.digest();
        let equal: bool = presented.as_bytes().ct_eq(self.digest.as_bytes()).into();
        if token.id != self.id || !equal {
            return Err(TokenError::Invalid);
        }
        if self.expires_ms.is_some_and(|at| now_ms >= at) {
            return Err(TokenError::Expired {
                id: self.id.clone(),
            });
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(token: &Token, expires_ms: Option<u64>) -> TokenRecord {
        TokenRecord {
            id: token.id.clone(),
            user: "alice".into(),
            description: String::new(),
            digest: token.digest(),
            created_ms: 0,
            expires_ms,
            scope: vec![],
        }
    }

    #[test]
    fn a_token_round_trips_through_its_text_and_matches_its_record() {
        let token = Token::generate().unwrap();
        let text = token.reveal();
        assert!(
            text.starts_with("vsl_") && text.len() == 4 + 16 + 1 + 64,
            "{text}"
        );
        let parsed = Token::parse(&text).unwrap();
        assert_eq!(parsed, token);
        assert_eq!(record(&token, None).check(&parsed, 5), Ok(()));
        assert!(!format!("{token:?}").contains(&text[21..]));
    }

    #[test]
    fn a_wrong_secret_or_an_expired_token_is_refused() {
        let token = Token::generate().unwrap();
        let other = Token::generate().unwrap();
        let forged = Token::parse(&format!("vsl_{}_{}", token.id, &other.reveal()[21..])).unwrap();
        assert_eq!(
            record(&token, None).check(&forged, 0),
            Err(TokenError::Invalid)
        );
        assert!(matches!(
            record(&token, Some(10)).check(&token, 10),
            Err(TokenError::Expired { .. })
        ));
        assert_eq!(record(&token, Some(10)).check(&token, 9), Ok(()));
    }

    #[test]
    fn the_record_holds_no_secret() {
        let token = Token::generate().unwrap();
        let json = serde_json::to_string(&record(&token, None)).unwrap();
        assert!(!json.contains(&token.reveal()[21..]), "{json}");
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(text in ".{0,120}") {
            let _ = Token::parse(&text);
        }

        #[test]
        fn only_well_formed_tokens_parse(id in "[0-9a-f]{16}", secret in "[0-9a-f]{64}", junk in "[g-z]{1,3}") {
            let good = format!("vsl_{id}_{secret}");
            prop_assert!(Token::parse(&good).is_ok());
            let bad = format!("vsl_{id}_{secret}{junk}");
            prop_assert!(Token::parse(&bad).is_err());
        }
    }
}
