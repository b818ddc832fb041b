//! One BLAKE3 hash from pieces hashed apart (on several threads): the
//! input is cut along the hash's own tree, so that each piece is a whole
//! subtree; each piece's chaining value is found on its own, and the values
//! are merged up the tree to the root. The same hash as one pass.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

/// The tree down to the pieces: a leaf is a piece's index.
enum Node {
    Leaf(usize),
    Parent(Box<Node>, Box<Node>),
}

/// An input of known length cut into whole subtrees of at most a given
/// size.
pub(crate) struct Split {
    /// Offset and length of each piece, in order; together they cover the
    /// input.
    pub(crate) pieces: Vec<(u64, u64)>,
    /// The root's two subtrees.
    left: Node,
    right: Node,
}

impl Split {
    /// `len` bytes cut into subtrees of at most `piece` bytes (or one
    /// BLAKE3 chunk, whichever is larger); `None` when that is one piece
    /// (the whole input: hash it in one pass).
    pub(crate) fn new(len: u64, piece: u64) -> Option<Self> {
        fn build(start: u64, len: u64, piece: u64, pieces: &mut Vec<(u64, u64)>) -> Node {
            if len <= piece || len <= blake3::CHUNK_LEN as u64 {
                pieces.push((start, len));
                return Node::Leaf(pieces.len() - 1);
            }
            let left = left_subtree_len(len);
            let l = build(start, left, piece, pieces);
            let r = build(start + left, len - left, piece, pieces);
            Node::Parent(Box::new(l), Box::new(r))
        }
        let mut pieces = Vec::new();
        match build(0, len, piece, &mut pieces) {
            Node::Leaf(_) => None,
            Node::Parent(l, r) => Some(Self {
                pieces,
                left: *l,
                right: *r,
            }),
        }
    }

    /// The root hash from the pieces' chaining values (`cvs[i]` is piece
    /// `i`'s).
    pub(crate) fn root(&self, cvs: &[ChainingValue]) -> blake3::Hash {
        fn cv(n: &Node, cvs: &[ChainingValue]) -> ChainingValue {
            match n {
                Node::Leaf(i) => cvs[*i],
                Node::Parent(l, r) => merge_subtrees_non_root(&cv(l, cvs), &cv(r, cvs), Mode::Hash),
            }
        }
        merge_subtrees_root(&cv(&self.left, cvs), &cv(&self.right, cvs), Mode::Hash)
    }
}

/// A hasher for the piece that starts at `offset` of a split input (to be
/// ended with `finalize_non_root`).
pub(crate) fn piece_hasher(offset: u64) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_merge_to_the_one_pass_hash() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + i / 300) as u8).collect();
        for len in [0, 1, 1024, 1025, 4096, 5000, 65_536, 65_537, 70_000] {
            for piece in [1024u64, 2048, 8192, 1 << 20] {
                let Some(s) = Split::new(len as u64, piece) else {
                    assert!(len as u64 <= piece.max(1024), "len {len} piece {piece}");
                    continue;
                };
                let mut at = 0;
                let cvs: Vec<ChainingValue> = s
                    .pieces
                    .iter()
                    .map(|&(start, n)| {
                        assert_eq!(start, at);
                        at += n;
                        assert!(n <= piece.max(1024));
                        let mut h = piece_hasher(start);
                        h.update(&data[start as usize..(start + n) as usize]);
                        h.finalize_non_root()
                    })
                    .collect();
                assert_eq!(at, len as u64);
                assert!(s.pieces.len() > 1);
                assert_eq!(
                    s.root(&cvs),
                    blake3::hash(&data[..len]),
                    "len {len} piece {piece}"
                );
            }
        }
    }
}
