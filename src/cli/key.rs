//! `dsb key`: the receipt-signing keys of the local data directory.

use std::path::Path;

use clap::Subcommand;
use datasandbox::receipt::KeyRing;

#[derive(Subcommand)]
pub enum KeyCommand {
    List,
    Rotate,
}

pub fn run(command: KeyCommand, data_dir: &Path) -> anyhow::Result<()> {
    let keys = KeyRing::open(&data_dir.join("keys"))?;
    if let KeyCommand::Rotate = command {
        println!("new signing key {}", keys.rotate()?);
    }
    for key in keys.public_keys()? {
        println!(
            "{} {} {}",
            key.key_id,
            key.public_key,
            if key.current { "current" } else { "" }
        );
    }
    Ok(())
}
