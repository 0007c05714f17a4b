//! The control socket (`--control unix:PATH`, mode 0600) and the metrics endpoint
//! (`--metrics unix:PATH` or `tcp:HOST:PORT`).
//!
//! Control: a client writes one command line and reads the answer until the server closes:
//! `status` (the [`crate::stats::Status`] as JSON), `metrics` (Prometheus text) or `reload`
//! (read the configuration again, as SIGHUP does; the answer starts with `ok` or `refused`).
//! No command touches an export's files. Metrics: any HTTP request gets the Prometheus text,
//! so a scraper (or `curl --unix-socket PATH http://x/metrics`) reads it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tracing::{info, warn};

use crate::config::ListenAddr;
use crate::reload::Live;

/// Reads the next configuration (see [`crate::Reloader`]); `None` when there is no file.
pub type SharedReloader = Arc<Option<crate::Reloader>>;

/// One reload, as SIGHUP and `ferry ctl reload` do it: the answer line(s), `ok ...` or
/// `refused: ...`, also logged.
pub fn reload(live: &Live, reloader: &SharedReloader) -> String {
    let Some(reloader) = reloader.as_ref() else {
        info!("reload: no configuration file (--config) to read again; nothing changes");
        return "refused: ferry-host runs without --config; nothing to read again\n".into();
    };
    info!("reading the configuration again");
    match reloader().and_then(|next| live.reload(next)) {
        Ok(changes) => {
            if changes.is_empty() {
                info!("reload: no change");
            } else {
                info!(changes = changes.len(), "reload done");
            }
            let mut out = format!("ok: {} change(s)\n", changes.len());
            for c in changes {
                out += &c;
                out.push('\n');
            }
            out
        }
        Err(e) => {
            tracing::error!("reload refused, the running configuration stays: {e:#}");
            format!("refused, the running configuration stays: {e:#}\n")
        }
    }
}

/// Binds a Unix socket at `path` (a stale one is replaced) readable and writable by the
/// server's user only.
fn bind_private(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    Ok(l)
}

/// Serves the control socket at `path` until the runtime stops.
pub async fn serve_control(
    path: PathBuf,
    live: Arc<Live>,
    reloader: SharedReloader,
) -> anyhow::Result<()> {
    let listener = bind_private(&path)?;
    info!("control socket on {} (ferry status)", path.display());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let (live, reloader) = (live.clone(), reloader.clone());
            tokio::spawn(async move {
                let (rd, mut wr) = stream.into_split();
                let mut line = String::new();
                let mut rd = BufReader::new(rd.take(256));
                if rd.read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = match line.trim() {
                    "status" => {
                        serde_json::to_string(&live.stats.snapshot(&live.current().exports))
                            .unwrap_or_else(|e| format!("error: {e}"))
                            + "\n"
                    }
                    "metrics" => live.stats.snapshot(&live.current().exports).prometheus(),
                    "reload" => tokio::task::spawn_blocking(move || reload(&live, &reloader))
                        .await
                        .unwrap_or_else(|e| format!("refused: {e}\n")),
                    other => {
                        format!("error: unknown command {other:?} (status, metrics or reload)\n")
                    }
                };
                let _ = wr.write_all(answer.as_bytes()).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    Ok(())
}

/// Serves the Prometheus text over HTTP at `addr` (a Unix socket or TCP).
pub async fn serve_metrics(addr: ListenAddr, live: Arc<Live>) -> anyhow::Result<()> {
    async fn answer<S: tokio::io::AsyncRead + AsyncWrite + Unpin>(mut s: S, live: &Live) {
        // Read the request head (bounded); its contents do not matter.
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        while got < buf.len() {
            match s.read(&mut buf[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let body = live.stats.snapshot(&live.current().exports).prometheus();
        let head = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(body.as_bytes()).await;
        let _ = s.shutdown().await;
    }
    match addr {
        ListenAddr::Unix(path) => {
            let l = bind_private(&path)?;
            info!("metrics on unix:{}", path.display());
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    let live = live.clone();
                    tokio::spawn(async move { answer(s, &live).await });
                }
            });
        }
        ListenAddr::Tcp(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot bind tcp:{a}"))?;
            if !a.ip().is_loopback() {
                warn!("metrics on tcp:{a} are readable by anyone who can reach it");
            }
            info!("metrics on tcp:{a}");
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    let live = live.clone();
                    tokio::spawn(async move { answer(s, &live).await });
                }
            });
        }
        other => anyhow::bail!("--metrics {other}: expected unix:PATH or tcp:HOST:PORT"),
    }
    Ok(())
}
