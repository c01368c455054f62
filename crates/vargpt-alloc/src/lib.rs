//! The allocator of the vargpt binaries: mimalloc, tuned for inference.
//!
//! Every step allocates and frees tensors of up to tens of MB (the VQVAE
//! decoder's 256×256×160 activations are 42 MB each). glibc hands such blocks
//! back to the kernel at once, and mimalloc by default "purges" (decommits) freed
//! memory after a delay, so either way the next step page-faults the memory in and
//! the kernel zeroes every page first (`clear_page_erms` was ~10% of a
//! text-to-image profile). A model server keeps its working set: [`configure`]
//! turns purging off, so freed memory is reused as it is. Peak RSS is unchanged
//! (it is reached by the first request anyway); the process just does not shrink
//! back between requests.
//!
//! Each binary declares the allocator and calls [`configure`] first thing:
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: vargpt_alloc::MiMalloc = vargpt_alloc::MiMalloc;
//! fn main() { vargpt_alloc::configure(); /* … */ }
//! ```

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's option enum (index 15 in both the v2 and
/// the v3 headers; the sys crate has no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed memory to the OS (see the crate docs). Set
/// `MIMALLOC_PURGE_DELAY` (milliseconds) to override, e.g. for a process that
/// should shrink when idle.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: plain option store; mimalloc reads it when it next purges.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configure_turns_purging_off() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the user's value wins; nothing to check
        }
        // SAFETY: plain option reads.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // Option 15 is the purge delay: mimalloc 3's default is 1000 ms (2's: 10).
        assert!([10, 1000].contains(&get()), "{}", get());
        configure();
        assert_eq!(get(), -1);
    }
}
