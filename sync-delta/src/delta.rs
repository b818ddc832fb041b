//! Signatures and deltas over content-defined chunks.
//!
//! The replica describes its old copy as a signature ([`SigChunk`]s): the chunk
//! lengths and 40-bit hashes ([`chunk_hash`]: XXH3). The source cuts its
//! new file with the same [`ChunkParams`], hashes each chunk once, and
//! emits [`Op::Copy`] for chunks the replica has and [`Op::Literal`] for
//! the rest. A wrong match (a collision of length and hash, by chance or
//! crafted) cannot go unnoticed: the replica verifies the whole file
//! against its 256-bit BLAKE3 hash.

use crate::chunk::{ChunkParams, chunks};
use crate::error::ApplyError;
use std::collections::HashMap;

/// One chunk of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigChunk {
    /// Its length.
    pub len: u32,
    /// Its [`chunk_hash`].
    pub hash: u64,
}

/// Most chunks a signature may carry: a bound on what a peer can make us
/// allocate, and what fits in one frame. `ChunkParams::for_size` stays
/// within it up to 32 GiB; a replica offers no signature for larger files.
pub const MAX_SIG_CHUNKS: usize = 1 << 17;

/// Bytes of the chunk hash a signature keeps per chunk.
pub const CHUNK_HASH_LEN: usize = 5;

/// The chunk hash: the low [`CHUNK_HASH_LEN`] bytes (40 bits) of the
/// chunk's XXH3 (64-bit, seed 0). Short and fast on purpose: it only
/// proposes a match. A false match, by chance or by a crafted file, is
/// caught by the whole-file BLAKE3 check, and the replica then fetches
/// that file whole; it never makes a wrong file. Both peers must take the
/// same hash: one that takes another finds no matches in the other's
/// signatures, and changed files go whole.
#[must_use]
pub fn chunk_hash(data: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(data) & ((1u64 << (8 * CHUNK_HASH_LEN)) - 1)
}

/// Builds signatures incrementally from consecutive pieces of a file.
#[derive(Debug)]
pub struct SignatureBuilder {
    params: ChunkParams,
    carry: Vec<u8>,
    chunks: Vec<SigChunk>,
    threads: usize,
}

impl SignatureBuilder {
    /// For a file cut with `params`.
    #[must_use]
    pub fn new(params: ChunkParams) -> Self {
        Self {
            params,
            carry: Vec::new(),
            chunks: Vec::new(),
            threads: 1,
        }
    }

    /// Hashes the chunks on `threads - 1` more threads while this one
    /// cuts (see [`signature_threaded`]); 1, the default, does both here.
    /// The same signature.
    ///
    /// With more than one thread the builder gathers its pieces into a
    /// buffer of its own and cuts [`SIGN_SPAN`] bytes or more at a time,
    /// so that the threads start and meet once per span rather than once
    /// per piece (each start and meeting can wait for a core on a busy
    /// machine); the cost is a copy of the file through that buffer.
    #[must_use]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // the benches and tests use it
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// [`SignatureBuilder::update`] with more than one thread: into the
    /// buffer, cut once it holds `span` bytes.
    fn update_gathered(&mut self, data: &[u8], span: usize) {
        self.carry.extend_from_slice(data);
        if self.carry.len() >= span {
            let mut carry = std::mem::take(&mut self.carry);
            let used = self.cut_all(&carry, false);
            // What is left is shorter than a largest chunk.
            carry.drain(..used);
            self.carry = carry;
        }
    }

    /// Adds the next bytes of the file. Cuts are only tried once a whole
    /// largest chunk is buffered, so tiny pieces cost no rescans; on one
    /// thread only the bytes of a chunk that spans two pieces are copied,
    /// the rest is cut where it lies (on more, see
    /// [`SignatureBuilder::with_threads`]).
    pub fn update(&mut self, mut data: &[u8]) {
        if self.threads > 1 {
            self.update_gathered(data, SIGN_SPAN);
            return;
        }
        let max = self.params.max_len();
        while !data.is_empty() {
            if self.carry.is_empty() {
                // Whatever cut_all leaves is shorter than a largest chunk.
                let used = if data.len() >= max {
                    self.cut_all(data, false)
                } else {
                    0
                };
                self.carry.extend_from_slice(&data[used..]);
                return;
            }
            let old = self.carry.len();
            let take = max.saturating_sub(old).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            if self.carry.len() < max {
                return;
            }
            let mut carry = std::mem::take(&mut self.carry);
            let used = self.cut_all(&carry, false);
            if used >= old {
                // Past the bytes held over: go on in `data` itself.
                carry.clear();
                data = &data[used - old..];
            } else {
                carry.drain(..used);
                data = &data[take..];
            }
            self.carry = carry;
        }
    }

    fn cut_all(&mut self, data: &[u8], eof: bool) -> usize {
        sign(self.params, data, eof, self.threads, SIGN_BATCH, &mut self.chunks)
    }

    /// Ends the file and returns its chunks.
    #[must_use]
    pub fn finish(mut self) -> Vec<SigChunk> {
        let carry = std::mem::take(&mut self.carry);
        self.cut_all(&carry, true);
        self.chunks
    }
}

/// The signature of a whole buffer.
#[must_use]
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // the benches and tests use it
pub fn signature(data: &[u8], params: ChunkParams) -> Vec<SigChunk> {
    chunks(data, params)
        .map(|(at, len)| SigChunk {
            len: len as u32,
            hash: chunk_hash(&data[at..at + len]),
        })
        .collect()
}

