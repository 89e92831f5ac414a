//! `wasmq secret …`: secrets sealed under the operator's key, granted to
//! modules with `wasmq module grant NAME --secret S`.
//!
//! A value is read from stdin or a file, never from the command line (which
//! other users of the machine can read in `ps`, and shells keep in history).

use super::admin::{connect, fail};
use super::exit::Exit;
use super::table::Table;
use super::term;
use crate::secrets::{SecretKey, value_from_bytes};
use crate::store::Store;
use clap::Subcommand;
use std::io::Read;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret (replacing one of that name), sealed under the key in
    /// WASMQ_SECRET_KEY_FILE. The value comes from stdin, or --from-file.
    Set {
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// List secrets: names, the key that sealed them, dates. Never values.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret, and every grant of it.
    Rm { name: String },
    /// Write a new random key to FILE (mode 0600), for WASMQ_SECRET_KEY_FILE.
    NewKey { file: PathBuf },
}

pub async fn run(db: &str, cmd: SecretCommand) -> anyhow::Result<()> {
    if let SecretCommand::NewKey { file } = &cmd {
        return new_key(file);
    }
    let client = connect(db).await?;
    match cmd {
        SecretCommand::Set { name, from_file } => {
            let key = SecretKey::from_env()
                .map_err(|e| Exit::usage(e.to_string()))?
                .ok_or_else(|| Exit::usage(crate::secrets::SecretError::NoKey.to_string()))?;
            let bytes = match &from_file {
                Some(path) => std::fs::read(path)
                    .map_err(|e| Exit::usage(format!("cannot read {}: {e}", path.display())))?,
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .take(crate::secrets::MAX_SECRET_BYTES as u64 + 2)
                        .read_to_end(&mut buf)
                        .map_err(|e| Exit::usage(format!("reading stdin: {e}")))?;
                    buf
                }
            };
            let value = value_from_bytes(bytes).map_err(|e| Exit::usage(e.to_string()))?;
            let created = client.set_secret(&key, &name, &value).await.map_err(fail)?;
            let what = if created { "stored" } else { "replaced" };
            println!("secret {} {what} (key {})", term::line(&name), key.id());
        }
        SecretCommand::List { json } => {
            let secrets = client
                .store()
                .list_secrets()
                .await
                .map_err(|e| fail(e.into()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&secrets)?);
                return Ok(());
            }
            let mut t = Table::new(&["NAME", "KEY", "UPDATED"]);
            for s in secrets {
                t.row(vec![
                    s.name,
                    s.key_id,
                    s.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                ]);
            }
            t.print();
        }
        SecretCommand::Rm { name } => {
            client
                .store()
                .delete_secret(&name)
                .await
                .map_err(|e| fail(e.into()))?;
            println!("secret {} deleted, with its grants", term::line(&name));
        }
        SecretCommand::NewKey { .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn new_key(file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| Exit::usage(format!("cannot create {}: {e}", file.display())))?;
    let key = SecretKey::generate_hex();
    writeln!(f, "{}", key.as_str())?;
    f.sync_all()?;
    let id = SecretKey::from_file(file)?.id().to_string();
    println!("wrote a new key to {} (key {id})", file.display());
    Ok(())
}
