//! registration_email: signing up decoupled from the confirmation e-mail (the notes' 异步通信
//! for 用户注册 → 发送邮件). Registering checks the address, publishes a `UserRegistered` event and
//! returns at once; a listener composes the confirmation e-mail and sends it through `lettre`, a
//! real mail library. A slow or unreachable mail server delays the e-mail, never the sign-up, and
//! an e-mail that fails to send is retried from the queue instead of being lost.
//!
//! Mail goes to `.eml` files (lettre's file transport) in `MAIL_DIR` (default: a folder under the
//! system's temp dir), so no mail server is needed. With `SMTP_HOST` set it goes to that server
//! instead (`SMTP_PORT`, default 25; `SMTP_USER` and `SMTP_PASSWORD` if it wants a login; plain
//! SMTP without TLS, as a local relay such as MailHog speaks it).
//!
//! ```text
//! cargo run -p examples --example registration_email                                  # embedded broker
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p examples --example registration_email
//! MAIL_DIR=/tmp/mail cargo run -p examples --example registration_email               # choose the folder
//! ```

#[path = "registration_email/mailer.rs"]
mod mailer;

use std::fmt;
use std::time::{Duration, Instant};

use amqp_core::{App, ListenerError, State, Template, rabbit_listener};
use lettre::Address;
use lettre::AsyncTransport;
use lettre::message::{Mailbox, header::ContentType};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::unbounded_channel;

pub use mailer::{MailRoom, Mailer, SentMail};

/// The listeners of this example (their ids).
pub const LISTENERS: [&str; 1] = ["registration_email.confirm"];

/// Where user events are published.
const USERS_EXCHANGE: &str = "registration_email.users";

/// What the user service announces once a user signed up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRegistered {
    pub name: String,
    pub email: String,
    /// The secret in the confirmation link.
    pub code: String,
}

/// The user service: checks the address, publishes the event, and returns without waiting for
/// any mail to be sent. A bad address is refused here, before anything is queued.
pub async fn register(
    template: &Template,
    name: &str,
    email: &str,
) -> anyhow::Result<UserRegistered> {
    let address: Address = email.trim().parse().map_err(|e| {
        anyhow::anyhow!("cannot register {name}: '{email}' is not an e-mail address ({e})")
    })?;
    let user = UserRegistered {
        name: name.to_owned(),
        email: address.to_string(),
        code: uuid::Uuid::new_v4().simple().to_string(),
    };
    template
        .convert_and_send(USERS_EXCHANGE, "user.registered", &user)
        .await?;
    Ok(user)
}

/// Composes and sends the confirmation e-mail. A failure to send goes back to the queue.
#[rabbit_listener(
    id = "registration_email.confirm",
    queue = "registration_email.confirmations",
    exchange = "registration_email.users",
    exchange_type = "topic",
    key = "user.registered"
)]
async fn send_confirmation(
    State(room): State<MailRoom>,
    user: UserRegistered,
) -> Result<(), ListenerError> {
    let subject = format!("Welcome, {}: please confirm your address", user.name);
    // Checked at sign-up; an address that is bad here would never send: rejected, not retried.
    let address: Address = user.email.parse().map_err(ListenerError::reject)?;
    let to = Mailbox::new(Some(user.name.clone()), address);
    let mail = lettre::Message::builder()
        .from(
            "Shop <no-reply@shop.example>"
                .parse()
                .map_err(ListenerError::reject)?,
        )
        .to(to)
        .subject(&subject)
        .header(ContentType::TEXT_PLAIN)
        .body(format!(
            "Hello {},\n\nconfirm your address by opening\nhttps://shop.example/confirm?code={}\n",
            user.name, user.code
        ))
        .map_err(ListenerError::reject)?;
    let file = match &room.mailer {
        Mailer::Files(files, dir) => {
            let id = files.send(mail).await.map_err(ListenerError::requeue)?;
            Some(dir.join(format!("{id}.eml")))
        }
        Mailer::Smtp(smtp) => {
            smtp.send(mail).await.map_err(ListenerError::requeue)?;
            None
        }
    };
    let _ = room.sent.send(SentMail {
        to: user.email,
        subject,
        file,
    });
    Ok(())
}

/// The demo's outcome: how long each sign-up took, and the e-mails sent.
#[derive(Debug)]
pub struct Report {
    pub registered: Vec<(UserRegistered, Duration)>,
    pub refused: Vec<String>,
    pub mails: Vec<SentMail>,
}

/// The people who sign up in the demo; the last address is not one.
pub const SIGN_UPS: [(&str, &str); 4] = [
    ("Ann", "ann@example.com"),
    ("Bob", "bob@example.org"),
    ("Chen", "chen@example.net"),
    ("Dan", "dan-at-example.com"),
];

/// Signs the demo users up and waits for their e-mails.
pub async fn run(app: App, mailer: Mailer) -> anyhow::Result<Report> {
    let (sent, mut mails_rx) = unbounded_channel();
    let app = app
        .listeners(LISTENERS)
        .state(MailRoom { mailer, sent })
        .start()
        .await?;
    let mut report = Report {
        registered: Vec::new(),
        refused: Vec::new(),
        mails: Vec::new(),
    };
    for (name, email) in SIGN_UPS {
        let started = Instant::now();
        match register(app.template(), name, email).await {
            Ok(user) => report.registered.push((user, started.elapsed())),
            Err(e) => report.refused.push(e.to_string()),
        }
    }
    while report.mails.len() < report.registered.len() {
        match tokio::time::timeout(Duration::from_secs(10), mails_rx.recv()).await {
            Ok(Some(mail)) => report.mails.push(mail),
            _ => anyhow::bail!(
                "only {} of {} e-mails were sent",
                report.mails.len(),
                report.registered.len()
            ),
        }
    }
    app.shutdown().await;
    Ok(report)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (user, took) in &self.registered {
            writeln!(
                f,
                "registered {} <{}> in {:.1} ms",
                user.name,
                user.email,
                took.as_secs_f64() * 1e3
            )?;
        }
        for why in &self.refused {
            writeln!(f, "refused: {why}")?;
        }
        writeln!(f, "\nconfirmation e-mails sent by the listener:")?;
        for mail in &self.mails {
            let place = mail
                .file
                .as_ref()
                .map_or("SMTP".into(), |p| p.display().to_string());
            writeln!(f, "  to {:<18} \"{}\"  -> {place}", mail.to, mail.subject)?;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,amqp_core::app=info".into()),
        )
        .init();
    let default_dir =
        std::env::temp_dir().join(format!("registration_email-{}", std::process::id()));
    let report = run(App::new(), Mailer::from_env(&default_dir)?).await?;
    print!("\n{report}");
    Ok(())
}
