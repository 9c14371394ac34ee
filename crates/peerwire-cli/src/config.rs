//! `peerwire config`: sealing keys, sealed and plain configuration files.

use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context;
use peerwire_security::seal::{self, Purpose};
use peerwire_server::settings::{self, ServerConfig};

use crate::args::ConfigCommand;

pub(crate) fn run(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Keygen { out } => {
            let key = seal::Key::generate()?;
            key.write_new(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            say!(
                "new key {} written to {} (mode 0400)",
                key.id_hex(),
                out.display()
            );
        }
        ConfigCommand::Seal { key, input, out } => {
            let text =
                std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let text = zeroize::Zeroizing::new(text);
            // Refuse to seal something the server would refuse to run with.
            ServerConfig::parse(std::str::from_utf8(&text).context("not UTF-8")?, &input)?;
            let sealed = seal::seal(
                &key.require()?,
                Purpose::Config,
                &settings::sealed_name(&out),
                &text,
            )?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("creating {} (it must not exist yet)", out.display()))?;
            std::io::Write::write_all(&mut f, &sealed)?;
            f.sync_all()?;
            say!("sealed {} into {}", input.display(), out.display());
        }
        ConfigCommand::Open { key, input } => {
            let bytes =
                std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let plain = seal::open(
                &key.require()?,
                Purpose::Config,
                &settings::sealed_name(&input),
                &bytes,
            )
            .with_context(|| format!("opening {}", input.display()))?;
            std::io::Write::write_all(&mut std::io::stdout(), &plain)?;
        }
        ConfigCommand::Check { key, input } => {
            let config = ServerConfig::load(&input, key.ring()?.as_ref())?;
            config.policy()?;
            say!(
                "{}: ok (socket {}, TLS {}, {} allowed uid(s), {} allowed group(s))",
                input.display(),
                config.socket.display(),
                config.tls_mode()?,
                config.access.allow_uids.len(),
                config.access.allow_groups.len()
            );
        }
        ConfigCommand::Example => say!("{}", settings::EXAMPLE),
    }
    Ok(())
}
