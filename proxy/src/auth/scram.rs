//! SCRAM-SHA-256 on the server side (RFC 5802 / 7677, as PostgreSQL speaks
//! it, without channel binding): the proxy checks a client's proof against a
//! stored verifier. The proxy's own logins to a database use the client
//! side from postgres-protocol.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Iterations used for verifiers made from clear-text passwords (PostgreSQL's default).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// A SCRAM exchange that went wrong: the client's fault.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScramError {
    /// A message that does not follow the SCRAM grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding was required by the client; the proxy offers none.
    #[error("channel binding is not supported")]
    ChannelBinding,
    /// The nonce or channel-binding echo does not match.
    #[error("SCRAM nonce or channel binding mismatch")]
    Mismatch,
    /// Wrong password.
    #[error("invalid SCRAM proof")]
    BadProof,
}

/// What the server stores for a user: PostgreSQL's
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn key32(b: &[u8]) -> Option<[u8; 32]> {
    b.try_into().ok()
}

impl Verifier {
    /// Makes a verifier from a clear-text password with a random salt.
    pub fn from_password(password: &str, iterations: u32) -> Verifier {
        let mut salt = vec![0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        Verifier::with_salt(password, salt, iterations)
    }

    /// Makes a verifier from a clear-text password and a given salt.
    pub fn with_salt(password: &str, salt: Vec<u8>, iterations: u32) -> Verifier {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        Verifier {
            iterations,
            salt,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// A verifier for a user the proxy does not know, as PostgreSQL's
    /// `scram_mock_salt` makes one: the salt is derived from the name with a
    /// per-process secret, so it is stable per name (a prober asking twice
    /// cannot tell a made-up user from a real one), and the keys are
    /// derived the same way, so no proof can match. Costs a few HMACs, not
    /// a PBKDF2.
    pub fn mock(secret: &[u8; 32], user: &str) -> Verifier {
        let derive = |what: &[u8]| {
            let mut mac = HmacSha256::new_from_slice(secret).expect("hmac takes any key length");
            mac.update(what);
            mac.update(user.as_bytes());
            let out: [u8; 32] = mac.finalize().into_bytes().into();
            out
        };
        Verifier {
            iterations: DEFAULT_ITERATIONS,
            salt: derive(b"salt\0")[..16].to_vec(),
            stored_key: derive(b"stored\0"),
            server_key: derive(b"server\0"),
        }
    }

    /// Parses PostgreSQL's stored form.
    pub fn parse(s: &str) -> Result<Verifier, &'static str> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or("must start with SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$').ok_or("missing `$` before the keys")?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or("missing `:` between iterations and salt")?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or("missing `:` between StoredKey and ServerKey")?;
        let iterations: u32 = iterations.parse().map_err(|_| "iterations is not a number")?;
        if iterations == 0 {
            return Err("iterations must be above 0");
        }
        let salt = B64.decode(salt).map_err(|_| "salt is not base64")?;
        let stored_key = B64
            .decode(stored)
            .ok()
            .and_then(|k| key32(&k))
            .ok_or("StoredKey is not 32 bytes of base64")?;
        let server_key = B64
            .decode(server)
            .ok()
            .and_then(|k| key32(&k))
            .ok_or("ServerKey is not 32 bytes of base64")?;
        Ok(Verifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// The stored form.
    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// The server side of one exchange, between its two round trips.
#[derive(Debug)]
pub struct ServerExchange {
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ServerExchange {
    /// Reads the client-first-message and produces the server-first-message.
    pub fn start(verifier: &Verifier, client_first: &[u8]) -> Result<(Self, String), ScramError> {
        let client_first = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = client_first
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel-binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed("no gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed("authzid is not supported"));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed("no client nonce"))?;
        let mut raw = [0u8; 18];
        rand::rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&verifier.salt), verifier.iterations);
        let exchange = ServerExchange {
            gs2_header: format!("{flag},{authzid},"),
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok((exchange, server_first))
    }

    /// Checks the client-final-message; on success returns the
    /// server-final-message (`v=...`).
    pub fn finish(self, verifier: &Verifier, client_final: &[u8]) -> Result<String, ScramError> {
        let client_final = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                binding = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let binding = binding.ok_or(ScramError::Malformed("no channel binding"))?;
        let binding = B64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if binding != self.gs2_header.as_bytes() || nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Mismatch);
        }
        let proof = B64
            .decode(proof)
            .ok()
            .and_then(|p| key32(&p))
            .ok_or(ScramError::Malformed("proof is not 32 bytes of base64"))?;
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let signature = hmac(&verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ signature[i];
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        // Constant-time comparison: the proof must not leak through timing.
        let diff = stored
            .iter()
            .zip(verifier.stored_key.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn run(client_password: &str, verifier: &Verifier) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let (ex, server_first) = ServerExchange::start(verifier, client.message())?;
        client
            .update(server_first.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected server-first"))?;
        let server_final = ex.finish(verifier, client.message())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected server signature"))
    }

    #[test]
    fn postgres_protocol_client_authenticates() {
        let v = Verifier::from_password("s3cret", 4096);
        assert_eq!(run("s3cret", &v), Ok(()));
        assert_eq!(run("wrong", &v), Err(ScramError::BadProof));
    }

    #[test]
    fn mock_verifiers_are_stable_per_name_and_accept_no_proof() {
        let secret = [7u8; 32];
        let a = Verifier::mock(&secret, "nobody");
        assert_eq!(a, Verifier::mock(&secret, "nobody"));
        assert_ne!(a.salt, Verifier::mock(&secret, "somebody").salt);
        assert_ne!(a.salt, Verifier::mock(&[8u8; 32], "nobody").salt);
        assert_eq!(a.salt.len(), 16);
        assert_eq!(run("", &a), Err(ScramError::BadProof));
        assert_eq!(run("nobody", &a), Err(ScramError::BadProof));
    }

    #[test]
    fn stored_form_round_trips() {
        let v = Verifier::from_password("pw", 4096);
        assert_eq!(Verifier::parse(&v.encode()), Ok(v.clone()));
        assert_eq!(run("pw", &Verifier::parse(&v.encode()).unwrap()), Ok(()));
        assert!(Verifier::parse("SCRAM-SHA-256$x:abc$a:b").is_err());
        assert!(Verifier::parse("md5abc").is_err());
    }

    #[test]
    fn rejects_channel_binding_and_garbage() {
        let v = Verifier::from_password("pw", 4096);
        assert_eq!(
            ServerExchange::start(&v, b"p=tls-server-end-point,,n=,r=abc").unwrap_err(),
            ScramError::ChannelBinding
        );
        assert!(ServerExchange::start(&v, b"garbage").is_err());
        assert!(ServerExchange::start(&v, b"n,,n=,r=").is_err());
        let (ex, _) = ServerExchange::start(&v, b"n,,n=,r=abc").unwrap();
        assert!(ex.finish(&v, b"c=biws,r=wrong,p=AAAA").is_err());
    }
}
