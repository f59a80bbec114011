//! The supervised child of `portcullis serve [options] -- CMD ARGS...`: the
//! application behind the gateway, started with the internal credential in its
//! environment, stopped when the gateway stops; the gateway exits if it dies.

use std::path::Path;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use portcullis_core::secret::SecretString;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// How long the child may take to exit after `SIGTERM` before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Environment variables of the gateway that the child must not inherit: the
/// secret key, database URLs (which may hold passwords), password hashes.
fn is_private(name: &str) -> bool {
    name.starts_with("PORTCULLIS_") || name.starts_with("AUTH_BASIC_")
}

/// What the child is told about the gateway in its environment.
#[derive(Debug)]
pub struct ChildEnv {
    pub credential: SecretString,
    /// The gateway's own loopback URL, for the child's processes to connect to.
    pub gateway_url: String,
    pub public_url: String,
    pub auth_prefix: String,
    /// The port the child should listen on when the gateway chose it.
    pub port: Option<u16>,
}

/// A running child, in its own process group so signals reach its helpers too.
#[derive(Debug)]
pub struct Supervised {
    child: Child,
    pid: Option<Pid>,
}

pub fn spawn(command: &[String], env: &ChildEnv) -> anyhow::Result<Supervised> {
    let (program, args) = command.split_first().context("no command given after --")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_private) {
            cmd.env_remove(name);
        }
    }
    cmd.env(portcullis_core::internal::ENV_VAR, env.credential.expose())
        .env("PORTCULLIS_URL", &env.gateway_url)
        .env("PORTCULLIS_PUBLIC_URL", &env.public_url)
        .env("PORTCULLIS_AUTH_PREFIX", &env.auth_prefix);
    if let Some(port) = env.port {
        cmd.env("PORT", port.to_string());
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting the child command {program:?}"))?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    tracing::info!(command = %program, pid = ?child.id(), "started the child");
    Ok(Supervised { child, pid })
}

impl Supervised {
    /// Runs until the child exits (reported on `died`) or `stop` fires (then the
    /// child's process group gets `SIGTERM`, and `SIGKILL` after [`STOP_GRACE`]).
    pub async fn supervise(
        mut self,
        stop: oneshot::Receiver<()>,
        died: oneshot::Sender<ExitStatus>,
    ) {
        tokio::select! {
            status = self.child.wait() => match status {
                Ok(status) => {
                    let _ = died.send(status);
                }
                Err(error) => tracing::error!(%error, "lost track of the child"),
            },
            _ = stop => self.stop().await,
        }
    }

    async fn stop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = kill_process_group(pid, Signal::TERM);
        }
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(Ok(status)) => tracing::info!(%status, "the child stopped"),
            Ok(Err(error)) => tracing::warn!(%error, "could not wait for the child"),
            Err(_) => {
                tracing::warn!(
                    "the child did not stop within {}s of SIGTERM; killing it",
                    STOP_GRACE.as_secs()
                );
                if let Some(pid) = self.pid {
                    let _ = kill_process_group(pid, Signal::KILL);
                }
                let _ = self.child.wait().await;
            }
        }
    }
}

/// The gateway's exit code when its child exited with `status`: the child's own
/// code, or 128 + the signal that killed it (the shell's convention).
pub fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Writes the credential to `path`, readable by its owner only (0600), replacing
/// any earlier file atomically so a reader never sees a partial value.
pub fn write_credential_file(path: &Path, credential: &SecretString) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .context("--internal-credential-file must name a file")?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    crate::commands::write_private(&tmp, format!("{}\n", credential.expose()).as_bytes())?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_variables_are_not_inherited() {
        for (name, private) in [
            ("PORTCULLIS_SECRET_KEY", true),
            ("PORTCULLIS_DATABASE", true),
            ("AUTH_BASIC_USERS", true),
            ("AUTH_BASIC_ADMINS", true),
            ("PATH", false),
            ("HOME", false),
            ("JUPYTER_TOKEN", false),
        ] {
            assert_eq!(is_private(name), private, "{name}");
        }
    }

    #[test]
    fn exit_codes_mirror_the_child() {
        use std::os::unix::process::ExitStatusExt as _;
        for (raw, expected) in [(0, 0u8), (3 << 8, 3), (9, 137), (15, 143)] {
            assert_eq!(
                exit_code(ExitStatus::from_raw(raw)),
                ExitCode::from(expected),
                "{raw}"
            );
        }
    }

    #[test]
    fn the_credential_file_is_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!(
            "portcullis-cred-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("internal.cred");
        std::fs::write(&path, "stale").unwrap();
        write_credential_file(&path, &SecretString::new("pci_x")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "pci_x\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
