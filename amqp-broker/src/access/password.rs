//! Password hashes in RabbitMQ's format, so `password_hash` values move between RabbitMQ's
//! definitions and this broker's unchanged.
//!
//! RabbitMQ's `rabbit_password_hashing_sha256` (its default since 3.6) stores
//! `base64(salt ++ sha256(salt ++ utf8(password)))` with 4 random salt bytes;
//! `rabbit_password_hashing_sha512` is the same with SHA-512. Both verify here; new hashes
//! are SHA-256, as RabbitMQ's.

use base64::Engine as _;
use sha2::{Digest, Sha256, Sha512};

/// The salt length RabbitMQ uses.
const SALT_BYTES: usize = 4;

/// A hashing algorithm, by its RabbitMQ module name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// RabbitMQ's name for it (`hashing_algorithm` in definitions).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "rabbit_password_hashing_sha256",
            Algorithm::Sha512 => "rabbit_password_hashing_sha512",
        }
    }

    /// The algorithm RabbitMQ calls `name`; `None` for one this broker cannot verify (MD5,
    /// RabbitMQ's pre-3.6 default, is not supported).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "rabbit_password_hashing_sha256" => Some(Algorithm::Sha256),
            "rabbit_password_hashing_sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    fn digest(self, salt: &[u8], password: &str) -> Vec<u8> {
        match self {
            Algorithm::Sha256 => Sha256::new()
                .chain_update(salt)
                .chain_update(password.as_bytes())
                .finalize()
                .to_vec(),
            Algorithm::Sha512 => Sha512::new()
                .chain_update(salt)
                .chain_update(password.as_bytes())
                .finalize()
                .to_vec(),
        }
    }

    fn digest_bytes(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

/// A salted password hash. An empty one (RabbitMQ's `password_hash: ""`) matches no password:
/// such a user cannot log in with PLAIN or AMQPLAIN.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PasswordHash {
    algorithm: Algorithm,
    /// `salt ++ digest`, as RabbitMQ stores it (empty: no password).
    bytes: Vec<u8>,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is as good as a password to an offline attacker: never in logs.
        f.debug_struct("PasswordHash")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl PasswordHash {
    /// A new SHA-256 hash of `password` with a fresh random salt.
    pub fn new(password: &str) -> Self {
        let salt: [u8; SALT_BYTES] = rand::random();
        let mut bytes = salt.to_vec();
        bytes.extend(Algorithm::Sha256.digest(&salt, password));
        Self {
            algorithm: Algorithm::Sha256,
            bytes,
        }
    }

    /// A hash as definitions carry it: base64 text and the algorithm's name.
    pub fn from_base64(algorithm: &str, encoded: &str) -> Result<Self, String> {
        let algorithm = Algorithm::from_name(algorithm).ok_or_else(|| {
            format!(
                "unsupported hashing_algorithm '{algorithm}' (supported: {}, {})",
                Algorithm::Sha256.name(),
                Algorithm::Sha512.name()
            )
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| format!("password_hash is not base64: {e}"))?;
        if !bytes.is_empty() && bytes.len() != SALT_BYTES + algorithm.digest_bytes() {
            return Err(format!(
                "password_hash has {} bytes; {} takes {}",
                bytes.len(),
                algorithm.name(),
                SALT_BYTES + algorithm.digest_bytes()
            ));
        }
        Ok(Self { algorithm, bytes })
    }

    /// The hash as definitions carry it (base64).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }

    /// The algorithm, by RabbitMQ's name.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether `password` is the one hashed.
    pub fn verify(&self, password: &str) -> bool {
        if self.bytes.len() < SALT_BYTES {
            return false;
        }
        let (salt, expected) = self.bytes.split_at(SALT_BYTES);
        let actual = self.algorithm.digest(salt, password);
        // Compared in full whatever the first difference, so timing tells nothing.
        actual.len() == expected.len()
            && actual
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash taken from `rabbitmqctl export_definitions` on RabbitMQ 3.10.8 (user guest).
    const RABBITMQ_GUEST: &str = "MP8P3KWPS1jzFFh7FA6imL+7V9AvKLpVKuw/bcBgMRTD8/o7";

    #[test]
    fn verifies_a_hash_rabbitmq_made() {
        let hash = PasswordHash::from_base64("rabbit_password_hashing_sha256", RABBITMQ_GUEST)
            .expect("valid hash");
        assert!(hash.verify("guest"));
        assert!(!hash.verify("guest "));
        assert!(!hash.verify(""));
    }

    #[test]
    fn new_hashes_round_trip_through_base64_with_a_fresh_salt() {
        let a = PasswordHash::new("s3cret");
        let b = PasswordHash::new("s3cret");
        assert_ne!(a.to_base64(), b.to_base64(), "salts differ");
        let decoded = PasswordHash::from_base64(a.algorithm().name(), &a.to_base64()).unwrap();
        assert!(decoded.verify("s3cret"));
        assert!(!decoded.verify("S3cret"));
    }

    #[test]
    fn an_empty_hash_matches_no_password() {
        let hash = PasswordHash::from_base64("rabbit_password_hashing_sha256", "").unwrap();
        assert!(!hash.verify(""));
    }

    #[test]
    fn bad_hashes_are_refused_with_a_reason() {
        let md5 = PasswordHash::from_base64("rabbit_password_hashing_md5", "AAAA").unwrap_err();
        assert!(md5.contains("unsupported hashing_algorithm"), "{md5}");
        let short =
            PasswordHash::from_base64("rabbit_password_hashing_sha256", "AAAA").unwrap_err();
        assert!(short.contains("takes 36"), "{short}");
        let garbage =
            PasswordHash::from_base64("rabbit_password_hashing_sha256", "!!").unwrap_err();
        assert!(garbage.contains("not base64"), "{garbage}");
    }
}