/// [`signature`] on up to `threads` threads: this one cuts, and hands the
/// chunks in batches (about [`SIGN_BATCH`] bytes) to `threads - 1` more
/// that hash them, then helps with the batches left. The cut is one chain
/// (each boundary starts the search for the next), so the work splits in
/// two: cutting and hashing, each about half of a signature's time.
#[must_use]
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // the benches and tests use it
pub fn signature_threaded(data: &[u8], params: ChunkParams, threads: usize) -> Vec<SigChunk> {
    let mut out = Vec::new();
    sign(params, data, true, threads, SIGN_BATCH, &mut out);
    out
}

/// Bytes a threaded [`SignatureBuilder`] gathers before it cuts.
pub const SIGN_SPAN: usize = 8 << 20;

/// Bytes of chunks a batch of [`signature_threaded`] holds.
pub const SIGN_BATCH: usize = 64 * 1024;

/// Cuts `data` (from a boundary) and pushes each chunk's [`SigChunk`] to
/// `out`. Unless `eof`, stops before a trailing chunk that might continue
/// past `data`. Returns the bytes consumed. With more than one thread and
/// more than a `batch` of data, the hashes are found on the other threads
/// (see [`signature_threaded`]; the tests take small batches).
fn sign(
    params: ChunkParams,
    data: &[u8],
    eof: bool,
    threads: usize,
    batch_bytes: usize,
    out: &mut Vec<SigChunk>,
) -> usize {
    use std::collections::VecDeque;
    use std::sync::{Condvar, Mutex, PoisonError};

    // The chunk at `pos`, if it is one.
    let next = |pos: usize| {
        let rest = &data[pos..];
        let len = params.cut(rest);
        (eof || params.is_final(len, rest.len())).then_some(len)
    };
    if threads <= 1 || data.len() <= batch_bytes {
        let mut pos = 0;
        while pos < data.len() {
            let Some(len) = next(pos) else {
                break;
            };
            out.push(SigChunk {
                len: len as u32,
                hash: chunk_hash(&data[pos..pos + len]),
            });
            pos += len;
        }
        return pos;
    }
    // Batches: (first chunk's index, offset, lengths), queued until the
    // cutting is over (`closed`).
    type Batch = (usize, usize, Vec<u32>);
    #[derive(Default)]
    struct Queue {
        batches: VecDeque<Batch>,
        closed: bool,
    }
    let queue = Mutex::new(Queue::default());
    let ready = Condvar::new();
    let lock = || queue.lock().unwrap_or_else(PoisonError::into_inner);
    let first = out.len();
    let hash = |(index, mut at, lens): Batch, mine: &mut Vec<(usize, SigChunk)>| {
        for (i, len) in lens.into_iter().enumerate() {
            let hash = chunk_hash(&data[at..at + len as usize]);
            mine.push((index + i, SigChunk { len, hash }));
            at += len as usize;
        }
    };
    // A hashing thread: the next batch until the queue is closed and
    // empty (the lock is let go while it waits).
    let work = || {
        let mut mine = Vec::new();
        loop {
            let mut q = lock();
            while q.batches.is_empty() && !q.closed {
                q = ready.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            let Some(batch) = q.batches.pop_front() else {
                break;
            };
            drop(q);
            hash(batch, &mut mine);
        }
        mine
    };
    std::thread::scope(|s| {
        let others: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut mine = Vec::new();
        let mut pos = 0;
        let mut count = 0;
        let mut batch = (0, 0, Vec::new());
        while pos < data.len() {
            let Some(len) = next(pos) else {
                break;
            };
            batch.2.push(len as u32);
            pos += len;
            count += 1;
            if pos - batch.1 >= batch_bytes {
                let full = std::mem::replace(&mut batch, (count, pos, Vec::new()));
                let mut q = lock();
                q.batches.push_back(full);
                // Hashers that fall behind (a busy machine: they wait for
                // a core) leave batches queued: hash the oldest here.
                let behind = (q.batches.len() > 2).then(|| q.batches.pop_front()).flatten();
                drop(q);
                ready.notify_one();
                if let Some(b) = behind {
                    hash(b, &mut mine);
                }
            }
        }
        {
            let mut q = lock();
            if !batch.2.is_empty() {
                q.batches.push_back(batch);
            }
            q.closed = true;
        }
        ready.notify_all();
        mine.extend(work());
        for t in others {
            match t.join() {
                Ok(theirs) => mine.extend(theirs),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        mine.sort_unstable_by_key(|&(i, _)| i);
        out.extend(mine.into_iter().map(|(_, c)| c));
        debug_assert_eq!(out.len(), first + count);
        pos
    })
}

/// A delta operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Copy `len` bytes from offset `offset` of the replica's old copy.
    Copy {
        /// Offset in the old copy.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// New bytes.
    Literal(Vec<u8>),
}

/// Finds which chunks of new data the replica already has.
#[derive(Debug, Clone)]
pub struct Matcher {
    params: ChunkParams,
    /// Signature chunk index by hash.
    index: HashMap<u64, usize>,
    /// Offset, length and hash of each signature chunk, in order.
    chunks: Vec<(u64, u32, u64)>,
    /// Bit per chunk length present in the signature: a chunk of another
    /// length cannot match, so it is not hashed (most chunks of unrelated
    /// data).
    lens: Vec<u64>,
    /// The signature chunk expected next after a match: unchanged data
    /// continues with it, so it is checked before running the chunker.
    expect: Option<usize>,
}

impl Matcher {
    /// From the replica's signature.
    #[must_use]
    pub fn new(params: ChunkParams, sig: &[SigChunk]) -> Self {
        let n = sig.len().min(MAX_SIG_CHUNKS);
        let mut index = HashMap::with_capacity(n);
        let mut chunks = Vec::with_capacity(n);
        let mut lens = vec![0u64; params.max_len() / 64 + 1];
        let mut off = 0u64;
        for (i, c) in sig.iter().take(n).enumerate() {
            // A chunk these parameters cannot cut (empty, or longer than
            // the largest chunk: a signature made with other parameters,
            // or a hostile one) never matches; it only moves the offsets.
            // Left in, a chunk longer than the caller's read window would
            // be waited for forever (see [`Matcher::scan`]).
            let usable = c.len > 0 && c.len as usize <= params.max_len();
            if usable {
                index.entry(c.hash).or_insert(i);
                if let Some(w) = lens.get_mut(c.len as usize / 64) {
                    *w |= 1 << (c.len % 64);
                }
            }
            chunks.push((off, if usable { c.len } else { 0 }, c.hash));
            off = off.saturating_add(u64::from(c.len));
        }
        Self {
            params,
            index,
            chunks,
            lens,
            expect: None,
        }
    }

    /// The chunk parameters.
    #[must_use]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // the benches and tests use it
    pub fn params(&self) -> ChunkParams {
        self.params
    }

    /// Cuts `data` (the next bytes of the new file) into chunks and calls
    /// `emit(Some(copy_offset), at, len)` for a chunk the replica has and
    /// `emit(None, at, len)` for one it lacks. Unless `eof`, stops before a
    /// trailing chunk that might continue past `data`, and returns how many
    /// bytes it consumed.
    ///
    /// Progress: every chunk it waits for is at most
    /// [`ChunkParams::max_len`] long, so a call with at least that many
    /// bytes (or with `eof`) consumes at least one byte, whatever the
    /// signature holds.
    pub fn scan(
        &mut self,
        data: &[u8],
        eof: bool,
        mut emit: impl FnMut(Option<u64>, usize, usize),
    ) -> usize {
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            // Unchanged data goes on with the old copy's next chunk: check
            // it by hash without running the chunker (not the old copy's
            // last chunk, which ended at its end, not at a boundary).
            if let Some(i) = self.expect {
                if let Some(&(off, l, h)) = self
                    .chunks
                    .get(i)
                    .filter(|c| c.1 > 0 && i + 1 < self.chunks.len())
                {
                    let l = l as usize;
                    if l > rest.len() && !eof {
                        break; // decide with the next piece
                    }
                    if l <= rest.len() && chunk_hash(&rest[..l]) == h {
                        emit(Some(off), pos, l);
                        pos += l;
                        self.expect = Some(i + 1);
                        continue;
                    }
                }
                self.expect = None;
            }
            let len = self.params.cut(rest);
            if !eof && !self.params.is_final(len, rest.len()) {
                break;
            }
            let len_known = self
                .lens
                .get(len / 64)
                .is_some_and(|w| w & (1 << (len % 64)) != 0);
            let found = if len_known {
                self.index
                    .get(&chunk_hash(&rest[..len]))
                    .and_then(|&i| self.chunks.get(i).map(|c| (i, c)))
                    .filter(|(_, c)| c.1 as usize == len)
                    .map(|(i, c)| (i, c.0))
            } else {
                None
            };
            self.expect = found.map(|(i, _)| i + 1);
            emit(found.map(|(_, off)| off), pos, len);
            pos += len;
        }
        pos
    }
}

/// Largest literal op built by [`OpBuilder`] (one `Data` message's worth).
pub const MAX_LITERAL: usize = 1 << 20;

/// Most bytes of emptied buffers (literal buffers and op vectors, by
/// capacity) an [`OpBuilder`] keeps from ops given back to it with
/// [`OpBuilder::recycle`]: a source's window of literals (four `Data`
/// messages of about 1 MiB, each with the chunk that ended it in a small
/// buffer of its own) and room to spare.
pub const MAX_SPARE_BYTES: usize = 6 << 20;

/// Most emptied literal buffers an [`OpBuilder`] keeps from recycled ops.
pub const MAX_SPARE_BUFFERS: usize = 64;

/// Most emptied op vectors an [`OpBuilder`] keeps from recycled ops.
pub const MAX_SPARE_OPS: usize = 8;

/// Collects ops, merging adjacent copies and literals.
#[derive(Debug, Default)]
pub struct OpBuilder {
    ops: Vec<Op>,
    /// Emptied buffers to fill before allocating new ones (see
    /// [`OpBuilder::reusing`] and [`OpBuilder::recycle`]).
    spare: Spare,
}

/// Emptied literal buffers and op vectors an [`OpBuilder`] fills first.
#[derive(Debug, Default)]
struct Spare {
    /// Literal buffers; the next one taken is the last.
    bufs: Vec<Vec<u8>>,
    /// Op vectors.
    ops: Vec<Vec<Op>>,
    /// The capacity of `bufs` and `ops`, in bytes.
    bytes: usize,
}

impl Spare {
    /// Keeps `v`, emptied, if the bounds leave room for it.
    fn keep(&mut self, mut v: Vec<u8>) {
        let cap = v.capacity();
        if cap > 0 && self.bufs.len() < MAX_SPARE_BUFFERS && self.bytes + cap <= MAX_SPARE_BYTES {
            v.clear();
            self.bufs.push(v);
            self.bytes += cap;
        }
    }

    /// The next buffer.
    fn pop(&mut self) -> Option<Vec<u8>> {
        let v = self.bufs.pop()?;
        self.bytes -= v.capacity();
        Some(v)
    }

    /// The last buffer with room for `len` bytes.
    fn take_for(&mut self, len: usize) -> Option<Vec<u8>> {
        let i = self.bufs.iter().rposition(|v| v.capacity() >= len)?;
        let v = self.bufs.remove(i);
        self.bytes -= v.capacity();
        Some(v)
    }
}

impl OpBuilder {
    /// A builder whose literals go first into the buffers of `old`'s
    /// literals (emptied; their memory is already mapped), and whose ops
    /// go into `old`'s vector. All of `old`'s buffers are kept, however
    /// many (unlike [`OpBuilder::recycle`]).
    #[must_use]
    pub fn reusing(mut old: Vec<Op>) -> Self {
        let mut bufs: Vec<Vec<u8>> = old
            .drain(..)
            .filter_map(|op| match op {
                Op::Literal(mut v) => {
                    v.clear();
                    Some(v)
                }
                Op::Copy { .. } => None,
            })
            .collect();
        // Taken from the end: the first literal gets the first buffer.
        bufs.reverse();
        let bytes = bufs.iter().map(Vec::capacity).sum();
        Self {
            ops: old,
            spare: Spare {
                bufs,
                ops: Vec::new(),
                bytes,
            },
        }
    }

    /// Gives back ops taken from this builder (or any others) once they
    /// are no longer needed (a message encoded): their literal buffers,
    /// emptied, take the next literals before any new buffer is
    /// allocated, and their vector the next ops. The builder keeps at
    /// most [`MAX_SPARE_BYTES`] of them (by capacity), at most
    /// [`MAX_SPARE_BUFFERS`] literal buffers and [`MAX_SPARE_OPS`] op
    /// vectors; the rest is dropped. The ops built are the same as
    /// without.
    pub fn recycle(&mut self, mut ops: Vec<Op>) {
        let start = self.spare.bufs.len();
        for op in ops.drain(..) {
            if let Op::Literal(v) = op {
                self.spare.keep(v);
            }
        }
        // Taken from the end: the first literal gets the first buffer.
        self.spare.bufs[start..].reverse();
        if self.ops.capacity() == 0 {
            // The next ops go in it.
            self.ops = ops;
            return;
        }
        let bytes = ops.capacity() * std::mem::size_of::<Op>();
        let s = &mut self.spare;
        if bytes > 0 && s.ops.len() < MAX_SPARE_OPS && s.bytes + bytes <= MAX_SPARE_BYTES {
            s.ops.push(ops);
            s.bytes += bytes;
        }
    }

    /// Bytes of emptied buffers kept for the next ops (by capacity).
    #[must_use]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // the tests use it
    pub fn spare_bytes(&self) -> usize {
        self.spare.bytes
    }

    /// Emptied literal buffers kept for the next ops.
    #[must_use]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // the tests use it
    pub fn spare_buffers(&self) -> usize {
        self.spare.bufs.len()
    }

    /// A buffer of `len` zeroes, in a spare buffer with room for them when
    /// there is one (for data read straight into it, sent as a literal).
    pub(crate) fn zeroed(&mut self, len: usize) -> Vec<u8> {
        match self.spare.take_for(len) {
            Some(mut v) => {
                v.resize(len, 0);
                v
            }
            None => vec![0; len],
        }
    }

    /// A copy.
    pub fn copy(&mut self, offset: u64, len: u64) {
        if let Some(Op::Copy { offset: o, len: l }) = self.ops.last_mut()
            && *o + *l == offset
        {
            *l += len;
            return;
        }
        self.ops.push(Op::Copy { offset, len });
    }

    /// A literal (merged into the previous one up to [`MAX_LITERAL`]).
    pub fn literal(&mut self, data: &[u8]) {
        if let Some(Op::Literal(v)) = self.ops.last_mut()
            && v.len() + data.len() <= MAX_LITERAL
        {
            if v.capacity() < v.len() + data.len() {
                // Into a spare buffer of the largest literal's size when
                // there is one (its pages are mapped; the smaller buffer
                // is kept for a later literal), else grown once to the
                // largest literal rather than doubling: a run of unrelated
                // data fills it, and each doubling would copy what is
                // there into fresh pages.
                match self.spare.take_for(MAX_LITERAL) {
                    Some(mut big) => {
                        big.extend_from_slice(v);
                        let small = std::mem::replace(v, big);
                        self.spare.keep(small);
                    }
                    None => v.reserve_exact(MAX_LITERAL - v.len()),
                }
            }
            v.extend_from_slice(data);
            return;
        }
        let mut v = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(MAX_LITERAL.min(data.len().max(64 * 1024))));
        v.extend_from_slice(data);
        self.ops.push(Op::Literal(v));
    }

    /// Bytes of literal data pending.
    #[must_use]
    pub fn literal_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|o| match o {
                Op::Literal(v) => v.len(),
                Op::Copy { .. } => 0,
            })
            .sum()
    }

    /// Number of ops.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True without ops.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Takes the ops (the builder goes on in a spare op vector, if it
    /// has one).
    pub fn take(&mut self) -> Vec<Op> {
        let next = match self.spare.ops.pop() {
            Some(v) => {
                self.spare.bytes -= v.capacity() * std::mem::size_of::<Op>();
                v
            }
            None => Vec::new(),
        };
        std::mem::replace(&mut self.ops, next)
    }
}

