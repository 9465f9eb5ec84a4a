fn main() {
    // glibc raises its mmap threshold after each large free, after which pack-sized
    // buffers stay in the heap and peak memory keeps growing; a fixed threshold hands
    // them back to the system when freed.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
    std::process::exit(vault::cli::main());
}
