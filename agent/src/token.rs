//! The bootstrap (join) token as the agent sees it: a JWT whose payload it reads *without*
//! verifying the signature. Only the server can verify it; the agent needs one claim from it,
//! `ca_sha256`, the pin of the root CA. Trusting an unverified pin is sound: whoever gave the
//! device its token chose which CA the device trusts, and a forged token only makes the device
//! trust a CA that the real server will not answer for.

use serde::Deserialize;

/// Longest token read, in bytes (the server refuses longer ones too).
pub const MAX_TOKEN_LEN: usize = 4096;

/// Why a token cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("join token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// Not three dot-separated base64url parts with a JSON object in the middle.
    #[error("join token is not a JWT: {0}")]
    Malformed(&'static str),
    /// The payload has no usable `ca_sha256`.
    #[error("join token has no `ca_sha256` (64 hex digits) claim")]
    NoPin,
}

/// What the agent reads from its join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the root CA certificate's DER.
    pub ca_sha256: [u8; 32],
    /// The zone the token enrolls into, if it says (for logs).
    pub zone: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    ca_sha256: Option<String>,
    zone: Option<String>,
}

impl JoinToken {
    /// Reads the claims of `token` without verifying it.
    pub fn read_unverified(token: &str) -> Result<Self, TokenError> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(_header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not three parts"));
        };
        // JWTs use unpadded base64url; tolerate padding some encoders add.
        let bytes = URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        let claims: Payload = serde_json::from_slice(&bytes)
            .map_err(|_| TokenError::Malformed("payload is not a JSON object"))?;
        let pin = claims.ca_sha256.ok_or(TokenError::NoPin)?;
        let mut ca_sha256 = [0u8; 32];
        hex::decode_to_slice(pin.as_bytes(), &mut ca_sha256).map_err(|_| TokenError::NoPin)?;
        Ok(Self {
            ca_sha256,
            zone: claims.zone,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_the_pin_and_zone() {
        let pin = "ab".repeat(32);
        let t = JoinToken::read_unverified(&jwt(&format!(
            r#"{{"ca_sha256":"{pin}","zone":"lab","exp":1}}"#
        )))
        .unwrap();
        assert_eq!(t.ca_sha256, [0xab; 32]);
        assert_eq!(t.zone.as_deref(), Some("lab"));
        // Uppercase hex and surrounding whitespace are fine.
        let t = JoinToken::read_unverified(&format!(
            "  {}\n",
            jwt(&format!(r#"{{"ca_sha256":"{}"}}"#, pin.to_uppercase()))
        ))
        .unwrap();
        assert_eq!(t.ca_sha256, [0xab; 32]);
    }

    #[test]
    fn hostile_tokens_are_errors_not_panics() {
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        let cases: Vec<String> = vec![
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            "a.!!!.c".into(),
            "a.\u{e9}\u{e9}.c".into(),
            jwt("not json"),
            jwt("[]"),
            jwt("null"),
            jwt("{}"),
            jwt(r#"{"ca_sha256":null}"#),
            jwt(r#"{"ca_sha256":42}"#),
            jwt(r#"{"ca_sha256":"abc"}"#),
            jwt(&format!(r#"{{"ca_sha256":"{}"}}"#, "zz".repeat(32))),
            jwt(&format!(r#"{{"ca_sha256":"{}"}}"#, "ab".repeat(33))),
            jwt(&format!(
                r#"{{"ca_sha256":"{}","zone":7}}"#,
                "ab".repeat(32)
            )),
            jwt(&format!("{}{}", "[".repeat(1_000), "]".repeat(1_000))),
            long,
            format!("a.{}.c", "A".repeat(MAX_TOKEN_LEN)),
        ];
        for case in cases {
            assert!(
                JoinToken::read_unverified(&case).is_err(),
                "{}",
                case.chars().take(80).collect::<String>()
            );
        }
        assert_eq!(
            JoinToken::read_unverified(&"a".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::TooLong)
        );
    }
}
