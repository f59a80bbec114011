//! A TCP relay between a gateway and PostgreSQL that a test can cut: `down` resets
//! every connection and refuses new ones (a crashed or restarting server, a
//! rebooted router), `black_hole` keeps connections open but forwards nothing in
//! either direction (a partition that drops packets), `up` heals.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    /// Existing connections are reset; new ones are accepted and reset at once.
    Down,
    BlackHole,
    /// Connections opened before generation `.0` stay silent forever (their
    /// state was lost on the way: no reset ever comes); newer ones pass.
    Severed(u64),
}

pub struct Relay {
    pub addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    /// Connections are numbered by the generation they were opened in.
    generation: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        // Connections end with their tasks once the mode says so.
        self.mode.send_replace(Mode::Down);
    }
}

impl Relay {
    /// A relay to `target` (PostgreSQL).
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Pass);
        let mode = Arc::new(mode);
        let accepting = mode.clone();
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let numbering = generation.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let born = numbering.load(std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(pump(client, target, born, accepting.subscribe()));
            }
        });
        Self {
            addr,
            mode,
            generation,
            task,
        }
    }

    /// `url` (a PostgreSQL URL) with its host and port replaced by the relay's.
    pub fn url(&self, url: &str) -> String {
        let (scheme_user, rest) = url.split_once('@').unwrap();
        let path = &rest[rest.find('/').unwrap()..];
        format!("{scheme_user}@{}{path}", self.addr)
    }

    pub fn down(&self) {
        self.mode.send_replace(Mode::Down);
    }

    pub fn black_hole(&self) {
        self.mode.send_replace(Mode::BlackHole);
    }

    pub fn up(&self) {
        self.mode.send_replace(Mode::Pass);
    }

    /// Heals for new connections only: every connection open now stays silent
    /// forever, as when a firewall or NAT between them forgot their state.
    pub fn sever(&self) {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        self.mode.send_replace(Mode::Severed(generation));
    }
}

/// Relays one connection as the mode says.
async fn pump(client: TcpStream, target: SocketAddr, born: u64, mut mode: watch::Receiver<Mode>) {
    let reset = |stream: &TcpStream| {
        let _ = stream.set_zero_linger();
    };
    if *mode.borrow() == Mode::Down {
        reset(&client);
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        reset(&client);
        return;
    };
    reset(&client);
    reset(&server);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        let current = match *mode.borrow_and_update() {
            Mode::Severed(generation) if born < generation => Mode::BlackHole,
            Mode::Severed(_) => Mode::Pass,
            other => other,
        };
        match current {
            // Dropping both streams with linger 0 sends RST both ways.
            Mode::Down => return,
            Mode::BlackHole | Mode::Severed(_) => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            Mode::Pass => {
                tokio::select! {
                    read = client_read.read(&mut up) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if server_write.write_all(&up[..n]).await.is_err() {
                                return;
                            }
                        }
                    },
                    read = server_read.read(&mut down) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if client_write.write_all(&down[..n]).await.is_err() {
                                return;
                            }
                        }
                    },
                    changed = mode.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}
