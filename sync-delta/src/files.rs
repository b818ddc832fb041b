//! Whole-file helpers over any [`Storage`]: hashing a file, reading and
//! writing a state file.

use crate::error::StoreError;
use crate::store::{Hashed, Storage};

/// Hashes one file through `read_at`.
///
/// # Errors
/// A [`StoreError`].
pub fn hash_one<S: Storage + ?Sized>(
    s: &mut S,
    path: &str,
    buf: &mut [u8],
) -> Result<Hashed, StoreError> {
    let before = s.stat(path)?;
    let mut h = blake3::Hasher::new();
    let mut off = 0u64;
    loop {
        let n = s.read_at(path, off, buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    let after = s.stat(path)?;
    Ok(Hashed {
        hash: *h.finalize().as_bytes(),
        len: off,
        before,
        after,
    })
}

/// Reads a whole (state) file of at most `max` bytes.
///
/// # Errors
/// A [`StoreError`]; [`StoreError::Corrupt`] when larger than `max`.
pub fn read_all<S: Storage + ?Sized>(
    s: &mut S,
    path: &str,
    max: u64,
) -> Result<Vec<u8>, StoreError> {
    let st = s.stat(path)?;
    if st.size > max {
        return Err(StoreError::Corrupt);
    }
    let mut out = vec![0u8; st.size as usize];
    let mut off = 0usize;
    while off < out.len() {
        let n = s.read_at(path, off as u64, &mut out[off..])?;
        if n == 0 {
            out.truncate(off);
            break;
        }
        off += n;
    }
    Ok(out)
}

/// Writes a whole file durably and atomically: `path.tmp`, fsync, rename,
/// fsync of the directory.
///
/// # Errors
/// A [`StoreError`].
pub fn write_atomic<S: Storage + ?Sized>(
    s: &mut S,
    dir: &str,
    name: &str,
    data: &[u8],
) -> Result<(), StoreError> {
    let tmp = format!("{dir}/{name}.tmp");
    let path = format!("{dir}/{name}");
    s.create(&tmp)?;
    s.write_at(&tmp, 0, data)?;
    s.sync_file(&tmp)?;
    s.rename(&tmp, &path)?;
    s.sync_dir(dir)
}
