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
        // Before the average size a cut is rare (the stricter mask): the
        // largest blocks that fit, so the lanes' 64-byte take-ups are few.
        let h = match find(data, 0, self.min, normal, self.mask_s, MAX_BLOCK) {
            Ok(at) => return at + 1,
            Err(h) => h,
        };
        if normal >= max {
            return max;
        }
        // After it a cut comes every few KiB: blocks of 1/16 of the
        // average, so a cut in a later lane leaves little for the earlier
        // lanes to finish.
        let block = (self.avg / 16).clamp(MIN_BLOCK, MAX_BLOCK);
        match find(data, h, normal, max, self.mask_l, block) {
            Ok(at) => at + 1,
            Err(_) => max,
        }
    }

    /// [`ChunkParams::cut`] one byte at a time in one chain: the
    /// definition the four-lane path must match exactly (kept for the
    /// tests, and for the bench to compare against).
    #[must_use]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // the benches and tests use it
    pub fn cut_reference(&self, data: &[u8]) -> usize {
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

/// One Gear step.
#[inline(always)]
fn step(h: u64, b: u8) -> u64 {
    (h << 1).wrapping_add(GEAR[b as usize])
}

/// Smallest block a lane of [`find`] takes: at least the 64 bytes of a
/// lane's take-up, and a power of two.
const MIN_BLOCK: usize = 256;
/// Bytes of each lane a round's loop steps per iteration (unrolled: the
/// index and the loop test once per eight steps of the four lanes).
const U: usize = 8;
/// Largest block a lane of [`find`] takes (a power of two).
const MAX_BLOCK: usize = 4096;

/// The first position `p` in `from..to` where the Gear hash (`h`: its
/// state through byte `from - 1`) has `h & mask == 0`, or the state
/// through byte `to - 1`.
///
/// The same answer as one loop from `from`, faster: a one-byte step is a
/// shift and an add that each depend on the last, so one hash runs at the
/// latency of that chain. Here four hashes take four consecutive blocks
/// of `B` bytes, each taken up from the 64 bytes before its block: each
/// step shifts left by one, so a byte 64 or more steps back has left the
/// 64-bit word, and the hash is a function of the last 64 bytes alone
/// (from `min` on, and a block starts at least 64 bytes after `min`).
/// Four independent chains that the processor runs side by side. A hit
/// in a later block is final only once the earlier blocks are finished
/// without one (at most `B` more steps each).
///
/// Each round takes the largest power-of-two block, from `MIN_BLOCK` up to
/// `block` (a power of two in that range), that four times fits what is
/// left; the rest (less than four smallest blocks) goes one byte at a
/// time. `B` is a constant in each round, so the four lanes are read at
/// fixed distances from one index and the loop keeps its state in
/// registers.
fn find(data: &[u8], mut h: u64, from: usize, to: usize, mask: u64, block: usize) -> Result<usize, u64> {
    let mut s = from;
    loop {
        let fits = |b: usize| block >= b && to - s >= 4 * b;
        let taken = if fits(4096) {
            round::<4096>(data, h, s, mask)
        } else if fits(2048) {
            round::<2048>(data, h, s, mask)
        } else if fits(1024) {
            round::<1024>(data, h, s, mask)
        } else if fits(512) {
            round::<512>(data, h, s, mask)
        } else if fits(MIN_BLOCK) {
            round::<MIN_BLOCK>(data, h, s, mask)
        } else {
            return find_one(data, h, s, to, mask);
        };
        match taken {
            Ok(at) => return Ok(at),
            Err((next, len)) => {
                h = next;
                s += len;
            }
        }
    }
}

/// One round of [`find`]: four lanes over the `4 * B` bytes from `s`,
/// lane 0 going on from `h`. The first hit, or the state through the last
/// byte and the bytes taken.
#[inline]
fn round<const B: usize>(data: &[u8], h: u64, s: usize, mask: u64) -> Result<usize, (u64, usize)> {
    const { assert!(B >= 64 && B.is_multiple_of(U)) };
    // The 64 bytes before `s` are not read: lane 0 goes on from `h`.
    let w = &data[s..s + 4 * B];
    let (mut h1, mut h2, mut h3) = (0u64, 0u64, 0u64);
    for j in B - 64..B {
        h1 = step(h1, w[j]);
        h2 = step(h2, w[j + B]);
        h3 = step(h3, w[j + 2 * B]);
    }
    let mut h0 = h;
    // A hit in lane `k` at byte `j` of its block, with the four states
    // through that byte: earlier lanes may still hit later in their own
    // block, which comes first.
    let settle = |k: usize, j: usize, hs: [u64; 4]| -> usize {
        for (e, &he) in hs.iter().enumerate().take(k) {
            let lane = s + e * B;
            if let Ok(at) = find_one(data, he, lane + j + 1, lane + B, mask) {
                return at;
            }
        }
        s + k * B + j
    };
    for i in 0..B / U {
        for u in 0..U {
            let j = U * i + u;
            h0 = step(h0, w[j]);
            h1 = step(h1, w[j + B]);
            h2 = step(h2, w[j + 2 * B]);
            h3 = step(h3, w[j + 3 * B]);
            // The first lane with a hit here (a chain of branches: one
            // test and jump per lane on the hot path).
            let k = if h0 & mask == 0 {
                0
            } else if h1 & mask == 0 {
                1
            } else if h2 & mask == 0 {
                2
            } else if h3 & mask == 0 {
                3
            } else {
                continue;
            };
            return Ok(settle(k, j, [h0, h1, h2, h3]));
        }
    }
    Err((h3, 4 * B))
}

/// One hash from state `h` (the hash through byte `from - 1`) over
/// `from..to`: the first hit, or the state through byte `to - 1`.
#[inline]
fn find_one(data: &[u8], mut h: u64, from: usize, to: usize, mask: u64) -> Result<usize, u64> {
    for (i, &b) in data[from..to].iter().enumerate() {
        h = step(h, b);
        if h & mask == 0 {
            return Ok(from + i);
        }
    }
    Err(h)
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
    // Every seed used here is odd: the same streams as before it was
    // shared.
    use crate::delta::tests::noise;

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

    /// The four-lane cut is the one-byte definition, on noise, on data
    /// that cuts often (low entropy) and on data that never cuts early,
    /// for every parameter set and many buffer lengths.
    #[test]
    fn fast_cut_equals_the_reference() {
        let mut inputs = vec![noise(3 << 20, 1), vec![0u8; 2 << 20], vec![0xa5u8; 1 << 20]];
        let mut text = Vec::new();
        let mut x = 9u64;
        while text.len() < 1 << 20 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            text.push(b'a' + ((x >> 33) % 4) as u8);
        }
        inputs.push(text);
        let mut avg = MIN_AVG;
        while avg <= MAX_AVG {
            let p = ChunkParams::new(avg);
            for data in &inputs {
                let mut pos = 0;
                let mut cuts = 0;
                while pos < data.len() {
                    let rest = &data[pos..];
                    let got = p.cut(rest);
                    assert_eq!(got, p.cut_reference(rest), "avg {avg} at {pos}");
                    // Shorter buffers too: the end of the data inside a lane.
                    for short in [p.min + 1, p.avg - 1, p.avg + 300, p.max - 5, 1500] {
                        let s = &rest[..short.min(rest.len())];
                        assert_eq!(p.cut(s), p.cut_reference(s), "avg {avg} len {short}");
                    }
                    pos += got;
                    cuts += 1;
                    if cuts > 8 {
                        break;
                    }
                }
            }
            avg *= 2;
        }
    }

    /// Data that mixes noise with runs of a few symbols (cuts early, late
    /// and at the maximum), for the property test below.
    fn mixed(parts: &[(u8, u16, u64)]) -> Vec<u8> {
        let mut v = Vec::new();
        for &(kind, kib, seed) in parts {
            let n = (usize::from(kib) + 1) * 1024 + (seed % 1000) as usize;
            match kind % 3 {
                0 => v.extend(noise(n, seed | 1)),
                1 => v.extend(noise(n, seed | 1).iter().map(|b| b & 3)),
                _ => v.extend(std::iter::repeat_n(seed as u8, n)),
            }
        }
        v
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Every cut of random mixed data, for every parameter set, is the
        /// one-byte definition's; and so are cuts of buffers that end at
        /// a random point (the end of the data inside a lane).
        #[test]
        fn fast_cut_equals_the_reference_on_random_data(
            parts in proptest::collection::vec((0u8..3, 0u16..96, proptest::prelude::any::<u64>()), 1..8),
            shift in 0usize..6,
            ends in proptest::collection::vec(proptest::prelude::any::<usize>(), 4),
        ) {
            let data = mixed(&parts);
            let p = ChunkParams::new(MIN_AVG << shift);
            let mut pos = 0;
            while pos < data.len() {
                let rest = &data[pos..];
                let got = p.cut(rest);
                proptest::prop_assert_eq!(got, p.cut_reference(rest), "at {}", pos);
                for &e in &ends {
                    let s = &rest[..e % (rest.len().min(p.max_len() + 1) + 1)];
                    proptest::prop_assert_eq!(p.cut(s), p.cut_reference(s), "at {} len {}", pos, s.len());
                }
                pos += got;
            }
        }
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
