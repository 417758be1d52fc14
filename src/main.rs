//! The `weir` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir::logging::{self, LogFormat};

// glibc malloc showed up in profiles of the request path; mimalloc is faster there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration that cannot be used.
const EXIT_CONFIG: u8 = 2;
/// `weir loadtest`: the run completed but an SLO threshold failed.
const EXIT_SLO: u8 = 3;

#[derive(Parser)]
#[command(name = "weir", version, about = "Layer-7 load-balancing reverse proxy")]
struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file until SIGTERM/SIGINT, then drain.
    Serve {
        #[arg(long, short, default_value = "config/weir.toml")]
        config: PathBuf,
    },
    /// Validate a config file and exit: 0 when valid, 2 when not.
    CheckConfig { file: PathBuf },
    /// Start sample upstreams and weir, drive a short load through it, print a summary.
    Demo {
        /// Requests to send (bounded).
        #[arg(long, default_value_t = weir::demo::DEFAULT_REQUESTS)]
        requests: u64,
        /// Concurrent client connections.
        #[arg(long, default_value_t = weir::demo::DEFAULT_CONCURRENCY)]
        concurrency: usize,
    },
    /// Load-test a service (through weir or direct): closed or open model, stages,
    /// scenarios with SLOs; exits 3 when an SLO fails.
    Loadtest(Box<weir::loadtest::cli::LoadtestArgs>),
    /// Write a capacity report (HTML and JSON) from a control history file (the
    /// `[control] history_file` of a running weir). A live weir serves the same report
    /// at `GET /api/v1/report.html` on its admin port.
    Report {
        /// JSON-lines samples written by weir.
        #[arg(long)]
        history: PathBuf,
        /// Config whose `[control]` section sets the latency target, target rps, horizon.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Directory for capacity-report.html and capacity-report.json.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match weir::app::Prepared::from_file(&file) {
            Ok(weir::app::Prepared { config, .. }) => {
                println!(
                    "{}: ok ({} listeners, {} routes, {} pools)",
                    file.display(),
                    config.listeners.len(),
                    config.routes.len(),
                    config.pools.len()
                );
                println!("routes, tried in this order (the first match wins):");
                for (index, route) in config.routes.iter().enumerate() {
                    println!(
                        "  {}: {}",
                        route.display_name(index),
                        weir::config::describe(route)
                    );
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Serve { config } => {
            logging::init(cli.log_format, "info");
            let loaded = match weir::app::Prepared::from_file(&config) {
                Ok(loaded) => loaded,
                Err(err) => {
                    eprintln!("{err}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            run_with(1, serve(loaded, config))
        }
        Command::Loadtest(args) => match weir::loadtest::cli::run(*args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(EXIT_SLO),
            Err(err) => {
                eprintln!("weir loadtest: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Report {
            history,
            config,
            out,
        } => match write_report(&history, config.as_deref(), &out) {
            Ok(html) => {
                println!("{}", html.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("weir report: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Demo {
            requests,
            concurrency,
        } => {
            logging::init(cli.log_format, "warn");
            run(async move {
                let summary = weir::demo::run(weir::demo::DemoOptions {
                    requests,
                    concurrency,
                })
                .await?;
                println!("{summary}");
                Ok(())
            })
        }
    }
}

fn write_report(
    history: &std::path::Path,
    config: Option<&std::path::Path>,
    out: &std::path::Path,
) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let control = match config {
        Some(path) => weir::config::load_file(path)?.control,
        None => weir::config::ControlConfig::default(),
    };
    let samples = weir::control::load_history_file(history)
        .with_context(|| format!("reading {}", history.display()))?;
    anyhow::ensure!(
        !samples.is_empty(),
        "{} holds no samples",
        history.display()
    );
    let now = weir::control::unix_ms(std::time::SystemTime::now());
    let report = weir::control::report::build(&samples, &Default::default(), &control, now);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let html = out.join("capacity-report.html");
    std::fs::write(&html, weir::control::html::render(&report))
        .with_context(|| format!("writing {}", html.display()))?;
    let json = out.join("capacity-report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    Ok(html)
}

async fn serve(config: weir::app::Prepared, path: PathBuf) -> anyhow::Result<()> {
    let signals =
        anyhow::Context::context(weir::app::Signals::register(), "installing signal handlers")?;
    let running = weir::app::start_with(config, Some(path)).await?;
    let report = running.run_until_signal(signals).await?;
    if report.completed {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(
            aborted = report.aborted_connections,
            "drain deadline passed; exiting"
        );
    }
    Ok(())
}

fn run(task: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    run_with(0, task)
}

/// `threads`: 0 = as many workers as cores, N = N workers, 1 = a single-threaded runtime.
/// `serve` runs on a single-threaded runtime (1) whatever its `[server] threads`: its
/// connections are served by runtimes of their own (see `supervisor::workers`), and this
/// one keeps the admin port, signals and the control loop.
fn run_with(threads: usize, task: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let built = match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("weir: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("weir: {err:#}");
            ExitCode::FAILURE
        }
    }
}
