//! Sizes from the kernel's FUSE ABI that both sides budget with: a directory listing is sized
//! in the bytes its entries take in the kernel's reply (`struct fuse_dirent`, and
//! `struct fuse_direntplus` for readdirplus), whichever front door carries it.

/// The export root's node id (FUSE's `FUSE_ROOT_ID`), on the wire and in the kernel.
pub const ROOT_ID: u64 = 1;

/// The fixed part of `struct fuse_dirent` (ino, off, namelen, type); the name follows.
pub const DIRENT_HEADER: usize = 24;

/// `struct fuse_entry_out`, which leads each `struct fuse_direntplus`.
pub const ENTRY_OUT: usize = 128;

/// The bytes one `fuse_dirent` with a `namelen`-byte name takes (padded to 8 bytes).
pub fn dirent_size(namelen: usize) -> usize {
    (DIRENT_HEADER + namelen).div_ceil(8) * 8
}

/// The bytes one `fuse_direntplus` with a `namelen`-byte name takes.
pub fn direntplus_size(namelen: usize) -> usize {
    ENTRY_OUT + dirent_size(namelen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirents_are_padded_to_eight_bytes() {
        assert_eq!(dirent_size(0), 24);
        assert_eq!(dirent_size(1), 32);
        assert_eq!(dirent_size(8), 32);
        assert_eq!(dirent_size(9), 40);
        assert_eq!(direntplus_size(1), 160);
    }
}
