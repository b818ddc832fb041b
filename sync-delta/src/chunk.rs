//! Content-defined chunking: a Gear rolling hash with FastCDC's normalized
//! chunking (a stricter mask before the average size, a looser one after)
//! and its skip of the minimum size. Boundaries depend only on nearby
//! content, so an insert moves at most the chunks around it; the cost is a
//! shift, an add and a mask per byte, so throughput holds on unrelated data.

/// Gear table: 256 fixed pseudo-random words (splitmix64 from a constant
/// seed). Part of the protocol: both sides must cut at the same places.
const GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut x: u64 = 0x5eed_5eed_0000_0001;
    let mut i = 0;
    while i < 256 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
};

/// Smallest average chunk size used.
pub const MIN_AVG: u32 = 4 * 1024;
/// Largest average chunk size used.
pub const MAX_AVG: u32 = 256 * 1024;

/// Chunk size parameters, derived from a power-of-two average size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl ChunkParams {
    /// Parameters for an average of `avg` bytes, rounded to a power of two
    /// within [`MIN_AVG`]..=[`MAX_AVG`]; minimum `avg/4`, maximum `4·avg`.
    #[must_use]
    pub fn new(avg: u32) -> Self {
        let avg = avg.clamp(MIN_AVG, MAX_AVG).next_power_of_two().min(MAX_AVG);
        let bits = avg.trailing_zeros();
        // High bits: with `h << 1` each byte reaches the top bits last, so
        // they depend on the longest window (up to 64 bytes).
        let mask = |n: u32| (!0u64) << (64 - n);
        Self {
            min: avg as usize / 4,
            avg: avg as usize,
            max: avg as usize * 4,
            mask_s: mask(bits + 2),
            mask_l: mask(bits - 2),
        }
    }

    /// The parameters for a file of `size` bytes: an average near
    /// `sqrt(2 * size)` (rounded down to a power of two), which balances the
    /// signature's size (8 bytes a chunk) against the literal bytes an edit
    /// costs (a few chunks), as rsync's square-root block size does.
    #[must_use]
    pub fn for_size(size: u64) -> Self {
        let root = size.saturating_mul(2).isqrt();
        let avg = if root == 0 { 0 } else { 1u64 << root.ilog2() };
        Self::new(u32::try_from(avg).unwrap_or(MAX_AVG))
    }

    /// The average size.
    #[must_use]
    pub fn avg(&self) -> u32 {
        self.avg as u32
    }

    /// The largest chunk.
    #[must_use]
    pub fn max_len(&self) -> usize {
        self.max
    }

    /// Length of the first chunk of `data`. When `data` is shorter than
    /// the maximum chunk and no boundary is found, returns `data.len()`:
    /// the caller decides whether that is the end of the file.
    #[must_use]
    pub fn cut(&self, data: &[u8]) -> usize {
        let n = data.len();
        if n <= self.min {
            return n;
        }
        let normal = n.min(self.avg);
        let max = n.min(self.max);
        let mut h: u64 = 0;
        for (i, &b) in data[self.min..normal].iter().enumerate() {
            h = (h << 1).wrapping_add(GEAR[b as usize]);
            if h & self.mask_s == 0 {
                return self.min + i + 1;
            }
        }
        if normal >= max {
            return max;
        }
        for (i, &b) in data[normal..max].iter().enumerate() {
            h = (h << 1).wrapping_add(GEAR[b as usize]);
            if h & self.mask_l == 0 {
                return normal + i + 1;
            }
        }
        max
    }

    /// Whether a cut of `len` bytes at the end of a buffer is a real
    /// boundary (found by content or at the maximum) rather than the end of
    /// the buffer.
    #[must_use]
    pub fn is_final(&self, len: usize, buffered: usize) -> bool {
        len < buffered || len == self.max
    }
}

/// Iterates over `(offset, len)` of the chunks of a whole buffer.
#[must_use]
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // the benches and tests use it
pub fn chunks(data: &[u8], params: ChunkParams) -> Chunks<'_> {
    Chunks {
        data,
        pos: 0,
        params,
    }
}

/// Iterator returned by [`chunks`].
#[derive(Debug)]
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // the benches and tests use it
pub struct Chunks<'a> {
    data: &'a [u8],
    pos: usize,
    params: ChunkParams,
}

impl Iterator for Chunks<'_> {
    type Item = (usize, usize);
    fn next(&mut self) -> Option<(usize, usize)> {
        if self.pos >= self.data.len() {
            return None;
        }
        let len = self.params.cut(&self.data[self.pos..]);
        let at = self.pos;
        self.pos += len;
        Some((at, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn sizes_and_resync() {
        let p = ChunkParams::new(8192);
        let data = noise(1 << 20, 7);
        let cs: Vec<_> = chunks(&data, p).collect();
        assert_eq!(cs.iter().map(|c| c.1).sum::<usize>(), data.len());
        for (i, &(_, len)) in cs.iter().enumerate() {
            assert!(len <= p.max_len());
            if i + 1 < cs.len() {
                assert!(len > 2048);
            }
        }
        let avg = data.len() / cs.len();
        assert!((4096..16384).contains(&avg), "avg {avg}");
        // An insert near the front moves only nearby boundaries.
        let mut edited = data.clone();
        edited.splice(100..100, [1u8, 2, 3]);
        let ends_a: std::collections::HashSet<_> = cs.iter().map(|c| c.0 + c.1).collect();
        let same = chunks(&edited, p)
            .filter(|c| ends_a.contains(&(c.0 + c.1 - 3)))
            .count();
        assert!(same + 3 >= cs.len(), "{same} of {}", cs.len());
    }

    #[test]
    fn params_for_size() {
        assert_eq!(ChunkParams::for_size(0).avg(), MIN_AVG);
        assert_eq!(ChunkParams::for_size(64 << 20).avg(), 8192);
        assert_eq!(ChunkParams::for_size(512 << 20).avg(), 32768);
        assert_eq!(ChunkParams::for_size(8 << 30).avg(), 131_072);
        assert_eq!(ChunkParams::for_size(1 << 40).avg(), MAX_AVG);
    }
}
