//! `hotline-gateway`: command line, logging and runtime; everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use hotline_gateway::config::Config;

// glibc malloc showed up as a quarter of the CPU under SIPp load (many small per-message
// allocations across worker threads); mimalloc's thread-local heaps remove most of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// SIP/RTP gateway linking the 12345 hotline and the 110 police desk.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short, default_value = "config/gateway.toml")]
    config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print call records from the store: the newest as a table, or call detail records
    /// (with their transfers and conference guests) as JSON Lines or CSV.
    Calls {
        /// At most this many calls (default: 20 for the table; every call since `--since` for
        /// json and csv).
        #[arg(long)]
        limit: Option<usize>,
        /// `table`, `json` (one object per line) or `csv`.
        #[arg(long, default_value = "table")]
        format: hotline_gateway::cli::CallsFormat,
        /// The calls started since then, oldest first: `24h`, `30m`, `7d`, `2026-12-04`,
        /// `2026-12-04T08:00+08:00` or Unix ms (default: the newest calls for the table, the
        /// last 24 h for json and csv).
        #[arg(long)]
        since: Option<String>,
    },
    /// The figures of the calls in the store: per platform and desk, offered, answered,
    /// abandoned, the answer rate and service level; the linkages by kind and direction.
    Stats {
        /// The calls started since then (as `calls --since`; default 24h).
        #[arg(long)]
        since: Option<String>,
        /// The service level: answered within this many seconds.
        #[arg(long, default_value_t = 20)]
        within: u64,
    },
    /// Follow a platform's work-order events on the running gateway, one line each (never
    /// acknowledges them).
    Events {
        /// The `[[platform]]` whose stream to follow (its token comes from the configuration).
        #[arg(long)]
        platform: String,
        /// Start after this sequence (0: from the first kept); without it, after the last one
        /// the platform acknowledged.
        #[arg(long)]
        from: Option<u64>,
        /// Add to each line how long the event took from the gateway's clock at the moment
        /// it happened to its arrival here (`delay_us=`; meaningful on the gateway's host).
        #[arg(long)]
        delay: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("hotline-gateway: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        if let Some((key, address)) = config.address_not_on_host() {
            eprintln!(
                "hotline-gateway: {}: key `{key}`: {address} is not an address of this host",
                cli.config.display()
            );
            return ExitCode::from(2);
        }
        let budget = hotline_gateway::limits::Budget::from(&config);
        let limit = hotline_gateway::limits::raise();
        if let Some(reason) = hotline_gateway::limits::shortfall(&budget, &limit) {
            eprintln!("hotline-gateway: {}: {reason}", cli.config.display());
            return ExitCode::from(2);
        }
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Events {
        platform,
        from,
        delay,
    }) = &cli.command
    {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                eprintln!("hotline-gateway: cannot start the runtime: {error}");
                return ExitCode::FAILURE;
            }
        };
        let mut out = std::io::stdout();
        let options = hotline_gateway::workorder::tail::TailOptions {
            from: *from,
            delay: *delay,
        };
        let link = hotline_gateway::workorder::tail::LinkSettings::from(&config);
        return match runtime.block_on(hotline_gateway::workorder::tail::tail(
            &link, platform, options, &mut out,
        )) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("hotline-gateway: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Stats { since, within }) = &cli.command {
        let now = hotline_gateway::store::unix_millis(std::time::SystemTime::now());
        let peers: std::collections::HashMap<String, Option<String>> = config
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.platform.clone()))
            .collect();
        let platform_of = |peer: &str| peers.get(peer).cloned().flatten();
        let router = hotline_gateway::routing::Router::from(&config);
        let route_of = |number: &str, at: i64| router.route_name_at(number, at);
        let location = config.store.location();
        return match hotline_gateway::cli::stats(
            &location,
            (platform_of, route_of),
            since.as_deref(),
            *within,
            now,
        ) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("hotline-gateway: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Calls {
        limit,
        format,
        since,
    }) = cli.command
    {
        return print_calls(&config, limit, format, since.as_deref());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    abort_on_panic();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hotline-gateway: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        hotline_gateway::shutdown::on_signal(shutdown.clone());
        match hotline_gateway::start(config, shutdown).await {
            Ok(running) => {
                running.wait().await;
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(%error, "cannot start");
                eprintln!("hotline-gateway: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// A panic anywhere (the endpoint's task, a call's task, the store writer, a relay thread)
/// ends the process, so that the supervisor restarts it and the next start closes the records
/// left open; unwinding would leave a process up that no longer handles SIP. (Release builds
/// are also built with `panic = "abort"`; this covers every build.)
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(%info, "panic: the gateway stops at once (the supervisor restarts it)");
        report(info);
        std::process::abort();
    }));
}

/// `calls`: the records the store holds, as `format` prints them.
fn print_calls(
    config: &Config,
    limit: Option<usize>,
    format: hotline_gateway::cli::CallsFormat,
    since: Option<&str>,
) -> ExitCode {
    let now = hotline_gateway::store::unix_millis(std::time::SystemTime::now());
    let location = config.store.location();
    match hotline_gateway::cli::calls(&location, limit, format, since, now) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("hotline-gateway: {error}");
            ExitCode::FAILURE
        }
    }
}
