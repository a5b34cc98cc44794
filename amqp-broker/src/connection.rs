//! (in progress)
use std::{net::SocketAddr, sync::Arc};
use tokio::{net::TcpStream, sync::watch};
use crate::{broker::Signal, config::Config, vhost::Vhost};
pub(crate) struct Context { pub config: Arc<Config>, pub vhost: Arc<Vhost>, pub signal: watch::Receiver<Signal> }
pub(crate) async fn serve(socket: TcpStream, _peer: SocketAddr, ctx: Context) { let _ = (socket, ctx.config, ctx.vhost, ctx.signal); }
