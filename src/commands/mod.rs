//! What the binary's subcommands run (`main.rs` parses the command line), with the prune
//! command's report and plots.

pub mod bench;
pub mod inspect;
pub mod plots;
pub mod prune;
pub mod report;
pub mod tune;