/// The delta turning the file that `sig` describes into `new`, in memory.
#[must_use]
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // the benches and tests use it
pub fn diff(params: ChunkParams, sig: &[SigChunk], new: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    diff_into(params, sig, new, &mut ops);
    ops
}

/// [`diff`] into `ops`, replacing what it holds: its literals' buffers
/// take the new literals before any new buffer is allocated (a caller
/// that makes delta after delta reuses memory already mapped, as the
/// source's stream of bounded messages does).
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // the benches and tests use it
pub fn diff_into(params: ChunkParams, sig: &[SigChunk], new: &[u8], ops: &mut Vec<Op>) {
    let mut m = Matcher::new(params, sig);
    let mut b = OpBuilder::reusing(std::mem::take(ops));
    m.scan(new, true, |found, at, len| match found {
        Some(off) => b.copy(off, len as u64),
        None => b.literal(&new[at..at + len]),
    });
    *ops = b.take();
}

/// Applies `ops` to `base` in memory, producing exactly `size` bytes that
/// hash to `hash`. Never allocates more than `size` bytes and never reads
/// outside `base`.
///
/// The ops are checked before anything is allocated (every copy inside
/// the base, the lengths adding up to `size`); the output is then
/// allocated once and hashed piece by piece right after each piece is
/// copied, while it is still in the cache.
///
/// # Errors
/// [`ApplyError`] for a copy outside the base, output beyond or short of
/// `size`, or a hash mismatch.
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // the benches and tests use it
pub fn apply(base: &[u8], ops: &[Op], size: u64, hash: &[u8; 32]) -> Result<Vec<u8>, ApplyError> {
    let cap = check_ops(base, ops, size)?;
    let mut out = Vec::with_capacity(cap);
    let mut hasher = blake3::Hasher::new();
    for op in ops {
        for part in op_bytes(base, op).chunks(APPLY_PIECE) {
            let at = out.len();
            out.extend_from_slice(part);
            hasher.update(&out[at..]);
        }
    }
    if hasher.finalize().as_bytes() != hash {
        return Err(ApplyError::HashMismatch);
    }
    Ok(out)
}

