//! Where the confirmation e-mails go (`.eml` files through lettre's file transport, no mail server
//! needed; or an SMTP server named by the environment), and what the listener reports it sent.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc::UnboundedSender;

use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, Tokio1Executor};

/// How e-mails leave: as files, or to an SMTP server.
#[derive(Debug, Clone)]
pub enum Mailer {
    Files(AsyncFileTransport<Tokio1Executor>, PathBuf),
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

impl Mailer {
    /// `SMTP_HOST` (with `SMTP_PORT`, `SMTP_USER`, `SMTP_PASSWORD`) when set; else `.eml` files
    /// in `MAIL_DIR`, or in `default_dir`.
    pub fn from_env(default_dir: &Path) -> anyhow::Result<Self> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(host) = env("SMTP_HOST") {
            let port = match env("SMTP_PORT") {
                Some(p) => p
                    .parse()
                    .map_err(|_| anyhow::anyhow!("SMTP_PORT is not a port: {p}"))?,
                None => 25,
            };
            let mut smtp = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(port);
            if let (Some(user), Some(password)) = (env("SMTP_USER"), env("SMTP_PASSWORD")) {
                smtp = smtp.credentials(Credentials::new(user, password));
            }
            return Ok(Mailer::Smtp(smtp.build()));
        }
        Ok(Self::files(
            env("MAIL_DIR").map_or_else(|| default_dir.to_owned(), PathBuf::from),
        )?)
    }

    /// `.eml` files in `dir` (created if need be).
    pub fn files(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Mailer::Files(AsyncFileTransport::new(&dir), dir))
    }
}

/// An e-mail the listener sent.
#[derive(Debug, Clone)]
pub struct SentMail {
    pub to: String,
    pub subject: String,
    /// The `.eml` file, with the file transport.
    pub file: Option<PathBuf>,
}

/// What the listener needs: the mailer, and where to report what it sent.
#[derive(Debug)]
pub struct MailRoom {
    pub mailer: Mailer,
    pub sent: UnboundedSender<SentMail>,
}
