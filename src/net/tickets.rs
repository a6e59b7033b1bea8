//! `SharedTickets`: TLS session tickets every worker can open, so a client resumes its
//! session whichever worker accepts its next connection. rustls's own ticketer draws a
//! fresh random key per process (and per rotation), which a forked worker cannot share
//! with its siblings. Here the master draws one secret before it forks; the key for
//! each `EPOCH_SECS` period is derived from it (HKDF-SHA256 of the period's number),
//! so all workers — of every generation — seal and open with the same keys and rotate
//! at the same instant without talking to each other. A ticket is accepted during
//! its own period and the next, then no key that opens it is ever derived again.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{Prk, Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};

/// How long one ticket key seals new tickets.
const EPOCH_SECS: u64 = 6 * 60 * 60;
/// The period's number in front of the nonce: which key opens the ticket.
const EPOCH_BYTES: usize = 8;

pub struct SharedTickets {
    secret: Prk,
}

impl std::fmt::Debug for SharedTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedTickets")
    }
}

impl SharedTickets {
    /// The process's ticketer: made on first use (in the master, before any fork) and
    /// the same for every later configuration, so a reload keeps sessions resumable.
    pub fn get() -> Result<Arc<SharedTickets>, String> {
        static TICKETS: OnceLock<Arc<SharedTickets>> = OnceLock::new();
        if let Some(t) = TICKETS.get() {
            return Ok(Arc::clone(t));
        }
        let mut secret = [0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| "no randomness for the session ticket key".to_owned())?;
        let made = Arc::new(SharedTickets {
            secret: Salt::new(HKDF_SHA256, b"rgun session tickets").extract(&secret),
        });
        Ok(Arc::clone(TICKETS.get_or_init(|| made)))
    }

    fn key(&self, epoch: u64) -> Option<LessSafeKey> {
        let number = epoch.to_be_bytes();
        let info = [&number[..]];
        let okm = self.secret.expand(&info, &AES_256_GCM).ok()?;
        Some(LessSafeKey::new(UnboundKey::from(okm)))
    }
}

fn epoch_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / EPOCH_SECS)
        .unwrap_or(0)
}

impl rustls::server::ProducesTickets for SharedTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        EPOCH_SECS as u32
    }

    /// `epoch || nonce || AES-256-GCM(plain)`, the first two authenticated.
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let epoch = epoch_now();
        let key = self.key(epoch)?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(EPOCH_BYTES + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (header, body) = out.split_at_mut(EPOCH_BYTES + NONCE_LEN);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&*header),
                body,
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < EPOCH_BYTES + NONCE_LEN + 16 {
            return None;
        }
        let (header, sealed) = cipher.split_at(EPOCH_BYTES + NONCE_LEN);
        let epoch = u64::from_be_bytes(header[..EPOCH_BYTES].try_into().ok()?);
        let now = epoch_now();
        if epoch != now && epoch + 1 != now {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&header[EPOCH_BYTES..]).ok()?;
        let mut body = sealed.to_vec();
        let plain = self
            .key(epoch)?
            .open_in_place(nonce, Aad::from(header), &mut body)
            .ok()?;
        let len = plain.len();
        body.truncate(len);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    #[test]
    fn tickets_open_only_unaltered_and_in_their_period() {
        let t = SharedTickets::get().unwrap();
        let sealed = t.encrypt(b"session state").unwrap();
        assert_eq!(t.decrypt(&sealed).as_deref(), Some(&b"session state"[..]));
        // Another handle (another worker's inherited copy) opens it too.
        assert!(SharedTickets::get().unwrap().decrypt(&sealed).is_some());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(t.decrypt(&flipped), None);
        let mut old = sealed.clone();
        old[..EPOCH_BYTES].copy_from_slice(&(epoch_now() - 2).to_be_bytes());
        assert_eq!(t.decrypt(&old), None);
        assert_eq!(t.decrypt(b"short"), None);
    }
}
