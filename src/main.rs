use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    one_malloc_arena();
    ExitCode::from(tidegate::cli::main(tidegate::cli::Cli::parse()))
}

/// glibc gives every thread that allocates an arena of its own (up to eight per core) and
/// keeps what a thread frees in that thread's arena. Tasks here move between a few
/// threads, so memory freed on one is held while another allocates afresh: with 1,000
/// Modbus devices that was 10 MiB of 53 MiB resident, for no speed that could be measured.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator parameter, and runs before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}
