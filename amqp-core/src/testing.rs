//! A test harness for applications: start an [`App`] on an embedded broker in one line, publish,
//! wait for a listener to have been called, and look at what it received and returned, or at what
//! went to a dead-letter queue. The broker is the real one, so routing is RabbitMQ's, not a fake's.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> amqp_core::Result<()> {
//! use std::time::Duration;
//! use amqp_core::testing::TestApp;
//!
//! // Every #[rabbit_listener] in the program, on a fresh embedded broker.
//! let app = TestApp::start().await?;
//! // app.template().convert_and_send("login", "login.ok", &event).await?;
//! // let calls = app.calls("record_login", 1, Duration::from_secs(5)).await?;
//! // assert_eq!(calls[0].payload::<LoginEvent>()?, event);
//! app.shutdown().await;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::app::definition::ListenerDefinition;
use crate::app::{App, RunningApp};
use crate::error::{Error, Result};
use crate::extract::{Delivery, Outcome};
use crate::message::{Message, Metadata};
use crate::template::Template;

/// A running app on an embedded broker that records every call of every listener.
#[derive(Debug)]
pub struct TestApp {
    running: RunningApp,
    recorder: Arc<Recorder>,
}

/// One call of a listener.
#[derive(Clone, Debug)]
pub struct Call {
    /// The listener's id.
    pub listener: &'static str,
    /// The body it was given.
    pub body: Vec<u8>,
    /// The delivery's metadata.
    pub metadata: Metadata,
    /// How it ended.
    pub outcome: CallOutcome,
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// The handler returned `Ok`; with the reply's body when it returned a value.
    Ok {
        /// The serialized reply, if any.
        reply: Option<Vec<u8>>,
    },
    /// The handler failed (returned `Err` or panicked).
    Failed(String),
    /// The body did not convert to the handler's payload type.
    Undecodable(String),
}

impl Call {
    /// The body as the payload type (JSON).
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Deserialize {
            type_name: std::any::type_name::<T>(),
            content_type: None,
            source: Box::new(e),
        })
    }

    /// The reply the handler returned, if any (JSON).
    pub fn reply<T: DeserializeOwned>(&self) -> Option<T> {
        match &self.outcome {
            CallOutcome::Ok { reply: Some(body) } => serde_json::from_slice(body).ok(),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    changed: Notify,
}

impl TestApp {
    /// Every registered listener on a fresh embedded broker.
    pub async fn start() -> Result<Self> {
        Self::start_with(App::new().embedded()).await
    }

    /// An app configured by the caller (`App::new().listeners([...]).state(...)`); it runs on
    /// an embedded broker unless the app was given a URL.
    pub async fn start_with(app: App) -> Result<Self> {
        let recorder = Arc::new(Recorder::default());
        let spy_recorder = recorder.clone();
        let spy = Arc::new(
            move |def: &ListenerDefinition, d: &Delivery, outcome: &Outcome| {
                let outcome = match outcome {
                    Outcome::Done(reply) => CallOutcome::Ok {
                        reply: reply.as_ref().map(|(body, _)| body.clone()),
                    },
                    Outcome::Failed(e) => CallOutcome::Failed(e.to_string()),
                    Outcome::Undecodable(e) => CallOutcome::Undecodable(e.to_string()),
                };
                let call = Call {
                    listener: def.id,
                    body: d.body.clone(),
                    metadata: d.meta.clone(),
                    outcome,
                };
                spy_recorder.calls.lock().push(call);
                spy_recorder.changed.notify_waiters();
            },
        );
        let running = app.spy(spy).start().await?;
        Ok(Self { running, recorder })
    }

    /// A template on the app's connection, to publish with.
    pub fn template(&self) -> &Template {
        self.running.template()
    }

    /// The running app.
    pub fn app(&self) -> &RunningApp {
        &self.running
    }

    /// Waits until `listener` (its id, or the last part of it) has been called at least `n`
    /// times, and returns its calls so far; an error after `timeout`.
    pub async fn calls(&self, listener: &str, n: usize, timeout: Duration) -> Result<Vec<Call>> {
        let matches =
            |c: &Call| c.listener == listener || c.listener.rsplit("::").next() == Some(listener);
        let wait = async {
            loop {
                let changed = self.recorder.changed.notified();
                let calls: Vec<Call> = self
                    .recorder
                    .calls
                    .lock()
                    .iter()
                    .filter(|c| matches(c))
                    .cloned()
                    .collect();
                if calls.len() >= n {
                    return calls;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            let got = self
                .recorder
                .calls
                .lock()
                .iter()
                .filter(|c| matches(c))
                .count();
            Error::Configuration(format!(
                "listener '{listener}' was called {got} times, not {n}, within {timeout:?}"
            ))
        })
    }

    /// Takes `n` messages from `queue` (a dead-letter queue, say), waiting up to `timeout`.
    pub async fn messages(&self, queue: &str, n: usize, timeout: Duration) -> Result<Vec<Message>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.template().receive(queue, left).await? {
                Some(m) => out.push(m),
                None => {
                    return Err(Error::Configuration(format!(
                        "{} of {n} messages arrived in '{queue}' within {timeout:?}",
                        out.len()
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Stops the app and its broker.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }
}
