//! Who may do what where: users (with RabbitMQ-format password hashes and tags), virtual hosts,
//! and each user's configure/write/read permissions per vhost, as RabbitMQ's internal
//! authentication and authorisation backend keeps them.
//!
//! [`Access`] is the one registry: connections look their vhost and permissions up here, and
//! the management API changes it. With a data directory it is durable: users, vhosts and
//! permissions live in `access.json` there (a RabbitMQ definitions document with only those
//! three sections), rewritten atomically on every change. The vhost `/` keeps its store in the
//! data directory itself (where the broker always kept it); every other vhost has its own
//! store under `vhosts/<percent-encoded name>/`.
//!
//! At start the configured users ([`crate::Config::users`], the binary's `--user`, guest/guest
//! by default) are (re)created as administrators with full permissions on `/`, as RabbitMQ
//! creates its default user; then `definitions_file`, if any, is imported (RabbitMQ's
//! `load_definitions`).

pub(crate) mod definitions;
pub(crate) mod password;
pub(crate) mod permission;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use amq_protocol::types::ShortString;
use parking_lot::{Mutex, RwLock};

use crate::config::Config;
use crate::error::AmqpResult;
use crate::exchange::Destination;
use crate::memory::MemoryMonitor;
use crate::store::io::FileStorage;
use crate::store::{Recovered, Store, StoreOptions};
use crate::vhost::{ExchangeFlags, QueueFlags, QueueLimits, Vhost};
use definitions::{Document, PermissionDef, Tags, UserDef, VhostDef};
use password::PasswordHash;
use permission::{Kind, Op, Permission};

/// The default vhost, which always exists.
pub(crate) const DEFAULT_VHOST: &str = "/";

/// The file in the data directory holding users, vhosts and permissions.
const ACCESS_FILE: &str = "access.json";

/// The tags that let a user into the management API (RabbitMQ's management plugin).
const MANAGEMENT_TAGS: [&str; 4] = ["management", "policymaker", "monitoring", "administrator"];

/// A user as the registry keeps it.
#[derive(Clone, Debug)]
pub(crate) struct UserRecord {
    pub hash: PasswordHash,
    /// RabbitMQ's user tags (`administrator`, `monitoring`, `management`, `policymaker`, or
    /// any other text, which RabbitMQ keeps and ignores).
    pub tags: Vec<String>,
}

impl UserRecord {
    /// Whether the user may log into the management API.
    pub fn is_management(&self) -> bool {
        self.tags
            .iter()
            .any(|t| MANAGEMENT_TAGS.contains(&t.as_str()))
    }

    /// Whether the user may manage users, vhosts, permissions and definitions.
    pub fn is_administrator(&self) -> bool {
        self.tags.iter().any(|t| t == "administrator")
    }
}

/// Users, vhosts and permissions (see the module docs).
#[derive(Debug)]
pub(crate) struct Access {
    state: RwLock<State>,
    /// Users who may connect from loopback addresses only (RabbitMQ's `loopback_users`).
    loopback_users: Vec<String>,
    /// Shared by every vhost: flow control counts the broker's memory, not a vhost's.
    pub memory: Arc<MemoryMonitor>,
    /// The broker's caps on every queue of every vhost (`--queue-max-length-bytes`).
    limits: QueueLimits,
    data_dir: Option<PathBuf>,
    store_options: StoreOptions,
    /// Held while `access.json` is written, so two changes never write it at once.
    saving: Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    users: BTreeMap<String, UserRecord>,
    vhosts: BTreeMap<String, Arc<Vhost>>,
    /// vhost → user → permission.
    permissions: HashMap<String, HashMap<String, Arc<Permission>>>,
}

