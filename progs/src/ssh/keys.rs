//! SSH keys: generated here, stored encrypted, decrypted only to connect.
//!
//! Private keys are sealed with XChaCha20-Poly1305 under a 32-byte key taken
//! from the environment (`SKEIN_SECRET_KEY`, 64 hex digits), bound to the
//! row they belong to, so a sealed key copied to another row does not open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

pub const SECRET_KEY_ENV: &str = "SKEIN_SECRET_KEY";

/// A freshly generated ed25519 keypair in OpenSSH formats.
pub struct KeyPair {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----...`: never log it.
    pub private: String,
    /// `ssh-ed25519 AAAA... skein`
    pub public: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair {{ public: {:?}, private: <redacted> }}", self.public)
    }
}

pub fn generate() -> anyhow::Result<KeyPair> {
    let mut key = ssh_key::PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519)?;
    key.set_comment("skein");
    let private = key.to_openssh(ssh_key::LineEnding::LF)?.to_string();
    let public = key.public_key().to_openssh()?;
    Ok(KeyPair { private, public })
}

/// The key that seals private keys at rest.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    pub fn from_env() -> anyhow::Result<SecretKey> {
        let hex = std::env::var(SECRET_KEY_ENV).map_err(|_| {
            anyhow::anyhow!("{SECRET_KEY_ENV} is not set: it must hold 64 hex digits (e.g. from `openssl rand -hex 32`); it seals SSH private keys at rest")
        })?;
        SecretKey::from_hex(&hex)
    }

    pub fn from_hex(hex: &str) -> anyhow::Result<SecretKey> {
        let bytes = hex::decode(hex.trim()).map_err(|_| anyhow::anyhow!("{SECRET_KEY_ENV} must be 64 hex digits"))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| anyhow::anyhow!("{SECRET_KEY_ENV} must be 64 hex digits (32 bytes)"))?;
        Ok(SecretKey(key))
    }

    pub fn random() -> SecretKey {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        SecretKey(key)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// nonce (24 bytes) || ciphertext, bound to `row` as associated data.
    pub fn seal(&self, row: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = XChaCha20Poly1305::new((&self.0).into())
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: row })
            .expect("encryption of an in-memory buffer cannot fail");
        [nonce.as_slice(), &sealed].concat()
    }

    pub fn open(&self, row: &[u8], sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(sealed.len() > 24, "sealed key is too short");
        let (nonce, body) = sealed.split_at(24);
        XChaCha20Poly1305::new((&self.0).into())
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: row })
            .map_err(|_| anyhow::anyhow!("cannot decrypt the stored private key: wrong {SECRET_KEY_ENV}, or the row was tampered with"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_openssh_ed25519() {
        let k = generate().unwrap();
        assert!(k.private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(k.public.starts_with("ssh-ed25519 "));
        assert!(!format!("{k:?}").contains("PRIVATE"));
    }

    #[test]
    fn sealed_keys_open_only_with_the_same_key_and_row() {
        let key = SecretKey::random();
        let sealed = key.seal(b"row-1", b"private");
        assert_eq!(key.open(b"row-1", &sealed).unwrap(), b"private");
        assert!(key.open(b"row-2", &sealed).is_err(), "bound to its row");
        assert!(SecretKey::random().open(b"row-1", &sealed).is_err(), "needs the same key");
        assert!(!sealed.windows(7).any(|w| w == b"private"), "not stored in the clear");
    }
}
