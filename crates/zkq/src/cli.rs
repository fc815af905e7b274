//! Command-line pieces shared by the zkq binaries (feature `cli`): how to reach ZooKeeper,
//! durations, logging.

use std::time::Duration;

use crate::store::session::{Credentials, ZkConfig};
use crate::store::tls::TlsConfig;

/// Flags every zkq binary takes to reach ZooKeeper. `Debug` leaves the credentials out.
#[derive(Clone, clap::Args)]
pub struct ConnectArgs {
    /// ZooKeeper connect string, host:port[,host:port...]
    #[arg(
        long,
        global = true,
        env = "ZKQ_ZK",
        default_value = "127.0.0.1:2181",
        value_name = "HOST:PORT"
    )]
    pub zk: String,

    /// Root znode under which zkq keeps everything
    #[arg(
        long,
        global = true,
        env = "ZKQ_ROOT",
        default_value = "/zkq",
        value_name = "PATH"
    )]
    pub root: String,

    /// ZooKeeper session timeout: how long a silent process keeps its claims
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub session_timeout: Duration,

    /// How long to keep trying to reach ZooKeeper before giving up
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,

    /// ZooKeeper credentials, such as digest:user:password (repeatable). Other local users can
    /// see command-line arguments: prefer ZKQ_AUTH or --auth-file
    #[arg(
        long = "auth",
        global = true,
        env = "ZKQ_AUTH",
        hide_env_values = true,
        value_name = "SCHEME:CREDENTIALS"
    )]
    // Parsed by `zk_config`, not by clap, whose errors would repeat the value.
    pub auth: Vec<String>,

    /// A file of ZooKeeper credentials, one SCHEME:CREDENTIALS per line; refused if group or
    /// others may read it
    #[arg(long, global = true, env = "ZKQ_AUTH_FILE", value_name = "PATH")]
    pub auth_file: Option<std::path::PathBuf>,

    /// With credentials, every znode zkq creates is readable and writable only by sessions
    /// holding them; this grants read-only access to another identity too, such as
    /// world:anyone or digest:monitor:HASH (repeatable; several separated by ';', as in
    /// ZKQ_ACL_READ, since x509 names hold commas)
    #[arg(
        long = "acl-read",
        global = true,
        env = "ZKQ_ACL_READ",
        value_delimiter = ';',
        value_name = "SCHEME:ID"
    )]
    // Parsed by `zk_config`, not by clap, whose errors would repeat the value (a password given
    // by mistake for a digest hash).
    pub acl_read: Vec<String>,

    /// Reach ZooKeeper over TLS (its secureClientPort), trusting the CA certificates in this PEM
    /// file
    #[arg(long, global = true, env = "ZKQ_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// With --tls-ca: this client's certificate (PEM), for servers that ask for one (ZooKeeper's
    /// default)
    #[arg(
        long,
        global = true,
        env = "ZKQ_TLS_CERT",
        value_name = "PEM",
        requires = "tls_ca"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// With --tls-cert: its private key (PEM); refused if every local user may read it
    #[arg(
        long,
        global = true,
        env = "ZKQ_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ConnectArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectArgs")
            .field("zk", &self.zk)
            .field("root", &self.root)
            .field("session_timeout", &self.session_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("auth", &format_args!("({} given)", self.auth.len()))
            .field("auth_file", &self.auth_file)
            .field("acl_read", &self.acl_read)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

impl ConnectArgs {
    /// The connect config these flags describe.
    ///
    /// # Errors
    /// [`crate::Error::InvalidConfig`] for malformed credentials or an auth file that cannot be
    /// used (never repeating the credentials).
    pub fn zk_config(&self) -> crate::Result<ZkConfig> {
        let mut auth = Vec::with_capacity(self.auth.len());
        for text in &self.auth {
            auth.push(
                Credentials::parse(text)
                    .map_err(|e| crate::Error::InvalidConfig(format!("--auth (or ZKQ_AUTH): {e}")))?,
            );
        }
        if let Some(path) = &self.auth_file {
            auth.extend(Credentials::from_file(path)?);
        }
        let mut acl_read = Vec::with_capacity(self.acl_read.len());
        for text in &self.acl_read {
            acl_read
                .push(crate::store::acl::parse_acl_id(text).map_err(|e| {
                    crate::Error::InvalidConfig(format!("--acl-read (or ZKQ_ACL_READ): {e}"))
                })?);
        }
        Ok(ZkConfig {
            address: self.zk.clone(),
            session_timeout: self.session_timeout,
            connect_timeout: self.connect_timeout,
            auth,
            acl_read,
            tls: match &self.tls_ca {
                Some(ca) => Some(TlsConfig::from_files(
                    ca,
                    self.tls_cert.as_deref(),
                    self.tls_key.as_deref(),
                )?),
                None => None,
            },
        })
    }
}

/// Parses durations such as `250ms`, `5s`, `2m`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; use forms like 500ms, 5s, 2m, 1h"))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event
    #[default]
    Text,
    /// One JSON object per line; an attempt's events carry its job id, queue, kind and attempt
    /// (in its `job` span, under `span` or `spans`)
    Json,
}

/// The logging flag every zkq binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: text, or json (one object per line, for log shippers)
    #[arg(long, global = true, env = "ZKQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Starts logging in this format (see [`init_logging_as`]).
    pub fn init(&self, quiet: bool) {
        init_logging_as(quiet, self.log_format);
    }
}

/// Logs text to stderr (see [`init_logging_as`]).
pub fn init_logging(quiet: bool) {
    init_logging_as(quiet, LogFormat::Text);
}

/// Logs to stderr, at the level of `RUST_LOG` (default `info`, or `warn` when `quiet`). The
/// ZooKeeper client's own session chatter shows only from `error`: its warnings (a reconnect
/// that finds the session closed, after a clean close) say nothing zkq's own messages do not.
/// Text has colours only on a terminal; JSON has one object per line, with the fields of the
/// current span under `span` and of every enclosing one under `spans` (an attempt's job id,
/// queue, kind and attempt are in its `job` span).
pub fn init_logging_as(quiet: bool, format: LogFormat) {
    use std::io::IsTerminal;
    let default = if quiet {
        "warn,zookeeper_client=error"
    } else {
        "info,zookeeper_client=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A line that cannot be written (stderr closed: a log shipper gone, `| head`) is dropped.
    // Reporting it, as the subscriber does by default, prints to that same stderr, and a failed
    // print panics in whatever task logged: a job attempt, or the shutdown signal's.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
    }
}