impl Access {
    /// Builds the registry at start (see the module docs). `root` is the store of `/` and what
    /// it recovered, when there is a data directory. Blocking: opens and recovers vhost stores.
    pub fn open(
        config: &Config,
        memory: Arc<MemoryMonitor>,
        root: Option<(Arc<Store>, Recovered)>,
    ) -> Result<Arc<Self>, String> {
        let store_options = StoreOptions {
            segment_bytes: config.segment_bytes,
            queue_memory_budget_bytes: config.queue_memory_budget_bytes,
        };
        let limits = QueueLimits {
            max_length_bytes: config.queue_max_length_bytes,
        };
        let access = Arc::new(Self {
            state: RwLock::new(State::default()),
            loopback_users: config.loopback_users.clone(),
            memory: memory.clone(),
            data_dir: config.data_dir.clone(),
            store_options,
            limits,
            saving: Mutex::new(()),
        });
        let default = match root {
            Some((store, recovered)) => {
                let vhost = Vhost::with_limits(DEFAULT_VHOST, Some(store), memory, limits);
                vhost.restore(recovered);
                vhost
            }
            None => Vhost::with_limits(DEFAULT_VHOST, None, memory, limits),
        };
        access
            .state
            .write()
            .vhosts
            .insert(DEFAULT_VHOST.to_owned(), default);
        if let Some(dir) = &access.data_dir {
            let path = dir.join(ACCESS_FILE);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let doc =
                        Document::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                    access
                        .import_access(&doc)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
        }
        for user in &config.users {
            access.put_user_record(
                &user.name,
                UserRecord {
                    hash: PasswordHash::new(&user.password),
                    tags: vec!["administrator".to_owned()],
                },
            );
            access.put_permission(DEFAULT_VHOST, &user.name, Permission::full());
        }
        if let Some(file) = &config.definitions_file {
            let bytes = std::fs::read(file)
                .map_err(|e| format!("cannot read definitions {}: {e}", file.display()))?;
            let doc = Document::parse(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
            access
                .import(&doc, None)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            tracing::info!(file = %file.display(), "definitions loaded");
        }
        access.save()?;
        Ok(access)
    }

    // ----- lookups (connections) -----

    /// The user `name` if `password` is theirs.
    pub fn authenticate(&self, name: &str, password: &str) -> Option<UserRecord> {
        let state = self.state.read();
        let user = state.users.get(name)?;
        user.hash.verify(password).then(|| user.clone())
    }

    /// Whether `user` may connect from a loopback address only.
    pub fn is_loopback_only(&self, user: &str) -> bool {
        self.loopback_users.iter().any(|u| u == user)
    }

    /// The vhost named `name`.
    pub fn vhost(&self, name: &str) -> Option<Arc<Vhost>> {
        self.state.read().vhosts.get(name).cloned()
    }

    /// Every vhost, in name order.
    pub fn vhosts(&self) -> Vec<Arc<Vhost>> {
        self.state.read().vhosts.values().cloned().collect()
    }

    /// `user`'s permissions in `vhost`, if any.
    pub fn permission(&self, vhost: &str, user: &str) -> Option<Arc<Permission>> {
        self.state.read().permissions.get(vhost)?.get(user).cloned()
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<UserRecord> {
        self.state.read().users.get(name).cloned()
    }

    // ----- changes (management API, definitions) -----

    /// Creates or replaces a user; durable.
    pub fn put_user(&self, name: &str, record: UserRecord) -> Result<(), String> {
        self.put_user_record(name, record);
        self.save()
    }

    /// Deletes a user and their permissions; `false` if there was none.
    pub fn delete_user(&self, name: &str) -> Result<bool, String> {
        let existed = {
            let mut state = self.state.write();
            for perms in state.permissions.values_mut() {
                perms.remove(name);
            }
            state.users.remove(name).is_some()
        };
        self.save()?;
        Ok(existed)
    }

    /// Sets `user`'s permissions in `vhost` (both must exist); durable.
    pub fn set_permission(
        &self,
        vhost: &str,
        user: &str,
        permission: Permission,
    ) -> Result<(), String> {
        {
            let state = self.state.read();
            if !state.vhosts.contains_key(vhost) {
                return Err(format!("no vhost '{vhost}'"));
            }
            if !state.users.contains_key(user) {
                return Err(format!("no user '{user}'"));
            }
        }
        self.put_permission(vhost, user, permission);
        self.save()
    }

    /// Removes `user`'s permissions in `vhost`; `false` if there were none.
    pub fn clear_permission(&self, vhost: &str, user: &str) -> Result<bool, String> {
        let existed = self
            .state
            .write()
            .permissions
            .get_mut(vhost)
            .is_some_and(|p| p.remove(user).is_some());
        self.save()?;
        Ok(existed)
    }

    /// Every permission, by vhost then user.
    pub fn permissions(&self) -> Vec<PermissionDef> {
        let state = self.state.read();
        let mut all: Vec<PermissionDef> = state
            .permissions
            .iter()
            .flat_map(|(vhost, users)| {
                users.iter().map(move |(user, p)| PermissionDef {
                    user: user.clone(),
                    vhost: vhost.clone(),
                    configure: p.configure.source().to_owned(),
                    write: p.write.source().to_owned(),
                    read: p.read.source().to_owned(),
                })
            })
            .collect();
        all.sort_by(|a, b| (&a.vhost, &a.user).cmp(&(&b.vhost, &b.user)));
        all
    }

    /// Every user as definitions carry them.
    pub fn users(&self) -> Vec<UserDef> {
        self.state
            .read()
            .users
            .iter()
            .map(|(name, u)| UserDef {
                name: name.clone(),
                password_hash: u.hash.to_base64(),
                hashing_algorithm: u.hash.algorithm().name().to_owned(),
                tags: Tags(u.tags.clone()),
                limits: serde_json::Map::new(),
            })
            .collect()
    }

    /// Creates vhost `name` (with its store under the data directory); `false` if it existed.
    /// Blocking: opens the store.
    pub fn add_vhost(&self, name: &str) -> Result<bool, String> {
        let created = self.ensure_vhost(name)?;
        self.save()?;
        Ok(created)
    }

    /// Deletes vhost `name` with everything in it (its store directory too); `false` if there
    /// was none. The default vhost stays. Blocking: closes the store. The caller closes the
    /// vhost's connections.
    pub fn delete_vhost(&self, name: &str) -> Result<bool, String> {
        if name == DEFAULT_VHOST {
            return Err(format!(
                "the default vhost '{DEFAULT_VHOST}' cannot be deleted"
            ));
        }
        let removed = {
            let mut state = self.state.write();
            state.permissions.remove(name);
            state.vhosts.remove(name)
        };
        let Some(vhost) = removed else {
            return Ok(false);
        };
        if let Some(store) = vhost.store() {
            store.close();
        }
        if let Some(dir) = self.vhost_dir(name) {
            std::fs::remove_dir_all(&dir)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
        }
        self.save()?;
        Ok(true)
    }

    /// Syncs and closes every vhost's store (at shutdown).
    pub fn close(&self) {
        for vhost in self.vhosts() {
            if let Some(store) = vhost.store() {
                store.close();
            }
        }
    }

    // ----- definitions -----

    /// Everything as a RabbitMQ definitions document; with `only_vhost`, that vhost's
    /// exchanges, queues and bindings alone (RabbitMQ's per-vhost export).
    pub fn export(&self, only_vhost: Option<&str>) -> Document {
        let mut doc = if only_vhost.is_none() {
            self.access_document()
        } else {
            Document::versioned()
        };
        for vhost in self.vhosts() {
            if only_vhost.is_some_and(|only| only != vhost.name) {
                continue;
            }
            export_topology(&vhost, &mut doc);
        }
        doc
    }

    /// Applies a definitions document, in RabbitMQ's order: users, vhosts, permissions,
    /// exchanges, queues, bindings. With `into_vhost`, only exchanges, queues and bindings are
    /// read, all into that vhost (RabbitMQ's per-vhost import). Stops at the first item that
    /// cannot be applied, naming it. Blocking: may open vhost stores.
    pub fn import(&self, doc: &Document, into_vhost: Option<&str>) -> Result<(), String> {
        doc.warn_ignored();
        if into_vhost.is_none() {
            self.import_access(doc)?;
        }
        let vhost_of = |name: &str| {
            let name = into_vhost.unwrap_or(name);
            self.vhost(name).ok_or_else(|| format!("no vhost '{name}'"))
        };
        let context =
            |what: String| move |e: crate::error::AmqpError| format!("{what}: {}", e.text);
        for x in &doc.exchanges {
            let vhost = vhost_of(&x.vhost)?;
            let flags = ExchangeFlags {
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
            };
            vhost
                .declare_exchange(
                    &ShortString::from(x.name.as_str()),
                    &x.kind,
                    false,
                    flags,
                    &definitions::to_table(&x.arguments),
                )
                .map_err(context(format!("exchange '{}'", x.name)))?;
        }
        for q in &doc.queues {
            let vhost = vhost_of(&q.vhost)?;
            let flags = QueueFlags {
                durable: q.durable,
                exclusive: false,
                auto_delete: q.auto_delete,
            };
            vhost
                .declare_queue(
                    &ShortString::from(q.name.as_str()),
                    false,
                    flags,
                    &definitions::to_table(&q.arguments),
                    IMPORT_CONN,
                )
                .map_err(context(format!("queue '{}'", q.name)))?;
        }
        for b in &doc.bindings {
            let vhost = vhost_of(&b.vhost)?;
            let destination = match b.destination_type.as_str() {
                "queue" => Destination::Queue(b.destination.as_str().into()),
                "exchange" => Destination::Exchange(b.destination.as_str().into()),
                other => {
                    return Err(format!(
                        "binding from '{}': unknown destination_type '{other}'",
                        b.source
                    ));
                }
            };
            vhost
                .set_binding(
                    true,
                    &b.source.as_str().into(),
                    destination,
                    &b.routing_key.as_str().into(),
                    &definitions::to_table(&b.arguments),
                    IMPORT_CONN,
                )
                .map_err(context(format!(
                    "binding from '{}' to '{}'",
                    b.source, b.destination
                )))?;
        }
        self.save()
    }

    /// Users, vhosts and permissions from `doc` (not saved: the caller saves).
    fn import_access(&self, doc: &Document) -> Result<(), String> {
        for u in &doc.users {
            let hash = PasswordHash::from_base64(&u.hashing_algorithm, &u.password_hash)
                .map_err(|e| format!("user '{}': {e}", u.name))?;
            self.put_user_record(
                &u.name,
                UserRecord {
                    hash,
                    tags: u.tags.0.clone(),
                },
            );
        }
        for v in &doc.vhosts {
            self.ensure_vhost(&v.name)?;
        }
        for p in &doc.permissions {
            let permission = Permission::new(&p.configure, &p.write, &p.read)
                .map_err(|e| format!("permissions of '{}' in '{}': {e}", p.user, p.vhost))?;
            let state = self.state.read();
            if !state.vhosts.contains_key(&p.vhost) || !state.users.contains_key(&p.user) {
                return Err(format!(
                    "permissions of '{}' in '{}': no such user or vhost",
                    p.user, p.vhost
                ));
            }
            drop(state);
            self.put_permission(&p.vhost, &p.user, permission);
        }
        Ok(())
    }

    // ----- internals -----

    fn put_user_record(&self, name: &str, record: UserRecord) {
        self.state.write().users.insert(name.to_owned(), record);
    }

    fn put_permission(&self, vhost: &str, user: &str, permission: Permission) {
        self.state
            .write()
            .permissions
            .entry(vhost.to_owned())
            .or_default()
            .insert(user.to_owned(), Arc::new(permission));
    }

    /// Creates the vhost unless it exists; `true` if it was created.
    fn ensure_vhost(&self, name: &str) -> Result<bool, String> {
        if name.is_empty() || name.len() > 255 {
            return Err(format!("invalid vhost name '{name}' (1 to 255 bytes)"));
        }
        if self.vhost(name).is_some() {
            return Ok(false);
        }
        let vhost = match self.vhost_dir(name) {
            Some(dir) => {
                let (store, recovered) =
                    Store::open(Arc::new(FileStorage), &dir, self.store_options).map_err(|e| {
                        format!(
                            "cannot open the store of vhost '{name}' in {}: {e}",
                            dir.display()
                        )
                    })?;
                let vhost = Vhost::with_limits(name, Some(store), self.memory.clone(), self.limits);
                vhost.restore(recovered);
                vhost
            }
            None => Vhost::with_limits(name, None, self.memory.clone(), self.limits),
        };
        let mut state = self.state.write();
        // Another caller may have created it meanwhile; the first one stays.
        if state.vhosts.contains_key(name) {
            if let Some(store) = vhost.store() {
                store.close();
            }
            return Ok(false);
        }
        state.vhosts.insert(name.to_owned(), vhost);
        Ok(true)
    }

    /// Where a vhost other than `/` keeps its store.
    fn vhost_dir(&self, name: &str) -> Option<PathBuf> {
        let dir = self.data_dir.as_ref()?;
        let encoded =
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
        Some(dir.join("vhosts").join(encoded.to_string()))
    }

    /// The users, vhosts and permissions as a definitions document: what `access.json` holds,
    /// and what a full export starts with.
    fn access_document(&self) -> Document {
        let mut doc = Document::versioned();
        doc.users = self.users();
        doc.vhosts = self
            .vhosts()
            .iter()
            .map(|v| VhostDef {
                name: v.name.clone(),
                metadata: None,
                limits: serde_json::json!([]),
            })
            .collect();
        doc.permissions = self.permissions();
        doc
    }

    /// Rewrites `access.json` (temp file, fsync, rename), when there is a data directory.
    fn save(&self) -> Result<(), String> {
        let Some(dir) = &self.data_dir else {
            return Ok(());
        };
        let _saving = self.saving.lock();
        let doc = self.access_document();
        let bytes = serde_json::to_vec_pretty(&doc).expect("definitions serialize");
        write_atomically(&dir.join(ACCESS_FILE), &bytes)
            .map_err(|e| format!("cannot write {}: {e}", dir.join(ACCESS_FILE).display()))
    }
}

/// Appends `vhost`'s durable exchanges, queues and bindings to `doc`.
fn export_topology(vhost: &Vhost, doc: &mut Document) {
    let defs = vhost.durable_definitions();
    let name = &vhost.name;
    doc.exchanges
        .extend(defs.exchanges.iter().map(|x| definitions::ExchangeDef {
            name: x.name.to_string(),
            vhost: name.clone(),
            kind: x.kind.clone(),
            durable: true,
            auto_delete: x.auto_delete,
            internal: x.internal,
            arguments: definitions::from_table(&x.arguments),
        }));
    doc.queues
        .extend(defs.queues.iter().map(|q| definitions::QueueDef {
            name: q.name.to_string(),
            vhost: name.clone(),
            queue_type: Some(match q.arguments.inner().get("x-queue-type") {
                Some(amq_protocol::types::AMQPValue::LongString(t)) => {
                    String::from_utf8_lossy(t.as_bytes()).into_owned()
                }
                Some(amq_protocol::types::AMQPValue::ShortString(t)) => t.to_string(),
                _ => "classic".to_owned(),
            }),
            durable: true,
            auto_delete: q.auto_delete,
            arguments: definitions::from_table(&q.arguments),
        }));
    doc.bindings.extend(defs.bindings.iter().map(|b| {
        let (destination, destination_type) = match &b.destination {
            Destination::Queue(n) => (n.to_string(), "queue"),
            Destination::Exchange(n) => (n.to_string(), "exchange"),
        };
        definitions::BindingDef {
            source: b.source.to_string(),
            vhost: name.clone(),
            destination,
            destination_type: destination_type.to_owned(),
            routing_key: b.routing_key.to_string(),
            arguments: definitions::from_table(&b.arguments),
        }
    }));
}

/// The connection id under which imported queues are declared (none is exclusive, so no
/// connection owns them).
const IMPORT_CONN: crate::queue::ConnId = 0;

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// What a connection may do in the vhost it opened: permissions are looked up at each check,
/// so a change through the management API applies to open connections too (as in RabbitMQ,
/// apart from the publish cache, see [`crate::channel`]).
#[derive(Debug)]
pub(crate) struct Grant {
    access: Arc<Access>,
    vhost: String,
    user: String,
}

impl Grant {
    pub fn new(access: Arc<Access>, vhost: &str, user: &str) -> Self {
        Self {
            access,
            vhost: vhost.to_owned(),
            user: user.to_owned(),
        }
    }

    /// 403 ACCESS_REFUSED unless the user may do `op` on the resource.
    pub fn check(&self, op: Op, kind: Kind, name: &str) -> AmqpResult {
        let permission = self.access.permission(&self.vhost, &self.user);
        permission::check(
            permission.as_deref(),
            op,
            kind,
            name,
            &self.vhost,
            &self.user,
        )
    }
}
