//! Static memory planning: every activation gets an offset in one arena.
//!
//! Each buffer lives from the step that writes it to the last step that reads
//! it (graph inputs from before the first step to after the last, so they
//! survive a forward; graph outputs to after the last). Buffers are placed
//! in order of first use at the lowest offset whose bytes are free for
//! their whole lifetime (first fit over the live set), 256-byte aligned. A
//! buffer read by a step never shares bytes with one written by the same
//! step. Planning without reuse (every buffer its own
//! bytes) keeps every intermediate value inspectable, for tests.

/// Alignment of every buffer, in bytes (cuBLASLt wants 16, vector loads 16,
/// 256 keeps buffers on separate cache-line groups).
pub const ALIGN: u64 = 256;

/// One buffer's size and lifetime in steps (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// Bytes.
    pub bytes: u64,
    /// First step that touches it.
    pub first: usize,
    /// Last step that touches it.
    pub last: usize,
}

/// Offsets for `buffers` (same order) and the arena size.
pub fn plan(buffers: &[Lifetime], reuse: bool) -> (Vec<u64>, u64) {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| (buffers[i].first, i));
    let mut offsets = vec![0u64; buffers.len()];
    // Placed buffers as (offset, end, last step), kept sorted by offset.
    let mut placed: Vec<(u64, u64, usize)> = Vec::new();
    let mut arena = 0u64;
    for i in order {
        let b = buffers[i];
        let size = align(b.bytes.max(1));
        let offset = if reuse {
            placed.retain(|&(_, _, last)| last >= b.first);
            first_fit(&placed, size)
        } else {
            arena
        };
        offsets[i] = offset;
        let entry = (offset, offset + size, b.last);
        let at = placed.partition_point(|p| p.0 < offset);
        placed.insert(at, entry);
        arena = arena.max(offset + size);
    }
    (offsets, arena)
}

/// The lowest offset with `size` free bytes between the placed buffers.
fn first_fit(placed: &[(u64, u64, usize)], size: u64) -> u64 {
    let mut cursor = 0;
    for &(start, end, _) in placed {
        if start >= cursor + size {
            return cursor;
        }
        cursor = cursor.max(end);
    }
    cursor
}

/// `bytes` rounded up to [`ALIGN`].
pub fn align(bytes: u64) -> u64 {
    bytes.div_ceil(ALIGN) * ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(bytes: u64, first: usize, last: usize) -> Lifetime {
        Lifetime { bytes, first, last }
    }

    #[test]
    fn disjoint_lifetimes_share_bytes() {
        let (offsets, arena) = plan(
            &[life(1000, 0, 1), life(1000, 1, 2), life(1000, 2, 3)],
            true,
        );
        // b1 overlaps both neighbours (steps 1 and 2); b0 and b2 do not overlap.
        assert_eq!(offsets, vec![0, 1024, 0]);
        assert_eq!(arena, 2048);
    }

    #[test]
    fn a_step_never_reads_and_writes_the_same_bytes() {
        let (offsets, _) = plan(&[life(256, 0, 3), life(256, 3, 4)], true);
        assert_ne!(offsets[0], offsets[1]);
    }

    #[test]
    fn without_reuse_everything_is_separate() {
        let (offsets, arena) = plan(&[life(10, 0, 0), life(10, 5, 5)], false);
        assert_eq!(offsets, vec![0, 256]);
        assert_eq!(arena, 512);
    }

    #[test]
    fn gaps_are_filled_first_fit() {
        let (offsets, arena) = plan(
            &[
                life(256, 0, 9),
                life(512, 0, 1),
                life(256, 0, 9),
                life(256, 2, 3),
                life(256, 2, 3),
            ],
            true,
        );
        assert_eq!(offsets, vec![0, 256, 768, 256, 512]);
        assert_eq!(arena, 1024);
    }
}
