//! Encryption of everything a remote holds: XChaCha20-Poly1305 (RustCrypto's
//! `chacha20poly1305`), one random 24-byte nonce per sealed message, so nonces never repeat in
//! practice whatever the number of messages. The key is 32 bytes: a key file's, or derived from
//! a passphrase by argon2id with a salt kept in the remote's configuration object.
//!
//! # Sealed form
//! `nonce (24 bytes) || ciphertext || tag (16 bytes)`. The associated data names what the
//! message is ([`Purpose`]), so an index cannot be passed off as a snapshot record, nor a pack
//! entry as either.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};

use super::RemoteError;

/// Bytes of a key.
pub const KEY_LEN: usize = 32;
/// Bytes a sealed message adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + 16;
const NONCE_LEN: usize = 24;

/// What a sealed message is (its associated data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The known plaintext in the configuration object that tells a wrong key.
    Check,
    /// One object inside a pack.
    Object,
    /// A pack's index.
    Index,
    /// A snapshot record.
    Snapshot,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Purpose::Check => b"chkpt-remote/1/check",
            Purpose::Object => b"chkpt-remote/1/object",
            Purpose::Index => b"chkpt-remote/1/index",
            Purpose::Snapshot => b"chkpt-remote/1/snapshot",
        }
    }
}

/// A remote's key.
#[derive(Clone)]
pub struct Key {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Argon2id's costs, kept with the salt so a later version can raise them for new remotes
/// and still open old ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for KdfParams {
    /// OWASP's first argon2id recommendation (19 MiB, 2 passes, 1 lane): about 50 ms here.
    fn default() -> Self {
        KdfParams {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
        }
    }
}

impl Key {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Key {
        Key {
            cipher: XChaCha20Poly1305::new(&(*bytes).into()),
        }
    }

    /// The key derived from `passphrase` with `salt`.
    pub fn derive(
        passphrase: &str,
        salt: &[u8],
        params: KdfParams,
    ) -> Result<[u8; KEY_LEN], RemoteError> {
        let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(KEY_LEN))
            .map_err(|e| RemoteError::Config(format!("argon2 parameters: {e}")))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
        let mut out = [0u8; KEY_LEN];
        argon
            .hash_password_into(passphrase.as_bytes(), salt, &mut out)
            .map_err(|e| RemoteError::Config(format!("argon2: {e}")))?;
        Ok(out)
    }

    /// Seals `plain` for `purpose`.
    pub fn seal(&self, purpose: Purpose, plain: &[u8]) -> Result<Vec<u8>, RemoteError> {
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes()?;
        let nonce = XNonce::from(nonce_bytes);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: purpose.aad(),
                },
            )
            .map_err(|_| RemoteError::Config("encryption failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`Key::seal`] sealed for `purpose`; none when the key is not the one it was
    /// sealed with, or the bytes were changed.
    pub fn open(&self, purpose: Purpose, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: body,
                    aad: purpose.aad(),
                },
            )
            .ok()
    }
}

/// `N` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RemoteError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| RemoteError::Config(format!("no randomness: {e}")))?;
    Ok(out)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lowercase or uppercase hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// Reads a key file: 64 hex digits (a trailing newline is fine). A key file that others may
/// read is refused, as ssh refuses such a private key.
pub fn read_key_file(path: &Path) -> Result<[u8; KEY_LEN], RemoteError> {
    let shown = path.display();
    let meta =
        fs::metadata(path).map_err(|e| RemoteError::Config(format!("key file {shown}: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(RemoteError::Config(format!(
            "key file {shown} may be read by others (mode {mode:04o}): `chmod 600 {shown}`"
        )));
    }
    let text = fs::read_to_string(path)
        .map_err(|e| RemoteError::Config(format!("key file {shown}: {e}")))?;
    unhex(&text)
        .and_then(|b| <[u8; KEY_LEN]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| {
            RemoteError::Config(format!(
                "key file {shown} is not a key: it must hold 64 hex digits (32 bytes)"
            ))
        })
}

/// Writes `key` to a new file at `path`, mode 0600, durably; refuses to replace one.
pub fn write_key_file(path: &Path, key: &[u8; KEY_LEN]) -> Result<(), RemoteError> {
    let shown = path.display();
    let err = |e: std::io::Error| RemoteError::Config(format!("write key file {shown}: {e}"));
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(format!("{}\n", hex(key)).as_bytes())
        .map_err(err)?;
    f.sync_all().map_err(err)?;
    super::config::sync_parent(path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_messages_open_only_with_their_key_and_purpose() {
        let key = Key::from_bytes(&[7; KEY_LEN]);
        let other = Key::from_bytes(&[8; KEY_LEN]);
        let sealed = key.seal(Purpose::Index, b"the index").unwrap();
        assert_eq!(sealed.len(), b"the index".len() + OVERHEAD);
        assert_eq!(key.open(Purpose::Index, &sealed).unwrap(), b"the index");
        assert!(other.open(Purpose::Index, &sealed).is_none());
        assert!(key.open(Purpose::Snapshot, &sealed).is_none());
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(key.open(Purpose::Index, &flipped).is_none());
        assert_ne!(
            key.seal(Purpose::Index, b"the index").unwrap(),
            sealed,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn a_passphrase_derives_the_same_key_only_with_the_same_salt() {
        let p = KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        };
        let a = Key::derive("correct horse", b"saltsaltsaltsalt", p).unwrap();
        assert_eq!(
            a,
            Key::derive("correct horse", b"saltsaltsaltsalt", p).unwrap()
        );
        assert_ne!(
            a,
            Key::derive("correct horse", b"othersaltothersa", p).unwrap()
        );
        assert_ne!(
            a,
            Key::derive("wrong horse", b"saltsaltsaltsalt", p).unwrap()
        );
    }

    #[test]
    fn key_files_round_trip_and_loose_modes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_key_file(&path, &[9; KEY_LEN]).unwrap();
        assert_eq!(read_key_file(&path).unwrap(), [9; KEY_LEN]);
        assert!(
            write_key_file(&path, &[1; KEY_LEN]).is_err(),
            "never replaced"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_key_file(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
