//! WireGuard keys of the tunnels between hosts: made here (x25519), the
//! private half sealed at rest like SSH keys (`ssh::keys::SecretKey`),
//! bound to its host and generation, and opened only to be sent to that
//! host on net-apply's stdin. Never logged: the types here print no secret.

use rand::rngs::OsRng;
use skein_models::network;
use sqlx::PgConnection;
use uuid::Uuid;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::ssh::client::base64_encode;
use crate::ssh::keys::SecretKey;

/// A WireGuard key pair in wg's base64 form.
pub struct WgKeyPair {
    /// Never log it.
    pub private: String,
    pub public: String,
}

impl std::fmt::Debug for WgKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgKeyPair {{ public: {:?}, private: <redacted> }}", self.public)
    }
}

pub fn generate() -> WgKeyPair {
    let secret = StaticSecret::random_from_rng(OsRng);
    let public = PublicKey::from(&secret);
    WgKeyPair { private: base64_encode(secret.as_bytes()), public: base64_encode(public.as_bytes()) }
}

/// What a sealed key is bound to: its host and gen, so a sealed key copied
/// to another row does not open.
fn binding(host: Uuid, gen: i32) -> Vec<u8> {
    [host.as_bytes().as_slice(), &gen.to_be_bytes()].concat()
}

pub fn seal(secret: &SecretKey, host: Uuid, gen: i32, private: &str) -> Vec<u8> {
    secret.seal(&binding(host, gen), private.as_bytes())
}

pub fn open(secret: &SecretKey, key: &network::TunnelKey) -> anyhow::Result<String> {
    let plain = secret.open(&binding(key.host_id, key.gen), &key.private_key)?;
    Ok(String::from_utf8(plain)?)
}

/// Make and store the host's next key in `state` ('sending' for its first,
/// 'new' for a rekey). Returns the gen.
pub async fn make(conn: &mut PgConnection, secret: &SecretKey, host: Uuid, state: &str) -> anyhow::Result<i32> {
    let gen = network::next_gen(conn, host).await?;
    let pair = generate();
    let sealed = seal(secret, host, gen, &pair.private);
    network::insert_key(conn, host, gen, &sealed, &pair.public, state).await?;
    Ok(gen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_wireguard_base64_and_not_printed() {
        let k = generate();
        assert_eq!((k.private.len(), k.public.len()), (44, 44));
        assert!(k.public.ends_with('='));
        assert_ne!(k.private, k.public);
        assert!(!format!("{k:?}").contains(&k.private));
    }

    #[test]
    fn a_sealed_key_opens_only_for_its_host_and_gen() {
        let secret = SecretKey::random();
        let host = Uuid::new_v4();
        let k = generate();
        let row = |host, gen, sealed: &Vec<u8>| network::TunnelKey {
            host_id: host,
            gen,
            private_key: sealed.clone(),
            public_key: k.public.clone(),
            state: "sending".into(),
            created_at: chrono::Utc::now(),
        };
        let sealed = seal(&secret, host, 1, &k.private);
        assert_eq!(open(&secret, &row(host, 1, &sealed)).unwrap(), k.private);
        assert!(open(&secret, &row(host, 2, &sealed)).is_err(), "bound to its gen");
        assert!(open(&secret, &row(Uuid::new_v4(), 1, &sealed)).is_err(), "bound to its host");
        assert!(!sealed.windows(10).any(|w| w == &k.private.as_bytes()[..10]), "not stored in the clear");
    }
}
