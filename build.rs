//! Rebuild when a migration is added, removed or edited: `refinery::embed_migrations!` reads
//! the `migrations/` folder at compile time, and Cargo does not track folders for macros.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