/// [`apply`] on up to `threads` threads (this one and `threads - 1` more):
/// the same output, checks and errors.
///
/// The output is cut along its BLAKE3 tree into whole subtrees (at least
/// [`APPLY_SPLIT_PIECE`] bytes, about eight a thread); the threads take
/// them in turn, copy each one's bytes from the ops and hash them as they
/// go, and the subtrees' chaining values are merged to the root. Outputs
/// smaller than two such pieces, or one thread, take [`apply`]'s single
/// pass.
///
/// # Errors
/// As [`apply`].
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // the benches and tests use it
pub fn apply_threaded(
    base: &[u8],
    ops: &[Op],
    size: u64,
    hash: &[u8; 32],
    threads: usize,
) -> Result<Vec<u8>, ApplyError> {
    apply_split(base, ops, size, hash, threads, APPLY_SPLIT_PIECE)
}

/// Smallest subtree a thread of [`apply_threaded`] takes.
pub const APPLY_SPLIT_PIECE: u64 = 1 << 20;

/// [`apply_threaded`] with subtrees of at least `min_piece` bytes (a
/// power of two; the tests take small ones).
fn apply_split(
    base: &[u8],
    ops: &[Op],
    size: u64,
    hash: &[u8; 32],
    threads: usize,
    min_piece: u64,
) -> Result<Vec<u8>, ApplyError> {
    use crate::split::{Split, piece_hasher};
    use blake3::hazmat::HasherExt as _;
    use std::sync::{Mutex, PoisonError};

    let threads = threads.max(1);
    let piece = (size / (threads as u64 * 8)).max(min_piece).next_power_of_two();
    let split = match Split::new(size, piece) {
        Some(split) if threads > 1 => split,
        _ => return apply(base, ops, size, hash),
    };
    let cap = check_ops(base, ops, size)?;
    // Where each op's bytes start in the output.
    let starts: Vec<u64> = ops
        .iter()
        .scan(0u64, |at, op| {
            let s = *at;
            *at += op_bytes(base, op).len() as u64;
            Some(s)
        })
        .collect();
    let mut out = vec![0u8; cap];
    let mut jobs = Vec::with_capacity(split.pieces.len());
    let mut rest = out.as_mut_slice();
    for (i, &(start, len)) in split.pieces.iter().enumerate() {
        let (piece, tail) = rest.split_at_mut(len as usize);
        jobs.push((i, start, piece));
        rest = tail;
    }
    let jobs = Mutex::new(jobs.into_iter());
    // Fills one piece from the ops (the last op starting at or before its
    // offset, then the ones after), hashing each part as it is copied.
    let fill = |start: u64, piece: &mut [u8]| {
        let mut h = piece_hasher(start);
        let mut k = starts.partition_point(|&s| s <= start).saturating_sub(1);
        let mut done = 0;
        while done < piece.len() {
            let bytes = op_bytes(base, &ops[k]);
            let from = (start + done as u64 - starts[k]) as usize;
            let n = (bytes.len() - from).min(piece.len() - done);
            for (dst, src) in piece[done..done + n]
                .chunks_mut(APPLY_PIECE)
                .zip(bytes[from..from + n].chunks(APPLY_PIECE))
            {
                dst.copy_from_slice(src);
                h.update(dst);
            }
            done += n;
            k += 1;
        }
        h.finalize_non_root()
    };
    let work = || {
        let mut mine = Vec::new();
        loop {
            let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).next();
            let Some((i, start, piece)) = job else {
                break;
            };
            mine.push((i, fill(start, piece)));
        }
        mine
    };
    let mut cvs = vec![[0u8; 32]; split.pieces.len()];
    std::thread::scope(|s| {
        let others: Vec<_> = (1..threads.min(split.pieces.len()))
            .map(|_| s.spawn(work))
            .collect();
        let mut done = work();
        for t in others {
            match t.join() {
                Ok(theirs) => done.extend(theirs),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        for (i, cv) in done {
            cvs[i] = cv;
        }
    });
    if split.root(&cvs).as_bytes() != hash {
        return Err(ApplyError::HashMismatch);
    }
    Ok(out)
}

/// The bytes an op puts in the output (a copy: checked to be inside the
/// base by [`check_ops`]).
fn op_bytes<'a>(base: &'a [u8], op: &'a Op) -> &'a [u8] {
    match op {
        Op::Copy { offset, len } => &base[*offset as usize..(*offset + *len) as usize],
        Op::Literal(data) => data.as_slice(),
    }
}

/// Checks `ops` against `base` and `size` before anything is allocated:
/// every copy inside the base, the lengths adding up to `size`. The size
/// as a `usize`.
fn check_ops(base: &[u8], ops: &[Op], size: u64) -> Result<usize, ApplyError> {
    let mut total = 0u64;
    for op in ops {
        let len = match op {
            Op::Copy { offset, len } => {
                offset
                    .checked_add(*len)
                    .filter(|&e| e <= base.len() as u64)
                    .ok_or(ApplyError::CopyOutOfRange {
                        offset: *offset,
                        len: *len,
                        base_len: base.len() as u64,
                    })?;
                *len
            }
            Op::Literal(data) => data.len() as u64,
        };
        total = total
            .checked_add(len)
            .filter(|&t| t <= size)
            .ok_or(ApplyError::BeyondSize { size })?;
    }
    if total != size {
        return Err(ApplyError::Short { got: total, size });
    }
    usize::try_from(size).map_err(|_| ApplyError::BeyondSize { size })
}

/// How much [`apply`] copies before hashing it: well inside the L2 cache.
const APPLY_PIECE: usize = 128 * 1024;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` bytes of xorshift noise from `seed` (made odd: an even seed
    /// gives the stream of the odd one above it). The crate's tests share
    /// it.
    pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
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
    fn builder_matches_whole_buffer() {
        let data = noise(300_000, 3);
        let p = ChunkParams::new(4096);
        let whole = signature(&data, p);
        for step in [1usize, 7, 4096, 10_000, 65_536, 300_000] {
            let mut b = SignatureBuilder::new(p);
            for piece in data.chunks(step) {
                b.update(piece);
            }
            assert_eq!(b.finish(), whole, "step {step}");
        }
    }

    /// The threaded signature is the one-thread one: whole buffers and
    /// pieces, any thread count, batches of any size, with and without
    /// the end of the file.
    #[test]
    fn threaded_signature_equals_signature() {
        let mut data = noise(400_000, 4);
        // Runs that cut at the maximum and often.
        data.extend(std::iter::repeat_n(7u8, 50_000));
        data.extend(noise(60_000, 8).iter().map(|b| b & 1));
        let p = ChunkParams::new(4096);
        let whole = signature(&data, p);
        for threads in [1, 2, 3, 5] {
            for batch in [1, 5000, 40_000, 1 << 20] {
                for eof in [true, false] {
                    let mut got = Vec::new();
                    let used = sign(p, &data, eof, threads, batch, &mut got);
                    let mut want = Vec::new();
                    let want_used = sign(p, &data, eof, 1, batch, &mut want);
                    assert_eq!((used, &got), (want_used, &want), "{threads} threads, batch {batch}");
                    if eof {
                        assert_eq!(got, whole);
                    }
                }
            }
        }
        assert_eq!(signature_threaded(&data, p, 2), whole);
        let big = noise(3 << 20, 9);
        let p = ChunkParams::for_size(big.len() as u64);
        let whole = signature(&big, p);
        assert_eq!(signature_threaded(&big, p, 2), whole);
        for (threads, step) in [(2, 1 << 20), (3, 700_000), (2, 100_000)] {
            let mut b = SignatureBuilder::new(p).with_threads(threads);
            for piece in big.chunks(step) {
                b.update(piece);
            }
            assert_eq!(b.finish(), whole, "{threads} threads, pieces of {step}");
            // Spans shorter than the file (and than a largest chunk).
            for span in [1, 200_000, 1 << 20] {
                let mut b = SignatureBuilder::new(p).with_threads(threads);
                for piece in big.chunks(step) {
                    b.update_gathered(piece, span);
                }
                assert_eq!(b.finish(), whole, "{threads} threads, pieces of {step}, span {span}");
            }
        }
    }

    /// A delta made into the ops of an earlier one is the delta made
    /// afresh (more literals than before, fewer, none).
    #[test]
    fn diff_into_reused_ops_equals_diff() {
        let old = noise(1 << 20, 5);
        let p = ChunkParams::for_size(old.len() as u64);
        let sig = signature(&old, p);
        let mut edited = old.clone();
        edited[300_000..300_100].fill(1);
        edited.extend_from_slice(&noise(50_000, 3));
        let unrelated = noise(3 << 20, 6);
        let mut ops = Vec::new();
        for new in [&edited, &unrelated, &old, &edited, &unrelated, &unrelated] {
            diff_into(p, &sig, new, &mut ops);
            assert_eq!(ops, diff(p, &sig, new));
        }
    }

    /// The data pointer of each literal in `ops`.
    fn literal_ptrs(ops: &[Op]) -> Vec<*const u8> {
        ops.iter()
            .filter_map(|o| match o {
                Op::Literal(v) => Some(v.as_ptr()),
                Op::Copy { .. } => None,
            })
            .collect()
    }

    /// Ops given back take the next literals and the next ops: the same
    /// buffers, in order, and the same vector.
    #[test]
    fn recycled_ops_take_the_next_literals() {
        let data = noise(300_000, 7);
        let mut b = OpBuilder::default();
        b.literal(&data[..1000]);
        b.copy(0, 10);
        b.literal(&data[1000..2000]);
        let first = b.take();
        let (ptrs, vec_ptr) = (literal_ptrs(&first), first.as_ptr());
        b.recycle(first);
        assert_eq!(b.spare_buffers(), 2);
        assert!(b.spare_bytes() >= 2 * 64 * 1024);
        b.literal(&data[5000..5100]);
        b.copy(7, 3);
        b.literal(&data[..200]);
        b.literal(&data[200..300]);
        let second = b.take();
        assert_eq!(literal_ptrs(&second), ptrs);
        assert_eq!(second.as_ptr(), vec_ptr);
        assert_eq!(
            second,
            [
                Op::Literal(data[5000..5100].to_vec()),
                Op::Copy { offset: 7, len: 3 },
                Op::Literal(data[..300].to_vec()),
            ]
        );
        assert_eq!((b.spare_buffers(), b.spare_bytes()), (0, 0));
    }

    /// A literal that outgrows its buffer moves into a spare buffer of the
    /// largest literal's size (the smaller one kept for later) rather than
    /// growing into new memory.
    #[test]
    fn a_growing_literal_moves_into_a_large_spare_buffer() {
        let data = noise(MAX_LITERAL, 8);
        let mut b = OpBuilder::default();
        b.literal(&data);
        let big = b.take();
        let big_ptr = literal_ptrs(&big)[0];
        let mut small = OpBuilder::default();
        small.literal(&data[..10]);
        let small = small.take();
        let small_ptr = literal_ptrs(&small)[0];
        // Taken in the order given back: the small buffer first.
        b.recycle(big);
        b.recycle(small);
        b.literal(&data[..100]);
        assert_eq!(literal_ptrs(&b.ops), [small_ptr]);
        b.literal(&data[100..200_000]);
        assert_eq!(literal_ptrs(&b.ops), [big_ptr]);
        assert_eq!(b.spare_buffers(), 1, "the small buffer, kept");
        b.copy(0, 1);
        b.literal(&data[..5]);
        let ops = b.take();
        assert_eq!(literal_ptrs(&ops), [big_ptr, small_ptr]);
        assert_eq!(ops[0], Op::Literal(data[..200_000].to_vec()));
    }

    /// The buffers kept stay within their bounds however many are given
    /// back, and one larger than the bound is dropped.
    #[test]
    fn recycled_buffers_are_bounded() {
        let mut b = OpBuilder::default();
        b.recycle(vec![Op::Literal(Vec::with_capacity(MAX_SPARE_BYTES + 1))]);
        assert_eq!((b.spare_buffers(), b.spare_bytes()), (0, 0));
        for _ in 0..20 {
            let ops = (0..3)
                .map(|_| Op::Literal(Vec::with_capacity(MAX_LITERAL)))
                .collect();
            b.recycle(ops);
            assert!(b.spare_bytes() <= MAX_SPARE_BYTES);
        }
        // As many as fit (beside the op vectors kept).
        assert!(b.spare_bytes() > MAX_SPARE_BYTES - MAX_LITERAL);
        assert!(b.spare_buffers() >= MAX_SPARE_BYTES / MAX_LITERAL - 1);
        let mut b = OpBuilder::default();
        for _ in 0..100 {
            let ops = (0..10).map(|_| Op::Literal(Vec::with_capacity(10))).collect();
            b.recycle(ops);
        }
        assert_eq!(b.spare_buffers(), MAX_SPARE_BUFFERS);
        assert_eq!(b.spare.ops.len(), MAX_SPARE_OPS);
        assert!(b.spare_bytes() <= MAX_SPARE_BYTES);
        // Taking them gives their bytes back.
        for _ in 0..MAX_SPARE_OPS {
            b.literal(&[1; 11]);
            b.copy(0, 1);
            let _ = b.take();
        }
        assert!(b.spare.ops.is_empty());
        assert_eq!(b.spare_bytes(), 10 * (MAX_SPARE_BUFFERS - MAX_SPARE_OPS));
    }

    #[test]
    fn edits_cost_little() {
        let old = noise(1 << 20, 5);
        let mut new = old.clone();
        new[500_000..500_100].fill(0);
        new.splice(200_000..200_000, [9u8; 100]);
        new.extend_from_slice(&noise(50_000, 9));
        let p = ChunkParams::for_size(old.len() as u64);
        let ops = diff(p, &signature(&old, p), &new);
        let lit: usize = ops
            .iter()
            .map(|o| match o {
                Op::Literal(v) => v.len(),
                Op::Copy { .. } => 0,
            })
            .sum();
        assert!(lit < 50_000 + 8 * p.max_len(), "literal {lit}");
        let hash = *blake3::hash(&new).as_bytes();
        assert_eq!(apply(&old, &ops, new.len() as u64, &hash).unwrap(), new);
    }

    /// A signature chunk longer than the caller's window, after a match,
    /// must not stop the scan from consuming a full window (F6: the source
    /// spun on the same window forever). Bounded by steps, not time.
    #[test]
    fn an_oversized_signature_chunk_cannot_stall_a_window() {
        let p = ChunkParams::new(4096);
        let window = 4 * p.max_len();
        let data = noise(6 * window + 123, 11);
        let first = p.cut(&data);
        for huge in [window as u32 + 1, 5 << 20, 0] {
            let sig = [
                SigChunk {
                    len: first as u32,
                    hash: chunk_hash(&data[..first]),
                },
                SigChunk { len: huge, hash: 1 },
                SigChunk { len: 100, hash: 2 },
            ];
            let mut m = Matcher::new(p, &sig);
            let (mut pos, mut steps, mut covered) = (0, 0, 0);
            while pos < data.len() {
                steps += 1;
                assert!(steps <= 7, "chunk of {huge}: no progress at {pos}");
                let end = (pos + window).min(data.len());
                let eof = end == data.len();
                let n = m.scan(&data[pos..end], eof, |_, _, len| covered += len);
                assert!(n > 0, "chunk of {huge}: a whole window consumed nothing");
                pos += n;
            }
            assert_eq!(covered, data.len());
        }
    }

    /// Ops of copies and literals from `spec`: (kind, a, b) makes a copy
    /// of `b` bytes from `a` (wrapped into the base) or a literal of `b`
    /// bytes.
    fn ops_from(base: &[u8], spec: &[(bool, u32, u16)]) -> (Vec<Op>, Vec<u8>) {
        let mut ops = Vec::new();
        let mut out = Vec::new();
        for &(copy, a, b) in spec {
            let len = usize::from(b) % (base.len() / 2);
            if copy {
                let offset = a as usize % (base.len() - len);
                ops.push(Op::Copy {
                    offset: offset as u64,
                    len: len as u64,
                });
                out.extend_from_slice(&base[offset..offset + len]);
            } else {
                let lit = noise(len, u64::from(a));
                out.extend_from_slice(&lit);
                ops.push(Op::Literal(lit));
            }
        }
        (ops, out)
    }

    /// The threaded apply gives `apply`'s output, or its error, whatever
    /// the thread count and the size of the pieces.
    #[test]
    fn threaded_apply_equals_apply() {
        let base = noise(150_000, 21);
        let spec = [
            (true, 0, 40_000),
            (false, 5, 1),
            (false, 6, 0),
            (true, 77_777, 33_333),
            (false, 7, 4096),
            (true, 3, 1024),
            (true, 12_345, 60_000),
        ];
        let (ops, want) = ops_from(&base, &spec);
        let size = want.len() as u64;
        let hash = *blake3::hash(&want).as_bytes();
        for threads in [1, 2, 3, 8] {
            for piece in [1024, 2048, 8192, 1 << 20] {
                let got = apply_split(&base, &ops, size, &hash, threads, piece);
                assert_eq!(got.as_deref(), Ok(&want[..]), "{threads} threads, piece {piece}");
                let bad = apply_split(&base, &ops, size, &[0; 32], threads, piece);
                assert_eq!(bad, Err(ApplyError::HashMismatch));
                let short = apply_split(&base, &ops, size + 1, &hash, threads, piece);
                assert!(matches!(short, Err(ApplyError::Short { .. })));
            }
        }
        assert_eq!(apply_threaded(&base, &ops, size, &hash, 2).as_deref(), Ok(&want[..]));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// The same on random ops, thread counts and piece sizes.
        #[test]
        fn threaded_apply_equals_apply_on_random_ops(
            spec in proptest::collection::vec(
                (proptest::prelude::any::<bool>(), proptest::prelude::any::<u32>(), proptest::prelude::any::<u16>()),
                0..12,
            ),
            threads in 1usize..5,
            piece_log in 10u32..14,
            wrong in proptest::prelude::any::<bool>(),
        ) {
            let base = noise(70_000, 5);
            let (ops, want) = ops_from(&base, &spec);
            let mut hash = *blake3::hash(&want).as_bytes();
            if wrong {
                hash[0] ^= 1;
            }
            let size = want.len() as u64;
            proptest::prop_assert_eq!(
                apply_split(&base, &ops, size, &hash, threads, 1 << piece_log),
                apply(&base, &ops, size, &hash)
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// A builder fed back its ops builds the same ops as a new one,
        /// round after round (literals of any size, merged or not, copies
        /// between).
        #[test]
        fn a_builder_fed_back_its_ops_builds_the_same_ops(
            rounds in proptest::collection::vec(
                proptest::collection::vec(
                    (proptest::prelude::any::<bool>(), 0usize..300_000, 0u32..200_000),
                    0..24,
                ),
                1..6,
            ),
        ) {
            let data = noise(300_000, 9);
            let mut reused = OpBuilder::default();
            for round in rounds {
                let mut fresh = OpBuilder::default();
                for &(copy, at, len) in &round {
                    if copy {
                        fresh.copy(at as u64, u64::from(len));
                        reused.copy(at as u64, u64::from(len));
                    } else {
                        let end = (at + len as usize).min(data.len());
                        fresh.literal(&data[at..end]);
                        reused.literal(&data[at..end]);
                    }
                }
                let ops = reused.take();
                proptest::prop_assert_eq!(&ops, &fresh.take());
                reused.recycle(ops);
                proptest::prop_assert!(reused.spare_bytes() <= MAX_SPARE_BYTES);
            }
        }
    }

    #[test]
    fn apply_refuses_bad_ops() {
        let base = b"0123456789";
        let h = *blake3::hash(b"0123").as_bytes();
        let oob = [Op::Copy { offset: 8, len: 4 }];
        assert!(matches!(
            apply(base, &oob, 4, &h),
            Err(ApplyError::CopyOutOfRange { .. })
        ));
        let wrap = [Op::Copy {
            offset: u64::MAX,
            len: 2,
        }];
        assert!(matches!(
            apply(base, &wrap, 4, &h),
            Err(ApplyError::CopyOutOfRange { .. })
        ));
        let long = [Op::Literal(vec![0; 5])];
        assert_eq!(
            apply(base, &long, 4, &h),
            Err(ApplyError::BeyondSize { size: 4 })
        );
        let short = [Op::Copy { offset: 0, len: 3 }];
        assert!(matches!(
            apply(base, &short, 4, &h),
            Err(ApplyError::Short { .. })
        ));
        let wrong = [Op::Copy { offset: 1, len: 4 }];
        assert_eq!(apply(base, &wrong, 4, &h), Err(ApplyError::HashMismatch));
        let ok = [Op::Copy { offset: 0, len: 4 }];
        assert_eq!(apply(base, &ok, 4, &h).unwrap(), b"0123");
    }
}
