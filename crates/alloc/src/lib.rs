//! The process's global allocator: the system allocator, except that a single allocation of a
//! gigabyte or more is served by a lazily backed anonymous mapping.
//!
//! Why: the Kafka codecs size arrays from the count a client sends before reading any element,
//! so a 20-byte frame can ask for hundreds of gigabytes. The system allocator refuses that and
//! Rust aborts the whole broker. With `MAP_NORESERVE` the kernel grants the address range
//! without committing memory; the decoder then fails on the missing elements, the connection is
//! closed, and the untouched range is unmapped. Legitimate allocations are far below the
//! threshold (frames are capped by `socket.request.max.bytes`, reads by fetch sizes).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// Allocations at least this large get their own lazily backed mapping.
pub const LAZY_BYTES_MIN: usize = 1 << 30;
/// Mappings are page aligned; larger alignments go to the system allocator.
const PAGE_BYTES: usize = 4096;

pub struct GuardedAlloc;

/// How many allocations took the lazy path, and the largest of them: a hostile count's trace
/// (tests check that fuzzing reaches the path; a node could report it).
pub static LAZY_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
pub static LAZY_BYTES_LARGEST: AtomicU64 = AtomicU64::new(0);

fn lazy(layout: &Layout) -> bool {
    layout.size() >= LAZY_BYTES_MIN && layout.align() <= PAGE_BYTES
}

// SAFETY (whole impl): every pointer handed out comes either from `System` or from `mmap` of
// exactly `layout.size()` bytes, and `lazy(layout)` — a pure function of the layout the caller
// must pass back unchanged — decides which of the two frees it.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !lazy(&layout) {
            return unsafe { System.alloc(layout) };
        }
        LAZY_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LAZY_BYTES_LARGEST.fetch_max(layout.size() as u64, Ordering::Relaxed);
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            ptr.cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if lazy(&layout) {
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if lazy(&layout) {
            // Anonymous mappings are zero-filled.
            unsafe { self.alloc(layout) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !lazy(&layout) && !lazy(&new_layout) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    #[global_allocator]
    static GLOBAL: super::GuardedAlloc = super::GuardedAlloc;

    #[test]
    fn a_hostile_capacity_does_not_abort_and_small_ones_still_work() {
        // What a decoder does with a count of 2^32 from the wire: must not abort the process.
        let huge: Vec<[u8; 64]> = Vec::with_capacity(1 << 32);
        assert!(huge.capacity() >= 1 << 32);
        drop(huge);
        let mut v: Vec<u8> = Vec::with_capacity(16);
        v.extend_from_slice(b"still fine");
        assert_eq!(&v, b"still fine");
    }
}
