//! The process's global allocator: mimalloc, called through its plain `mi_malloc` family
//! whenever a block of that size is already aligned enough, and through its aligned family
//! only when it is not.
//!
//! Why not `mimalloc::MiMalloc`: it sends every allocation to `mi_malloc_aligned`, and
//! mimalloc 3 serves that from its fast path only for blocks of at most 1 KiB whose free
//! block happens to sit on the alignment. Everything else (buffers, boxed futures, grown
//! vectors, the 128-byte-aligned task cells of tokio) takes the generic path, which for
//! sizes that are not a power of two over-allocates and offsets the pointer. Per proxied
//! HTTP/1.1 request that was 96 allocations at 72 instructions each (callgrind,
//! `bench/metrics-callgrind.sh`), against about 20 on `mi_malloc`'s fast path.
//!
//! The rule is the one Rust's `System` allocator applies to `malloc`: a request whose
//! alignment is at most what the allocator guarantees for every block, and at most its size,
//! is a plain allocation. mimalloc rounds every size class above one word to whole double
//! words and starts every page's first block on [`MALLOC_ALIGN`] bytes (`MI_MAX_ALIGN_SIZE`,
//! `MI_ALIGN2W` in its `page-queue.c`), so a block of more than one word is aligned to two
//! words, and a one-word block to one word, which is all a request of that size can ask for.

#![no_std]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use libmimalloc_sys as ffi;

/// What every mimalloc block of at least this size is aligned to: two machine words, i.e.
/// `max_align_t` on the 64-bit targets torhaus is built for.
pub const MALLOC_ALIGN: usize = 2 * core::mem::size_of::<usize>();

/// Whether `mi_malloc(size)` already returns memory aligned to `align`.
#[inline]
pub const fn plain_allocation_fits(size: usize, align: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

/// mimalloc as the global allocator; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mimalloc;

// SAFETY: every method hands back memory from mimalloc that satisfies the layout: the plain
// entry points only when `plain_allocation_fits` shows their guaranteed alignment covers it,
// the aligned ones otherwise; and `dealloc` frees with `mi_free`, which takes blocks from
// either family.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain_allocation_fits(layout.size(), layout.align()) {
            // SAFETY: mi_malloc accepts any size; the result is null or a fresh block.
            unsafe { ffi::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: `Layout` guarantees a non-zero power-of-two alignment.
            unsafe { ffi::mi_malloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain_allocation_fits(layout.size(), layout.align()) {
            // SAFETY: as in `alloc`; mi_zalloc also zeroes the block.
            unsafe { ffi::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: as in `alloc`.
            unsafe { ffi::mi_zalloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a block this allocator returned, all of them mimalloc's.
        unsafe { ffi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain_allocation_fits(new_size, layout.align()) {
            // SAFETY: `ptr` is a live mimalloc block (the caller's contract); the block
            // mi_realloc returns for `new_size` is aligned as shown for `alloc`, and one it
            // keeps in place already had the layout's alignment.
            unsafe { ffi::mi_realloc(ptr.cast::<c_void>(), new_size).cast() }
        } else {
            // SAFETY: as above, with the alignment asked for explicitly.
            unsafe {
                ffi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::vec::Vec;

    const ALIGNS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 4096];

    fn sizes() -> impl Iterator<Item = usize> {
        (1..=300).chain([
            1000,
            1024,
            1025,
            1032,
            4000,
            14_000,
            70_000,
            1 << 20,
            5 << 20,
        ])
    }

    #[test]
    fn every_block_meets_its_layout_and_holds_its_bytes() {
        let allocator = Mimalloc;
        let mut live = Vec::new();
        for align in ALIGNS {
            for size in sizes() {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: the layout has a non-zero size.
                let block = unsafe { allocator.alloc(layout) };
                assert!(!block.is_null(), "{layout:?}");
                assert_eq!(block as usize % align, 0, "{layout:?} misaligned");
                // SAFETY: the block is `size` bytes long and ours.
                unsafe {
                    block.write_bytes(0xA5, size);
                    assert_eq!(*block.add(size - 1), 0xA5);
                }
                live.push((block, layout));
            }
        }
        for (block, layout) in live {
            // SAFETY: each block came from `alloc` with this layout and is freed once.
            unsafe { allocator.dealloc(block, layout) };
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_and_aligned() {
        let allocator = Mimalloc;
        for align in ALIGNS {
            for size in [1, 8, 24, 40, 1032, 70_000] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: non-zero size.
                let block = unsafe { allocator.alloc_zeroed(layout) };
                assert!(!block.is_null());
                assert_eq!(block as usize % align, 0, "{layout:?} misaligned");
                // SAFETY: the block is `size` initialised bytes.
                let bytes = unsafe { core::slice::from_raw_parts(block, size) };
                assert!(bytes.iter().all(|b| *b == 0), "{layout:?} not zeroed");
                // SAFETY: allocated above with this layout.
                unsafe { allocator.dealloc(block, layout) };
            }
        }
    }

    #[test]
    fn reallocation_keeps_the_contents_and_the_alignment() {
        let allocator = Mimalloc;
        for align in ALIGNS {
            let Ok(layout) = Layout::from_size_align(24, align) else {
                continue;
            };
            // SAFETY: non-zero size.
            let mut block = unsafe { allocator.alloc(layout) };
            assert!(!block.is_null());
            // SAFETY: 24 bytes, ours.
            unsafe { block.write_bytes(7, 24) };
            let mut current = layout;
            for new_size in [40, 1030, 17, 100_000, 9] {
                // SAFETY: `block` is live with layout `current`; the new size is non-zero.
                block = unsafe { allocator.realloc(block, current, new_size) };
                assert!(!block.is_null());
                assert_eq!(
                    block as usize % align,
                    0,
                    "{align} after growing to {new_size}"
                );
                let kept = current.size().min(new_size).min(9);
                // SAFETY: at least `kept` bytes were carried over.
                let bytes = unsafe { core::slice::from_raw_parts(block, kept) };
                assert!(bytes.iter().all(|b| *b == 7), "contents lost at {new_size}");
                current = match Layout::from_size_align(new_size, align) {
                    Ok(layout) => layout,
                    Err(e) => panic!("{e}"),
                };
            }
            // SAFETY: live with layout `current`.
            unsafe { allocator.dealloc(block, current) };
        }
    }

    #[test]
    fn the_plain_path_is_taken_exactly_where_its_alignment_suffices() {
        assert!(plain_allocation_fits(8, 8));
        assert!(plain_allocation_fits(1032, 8));
        assert!(plain_allocation_fits(24, 16));
        assert!(!plain_allocation_fits(4, 8));
        assert!(!plain_allocation_fits(256, 32));
        assert!(!plain_allocation_fits(384, 128));
    }
}
