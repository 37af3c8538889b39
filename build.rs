//! Embeds the schema migrations (`migrations/NNNN_description.sql`) in the
//! library as a table `store` hands to sqlx's migrator, in place of sqlx's
//! `migrate!` macro: the macro crate compiles sqlx and SQLite a second time
//! for the compiler (about 50 s of a cold build here).

use std::fmt::Write;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("migrations/ is readable")
        .map(|entry| {
            entry
                .expect("migrations/ is readable")
                .file_name()
                .into_string()
                .expect("migration file names are UTF-8")
        })
        .filter(|name| name.ends_with(".sql"))
        .collect();
    files.sort();
    let mut table = String::from("&[\n");
    for name in &files {
        println!("cargo:rerun-if-changed={}", dir.join(name).display());
        let (version, rest) = name
            .split_once('_')
            .unwrap_or_else(|| panic!("{name}: expected NNNN_description.sql"));
        let version: i64 = version
            .parse()
            .unwrap_or_else(|_| panic!("{name}: expected an integer version prefix"));
        // As sqlx names them: the rest of the file name, `_` as spaces.
        let description = rest.trim_end_matches(".sql").replace('_', " ");
        writeln!(
            table,
            "    ({version}, {description:?}, include_str!({:?})),",
            dir.join(name).display().to_string()
        )
        .expect("writing to a String");
    }
    table.push(']');
    let out =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("migrations.rs");
    std::fs::write(out, table).expect("OUT_DIR is writable");
}
