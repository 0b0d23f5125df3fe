//! `cairn serve` and `cairn keys`.

use crate::cli::{KeysCommand, ServeArgs};
use crate::error::Error;
use crate::model::Dur;

pub fn run(args: &ServeArgs) -> Result<(), Error> {
    let tokens = crate::server::tokens::Tokens::load(&args.tokens).map_err(|e| Error::Usage(format!("error: {e}")))?;
    let dur = |s: &str, flag: &str| Dur::parse(s).map(|d| d.0).map_err(|e| Error::Usage(format!("error: {flag}: {e}")));
    let opts = crate::server::ServeOptions {
        listen: args.listen,
        store: args.store.clone(),
        s3: match &args.s3 {
            Some(url) => Some(crate::cache::s3::S3::from_url(url).map_err(|e| Error::Usage(format!("error: {e}")))?),
            None => None,
        },
        tokens,
        max_body: super::parse_size(&args.max_body)?,
        quota: super::parse_size(&args.quota)?,
        header_timeout: dur(&args.header_timeout, "--header-timeout")?,
        body_timeout: dur(&args.body_timeout, "--body-timeout")?,
    };
    crate::server::serve(opts, |addr| {
        eprintln!("cairn serve: listening on http://{addr} (store {})", args.store.display());
    })
    .map_err(|e| Error::Io(format!("error: cairn serve: {e}\n  hint: is the address in use? is the store writable?")))
}

pub fn keys(cmd: &KeysCommand) -> Result<(), Error> {
    match cmd {
        KeysCommand::Generate { name, out } => {
            if name.is_empty() || name.contains(':') {
                return Err(Error::Usage("error: --name must be non-empty and contain no `:`".into()));
            }
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| Error::Io(format!("error: no randomness: {e}")))?;
            let secret = crate::keys::Secret::from_seed(name, seed);
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(out).map_err(|e| {
                    Error::Io(format!(
                        "error: cannot create {}: {e} (an existing key is never overwritten)",
                        out.display()
                    ))
                })?;
            f.write_all(secret.to_file_text().as_bytes()).map_err(|e| Error::Io(format!("error: {e}")))?;
            eprintln!("wrote the private key to {} (keep it secret: CI signs with it)", out.display());
            eprintln!("trust the public key in the pipeline: remote: (trusted_keys: [\"{}\"])", secret.public());
            println!("{}", secret.public());
            Ok(())
        }
    }
}
